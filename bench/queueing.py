"""Queue benchmark: what the job queue sustains, and whether its costs stay flat as the
history grows, on SQLite and on PostgreSQL.

What it does, for each database (a fresh SQLite file; a fresh PostgreSQL database, dropped
after):

1. Pre-fills two databases, a small and a large queue (1,000 and 100,000 jobs): half of the
   jobs queued, owned in turn by the admin and three other users, half finished (succeeded,
   some failed or cancelled) with their epoch rows, which is the history that grows. Users come
   through jobqueue.accounts; jobs, their job_tricks and epoch rows through one bulk INSERT
   per table and batch (the store's one-transaction-a-job `enqueue` would take minutes for
   100,000 on SQLite), in the rows the store itself writes (`JobSpec.model_dump`, the
   lifecycle's statuses). PostgreSQL's tables are then ANALYZEd, as autovacuum would have.
2. Starts the real API (`python -m service`) on each, and a pool of claimer processes, each
   with its own engine (`jobqueue.db.make_engine`). A claimer mirrors the worker's loop
   (worker/loop.py) with training replaced by a timed no-op that lives here: `claim`, one
   `heartbeat`, then per epoch the no-op and `record_epoch`, then `finish`.
3. For 1, 4 and 16 claimers, ROUNDS rounds of three sides, the one going first moving along
   each round: the database's own baseline (PostgreSQL: `pgbench`'s TPC-B-like script on a
   scratch database it initialised itself, `pgbench -i -s 1`; SQLite: processes writing one
   row a transaction, BEGIN IMMEDIATE, with the product's PRAGMAs: WAL, synchronous=FULL), the
   small queue and the large queue. A queue side runs the claimers for SECONDS, or until they
   have claimed 80% of the small queue's queued jobs, while this process asks the API for
   `GET /v1/jobs?limit=50` and `POST /v1/jobs` in turn, every 50 ms. Afterwards the side's
   database is put back as it was (claimed jobs queued again, their epochs and the submitted
   jobs deleted), so every round starts from the same queue.
4. Measures the sweep (`JobStore.requeue_expired`, two expired leases each time) among few
   and among many running jobs, alternately.

It prints claims per second, claim latency p50/p99, the API's list and submit latency p50/p99,
each side's median (min–max) over the rounds, the ratio large / small for every figure (for
claims per second small / large, so that every ratio is a cost: target ≤ 1.5×), and the queue
against the database's baseline. Nothing is asserted: it prints. `make bench` runs it;
`python -m bench.queueing --help` lists its options (a test runs it tiny).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import httpx2 as httpx
from sqlalchemy import Engine, Table, delete, insert, text, update
from sqlalchemy.engine import URL, make_url

from bench.common import Took, data_dir, order, spread
from bench.serve import free_port, start, wait_ready
from core.results import EpochRow, JobResult
from core.spec import JobSpec
from jobqueue.accounts import Accounts
from jobqueue.db import init_db, make_engine
from jobqueue.models import ADMIN, EpochMetrics, Job, JobTrick, trick_names
from jobqueue.states import JobStatus
from jobqueue.store import Checkpoint, JobStore

TOKEN = secrets.token_urlsafe(32)
AUTHORIZATION = {"Authorization": f"Bearer {TOKEN}"}
OWNERS = (ADMIN, "bench-1", "bench-2", "bench-3")
# The specs a team queues: the base model and a few tricks (job_tricks rows for each).
SPECS = [
    JobSpec.model_validate(document).model_dump(mode="json")
    for document in (
        {"epochs": 2},
        {"epochs": 2, "tricks": ["dropout"]},
        {"epochs": 2, "tricks": ["dropout", {"name": "weight_decay", "l2": 0.001}]},
        {"epochs": 2, "tricks": ["batch_norm", "early_stopping"]},
    )
]
BATCH = 2000
TARGET = 1.5
PROBE_EVERY = 0.05
FIGURES = ("claims/s", "claim p50", "claim p99", "list p50", "list p99", "submit p50", "submit p99")


# -- the pre-fill -------------------------------------------------------------------------


def epoch_row(job_id: str, epoch: int, attempt: int = 1) -> dict[str, Any]:
    """One epoch's metrics as the worker records them (plausible numbers)."""
    accuracy = 0.80 + 0.02 * epoch
    return {
        "job_id": job_id,
        "epoch": epoch,
        "attempt": attempt,
        "train_loss": 0.5 - 0.05 * epoch,
        "train_accuracy": accuracy,
        "val_loss": 0.45,
        "val_accuracy": accuracy - 0.01,
        "test_loss": 0.46,
        "test_accuracy": accuracy - 0.015,
        "train_objective": 0.5 - 0.05 * epoch,
        "learning_rate": 0.001,
        "seconds": 0.2,
    }


