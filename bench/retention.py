"""What the retention policy gives back on disk: a SQLite database and a PostgreSQL one are
filled with a month of finished jobs (as bench/queueing.py fills them, epoch rows and all); the
policy archives the metrics of those older than a week; then each database is measured as it
is, and after the step that returns the space (SQLite: VACUUM; PostgreSQL: VACUUM FULL of the
two tables), beside the size before, and the archive's size.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from pathlib import Path

from sqlalchemy import Engine, text

from bench.common import Took
from bench.queueing import add_postgres_url, postgres_databases, prefill
from jobqueue import retention
from jobqueue.artifacts import ArtifactStore
from jobqueue.db import make_engine
from jobqueue.store import JobStore


def size(engine: Engine, path: Path | None) -> int:
    if path is not None:
        return sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*"))
    with engine.connect() as connection:
        return int(
            connection.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
        )


def reclaim(engine: Engine, path: Path | None) -> None:
    if path is not None:  # outside any transaction, which the engine would open
        with sqlite3.connect(path, isolation_level=None) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            connection.execute("VACUUM")
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM FULL epoch_metrics, jobs"))


def measure(
    label: str, url: str, path: Path | None, folder: Path, args: argparse.Namespace
) -> None:
    engine = make_engine(url)
    prefill(engine, args.jobs, 0, 0, args.epochs)
    if path is not None:
        reclaim(
            engine, path
        )  # start from a compact file, as a long-lived one would be after VACUUM
    before = size(engine, path)
    artifacts = ArtifactStore(folder / f"artifacts-{label}")
    removed = retention.apply(JobStore(engine), artifacts, args.days, None)
    as_is = size(engine, path)
    reclaim(engine, path)
    after = size(engine, path)
    archive = sum(p.stat().st_size for p in removed.archives)
    mib = 2**20
    print(
        f"{label:>10}: {args.jobs:,} jobs over 30 days, {args.epochs} epochs each; metrics of "
        f"{len(removed.metrics_jobs):,} jobs ({removed.metric_rows:,} rows) archived into "
        f"{archive / mib:.1f} MiB\n"
        f"{'':>12}database {before / mib:.1f} MiB → {as_is / mib:.1f} MiB as it is "
        f"(freed pages are reused) → {after / mib:.1f} MiB reclaimed: "
        f"{after / before:.2f} of before"
    )
    engine.dispose()


def main() -> None:
    took = Took("bench/retention.py")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--days", type=float, default=7, help="TRICKLAB_RETAIN_METRICS_DAYS")
    add_postgres_url(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tricklab-bench-") as tmp:
        folder = Path(tmp)
        path = folder / "tricklab.db"
        measure("SQLite", f"sqlite:///{path}", path, folder, args)
        if args.postgres_url:
            with postgres_databases(args.postgres_url, ["bench_retention"]) as urls:
                measure(
                    "PostgreSQL", urls[0].render_as_string(hide_password=False), None, folder, args
                )
    took.report()


if __name__ == "__main__":
    main()
