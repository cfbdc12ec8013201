"""CPU per prediction, in process: what the API spends on one request, against tricklab at
another git revision serving the same model.

Loopback throughput (bench/serve.py) moves by 10-30% from round to round on two shared cores;
a change of a few microseconds in the request path hides in it. This benchmark calls the ASGI
application itself, in a process of its own, with one request at a time: a single-image
multipart POST to /v1/jobs/{id}/predict ("v1"), or the same image as a UINT8 tensor to
/v2/models/{id}/infer ("v2"), token and all. It reports CPU seconds (process time) per
request, the least of five batches of REQUESTS, so that a preempted batch does not count.

What it does:

1. Checks out REV (`--against`, default HEAD: what the uncommitted change costs; a clean tree
   against HEAD shows the noise) as a git worktree in a temporary folder.
2. For each tree, trains the base MLP for one epoch on the genuine Fashion-MNIST with that
   tree's worker loop, into a database and artifact store of its own (so each has the schema
   its code expects).
3. ROUNDS times, for v1 and v2, measures this tree and REV's tree, each in a fresh process on
   its own database and model, the one going first moving along from round to round.
4. Prints each figure and the ratio this tree / REV per round, as the median with min and max:
   above 1, this tree spends more per request.

Nothing is asserted: it prints. `python -m bench.percall --help` lists its options.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # read when TensorFlow is first imported
ROOT = Path(__file__).resolve().parents[1]
TOKEN = "tl_bench-percall-token-0123456789abcdefghijklmnopqrstu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", default="HEAD", help="git revision (default HEAD)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000, help="per batch (5 a measurement)")
    parser.add_argument(
        "--measure", nargs=3, metavar=("ROOT", "JOB", "DOOR"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.measure:
        root, job, door = args.measure
        print(asyncio.run(cpu_per_request(Path(root), job, door, args.requests)))
        return
    compare(args)


def compare(args: argparse.Namespace) -> None:
    from bench.common import Took, data_dir, order, spread

    took = Took("bench/percall.py")
    with tempfile.TemporaryDirectory(prefix="tricklab-percall-") as tmp:
        before = Path(tmp) / "before"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before), args.against],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        trees = {"this tree": ROOT, args.against: before}
        roots = {name: Path(tmp) / f"data-{number}" for number, name in enumerate(trees)}
        try:
            jobs = {name: trained(trees[name], roots[name], data_dir()) for name in trees}
            figures: dict[tuple[str, str], list[float]] = {}
            for door in ("v1", "v2"):
                for number in range(args.rounds):
                    for name in order(list(trees), number):
                        cpu = measured(trees[name], roots[name], jobs[name], door, args.requests)
                        figures.setdefault((door, name), []).append(cpu)
                        print(f"  {door} round {number + 1}: {name:<10} {cpu:7.1f} µs", flush=True)
        finally:
            remove = ["git", "worktree", "remove", "--force", str(before)]
            subprocess.run(remove, cwd=ROOT, check=False, capture_output=True)
    print(f"\nCPU per request, least of 5 batches of {args.requests}; this tree / {args.against}:")
    for door in ("v1", "v2"):
        mine, theirs = figures[(door, "this tree")], figures[(door, args.against)]
        ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
        mine_text, theirs_text = spread(mine, 1, " µs"), spread(theirs, 1, " µs")
        print(
            f"{door}: this tree {mine_text}, {args.against} {theirs_text}; ratio {spread(ratios)}"
        )
    took.report()


def environment(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "TRICKLAB_DATABASE_URL": f"sqlite:///{root / 'tricklab.db'}",
        "TRICKLAB_ARTIFACTS_DIR": str(root / "artifacts"),
        "TRICKLAB_ADMIN_TOKEN": TOKEN,
        "TRICKLAB_LOG_LEVEL": "WARNING",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }


# Run by each tree's own code, so that its database has the schema that code expects.
TRAIN = """
import sys
from pathlib import Path
from core.spec import JobSpec
from jobqueue.artifacts import ArtifactStore
from jobqueue.db import init_db, make_engine
from jobqueue.models import ADMIN
from jobqueue.store import JobStore
from worker.loop import Worker

root, data = Path(sys.argv[1]), Path(sys.argv[2])
engine = make_engine(f"sqlite:///{root / 'tricklab.db'}")
init_db(engine)
store = JobStore(engine)
job, _ = store.enqueue(JobSpec(epochs=1), ADMIN)
Worker(store, ArtifactStore(root / "artifacts"), data).run_one()
print(job.id)
"""


def trained(tree: Path, root: Path, data: Path) -> str:
    """One epoch of the base MLP, trained by the worker's loop of `tree` into a database and
    artifact store of its own under `root`: its job id."""
    root.mkdir()
    env = {**environment(root), "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", TRAIN, str(root), str(data)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"bench: training with {tree} failed:\n{done.stderr[-3000:]}")
    return done.stdout.split()[-1]


def measured(tree: Path, root: Path, job: str, door: str, requests: int) -> float:
    """One measurement in a fresh process that imports `tree`'s code."""
    # -P: this file's folder, bench/, is not put on sys.path, where its search.py would
    # stand for the search package.
    command = [sys.executable, "-P", str(Path(__file__)), "--measure", str(root), job, door]
    env = {**environment(root), "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [*command, "--requests", str(requests)], cwd=tree, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"bench: measuring {tree} failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.split()[-1])


def request_parts(job: str, door: str) -> tuple[str, list[tuple[bytes, bytes]], bytes]:
    """The path, headers and body of one single-image request."""
    import numpy as np
    from PIL import Image

    pixels = np.full((28, 28), 100, np.uint8)
    headers = [(b"authorization", f"Bearer {TOKEN}".encode()), (b"host", b"127.0.0.1")]
    if door == "v1":
        png = io.BytesIO()
        Image.fromarray(pixels).save(png, format="PNG")
        body = (
            b'--B\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + png.getvalue() + b"\r\n--B--\r\n"
        )
        headers.append((b"content-type", b"multipart/form-data; boundary=B"))
        return f"/v1/jobs/{job}/predict", headers, body
    head = (
        b'{"inputs":[{"name":"images","shape":[1,28,28],"datatype":"UINT8",'
        b'"parameters":{"binary_data_size":784}}],"parameters":{"binary_data_output":true}}'
    )
    headers.append((b"inference-header-content-length", str(len(head)).encode()))
    return f"/v2/models/{job}/infer", headers, head + pixels.tobytes()


async def cpu_per_request(root: Path, job: str, door: str, requests: int) -> float:
    """Microseconds of CPU per request to the app of the tree on the path, after a warm-up."""
    from service.app import create_app

    app = create_app()
    path, headers, body = request_parts(job, door)
    headers.append((b"content-length", str(len(body)).encode()))

    async def one() -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])
        statuses = []

        async def receive() -> dict[str, object]:
            return next(messages, {"type": "http.disconnect"})

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)  # type: ignore[arg-type]
        if statuses != [200]:
            raise SystemExit(f"bench: {path} answered {statuses}")

    async with app.router.lifespan_context(app):
        for _ in range(300):  # the model loaded, the caches warm
            await one()
        batches = []
        for _ in range(5):
            started = time.process_time()
            for _ in range(requests):
                await one()
            batches.append((time.process_time() - started) / requests * 1e6)
    return min(batches)


if __name__ == "__main__":
    main()
