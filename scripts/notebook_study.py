"""The study notebook's progression, run on the genuine Fashion-MNIST by a real service and real
workers, written into docs/notebook-study/ (`--preset notebook-cnn`: the same on the CNN, into
docs/notebook-study-cnn/): its plots as the service draws them, and a table of what it found,
stamped with the date, the command and the commit that produced them. `make notebook-study`,
`make notebook-study-cnn`.

Through the same doors a user has (`python -m service`, `python -m worker`, HTTP), so the page
shows what the current code does, never what an older version once did. The MLP's takes about
5 minutes on a 2-core CPU with one worker (it packs the jobs); the CNN's jobs train alone, at
about 25 s an epoch there. `--workers 2` splits them where there are more cores.
`--study '{"base": {"epochs": 1}, "repeats": 2}'` overrides the preset's fields for a quick look.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ("accuracy", "effects", "curves", "gap")
# Each preset's folder under docs/, and its make target.
OUT = {"notebook": "notebook-study", "notebook-cnn": "notebook-study-cnn"}
ENDED = ("succeeded", "failed", "cancelled")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=list(OUT), default="notebook")
    parser.add_argument("--out", type=Path, help="default: docs/notebook-study[-cnn]")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--data-dir", type=Path, default=os.environ.get("TRICKLAB_DATA_DIR"), required=False
    )
    parser.add_argument("--study", type=json.loads, default={}, help="fields over the preset")
    args = parser.parse_args(argv)
    args.out = args.out or ROOT / "docs" / OUT[args.preset]
    if args.data_dir is None:
        parser.error("the genuine data: --data-dir or TRICKLAB_DATA_DIR (make sets it)")

    started, commit = time.monotonic(), commit_of(args.out.name)
    with (
        tempfile.TemporaryDirectory(prefix="notebook-study-") as state,
        stack(Path(state), args.data_dir, args.workers) as (api, alive),
    ):
        study = api.post("/v1/studies", json={"preset": args.preset, **args.study})
        if study.status_code != 201:
            print(f"the study was refused: {study.status_code} {study.text}", file=sys.stderr)
            return 2
        study_id = study.json()["id"]
        follow(api, study_id, alive)
        summary = api.get(f"/v1/studies/{study_id}").json()  # with the request, as applied
        report = api.get(f"/v1/studies/{study_id}/report").json()
        args.out.mkdir(parents=True, exist_ok=True)
        drawn = []
        for name in PLOTS:
            image = api.get(f"/v1/studies/{study_id}/plots/{name}")
            if image.status_code == 409:  # nothing to draw: one variant compares no trick
                continue
            image.raise_for_status()
            (args.out / f"{name}.png").write_bytes(image.content)
            drawn.append(name)
    minutes = (time.monotonic() - started) / 60
    command = f"make {OUT[args.preset]}" + (
        f" STUDY='{json.dumps(args.study)}'" if args.study else ""
    )
    page = results_page(summary, report, stamp(command, args.workers, minutes, commit), drawn)
    (args.out / "results.md").write_text(page)
    print(f"wrote {args.out / 'results.md'} and {len(drawn)} plots ({minutes:.1f} minutes)")
    return 0 if summary["status"] == "succeeded" else 1


@contextmanager
def stack(
    state: Path, data_dir: Path, workers: int
) -> Iterator[tuple[httpx.Client, Callable[[], None]]]:
    """The service and the workers on a database of their own, until the block ends: a client
    of the service, and `alive()`, which exits with the processes' log once one has ended."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = secrets.token_urlsafe(32)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TRICKLAB_")},
        "TRICKLAB_DATABASE_URL": f"sqlite:///{state / 'tricklab.db'}",
        "TRICKLAB_ARTIFACTS_DIR": str(state / "artifacts"),
        "TRICKLAB_DATA_DIR": str(Path(data_dir).resolve()),
        "TRICKLAB_PORT": str(port),
        "TRICKLAB_ADMIN_TOKEN": token,
    }
    subprocess.run([sys.executable, "-m", "jobqueue.db"], env=env, check=True, cwd=ROOT)
    log_path = state / "processes.log"
    log = log_path.open("wb")
    processes = [
        subprocess.Popen([sys.executable, "-m", module], env=env, cwd=ROOT, stdout=log, stderr=log)
        for module in ["service"] + ["worker"] * workers
    ]

    def alive() -> None:
        if any(process.poll() is not None for process in processes):
            tail = log_path.read_text(errors="replace")[-4000:]
            raise SystemExit(f"a process of the stack ended; its log ends:\n{tail}")

    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=60,
            headers={"Authorization": f"Bearer {token}"},
        ) as api:
            wait_until_ready(api, alive)
            yield api, alive
    finally:
        for process in processes:  # SIGTERM: a worker hands back what it holds
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=120)
        log.close()


