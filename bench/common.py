"""What the benchmarks share: where the genuine Fashion-MNIST is."""

from __future__ import annotations

import os
import sys
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