def result_of(epochs: int) -> JobResult:
    """A trained job's result, as the worker stores it."""
    return JobResult(
        epochs_trained=epochs,
        parameters=104_938,
        train_loss=0.38,
        train_accuracy=0.86,
        val_loss=0.41,
        val_accuracy=0.85,
        test_loss=0.42,
        test_accuracy=0.85,
        seconds=0.5,
    )


def job_row(n: int, status: JobStatus, created: datetime, epochs: int) -> dict[str, Any]:
    """A jobs row as the store writes it, for a job in `status` (queued, running with a live
    lease, or one of the ends)."""
    spec = SPECS[n % len(SPECS)]
    ended = status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
    started = created + timedelta(minutes=1) if status != JobStatus.QUEUED else None
    job_id = uuid.uuid4().hex
    row: dict[str, Any] = {
        "id": job_id,
        "owner": OWNERS[n % len(OWNERS)],
        "status": status,
        "spec": spec,
        "created_at": created,
        "started_at": started,
        "finished_at": created + timedelta(minutes=2) if ended else None,
        "idempotency_key": None,
        "attempts": 0 if status == JobStatus.QUEUED else 1,
        "max_attempts": 3,
        "failures": [],
        "worker": None if status == JobStatus.QUEUED else f"bench-host:{n % 64}",
        "lease_token": None,
        "lease_expires_at": None,
        "heartbeat_at": started,
        "epochs_done": epochs if status in (JobStatus.SUCCEEDED, JobStatus.FAILED) else 0,
        "checkpoint_epoch": None,
        "checkpoint_path": None,
        "checkpoint_sha256": None,
        "best_epoch": None,
        "stopped_epoch": None,
        "result": None,
        "failure_reason": None,
        "error_type": None,
        "error_message": None,
        "device": None if status == JobStatus.QUEUED else "cpu",
        "model_path": None,
        "model_sha256": None,
        "trained_seconds": 0.4 if ended else 0.0,
        "artifacts_deleted_at": None,
        "study_id": None,
    }
    if status == JobStatus.SUCCEEDED:
        row.update(
            result=result_of(epochs),
            best_epoch=epochs,
            checkpoint_epoch=epochs,
            checkpoint_path=f"jobs/{job_id}/x/checkpoint-{epochs}.npz",
            checkpoint_sha256="0" * 64,
            model_path=f"jobs/{job_id}/x/model.keras",
            model_sha256="0" * 64,
        )
    elif status == JobStatus.FAILED:
        row.update(
            failure_reason="diverged",
            error_type="TrainingDiverged",
            error_message="the loss became NaN",
            failures=[
                {
                    "attempt": 1,
                    "reason": "diverged",
                    "worker": row["worker"],
                    "error_type": "TrainingDiverged",
                    "message": "the loss became NaN",
                    "at": row["finished_at"].isoformat(),
                }
            ],
        )
    elif status == JobStatus.RUNNING:
        row.update(
            lease_token=secrets.token_hex(16),
            lease_expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
    return row


@dataclass
class Filled:
    """What a database was pre-filled with."""

    jobs: int
    queued: int
    history: int
    running: int
    seconds: float


def prefill(engine: Engine, history: int, queued: int, running: int, epochs: int) -> Filled:
    """Bulk-insert `history` finished jobs (with `epochs` epoch rows each when they ran), then
    `running` jobs holding live leases, then `queued` jobs, oldest first in that order."""
    began = time.monotonic()
    init_db(engine)
    accounts = Accounts(engine)
    for name in OWNERS[1:]:
        if accounts.named(name) is None:
            accounts.create_user(name, "user", None)
    total = history + running + queued
    # History over the past 30 days, the queue in the last hour: ordered as they were made.
    now = datetime.now(UTC)
    first = now - timedelta(days=30)
    step = (now - timedelta(hours=1) - first) / max(history, 1)
    queue_step = timedelta(hours=1) / max(running + queued, 1)
    with engine.begin() as connection:
        jobs: list[dict[str, Any]] = []
        for n in range(total):
            if n < history:
                # 90% succeeded, 5% failed, 5% cancelled (before they started).
                status = (JobStatus.SUCCEEDED,) * 18 + (JobStatus.FAILED, JobStatus.CANCELLED)
                created = first + step * n
                job = job_row(n, status[n % 20], created, epochs)
            else:
                created = now - timedelta(hours=1) + queue_step * (n - history)
                kind = JobStatus.RUNNING if n < history + running else JobStatus.QUEUED
                job = job_row(n, kind, created, epochs)
            jobs.append(job)
            if len(jobs) == BATCH or n == total - 1:
                _insert(connection, jobs)
                jobs = []
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("ANALYZE"))
    return Filled(total, queued, history, running, time.monotonic() - began)


