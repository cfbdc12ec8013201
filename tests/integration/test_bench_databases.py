"""The database benchmarks keep working: `bench/queueing.py` runs end to end, tiny, on each
database, and prints every figure beside its baseline, with the ratio between the small and
the large queue; `bench/submit.py` and `bench/retention.py` print theirs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from jobqueue.db import make_engine
from tests.conftest import POSTGRES_URL
from tests.support.data import write_dataset

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
FIGURES = ("claims/s", "claim p50", "claim p99", "list p50", "list p99", "submit p50", "submit p99")
TINY = ["--sizes", "40/200", "--claimers", "1,2", "--rounds", "2", "--seconds", "0.5"]
TINY += ["--sweeps", "10", "--sweep-running", "3/30", "--epochs", "1"]


def run_queue_bench(tmp_path: Path, database: str, *extra: str) -> str:
    return run_bench(tmp_path, "bench/queueing.py", "--databases", database, *TINY, *extra)


def run_bench(tmp_path: Path, *command: str) -> str:
    """Run a bench script; its output. The API checks each submitted spec against the data."""
    data = write_dataset(tmp_path / "fashion-mnist", train=11_000, test=100)
    result = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        env={"TRICKLAB_DATA_DIR": str(data), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def check_figures(output: str, baseline: str) -> None:
    assert "queue of 40 jobs: 20 queued" in output and "queue of 200 jobs: 100 queued" in output
    for claimers in ("1 claimer ", "2 claimers"):
        header = re.search(rf"^  {claimers} +{baseline} +40 jobs +200 jobs +ratio", output, re.M)
        assert header, output
    for figure in FIGURES:
        unit = "" if figure == "claims/s" else " ms"
        rows = re.findall(
            rf"^    {re.escape(figure + unit)} +(\S+ \(.+?\)|—) +\d.+\) +\d.+\) +"
            rf"\d+\.\d\d \(.+\) (met|NOT MET)$",
            output,
            re.M,
        )
        assert len(rows) == 2, (figure, output)
        # The database's own figure stands beside the queue's throughput and claim latency.
        assert all((cell == "—") == figure.startswith(("list", "submit")) for cell, _ in rows)
    assert (
        len(re.findall(r"^    against the baseline .+ baseline transactions' p50", output, re.M))
        == 2
    )
    assert re.search(r"^ +3 running: p50 .+ ms, p99 .+ ms$", output, re.M)
    assert re.search(r"^ +30 running: p50 .+ ms, p99 .+ ms$", output, re.M)
    assert re.search(
        r"^    sweep p50 ratio 30 running / 3 running: .+ (met|NOT MET)$", output, re.M
    )
    assert "leases lost" not in output and "! sweep" not in output, output
    assert re.search(r"^bench/queueing.py took .+ in all$", output, re.M)


def test_the_queue_benchmark_runs_on_sqlite(tmp_path):
    (tmp_path / "work").mkdir()
    output = run_queue_bench(tmp_path, "sqlite", "--keep", str(tmp_path / "work"))
    assert "== SQLite (WAL, synchronous=FULL) ==" in output
    check_figures(output, "baseline: 1-row tx")
    assert re.search(r"^sqlite: target ≤ 1.5× (met for every figure|NOT MET for .+)$", output, re.M)


@pytest.mark.skipif(
    not POSTGRES_URL,
    reason="needs TRICKLAB_TEST_POSTGRES_URL, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test",
)
def test_the_queue_benchmark_runs_on_postgresql_and_drops_its_databases(tmp_path):
    assert POSTGRES_URL is not None
    output = run_queue_bench(tmp_path, "postgresql", "--postgres-url", POSTGRES_URL)
    assert "== PostgreSQL (" in output
    check_figures(output, "baseline: pgbench")
    engine = make_engine(POSTGRES_URL)
    with engine.connect() as connection:
        left = connection.scalars(
            text("SELECT datname FROM pg_database WHERE datname LIKE 'bench_queue_%'")
        ).all()
    engine.dispose()
    assert left == []


POSTGRES = ["--postgres-url", POSTGRES_URL or ""]  # empty: SQLite only


def test_the_submission_benchmark_prints_each_way_beside_the_database(tmp_path):
    output = run_bench(
        tmp_path, "bench/submit.py", "--requests", "20", "--batch", "5", "--rounds", "1",
        "--concurrency", "1", "2", "--seconds", "0.2", *POSTGRES,
    )  # fmt: skip
    for database in ("SQLite", "PostgreSQL") if POSTGRES_URL else ("SQLite",):
        table = output.split(f"{database}: jobs (or rows) made durable per second")[1]
        for clients in (1, 2):
            assert re.search(rf"^ +{clients}( +\d+ \(1 round\)){{5}} +\d\.\d\d", table, re.M)
        assert re.search(
            r"one client's durable commit: .+ ms, of which waiting for the disk", table
        )


def test_the_retention_benchmark_prints_what_it_gives_back(tmp_path):
    output = run_bench(tmp_path, "bench/retention.py", "--jobs", "300", "--epochs", "2", *POSTGRES)
    for database in ("SQLite", "PostgreSQL") if POSTGRES_URL else ("SQLite",):
        assert re.search(
            rf"^ *{database}: 300 jobs over 30 days, 2 epochs each; metrics of", output, re.M
        )
    assert re.search(r"MiB reclaimed: \d\.\d\d of before$", output, re.M)
