"""What the benchmarks share: where the genuine Fashion-MNIST is, and how they print a figure
that was measured several times."""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from core.datasets import DatasetError, find_dataset

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "fashion-mnist"


def data_dir() -> Path:
    """TRICKLAB_DATA_DIR if it holds the files, else ../shared/data/fashion-mnist; or exit."""
    candidates = [Path(p) for p in (os.environ.get("TRICKLAB_DATA_DIR"), SHARED_DATA) if p]
    for candidate in candidates:
        try:
            find_dataset("fashion_mnist", candidate)
            return candidate
        except DatasetError:
            continue
    sys.exit(
        "bench: the genuine Fashion-MNIST IDX files were not found in "
        f"{' nor '.join(map(str, candidates))}; set TRICKLAB_DATA_DIR to their folder"
    )


def spread(values: Sequence[float], digits: int = 2, unit: str = "") -> str:
    """ "median (min–max)" of a figure measured once a round: one round on a shared machine
    proves little, so the reader sees how far it moved."""
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.{digits}f}{unit} (1 round)"
    return f"{median:.{digits}f}{unit} ({min(values):.{digits}f}–{max(values):.{digits}f}{unit})"


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


def order(sides: Sequence[str], round_number: int) -> list[str]:
    """The sides in the order a round runs them: each round starts one further along, so
    none is always first (after a quiet pause) or always last (after the others' heat)."""
    shift = round_number % len(sides)
    return [*sides[shift:], *sides[:shift]]


class Took:
    """Prints how long the whole benchmark took, so `make bench` can say what it costs."""

    def __init__(self, name: str) -> None:
        self.name, self.started = name, time.monotonic()

    def report(self) -> None:
        print(f"\n{self.name} took {duration(time.monotonic() - self.started)} in all", flush=True)


def hush_retracing() -> None:
    """Every run builds its model and so traces its functions anew, as every job does;
    TensorFlow's warnings about that retracing are no news here."""
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
