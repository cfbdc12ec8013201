"""The retention policy: jobs that ended long ago give back their room. Their epoch metrics
are archived to gzipped JSON lines under the artifact store's `archive/` and removed from the
database; their checkpoints and models are deleted. The job rows, results and errors stay, so
lists, counts and study verdicts are unchanged; a job still queued or running is never
touched. The API applies it every TRICKLAB_RETENTION_SECONDS when a TRICKLAB_RETAIN_* setting
is set; `python -m jobqueue.retention` applies it at once and says what it removed.

Any number of runs may apply it at once (several API processes, and the command). A batch's
archive is written, synced and read back under a hidden name first; then one short
transaction claims the batch's jobs (a compare-and-set on `metrics_archived_at`, the jobs
locked), deletes exactly the rows archived, and publishes the archive under a name no other
file has. A run that finds a job of its batch already taken by another rolls back and drops
its copy; one that fails anywhere before the commit leaves the rows where they were.

A batch whose rows change between its archive and its transaction is chosen again with a
fresh read; a job whose rows change under it a second time keeps them (it is logged and
left for a later run), so that it never holds back the jobs after it. Each run starts by
deleting the hidden copies that runs stopped before publishing left behind, once they are
older than STALE_COPY_SECONDS."""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from jobqueue.artifacts import ArtifactStore
from jobqueue.db import Verbs
from jobqueue.models import EpochMetrics, Job, utcnow
from jobqueue.states import TERMINAL
from jobqueue.store import JobStore

METRIC_COLUMNS = tuple(EpochMetrics.__table__.columns.keys())  # job_id and epoch first

log = logging.getLogger("tricklab.retention")

# A run's hidden copy lives from its write to the end of its batch's transaction: a read-back,
# then one short transaction that waits at most for SQLite's busy timeout (30 s by default)
# or for another run's short transaction (PostgreSQL ends one left idle after 30 s). An hour
# is far beyond that, and beyond the clocks of hosts sharing the store disagreeing. Even a
# copy deleted too early loses nothing: its run cannot publish it, rolls back, and the rows
# stay in the database.
STALE_COPY_SECONDS = 3600.0

# A run's hidden copy (.metrics-*) and write_atomic's temporary file for it, which a run
# killed while writing leaves (.<12 hex digits>..metrics-*).
HIDDEN_COPY = re.compile(r"\.(?:[0-9a-f]{12}\.\.)?metrics-[^/]+\.jsonl\.gz")


class ArchiveError(RuntimeError):
    """An archive could not be written or did not read back as written, or the rows changed
    under it: nothing was removed, and the rows stay in the database."""


class RowsChanged(ArchiveError):
    """The epoch rows of these jobs are not those archived: added, deleted or rewritten
    between the archive's read and the transaction."""

    def __init__(self, message: str, jobs: frozenset[str]) -> None:
        super().__init__(message)
        self.jobs = jobs


class Taken(Exception):
    """Another run archived (or someone deleted) a job of this batch first."""


@dataclass
class Pending:
    """A batch's archive: written, synced and read back under a hidden name (a leading dot,
    which readers skip), then published under its own name inside the transaction that
    deletes its rows."""

    artifacts: ArtifactStore
    name: str  # where readers find it, relative to the store
    published: Path | None = None

    @property
    def hidden(self) -> str:
        folder, _, file = self.name.rpartition("/")
        return f"{folder}/.{file}"

    @classmethod
    def write(cls, artifacts: ArtifactStore, rows: list[dict[str, Any]]) -> Pending:
        """Write the rows, or raise ArchiveError having left nothing behind."""
        pending = cls(artifacts, archive_name())
        text = "".join(json.dumps(row) + "\n" for row in rows)
        hidden = artifacts.path(pending.hidden)
        try:
            artifacts.write_atomic(pending.hidden, partial(_write_text, text=text), exclusive=True)
        except OSError as error:  # write_atomic removes its temporary file
            raise ArchiveError(f"could not write {hidden}: {error}") from error
        try:
            readback = gzip.decompress(hidden.read_bytes()).decode("utf-8")
        except (OSError, EOFError, UnicodeDecodeError) as error:
            readback = f"unreadable: {error}"
        if readback != text:
            pending.drop()
            lines = readback.count("\n")
            raise ArchiveError(
                f"{hidden} did not read back as written ({lines} lines against {len(rows)} "
                "rows): removed it"
            )
        return pending

    def publish(self) -> Path:
        try:
            self.published = self.artifacts.link(self.hidden, self.name)
        except OSError as error:  # its copy gone (removed as stale), or the store failing
            raise ArchiveError(f"could not publish {self.name}: {error}") from error
        return self.published

    def withdraw(self) -> None:
        """Unpublish: only while the rows' transaction has certainly not committed."""
        if self.published is not None:
            self.published.unlink(missing_ok=True)
            self.published = None

    def drop(self) -> None:
        """Forget the hidden name (the published one, if any, stays)."""
        self.artifacts.path(self.hidden).unlink(missing_ok=True)