def table(model: Any) -> Table:
    """A model's table, typed as one (its `__table__` is typed as any FromClause)."""
    return cast(Table, model.__table__)


def _insert(connection: Any, jobs: list[dict[str, Any]]) -> None:
    connection.execute(insert(table(Job)), jobs)
    tricks = [
        {"job_id": job["id"], "trick": name}
        for job in jobs
        for name in dict.fromkeys(trick_names(job["spec"]))
    ]
    if tricks:
        connection.execute(insert(table(JobTrick)), tricks)
    epochs = [
        epoch_row(job["id"], epoch) for job in jobs for epoch in range(1, job["epochs_done"] + 1)
    ]
    if epochs:
        connection.execute(insert(table(EpochMetrics)), epochs)


RESET_VALUES: dict[str, Any] = {
    "status": JobStatus.QUEUED,
    "attempts": 0,
    "worker": None,
    "device": None,
    "lease_token": None,
    "lease_expires_at": None,
    "heartbeat_at": None,
    "started_at": None,
    "finished_at": None,
    "epochs_done": 0,
    "checkpoint_epoch": None,
    "checkpoint_path": None,
    "checkpoint_sha256": None,
    "best_epoch": None,
    "stopped_epoch": None,
    "result": None,
    "model_path": None,
    "model_sha256": None,
    "trained_seconds": 0.0,
}


def put_back(engine: Engine, claimed: Sequence[str], submitted: Sequence[str]) -> None:
    """Undo a side's window: the jobs it claimed queued again without their epochs, the jobs
    the API was sent deleted; the queue is then as it was pre-filled."""
    with engine.begin() as connection:
        for ids, gone in ((list(claimed), False), (list(submitted), True)):
            for start_at in range(0, len(ids), 500):
                chunk = ids[start_at : start_at + 500]
                connection.execute(delete(EpochMetrics).where(EpochMetrics.job_id.in_(chunk)))
                if gone:
                    connection.execute(delete(JobTrick).where(JobTrick.job_id.in_(chunk)))
                    connection.execute(delete(Job).where(Job.id.in_(chunk)))
                else:
                    connection.execute(update(Job).where(Job.id.in_(chunk)).values(RESET_VALUES))


# -- the claimers: processes, each with its own engine --------------------------------------


def claimer(number: int, pipe: Connection, claimed_so_far: Any) -> None:
    """Serve commands from the benchmark until told to stop: claim jobs as a worker does,
    or write single-row SQLite transactions (the baseline)."""
    stores: dict[str, JobStore] = {}
    name = f"bench-claimer-{number}"
    while True:
        command = pipe.recv()
        if command["do"] == "stop":
            break
        if command["do"] == "dispose":
            for store in stores.values():
                store.engine.dispose()
            stores.clear()
            pipe.send(None)
            continue
        if command["do"] == "sqlite-baseline":
            pipe.send(_sqlite_writes(command, number))
            continue
        url = command["url"]
        if url not in stores:
            stores[url] = JobStore(make_engine(url, name=name))
        try:
            pipe.send(_claims(stores[url], command, name, claimed_so_far))
        except Exception as error:  # told, so that the benchmark stops saying why
            pipe.send(error)
            raise


