"""The retention policy, on each database: the API applies it on its schedule, archiving the
metrics and deleting the files of jobs that ended long enough ago, and nothing else; the
command applies it at once and says what it removed. Runs at once (commands and the API's
periodic runs) archive every row exactly once and lose none; an archive that cannot be written
or read back leaves the rows in the database; a run killed midway loses nothing."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.engine import make_url

from bench.queueing import prefill
from jobqueue import retention
from jobqueue.artifacts import ArtifactStore
from jobqueue.db import WRITE, make_engine
from jobqueue.models import EpochMetrics, Job, utcnow
from jobqueue.store import JobStore
from tests.support.auth import ADMIN_HEADERS
from tests.support.data import TINY, tiny_images
from tests.support.inprocess import drain_queue, settings_in


def ended_days_ago(store: JobStore, job_id: str, days: float) -> None:
    with store.engine.begin() as connection:
        connection.execute(
            update(Job).where(Job.id == job_id).values(finished_at=utcnow() - timedelta(days=days))
        )


@pytest.mark.slow  # trains three tiny jobs on each database
def test_old_jobs_give_back_their_metrics_and_files_and_nothing_else(
    database_url, tmp_path, data_dir
):
    settings = settings_in(
        tmp_path,
        data_dir,
        database_url=database_url,
        retain_metrics_days=1,
        retain_artifacts_days=2,
        retention_seconds=0.2,
    )
    from service.app import create_app

    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        old, older, recent = (
            client.post("/v1/jobs", json={**TINY, "seed": n}).json()["id"] for n in range(3)
        )
        drain_queue(settings)
        running = client.post("/v1/jobs", json=TINY).json()["id"]
        store = JobStore(make_engine(database_url))
        store.claim("w", "CPU")
        ended_days_ago(store, older, 3)  # past both limits
        ended_days_ago(store, old, 1.5)  # past the metrics' limit only

        def archived(job_id: str) -> bool:
            return client.get(f"/v1/jobs/{job_id}").json()["metrics_archived_at"] is not None

        deadline = time.monotonic() + 30
        while not (archived(old) and archived(older)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert archived(old) and archived(older)
        time.sleep(0.5)  # a few more passes change nothing more
        assert not archived(recent) and not archived(running)
        assert client.get(f"/v1/jobs/{older}/metrics").json()["epochs"] == []
        assert len(client.get(f"/v1/jobs/{recent}/metrics").json()["epochs"]) == TINY["epochs"]
        # The older job's files are gone (its model is 410), the old one's still serve.
        assert client.get(f"/v1/jobs/{older}").json()["artifacts_deleted_at"] is not None
        assert client.get(f"/v1/jobs/{older}/model").status_code == 410
        images, _ = tiny_images(1, seed=5)
        predicted = client.post(f"/v1/jobs/{old}/predict", json={"instances": images.tolist()})
        assert predicted.status_code == 200
        assert client.get(f"/v1/jobs/{running}").json()["status"] == "running"
        counts = client.get("/v1/jobs").json()["total"]
        assert counts == 4  # the jobs themselves stay

    archives = sorted((tmp_path / "artifacts" / "archive").glob("metrics-*.jsonl.gz"))
    rows = [
        json.loads(line)
        for path in archives
        for line in gzip.decompress(path.read_bytes()).splitlines()
    ]
    assert sorted((row["job_id"], row["epoch"]) for row in rows) == sorted(
        (job, epoch) for job in (old, older) for epoch in range(1, TINY["epochs"] + 1)
    )
    assert {"test_accuracy", "train_loss", "attempt"} <= set(rows[0])

    # The command, at once, with the limits it is given.
    ended_days_ago(store, recent, 10)
    env = {
        **os.environ,
        "TRICKLAB_DATABASE_URL": database_url,
        "TRICKLAB_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
    }
    command = [
        sys.executable,
        "-m",
        "jobqueue.retention",
        "--metrics-days",
        "7",
        "--files-days",
        "7",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"archived and removed {TINY['epochs']} epoch rows of 1 job "), (
        done.stdout
    )
    assert "deleted the files of 1 job," in done.stdout  # the old one ended 1.5 days ago
    assert not (tmp_path / "artifacts" / "jobs" / recent).exists()
    again = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert again.stdout.startswith("archived and removed 0 epoch rows of 0 jobs")


def test_the_command_without_a_policy_says_what_to_set(tmp_path):
    env = {**os.environ, "TRICKLAB_DATABASE_URL": f"sqlite:///{tmp_path / 't.db'}"}
    env.pop("TRICKLAB_RETAIN_METRICS_DAYS", None)
    done = subprocess.run(
        [sys.executable, "-m", "jobqueue.retention"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "set TRICKLAB_RETAIN_METRICS_DAYS or TRICKLAB_RETAIN_ARTIFACTS_DAYS" in done.stderr


# Archive every job that ended more than 15 minutes ago: the whole prefilled history.
PAST = "0.01"
HISTORY = 250  # ended jobs; most have 6 epoch rows
Key = tuple[str, int]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on database_url, holding an ended history of HISTORY jobs, as the
    benchmarks fill it (most succeeded with their epoch rows; a few failed or cancelled)."""
    engine = make_engine(database_url)
    prefill(engine, HISTORY, 0, 0, 6)
    yield engine
    engine.dispose()


