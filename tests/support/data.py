"""The tiny datasets and specs that tests train on in well under a second."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.datasets import FILES, write_idx
from core.results import JobResult

# A job that trains in well under a second on the tiny dataset.
TINY = {"epochs": 2, "validation_size": 100, "learning_rate": 0.01, "hidden_units": [32, 16]}
TINY_TRAIN, TINY_TEST = 600, 100
# The CNN's as tiny: 4 and 8 filters, a dense 16 head.
TINY_CNN = {
    **{key: value for key, value in TINY.items() if key != "hidden_units"},
    "architecture": "cnn",
    "conv_filters": [4, 8],
    "dense_units": [16],
}

# One epoch's metrics as a worker records them.
EPOCH = {
    "train_loss": 0.5,
    "train_accuracy": 0.8,
    "train_objective": 0.6,
    "val_loss": 0.4,
    "val_accuracy": 0.85,
    "test_loss": 0.45,
    "test_accuracy": 0.84,
    "learning_rate": 0.001,
    "seconds": 1.0,
}


# A trained job's result as a worker records it.
RESULT = JobResult(
    epochs_trained=2,
    parameters=25_818,
    train_loss=0.45,
    train_accuracy=0.82,
    val_loss=0.4,
    val_accuracy=0.85,
    test_loss=0.45,
    test_accuracy=0.84,
    seconds=2.0,
)


def tiny_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable in an epoch: class c is a bright band across rows 2c..2c+5, over noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count).astype(np.uint8)
    images = rng.integers(0, 60, (count, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        image[2 * label : 2 * label + 6, 4:24] = 220
    return images, labels


def write_dataset(folder: Path, train: int = TINY_TRAIN, test: int = TINY_TEST) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": tiny_images(train, 1), "t10k": tiny_images(test, 2)}
    for key, name in FILES.items():
        images, labels = parts["train" if key.endswith("train") else "t10k"]
        write_idx(folder / name, images if key.startswith("x") else labels)
    return folder
