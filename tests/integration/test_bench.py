"""`make bench` keeps working: its scripts run end to end (on tiny data, short runs)."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.trivial import create_app
from service.schemas import PredictResponse
from tests.support.data import write_dataset
from tests.support.images import encode

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def run_bench(tmp_path: Path, *command: str) -> str:
    """Run a bench script on tiny data; its output. The benches hold out the notebook's
    10,000 validation images: 1,000 are left to train."""
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


def test_the_training_benchmark_runs_and_prints_its_ratios(tmp_path):
    output = run_bench(tmp_path, "bench/train.py", "--rounds", "2", "--epochs", "2")
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
    command = ("bench/train.py", "--architecture", "cnn", "--rounds", "2", "--epochs", "1")
    output = run_bench(tmp_path, *command)
    assert "notebook loop skipped: it trains the notebook's MLP only" in output
    assert "=== summary: default CNN, 1 epochs, 1000 training images ===" in output
    assert "ratio tricklab / plain model.fit, per epoch: " in output
    assert re.search(r"^  plain model.fit +\d+$", output, re.M), output
    sides = re.findall(r"^ +\d  (tricklab job|plain model.fit) ", output, re.M)
    assert sides == ["tricklab job", "plain model.fit", "plain model.fit", "tricklab job"]


def test_the_packing_benchmark_runs_and_prints_its_ratio(tmp_path):
    output = run_bench(tmp_path, "bench/pack.py", "--jobs", "2", "--epochs", "1", "--rounds", "2")
    assert "largest difference in a job's final test accuracy: 0.0000" in output
    assert "ratio packed / one after another:" in output
    firsts = re.findall(r"^  round \d: (.+?) +\d", output, re.M)[::2]
    assert firsts == ["one after another", "packed"], output
    assert re.search(r"^bench/pack.py took .+ in all$", output, re.M)


def test_the_serving_benchmark_runs_and_prints_its_ratios(tmp_path):
    output = run_bench(tmp_path, "bench/serve.py", "--requests", "50", "--rounds", "2")
    for concurrency in (1, 8, 32):
        assert f"ratio predict / trivial at concurrency {concurrency:>2}: throughput" in output
        assert f"ratio v2 / predict at concurrency {concurrency:>2}: throughput" in output
    assert "target at concurrency 8, throughput median ≥ 0.90: " in output
    rows = re.findall(r"^ +\d+  (trivial|predict|v2) .* (\d+)$", output, re.MULTILINE)
    assert len(rows) == 9 and all(errors == "0" for _, errors in rows), output
    assert [name for name, _ in rows[:3]] == ["trivial", "predict", "v2"]
    assert re.search(r"^bench/serve.py took .+ in all$", output, re.M)


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
        tmp_path, "bench/events.py", "--streams", "5", "--rounds", "2", "--seconds", "1"
    )
    assert re.search(r"^ +5 streams open: API CPU .+ %.+ GET /v1/jobs .+ ms", output, re.M)
    assert "5 open streams add " in output and "list latency ratio open / none" in output
    assert re.search(r"^bench/events.py took .+ in all$", output, re.M)
