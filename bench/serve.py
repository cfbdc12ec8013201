"""Serving benchmark: single-image predictions over loopback, on /v1 and on the Open
Inference Protocol's /v2, beside a trivial endpoint.

What it does, all in one run:

1. Starts the real API (`python -m service`: uvicorn, SQLite, an artifact store in a temporary
   folder), submits the base model spec for one epoch and trains it with a real
   `python -m worker --once` on the genuine Fashion-MNIST.
2. Starts the yardstick, `bench/trivial.py`'s app, through the same `service.__main__.serve`
   (same uvicorn settings, same logging). Its predict route takes the real route's response
   path (job id read from the path, the body received, a pre-encoded orjson response with the
   same document and headers) and does no prediction work, so the difference between the two
   servers is that work and the middleware around the real route.
3. For each concurrency C (1, 8, 32), `bench/loadgen.py`, a process of its own started for
   each measurement, keeps C keep-alive connections busy until REQUESTS requests are answered:
   for the trivial endpoint and /v1/jobs/{id}/predict ("predict") each a multipart POST of one
   28×28 PNG from the test set, the same bytes to both servers; for
   /v2/models/{id}/infer ("v2") the same images as UINT8 tensors [1, 28, 28] in the binary
   tensor format, exactly as tritonclient sends them (JSON header, then the 784 bytes; every
   output asked for as binary). This process only waits meanwhile. The three take turns,
   ROUNDS times, the one going first moving along from round to round, so drifting machine
   load hits them alike.
4. Prints requests per second, p50 and p99 latency per endpoint over all rounds, and each
   round's ratios as their median with min and max: predict / trivial, whose target at
   concurrency 8 is at least half the trivial endpoint's throughput and a p99 at most three
   times the trivial endpoint's; and v2 / predict, whose target at concurrency 8 is a
   throughput within 10% of predict's (a median ratio of at least 0.90). Tricklab-Batch-Size
   shows how many images shared each forward pass (the yardstick always says 1).

With `--cnn` it also trains the default CNN (architecture cnn) for as many epochs and adds a
fourth endpoint, "cnn": the same multipart PNGs to that job's /v1 predict. It prints how each
model runs in the service (its metadata's `runtime`: "numpy", the verified numpy chain of
service.inference, or "keras") and the ratio cnn / predict, round by round: what serving the
CNN costs against the MLP, on the same path.

With `--against REV` it also checks tricklab out at the git revision REV (a worktree in the
temporary folder), starts that API on the same database and artifacts, so that it serves the
same model, and adds two endpoints, "before" and "v2-before": the same requests to that API's
/v1 predict and /v2 infer, in the same rounds. It prints the ratios predict / before and v2 /
v2-before, round by round: what a change to the serving path costs or saves, against noise
measured in the same sitting (the old API must accept the database this tree wrote).

Nothing is asserted: it prints. `make bench` runs it with `--cnn`; `python -m bench.serve --help`
lists its options.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
from PIL import Image

from bench.common import ROOT, Took, data_dir, order, spread
from core.datasets import load

BOUNDARY = "tricklab-bench"


@dataclass
class Run:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    errors: int = 0

    @classmethod
    def pooled(cls, runs: list[Run]) -> Run:
        return cls(
            sum(run.seconds for run in runs),
            [latency for run in runs for latency in run.latencies],
            [size for run in runs for size in run.batch_sizes],
            sum(run.errors for run in runs),
        )

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000


# Predictions are authenticated, as every deployment's are; the yardstick reads no token.
TOKEN = secrets.token_urlsafe(32)
AUTHORIZATION = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(
    root: Path, name: str, env: dict[str, str], *command: str, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    with (root / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, *command], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )


def worktree(path: Path, revision: str) -> Path:
    """The repository at `revision`, checked out at `path`: run from there, `python -m service`
    imports that tree's code."""
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), revision],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return path


def wait_ready(url: str, path: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=5).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit(f"bench: {url} did not answer within {seconds} s")