def _wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def _claims(store: JobStore, command: dict[str, Any], name: str, counter: Any) -> dict[str, Any]:
    """The worker's sequence for each job until the deadline or the cap: claim, heartbeat,
    per epoch the no-op standing for training and record_epoch, finish."""
    latencies: list[float] = []
    jobs: list[float] = []  # the time each job spent in the store's calls
    ids: list[str] = []
    empty = lost = 0
    epochs, work = command["epochs"], command["work_ms"] / 1000
    _wait_until(command["start"])
    while time.time() < command["deadline"] and counter.value < command["cap"]:
        asked = time.perf_counter()
        claimed = store.claim(name, "bench")
        took = time.perf_counter() - asked
        if claimed is None:
            empty += 1
            time.sleep(0.01)
            continue
        with counter.get_lock():
            counter.value += 1
        latencies.append(took * 1000)
        job, lease = claimed
        ids.append(job.id)
        began = time.monotonic()
        calls = took
        asked = time.perf_counter()
        alive = store.heartbeat(lease)
        calls += time.perf_counter() - asked
        for epoch in range(1, epochs + 1):
            if not alive:
                break
            time.sleep(work)  # training, timed, in the benchmark only
            path = f"jobs/{job.id}/{lease.token}/checkpoint-{epoch}.npz"
            asked = time.perf_counter()
            alive = store.record_epoch(
                lease,
                EpochRow.model_validate(epoch_row(job.id, epoch)),
                Checkpoint(epoch, path, "0" * 64),
                time.monotonic() - began,
            )
            calls += time.perf_counter() - asked
        asked = time.perf_counter()
        alive = alive and store.finish(
            lease,
            result=result_of(epochs),
            best_epoch=epochs,
            stopped_epoch=None,
            model_path=f"jobs/{job.id}/{lease.token}/model.keras",
            model_sha256="0" * 64,
        )
        jobs.append((calls + time.perf_counter() - asked) * 1000)
        lost += not alive
    return {
        "latencies": latencies,
        "jobs": jobs,
        "ids": ids,
        "empty": empty,
        "lost": lost,
        "end": time.time(),
    }


def _sqlite_writes(command: dict[str, Any], number: int) -> dict[str, Any]:
    """The SQLite baseline: one row a write transaction, with the product's PRAGMAs."""
    connection = sqlite3.connect(command["path"], timeout=30, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA busy_timeout=30000")
    latencies = []
    _wait_until(command["start"])
    while time.time() < command["deadline"]:
        asked = time.perf_counter()
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "INSERT INTO writes (writer, at, payload) VALUES (?, ?, ?)",
            (number, time.time(), "x" * 100),
        )
        connection.execute("COMMIT")
        latencies.append((time.perf_counter() - asked) * 1000)
    connection.close()
    return {"latencies": latencies, "end": time.time()}


class Claimers:
    """A pool of claimer processes; a window runs the first `count` of them."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.counter = context.Value("i", 0)
        self.pipes: list[Connection] = []
        self.processes = []
        for number in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=claimer, args=(number, theirs, self.counter), daemon=True
            )
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)

    def run(self, count: int, command: dict[str, Any]) -> list[dict[str, Any]]:
        with self.counter.get_lock():
            self.counter.value = 0
        for pipe in self.pipes[:count]:
            pipe.send(command)
        results = [pipe.recv() for pipe in self.pipes[:count]]
        for result in results:
            if isinstance(result, Exception):
                raise RuntimeError(f"a claimer failed: {result!r}") from result
        return results

    def dispose(self) -> None:
        self.run(len(self.pipes), {"do": "dispose"})

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send({"do": "stop"})
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


# -- the API, asked meanwhile --------------------------------------------------------------


class Probe(threading.Thread):
    """Asks the API for its list and a submission in turn until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.lists: list[float] = []
        self.submits: list[float] = []
        self.submitted: list[str] = []
        self.errors = 0
        self.error = ""  # the last one
        self.failed: Exception | None = None
        self._done = threading.Event()

    def run(self) -> None:
        try:
            self._ask()
        except Exception as error:
            self.failed = error

    def _ask(self) -> None:
        with httpx.Client(base_url=self.url, headers=AUTHORIZATION, timeout=60) as client:
            while not self._done.is_set():
                asked = time.perf_counter()
                listed = client.get("/v1/jobs?limit=50")
                self.lists.append((time.perf_counter() - asked) * 1000)
                asked = time.perf_counter()
                submitted = client.post("/v1/jobs", json={"epochs": 2})
                self.submits.append((time.perf_counter() - asked) * 1000)
                for answer, expected in ((listed, 200), (submitted, 201)):
                    if answer.status_code != expected:
                        self.errors += 1
                        self.error = f"{answer.status_code} {answer.text[:300]}"
                if submitted.status_code == 201:
                    self.submitted.append(submitted.json()["id"])
                self._done.wait(PROBE_EVERY)

    def stop(self) -> None:
        self._done.set()
        self.join()
        if self.failed is not None:
            raise RuntimeError(f"the API at {self.url} failed: {self.failed!r}") from self.failed


