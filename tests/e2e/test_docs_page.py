"""The Swagger UI at /docs works in a real browser under the service's Content-Security-Policy:
Debian's Chromium, headless, against `python -m service`. Skipped, saying why, where Chromium
or its driver is missing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.browser import chromium
from tests.support.cluster import Cluster, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    yield from chromium()


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
