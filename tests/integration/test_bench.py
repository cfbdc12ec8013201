"""`make bench` keeps working: its modules run end to end as `python -m bench.X` from the
repository root (on tiny data, short runs), the database benchmarks on SQLite and on PostgreSQL:
`bench.queueing` prints every figure beside its baseline, with the ratio between the small and
the large queue; `bench.submit` and `bench.retention` print theirs."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from bench.trivial import create_app
from jobqueue.db import make_engine
from service.schemas import PredictResponse
from tests.conftest import POSTGRES_URL
from tests.support.data import write_dataset
from tests.support.images import encode

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def run_bench(tmp_path: Path, module: str, *arguments: str) -> str:
    """Run a benchmark, `python -m <module>` from the repository root, on tiny data; its output.
    The benches hold out the notebook's 10,000 validation images: 1,000 are left to train."""
    data = write_dataset(tmp_path / "fashion-mnist", train=11_000, test=100)
    result = subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=ROOT,
        env={"TRICKLAB_DATA_DIR": str(data), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_training_benchmark_runs_and_prints_its_ratios(tmp_path):
    output = run_bench(tmp_path, "bench.train", "--rounds", "2", "--epochs", "2")
    assert "test accuracy at epoch 2:" in output
    for line in ("tricklab's job", "plain model.fit", "the notebook's loop"):
        assert line in output
    for baseline in ("notebook loop", "plain model.fit"):
        for what in ("whole job", "per epoch"):
            assert f"ratio tricklab / {baseline}, {what}: " in output
    # The sides take turns, each round starting one further along.
    sides = re.findall(r"^ +\d  (tricklab job|notebook loop|plain model.fit) ", output, re.M)
    assert len(sides) == 6 and sides[3] == sides[1], output
    assert re.search(r"^bench/train.py took .+ in all$", output, re.M)


def test_the_training_benchmark_compares_the_cnn_with_plain_fit_of_the_same_net(tmp_path):
    command = ("bench.train", "--architecture", "cnn", "--rounds", "2", "--epochs", "1")
    output = run_bench(tmp_path, *command)
    assert "notebook loop skipped: it trains the notebook's MLP only" in output
    assert "=== summary: default CNN, 1 epochs, 1000 training images ===" in output
    assert "ratio tricklab / plain model.fit, per epoch: " in output
    assert re.search(r"^  plain model.fit +\d+$", output, re.M), output
    sides = re.findall(r"^ +\d  (tricklab job|plain model.fit) ", output, re.M)
    assert sides == ["tricklab job", "plain model.fit", "plain model.fit", "tricklab job"]


def test_the_packing_benchmark_runs_and_prints_its_ratio(tmp_path):
    output = run_bench(tmp_path, "bench.pack", "--jobs", "2", "--epochs", "1", "--rounds", "2")
    assert "largest difference in a job's final test accuracy: 0.0000" in output
    assert "ratio packed / one after another:" in output
    firsts = re.findall(r"^  round \d: (.+?) +\d", output, re.M)[::2]
    assert firsts == ["one after another", "packed"], output
    assert re.search(r"^bench/pack.py took .+ in all$", output, re.M)


def test_the_serving_benchmark_runs_and_prints_its_ratios(tmp_path):
    output = run_bench(tmp_path, "bench.serve", "--requests", "50", "--rounds", "2")
    for concurrency in (1, 8, 32):
        assert f"ratio predict / trivial at concurrency {concurrency:>2}: throughput" in output
        assert f"ratio v2 / predict at concurrency {concurrency:>2}: throughput" in output
    assert "target at concurrency 8, throughput median ≥ 0.90: " in output
    rows = re.findall(r"^ +\d+  (trivial|predict|v2) .* (\d+)$", output, re.MULTILINE)
    assert len(rows) == 9 and all(errors == "0" for _, errors in rows), output
    assert [name for name, _ in rows[:3]] == ["trivial", "predict", "v2"]
    assert re.search(r"^bench/serve.py took .+ in all$", output, re.M)


def test_the_serving_benchmark_compares_with_another_revision_in_the_same_rounds(tmp_path):
    args = ("--requests", "30", "--rounds", "1", "--concurrency", "8", "--against", "HEAD")
    output = run_bench(tmp_path, "bench.serve", *args)
    assert "ratio predict / before at concurrency  8: throughput" in output
    assert "ratio v2 / v2-before at concurrency  8: throughput" in output
    rows = re.findall(r"^ +8  (\S+) .* (\d+)$", output, re.MULTILINE)
    assert [name for name, _ in rows] == ["trivial", "predict", "v2", "before", "v2-before"]
    assert all(errors == "0" for _, errors in rows), output


def test_the_cpu_per_prediction_benchmark_compares_two_trees_round_by_round(tmp_path):
    # HEAD: a clone of any depth has it.
    arguments = ("--rounds", "2", "--requests", "20", "--against", "HEAD")
    output = run_bench(tmp_path, "bench.percall", *arguments)
    for door in ("v1", "v2"):
        rounds = re.findall(rf"^  {door} round \d: (this tree|HEAD) +[\d.]+ µs$", output, re.M)
        assert rounds == ["this tree", "HEAD", "HEAD", "this tree"], output
        assert re.search(rf"^{door}: this tree .+ µs \(.+\), HEAD .+; ratio ", output, re.M)
    assert re.search(r"^bench/percall.py took .+ in all$", output, re.M)


def test_the_v2_requests_are_what_tritonclient_sends():
    """The serving benchmark's /v2 bodies are the stock Triton client's, byte for byte."""
    httpclient = pytest.importorskip("tritonclient.http")
    from bench.serve import v2_body

    pixels = np.arange(784, dtype=np.uint32).reshape(28, 28).astype(np.uint8)
    tensor = httpclient.InferInput("images", [1, 28, 28], "UINT8")
    tensor.set_data_from_numpy(pixels[np.newaxis])
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor])
    assert v2_body(pixels) == (body, json_size)


