"""Who may do what, through the API: tokens, users, owners, quotas, and one authorisation
matrix generated from the app's own route table."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import text

from jobqueue.accounts import Accounts
from jobqueue.db import init_db, make_engine
from service import auth
from service.app import create_app
from service.auth import LOOKUP_THREADS, SESSION_COOKIE, Gate
from tests.support.auth import ADMIN_HEADERS, ADMIN_TOKEN
from tests.support.data import TINY
from tests.support.images import encode
from tests.support.inprocess import settings_in

STUDY = {"base": TINY, "tricks": ["dropout"], "repeats": 1}
SEARCH = {
    "base": TINY,
    "space": {"learning_rate": {"type": "log_uniform", "low": 0.001, "high": 0.1}},
    "max_trials": 1,
}


@dataclass
class User:
    id: str
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def app_client(settings) -> Iterator[TestClient]:
    """A client that sends no token unless told to."""
    with TestClient(create_app(settings)) as client:
        yield client


def add_user(client: TestClient, name: str, **fields: Any) -> User:
    answer = client.post("/v1/users", json={"name": name, **fields}, headers=ADMIN_HEADERS)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    return User(body["id"], body["name"], body["token"])


@pytest.fixture
def alice(app_client) -> User:
    return add_user(app_client, "alice")


@pytest.fixture
def bob(app_client) -> User:
    return add_user(app_client, "bob")


def submit(client: TestClient, user: User, **spec: Any) -> dict[str, Any]:
    answer = client.post("/v1/jobs", json={**TINY, **spec}, headers=user.headers)
    assert answer.status_code == 201, answer.text
    return answer.json()


# ---- tokens ---------------------------------------------------------------------------------


def test_without_a_valid_token_every_protected_route_is_401_with_a_bearer_challenge(
    app_client, alice
):
    cases = {
        "no header": {},
        "unknown token": {"Authorization": "Bearer tl_not-a-token"},
        "another scheme": {"Authorization": f"Basic {alice.token}"},
    }
    for what, headers in cases.items():
        answer = app_client.get("/v1/jobs", headers=headers)
        assert answer.status_code == 401, what
        assert answer.headers["www-authenticate"].startswith("Bearer"), what
        assert answer.json()["detail"], what
    assert "Authorization: Bearer <token>" in app_client.get("/v1/jobs").json()["detail"]
    assert app_client.get("/v1/jobs", headers=alice.headers).status_code == 200


def test_the_open_routes_need_no_token(app_client):
    for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
        assert app_client.get(path).status_code == 200, path


def test_tokens_are_random_and_stored_only_as_hashes(app_client, alice, settings):
    second = app_client.post("/v1/me/tokens", json={"name": "laptop"}, headers=alice.headers)
    assert second.status_code == 201
    secrets = [alice.token, second.json()["token"]]
    assert all(s.startswith("tl_") and len(s) >= 3 + 43 for s in secrets)  # 32 random bytes
    assert secrets[0] != secrets[1]
    engine = app_client.app.state.tricklab.store.engine
    with engine.connect() as connection:
        dump = "\n".join(
            str(row)
            for table in ("tokens", "users")
            for row in connection.execute(text(f"SELECT * FROM {table}"))
        )
    for secret in secrets:
        assert secret not in dump
        assert hashlib.sha256(secret.encode()).hexdigest() in dump
    listed = app_client.get("/v1/me/tokens", headers=alice.headers).json()["tokens"]
    assert [t["name"] for t in listed] == ["first token", "laptop"]
    assert all("token" not in t for t in listed)  # the secret is shown once


def test_a_revoked_or_expired_token_and_a_disabled_user_are_refused(app_client, alice):
    spare = app_client.post("/v1/me/tokens", json={"name": "spare"}, headers=alice.headers).json()
    spare_headers = {"Authorization": f"Bearer {spare['token']}"}
    assert app_client.get("/v1/me", headers=spare_headers).status_code == 200
    revoked = app_client.delete(f"/v1/me/tokens/{spare['id']}", headers=alice.headers)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    answer = app_client.get("/v1/me", headers=spare_headers)
    assert answer.status_code == 401 and "revoked" in answer.json()["detail"]

    expiring = app_client.post(
        f"/v1/users/{alice.id}/tokens",
        json={"name": "ci", "expires_in_days": 1},
        headers=ADMIN_HEADERS,
    ).json()
    assert expiring["expires_at"]
    with app_client.app.state.tricklab.store.engine.begin() as connection:  # a day later
        connection.execute(
            text("UPDATE tokens SET expires_at = '2020-01-01 00:00:00' WHERE id = :id"),
            {"id": expiring["id"]},
        )
    app_client.app.state.tricklab.gate.forget()
    answer = app_client.get("/v1/me", headers={"Authorization": f"Bearer {expiring['token']}"})
    assert answer.status_code == 401 and "expired" in answer.json()["detail"]

    patch = app_client.patch(
        f"/v1/users/{alice.id}", json={"disabled": True}, headers=ADMIN_HEADERS
    )
    assert patch.status_code == 200 and patch.json()["disabled_at"]
    answer = app_client.get("/v1/me", headers=alice.headers)
    assert answer.status_code == 401 and "disabled" in answer.json()["detail"]
    app_client.patch(f"/v1/users/{alice.id}", json={"disabled": False}, headers=ADMIN_HEADERS)
    assert app_client.get("/v1/me", headers=alice.headers).status_code == 200


# ---- users ---------------------------------------------------------------------------------


def test_an_admin_manages_users_and_a_user_only_themselves(app_client, alice):
    me = app_client.get("/v1/me", headers=alice.headers).json()
    assert (me["name"], me["role"], me["active_jobs"], me["quota"]) == ("alice", "user", 0, 200)
    assert app_client.get("/v1/users", headers=alice.headers).status_code == 403
    listed = app_client.get("/v1/users", headers=ADMIN_HEADERS).json()["users"]
    assert [u["name"] for u in listed] == ["admin", "alice"]

    taken = app_client.post("/v1/users", json={"name": "alice"}, headers=ADMIN_HEADERS)
    assert taken.status_code == 409 and "alice" in taken.json()["detail"]
    bad = app_client.post("/v1/users", json={"name": "Alice Smith"}, headers=ADMIN_HEADERS)
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "name"
    role = app_client.post("/v1/users", json={"name": "eve", "role": "root"}, headers=ADMIN_HEADERS)
    assert role.status_code == 422 and "'user' or 'admin'" in role.json()["detail"][0]["msg"]

    admin_id = listed[0]["id"]
    last = app_client.patch(f"/v1/users/{admin_id}", json={"disabled": True}, headers=ADMIN_HEADERS)
    assert last.status_code == 409 and "last enabled admin" in last.json()["detail"]
    promoted = app_client.patch(
        f"/v1/users/{alice.id}", json={"role": "admin"}, headers=ADMIN_HEADERS
    )
    assert promoted.json()["role"] == "admin"
    assert app_client.get("/v1/users", headers=alice.headers).status_code == 200


# ---- owners --------------------------------------------------------------------------------


def test_a_user_sees_and_acts_on_their_own_jobs_only(app_client, alice, bob):
    job = submit(app_client, alice)
    assert job["owner"] == "alice"
    base = f"/v1/jobs/{job['id']}"
    for method, path in [
        ("GET", base),
        ("GET", f"{base}/metrics"),
        ("GET", f"{base}/model"),
        ("GET", f"{base}/model/metadata"),
        ("GET", f"{base}/plots/curves"),
        ("POST", f"{base}/cancel"),
        ("DELETE", base),
        ("GET", f"/v1/compare?jobs={job['id']}"),
    ]:
        answer = app_client.request(method, path, headers=bob.headers)
        assert answer.status_code == 404, (method, path)
        assert job["id"] in answer.json()["detail"]  # as for a job that does not exist
    predicted = app_client.post(
        f"{base}/predict",
        files={"file": encode(np.zeros((28, 28), np.uint8))},
        headers=bob.headers,
    )
    assert predicted.status_code == 404
    assert app_client.get(base, headers=alice.headers).status_code == 200

    submit(app_client, bob)
    mine = app_client.get("/v1/jobs", headers=alice.headers).json()
    assert [j["owner"] for j in mine["jobs"]] == ["alice"] and mine["total"] == 1
    everyone = app_client.get("/v1/jobs", headers=ADMIN_HEADERS).json()
    assert sorted(j["owner"] for j in everyone["jobs"]) == ["alice", "bob"]
    only_bob = app_client.get("/v1/jobs?owner=bob", headers=ADMIN_HEADERS).json()
    assert [j["owner"] for j in only_bob["jobs"]] == ["bob"]
    snoop = app_client.get("/v1/jobs?owner=bob", headers=alice.headers)
    assert snoop.status_code == 403 and "admin" in snoop.json()["detail"]


def test_studies_are_their_owners_too(app_client, alice, bob):
    study = app_client.post("/v1/studies", json=STUDY, headers=alice.headers).json()
    assert study["owner"] == "alice"
    for path in ("", "/report", "/report.csv", "/plots/curves"):
        answer = app_client.get(f"/v1/studies/{study['id']}{path}", headers=bob.headers)
        assert answer.status_code == 404, path
    cancel = app_client.post(f"/v1/studies/{study['id']}/cancel", headers=bob.headers)
    assert cancel.status_code == 404
    assert app_client.get("/v1/studies", headers=bob.headers).json()["studies"] == []
    assert len(app_client.get("/v1/studies", headers=alice.headers).json()["studies"]) == 1
    # Its jobs are alice's: bob cannot reach them one by one either.
    job_id = app_client.get("/v1/jobs", headers=alice.headers).json()["jobs"][0]["id"]
    assert app_client.get(f"/v1/jobs/{job_id}", headers=bob.headers).status_code == 404


def test_idempotency_keys_are_per_owner(app_client, alice, bob):
    key = {"Idempotency-Key": "nightly-1"}
    first = app_client.post("/v1/jobs", json=TINY, headers={**alice.headers, **key})
    again = app_client.post("/v1/jobs", json=TINY, headers={**alice.headers, **key})
    other = app_client.post("/v1/jobs", json=TINY, headers={**bob.headers, **key})
    assert first.json()["id"] == again.json()["id"] != other.json()["id"]
    assert other.status_code == 201 and other.json()["owner"] == "bob"


def test_only_admins_see_which_worker_ran_a_job(app_client, alice):
    job = submit(app_client, alice)
    app_client.app.state.tricklab.store.claim("host-7:4242", "CPU")
    assert app_client.get(f"/v1/jobs/{job['id']}", headers=alice.headers).json()["worker"] is None
    shown = app_client.get(f"/v1/jobs/{job['id']}", headers=ADMIN_HEADERS).json()
    assert shown["worker"] == "host-7:4242"
    store = app_client.app.state.tricklab.store
    with store.engine.begin() as connection:  # the worker vanished a while ago
        connection.execute(text("UPDATE jobs SET lease_expires_at = '2020-01-01 00:00:00'"))
    store.requeue_expired()
    seen = app_client.get(f"/v1/jobs/{job['id']}", headers=alice.headers).json()
    assert seen["failures"][0]["worker"] is None and "host-7" not in str(seen)
    shown = app_client.get(f"/v1/jobs/{job['id']}", headers=ADMIN_HEADERS).json()
    assert shown["failures"][0]["worker"] == "host-7:4242"


# ---- quotas --------------------------------------------------------------------------------


def test_a_quota_bounds_active_jobs_and_refuses_a_study_whole(app_client):
    carol = add_user(app_client, "carol", quota_active_jobs=2)
    first = submit(app_client, carol)
    submit(app_client, carol)
    over = app_client.post("/v1/jobs", json=TINY, headers=carol.headers)
    assert over.status_code == 429
    assert "2 active" in over.json()["detail"] and "quota of 2" in over.json()["detail"]
    app_client.post(f"/v1/jobs/{first['id']}/cancel", headers=carol.headers)
    submit(app_client, carol)  # a cancelled job no longer counts

    app_client.patch(f"/v1/users/{carol.id}", json={"quota_active_jobs": 3}, headers=ADMIN_HEADERS)
    study = app_client.post(
        "/v1/studies", json={**STUDY, "repeats": 2}, headers=carol.headers
    )  # 2 variants × 2 seeds = 4 jobs, with 2 active and a quota of 3
    assert study.status_code == 429 and "4 jobs more" in study.json()["detail"]
    assert app_client.get("/v1/jobs", headers=carol.headers).json()["total"] == 3
    assert app_client.get("/v1/studies", headers=carol.headers).json()["total"] == 0


def test_the_default_quota_is_the_setting(tmp_path, data_dir):
    with TestClient(
        create_app(settings_in(tmp_path, data_dir, quota_active_jobs=1)), headers=ADMIN_HEADERS
    ) as client:
        assert client.post("/v1/jobs", json=TINY).status_code == 201
        answer = client.post("/v1/jobs", json=TINY)
        assert answer.status_code == 429 and "TRICKLAB_QUOTA_ACTIVE_JOBS" in answer.json()["detail"]


# ---- the matrix ----------------------------------------------------------------------------

# Who may call each route: "open" (anyone), "any" (any user), "owner" (the owner of the job or
# study in the path, and admins: others get 404), "admin". A route added without a rule fails.
RULES = {
    "healthz": "open",
    "readyz": "open",
    "tricks-list": "any",
    "metrics": "any",
    "me": "any",
    "me-tokens-list": "any",
    "me-tokens-create": "any",
    "me-tokens-revoke": "any",
    "jobs-submit": "any",
    "jobs-submit-batch": "any",
    "jobs-list": "any",
    "studies-create": "any",
    "studies-list": "any",
    "searches-create": "any",
    "searches-list": "any",
    "jobs-get": "owner",
    "jobs-metrics": "owner",
    "jobs-cancel": "owner",
    "jobs-delete": "owner",
    "jobs-model": "owner",
    "jobs-model-metadata": "owner",
    "jobs-predict": "owner",
    "jobs-plot": "owner",
    "studies-get": "owner",
    "studies-report": "owner",
    "studies-report-csv": "owner",
    "studies-cancel": "owner",
    "studies-plot": "owner",
    "searches-get": "owner",
    "searches-trials": "owner",
    "searches-report": "owner",
    "searches-trials-csv": "owner",
    "searches-report-csv": "owner",
    "searches-plot": "owner",
    "searches-cancel": "owner",
    "compare": "owner",
    "compare-csv": "owner",
    "compare-plot": "owner",
    "jobs-events": "owner",
    "studies-events": "owner",
    "searches-events": "owner",
    "users-create": "admin",
    "users-list": "admin",
    "users-get": "admin",
    "users-update": "admin",
    "users-tokens-list": "admin",
    "users-tokens-create": "admin",
    "users-tokens-revoke": "admin",
    "v2-live": "open",
    "v2-ready": "open",
    "v2-server": "any",
    "v2-model": "owner",
    "v2-model-ready": "owner",
    "v2-infer": "owner",
}
BODIES: dict[str, Any] = {
    "jobs-submit": {"json": TINY},
    "jobs-submit-batch": {"json": {"jobs": [TINY]}},
    "studies-create": {"json": STUDY},
    "searches-create": {"json": SEARCH},
    "users-update": {"json": {"quota_active_jobs": 50}},
    "users-tokens-create": {"json": {"name": "matrix"}},
    "me-tokens-create": {"json": {"name": "matrix"}},
    "jobs-predict": {"files": {"file": encode(np.zeros((28, 28), np.uint8))}},
    "v2-infer": {
        "json": {
            "inputs": [
                {"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0] * 784}
            ]
        }
    },
}


def test_every_route_answers_each_kind_of_caller_as_its_rule_says(app_client, alice, bob):
    """The routes come from the app's OpenAPI document, which its route table generates."""
    document = app_client.get("/openapi.json").json()
    routes = [
        (operation["operationId"], method.upper(), path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]
    assert {name for name, _, _ in routes} == set(RULES), "give every route a rule in RULES"
    job = submit(app_client, alice)["id"]
    study = app_client.post("/v1/studies", json=STUDY, headers=alice.headers).json()["id"]
    search = app_client.post("/v1/searches", json=SEARCH, headers=alice.headers).json()["id"]
    spare = app_client.post(
        f"/v1/users/{alice.id}/tokens", json={"name": "spare"}, headers=ADMIN_HEADERS
    ).json()["id"]
    values = {
        "job_id": job,
        "study_id": study,
        "search_id": search,
        "user_id": alice.id,
        "token_id": spare,
    }
    callers = {
        "anonymous": {},
        "owner": alice.headers,
        "other": bob.headers,
        "admin": ADMIN_HEADERS,
    }
    # State-changing routes late, so that the others meet the job still queued; the event
    # streams last, once the job, study and search have ended, so that they end at once too (an
    # in-process client would wait for an endless stream to end).
    late = (
        "jobs-cancel",
        "jobs-delete",
        "studies-cancel",
        "searches-cancel",
        "jobs-events",
        "studies-events",
        "searches-events",
    )
    routes.sort(key=lambda route: late.index(route[0]) + 1 if route[0] in late else 0)
    failures = []
    for name, method, template in routes:
        path = template.format(**values, name="curves")
        if name.startswith("compare"):
            path += f"?jobs={job}"
        rule = RULES[name]
        for who, headers in callers.items():
            body = BODIES.get(name, {})
            if name == "users-create":
                body = {"json": {"name": f"matrix-{who}"}}
            status = app_client.request(method, path, headers=headers, **body).status_code
            if not _allowed(rule, who, status):
                failures.append(f"{method} {path} as {who} ({rule}): {status}")
    assert not failures, "\n".join(failures)


def _allowed(rule: str, who: str, status: int) -> bool:
    if rule == "open":
        return status not in (401, 403)
    if who == "anonymous":
        return status == 401
    if rule == "admin" and who in ("owner", "other"):
        return status == 403
    if rule == "owner" and who == "other":
        return status == 404
    refused = (401, 403, 404) if rule == "owner" else (401, 403)
    return status not in refused


# ---- the admin's token at start-up ---------------------------------------------------------


def test_the_admin_token_is_generated_once_into_a_private_file(tmp_path, data_dir):
    settings = settings_in(tmp_path, data_dir, admin_token=None)
    token_file = tmp_path / "admin-token"  # beside the database
    assert settings.token_file == token_file
    for _ in range(2):  # a restart keeps it
        with TestClient(create_app(settings)) as client:
            token = token_file.read_text().strip()
            me = client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200 and me.json()["name"] == "admin"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert token.startswith("tl_")


def test_a_changed_admin_token_setting_replaces_the_old_token(tmp_path, data_dir):
    old, new = "tl_" + "a" * 40, "tl_" + "b" * 40
    for secret in (old, new):
        with TestClient(create_app(settings_in(tmp_path, data_dir, admin_token=secret))) as client:
            pass
    with client:
        assert client.get("/v1/me", headers={"Authorization": f"Bearer {new}"}).status_code == 200
        refused = client.get("/v1/me", headers={"Authorization": f"Bearer {old}"})
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    assert not (tmp_path / "admin-token").exists()  # the setting is the token: no file


def test_switching_the_admin_token_between_the_variable_and_the_file_ends_the_old_one(
    tmp_path, data_dir
):
    """Each start with another source of the admin's token (TRICKLAB_ADMIN_TOKEN, or the
    file when it is unset) revokes the one before, and the dashboard sessions it opened."""
    variable, other = "tl_" + "v" * 40, "tl_" + "w" * 40
    token_file = tmp_path / "admin-token"

    def start(admin_token: str | None) -> TestClient:
        return TestClient(create_app(settings_in(tmp_path, data_dir, admin_token=admin_token)))

    def works(client: TestClient, secret: str) -> bool:
        answer = client.get("/v1/me", headers={"Authorization": f"Bearer {secret}"})
        assert answer.status_code in (200, 401) and ("revoked" in answer.text) != answer.is_success
        return answer.is_success

    with start(variable) as client:
        assert works(client, variable)
        signed_in = client.post("/signin", data={"token": variable}, follow_redirects=False)
        session = {"Cookie": f"{SESSION_COOKIE}={signed_in.cookies[SESSION_COOKIE]}"}
        assert client.get("/v1/me", headers=session).status_code == 200
    with start(None) as client:  # the variable unset: a token file, and the variable's ends
        from_file = token_file.read_text().strip()
        assert works(client, from_file) and not works(client, variable)
        ended = client.get("/v1/me", headers=session)
        assert ended.status_code == 401 and "session ended" in ended.json()["detail"]
    with start(other) as client:  # the variable again, another value: the file's ends
        assert works(client, other) and not works(client, from_file)
        assert not works(client, variable)  # a revoked token is never revived
    with start(None) as client:  # the file's token was revoked: a new one replaces it
        renewed = token_file.read_text().strip()
        assert renewed != from_file and token_file.stat().st_mode & 0o777 == 0o600
        assert works(client, renewed)
        assert not any(works(client, s) for s in (variable, other, from_file))


def test_another_users_token_as_the_admins_stops_the_start_and_locks_no_one_out(tmp_path, data_dir):
    """TRICKLAB_ADMIN_TOKEN set to a user's token: the API refuses to start, naming the
    problem and never the token, and revokes nothing: the admin's token and the user's work."""
    admin_secret = "tl_" + "a" * 40
    with TestClient(create_app(settings_in(tmp_path, data_dir, admin_token=admin_secret))) as c:
        answer = c.post(
            "/v1/users",
            json={"name": "alice", "role": "user"},
            headers={"Authorization": f"Bearer {admin_secret}"},
        )
        alices = answer.json()["token"]
    refused = pytest.raises(RuntimeError, match="TRICKLAB_ADMIN_TOKEN holds the token of another")
    with (
        refused as error,
        TestClient(create_app(settings_in(tmp_path, data_dir, admin_token=alices))),
    ):
        pass
    assert alices not in str(error.value) and "\n" not in str(error.value)
    with TestClient(create_app(settings_in(tmp_path, data_dir, admin_token=admin_secret))) as c:
        for secret, name in ((admin_secret, "admin"), (alices, "alice")):
            me = c.get("/v1/me", headers={"Authorization": f"Bearer {secret}"})
            assert me.status_code == 200 and me.json()["name"] == name


def test_a_token_merely_named_after_a_start_up_source_outlives_a_restart(tmp_path, data_dir):
    """Only tokens registered from TRICKLAB_ADMIN_TOKEN or the token file are replaced at start,
    not one an admin issued and named so."""
    admin_secret = "tl_" + "a" * 40
    admin = {"Authorization": f"Bearer {admin_secret}"}

    def start() -> TestClient:
        return TestClient(create_app(settings_in(tmp_path, data_dir, admin_token=admin_secret)))

    issued = {}
    with start() as client:
        admin_id = client.get("/v1/me", headers=admin).json()["id"]
        for name in ("TRICKLAB_ADMIN_TOKEN", "admin-token file"):
            answer = client.post(f"/v1/users/{admin_id}/tokens", json={"name": name}, headers=admin)
            assert answer.status_code == 201, answer.text
            issued[name] = answer.json()["token"]
    with start() as client:
        for secret in (admin_secret, *issued.values()):
            me = client.get("/v1/me", headers={"Authorization": f"Bearer {secret}"})
            assert me.status_code == 200, me.text


def test_a_short_admin_token_is_refused(tmp_path, data_dir):
    with pytest.raises(ValidationError, match="at least 32 characters"):
        settings_in(tmp_path, data_dir, admin_token="secret")


# ---- looking tokens up -------------------------------------------------------------------


class CountingAccounts(Accounts):
    """The accounts on the test's database, counting token lookups and holding each until
    `release` is set."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.calls = self.inside = 0
        self.lock = threading.Lock()
        self.release = threading.Event()

    def identify(self, secret: str) -> Any:
        with self.lock:
            self.calls += 1
            self.inside += 1
        try:
            self.release.wait(60)
            return super().identify(secret)
        finally:
            with self.lock:
                self.inside -= 1


@pytest.fixture
def counting(settings) -> CountingAccounts:
    engine = make_engine(settings.database_url)
    init_db(engine)
    accounts = CountingAccounts(engine)
    auth.admin_token(settings, accounts)  # as the API's start does
    return accounts


async def refused(gate: Gate, secret: str) -> None:
    with pytest.raises(HTTPException) as error:
        await gate.identify(secret)
    assert error.value.status_code == 401 and "unknown token" in error.value.detail


def test_a_flood_of_unknown_tokens_holds_only_the_gates_own_threads(settings, counting):
    """Unknown tokens are looked up LOOKUP_THREADS at a time, in threads of their own: the
    thread pool that synchronous routes run in stays free; and each 401 is remembered."""
    gate = Gate(counting, settings)
    flood = [f"tl_unknown-{i}" for i in range(60)]  # more than the default pool's 40 threads

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for secret in flood:
                group.start_soon(refused, gate, secret)
            with anyio.fail_after(30):
                while counting.inside < LOOKUP_THREADS:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.5)  # time for more to start, were they allowed to
            assert counting.inside == LOOKUP_THREADS
            with anyio.fail_after(30):  # a synchronous route's thread is there at once
                assert await anyio.to_thread.run_sync(lambda: "free") == "free"
            counting.release.set()
        assert counting.calls == len(flood)
        for secret in flood:  # remembered: no second lookup
            await refused(gate, secret)
        assert counting.calls == len(flood)
        assert (await gate.identify(ADMIN_TOKEN)).name == "admin"
        assert counting.calls == len(flood) + 1

    anyio.run(main)


def test_remembered_refusals_are_bounded_and_never_push_out_known_tokens(
    settings, counting, monkeypatch
):
    monkeypatch.setattr(auth, "CACHE_ENTRIES", 4)
    counting.release.set()
    gate = Gate(counting, settings)

    async def main() -> None:
        assert (await gate.identify(ADMIN_TOKEN)).name == "admin"
        for i in range(6):
            await refused(gate, f"tl_unknown-{i}")
        assert counting.calls == 7
        for i in range(2, 6):  # the newest four are remembered
            await refused(gate, f"tl_unknown-{i}")
        assert (await gate.identify(ADMIN_TOKEN)).name == "admin"  # and so is the known one
        assert counting.calls == 7
        await refused(gate, "tl_unknown-0")  # the oldest went
        assert counting.calls == 8

    anyio.run(main)
