"""Searches through the doors a user has: HTTP against a real API and a real worker. ASHA pauses
trials at rungs and promotes the best, each trial's epochs train once; restarts of both
processes mid-search lose and repeat nothing; the best configurations and the base are
confirmed on fresh seeds; cancelling stops every trial."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.support.cluster import FAST_LEASES, Cluster, wait_for
from tests.support.data import TINY

pytestmark = pytest.mark.e2e
ENDED = ("succeeded", "failed", "cancelled")
# Rungs at 1 and 3 epochs, then all 9; up to 2 trials at once, 6 in all.
SEARCH = {
    "name": "tiny asha",
    "base": {**TINY, "epochs": 9},
    "space": {
        "learning_rate": {"type": "log_uniform", "low": 0.001, "high": 0.3},
        "hidden_units": {"type": "choice", "values": [[32, 16], [8]]},
        "tricks.dropout.rate": {"type": "uniform", "low": 0.1, "high": 0.5},
    },
    "sampler": "tpe",
    "max_trials": 6,
    "max_concurrent_trials": 2,
    "scheduler": {"type": "asha", "min_epochs": 1, "eta": 3},
    "confirm": {"top": 2, "repeats": 2},
    "seed": 3,
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Cluster]:
    """One API and one worker for the module: each test's searches are its own."""
    root = tmp_path_factory.mktemp("searches")
    with Cluster(root, data_dir, f"sqlite:///{root / 'tricklab.db'}", **FAST_LEASES) as c:
        c.start_api()
        c.start_worker("worker")
        yield c


def search_of(client: httpx.Client, search_id: str) -> dict:
    return client.get(f"/v1/searches/{search_id}").json()


def epochs_of(client: httpx.Client, job_id: str) -> list[int]:
    return [row["epoch"] for row in client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]]


def test_asha_pauses_promotes_and_confirms_on_fresh_seeds_through_restarts(stack):
    client = stack.client
    created = client.post("/v1/searches", json=SEARCH)
    assert created.status_code == 201, created.text
    search = created.json()
    assert created.headers["location"] == f"/v1/searches/{search['id']}"
    assert search["status"] in ("queued", "searching")
    assert search["trials"]["total"] == 2  # max_concurrent_trials asked at once

    # Restart both processes once the search is under way: a killed worker, a stopped API.
    wait_for(lambda: search_of(client, search["id"])["trials"]["total"] >= 3, 120, "trials")
    stack.kill("worker")
    stack.signal("api", signal.SIGTERM)
    stack.processes["api"].wait(timeout=30)
    stack.start_api()
    stack.start_worker("worker")

    done = wait_for(
        lambda: (s := search_of(client, search["id"]))["status"] in ENDED and s, 300, "the end"
    )
    assert done["status"] == "succeeded", (done["error"], stack.logs()[-3000:])

    listed = client.get(f"/v1/searches/{search['id']}/trials").json()
    assert listed["rungs"] == [1, 3, 9]
    trials = listed["trials"]
    assert [t["number"] for t in trials] == list(range(6))  # none lost, none asked twice
    states = Counter(t["state"] for t in trials)
    assert set(states) <= {"pruned", "completed", "failed"}, states
    assert states["completed"] >= 1 and states["pruned"] >= 1, states
    for trial in trials:
        epochs = epochs_of(client, trial["job_id"])
        # every epoch once, in order, through pauses, promotions and restarts
        assert epochs == list(range(1, len(epochs) + 1)), (trial, epochs)
        assert len(epochs) == listed["rungs"][trial["rung"]], trial
        assert sorted(map(int, trial["values"])) == epochs
        job = client.get(f"/v1/jobs/{trial['job_id']}").json()
        assert job["status"] == "succeeded"
        assert job["spec"]["seed"] == 0  # every trial on the base's seed
        if trial["state"] == "pruned":
            assert job["stopped_epoch"] == len(epochs) < 9
    promoted = [t for t in trials if t["rung"] > 0]
    assert promoted, "some trial went past its first rung"
    assert "paused" in stack.log("worker")

    report = client.get(f"/v1/searches/{search['id']}/report").json()
    assert report["selected_on"] == "validation"
    assert report["seeds"] == [1, 2]  # fresh: no trial trained on them
    best = report["best"]
    assert trials[best["trial"]]["state"] == "completed"
    names = [c["name"] for c in report["confirmed"]]
    assert names[0] == "base" and f"trial {best['trial']}" in names
    for confirmed in report["confirmed"]:
        assert confirmed["test_accuracy"]["n"] == 2
        seeds = [client.get(f"/v1/jobs/{j}").json()["spec"]["seed"] for j in confirmed["jobs"]]
        assert seeds == [1, 2]
    assert [e["against"] for e in report["confirmed"][1]["effects"]] == ["base"]
    assert isinstance(report["optimism"], float)
    assert "never used" in report["note"]


def test_cancelling_a_search_cancels_its_trials_paused_ones_included(stack):
    client = stack.client
    slow = {**SEARCH, "base": {**SEARCH["base"], "epochs": 30}, "max_trials": 20}
    slow["scheduler"] = {"type": "asha", "min_epochs": 1, "eta": 3}
    search = client.post("/v1/searches", json=slow).json()

    def paused() -> bool:
        trials = client.get(f"/v1/searches/{search['id']}/trials").json()["trials"]
        return any(t["state"] == "paused" for t in trials)

    wait_for(paused, 120, "a paused trial")
    cancelled = client.post(f"/v1/searches/{search['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    trials = client.get(f"/v1/searches/{search['id']}/trials").json()["trials"]
    for trial in trials:
        job = client.get(f"/v1/jobs/{trial['job_id']}").json()
        assert job["status"] in ENDED, job
    assert {t["state"] for t in trials} <= {"cancelled", "completed", "pruned"}
    # Nothing more is asked once cancelled, however often the search is advanced.
    time.sleep(4 * float(FAST_LEASES["SWEEP_SECONDS"]))
    assert search_of(client, search["id"])["trials"]["total"] == len(trials)
    for status in ("queued", "running", "paused"):
        assert client.get("/v1/jobs", params={"status": status}).json()["total"] == 0


def test_searches_are_their_owners_and_bad_ones_are_named(stack):
    client = stack.client
    refused = client.post(
        "/v1/searches", json={**SEARCH, "space": {"epochs": {"type": "int", "low": 1, "high": 3}}}
    )
    assert refused.status_code == 422
    assert "epochs" in refused.text and "learning_rate" in refused.text
    grid = client.post("/v1/searches", json={**SEARCH, "sampler": "grid"})
    assert grid.status_code == 422 and "learning_rate" in grid.text
    created = client.post("/v1/searches", json={**SEARCH, "max_trials": 1}).json()
    user = client.post("/v1/users", json={"name": "bea", "role": "user"}).json()
    bea = {"Authorization": f"Bearer {user['token']}"}
    assert client.get(f"/v1/searches/{created['id']}", headers=bea).status_code == 404
    assert client.get("/v1/searches", headers=bea).json()["total"] == 0
    assert client.get("/v1/searches").json()["searches"][0]["id"] == created["id"]
    client.post(f"/v1/searches/{created['id']}/cancel")  # the module's worker is shared
