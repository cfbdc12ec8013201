"""Search benchmark on the genuine Fashion-MNIST: ASHA against random search without pruning,
over the same sampled configurations, with packing on and off.

Two stacks run side by side, each a real API and one worker on a SQLite database of its own:
one worker packs compatible jobs (the default pack size), the other trains one job at a time
(TRICKLAB_PACK_SIZE=1). Each round submits the same search through HTTP four times, once per
scheduler and stack: a fixed MLP space (learning rate, widths, dropout rate) searched by the
random sampler on one seed, so that every search samples the same configurations in the same
order, with the same trial budget and confirmation. Only the scheduler differs: ASHA (rungs at
1, 3, 9 … epochs up to base.epochs, η = 3) or none (every trial trains base.epochs). The four
take turns in an order that moves on by one a round.

For each search it measures, from the service's own timestamps and records: the epochs its
trials trained (their jobs' epochs_done, summed), the wall time of its search phase (created →
its confirmation jobs queued) and of the whole search (created → succeeded), and its pick (the
best trial on validation) with the pick's confirmed test accuracy on the fresh seeds. It prints
the ratios ASHA / none per round as the median with min–max, and the issue's two targets: ASHA
spends at most a third of the epochs, and its pick's confirmed mean lies within the confidence
interval of the other's.

Nothing is asserted: it prints. `make bench` runs it; `python -m bench.search --help` lists its
options; `--quick` is a tiny run for the smoke test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx

from bench.common import Took, data_dir, order, spread
from bench.serve import free_port, start, wait_ready
from core.config import Settings

TOKEN = secrets.token_urlsafe(32)
ENDED = ("succeeded", "failed", "cancelled")
SPACE = {
    "learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-1},
    "hidden_units": {"type": "choice", "values": [[128, 32], [256], [64, 64]]},
    "tricks.dropout.rate": {"type": "uniform", "low": 0.1, "high": 0.5},
}
SCHEDULERS: dict[str, dict[str, Any]] = {
    "ASHA": {"type": "asha", "min_epochs": 1, "eta": 3},
    "none": {"type": "none"},
}
# The worker's pack size on each stack: the default, and one job at a time.
PACKING = {"packing on": Settings.model_fields["pack_size"].default, "packing off": 1}
# Each round's sides: every scheduler on every stack.
SIDES = {f"{s}, {p}": (s, p) for p in PACKING for s in SCHEDULERS}
QUICK = {"epochs": 3, "trials": 3, "concurrent": 3, "rounds": 1, "validation_size": 500}


@dataclass
class Searched:
    """One search, as measured."""

    trial_epochs: list[int]  # each trial's, in order
    search_seconds: float  # created → its confirmation queued
    whole_seconds: float  # created → succeeded
    configurations: list[dict[str, Any]]  # each trial's sampled parameters, in order
    pick: dict[str, Any]  # the report's best trial
    confirmed: dict[str, Any]  # the pick's confirmed test accuracy {mean, low, high, n}


# What ASHA is compared with no pruning on.
FIGURES: dict[str, Callable[[Searched], float]] = {
    "trial epochs": lambda s: sum(s.trial_epochs),
    "search phase": lambda s: s.search_seconds,
    "whole search": lambda s: s.whole_seconds,
}


class Stack:
    """A real API and one worker with the given pack size, on a database of their own."""

    def __init__(self, root: Path, folder: Path, pack_size: int) -> None:
        root.mkdir()
        port = free_port()
        env = {
            **os.environ,
            "TRICKLAB_DATABASE_URL": f"sqlite:///{root / 'tricklab.db'}",
            "TRICKLAB_ARTIFACTS_DIR": str(root / "artifacts"),
            "TRICKLAB_DATA_DIR": str(folder),
            "TRICKLAB_PORT": str(port),
            "TRICKLAB_ADMIN_TOKEN": TOKEN,
            "TRICKLAB_LOG_LEVEL": "WARNING",
            "TRICKLAB_PACK_SIZE": str(pack_size),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        self.root, self.env, self.url = root, env, f"http://127.0.0.1:{port}"
        self.processes = [start(root, "api", env, "-m", "service")]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def add_worker(self) -> None:
        """Once the API is ready: it has made the database."""
        wait_ready(self.url, "/readyz")
        self.processes.append(start(self.root, "worker", self.env, "-m", "worker"))

    def alive(self) -> None:
        """Exit with the processes' logs once one has ended: a dead worker would leave a
        search running for ever."""
        if any(process.poll() is not None for process in self.processes):
            logs = "".join(path.read_text(errors="replace") for path in self.root.glob("*.log"))
            sys.exit(
                f"bench: a process of the stack in {self.root} ended; its logs end:\n{logs[-4000:]}"
            )

    def ended(self, path: str) -> dict[str, Any]:
        """GET `path` (a job or a search) until its status is final."""
        while True:
            self.alive()
            found: dict[str, Any] = self.client.get(path).json()
            if found["status"] in ENDED:
                return found
            time.sleep(1)

    def close(self) -> None:
        for process in self.processes:  # SIGTERM: the worker hands back what it holds
            process.terminate()
        for process in self.processes:
            process.wait(timeout=120)
        self.client.close()


@contextlib.contextmanager
def stacks(root: Path, folder: Path, base: dict[str, Any]) -> Iterator[dict[str, Stack]]:
    """One stack per packing setting, each worker warmed up by a one-epoch job of the base
    (TensorFlow imported, the data loaded), so that no search pays for a worker's start."""
    with contextlib.ExitStack() as exits:
        started = {}
        for name, pack_size in PACKING.items():
            started[name] = Stack(root / name.replace(" ", "-"), folder, pack_size)
            exits.callback(started[name].close)
            started[name].add_worker()
        warm = {
            name: stack.client.post("/v1/jobs", json={**base, "epochs": 1}).json()["id"]
            for name, stack in started.items()
        }
        for name, stack in started.items():
            job = stack.ended(f"/v1/jobs/{warm[name]}")
            if job["status"] != "succeeded":
                stack.alive()
                sys.exit(f"bench: the warm-up job on {name} {job['status']}: {job['error']}")
        yield started


