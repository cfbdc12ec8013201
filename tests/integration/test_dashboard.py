"""The dashboard over HTTP: signing in opens a server-side session whose cookie holds no
token; the cookie reads what the token reads; a state-changing request signed in by the cookie
needs the session's own CSRF token (a cross-site form has none); signing out, disabling the
user, revoking the token or the session's expiry ends it; bearer clients are unaffected."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from core.config import Settings
from core.spec import ARCHITECTURE_DEFAULTS
from jobqueue.accounts import SESSION_GRACE, SESSIONS_PER_USER
from jobqueue.models import Trial, utcnow
from service.auth import CACHE_SECONDS, CSRF_HEADER, SESSION_COOKIE
from tests.support.auth import ADMIN_HEADERS, ADMIN_TOKEN
from tests.support.cluster import wait_for
from tests.support.data import TINY
from tests.support.inprocess import settings_in

ORIGIN = "http://127.0.0.1:8000"


@pytest.fixture
def browser(settings: Settings) -> Iterator[TestClient]:
    """A client without the Authorization header, as a browser is."""
    from service.app import create_app

    with TestClient(create_app(settings), base_url=ORIGIN) as test_client:
        yield test_client


def another_browser(browser: TestClient, cookie: str | None = None) -> TestClient:
    """A second browser on the same app, holding `cookie` (a copied session cookie) if given."""
    other = TestClient(browser.app, base_url=ORIGIN)
    if cookie is not None:
        other.cookies.set(SESSION_COOKIE, cookie)
    return other


def admin_of(browser: TestClient) -> TestClient:
    """A bearer client of the admin's on the browser's own app (the same API process)."""
    return TestClient(browser.app, base_url=ORIGIN, headers=ADMIN_HEADERS)


def sign_in(browser: TestClient, token: str = ADMIN_TOKEN) -> dict[str, str]:
    """Sign in with the token; the session's CSRF header, as its pages carry it."""
    answer = browser.post("/signin", data={"token": token}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    cookie = answer.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie and token not in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Max-Age=43200" in cookie  # TRICKLAB_SESSION_HOURS, 12 by default
    assert "Secure" not in cookie  # plain http here; https gets Secure
    return csrf_of(browser)


def csrf_of(browser: TestClient) -> dict[str, str]:
    """The CSRF header the signed-in page gives htmx and dashboard.js."""
    page = browser.get("/").text
    headers = json.loads(re.search(r"<body hx-headers='([^']*)'", page).group(1))
    assert headers[CSRF_HEADER]
    return headers


def test_a_visitor_without_a_session_sees_the_sign_in_form(browser):
    answer = browser.get("/")
    assert answer.status_code == 200 and 'name="token"' in answer.text
    assert browser.get("/new", follow_redirects=False).status_code == 303


def test_a_wrong_token_is_refused_with_the_reason(browser):
    answer = browser.post("/signin", data={"token": "tl_nope"})
    assert answer.status_code == 401 and "unknown token" in answer.text
    assert SESSION_COOKIE not in browser.cookies


def test_the_cookie_names_a_hashed_session_and_never_holds_the_token(browser):
    sign_in(browser)
    cookie = browser.cookies[SESSION_COOKIE]
    assert cookie != ADMIN_TOKEN and len(cookie) >= 43  # 32 random bytes
    with browser.app.state.tricklab.store.engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM sessions")).all()
    assert len(rows) == 1 and cookie not in str(rows)
    assert hashlib.sha256(cookie.encode()).hexdigest() in str(rows)
    # The session's secret is no API token, and an API token is no session.
    as_bearer = browser.get("/v1/me", headers={"Authorization": f"Bearer {cookie}"})
    assert as_bearer.status_code == 401
    with another_browser(browser, ADMIN_TOKEN) as old_style:  # a cookie that held the token
        assert old_style.get("/v1/me").status_code == 401
        assert 'name="token"' in old_style.get("/").text
    a_second = another_browser(browser)
    sign_in(a_second)
    assert a_second.cookies[SESSION_COOKIE] != cookie  # each sign-in a session of its own


def test_the_session_cookie_reads_the_api_and_the_pages(browser):
    sign_in(browser)
    assert browser.get("/v1/me").json()["name"] == "admin"
    assert "Sign out" in browser.get("/").text
    assert browser.get("/ui/jobs").status_code == 200


def test_a_post_signed_in_by_the_cookie_needs_the_sessions_own_csrf_token(browser, client):
    csrf = sign_in(browser)
    refused = browser.post("/v1/jobs", json=TINY)
    assert refused.status_code == 403 and CSRF_HEADER in refused.json()["detail"]
    assert browser.post("/v1/jobs", json=TINY, headers={CSRF_HEADER: "1"}).status_code == 403
    other = another_browser(browser)
    others_csrf = sign_in(other)  # the same user, another session
    assert others_csrf != csrf
    assert browser.post("/v1/jobs", json=TINY, headers=others_csrf).status_code == 403
    foreign = browser.post(
        "/v1/jobs", json=TINY, headers={**csrf, "Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403 and "evil.example" in foreign.json()["detail"]
    assert browser.get("/v1/jobs").json()["total"] == 0
    accepted = browser.post("/v1/jobs", json=TINY, headers={**csrf, "Origin": ORIGIN})
    assert accepted.status_code == 201
    assert accepted.json()["id"] in browser.get("/ui/jobs").text


def test_bearer_clients_need_no_csrf_header(client):
    assert client.post("/v1/jobs", json=TINY).status_code == 201


def test_over_https_the_cookie_is_secure(settings):
    from service.app import create_app

    with TestClient(create_app(settings), base_url="https://127.0.0.1:8443") as browser:
        answer = browser.post("/signin", data={"token": ADMIN_TOKEN}, follow_redirects=False)
        assert answer.status_code == 303 and "Secure" in answer.headers["set-cookie"]
        assert browser.get("/v1/me").json()["name"] == "admin"
        out = browser.post("/signout", headers=csrf_of(browser))
        assert out.status_code == 204 and "Secure" in out.headers["set-cookie"]


def test_signing_out_revokes_the_session_so_a_copied_cookie_stops_working(browser):
    csrf = sign_in(browser)
    copied = browser.cookies[SESSION_COOKIE]
    thief = another_browser(browser, copied)
    assert thief.get("/v1/me").status_code == 200  # a copy works while the session lasts
    assert browser.post("/signout").status_code == 403  # cross-site sign-out refused
    assert browser.post("/signout", headers={CSRF_HEADER: "1"}).status_code == 403
    out = browser.post("/signout", headers=csrf)
    assert out.status_code == 204 and out.headers["HX-Redirect"] == "/"
    assert f'{SESSION_COOKIE}=""' in out.headers["set-cookie"]
    assert "Max-Age=0" in out.headers["set-cookie"]
    assert 'name="token"' in browser.get("/").text
    replayed = thief.get("/v1/me")
    assert replayed.status_code == 401 and "session ended" in replayed.json()["detail"]
    assert 'name="token"' in thief.get("/").text
    assert thief.get("/new", follow_redirects=False).headers["location"] == "/"
    assert thief.post("/v1/jobs", json=TINY, headers=csrf).status_code == 401


def test_the_sign_out_is_checked_as_every_request_the_cookie_signs_in(browser):
    """The gate checks a sign-out's Origin and CSRF token as any other request's; a bearer
    client that also holds a session's cookie signs that session out without a CSRF token."""
    csrf = sign_in(browser)
    foreign = browser.post("/signout", headers={**csrf, "Origin": "https://evil.example"})
    assert foreign.status_code == 403 and "evil.example" in foreign.json()["detail"]
    assert browser.get("/v1/me").status_code == 200
    cookie = browser.cookies[SESSION_COOKIE]
    with another_browser(browser, cookie) as bearer_too:
        out = bearer_too.post("/signout", headers=ADMIN_HEADERS)
        assert out.status_code == 204 and "Max-Age=0" in out.headers["set-cookie"]
    ended = browser.get("/v1/me")
    assert ended.status_code == 401 and "session ended" in ended.json()["detail"]


def sessions_of(browser: TestClient) -> list:
    with browser.app.state.tricklab.store.engine.connect() as connection:
        return connection.execute(
            text("SELECT sha256, revoked_at, expires_at FROM sessions ORDER BY created_at")
        ).all()


def cookie_hash(browser: TestClient) -> str:
    return hashlib.sha256(browser.cookies[SESSION_COOKIE].encode()).hexdigest()


def test_signing_in_again_ends_the_session_the_browser_held(browser):
    sign_in(browser)
    before = browser.cookies[SESSION_COOKIE]
    thief = another_browser(browser, before)
    assert thief.get("/v1/me").status_code == 200
    sign_in(browser)  # the browser sends its cookie along
    assert browser.cookies[SESSION_COOKIE] != before
    assert browser.get("/v1/me").status_code == 200
    replayed = thief.get("/v1/me")
    assert replayed.status_code == 401 and "session ended" in replayed.json()["detail"]
    live = [row for row in sessions_of(browser) if row.revoked_at is None]
    assert [row.sha256 for row in live] == [cookie_hash(browser)]
    failed = browser.post("/signin", data={"token": "tl_nope"})  # a failed sign-in ends nothing
    assert failed.status_code == 401 and browser.get("/v1/me").status_code == 200


def test_a_user_keeps_a_bounded_number_of_sessions_the_oldest_ending_first(browser):
    first = another_browser(browser)
    sign_in(first)
    for _ in range(2 * SESSIONS_PER_USER + 5):  # each a new browser: no cookie to replace
        sign_in(another_browser(browser))
    rows = sessions_of(browser)
    live = [row for row in rows if row.revoked_at is None]
    assert len(live) == SESSIONS_PER_USER and len(rows) == 2 * SESSIONS_PER_USER
    ended = first.get("/v1/me")  # the oldest went first
    assert ended.status_code == 401 and "unknown session" in ended.json()["detail"]
    newest = another_browser(browser)
    sign_in(newest)
    assert newest.get("/v1/me").status_code == 200


def test_sessions_ended_longer_ago_than_the_grace_are_deleted_at_the_next_sign_in(browser):
    bob = admin_of(browser).post("/v1/users", json={"name": "bob", "role": "user"}).json()
    names = ("revoked long ago", "expired long ago", "revoked lately", "live")
    hashes = {}
    for name in names:
        one = another_browser(browser)
        sign_in(one, bob["token"])
        hashes[name] = cookie_hash(one)
    long_ago, lately = utcnow() - SESSION_GRACE * 2, utcnow() - SESSION_GRACE / 2
    with browser.app.state.tricklab.store.engine.begin() as connection:
        change = "UPDATE sessions SET {} = :at WHERE sha256 = :sha256"
        for name, column, at in (
            ("revoked long ago", "revoked_at", long_ago),
            ("expired long ago", "expires_at", long_ago),
            ("revoked lately", "revoked_at", lately),
        ):
            connection.execute(text(change.format(column)), {"at": at, "sha256": hashes[name]})
    sign_in(another_browser(browser))  # the admin's sign-in deletes everyone's
    kept = {row.sha256 for row in sessions_of(browser)}
    assert hashes["revoked lately"] in kept and hashes["live"] in kept
    assert not {hashes["revoked long ago"], hashes["expired long ago"]} & kept


def test_disabling_a_user_ends_their_sessions_at_once_and_for_good(browser):
    admin = admin_of(browser)
    bob = admin.post("/v1/users", json={"name": "bob", "role": "user"}).json()
    sign_in(browser, bob["token"])
    assert browser.get("/v1/me").json()["name"] == "bob"
    assert admin.patch(f"/v1/users/{bob['id']}", json={"disabled": True}).status_code == 200
    refused = browser.get("/v1/me")
    assert refused.status_code == 401 and "session ended" in refused.json()["detail"]
    assert 'name="token"' in browser.get("/").text
    assert admin.patch(f"/v1/users/{bob['id']}", json={"disabled": False}).status_code == 200
    assert browser.get("/v1/me").status_code == 401  # enabled again: the session stays ended
    out = browser.post("/signout")  # an ended session's cookie is cleared without a CSRF token
    assert out.status_code == 204 and "Max-Age=0" in out.headers["set-cookie"]
    sign_in(browser, bob["token"])  # a new one works
    assert browser.get("/v1/me").json()["name"] == "bob"


def test_revoking_the_token_through_another_api_process_ends_its_sessions(browser, client):
    bob = client.post("/v1/users", json={"name": "bob", "role": "user"}).json()
    sign_in(browser, bob["token"])
    assert browser.get("/v1/me").status_code == 200  # now this process remembers the session
    # `client` is another API process on the same database: the browser's forgets within
    # the gate's CACHE_SECONDS.
    assert client.delete(f"/v1/users/{bob['id']}/tokens/{bob['token_id']}").status_code == 200
    refused = wait_for(
        lambda: (answer := browser.get("/v1/me")).status_code == 401 and answer,
        CACHE_SECONDS + 2,
        "the session to end",
    )
    assert "revoked" in refused.json()["detail"]


def test_an_expired_session_is_refused(tmp_path, data_dir):
    from service.app import create_app

    settings = settings_in(tmp_path, data_dir, session_hours=1.5 / 3600)  # 1.5 s
    with TestClient(create_app(settings), base_url=ORIGIN) as browser:
        answer = browser.post("/signin", data={"token": ADMIN_TOKEN}, follow_redirects=False)
        assert "Max-Age=1;" in answer.headers["set-cookie"]
        assert browser.get("/v1/me").status_code == 200
        time.sleep(1.6)
        # A browser would have dropped the cookie by now; one that kept it is refused.
        browser.cookies.set(SESSION_COOKIE, answer.cookies[SESSION_COOKIE])
        refused = browser.get("/v1/me")
        assert refused.status_code == 401 and "session expired" in refused.json()["detail"]
        assert 'name="token"' in browser.get("/").text


def test_another_users_job_is_404_on_its_page(browser, client):
    job = client.post("/v1/jobs", json=TINY).json()
    user = client.post("/v1/users", json={"name": "bob", "role": "user"}).json()
    sign_in(browser, user["token"])
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


def test_the_studies_page_lists_studies_and_an_unnamed_one_by_its_short_id(browser, client):
    sign_in(browser)
    assert '<a href="/studies">Studies</a>' in browser.get("/").text  # in the navigation
    study = {"base": TINY, "tricks": ["dropout"], "repeats": 1}  # 2 jobs
    named = client.post("/v1/studies", json={**study, "name": "drops"}).json()
    unnamed = client.post("/v1/studies", json=study).json()
    short = unnamed["id"][:8]
    page = browser.get("/studies")
    assert page.status_code == 200 and 'hx-get="/ui/studies"' in page.text
    table = browser.get("/ui/studies").text
    assert table.index(f'data-study="{unnamed["id"]}"') < table.index(f'data-study="{named["id"]}"')
    assert f'<a href="/studies/{named["id"]}">drops</a>' in table
    assert f'<a href="/studies/{unnamed["id"]}">{short}</a>' in table  # never an empty link
    assert table.count('<span class="status queued">queued</span>') == 2
    assert table.count("0/2 ended · queued 2") == 2 and "2 shown of 2" in table
    assert 'hx-trigger="every 3s"' in table  # it follows studies that wait or run
    # Wherever a study's name shows, an unnamed one shows its short id instead.
    study_page = browser.get(f"/studies/{unnamed['id']}").text
    assert f"<title>Study {short} · tricklab</title>" in study_page
    assert f"<h1>Study: {short}</h1>" in study_page
    link = f'<a href="/studies/{unnamed["id"]}">{short}</a>'
    assert browser.get("/ui/jobs").text.count(link) == 2
    assert link in browser.get(f"/jobs/{study_jobs(unnamed)[0]}").text

    client.post(f"/v1/studies/{unnamed['id']}/cancel")
    table = browser.get("/ui/studies").text
    assert '<span class="status cancelled">cancelled</span>' in table
    assert "2/2 ended · cancelled 2" in table


def test_the_studies_table_shows_ones_own_a_page_at_a_time(browser, client):
    sign_in(browser)
    user = client.post("/v1/users", json={"name": "bob", "role": "user"}).json()
    bob = TestClient(browser.app, headers={"Authorization": f"Bearer {user['token']}"})
    study = {"base": TINY, "tricks": ["dropout"], "repeats": 1}
    admins = [client.post("/v1/studies", json=study).json()["id"] for _ in range(100)]
    bobs = bob.post("/v1/studies", json=study).json()["id"]
    first = browser.get("/ui/studies").text  # the admin sees everyone's
    assert first.count("<tr data-study=") == 100 and admins[0] not in first and bobs in first
    assert "100 shown of 101" in first
    older = re.search(r'hx-get="(/ui/studies\?cursor=[^"]+)"', first).group(1)
    second = browser.get(older).text
    assert second.count("<tr data-study=") == 1 and admins[0] in second
    assert "Newest studies" in second and "Older studies" not in second
    assert 'hx-trigger="every 3s"' not in second  # only the newest page refreshes itself
    own = bob.get("/ui/studies").text
    assert own.count("<tr data-study=") == 1 and bobs in own and "1 shown of 1" in own


def test_a_session_ends_no_later_than_its_token(tmp_path, data_dir):
    from service.app import create_app

    settings = settings_in(tmp_path, data_dir, session_hours=48)
    with TestClient(create_app(settings), base_url=ORIGIN) as browser:
        admin = admin_of(browser)
        day = admin.post("/v1/me/tokens", json={"name": "a day", "expires_in_days": 1}).json()
        answer = browser.post("/signin", data={"token": day["token"]}, follow_redirects=False)
        age = int(re.search(r"Max-Age=(\d+)", answer.headers["set-cookie"]).group(1))
        assert 86_390 <= age <= 86_400  # the token's day, not the session's 48 hours
        answer = browser.post("/signin", data={"token": ADMIN_TOKEN}, follow_redirects=False)
        assert "Max-Age=172800" in answer.headers["set-cookie"]


# A search of 2 trials at once, 4 in all, on TINY; no job of it trains here.
SEARCH = {
    "name": "tiny random",
    "base": {**TINY, "epochs": 3},
    "space": {
        "learning_rate": {"type": "log_uniform", "low": 0.001, "high": 0.1},
        "hidden_units": {"type": "choice", "values": [[32, 16], [8]]},
    },
    "sampler": "random",
    "max_trials": 4,
    "max_concurrent_trials": 2,
    "scheduler": {"type": "asha", "min_epochs": 1, "eta": 3},
    "confirm": {"top": 1, "repeats": 2},
}


def trials_recorded(browser: TestClient, search_id: str, rows: dict[int, dict]) -> None:
    """Set trials' state and validation objective by epoch, as the search's advances record
    them from their jobs' metrics."""
    with Session(browser.app.state.tricklab.store.engine) as session, session.begin():
        for number, values in rows.items():
            session.execute(
                update(Trial)
                .where(Trial.search_id == search_id, Trial.number == number)
                .values(**values)
            )


def test_the_searches_page_lists_searches_with_their_trials_and_best_so_far(browser, client):
    sign_in(browser)
    assert '<a href="/searches">Searches</a>' in browser.get("/").text  # in the navigation
    search = client.post("/v1/searches", json=SEARCH).json()
    page = browser.get("/searches")
    assert page.status_code == 200 and 'hx-get="/ui/searches"' in page.text
    table = browser.get("/ui/searches").text
    assert f'<a href="/searches/{search["id"]}">tiny random</a>' in table
    assert f'<span class="status {search["status"]}">' in table
    assert "2 · running 2" in table and "1 shown of 1" in table
    assert 'hx-trigger="every 3s"' in table  # it follows searches that have not ended

    client.post(f"/v1/searches/{search['id']}/cancel")
    trials_recorded(browser, search["id"], {0: {"state": "completed", "values": {"3": 0.75}}})
    table = browser.get("/ui/searches").text
    assert '<span class="status cancelled">cancelled</span>' in table
    assert "2 · completed 1 · cancelled 1" in table
    assert "0.7500 <small>val_accuracy, trial 0</small>" in table
    assert 'hx-trigger="every 3s"' not in table


def test_the_search_page_shows_its_trials_values_and_plots_and_cancels(browser, client):
    csrf = sign_in(browser)
    search = client.post("/v1/searches", json=SEARCH).json()
    trials = client.get(f"/v1/searches/{search['id']}/trials").json()["trials"]
    url = f"/searches/{search['id']}"
    page = browser.get(url).text
    assert f'<h1>Search: tiny random <span class="status {search["status"]}">' in page
    assert 'hx-trigger="every 3s"' in page and 'id="cancel"' in page  # live until it ends
    assert "No trial has completed yet." in page and "<img" not in page  # nothing drawn yet
    plots = f"/v1/searches/{search['id']}/plots"
    assert browser.get(f"{plots}/parallel?format=svg").status_code == 409
    header = re.search(r"<thead>(.*?)</thead>", page, re.S).group(1)
    assert [cell for cell in re.findall(r'<th scope="col">([^<]*)</th>', header)] == [
        "Trial",
        "State",
        "Rung (epochs)",
        "Epochs",
        "learning_rate",
        "hidden_units",
        "val_accuracy at the last epoch",
        "Job",
    ]
    for trial in trials:
        row = re.search(rf'<tr data-trial="{trial["number"]}".*?</tr>', page, re.S).group(0)
        job = trial["job_id"]
        assert f'<a href="/jobs/{job}">{job[:8]}</a>' in row and "0 (1)" in row
        assert f"{trial['params']['learning_rate']:.4g}" in row
        assert ", ".join(map(str, trial["params"]["hidden_units"])) in row

    # The page's cancel posts to the API with the session's CSRF token, as htmx does.
    assert browser.post(f"/v1/searches/{search['id']}/cancel").status_code == 403
    assert browser.post(f"/v1/searches/{search['id']}/cancel", headers=csrf).status_code == 200
    trials_recorded(
        browser,
        search["id"],
        {
            0: {"state": "completed", "values": {"1": 0.5, "3": 0.75}},
            1: {"state": "pruned", "values": {"1": 0.25}},
        },
    )
    page = browser.get(url).text
    assert 'hx-trigger="every 3s"' not in page and 'id="cancel"' not in page
    assert "Trial 0: val_accuracy <strong>0.7500</strong> on validation" in page
    first, second = (
        re.search(rf'<tr data-trial="{n}".*?</tr>', page, re.S).group(0) for n in (0, 1)
    )
    assert "<td>0.7500</td>" in first and "<td>0.2500</td>" in second
    for name in ("parallel", "best", "rungs"):  # drawn by the API, the session's cookie its key
        assert f'<img class="plot" src="{plots}/{name}?format=svg"' in page
        image = browser.get(f"{plots}/{name}?format=svg")
        assert image.status_code == 200 and image.headers["content-type"] == "image/svg+xml"


def test_another_users_search_is_404_on_its_page_and_absent_from_their_list(browser, client):
    search = client.post("/v1/searches", json=SEARCH).json()
    user = client.post("/v1/users", json={"name": "bob", "role": "user"}).json()
    sign_in(browser, user["token"])
    missing = browser.get(f"/searches/{search['id']}")
    assert missing.status_code == 404 and search["id"] in missing.text
    assert browser.get("/searches/not-an-id").status_code == 404
    assert search["id"] not in browser.get("/ui/searches").text


def test_the_form_starts_empty_and_shows_each_default_of_the_chosen_architecture(
    browser, monkeypatch
):
    """Every input starts empty, its default its placeholder, so that the form sends only what
    the user changed: a trick parameter left alone then takes the default of the job's own
    architecture (dashboard.js shows the chosen one's from data-defaults)."""
    monkeypatch.setitem(ARCHITECTURE_DEFAULTS["cnn"], "dropout", {"rate": 0.25})
    sign_in(browser)
    form = browser.get("/new").text
    rate = re.search(r'<input id="p-dropout-rate"[^>]*>', form, re.S).group(0)
    assert 'value=""' in rate and 'placeholder="0.1"' in rate
    assert """data-defaults='{"cnn": "0.25", "mlp": "0.1"}'""" in rate
    assert "Default by architecture: mlp 0.1, cnn 0.25." in form
    momentum = re.search(r'<input id="p-momentum-momentum"[^>]*>', form, re.S).group(0)
    assert 'value=""' in momentum and 'placeholder="0.9"' in momentum
    spatial = re.search(r'<select id="p-dropout-spatial".*?</select>', form, re.S).group(0)
    assert '<option value="">default (false)</option>' in spatial and "selected" not in spatial
    epochs = re.search(r'<input id="f-epochs"[^>]*>', form, re.S).group(0)
    assert 'value=""' in epochs and 'placeholder="10"' in epochs
