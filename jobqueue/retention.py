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
its copy; one that fails anywhere before the commit leaves the rows where they were."""

from __future__ import annotations

import argparse
import gzip
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session

from jobqueue.artifacts import ArtifactStore
from jobqueue.db import Verbs
from jobqueue.models import EpochMetrics, Job, utcnow
from jobqueue.states import TERMINAL
from jobqueue.store import JobStore

METRIC_COLUMNS = tuple(EpochMetrics.__table__.columns.keys())  # job_id and epoch first


class ArchiveError(RuntimeError):
    """An archive could not be written or did not read back as written, or the rows changed
    under it: nothing was removed, and the rows stay in the database."""


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
        self.published = self.artifacts.link(self.hidden, self.name)
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


class Retention(Verbs):
    """The policy's own queries: which ended jobs still keep what, their epoch rows, and the
    removal of an archived batch."""

    def ended_before(self, moment: datetime, keeping: str, limit: int = 500) -> list[str]:
        """Up to `limit` jobs, oldest ending first, that ended before `moment` and still keep
        their "metrics" or their "files" (`keeping`)."""
        kept = Job.metrics_archived_at if keeping == "metrics" else Job.artifacts_deleted_at
        with self._read() as session:
            return list(
                session.scalars(
                    select(Job.id)
                    .where(Job.finished_at < moment, Job.status.in_(TERMINAL), kept.is_(None))
                    .order_by(Job.finished_at)
                    .limit(limit)
                )
            )

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
        delete their epoch rows if they are exactly `rows` (else ArchiveError), and publish
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
        archived = {(row["job_id"], row["epoch"]) for row in rows}
        keys = select(EpochMetrics.job_id, EpochMetrics.epoch)
        held = {
            (job, epoch)
            for job, epoch in session.execute(keys.where(EpochMetrics.job_id.in_(job_ids)))
        }
        if held != archived:
            raise ArchiveError(
                f"the epoch rows changed under their archive ({len(held)} held, "
                f"{len(archived)} archived): nothing removed"
            )
        removed = cast(
            CursorResult[Any],
            session.execute(
                delete(EpochMetrics).where(EpochMetrics.job_id.in_(job_ids)),
                execution_options={"synchronize_session": False},
            ),
        ).rowcount
        if removed != len(archived):  # unreachable while the jobs are locked; a last guard
            raise ArchiveError(f"{removed} rows to delete against {len(archived)} archived")


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
    another run took one of the jobs first (nothing done: choose the batch again)."""
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

    def __str__(self) -> str:
        return (
            f"archived and removed {self.metric_rows} epoch rows of {jobs(self.metrics_jobs)} "
            f"({', '.join(map(str, self.archives)) or 'no archive written'}); deleted the "
            f"files of {jobs(self.file_jobs)}, {self.bytes_freed / 2**20:.1f} MiB"
        )


def jobs(ids: list[str]) -> str:
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
    removed = Removed()
    retention = Retention(store.engine)
    if metrics_days is not None:
        moment = now - timedelta(days=metrics_days)
        while ids := retention.ended_before(moment, "metrics", batch):
            if (done := archive_batch(retention, artifacts, ids)) is None:
                continue  # another run archived some of these: they are no longer chosen
            removed.metrics_jobs += done.job_ids
            removed.metric_rows += done.rows
            if done.archive is not None:
                removed.archives.append(done.archive)
    if files_days is not None:
        moment = now - timedelta(days=files_days)
        while ids := retention.ended_before(moment, "files", batch):
            for job_id in ids:
                if store.delete_artifacts(job_id) is None:
                    continue
                folder = artifacts.path(f"jobs/{job_id}")
                removed.bytes_freed += sum(
                    f.stat().st_size for f in folder.rglob("*") if f.is_file()
                )
                artifacts.remove_job(job_id)
                removed.file_jobs.append(job_id)
    return removed


def main() -> None:
    from core.config import load_settings
    from core.logs import setup_logging
    from jobqueue.db import make_engine

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metrics-days", type=float, help="default: TRICKLAB_RETAIN_METRICS_DAYS")
    parser.add_argument("--files-days", type=float, help="default: TRICKLAB_RETAIN_ARTIFACTS_DAYS")
    parser.add_argument(
        "--batch", type=positive_int, default=500, help="jobs a transaction and an archive (500)"
    )
    args = parser.parse_args()
    settings = load_settings()
    setup_logging(settings.log_level)
    metrics_days = args.metrics_days or settings.retain_metrics_days
    files_days = args.files_days or settings.retain_artifacts_days
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
    print(removed)


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return number


if __name__ == "__main__":
    main()
