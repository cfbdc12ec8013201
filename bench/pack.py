"""Packing benchmark on the genuine Fashion-MNIST: 8 compatible jobs packed, and one after
another, in the same run.

The jobs are the base model (JobSpec(epochs=E, seed=s), seeds 0..K-1). Each round trains the
same specs one after another with `worker.training.train`, as a worker without packing does,
and together with `worker.packing.train_pack`; which side goes first alternates from round to
round (3 rounds by default), so neither always runs after a quiet pause or after the other's
heat. Each side's time is the wall clock from the first job's start to the last job's end,
data already in memory; the ratio is sequential / packed, per round, printed as the median
with its min and max. It also prints the largest difference in any job's final test accuracy
between the two: packing must not change results.

Nothing is asserted: it prints. `make bench` runs it; `python -m bench.pack --help` lists its
options.
"""

from __future__ import annotations

import os

# Fewer TensorFlow start-up lines: TensorFlow reads it when first imported, so it is set before
# the imports below (Keras and the worker import TensorFlow).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import statistics
import time

from bench.common import Took, data_dir, hush_retracing, order, spread
from core import datasets
from core.datasets import Splits
from core.results import EpochRow
from core.spec import JobSpec
from worker import training
from worker.checkpoints import Snapshot
from worker.devices import freeze_imports, setup_device
from worker.packing import Branch, train_pack

ALONE, PACKED = "one after another", "packed"


def quiet(row: EpochRow, _snapshot: Snapshot) -> bool:
    return True


def one_after_another(specs: list[JobSpec], splits: Splits) -> list[float]:
    """Each job's final test accuracy."""
    return [training.train(spec, splits, quiet).result.test_accuracy for spec in specs]


def packed(specs: list[JobSpec], splits: Splits) -> list[float]:
    outcomes = train_pack([Branch(spec, quiet) for spec in specs], splits)
    return [outcome.result.test_accuracy for outcome in outcomes]  # type: ignore[union-attr]


def main() -> None:
    took = Took("bench/pack.py")
    hush_retracing()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="jobs in the pack (default 8)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per job (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="turns each side takes (default 3)")
    args = parser.parse_args()
    if min(args.jobs, args.epochs, args.rounds) < 1:
        parser.error("--jobs, --epochs and --rounds must be at least 1")

    folder = data_dir()
    device = setup_device()
    freeze_imports()  # as the worker does
    splits = datasets.load("fashion_mnist", folder, JobSpec().validation_size)
    specs = [JobSpec(epochs=args.epochs, seed=seed) for seed in range(args.jobs)]
    samples = args.jobs * args.epochs * len(splits.x_train)
    print(
        f"data: {folder}; {args.jobs} base-model jobs of {args.epochs} epochs on {device}, "
        f"{args.rounds} rounds",
        flush=True,
    )
    sides = {ALONE: one_after_another, PACKED: packed}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    accuracies: dict[str, list[list[float]]] = {name: [] for name in sides}
    for number in range(args.rounds):
        for name in order(list(sides), number):
            began = time.perf_counter()
            accuracies[name].append(sides[name](specs, splits))
            seconds[name].append(time.perf_counter() - began)
            print(
                f"  round {number + 1}: {name:<17} {seconds[name][-1]:6.1f} s  "
                f"{samples / seconds[name][-1]:8.0f} samples/s",
                flush=True,
            )

    drift = max(
        abs(p - a)
        for alone, together in zip(accuracies[ALONE], accuracies[PACKED], strict=True)
        for p, a in zip(together, alone, strict=True)
    )
    ratios = [a / p for a, p in zip(seconds[ALONE], seconds[PACKED], strict=True)]
    print(f"\n=== {args.jobs} jobs × {args.epochs} epochs, base model, batch 32 ===")
    print(f"  (seconds and ratio: median (min–max) over {args.rounds} rounds)")
    for name in sides:
        median = statistics.median(seconds[name])
        print(f"  {name:<17}  {spread(seconds[name], 1, ' s')}  {samples / median:8.0f} samples/s")
    print(f"  largest difference in a job's final test accuracy: {drift:.4f}")
    print(f"ratio packed / one after another: {spread(ratios, unit='×')} (target ≥ 3×)")
    took.report()


if __name__ == "__main__":
    main()
