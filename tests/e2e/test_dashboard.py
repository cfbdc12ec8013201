"""The dashboard in a real browser: Debian's Chromium, headless, driven by Selenium, against
real API and worker processes. Sign in, submit a job from the form (after reading its errors
beside the fields; only the fields changed are sent), watch its curve grow, classify test
images by upload; open a study and read its verdicts, compare jobs, all at a phone's width too;
follow a search to its end, its trials and plots; sign out, which ends the session that a copy
of the cookie named. Every page visited is saved as a screenshot and checked for
unlabelled controls, sideways scrolling and severe console errors.
Skipped, saying why, where Chromium or its driver is missing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from core.spec import DATASET_CLASSES
from service.auth import SESSION_COOKIE
from tests.support.auth import ADMIN_TOKEN
from tests.support.browser import chromium
from tests.support.cluster import Cluster, serving, wait_for
from tests.support.data import TINY, tiny_images
from tests.support.images import encode

pytestmark = pytest.mark.e2e
EPOCHS = 4
IMAGES, LABELS = tiny_images(2, seed=21)
PHONE = (390, 844)

# Controls that no label, aria-label or text names: a screen reader reads them as "edit".
UNLABELLED = """
return [...document.querySelectorAll("input:not([type=hidden]), select, textarea, button")]
  .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute("aria-label")
                 && !(e.tagName === "BUTTON" && e.textContent.trim()))
  .map((e) => e.outerHTML.slice(0, 120));