def database_rows(engine: Engine) -> dict[Key, dict[str, Any]]:
    with engine.connect() as connection:
        found = connection.execute(select(EpochMetrics.__table__)).mappings().all()
    return {(row["job_id"], row["epoch"]): dict(row) for row in found}


def unarchived_jobs(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.finished_at.is_not(None), Job.metrics_archived_at.is_(None))
            )
            or 0
        )


def archives(artifacts: Path) -> list[Path]:
    return sorted((artifacts / "archive").glob("metrics-*.jsonl.gz"))


def archived_rows(artifacts: Path) -> list[dict[str, Any]]:
    """Every row of every archive, read as docs/operations.md tells readers to."""
    return [
        json.loads(line)
        for path in archives(artifacts)
        for line in gzip.decompress(path.read_bytes()).splitlines()
    ]


def assert_archived_once(artifacts: Path, before: dict[Key, dict[str, Any]]) -> None:
    """Every row the database held is in exactly one archive, as it was."""
    rows = archived_rows(artifacts)
    keys = [(row["job_id"], row["epoch"]) for row in rows]
    assert len(keys) == len(set(keys)) == len(before)
    assert dict(zip(keys, rows, strict=True)) == before


def hidden_files(artifacts: Path) -> list[str]:
    return sorted(path.name for path in (artifacts / "archive").glob(".*"))


def run_policy(url: str, artifacts: Path, batch: int, **options: Any) -> retention.Removed:
    """One application of the metrics' policy, on an engine of its own, as an API process
    applies it on its schedule."""
    engine = make_engine(url)
    try:
        return retention.apply(
            JobStore(engine),
            ArtifactStore(artifacts),
            options.pop("days", float(PAST)),
            None,
            batch=batch,
            **options,
        )
    finally:
        engine.dispose()


def command(url: str, artifacts: Path, *options: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "TRICKLAB_DATABASE_URL": url, "TRICKLAB_ARTIFACTS_DIR": str(artifacts)}
    return [sys.executable, "-m", "jobqueue.retention", "--metrics-days", PAST, *options], env


def reported(stdout: str) -> tuple[int, list[Path]]:
    """The rows and the archives a command says it archived."""
    assert stdout.startswith("archived and removed "), stdout
    listed = stdout.split("(", 1)[1].split(")", 1)[0]
    paths = [] if listed == "no archive written" else [Path(p) for p in listed.split(", ")]
    return int(stdout.split()[3]), paths