def archive_name() -> str:
    """A new archive's path in the store: the time it was written, for sorting, and 64
    random bits, so that runs in the same second (or with clocks apart) never share one."""
    return f"archive/metrics-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(8)}.jsonl.gz"


def _write_text(path: Path, text: str) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as archive:
        archive.write(text)


def remove_stale_copies(artifacts: ArtifactStore, now: float | None = None) -> int:
    """Delete the hidden copies in archive/ last written more than STALE_COPY_SECONDS before
    `now` (the epoch's seconds): left by runs stopped before publishing them, their rows are
    in the database or in a published archive. Returns how many went."""
    cutoff = (time.time() if now is None else now) - STALE_COPY_SECONDS
    try:
        entries = list(os.scandir(artifacts.path("archive")))
    except (FileNotFoundError, NotADirectoryError):  # nothing archived yet, or in the way
        return 0
    removed = 0
    for entry in entries:
        if not HIDDEN_COPY.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:  # another run removed it first
            continue
        except OSError as error:  # housekeeping: the run's own writes report a broken store
            log.warning("retention: could not remove the stale copy %s: %s", entry.path, error)
    return removed


class Retention(Verbs):
    """The policy's own queries: which ended jobs still keep what, their epoch rows, and the
    removal of an archived batch."""

    def ended_before(
        self, moment: datetime, keeping: str, limit: int = 500, passing: Sequence[str] = ()
    ) -> list[str]:
        """Up to `limit` jobs, oldest ending first, that ended before `moment` and still keep
        their "metrics" or their "files" (`keeping`), other than those `passing`."""
        kept = Job.metrics_archived_at if keeping == "metrics" else Job.artifacts_deleted_at
        query = select(Job.id).where(
            Job.finished_at < moment, Job.status.in_(TERMINAL), kept.is_(None)
        )
        if passing:
            query = query.where(Job.id.not_in(passing))
        with self._read() as session:
            return list(session.scalars(query.order_by(Job.finished_at).limit(limit)))

    def metrics_of(self, job_ids: Sequence[str]) -> list[dict[str, Any]]:
        """These jobs' epoch rows, every column, in the jobs' order then by epoch."""
        columns = [getattr(EpochMetrics, column) for column in METRIC_COLUMNS]
        with self._read() as session:
            found = session.execute(select(*columns).where(EpochMetrics.job_id.in_(job_ids)))
            rows = [dict(zip(METRIC_COLUMNS, row, strict=True)) for row in found]
        order = {job_id: n for n, job_id in enumerate(job_ids)}
        return sorted(rows, key=lambda row: (order[row["job_id"]], row["epoch"]))

    def remove_archived(
        self, job_ids: Sequence[str], rows: list[dict[str, Any]], archive: Pending | None
    ) -> Path | None:
        """In one transaction: claim the jobs (each still ended and not archived, else Taken),
        delete their epoch rows if they are exactly `rows` (else RowsChanged), and publish
        the archive that holds them. Any failure before the commit rolls back and withdraws
        the archive; the rows stay. A commit that fails leaves the archive published (it may
        have committed): its rows may then be archived again, never lost."""
        with self._write.begin() as session:
            try:
                self._claim(session, job_ids)
                self._delete(session, job_ids, rows)
                return archive.publish() if archive is not None else None
            except BaseException:
                if archive is not None:
                    archive.withdraw()
                raise

    @staticmethod
    def _claim(session: Session, job_ids: Sequence[str]) -> None:
        # Locked in one order (PostgreSQL; SQLite's write lock is the database's), so that
        # runs claiming overlapping batches wait for each other instead of deadlocking.
        free = session.scalars(
            select(Job.id)
            .where(Job.id.in_(job_ids), Job.status.in_(TERMINAL), Job.metrics_archived_at.is_(None))
            .order_by(Job.id)
            .with_for_update()
        ).all()
        if len(free) != len(job_ids):
            raise Taken(f"{len(job_ids) - len(free)} of {len(job_ids)} jobs taken meanwhile")
        session.execute(
            update(Job).where(Job.id.in_(job_ids)).values(metrics_archived_at=utcnow()),
            execution_options={"synchronize_session": False},
        )

    @staticmethod
    def _delete(session: Session, job_ids: Sequence[str], rows: list[dict[str, Any]]) -> None:
        # Compared as archived (JSON), every column: a row rewritten in place counts as
        # changed, and a NaN equals itself.
        archived = {(row["job_id"], row["epoch"]): json.dumps(row) for row in rows}
        columns = [getattr(EpochMetrics, column) for column in METRIC_COLUMNS]
        found = session.execute(select(*columns).where(EpochMetrics.job_id.in_(job_ids)))
        held = {
            (row[0], row[1]): json.dumps(dict(zip(METRIC_COLUMNS, row, strict=True)))
            for row in found
        }
        changed = {
            key[0] for key in held.keys() | archived.keys() if held.get(key) != archived.get(key)
        }
        if changed:
            raise RowsChanged(
                f"the epoch rows of {jobs(sorted(changed))} changed under their archive "
                f"({len(held)} held, {len(archived)} archived): nothing removed",
                frozenset(changed),
            )
        removed = cast(
            CursorResult[Any],
            session.execute(
                delete(EpochMetrics).where(EpochMetrics.job_id.in_(job_ids)),
                execution_options={"synchronize_session": False},
            ),
        ).rowcount
        if removed != len(archived):  # unreachable while the jobs are locked; a last guard
            raise RowsChanged(
                f"{removed} rows to delete against {len(archived)} archived", frozenset(job_ids)
            )


