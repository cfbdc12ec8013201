"""Packing benchmark on the genuine Fashion-MNIST: 8 compatible jobs packed, and one after
another, in the same run.

The jobs are the base model (JobSpec(epochs=E, seed=s), seeds 0..K-1); the same specs are
trained one after another by `worker.training.train`, as a worker without packing does, and
then together by `worker.packing.train_pack`. Each side's time is the wall clock from the
first job's start to the last job's end, data already in memory; the ratio is sequential /
packed. It also prints the largest difference in any job's final test accuracy between the
two: packing must not change results.

Nothing is asserted: it prints. `make bench` runs it; `python bench/pack.py --help` lists its
options.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a script whether or not the package is installed
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # fewer TensorFlow start-up lines

import argparse  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from bench.common import data_dir  # noqa: E402
from core import datasets  # noqa: E402
from core.spec import JobSpec  # noqa: E402
from worker import training  # noqa: E402
from worker.devices import freeze_imports, setup_device  # noqa: E402
from worker.packing import Branch, train_pack  # noqa: E402


def quiet(row: dict[str, Any], _snapshot: object) -> bool:
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="jobs in the pack (default 8)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per job (default 4)")
    args = parser.parse_args()

    folder = data_dir()
    device = setup_device()
    freeze_imports()  # as the worker does
    splits = datasets.load("fashion_mnist", folder, JobSpec().validation_size)
    specs = [JobSpec(epochs=args.epochs, seed=seed) for seed in range(args.jobs)]
    samples = args.jobs * args.epochs * len(splits.x_train)
    print(
        f"data: {folder}; {args.jobs} base-model jobs of {args.epochs} epochs on {device}",
        flush=True,
    )

    began = time.perf_counter()
    alone = []
    for spec in specs:
        alone.append(training.train(spec, splits, quiet))
        print(f"  alone: seed {spec.seed} done", flush=True)
    sequential = time.perf_counter() - began

    began = time.perf_counter()
    packed = train_pack([Branch(spec, quiet) for spec in specs], splits)
    together = time.perf_counter() - began

    drift = max(
        abs(p.result["test_accuracy"] - a.result["test_accuracy"])  # type: ignore[union-attr]
        for p, a in zip(packed, alone, strict=True)
    )
    print(f"\n=== {args.jobs} jobs × {args.epochs} epochs, base model, batch 32 ===")
    print(f"  one after another  {sequential:7.1f} s  {samples / sequential:8.0f} samples/s")
    print(f"  packed             {together:7.1f} s  {samples / together:8.0f} samples/s")
    print(f"  largest difference in a job's final test accuracy: {drift:.4f}")
    print(f"ratio packed / one after another: {sequential / together:.2f}× (target ≥ 3×)")


if __name__ == "__main__":
    main()
