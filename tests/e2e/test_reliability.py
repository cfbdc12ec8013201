"""Nothing lost, nothing run twice: real API and worker processes and real signals, each
scenario on SQLite and on PostgreSQL. `make chaos` runs the chaos scenario bigger."""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2 as httpx
import keras
import pytest
from sqlalchemy import text, update
from sqlalchemy.engine import make_url

from core import datasets
from core.results import EpochRow
from core.spec import JobSpec
from jobqueue.artifacts import sha256_of
from jobqueue.models import Job
from jobqueue.states import TERMINAL, JobStatus
from tests.support.auth import ADMIN_HEADERS
from tests.support.cluster import FAST_LEASES, Cluster, wait_for
from tests.support.crashing_worker import POISON_SEED
from tests.support.data import write_dataset
from worker import training
from worker.checkpoints import Snapshot

pytestmark = pytest.mark.e2e
SMALL = {"validation_size": 40, "hidden_units": [8], "learning_rate": 0.01}
CRASHING_WORKER = str(Path(__file__).parents[1] / "support" / "crashing_worker.py")


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small")
    write_dataset(root / "fashion-mnist", train=200, test=40)
    return root


@pytest.fixture
def make_cluster(
    tmp_path: Path, small_data: Path, database_url: str
) -> Iterator[Callable[..., Cluster]]:
    clusters: list[Cluster] = []

    def make(**settings: str) -> Cluster:
        cluster = Cluster(tmp_path, small_data, database_url, **{**FAST_LEASES, **settings})
        clusters.append(cluster)
        cluster.start_api()
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


def submit(cluster: Cluster, count: int, **spec: object) -> list[str]:
    ids = []
    for n in range(count):
        response = cluster.client.post("/v1/jobs", json={**SMALL, "seed": n, **spec})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def all_ended(cluster: Cluster, ids: list[str]) -> bool:
    return all(cluster.store.get(job_id).status in TERMINAL for job_id in ids)


def epochs_of(cluster: Cluster, job_id: str) -> list[int]:
    return [row.epoch for row in cluster.reads.metrics(job_id)]


def finishes(cluster: Cluster) -> Counter[str]:
    return Counter(re.findall(r"job=(\w+) succeeded", cluster.logs()))


# On SQLite: PostgreSQL's many workers are test_many_workers.py's sixteen.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_four_workers_run_100_jobs_each_exactly_once(make_cluster):
    cluster = make_cluster(LEASE_SECONDS="30", HEARTBEAT_SECONDS="3")  # nobody is killed here
    ids = submit(cluster, 100, epochs=1)
    for n in range(4):
        cluster.start_worker(f"w{n}")
    wait_for(lambda: all_ended(cluster, ids), 900, "100 jobs", every=1)

    jobs = [cluster.store.get(job_id) for job_id in ids]
    assert Counter(job.status for job in jobs) == {JobStatus.SUCCEEDED: 100}
    assert all(job.attempts == 1 and epochs_of(cluster, job.id) == [1] for job in jobs)
    assert Counter(re.findall(r"job=(\w+) claimed", cluster.logs())) == dict.fromkeys(ids, 1)
    assert finishes(cluster) == dict.fromkeys(ids, 1)
    assert {job.worker for job in jobs} == {"w0", "w1", "w2", "w3"}
    assert "database is locked" not in cluster.logs()


