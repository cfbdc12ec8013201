"""Sixteen worker processes on one PostgreSQL queue: every job claimed once, trained once,
and no lease lost (nothing kills a worker here, so any loss would be the queue's fault)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobqueue.states import TERMINAL, JobStatus
from tests.support.cluster import Cluster, wait_for
from tests.support.data import write_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
WORKERS = 16
JOBS = 48
SMALL = {"validation_size": 40, "hidden_units": [8], "learning_rate": 0.01, "epochs": 1}


@pytest.fixture
def cluster(tmp_path: Path, database_url: str) -> Iterator[Cluster]:
    data = write_dataset(tmp_path / "data" / "fashion-mnist", train=200, test=40).parent
    # A lease long enough that 16 processes starting TensorFlow on 2 cores cannot starve a
    # heartbeat past it: a lost lease then means the queue lost it. Packs of 3: pack mates
    # are taken under contention too, and 48 jobs are about one training a worker, which
    # keeps the test near a minute on 2 cores (starting 16 TensorFlows is most of it: 4.7 s
    # of CPU each). On JAX they would start in half that but compile every training with
    # XLA, which costs more.
    # Idle workers poll once a second, not ten times: sixteen pollers would otherwise keep
    # the two cores busy with empty claims while the others start.
    settings = {
        "LEASE_SECONDS": "30",
        "HEARTBEAT_SECONDS": "3",
        "PACK_SIZE": "3",
        "POLL_SECONDS": "1",
    }
    with Cluster(tmp_path, data, database_url, **settings) as running:
        running.start_api()
        # Sixteen processes on two cores: one thread each, not a pool each that only fights
        # the others for the cores.
        running.env.update(TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
        yield running


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_sixteen_workers_claim_each_job_once_and_lose_no_lease(cluster: Cluster) -> None:
    names = [f"w{n:02d}" for n in range(WORKERS)]
    for name in names:
        cluster.start_worker(name)
    # All of them idle and polling before the jobs come, so that they race for each one.
    wait_for(
        lambda: all("started device=" in cluster.log(name) for name in names),
        300,
        f"{WORKERS} workers to start",
        every=0.5,
    )
    ids = []
    for seed in range(JOBS):
        response = cluster.client.post("/v1/jobs", json={**SMALL, "seed": seed})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    wait_for(
        lambda: all(cluster.store.get(job_id).status in TERMINAL for job_id in ids),
        300,
        f"{JOBS} jobs to end",
        every=0.5,
    )

    logs = cluster.logs()
    jobs = [cluster.store.get(job_id) for job_id in ids]
    assert Counter(job.status for job in jobs) == {JobStatus.SUCCEEDED: JOBS}, logs[-5000:]
    # Claimed once: one attempt each, no failure recorded, one claim and one finish logged.
    assert [(job.id, job.attempts, job.failures) for job in jobs if job.attempts != 1] == []
    assert Counter(re.findall(r"job=(\w+) claimed", logs)) == dict.fromkeys(ids, 1)
    assert Counter(re.findall(r"job=(\w+) succeeded", logs)) == dict.fromkeys(ids, 1)
    assert all([row.epoch for row in cluster.reads.metrics(job.id)] == [1] for job in jobs)
    assert "lease lost" not in logs and "handed back" not in logs
    assert "could not claim or settle" not in logs
    # They did race: the jobs went to many workers, each job to the one that claimed it.
    assert len({job.worker for job in jobs}) >= WORKERS // 2, Counter(j.worker for j in jobs)
    assert all(cluster.alive(name) for name in names)