"""

# Keeps the body of the page's next POST where the page it leads to can read it.
SENT = """
const send = window.fetch;
window.fetch = (url, init) => { sessionStorage.setItem("sent", init.body); return send(url, init); };
"""
# Two trials that pause at 1 epoch, the better one promoted to 2, then the best and the base
# confirmed on 2 fresh seeds each.
SEARCH = {
    "name": "tiny search",
    "base": {**TINY, "epochs": 2},
    "space": {"learning_rate": {"type": "log_uniform", "low": 0.001, "high": 0.1}},
    "sampler": "random",
    "max_trials": 2,
    "scheduler": {"type": "asha", "min_epochs": 1, "eta": 2},
    "confirm": {"top": 1, "repeats": 2},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, data_dir) -> Iterator[Cluster]:
    with serving(tmp_path_factory.mktemp("dashboard"), data_dir) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    yield from chromium("--window-size=1280,800")


def until(driver, condition, what: str, timeout: float = 60):
    return wait_for(lambda: condition(driver), timeout, what, every=0.2)


def looks_right(driver, folder: Path, name: str, expected_errors: tuple[str, ...] = ()) -> None:
    """Save the page as `name`.png, and fail on what a user would trip over."""
    driver.save_screenshot(str(folder / f"{name}.png"))
    assert driver.execute_script(UNLABELLED) == [], f"unlabelled controls on {name}"
    width = driver.execute_script("return [document.documentElement.scrollWidth, innerWidth]")
    assert width[0] <= width[1], f"{name} scrolls sideways at width {width[1]}: {width[0]}"
    severe = [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and not any(e in entry["message"] for e in expected_errors)
    ]
    assert severe == [], f"console errors on {name}"


def sign_in(driver, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(url + "/")
    if driver.find_elements(By.ID, "token"):  # by keyboard: type the token, press Enter
        driver.find_element(By.ID, "token").send_keys(ADMIN_TOKEN, Keys.ENTER)
    until(driver, lambda d: d.find_elements(By.ID, "signout"), "signed in")


def test_submit_from_the_form_watch_it_learn_and_classify_test_images(cluster, browser, tmp_path):
    from selenium.webdriver.common.by import By

    driver = browser
    sign_in(driver, cluster.url)
    looks_right(driver, tmp_path, "jobs")
    driver.find_element(By.LINK_TEXT, "New job or study").click()
    form = until(driver, lambda d: d.find_elements(By.ID, "new-form"), "the form")[0]

    def fill(field_id: str, value: str) -> None:
        box = form.find_element(By.ID, field_id)
        box.clear()
        box.send_keys(value)

    # Two mistakes: each of the API's 422 messages appears beside its own field.
    fill("f-epochs", "0")
    form.find_element(By.CSS_SELECTOR, "input[name=trick][value=dropout]").click()
    fill("p-dropout-rate", "1.5")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    epochs_error = until(driver, lambda d: d.find_element(By.ID, "e-f-epochs").text, "an error")
    assert "epochs" in epochs_error and "greater than or equal to 1" in epochs_error
    assert "rate" in driver.find_element(By.ID, "e-p-dropout-rate").text
    assert driver.find_element(By.ID, "e-form").text == ""
    looks_right(driver, tmp_path, "form-errors", expected_errors=("422",))

    for field_id, value in (
        ("f-epochs", str(EPOCHS)),
        ("f-validation_size", "100"),
        ("f-learning_rate", str(TINY["learning_rate"])),
        ("f-hidden_units", "32, 16"),
        ("p-dropout-rate", "0.2"),
    ):
        fill(field_id, value)
    driver.execute_script(SENT)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    until(driver, lambda d: "/jobs/" in d.current_url, "the new job's page")
    job_id = driver.current_url.rsplit("/", 1)[1]
    # Only what was changed went out (the selects always choose): the API gives the rest its
    # defaults, a trick's parameters those of the job's architecture.
    sent = json.loads(driver.execute_script("return sessionStorage.getItem('sent')"))
    assert sent == {
        "dataset": "fashion_mnist",
        "architecture": "mlp",
        "epochs": EPOCHS,
        "learning_rate": TINY["learning_rate"],
        "validation_size": 100,
        "hidden_units": [32, 16],
        "tricks": [{"name": "dropout", "rate": 0.2}],
    }
    spec = cluster.client.get(f"/v1/jobs/{job_id}").json()["spec"]
    assert (spec["epochs"], spec["hidden_units"], spec["tricks"]) == (
        EPOCHS,
        [32, 16],
        [{"name": "dropout", "rate": 0.2, "spatial": False}],
    )

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
    looks_right(driver, tmp_path, "job")
    paths = []
    for index, image in enumerate(IMAGES):
        paths.append(tmp_path / f"test-{index}.png")
        paths[-1].write_bytes(encode(image))
    files.send_keys("\n".join(str(path) for path in paths))
    labels = until(
        driver,
        lambda d: (
            len(found := d.find_elements(By.CSS_SELECTOR, "#predictions .label")) == 2 and found
        ),
        "two classes",
    )
    classes = DATASET_CLASSES["fashion_mnist"]
    assert [label.text for label in labels] == [classes[label] for label in LABELS]
    received = driver.find_elements(By.CSS_SELECTOR, "#predictions .received img")
    assert [driver.execute_script("return arguments[0].naturalWidth", r) for r in received] == [
        28,
        28,
    ]
    looks_right(driver, tmp_path, "predicted")


def test_a_study_shows_its_verdicts_and_finished_jobs_compare_at_a_phones_width(
    cluster, browser, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    study = cluster.client.post(
        "/v1/studies",
        json={"name": "drops", "base": {**TINY, "epochs": 1}, "tricks": ["dropout"], "repeats": 2},
    ).json()
    driver.set_window_size(*PHONE)
    sign_in(driver, cluster.url)
    driver.get(cluster.url + f"/studies/{study['id']}")
    # The page refreshes itself until every job has ended, then stops, with the verdict.
    until(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#study:not([hx-trigger])"),
        "the study to end",
        120,
    )
    verdict = driver.find_element(By.CSS_SELECTOR, ".verdicts li")
    assert verdict.text.startswith("dropout:")
    # Two seeds: a verdict needs three (docs/studies.md).
    assert verdict.get_attribute("class").split()[1] == "not-enough-repeats"
    forest = driver.find_element(By.CSS_SELECTOR, "img.plot")
    until(
        driver,
        lambda d: d.execute_script("return arguments[0].naturalWidth", forest),
        "the forest plot",
    )
    looks_right(driver, tmp_path, "study-phone")

    # Tick the base's two runs in the jobs table with the keyboard, then compare them.
    driver.get(cluster.url + "/")
    base_runs = study["report"]["variants"][0]["jobs"]
    for job_id in base_runs:
        box = until(
            driver,
            lambda d, job_id=job_id: d.find_elements(
                By.CSS_SELECTOR, f"tr[data-job='{job_id}'] input[type=checkbox]"
            ),
            "a finished job to tick",
        )[0]
        box.send_keys(Keys.SPACE)
    looks_right(driver, tmp_path, "jobs-phone")
    driver.find_element(By.CSS_SELECTOR, "#compare button[type=submit]").click()
    until(driver, lambda d: "/compare" in d.current_url, "the comparison")
    variants = driver.find_elements(By.CSS_SELECTOR, "table.variants tbody tr")
    assert len(variants) == 1 and "2" in variants[0].text  # one variant, its two runs
    looks_right(driver, tmp_path, "compare-phone")
    driver.set_window_size(1280, 800)


def test_a_search_shows_its_trials_and_plots_until_it_ends(cluster, browser, tmp_path):
    from selenium.webdriver.common.by import By

    driver = browser
    search = cluster.client.post("/v1/searches", json=SEARCH).json()
    sign_in(driver, cluster.url)
    driver.find_element(By.LINK_TEXT, "Searches").click()
    until(driver, lambda d: d.find_elements(By.LINK_TEXT, "tiny search"), "the list")[0].click()
    until(driver, lambda d: f"/searches/{search['id']}" in d.current_url, "the search's page")
    # The page refreshes itself until the search has ended, then stops, with its plots.
    until(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#search:not([hx-trigger])"),
        "the search to end",
        180,
    )
    assert driver.find_element(By.CSS_SELECTOR, "h1 .status").text == "succeeded"
    rows = driver.find_elements(By.CSS_SELECTOR, "#trials tbody tr")
    trials = cluster.client.get(f"/v1/searches/{search['id']}/trials").json()["trials"]
    assert [row.get_attribute("data-trial") for row in rows] == [
        str(trial["number"]) for trial in trials
    ]
    states = [row.get_attribute("data-state") for row in rows]
    assert "completed" in states and set(states) <= {"completed", "pruned"}, states
    plots = driver.find_elements(By.CSS_SELECTOR, "img.plot")
    assert len(plots) == 3
    for plot in plots:
        until(
            driver,
            lambda d, plot=plot: d.execute_script("return arguments[0].naturalWidth", plot),
            "a plot",
        )
    looks_right(driver, tmp_path, "search")
    rows[0].find_element(By.CSS_SELECTOR, "td:last-child a").click()
    until(driver, lambda d: f"/jobs/{trials[0]['job_id']}" in d.current_url, "the trial's job")


def test_signing_out_ends_the_session_that_the_cookie_named(cluster, browser):
    from selenium.webdriver.common.by import By

    driver = browser
    sign_in(driver, cluster.url)
    cookie = driver.get_cookie(SESSION_COOKIE)
    assert cookie["value"] != ADMIN_TOKEN and ADMIN_TOKEN not in cookie["value"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    copied = {"Cookie": f"{SESSION_COOKIE}={cookie['value']}"}
    with httpx.Client(base_url=cluster.url) as thief:
        assert thief.get("/v1/me", headers=copied).status_code == 200
        driver.find_element(By.ID, "signout").click()
        until(driver, lambda d: d.find_elements(By.ID, "token"), "the sign-in form")
        assert driver.get_cookie(SESSION_COOKIE) is None
        replayed = thief.get("/v1/me", headers=copied)
        assert replayed.status_code == 401 and "session ended" in replayed.json()["detail"]