# -- measuring -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@dataclass
class Side:
    """One database under measurement: a queue (with its API) or the baseline."""

    label: str
    url: str = ""
    engine: Engine | None = None
    api: subprocess.Popen[bytes] | None = None
    api_url: str = ""
    filled: Filled | None = None
    rounds: dict[int, list[dict[str, float]]] = field(default_factory=dict)


def queue_window(
    side: Side, claimers: Claimers, count: int, args: argparse.Namespace, cap: int
) -> dict[str, float]:
    probe = Probe(side.api_url)
    started = time.time() + 0.3
    command = {
        "do": "claim",
        "url": side.url,
        "start": started,
        "deadline": started + args.seconds,
        "cap": cap,
        "epochs": args.epochs,
        "work_ms": args.work_ms,
    }
    probe.start()
    results = claimers.run(count, command)
    probe.stop()
    assert side.engine is not None
    put_back(side.engine, [i for r in results for i in r["ids"]], probe.submitted)
    latencies = [latency for r in results for latency in r["latencies"]]
    elapsed = max(r["end"] for r in results) - started
    lost = sum(r["lost"] for r in results)
    if lost or probe.errors:
        print(
            f"    ! {side.label}: {lost} leases lost, {probe.errors} API errors {probe.error}",
            flush=True,
        )
    return {
        "claims/s": len(latencies) / elapsed,
        "claim p50": percentile(latencies, 50),
        "claim p99": percentile(latencies, 99),
        "list p50": percentile(probe.lists, 50),
        "list p99": percentile(probe.lists, 99),
        "submit p50": percentile(probe.submits, 50),
        "submit p99": percentile(probe.submits, 99),
        "claims": len(latencies),
        "job p50": percentile([ms for r in results for ms in r["jobs"]], 50),
    }


def sqlite_baseline_window(
    path: Path, claimers: Claimers, count: int, args: argparse.Namespace
) -> dict[str, float]:
    started = time.time() + 0.3
    command = {
        "do": "sqlite-baseline",
        "path": str(path),
        "start": started,
        "deadline": started + args.seconds,
    }
    results = claimers.run(count, command)
    latencies = [latency for r in results for latency in r["latencies"]]
    elapsed = max(r["end"] for r in results) - started
    return {
        "claims/s": len(latencies) / elapsed,
        "claim p50": percentile(latencies, 50),
        "claim p99": percentile(latencies, 99),
    }


def libpq(url: URL) -> tuple[list[str], dict[str, str]]:
    """pgbench's connection options and environment for a SQLAlchemy URL."""
    options = ["-h", url.host or "127.0.0.1", "-p", str(url.port or 5432)]
    if url.username:
        options += ["-U", url.username]
    env = {**os.environ}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return options, env


