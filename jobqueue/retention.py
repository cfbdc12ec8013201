"""The retention policy: jobs that ended long ago give back their room. Their epoch metrics
are archived to gzipped JSON lines under the artifact store's `archive/` and removed from the
database; their checkpoints and models are deleted. The job rows, results and errors stay, so
lists, counts and study verdicts are unchanged; a job still queued or running is never
touched. The API applies it every TRICKLAB_RETENTION_SECONDS when a TRICKLAB_RETAIN_* setting
is set; `python -m jobqueue.retention` applies it at once and says what it removed."""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

from sqlalchemy import delete, select, update

from jobqueue.artifacts import ArtifactStore
from jobqueue.db import Verbs
from jobqueue.models import EpochMetrics, Job, utcnow
from jobqueue.reads import Reads
from jobqueue.states import TERMINAL
from jobqueue.store import JobStore

METRIC_COLUMNS = tuple(EpochMetrics.__table__.columns.keys())  # job_id and epoch first


class Retention(Verbs):
    """The policy's own queries: which ended jobs still keep what, and the removal of an
    archived job's metrics."""

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

    def archive_metrics(self, job_ids: Sequence[str]) -> int:
        """Remove these ended jobs' epoch metrics, once the caller has archived them, and
        mark them archived. Returns the rows removed."""
        with self._write.begin() as session:
            marked = session.scalars(
                update(Job)
                .where(
                    Job.id.in_(job_ids), Job.status.in_(TERMINAL), Job.metrics_archived_at.is_(None)
                )
                .values(metrics_archived_at=utcnow())
                .returning(Job.id),
                execution_options={"synchronize_session": False},
            ).all()
            if not marked:
                return 0
            removed = session.execute(delete(EpochMetrics).where(EpochMetrics.job_id.in_(marked)))
            return int(removed.rowcount or 0)  # type: ignore[attr-defined]


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
    that kind is kept forever), `batch` jobs a transaction."""
    now = now or utcnow()
    removed = Removed()
    retention, reads = Retention(store.engine), Reads(store.engine)
    if metrics_days is not None:
        moment = now - timedelta(days=metrics_days)
        while ids := retention.ended_before(moment, "metrics", batch):
            _, metrics = reads.jobs_with_metrics(ids)
            rows = [
                {column: getattr(row, column) for column in METRIC_COLUMNS}
                for job_id in ids
                for row in metrics.get(job_id, [])
            ]
            if rows:  # archived durably before the database lets go of them
                name = f"archive/metrics-{now:%Y%m%dT%H%M%S}-{len(removed.archives) + 1}.jsonl.gz"
                artifacts.write_atomic(name, partial(_write_lines, rows=rows))
                removed.archives.append(artifacts.path(name))
            removed.metric_rows += retention.archive_metrics(ids)
            removed.metrics_jobs += ids
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


def _write_lines(path: Path, *, rows: list[dict[str, object]]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as archive:
        for row in rows:
            archive.write(json.dumps(row) + "\n")


def main() -> None:
    from core.config import get_settings
    from core.logs import setup_logging
    from jobqueue.db import make_engine

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metrics-days", type=float, help="default: TRICKLAB_RETAIN_METRICS_DAYS")
    parser.add_argument("--files-days", type=float, help="default: TRICKLAB_RETAIN_ARTIFACTS_DAYS")
    args = parser.parse_args()
    settings = get_settings()
    setup_logging(settings.log_level)
    metrics_days = args.metrics_days or settings.retain_metrics_days
    files_days = args.files_days or settings.retain_artifacts_days
    if metrics_days is None and files_days is None:
        raise SystemExit(
            "tricklab: no retention policy: set TRICKLAB_RETAIN_METRICS_DAYS or "
            "TRICKLAB_RETAIN_ARTIFACTS_DAYS, or pass --metrics-days or --files-days"
        )
    store = JobStore(make_engine(settings.database_url, settings.busy_timeout_ms))
    print(apply(store, ArtifactStore(settings.artifacts_dir), metrics_days, files_days))


if __name__ == "__main__":
    main()
