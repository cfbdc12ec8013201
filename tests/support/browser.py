"""Debian's Chromium, headless, through Selenium: the real browser of the browser tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def chromium(*flags: str) -> Iterator[object]:
    """A driver for a fixture to yield, with the browser's console log kept; a skip that says
    why where Chromium, its driver or Selenium is missing, or the browser cannot start."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not (Path(CHROMIUM).exists() and shutil.which(DRIVER)):
        pytest.skip(f"{CHROMIUM} or {DRIVER} is missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", *flags):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    except Exception as error:  # a browser that cannot start is a skip that says why
        pytest.skip(f"Chromium did not start: {error}")
    yield driver
    driver.quit()