def test_the_yardstick_answers_as_the_predict_route_does():
    """The trivial endpoint pays for the response the real route writes: same document, same
    media type, same header, the job id taken from the path."""
    job_id = "0123456789abcdef0123456789abcdef"
    with TestClient(create_app()) as client:
        answer = client.post(
            f"/v1/jobs/{job_id}/predict", files={"file": encode(np.zeros((28, 28), np.uint8))}
        )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["tricklab-batch-size"] == "1"
    document = PredictResponse.model_validate_json(answer.content)
    assert document.job_id == job_id and len(document.predictions) == 1


def test_the_events_benchmark_runs_and_prints_what_open_streams_cost(tmp_path):
    output = run_bench(
        tmp_path, "bench.events", "--streams", "5", "--rounds", "2", "--seconds", "1"
    )
    assert re.search(r"^ +5 streams open: API CPU .+ %.+ GET /v1/jobs .+ ms", output, re.M)
    assert "5 open streams add " in output and "list latency ratio open / none" in output
    assert re.search(r"^bench/events.py took .+ in all$", output, re.M)


FIGURES = ("claims/s", "claim p50", "claim p99", "list p50", "list p99", "submit p50", "submit p99")
TINY = ["--sizes", "40/200", "--claimers", "1,2", "--rounds", "2", "--seconds", "0.5"]
TINY += ["--sweeps", "10", "--sweep-running", "3/30", "--epochs", "1"]


def run_queue_bench(tmp_path: Path, database: str, *extra: str) -> str:
    return run_bench(tmp_path, "bench.queueing", "--databases", database, *TINY, *extra)


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
        tmp_path, "bench.submit", "--requests", "20", "--batch", "5", "--rounds", "1",
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
    output = run_bench(tmp_path, "bench.retention", "--jobs", "300", "--epochs", "2", *POSTGRES)
    for database in ("SQLite", "PostgreSQL") if POSTGRES_URL else ("SQLite",):
        assert re.search(
            rf"^ *{database}: 300 jobs over 30 days, 2 epochs each; metrics of", output, re.M
        )
    assert re.search(r"MiB reclaimed: \d\.\d\d of before$", output, re.M)