def seconds_between(start_at: str, end_at: str) -> float:
    return (datetime.fromisoformat(end_at) - datetime.fromisoformat(start_at)).total_seconds()


def run_search(stack: Stack, body: dict[str, Any]) -> Searched:
    created = stack.client.post("/v1/searches", json=body)
    if created.status_code != 201:
        sys.exit(f"bench: the search was refused: {created.status_code} {created.text}")
    path = f"/v1/searches/{created.json()['id']}"
    search = stack.ended(path)
    if search["status"] != "succeeded":
        sys.exit(f"bench: the search {search['status']}: {search['error']}")
    trials = stack.client.get(f"{path}/trials").json()["trials"]
    report = stack.client.get(f"{path}/report").json()

    def job(job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = stack.client.get(f"/v1/jobs/{job_id}").json()
        return found

    trial_epochs = [job(trial["job_id"])["epochs_done"] for trial in trials if trial["job_id"]]
    confirming = min(job(j)["created_at"] for c in report["confirmed"] for j in c["jobs"])
    pick = report["best"]
    confirmed = next(c for c in report["confirmed"] if c["trial"] == pick["trial"])
    if confirmed["test_accuracy"] is None:
        sys.exit(f"bench: no confirmation job of the pick succeeded: {confirmed['jobs']}")
    return Searched(
        trial_epochs=trial_epochs,
        search_seconds=seconds_between(search["created_at"], confirming),
        whole_seconds=seconds_between(search["created_at"], search["finished_at"]),
        configurations=[trial["params"] for trial in trials],
        pick=pick,
        confirmed=confirmed["test_accuracy"],
    )


def search_body(args: argparse.Namespace, scheduler: str) -> dict[str, Any]:
    return {
        "name": f"bench {scheduler}",
        "base": {"epochs": args.epochs, "validation_size": args.validation_size},
        "space": SPACE,
        "sampler": "random",
        "seed": args.seed,
        "max_trials": args.trials,
        "max_concurrent_trials": args.concurrent,
        "scheduler": SCHEDULERS[scheduler],
        "confirm": {"top": 1, "repeats": args.repeats},
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="turns each side takes (default 2)")
    parser.add_argument("--trials", type=int, default=9, help="max_trials (default 9)")
    parser.add_argument(
        "--concurrent", type=int, default=3, help="max_concurrent_trials (default 3)"
    )
    parser.add_argument("--epochs", type=int, default=9, help="base.epochs (default 9)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="fresh seeds confirming the pick (default 2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    parser.add_argument(
        "--validation-size", type=int, default=10_000, help="images held out (default 10000)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny run: 3 trials of up to 3 epochs, 500 validation images, 1 round",
    )
    args = parser.parse_args(argv)
    if args.quick:  # flags given still win
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    if min(args.rounds, args.trials, args.concurrent, args.epochs) < 1 or args.repeats < 2:
        parser.error("--rounds, --trials, --concurrent and --epochs ≥ 1; --repeats ≥ 2")
    return args


def main(argv: list[str] | None = None) -> None:
    took = Took("bench/search.py")
    args = parse(argv)
    folder = data_dir()
    runs: dict[str, list[Searched]] = {side: [] for side in SIDES}
    print(
        f"data: {folder}; {args.trials} MLP trials of up to {args.epochs} epochs, "
        f"{args.concurrent} at a time, random sampler seed {args.seed}; the pick confirmed on "
        f"{args.repeats} fresh seeds; {args.rounds} rounds",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="tricklab-bench-") as tmp,
        stacks(Path(tmp), folder, search_body(args, "none")["base"]) as started,
    ):
        for number in range(args.rounds):
            for side in order(list(SIDES), number):
                scheduler, packing = SIDES[side]
                searched = run_search(started[packing], search_body(args, scheduler))
                runs[side].append(searched)
                show(number, side, searched)
    summary(runs, args.rounds)
    took.report()


def show(number: int, side: str, searched: Searched) -> None:
    print(
        f"  round {number + 1}: {side:<17}  trial epochs {sum(searched.trial_epochs):4d}  "
        f"search phase {searched.search_seconds:6.1f} s  whole {searched.whole_seconds:6.1f} s",
    )
    trained = sorted(Counter(searched.trial_epochs).items())
    each = ", ".join(f"{epochs} ({count} trial{'s' * (count > 1)})" for epochs, count in trained)
    print(f"    epochs trained per trial: {each}")
    print(f"    pick: {pick(searched)}", flush=True)


def pick(searched: Searched) -> str:
    params = ", ".join(
        f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
        for key, value in searched.pick["params"].items()
    )
    accuracy = searched.confirmed
    interval = (
        f" ({accuracy['low']:.4f}–{accuracy['high']:.4f})" if accuracy["low"] is not None else ""
    )
    return (
        f"trial {searched.pick['trial']} ({params}), "
        f"confirmed test accuracy {accuracy['mean']:.4f}{interval} on {accuracy['n']} seeds"
    )


def within(asha: Searched, none: Searched) -> bool:
    """ASHA's pick's confirmed mean lies within the interval of the other's pick."""
    other = none.confirmed
    if other["low"] is None:  # one seed succeeded: no interval
        return bool(asha.confirmed["mean"] == other["mean"])
    return bool(other["low"] <= asha.confirmed["mean"] <= other["high"])


def met(passed: list[bool]) -> str:
    return "met" if all(passed) else f"NOT MET in {passed.count(False)} of {len(passed)}"


def summary(runs: dict[str, list[Searched]], rounds: int) -> None:
    print(f"\n=== ASHA against no pruning; median (min–max) over {rounds} rounds ===")
    for side, searched in runs.items():
        epochs = spread([sum(s.trial_epochs) for s in searched], 0)
        phase = spread([s.search_seconds for s in searched], 1, " s")
        whole = spread([s.whole_seconds for s in searched], 1, " s")
        print(f"  {side:<17}  trial epochs {epochs}; search phase {phase}; whole search {whole}")
    configurations = {str(s.configurations) for searched in runs.values() for s in searched}
    same = "yes" if len(configurations) == 1 else "NO"
    print(f"every search sampled the same configurations in the same order: {same}")
    for packing in PACKING:
        asha, none = runs[f"ASHA, {packing}"], runs[f"none, {packing}"]
        for name, figure in FIGURES.items():
            ratios = [figure(a) / figure(n) for a, n in zip(asha, none, strict=True)]
            target = f" (target ≤ 0.33: {met([r <= 1 / 3 for r in ratios])})"
            print(
                f"ratio ASHA / none, {name}, {packing}: {spread(ratios, unit='×')}"
                f"{target if name == 'trial epochs' else ''}"
            )
    for scheduler in SCHEDULERS:
        on, off = runs[f"{scheduler}, packing on"], runs[f"{scheduler}, packing off"]
        ratios = [o.whole_seconds / f.whole_seconds for o, f in zip(on, off, strict=True)]
        print(f"ratio packing on / off, whole search, {scheduler}: {spread(ratios, unit='×')}")
    pairs = [
        within(a, n)
        for packing in PACKING
        for a, n in zip(runs[f"ASHA, {packing}"], runs[f"none, {packing}"], strict=True)
    ]
    print(f"target, ASHA's confirmed pick within the interval of none's pick: {met(pairs)}")


if __name__ == "__main__":
    main()
