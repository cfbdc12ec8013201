"""The dashboard over HTTP: sign-in sets a safe session cookie, the cookie reads what the token
reads, and a state-changing request signed in by the cookie alone (a cross-site form) is
refused; bearer clients are unaffected."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from core.config import Settings
from service.auth import CSRF_HEADER, SESSION_COOKIE
from tests.support.auth import ADMIN_TOKEN
from tests.support.data import TINY


@pytest.fixture
def browser(settings: Settings) -> Iterator[TestClient]:
    """A client without the Authorization header, as a browser is."""
    from service.app import create_app

    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as test_client:
        yield test_client


def sign_in(browser: TestClient) -> None:
    answer = browser.post("/signin", data={"token": ADMIN_TOKEN}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    cookie = answer.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http here; https gets Secure


def test_a_visitor_without_a_session_sees_the_sign_in_form(browser):
    answer = browser.get("/")
    assert answer.status_code == 200 and 'name="token"' in answer.text
    assert browser.get("/new", follow_redirects=False).status_code == 303


def test_a_wrong_token_is_refused_with_the_reason(browser):
    answer = browser.post("/signin", data={"token": "tl_nope"})
    assert answer.status_code == 401 and "unknown token" in answer.text
    assert SESSION_COOKIE not in browser.cookies


def test_the_session_cookie_reads_the_api_and_the_pages(browser):
    sign_in(browser)
    assert browser.get("/v1/me").json()["name"] == "admin"
    assert "Sign out" in browser.get("/").text
    assert browser.get("/ui/jobs").status_code == 200


def test_a_post_signed_in_by_the_cookie_alone_is_refused(browser):
    sign_in(browser)
    refused = browser.post("/v1/jobs", json=TINY)
    assert refused.status_code == 403 and CSRF_HEADER in refused.json()["detail"]
    foreign = browser.post(
        "/v1/jobs", json=TINY, headers={CSRF_HEADER: "1", "Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403 and "evil.example" in foreign.json()["detail"]
    assert browser.get("/v1/jobs").json()["total"] == 0
    accepted = browser.post(
        "/v1/jobs", json=TINY, headers={CSRF_HEADER: "1", "Origin": "http://127.0.0.1:8000"}
    )
    assert accepted.status_code == 201
    assert accepted.json()["id"] in browser.get("/ui/jobs").text


def test_bearer_clients_need_no_csrf_header(client):
    assert client.post("/v1/jobs", json=TINY).status_code == 201


def test_sign_out_clears_the_cookie(browser):
    sign_in(browser)
    assert browser.post("/signout").status_code == 403  # cross-site sign-out refused too
    out = browser.post("/signout", headers={CSRF_HEADER: "1"})
    assert out.status_code == 204 and out.headers["HX-Redirect"] == "/"
    assert 'name="token"' in browser.get("/").text


def test_another_users_job_is_404_on_its_page(browser, client):
    job = client.post("/v1/jobs", json=TINY).json()
    user = client.post("/v1/users", json={"name": "bob", "role": "user"}).json()
    browser.post("/signin", data={"token": user["token"]})
    assert browser.get(f"/jobs/{job['id']}").status_code == 404
    assert job["id"] not in browser.get("/ui/jobs").text


def test_every_page_renders_for_its_owner(browser, client):
    sign_in(browser)
    job = client.post("/v1/jobs", json=TINY).json()
    page = browser.get(f"/jobs/{job['id']}")
    assert page.status_code == 200 and f"/v1/jobs/{job['id']}/events" not in page.text
    assert 'id="curves"' in page.text
    assert "dropout" in browser.get("/new").text
    study = client.post("/v1/studies", json={"base": TINY, "tricks": ["dropout"]}).json()
    page = browser.get(f"/studies/{study['id']}")
    assert page.status_code == 200 and "Variants" in page.text
    counts = study["progress"]  # as the API counts them
    assert f"total {counts['total']}" in page.text and f"queued {counts['queued']}" in page.text
    assert 'hx-trigger="every 3s"' in page.text  # it refreshes while its jobs wait or run
    for asset in ("htmx/htmx.min.js", "uplot/uPlot.iife.min.js", "dashboard.js"):
        assert browser.get(f"/dashboard/static/{asset}").status_code == 200


def test_the_jobs_table_filters_by_status_and_trick_and_links_each_jobs_study(browser, client):
    sign_in(browser)
    plain = client.post("/v1/jobs", json=TINY).json()
    study = client.post(
        "/v1/studies", json={"name": "drops", "base": TINY, "tricks": ["dropout"]}
    ).json()
    client.post(f"/v1/jobs/{plain['id']}/cancel")
    table = browser.get("/ui/jobs").text
    assert plain["id"] in table and all(
        job in table for job in study["report"]["variants"][0]["jobs"]
    )
    assert table.count(f'href="/studies/{study["id"]}">drops</a>') == len(study_jobs(study))
    dropout = browser.get("/ui/jobs", params={"trick": "dropout", "status": ""}).text
    assert [job for job in study_jobs(study) if f'data-job="{job}"' in dropout] == study["report"][
        "variants"
    ][1]["jobs"]
    assert plain["id"] not in dropout
    cancelled = browser.get("/ui/jobs", params={"status": "cancelled"}).text
    assert plain["id"] in cancelled and study["report"]["variants"][0]["jobs"][0] not in cancelled
    bad = browser.get("/ui/jobs", params={"trick": "dropuot"})
    assert bad.status_code == 422 and "dropout, weight_decay" in bad.text
    page = browser.get(f"/jobs/{study['report']['variants'][1]['jobs'][0]}").text
    assert f'in the study <a href="/studies/{study["id"]}">drops</a>' in page


def study_jobs(study) -> list[str]:
    return [job for variant in study["report"]["variants"] for job in variant["jobs"]]


def test_the_jobs_table_pages_to_older_jobs(browser, client):
    sign_in(browser)
    jobs = client.post("/v1/jobs:batch", json={"jobs": [TINY] * 101}).json()["jobs"]
    first = browser.get("/ui/jobs").text
    assert first.count("<tr data-job=") == 100 and jobs[0]["id"] not in first
    assert 'hx-trigger="every 2s"' in first  # the newest page follows the queue
    older = re.search(r'hx-get="(/ui/jobs\?[^"]*cursor=[^"]+)"', first).group(1)
    second = browser.get(older.replace("&amp;", "&")).text
    assert second.count("<tr data-job=") == 1 and jobs[0]["id"] in second
    assert "Newest jobs" in second and "Older jobs" not in second
    assert 'hx-trigger="every 2s"' not in second