def test_commands_and_periodic_runs_at_once_archive_every_row_once(database_url, engine, tmp_path):
    """Two commands and three of the API's periodic runs (threads, each with its own engine, as
    on three API hosts) archive the same history at once, 7 jobs a batch: every row lands in
    exactly one archive, equal to what the database held, and no archive replaced another."""
    before = database_rows(engine)
    assert len(before) >= 1000
    artifacts = tmp_path / "artifacts"
    argv, env = command(database_url, artifacts, "--batch", "7")
    commands = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    deadline = time.monotonic() + 60  # the commands import for a second or so before archiving
    while not archives(artifacts) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(database_rows(engine)) > len(before) / 2  # the threads join early
    results: list[retention.Removed] = []
    threads = [
        threading.Thread(target=lambda: results.append(run_policy(database_url, artifacts, 7)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    outputs = [process.communicate(timeout=120) for process in commands]
    for thread in threads:
        thread.join(timeout=120)
    assert [process.returncode for process in commands] == [0, 0], outputs
    assert len(results) == 3  # no periodic run raised

    by_command = [reported(stdout) for stdout, _ in outputs]
    rows = [n for n, _ in by_command] + [removed.metric_rows for removed in results]
    assert sum(rows) == len(before), rows
    written = [path for _, paths in by_command for path in paths]
    written += [path for removed in results for path in removed.archives]
    assert sorted(written) == archives(artifacts)  # each run's own, none replaced
    assert_archived_once(artifacts, before)
    assert database_rows(engine) == {} and unarchived_jobs(engine) == 0
    assert hidden_files(artifacts) == []


def test_a_run_that_loses_its_batch_to_another_drops_its_copy(
    database_url, engine, tmp_path, monkeypatch
):
    """One run has written its first batch's archive when another run archives everything:
    the first finds its jobs taken, rolls back and drops its copy, so each row is in exactly
    one archive (the second run's) and no file is left over."""
    before = database_rows(engine)
    artifacts = tmp_path / "artifacts"
    written, resume = threading.Event(), threading.Event()
    write = retention.Pending.write

    def write_then_wait(store: ArtifactStore, rows: list[dict[str, Any]]) -> retention.Pending:
        pending = write(store, rows)
        if threading.current_thread().name == "first" and not written.is_set():
            written.set()
            resume.wait(60)
        return pending

    monkeypatch.setattr(retention.Pending, "write", staticmethod(write_then_wait))
    results: dict[str, retention.Removed] = {}

    def run(name: str) -> None:
        results[name] = run_policy(database_url, artifacts, 50)

    first = threading.Thread(target=run, args=("first",), name="first")
    first.start()
    assert written.wait(60)
    run("second")
    resume.set()
    first.join(60)
    assert results["first"].metric_rows == 0 and results["first"].archives == []
    assert results["second"].metric_rows == len(before)
    assert sorted((artifacts / "archive").iterdir()) == sorted(results["second"].archives)
    assert_archived_once(artifacts, before)


def test_runs_in_the_same_second_write_archives_of_their_own(database_url, engine, tmp_path):
    """Two runs at the same clock (two hosts in the same second) each write archives of their
    own: the second never overwrites the first's."""
    before = database_rows(engine)
    artifacts, now = tmp_path / "artifacts", utcnow()
    older = run_policy(database_url, artifacts, 50, days=20, now=now)
    rest = run_policy(database_url, artifacts, 50, now=now)
    assert older.metric_rows > 0 and rest.metric_rows > 0
    assert sorted(older.archives + rest.archives) == archives(artifacts)
    assert_archived_once(artifacts, before)


def test_an_archive_that_cannot_be_written_leaves_the_rows(database_url, engine, tmp_path):
    """The archive folder cannot be created (a file is in its way): the command stops with a
    one-line error, every row and mark stays; once the way is clear, a run archives it all."""
    before = database_rows(engine)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "archive").write_text("in the way")
    argv, env = command(database_url, artifacts)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout
    assert done.stderr.startswith("tricklab: retention stopped: could not write "), done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert database_rows(engine) == before
    assert unarchived_jobs(engine) == HISTORY

    (artifacts / "archive").unlink()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert reported(done.stdout)[0] == len(before)
    assert_archived_once(artifacts, before)
    assert database_rows(engine) == {} and unarchived_jobs(engine) == 0


def test_an_archive_that_reads_back_wrong_is_removed_and_the_rows_stay(
    database_url, engine, tmp_path, monkeypatch
):
    """A write that loses its last line (as a full disk or a faulty store would) fails the
    read-back: that archive is removed, nothing is deleted or marked, the error says so."""
    before = database_rows(engine)
    artifacts = tmp_path / "artifacts"
    complete = retention._write_text

    def losing_the_last_line(path: Path, text: str) -> None:
        complete(path, text[: text.rstrip("\n").rfind("\n") + 1])

    monkeypatch.setattr(retention, "_write_text", losing_the_last_line)
    with pytest.raises(retention.ArchiveError, match=r"did not read back as written \(\d+ lines"):
        run_policy(database_url, artifacts, 50)
    assert list((artifacts / "archive").iterdir()) == []  # no archive, no hidden copy
    assert database_rows(engine) == before
    assert unarchived_jobs(engine) == HISTORY


def test_a_run_killed_midway_loses_nothing(database_url, engine, tmp_path):
    """A command killed (SIGKILL) while archiving, then run again: every row is in an archive,
    as it was, and none is left in the database. A batch killed between its archive and its
    commit may be archived twice, never lost."""
    before = database_rows(engine)
    artifacts = tmp_path / "artifacts"
    argv, env = command(database_url, artifacts, "--batch", "3")
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(archives(artifacts)) < 5 and time.monotonic() < deadline:
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    left = database_rows(engine)
    assert 0 < len(left) < len(before)  # killed midway
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert reported(done.stdout)[0] == len(left)
    rows = archived_rows(artifacts)
    assert all(row == before[row["job_id"], row["epoch"]] for row in rows)
    assert {(row["job_id"], row["epoch"]) for row in rows} == set(before)
    assert database_rows(engine) == {} and unarchived_jobs(engine) == 0
    for name in hidden_files(artifacts):  # a copy the killed run left: redundant, as documented
        try:
            copy = gzip.decompress((artifacts / "archive" / name).read_bytes()).splitlines()
        except (OSError, EOFError):  # cut off while being written
            continue
        assert all(json.loads(line) in rows for line in copy)


def test_an_archive_never_replaces_a_file(tmp_path):
    """Archives are created exclusively: a name already taken fails and keeps its file."""
    store = ArtifactStore(tmp_path)
    store.write_atomic("archive/a.jsonl.gz", lambda path: path.write_text("first"), exclusive=True)
    with pytest.raises(FileExistsError):
        store.write_atomic(
            "archive/a.jsonl.gz", lambda path: path.write_text("second"), exclusive=True
        )
    with pytest.raises(FileExistsError):
        store.link("archive/a.jsonl.gz", "archive/a.jsonl.gz")
    assert (tmp_path / "archive" / "a.jsonl.gz").read_text() == "first"
    assert [path.name for path in (tmp_path / "archive").iterdir()] == ["a.jsonl.gz"]


def test_a_run_removes_the_stale_hidden_copies_that_stopped_runs_left(
    database_url, engine, tmp_path
):
    """Hidden copies (and half-written temporary files) older than an hour, which runs stopped
    before publishing left, are deleted when the command starts; a fresh one (a live run's),
    the published archives and files of other names are left alone."""
    folder = tmp_path / "artifacts" / "archive"
    folder.mkdir(parents=True)
    stale = [".metrics-20260101T000000Z-0123456789abcdef.jsonl.gz"]
    stale.append(".0a1b2c3d4e5f..metrics-20260101T000001Z-fedcba9876543210.jsonl.gz")
    fresh = ".metrics-20260101T000002Z-00112233445566ff.jsonl.gz"
    others = [".notes", "metrics-20260101T000003Z-aabbccddeeff0011.jsonl.gz"]
    two_hours_ago = time.time() - 7200
    for name in [*stale, fresh, *others]:
        (folder / name).write_bytes(gzip.compress(b""))
        if name != fresh:
            os.utime(folder / name, (two_hours_ago, two_hours_ago))
    argv, env = command(database_url, tmp_path / "artifacts", "--batch", "100")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "; removed 2 hidden copies left by stopped runs" in done.stdout, done.stdout
    names = {path.name for path in folder.iterdir()}
    assert not names & set(stale)
    assert {fresh, *others} <= names
    assert hidden_files(tmp_path / "artifacts") == sorted([".notes", fresh])


def inserting_after_write(
    monkeypatch: pytest.MonkeyPatch, database_url: str, job_id: str, change: Any, times: int
) -> list[int]:
    """Have every archive written of `job_id`'s rows (the first `times` of them) followed by
    `change(connection, n)`, as a worker still writing the job's epochs would: the rows then
    change between the archive and its transaction. Returns the count of changes made."""
    write, made = retention.Pending.write, [0]
    writer = make_engine(database_url)

    def write_then_change(store: ArtifactStore, rows: list[dict[str, Any]]) -> retention.Pending:
        pending = write(store, rows)
        if made[0] < times and any(row["job_id"] == job_id for row in rows):
            made[0] += 1
            with writer.begin() as connection:
                change(connection, made[0])
        return pending

    monkeypatch.setattr(retention.Pending, "write", staticmethod(write_then_change))
    return made


def oldest_job(engine: Engine) -> str:
    with engine.connect() as connection:
        return str(
            connection.scalar(
                select(Job.id).where(Job.finished_at.is_not(None)).order_by(Job.finished_at)
            )
        )


def test_rows_changed_once_are_archived_from_a_fresh_read(
    database_url, engine, tmp_path, monkeypatch
):
    """One epoch row of the oldest job is rewritten after its batch's archive was written: the
    batch is chosen again and archived as the rows then are; the stale archive is dropped."""
    job_id = oldest_job(engine)

    def rewrite(connection: Any, _n: int) -> None:
        connection.execute(
            update(EpochMetrics)
            .where(EpochMetrics.job_id == job_id, EpochMetrics.epoch == 1)
            .values(train_loss=123.5)
        )

    made = inserting_after_write(monkeypatch, database_url, job_id, rewrite, times=1)
    artifacts = tmp_path / "artifacts"
    removed = run_policy(database_url, artifacts, 50)
    assert made == [1] and removed.kept_jobs == []
    after = database_rows(engine)
    assert after == {} and unarchived_jobs(engine) == 0
    rows = archived_rows(artifacts)
    assert [row["train_loss"] for row in rows if (row["job_id"], row["epoch"]) == (job_id, 1)] == [
        123.5
    ]
    assert len(rows) == len({(row["job_id"], row["epoch"]) for row in rows}) == removed.metric_rows
    assert hidden_files(artifacts) == []


def test_a_job_whose_rows_keep_changing_holds_back_no_other(
    database_url, engine, tmp_path, monkeypatch, caplog
):
    """The oldest job gains an epoch row after every archive of its rows: it keeps all its rows
    (said and logged), every other job of its batch and after is archived, and once its rows
    stop changing the next command archives them."""
    before = database_rows(engine)
    job_id = oldest_job(engine)
    template = next(row for key, row in before.items() if key[0] == job_id)

    def add_epoch(connection: Any, n: int) -> None:
        connection.execute(insert(EpochMetrics).values({**template, "epoch": 100 + n}))

    made = inserting_after_write(monkeypatch, database_url, job_id, add_epoch, times=1000)
    artifacts = tmp_path / "artifacts"
    removed = run_policy(database_url, artifacts, 50)
    assert made == [2]  # the first archive, then one from a fresh read
    assert removed.kept_jobs == [job_id]
    assert f"kept the epoch rows of 1 job, which changed while being archived: {job_id}" in str(
        removed
    )
    kept = {key: row for key, row in before.items() if key[0] == job_id}
    assert_archived_once(artifacts, {k: v for k, v in before.items() if k[0] != job_id})
    after = database_rows(engine)
    assert {key: row for key, row in after.items() if key[1] < 100} == kept
    assert sorted(key[1] for key in after if key[1] >= 100) == [101, 102]
    assert unarchived_jobs(engine) == 1 and hidden_files(artifacts) == []
    warned = [r.getMessage() for r in caplog.records if r.name == "tricklab.retention"]
    assert len(warned) == 1 and warned[0].startswith(
        f"retention: kept the epoch rows of 1 job, which changed under two archives; a later "
        f"run tries again: {job_id} ("
    )

    monkeypatch.undo()
    argv, env = command(database_url, artifacts)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"archived and removed {len(after)} epoch rows of 1 job ")
    assert database_rows(engine) == {} and unarchived_jobs(engine) == 0


def test_zero_days_is_a_limit_not_unset(database_url, engine, tmp_path):
    """`--metrics-days 0` and `--files-days 0` take every ended job, even where the settings
    name other limits; a negative or endless limit is refused, naming what is allowed."""
    before = database_rows(engine)
    artifacts = tmp_path / "artifacts"
    env = {
        **os.environ,
        "TRICKLAB_DATABASE_URL": database_url,
        "TRICKLAB_ARTIFACTS_DIR": str(artifacts),
        "TRICKLAB_RETAIN_METRICS_DAYS": "40",  # older than the whole history
        "TRICKLAB_RETAIN_ARTIFACTS_DAYS": "40",
    }
    base = [sys.executable, "-m", "jobqueue.retention"]
    for bad in ("-1", "inf"):
        refused = subprocess.run(
            [*base, "--metrics-days", bad], env=env, capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 2
        assert f"must be from 0 to 100000 days, not {bad}" in refused.stderr
    assert database_rows(engine) == before

    argv = [*base, "--metrics-days", "0", "--files-days", "0"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert reported(done.stdout)[0] == len(before)
    assert f"deleted the files of {HISTORY} jobs" in done.stdout
    assert_archived_once(artifacts, before)
    assert database_rows(engine) == {} and unarchived_jobs(engine) == 0


def test_a_database_error_stops_the_command_with_one_line(database_url, engine, tmp_path):
    """The jobs are locked by another session past the command's patience (SQLite's busy
    timeout; PostgreSQL's lock_timeout): the command says so in one line, exit status 1, and
    every row stays, with no archive or hidden copy left."""
    before = database_rows(engine)
    artifacts = tmp_path / "artifacts"
    argv, env = command(database_url, artifacts)
    env["TRICKLAB_BUSY_TIMEOUT_MS"] = "300"
    if engine.dialect.name == "postgresql":
        url = make_url(database_url)
        options = f"{url.query['options']} -c lock_timeout=300"
        env["TRICKLAB_DATABASE_URL"] = url.update_query_dict({"options": options}).render_as_string(
            hide_password=False
        )
    # SQLite's write lock (taken at BEGIN), or PostgreSQL's lock on the jobs: reads still go.
    with engine.connect().execution_options(**WRITE) as holder:
        if engine.dialect.name == "postgresql":
            holder.exec_driver_sql("LOCK TABLE jobs IN EXCLUSIVE MODE")
        else:
            holder.exec_driver_sql("SELECT 1")
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        holder.rollback()
    assert done.returncode == 1, done.stdout
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("tricklab: retention stopped: the database failed: ")
    assert ("database is locked" in done.stderr) or ("lock timeout" in done.stderr), done.stderr
    assert done.stderr.rstrip().endswith("the batch being archived kept its rows")
    assert database_rows(engine) == before and unarchived_jobs(engine) == HISTORY
    assert archives(artifacts) == [] and hidden_files(artifacts) == []


def test_a_copy_removed_before_its_publishing_loses_nothing(
    database_url, engine, tmp_path, monkeypatch
):
    """A run's hidden copy is deleted before its batch's transaction (as a stale copy would
    be): the run cannot publish it, stops with an ArchiveError, and every row stays."""
    before = database_rows(engine)
    artifacts = tmp_path / "artifacts"
    write = retention.Pending.write

    def write_then_lose(store: ArtifactStore, rows: list[dict[str, Any]]) -> retention.Pending:
        pending = write(store, rows)
        store.path(pending.hidden).unlink()
        return pending

    monkeypatch.setattr(retention.Pending, "write", staticmethod(write_then_lose))
    with pytest.raises(retention.ArchiveError, match=r"^could not publish archive/metrics-"):
        run_policy(database_url, artifacts, 50)
    assert database_rows(engine) == before and unarchived_jobs(engine) == HISTORY
    assert list((artifacts / "archive").iterdir()) == []