def requests_for(pngs: list[bytes], path: str, port: int, form: str) -> list[bytes]:
    """Complete HTTP/1.1 requests, one per PNG, built once so the client only writes bytes:
    multipart uploads, or the PNG as the raw body."""
    made = []
    for png in pngs:
        content_type, body = "image/png", png
        if form == "multipart":
            content_type = f"multipart/form-data; boundary={BOUNDARY}"
            part_head = (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
                'filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
            )
            body = part_head.encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: {AUTHORIZATION['Authorization']}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        made.append(head.encode() + body)
    return made


def v2_body(pixels: np.ndarray) -> tuple[bytes, int]:
    """One image as tritonclient's `infer` sends it by default: a UINT8 [1, 28, 28] input in
    binary, every output asked for in binary; the body and the length of its JSON."""
    header = {
        "inputs": [
            {
                "name": "images",
                "shape": [1, *pixels.shape],
                "datatype": "UINT8",
                "parameters": {"binary_data_size": pixels.size},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return encoded + pixels.astype(np.uint8).tobytes(), len(encoded)


def v2_requests_for(images: list[np.ndarray], path: str, port: int) -> list[bytes]:
    """Complete HTTP/1.1 requests to /v2/models/{id}/infer, one per image, with tritonclient's
    headers (it sends no Content-Type)."""
    made = []
    for pixels in images:
        body, header_length = v2_body(pixels)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: {AUTHORIZATION['Authorization']}\r\n"
            f"Inference-Header-Content-Length: {header_length}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        made.append(head.encode() + body)
    return made


def load_test(requests: Path, port: int, count: int, concurrency: int) -> Run:
    """One measurement, by `python -m bench.loadgen` in a process of its own (from the
    repository root)."""
    command = [sys.executable, "-m", "bench.loadgen", str(requests)]
    options = ["--port", str(port), "--count", str(count), "--concurrency", str(concurrency)]
    done = subprocess.run([*command, *options], cwd=ROOT, capture_output=True, check=False)
    if done.returncode != 0:
        sys.exit(f"bench: the load generator failed: {done.stderr.decode(errors='replace')}")
    return Run(**json.loads(done.stdout))


def test_images(folder: Path, count: int) -> list[np.ndarray]:
    return list(load("fashion_mnist", folder, 10_000).x_test[:count])


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per concurrency and round")
    parser.add_argument("--rounds", type=int, default=3, help="turns each server takes")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--epochs", type=int, default=1, help="of the served model's training")
    parser.add_argument(
        "--body", choices=["multipart", "raw"], default="multipart", help="how the PNG is sent"
    )
    parser.add_argument("--cnn", action="store_true", help="also serve the default CNN")
    parser.add_argument(
        "--against", metavar="REV", help="also serve the model from tricklab at git revision REV"
    )
    return parser.parse_args()


def main() -> None:
    took = Took("bench/serve.py")
    args = arguments()
    folder = data_dir()
    with tempfile.TemporaryDirectory(prefix="tricklab-bench-") as tmp:
        root = Path(tmp)
        env = {
            **os.environ,
            "TRICKLAB_DATABASE_URL": f"sqlite:///{root / 'tricklab.db'}",
            "TRICKLAB_ARTIFACTS_DIR": str(root / "artifacts"),
            "TRICKLAB_DATA_DIR": str(folder),
            "TRICKLAB_LOG_LEVEL": "WARNING",  # no access-log line per request, on both servers
            "TRICKLAB_ADMIN_TOKEN": TOKEN,
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        processes: list[subprocess.Popen[bytes]] = []
        try:
            results = run(root, env, args, test_images(folder, 64), processes)
        finally:
            for process in processes:
                process.terminate()
                process.wait()
            if args.against:
                remove = ["git", "worktree", "remove", "--force", str(root / "against")]
                subprocess.run(remove, cwd=ROOT, check=False, capture_output=True)
    report(results, args.concurrency)
    took.report()


def run(
    root: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    images: list[np.ndarray],
    processes: list[subprocess.Popen[bytes]],
) -> Results:
    """Start the servers (into `processes`), train the served models, time every endpoint."""
    pngs = [png(pixels) for pixels in images]
    api_port, trivial_port = free_port(), free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    processes.append(start(root, "api", {**env, "TRICKLAB_PORT": str(api_port)}, "-m", "service"))
    serve_trivial = "from service.__main__ import serve; serve('bench.trivial:create_app')"
    trivial_env = {**env, "TRICKLAB_PORT": str(trivial_port)}
    processes.append(start(root, "trivial", trivial_env, "-c", serve_trivial))
    wait_ready(api_url, "/readyz")
    wait_ready(f"http://127.0.0.1:{trivial_port}", "/")
    status = trained(root, api_url, env, {"epochs": args.epochs}, "base spec")
    path, v2_path = f"/v1/jobs/{status['id']}/predict", f"/v2/models/{status['id']}/infer"
    endpoints = {  # name: (port, requests)
        "trivial": (trivial_port, requests_for(pngs, path, trivial_port, args.body)),
        "predict": (api_port, requests_for(pngs, path, api_port, args.body)),
        "v2": (api_port, v2_requests_for(images, v2_path, api_port)),
    }
    if args.against:  # started once this tree's API has made the database
        port = free_port()
        tree = worktree(root / "against", args.against)
        processes.append(
            start(root, "against", {**env, "TRICKLAB_PORT": str(port)}, "-m", "service", cwd=tree)
        )
        wait_ready(f"http://127.0.0.1:{port}", "/readyz")
        endpoints["before"] = (port, requests_for(pngs, path, port, args.body))
        endpoints["v2-before"] = (port, v2_requests_for(images, v2_path, port))
    served = {"predict": status}
    if args.cnn:
        cnn = {"epochs": args.epochs, "architecture": "cnn"}
        served["cnn"] = trained(root, api_url, env, cnn, "default CNN")
        cnn_path = f"/v1/jobs/{served['cnn']['id']}/predict"
        endpoints["cnn"] = (api_port, requests_for(pngs, cnn_path, api_port, args.body))
    servers = {}
    for name, (port, made) in endpoints.items():
        requests = root / f"{name}.requests"
        requests.write_bytes(pickle.dumps(made))
        servers[name] = (port, requests)
    print(
        f"{args.body} PNG bodies, and binary UINT8 tensors on v2; "
        f"{args.requests} requests × {args.rounds} rounds per endpoint and concurrency\n",
        flush=True,
    )
    results = measure(servers, args)
    for name, job in served.items():  # loaded now: the metadata names the runtime
        metadata = httpx.get(
            f"{api_url}/v1/jobs/{job['id']}/model/metadata", headers=AUTHORIZATION
        ).json()
        print(
            f"{name}: {job['spec']['architecture']}, test accuracy "
            f"{job['result']['test_accuracy']:.4f}, served by {metadata['runtime']}",
            flush=True,
        )
    return results


def trained(
    root: Path, api_url: str, env: dict[str, str], spec: dict[str, Any], what: str
) -> dict[str, Any]:
    """Submit the spec, train it with a real `python -m worker --once`; the succeeded job."""
    job = httpx.post(f"{api_url}/v1/jobs", json=spec, headers=AUTHORIZATION).json()
    print(f"training a served model: {what}, {spec['epochs']} epoch(s)", flush=True)
    worker = start(root, "worker", env, "-m", "worker", "--once")
    worker.wait()
    status: dict[str, Any] = httpx.get(
        f"{api_url}/v1/jobs/{job['id']}", headers=AUTHORIZATION
    ).json()
    if status["status"] != "succeeded":
        log = (root / "worker.log").read_text(errors="replace")[-3000:]
        sys.exit(
            f"bench: the model's job ended {status['status']}: {status['error']}\n"
            f"the worker's log ends:\n{log}"
        )
    return status


Results = dict[tuple[str, int], list[Run]]  # (server, concurrency): one run a round


def measure(servers: dict[str, tuple[int, Path]], args: argparse.Namespace) -> Results:
    for port, requests in servers.values():  # warm-up: model load, connection set-up
        load_test(requests, port, 200, 8)
    results: Results = {}
    for concurrency in args.concurrency:
        for number in range(args.rounds):
            for name in order(list(servers), number):
                port, requests = servers[name]
                run = load_test(requests, port, args.requests, concurrency)
                results.setdefault((name, concurrency), []).append(run)
    return results


ENDPOINTS = ("trivial", "predict", "v2", "cnn", "before", "v2-before")


def report(results: Results, levels: list[int]) -> None:
    print("all rounds pooled:")
    print(
        f"{'concurrency':>11}  {'endpoint':<8}  {'req/s':>7}  {'p50 ms':>7}  {'p99 ms':>7}  "
        f"{'mean batch':>10}  {'errors':>6}"
    )
    for concurrency in levels:
        for name in ENDPOINTS:
            if (name, concurrency) not in results:
                continue
            run = Run.pooled(results[(name, concurrency)])
            batch = f"{statistics.fmean(run.batch_sizes):.1f}" if run.batch_sizes else "-"
            print(
                f"{concurrency:>11}  {name:<8}  {run.rps:>7.0f}  {run.percentile(50):>7.2f}  "
                f"{run.percentile(99):>7.2f}  {batch:>10}  {run.errors:>6}"
            )
    rounds = len(results[("trivial", levels[0])])
    print(f"\nratios predict / trivial, each round's pair: median (min–max) over {rounds} rounds")
    for concurrency in levels:
        throughput, p99 = ratios(results, "predict", "trivial", concurrency)
        verdict = ""
        if concurrency == 8:
            met = statistics.median(throughput) >= 0.5 and statistics.median(p99) <= 3.0
            verdict = (
                "\n  target at concurrency 8, medians ≥ 0.50 and ≤ 3.0: "
                f"{'met' if met else 'NOT met'}"
            )
        print(
            f"ratio predict / trivial at concurrency {concurrency:>2}: throughput "
            f"{spread(throughput)}, p99 latency {spread(p99)}{verdict}"
        )
    print(f"\nratios v2 / predict, each round's pair: median (min–max) over {rounds} rounds")
    for concurrency in levels:
        throughput, p99 = ratios(results, "v2", "predict", concurrency)
        verdict = ""
        if concurrency == 8:
            met = statistics.median(throughput) >= 0.9
            verdict = (
                "\n  target at concurrency 8, throughput median ≥ 0.90: "
                f"{'met' if met else 'NOT met'}"
            )
        print(
            f"ratio v2 / predict at concurrency {concurrency:>2}: throughput "
            f"{spread(throughput)}, p99 latency {spread(p99)}{verdict}"
        )

    for name, baseline in (("cnn", "predict"), ("predict", "before"), ("v2", "v2-before")):
        if (name, levels[0]) not in results or (baseline, levels[0]) not in results:
            continue
        pairs = f"each round's pair: median (min–max) over {rounds} rounds"
        print(f"\nratios {name} / {baseline}, {pairs}")
        for concurrency in levels:
            throughput, p99 = ratios(results, name, baseline, concurrency)
            print(
                f"ratio {name} / {baseline} at concurrency {concurrency:>2}: throughput "
                f"{spread(throughput)}, p99 latency {spread(p99)}"
            )


def ratios(
    results: Results, name: str, baseline: str, concurrency: int
) -> tuple[list[float], list[float]]:
    """Each round's throughput and p99 latency of `name` over `baseline`'s."""
    pairs = list(zip(results[(name, concurrency)], results[(baseline, concurrency)], strict=True))
    throughput = [run.rps / base.rps for run, base in pairs]
    p99 = [run.percentile(99) / base.percentile(99) for run, base in pairs]
    return throughput, p99


if __name__ == "__main__":
    main()