def wait_until_ready(api: httpx.Client, alive: Callable[[], None]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        alive()
        try:
            if api.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("the service was not ready within 3 minutes")


def follow(api: httpx.Client, study_id: str, alive: Callable[[], None]) -> dict[str, Any]:
    """The study's summary once all its jobs have ended, its progress printed on the way."""
    shown = None
    while True:
        alive()  # a worker that died would leave the study running for ever
        summary: dict[str, Any] = api.get(f"/v1/studies/{study_id}").json()
        progress = {k: v for k, v in summary["progress"].items() if v}
        if progress != shown:
            print(f"{summary['status']}: {progress}", flush=True)
            shown = progress
        if summary["status"] in ENDED:
            return summary
        time.sleep(2)


def commit_of(produced: str) -> str:
    """The commit the run's processes start from, taken before they start: the tree may change
    while they run. Changes under docs/`produced`, the run's own output, do not count."""

    def git(*words: str) -> str:
        return subprocess.run(["git", *words], cwd=ROOT, capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short=12", "HEAD").strip() or "unknown"
    changed = [
        line
        for line in git("status", "--porcelain").splitlines()
        if f"docs/{produced}/" not in line
    ]
    return commit + (" with uncommitted changes" if changed else "")


def stamp(command: str, workers: int, minutes: float, commit: str) -> str:
    """Date, command, commit (`commit_of`, at the start) and time."""
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    return (
        f"Produced on {today} by `{command}` at commit {commit}, {workers} worker(s), "
        f"{minutes:.1f} minutes in all."
    )


def percent(estimate: dict[str, Any] | None) -> str:
    if not estimate:
        return "–"
    if estimate["low"] is None:
        return f"{estimate['mean'] * 100:.2f}%"
    half = (estimate["high"] - estimate["low"]) / 2
    return f"{estimate['mean'] * 100:.2f} ± {half * 100:.2f}%"


def shape(spec: dict[str, Any]) -> str:
    """The spec's architecture fields, as `hidden_units` [128, 32]."""
    fields = ("hidden_units", "conv_filters", "kernel_size", "dense_units")
    return ", ".join(f"`{name}` {spec[name]}" for name in fields if spec.get(name) is not None)


def results_page(
    summary: dict[str, Any], report: dict[str, Any], stamped: str, plots: list[str]
) -> str:
    variants = report["variants"]
    spec = variants[0]["spec"] if variants else {}
    request = summary["request"]
    preset = request.get("preset") or "notebook"
    model = "the notebook's MLP" if spec.get("architecture", "mlp") == "mlp" else "the CNN"
    design = (
        "each variant adds one trick to the one before"
        if request["design"] == "cumulative"
        else f"design {request['design']}"
    )
    lines = [
        f"# The {preset} study, as the current code runs it",
        "",
        stamped,
        "",
        f"The `{preset}` preset on the genuine Fashion-MNIST, on {model} ("
        f"{shape(spec)}): {design}, {spec.get('epochs')} epochs, batch "
        f"{spec.get('batch_size')}, seeds {', '.join(map(str, summary['seeds']))}; study status "
        f"**{summary['status']}**. Test accuracy of the saved model, mean ± half-width of the "
        "95% interval over the seeds.",
        "",
        "| variant | final test accuracy | single seeds | early stopping stopped at "
        "| gap at the end |",
        "|---|---|---|---|---|",
    ]
    for variant in variants:
        seeds = ", ".join(
            f"{run['test_accuracy'] * 100:.2f}"
            for run in variant["runs"]
            if run["test_accuracy"] is not None
        )
        stopped = [epoch for epoch in variant["stopped_epochs"] if epoch is not None]
        gap = variant["generalisation_gap"]
        gap_text = f"{gap['mean'] * 100:+.1f} points" if gap else "–"
        stopped_text = "epochs " + ", ".join(map(str, stopped)) if stopped else "–"
        lines.append(
            f"| {variant['name']} | {percent(variant['final_test_accuracy'])} | {seeds or '–'} | "
            f"{stopped_text} | {gap_text} |"
        )
    lines += ["", "What each trick does, paired by seed:", ""]
    lines += [f"- {effect['summary']}" for effect in report["effects"]]
    lines += [""] + [f"![{name}]({name}.png)" for name in plots] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