def test_chaos_kills_lose_nothing_and_resume_exactly(make_cluster, small_data, capsys):
    jobs, kills, epochs = (
        int(os.environ.get(f"TRICKLAB_CHAOS_{k}", d))
        # Small enough for `make test`'s time; `make chaos` runs it at scale.
        for k, d in (("JOBS", 8), ("KILLS", 8), ("EPOCHS", 12))
    )
    # Kills aim at running jobs, so one job may be hit several times: more attempts than
    # kills, so that no job can run out (the poison test checks that limit).
    cluster = make_cluster(MAX_ATTEMPTS=str(kills + 1))
    # A gentle learning rate: packed or alone, float sums in another order differ by ~1e-7 a
    # step, and at 0.001 that stays under 1e-6 over 15 epochs (measured on 20 seeds); at 0.01
    # this 8-unit net amplifies it past 1e-4 for some seeds, and exactness could not be told.
    ids = submit(cluster, jobs, epochs=epochs, learning_rate=0.001)
    workers = ["w0", "w1", "w2"]  # the live process in each slot; restarts get new names
    for name in workers:
        cluster.start_worker(name)

    def training_slots(mid_run: bool) -> list[int]:
        """The slots of workers holding a job; `mid_run`: one with a checkpoint and at least
        two epochs to go, so that killing it now cuts it off in the middle of its epochs."""
        busy = {
            job.worker
            for job in cluster.reads.list_jobs(JobStatus.RUNNING, 100)[0]
            if not mid_run or 1 <= job.epochs_done <= epochs - 2
        }
        return [slot for slot, name in enumerate(workers) if name in busy]

    rng = random.Random(7)
    made = 0
    for kill in range(kills):
        # Every other kill aims at a job mid-run, so that some run resumes from a checkpoint
        # however slow the machine (a loaded one can spend the random moments below before
        # any first epoch ends).
        mid_run = kill % 2 == 1
        slots = wait_for(
            lambda mid_run=mid_run: training_slots(mid_run) or all_ended(cluster, ids),
            300,
            "a worker in the middle of a job",
            every=0.05,
        )
        if slots is True:  # every job ended before every kill was spent
            break
        if not mid_run:
            # A random moment of a job's life (its first epoch ends about 0.8 s after the
            # claim, alone or in a pack): setting up, training, checkpointing, saving the
            # model, or already the next job.
            time.sleep(rng.uniform(0.3, 2.0))
        slot = rng.choice(slots)
        cluster.kill(workers[slot])
        workers[slot] = f"w{slot}.{kill + 1}"
        cluster.start_worker(workers[slot])  # its victim's job waits for the lease to expire
        made += 1
    wait_for(lambda: all_ended(cluster, ids), 900, "every job to end", every=1)

    # Resumed runs are exact: compare with uninterrupted runs of the same specs.
    splits = datasets.load("fashion_mnist", small_data, SMALL["validation_size"])
    reference: dict[int, list[EpochRow]] = {}
    lost: dict[str, str] = {}
    duplicated: dict[str, tuple[list[int], int]] = {}
    interrupted = resumed = cut_short = 0
    finished = finishes(cluster)
    for job_id in ids:
        job = cluster.store.get(job_id)
        if job.status != JobStatus.SUCCEEDED:
            lost[job_id] = job.status
        history = epochs_of(cluster, job_id)
        # Not `!= 1`: a worker killed between its finish commit and its log line leaves none.
        if history != list(range(1, epochs + 1)) or finished[job_id] > 1:
            duplicated[job_id] = (history, finished[job_id])
        interrupted += job.attempts > 1
        cut_short += job.attempts - 1
        resumed += len({row.attempt for row in cluster.reads.metrics(job_id)}) > 1
        spec = JobSpec.model_validate(job.spec)
        if spec.seed not in reference:
            rows: list[EpochRow] = []
            training.train(spec, splits, lambda row, snapshot, rows=rows: rows.append(row) or True)
            reference[spec.seed] = rows
        # Packed or alone: the same numbers, up to float sums taken in another order: every
        # metric of every epoch but its wall-clock seconds.
        for row, expected in zip(cluster.reads.metrics(job_id), reference[spec.seed], strict=True):
            got = EpochRow.model_validate(row).model_dump(exclude={"seconds"})
            want = expected.model_dump(exclude={"seconds"})
            assert got == pytest.approx(want, abs=1e-5), (job_id, row.epoch)
        # Every registered checkpoint and every model loads, and matches its checksum.
        artifacts = cluster.root / "artifacts"
        assert sha256_of(artifacts / job.checkpoint_path) == job.checkpoint_sha256
        assert Snapshot.load(artifacts / job.checkpoint_path).epoch == epochs
        assert sha256_of(artifacts / job.model_path) == job.model_sha256
        keras.saving.load_model(artifacts / job.model_path)

    with capsys.disabled():
        print(
            f"\nchaos: {jobs} jobs × {epochs} epochs, {len(workers)} workers, {made} SIGKILLs: "
            f"{cut_short} attempts cut short, {interrupted} jobs interrupted "
            f"({resumed} resumed from a checkpoint mid-run), "
            f"{len(lost)} lost, {len(duplicated)} duplicated"
        )
    assert (lost, duplicated) == ({}, {})
    assert resumed > 0


