"""The Swagger UI at /docs works in a real browser under the service's Content-Security-Policy:
Debian's Chromium, headless, against `python -m service`. Skipped, saying why, where Chromium
or its driver is missing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, wait_for

pytestmark = pytest.mark.e2e
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not (Path(CHROMIUM).exists() and shutil.which(DRIVER)):
        pytest.skip(f"{CHROMIUM} or {DRIVER} is missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    except Exception as error:  # a browser that cannot start is a skip that says why
        pytest.skip(f"Chromium did not start: {error}")
    yield driver
    driver.quit()


def test_the_swagger_ui_renders_every_operation_without_a_policy_violation(
    browser, tmp_path, data_dir
):
    from selenium.webdriver.common.by import By

    with Cluster(tmp_path, data_dir, f"sqlite:///{tmp_path / 'tricklab.db'}") as cluster:
        cluster.start_api()
        operations = sum(
            len(methods) for methods in cluster.client.get("/openapi.json").json()["paths"].values()
        )
        browser.get(f"{cluster.url}/docs")
        shown = wait_for(
            lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock"),
            60,
            "the Swagger UI to list the operations",
        )
        assert len(shown) == operations
        console = browser.get_log("browser")
    assert [entry for entry in console if entry["level"] == "SEVERE"] == []