@dataclass
class Batch:
    """What one batch gave back: its jobs, their rows, and the archive holding them (None
    when the jobs had no epoch rows)."""

    job_ids: list[str]
    rows: int
    archive: Path | None


def archive_batch(
    retention: Retention, artifacts: ArtifactStore, job_ids: list[str]
) -> Batch | None:
    """Archive these ended jobs' epoch rows and remove them from the database; None when
    another run took one of the jobs first (nothing done: choose the batch again). Raises
    RowsChanged, having done nothing, when some of the rows changed meanwhile."""
    rows = retention.metrics_of(job_ids)
    pending = Pending.write(artifacts, rows) if rows else None
    try:
        path = retention.remove_archived(job_ids, rows, pending)
    except Taken:
        return None
    finally:
        if pending is not None:
            pending.drop()
    return Batch(job_ids, len(rows), path)


@dataclass
class Removed:
    """What one application of the policy gave back."""

    metrics_jobs: list[str] = field(default_factory=list)
    metric_rows: int = 0
    archives: list[Path] = field(default_factory=list)
    file_jobs: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    kept_jobs: list[str] = field(default_factory=list)  # rows changed under two archives
    stale_copies: int = 0

    def __str__(self) -> str:
        said = (
            f"archived and removed {self.metric_rows} epoch rows of {jobs(self.metrics_jobs)} "
            f"({', '.join(map(str, self.archives)) or 'no archive written'}); deleted the "
            f"files of {jobs(self.file_jobs)}, {self.bytes_freed / 2**20:.1f} MiB"
        )
        if self.kept_jobs:
            said += (
                f"; kept the epoch rows of {jobs(self.kept_jobs)}, which changed while being "
                f"archived: {', '.join(self.kept_jobs)}"
            )
        if self.stale_copies:
            said += f"; removed {self.stale_copies} hidden copies left by stopped runs"
        return said


def jobs(ids: Sequence[str]) -> str:
    return "1 job" if len(ids) == 1 else f"{len(ids)} jobs"