def freeze(cluster: Cluster, name: str, database_url: str) -> None:
    """SIGSTOP a worker at a moment it is not inside a transaction. (A process frozen inside
    one would hold SQLite's write lock, or PostgreSQL row locks until the server's
    idle-in-transaction timeout: a real hazard of SQLite, and a slow path on PostgreSQL.)"""
    url = make_url(database_url)
    for _ in range(500):
        cluster.signal(name, signal.SIGSTOP)
        if url.get_backend_name() == "sqlite":
            try:
                with sqlite3.connect(url.database, timeout=0) as probe:
                    probe.execute("BEGIN IMMEDIATE")
                    probe.rollback()
                return
            except sqlite3.OperationalError:  # somebody is writing: maybe the frozen one
                pass
        else:
            with cluster.store.engine.connect() as connection:
                busy = connection.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
                        "AND state <> 'idle'"
                    ),
                    {"name": f"tricklab-worker {name}"},
                )
            if not busy:
                return
        cluster.signal(name, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(f"{name} never paused outside a transaction")


def test_a_frozen_worker_never_writes_to_a_job_that_moved_on(make_cluster, database_url):
    cluster = make_cluster()
    cluster.start_worker("a")
    (job_id,) = submit(cluster, 1, epochs=120)
    wait_for(lambda: cluster.store.get(job_id).epochs_done >= 3, 120, "a few epochs")
    freeze(cluster, "a", database_url)
    frozen_at = cluster.store.get(job_id).epochs_done

    cluster.start_worker("b")  # takes the job over once the lease expires
    wait_for(lambda: cluster.store.get(job_id).status == JobStatus.SUCCEEDED, 300, "b to finish")
    cluster.signal("a", signal.SIGCONT)
    wait_for(lambda: f"job={job_id} cancelled or taken over" in cluster.log("a"), 60, "a to stop")

    job = cluster.store.get(job_id)
    rows = cluster.reads.metrics(job_id)
    assert [row.epoch for row in rows] == list(range(1, 121))
    assert all(row.attempt == (1 if row.epoch <= frozen_at else 2) for row in rows)
    assert (job.attempts, job.worker) == (2, "b")
    written_by_a = re.findall(rf"job={job_id} epoch=(\d+)/", cluster.log("a"))
    assert max(map(int, written_by_a)) == frozen_at
    assert finishes(cluster) == {job_id: 1}
    models = list((cluster.root / "artifacts" / "jobs" / job_id).glob("*/model.keras"))
    assert [m.relative_to(cluster.root / "artifacts").as_posix() for m in models] == [
        job.model_path
    ]


def test_sigterm_finishes_the_epoch_hands_back_and_another_worker_resumes(make_cluster):
    # A long lease: only the hand-back can put the job back in the queue this quickly.
    cluster = make_cluster(LEASE_SECONDS="120", HEARTBEAT_SECONDS="5")
    cluster.start_worker("a")
    (job_id,) = submit(cluster, 1, epochs=80)
    wait_for(lambda: cluster.store.get(job_id).epochs_done >= 2, 120, "a few epochs")

    signalled = time.monotonic()
    cluster.signal("a", signal.SIGTERM)
    assert cluster.processes["a"].wait(timeout=60) == 0
    # Epochs here last a fraction of a second: "within one epoch plus a few seconds".
    assert time.monotonic() - signalled < 20
    job = cluster.store.get(job_id)
    assert (job.status, job.lease_expires_at, job.failures) == (JobStatus.QUEUED, None, [])
    handed_back_at = job.checkpoint_epoch
    assert handed_back_at == job.epochs_done >= 2

    cluster.start_worker("b")
    wait_for(lambda: cluster.store.get(job_id).status == JobStatus.SUCCEEDED, 300, "b to finish")
    assert f"job={job_id} resuming after epoch {handed_back_at}" in cluster.log("b")
    rows = cluster.reads.metrics(job_id)
    assert [row.epoch for row in rows] == list(range(1, 81))
    # A hand-back is not a failed attempt: the one attempt went on in b, and reads so.
    assert {row.attempt for row in rows} == {1}
    job = cluster.client.get(f"/v1/jobs/{job_id}").json()
    assert (job["attempts"], job["max_attempts"], job["failures"]) == (1, 3, [])


def test_a_second_signal_stops_the_worker_at_once(make_cluster, tmp_path):
    cluster = make_cluster(LEASE_SECONDS="120", HEARTBEAT_SECONDS="5")
    # Long epochs, so that stopping "at once" and "after the epoch" are told apart.
    write_dataset(tmp_path / "big" / "fashion-mnist", train=20_000, test=40)
    cluster.env["TRICKLAB_DATA_DIR"] = str(tmp_path / "big")
    cluster.start_worker("a")
    (job_id,) = submit(cluster, 1, epochs=50, batch_size=4, hidden_units=[256, 256])
    wait_for(lambda: cluster.store.get(job_id).status == JobStatus.RUNNING, 120, "training")
    time.sleep(1)

    cluster.signal("a", signal.SIGTERM)
    # A signal that arrives before Python handled the previous one merges with it: wait.
    wait_for(lambda: "signal=SIGTERM: stopping after" in cluster.log("a"), 60, "the first")
    cluster.signal("a", signal.SIGTERM)
    assert cluster.processes["a"].wait(timeout=60) == 130  # 0 would mean it ended the epoch
    job = cluster.store.get(job_id)
    assert (job.status, job.lease_token) == (JobStatus.QUEUED, None)
    assert f"job={job_id} handed back to the queue: worker stopped at once" in cluster.log("a")


def test_a_poison_job_fails_after_max_attempts_while_others_flow(make_cluster):
    cluster = make_cluster(MAX_ATTEMPTS="3")
    (poison,) = submit(cluster, 1, epochs=2, seed=POISON_SEED)
    others = submit(cluster, 6, epochs=2)
    workers = ["p0", "p1"]
    for name in workers:
        cluster.start_worker(name, CRASHING_WORKER)

    def settled() -> bool:
        for name in workers:  # a supervisor restarting whatever died
            if not cluster.alive(name):
                cluster.start_worker(name, CRASHING_WORKER)
        return all_ended(cluster, [poison, *others])

    wait_for(settled, 600, "the jobs to settle", every=0.5)
    job = cluster.store.get(poison)
    assert (job.status, job.failure_reason, job.attempts) == (JobStatus.FAILED, "worker_lost", 3)
    assert [(f["attempt"], f["reason"]) for f in job.failures] == [
        (1, "worker_lost"),
        (2, "worker_lost"),
        (3, "worker_lost"),
    ]
    assert all(cluster.store.get(job_id).status == JobStatus.SUCCEEDED for job_id in others)


def test_a_stored_spec_that_no_longer_parses_fails_alone_and_the_worker_goes_on(make_cluster):
    # As an older tricklab could store it: a study's derived seed past the largest seed.
    cluster = make_cluster()
    before, poison, after = submit(cluster, 3, epochs=2)
    with cluster.store.engine.begin() as connection:
        spec = {**cluster.store.get(poison).spec, "seed": 2**31}
        connection.execute(update(Job).where(Job.id == poison).values(spec=spec))
    assert cluster.client.get("/v1/jobs").status_code == 200  # shown as stored
    cluster.start_worker("w")  # packs up to 8: all three are claimed together
    wait_for(lambda: all_ended(cluster, [before, poison, after]), 300, "the jobs to end")

    failed = cluster.client.get(f"/v1/jobs/{poison}").json()
    assert (failed["status"], failed["error"]["reason"], failed["attempts"]) == (
        "failed",
        "invalid_spec",
        1,
    )
    assert "seed: Input should be less than or equal to 2147483647" in failed["error"]["message"]
    assert {cluster.store.get(job).status for job in (before, after)} == {JobStatus.SUCCEEDED}
    (later,) = submit(cluster, 1, epochs=1, seed=7)  # the worker is still there
    wait_for(lambda: all_ended(cluster, [later]), 120, "a job submitted afterwards")
    assert cluster.store.get(later).status == JobStatus.SUCCEEDED and cluster.alive("w")


CLIENTS = 16


def test_every_returned_job_id_survives_the_api_being_killed(make_cluster):
    cluster = make_cluster()
    accepted: list[str] = []
    cut_off: list[int] = []  # the clients whose submitting the kill ended
    lock = threading.Lock()

    def submit_until_refused(client_number: int) -> None:
        with httpx.Client(base_url=cluster.url, timeout=30, headers=ADMIN_HEADERS) as client:
            for n in range(1000):  # until the API is gone; the bound stops only a runaway
                seed = client_number * 1000 + n
                try:
                    response = client.post("/v1/jobs", json={**SMALL, "seed": seed})
                except httpx.TransportError:
                    with lock:
                        cut_off.append(client_number)
                    return
                if response.status_code == 201:
                    with lock:
                        accepted.append(response.json()["id"])

    threads = [threading.Thread(target=submit_until_refused, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(accepted) >= 150, 120, "150 accepted submissions", every=0.01)
    cluster.kill("api")
    for thread in threads:
        thread.join(timeout=60)

    # The kill came while every client was still submitting.
    assert sorted(cut_off) == list(range(CLIENTS))
    cluster.start_api()
    assert len(accepted) == len(set(accepted)) >= 150
    for job_id in accepted:
        response = cluster.client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200 and response.json()["status"] == "queued"
