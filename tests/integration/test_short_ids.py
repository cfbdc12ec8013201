"""Short ids: `id_prefix` on the job and study lists names the items whose id starts with it,
on both databases and over HTTP, within the caller's own items only."""

from __future__ import annotations

import uuid

import pytest

from core.spec import JobSpec
from jobqueue.models import ADMIN
from tests.support.auth import ADMIN_HEADERS
from tests.support.data import TINY
from tests.support.ids import chosen_ids

SHARED = "abcdef01"  # the first 8 digits, as the dashboard shows them
MINE, THEIRS, OTHER = SHARED + "0" * 24, SHARED + "1" * 24, "abcdef02" + "2" * 24
STUDY_MINE, STUDY_THEIRS = "5eed0000" + "0" * 24, "5eed0000" + "1" * 24


def test_a_prefix_is_a_range_of_ids_on_both_databases(any_store, any_reads):
    with chosen_ids(MINE, THEIRS, OTHER):
        for job_id, owner in ((MINE, ADMIN), (THEIRS, "alice"), (OTHER, ADMIN)):
            assert any_store.enqueue(JobSpec(), owner)[0].id == job_id
    any_store.enqueue(JobSpec(), ADMIN)  # a random id, starting elsewhere

    def listed(prefix: str, owner: str | None = None) -> tuple[list[str], int | None]:
        page, total = any_reads.list_jobs(owner=owner, id_prefix=prefix)
        return [job.id for job in page], total

    assert listed(SHARED) == ([THEIRS, MINE], 2)
    assert listed("abcdef0") == ([OTHER, THEIRS, MINE], 3)
    assert listed(MINE) == ([MINE], 1)
    assert listed(SHARED, owner=ADMIN) == ([MINE], 1)
    assert listed(SHARED + "2") == ([], 0)
    assert listed("abce") == ([], 0) and listed("abcdef1") == ([], 0)  # just past the range


def test_id_prefix_names_only_the_callers_own_jobs_and_studies(client):
    alice = client.post("/v1/users", json={"name": "alice", "role": "user"}).json()
    as_alice = {"Authorization": f"Bearer {alice['token']}"}
    study = {"base": TINY, "tricks": ["dropout"], "repeats": 1}  # a study of 2 jobs
    jobs_of = [uuid.uuid4().hex for _ in range(4)]
    # A study takes its own id, then its jobs'.
    with chosen_ids(MINE, THEIRS, STUDY_MINE, *jobs_of[:2], STUDY_THEIRS, *jobs_of[2:]):
        assert client.post("/v1/jobs", json=TINY).json()["id"] == MINE
        assert client.post("/v1/jobs", json=TINY, headers=as_alice).json()["id"] == THEIRS
        assert client.post("/v1/studies", json=study).json()["id"] == STUDY_MINE
        created = client.post("/v1/studies", json=study, headers=as_alice)
        assert created.json()["id"] == STUDY_THEIRS

    def ids(path: str, prefix: str, headers: dict[str, str] = ADMIN_HEADERS) -> list[str]:
        answer = client.get(path, params={"id_prefix": prefix}, headers=headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        items = body["jobs" if path == "/v1/jobs" else "studies"]
        assert body["total"] == len(items)
        return [item["id"] for item in items]

    assert ids("/v1/jobs", SHARED) == [THEIRS, MINE]  # an admin's: everyone's
    assert ids("/v1/jobs", SHARED, as_alice) == [THEIRS]  # alice's own, never the admin's
    assert ids("/v1/jobs", MINE[:12], as_alice) == []  # the admin's job stays unseen
    assert ids("/v1/studies", "5eed0000") == [STUDY_THEIRS, STUDY_MINE]
    assert ids("/v1/studies", "5eed0000", as_alice) == [STUDY_THEIRS]
    assert ids("/v1/studies", STUDY_MINE[:12], as_alice) == []
    page = client.get("/v1/jobs", params={"id_prefix": SHARED, "limit": 1}).json()
    assert page["next"] and f"id_prefix={SHARED}" in page["next"]  # the next page keeps it
    assert [job["id"] for job in client.get(page["next"]).json()["jobs"]] == [MINE]


@pytest.mark.parametrize("prefix", ["abc", "ABCDEF01", "abcx", "a" * 33, "abcd%"])
def test_a_malformed_prefix_is_a_422_naming_the_parameter_and_the_form(client, prefix):
    for path in ("/v1/jobs", "/v1/studies"):
        answer = client.get(path, params={"id_prefix": prefix})
        assert answer.status_code == 422, answer.text
        (issue,) = answer.json()["detail"]
        assert issue["loc"] == ["query", "id_prefix"] and "[0-9a-f]{4,32}" in issue["msg"]