def apply(
    store: JobStore,
    artifacts: ArtifactStore,
    metrics_days: float | None,
    files_days: float | None,
    now: datetime | None = None,
    batch: int = 500,
) -> Removed:
    """Apply the policy to everything that ended more than the given days before `now` (None:
    that kind is kept forever), `batch` jobs a transaction and an archive."""
    now = now or utcnow()
    removed = Removed(stale_copies=remove_stale_copies(artifacts))
    if removed.stale_copies:
        log.info("retention: removed %d stale hidden copies", removed.stale_copies)
    if metrics_days is not None:
        archive_metrics(
            Retention(store.engine), artifacts, now - timedelta(days=metrics_days), batch, removed
        )
    if files_days is not None:
        delete_files(store, artifacts, now - timedelta(days=files_days), batch, removed)
    return removed


def archive_metrics(
    retention: Retention, artifacts: ArtifactStore, moment: datetime, batch: int, removed: Removed
) -> None:
    """Archive the metrics of every job that ended before `moment`, batch by batch. A batch
    whose rows changed is chosen again, freshly read; a job whose rows changed twice keeps
    them (logged), so that it holds back no other."""
    changed_once: set[str] = set()
    while ids := retention.ended_before(moment, "metrics", batch, removed.kept_jobs):
        try:
            done = archive_batch(retention, artifacts, ids)
        except RowsChanged as error:
            again = sorted(error.jobs & changed_once)
            changed_once |= error.jobs
            if again:
                log.warning(
                    "retention: kept the epoch rows of %s, which changed under two archives; "
                    "a later run tries again: %s (%s)",
                    jobs(again),
                    ", ".join(again),
                    error,
                )
                removed.kept_jobs += again
            continue
        if done is None:
            continue  # another run archived some of these: they are no longer chosen
        removed.metrics_jobs += done.job_ids
        removed.metric_rows += done.rows
        if done.archive is not None:
            removed.archives.append(done.archive)


def delete_files(
    store: JobStore, artifacts: ArtifactStore, moment: datetime, batch: int, removed: Removed
) -> None:
    """Delete the checkpoints and models of every job that ended before `moment`."""
    retention = Retention(store.engine)
    while ids := retention.ended_before(moment, "files", batch):
        for job_id in ids:
            if store.delete_artifacts(job_id) is None:
                continue
            folder = artifacts.path(f"jobs/{job_id}")
            removed.bytes_freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            artifacts.remove_job(job_id)
            removed.file_jobs.append(job_id)


def main() -> None:
    from core.config import load_settings
    from core.logs import setup_logging
    from jobqueue.db import make_engine

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--metrics-days", type=days, help="default: TRICKLAB_RETAIN_METRICS_DAYS (0: all ended)"
    )
    parser.add_argument(
        "--files-days", type=days, help="default: TRICKLAB_RETAIN_ARTIFACTS_DAYS (0: all ended)"
    )
    parser.add_argument(
        "--batch", type=positive_int, default=500, help="jobs a transaction and an archive (500)"
    )
    args = parser.parse_args()
    settings = load_settings()
    setup_logging(settings.log_level)
    # 0 is a limit (everything ended), not "unset".
    metrics_days = settings.retain_metrics_days if args.metrics_days is None else args.metrics_days
    files_days = settings.retain_artifacts_days if args.files_days is None else args.files_days
    if metrics_days is None and files_days is None:
        raise SystemExit(
            "tricklab: no retention policy: set TRICKLAB_RETAIN_METRICS_DAYS or "
            "TRICKLAB_RETAIN_ARTIFACTS_DAYS, or pass --metrics-days or --files-days"
        )
    store = JobStore(make_engine(settings.database_url, settings.busy_timeout_ms))
    try:
        removed = apply(
            store, ArtifactStore(settings.artifacts_dir), metrics_days, files_days, batch=args.batch
        )
    except ArchiveError as error:
        raise SystemExit(f"tricklab: retention stopped: {error}") from None
    except SQLAlchemyError as error:  # e.g. SQLite locked past its busy timeout
        cause = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SystemExit(
            f"tricklab: retention stopped: the database failed: {cause}; the batch being "
            "archived kept its rows"
        ) from None
    print(removed)


MAX_DAYS = 100_000  # far past any history, and within what a date can go back


def days(value: str) -> float:
    number = float(value)
    if not 0 <= number <= MAX_DAYS:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_DAYS} days, not {value}")
    return number


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return number


if __name__ == "__main__":
    main()