def pgbench_window(
    url: URL, count: int, args: argparse.Namespace, scratch: Path
) -> dict[str, float]:
    """pgbench's TPC-B-like transactions from `count` clients for SECONDS, each one's
    latency from its per-transaction log."""
    options, env = libpq(url)
    logs = scratch / f"pgbench-{count}-{time.monotonic_ns()}"
    logs.mkdir()
    seconds = max(1, round(args.seconds))
    finished = subprocess.run(
        [
            shutil.which("pgbench") or "pgbench",
            *options,
            "-n",
            "-c",
            str(count),
            "-j",
            str(min(count, 4)),
            "-T",
            str(seconds),
            "-l",
            f"--log-prefix={logs / 'log'}",
            url.database or "",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    latencies = [
        int(line.split()[2]) / 1000
        for log in logs.iterdir()
        for line in log.read_text().splitlines()
    ]
    tps = next(
        float(line.split()[2]) for line in finished.stdout.splitlines() if line.startswith("tps = ")
    )
    return {
        "claims/s": tps,
        "claim p50": percentile(latencies, 50),
        "claim p99": percentile(latencies, 99),
    }


def sweep_cost(
    engines: dict[str, Engine], args: argparse.Namespace, expired: int = 2
) -> dict[str, list[float]]:
    """Each sweep's seconds, alternating between the databases: every time `expired` of
    their running jobs are given an expired lease first, so each sweep has work to do."""
    stores = {label: JobStore(engine) for label, engine in engines.items()}
    victims: dict[str, list[str]] = {}
    for label, engine in engines.items():
        with engine.connect() as connection:
            victims[label] = list(
                connection.scalars(
                    text("SELECT id FROM jobs WHERE status = 'running' ORDER BY id LIMIT :n"),
                    {"n": expired},
                )
            )
    times: dict[str, list[float]] = {label: [] for label in engines}
    for number in range(args.sweeps):
        for label in order(list(engines), number):
            with engines[label].begin() as connection:
                connection.execute(
                    update(Job)
                    .where(Job.id.in_(victims[label]))
                    .values(
                        status=JobStatus.RUNNING,
                        attempts=1,
                        failures=[],
                        lease_token=secrets.token_hex(16),
                        lease_expires_at=datetime.now(UTC) - timedelta(seconds=1),
                    )
                )
            asked = time.perf_counter()
            moved = stores[label].requeue_expired()
            times[label].append((time.perf_counter() - asked) * 1000)
            if len(moved) != expired:
                print(f"    ! sweep {label}: moved {len(moved)}, not {expired}", flush=True)
    return times


# -- the databases -------------------------------------------------------------------------


@contextmanager
def postgres_databases(admin_url: str, names: Sequence[str]) -> Iterator[list[URL]]:
    """Fresh PostgreSQL databases, dropped afterwards (with any session still on them)."""
    admin = make_engine(admin_url)
    base = make_url(admin_url)
    made: list[str] = []
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            for name in names:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
                made.append(name)
        yield [base.set(database=name) for name in names]
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            for name in made:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def unreachable(url: str) -> str | None:
    """Why the PostgreSQL half cannot run here, or None: `make bench` goes on without it."""
    if shutil.which("pgbench") is None:
        return "pgbench is not on PATH (PostgreSQL's client tools)"
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        return f"cannot connect to {make_url(url).render_as_string()}: {first}"
    finally:
        engine.dispose()
    return None


def start_api(root: Path, label: str, url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "TRICKLAB_DATABASE_URL": url,
        "TRICKLAB_DATA_DIR": str(data_dir()),  # the API checks each spec against its data
        "TRICKLAB_ARTIFACTS_DIR": str(root / "artifacts"),
        "TRICKLAB_PORT": str(port),
        "TRICKLAB_ADMIN_TOKEN": TOKEN,
        "TRICKLAB_LOG_LEVEL": "WARNING",
        "TRICKLAB_QUOTA_ACTIVE_JOBS": "10000000",
    }
    api = start(root, f"api-{label}", env, "-m", "service")
    api_url = f"http://127.0.0.1:{port}"
    wait_ready(api_url, "/readyz")
    return api, api_url


# -- printing ------------------------------------------------------------------------------


def number(n: int) -> str:
    return f"{n:,}"


def cell(values: Sequence[float], figure: str) -> str:
    if not values:
        return "—"
    if figure == "claims/s":
        return spread(values, 0)
    return spread(values, 1)


def report(
    count: int,
    baseline: list[dict[str, float]],
    small: list[dict[str, float]],
    large: list[dict[str, float]],
    labels: tuple[str, str, str],
    steps: int,
) -> list[str]:
    """One claimer count's table; returns the figures that missed the target."""
    claimers = f"{count} claimer" + ("s" if count > 1 else "")
    print(
        f"\n  {claimers:<14} {labels[0]:>26} {labels[1]:>26} {labels[2]:>26}   "
        f"{'ratio large / small':>22}"
    )
    missed = []
    for figure in FIGURES:
        unit = "" if figure == "claims/s" else " ms"
        # Throughput is a cost the other way round: small / large, so > 1 is always worse.
        ratios = [
            (s[figure] / b[figure]) if figure == "claims/s" else (b[figure] / s[figure])
            for s, b in zip(small, large, strict=True)
        ]
        verdict = "met" if statistics.median(ratios) <= TARGET else "NOT MET"
        if verdict != "met":
            missed.append(f"{figure} at {claimers}")
        shown = [b[figure] for b in baseline if figure in b]
        print(
            f"    {figure + unit:<12} {cell(shown, figure):>26} "
            f"{cell([s[figure] for s in small], figure):>26} "
            f"{cell([b[figure] for b in large], figure):>26}   "
            f"{spread(ratios):>22} {verdict}"
        )
    pairs = list(zip(baseline, small, strict=True))
    per_job = [s["job p50"] / b["claim p50"] for b, s in pairs]
    rate = [b["claims/s"] / s["claims/s"] for b, s in pairs]
    claimed = [int(s["claims"]) for s in small] + [int(b["claims"]) for b in large]
    print(
        f"    against the baseline ({number(min(claimed))}–{number(max(claimed))} claims a "
        f"window): a job's {steps} calls to the store (claim, heartbeat, epochs, finish) take "
        f"{spread(per_job, 1)} baseline transactions' p50; baseline transactions/s ÷ claims/s "
        f"{spread(rate, 1)}"
    )
    return missed


# -- one database --------------------------------------------------------------------------


def bench_database(
    kind: str, args: argparse.Namespace, claimers: Claimers, root: Path
) -> list[str]:
    """Everything for one kind of database; returns the figures that missed the target."""
    small_jobs, large_jobs = args.sizes
    (root / kind).mkdir()
    run_id = uuid.uuid4().hex[:8]
    names = [f"bench_queue_{run_id}_{label}" for label in ("small", "large", "few", "many")]
    if kind == "sqlite":
        urls = [make_url(f"sqlite:///{root / kind / name}.db") for name in names]
        baseline_db = root / kind / "baseline.db"
        with sqlite3.connect(baseline_db) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(
                "CREATE TABLE writes (id INTEGER PRIMARY KEY, writer INTEGER, at REAL, "
                "payload TEXT)"
            )
        databases = _nothing(urls)
        title = "SQLite (WAL, synchronous=FULL)"
        baseline_label = "baseline: 1-row tx"
    else:
        databases = postgres_databases(args.postgres_url, [*names, f"bench_queue_{run_id}_pgbench"])
        title = f"PostgreSQL ({make_url(args.postgres_url).render_as_string()})"
        baseline_label = "baseline: pgbench"
    with databases as all_urls:
        urls = all_urls[:4]
        pgbench_url = all_urls[4] if kind != "sqlite" else None
        if pgbench_url is not None:
            options, env = libpq(pgbench_url)
            subprocess.run(
                ["pgbench", *options, "-i", "-q", "-s", "1", pgbench_url.database or ""],
                env=env,
                capture_output=True,
                check=True,
            )
        rendered = [url.render_as_string(hide_password=False) for url in urls]
        sides = {
            "small": Side(f"{number(small_jobs)} jobs", rendered[0]),
            "large": Side(f"{number(large_jobs)} jobs", rendered[1]),
        }
        print(f"\n== {title} ==", flush=True)
        for label, jobs in (("small", small_jobs), ("large", large_jobs)):
            side = sides[label]
            side.engine = make_engine(side.url, name="bench-queue")
            queued = jobs // 2
            side.filled = prefill(side.engine, jobs - queued, queued, 0, args.epochs)
            print(
                f"  queue of {number(jobs)} jobs: {number(queued)} queued ({len(OWNERS)} "
                f"owners), {number(jobs - queued)} finished with their epoch rows "
                f"({args.epochs} each when they ran); filled in {side.filled.seconds:.1f} s",
                flush=True,
            )
        try:
            for label, side in sides.items():
                side.api, side.api_url = start_api(root / kind, label, side.url)
            cap = max(1, int(0.8 * (small_jobs // 2)))
            print(
                f"  {args.rounds} rounds of {args.seconds:g} s a side (or {cap} claims), the "
                f"side going first moving along; {args.epochs} epochs a job with a "
                f"{args.work_ms:g} ms no-op each; median (min–max) over the rounds; the "
                "ratio is large / small, for claims/s small / large, so that above 1 is a cost",
                flush=True,
            )
            missed = []
            for count in args.claimers:
                results: dict[str, list[dict[str, float]]] = {
                    "baseline": [],
                    "small": [],
                    "large": [],
                }
                for round_number in range(args.rounds):
                    for which in order(["baseline", "small", "large"], round_number):
                        if which != "baseline":
                            window = queue_window(sides[which], claimers, count, args, cap)
                        elif pgbench_url is None:
                            window = sqlite_baseline_window(baseline_db, claimers, count, args)
                        else:
                            window = pgbench_window(pgbench_url, count, args, root / kind)
                        results[which].append(window)
                missed += report(
                    count,
                    results["baseline"],
                    results["small"],
                    results["large"],
                    (baseline_label, sides["small"].label, sides["large"].label),
                    3 + args.epochs,
                )
        finally:
            for side in sides.values():
                if side.api is not None:
                    side.api.terminate()
                    side.api.wait()
            claimers.dispose()
        for side in sides.values():
            assert side.engine is not None
            side.engine.dispose()
        missed += bench_sweep(urls[2:], args)
    return missed


@contextmanager
def _nothing(urls: list[URL]) -> Iterator[list[URL]]:
    yield urls


def bench_sweep(urls: Sequence[URL], args: argparse.Namespace) -> list[str]:
    few, many = args.sweep_running
    engines = {}
    history = args.sizes[0] // 2
    for url, running in zip(urls, (few, many), strict=True):
        engine = make_engine(url.render_as_string(hide_password=False), name="bench-sweep")
        prefill(engine, history, 0, running, args.epochs)
        engines[f"{number(running)} running"] = engine
    times = sweep_cost(engines, args)
    labels = list(engines)
    print(
        f"\n  one sweep (requeue_expired, 2 expired leases) among running jobs, "
        f"{args.sweeps} sweeps a side, alternating, beside {number(history)} finished jobs:"
    )
    for label in labels:
        print(
            f"    {label:>14}: p50 {percentile(times[label], 50):.2f} ms, "
            f"p99 {percentile(times[label], 99):.2f} ms"
        )
    # Per block of sweeps, so the ratio comes with its spread.
    blocks = max(1, min(args.rounds, args.sweeps // 5))
    size = args.sweeps // blocks
    ratios = [
        statistics.median(times[labels[1]][b * size : (b + 1) * size])
        / statistics.median(times[labels[0]][b * size : (b + 1) * size])
        for b in range(blocks)
    ]
    verdict = "met" if statistics.median(ratios) <= TARGET else "NOT MET"
    print(
        f"    sweep p50 ratio {labels[1]} / {labels[0]}: {spread(ratios)} over {blocks} "
        f"blocks; target ≤ {TARGET}×: {verdict}"
    )
    for engine in engines.values():
        engine.dispose()
    return [] if verdict == "met" else [f"sweep p50 with {labels[1]}"]


def sizes(text_value: str) -> list[int]:
    return [int(part.replace("_", "").replace(",", "")) for part in text_value.split("/")]


def add_postgres_url(parser: argparse.ArgumentParser) -> None:
    """The database benchmarks' --postgres-url: where they create (and drop) their own."""
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TRICKLAB_BENCH_POSTGRES_URL")
        or os.environ.get("TRICKLAB_TEST_POSTGRES_URL")
        or "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="a database to connect to while creating (and dropping) the benchmark's own; "
        "default TRICKLAB_BENCH_POSTGRES_URL, else TRICKLAB_TEST_POSTGRES_URL, else local; "
        "'' skips PostgreSQL",
    )


def main() -> None:
    took = Took("bench/queueing.py")
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--databases", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql"
    )
    add_postgres_url(parser)
    parser.add_argument(
        "--sizes", type=sizes, default=[1000, 100_000], help="small/large queue, jobs"
    )
    parser.add_argument(
        "--claimers", default="1,4,16", type=lambda v: [int(n) for n in v.split(",")]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per side and round")
    parser.add_argument("--epochs", type=int, default=2, help="epochs recorded per job")
    parser.add_argument("--work-ms", type=float, default=1.0, help="the no-op per epoch")
    parser.add_argument(
        "--sweep-running", type=sizes, default=[10, 1000], help="few/many running jobs"
    )
    parser.add_argument("--sweeps", type=int, default=100, help="per side")
    parser.add_argument(
        "--keep", type=Path, help="an empty folder to work in and leave (SQLite files, logs)"
    )
    args = parser.parse_args()
    kinds = [kind.strip() for kind in args.databases.split(",") if kind.strip()]
    print(
        f"bench/queueing.py: {', '.join(kinds)}; queues of {number(args.sizes[0])} and "
        f"{number(args.sizes[1])} jobs; {', '.join(map(str, args.claimers))} claimers",
        flush=True,
    )
    claimers = Claimers(max(args.claimers))
    missed: dict[str, list[str]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="tricklab-bench-queue-") as tmp:
            where = args.keep or Path(tmp)
            for kind in kinds:
                if kind == "postgresql" and (why := unreachable(args.postgres_url)):
                    print(f"\n== PostgreSQL: skipped, {why} ==", flush=True)
                    continue
                missed[kind] = bench_database(kind, args, claimers, where)
    finally:
        claimers.close()
    print()
    for kind, figures in missed.items():
        print(
            f"{kind}: target ≤ {TARGET}× "
            + (f"NOT MET for {', '.join(figures)}" if figures else "met for every figure")
        )
    took.report()


if __name__ == "__main__":
    main()
