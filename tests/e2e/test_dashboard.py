"""The dashboard in a real browser: Debian's Chromium, headless, driven by Selenium, against
real API and worker processes. Sign in with the token, see a job in the table, watch its
curve grow to the last epoch, and upload an image to read its class and the 28×28 picture the
model received. Skipped, saying why, where Chromium or its driver is missing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.auth import ADMIN_TOKEN
from tests.support.cluster import Cluster, serving, wait_for
from tests.support.data import TINY
from tests.support.images import encode

pytestmark = pytest.mark.e2e
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
EPOCHS = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, data_dir) -> Iterator[Cluster]:
    with serving(tmp_path_factory.mktemp("dashboard"), data_dir) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not (Path(CHROMIUM).exists() and shutil.which(DRIVER)):
        pytest.skip(f"{CHROMIUM} or {DRIVER} is missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    except Exception as error:  # a browser that cannot start is a skip that says why
        pytest.skip(f"Chromium did not start: {error}")
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def until(driver, condition, what: str, timeout: float = 60):
    return wait_for(lambda: condition(driver), timeout, what, every=0.2)


def test_sign_in_watch_a_job_learn_and_classify_an_upload(cluster, browser, tmp_path):
    from selenium.webdriver.common.by import By

    driver = browser
    job = cluster.client.post("/v1/jobs", json={**TINY, "epochs": EPOCHS}).json()
    driver.get(cluster.url + "/")
    driver.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    driver.find_element(By.CSS_SELECTOR, "form.signin button").click()
    until(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, f"tr[data-job='{job['id']}'] a"),
        "the job in the table",
    )
    driver.save_screenshot(str(tmp_path / "jobs.png"))
    # The table refreshes itself while the job runs: follow its link as it is now.
    driver.get(cluster.url + f"/jobs/{job['id']}")
    seen = set()

    def grown(d):
        boxes = d.find_elements(By.ID, "curves")
        points = int(boxes[0].get_attribute("data-points") or 0) if boxes else 0
        seen.add(points)
        return points == EPOCHS

    until(driver, grown, f"the curve to reach epoch {EPOCHS}", timeout=120)
    assert driver.find_elements(By.CSS_SELECTOR, "#curves canvas")
    assert len(seen - {0}) >= 1
    # The page reloads itself once the job has ended, with the predict form.
    files = until(driver, lambda d: d.find_elements(By.ID, "files"), "the predict form")[0]
    driver.save_screenshot(str(tmp_path / "job.png"))
    image = tmp_path / "item.png"
    picture = np.zeros((56, 40), np.uint8)
    picture[8:48, 10:30] = 200
    image.write_bytes(encode(picture))
    files.send_keys(str(image))
    label = until(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#predictions .label"), "a class"
    )[0]
    assert label.text
    received = driver.find_element(By.CSS_SELECTOR, "#predictions .received img")
    assert received.get_attribute("src").startswith("data:image/png;base64,")
    assert driver.execute_script("return arguments[0].naturalWidth", received) == 28
    driver.save_screenshot(str(tmp_path / "predicted.png"))
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
