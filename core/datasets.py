"""Fashion-MNIST and MNIST from their four standard IDX .gz files, and the fixed splits."""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.spec import IMAGE_SHAPE, NUM_CLASSES

FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one these datasets use


class DatasetError(ValueError):
    """The dataset files are missing, malformed, or too small for the spec. Retrying will
    not help; the message says what to fix."""


class SplitError(DatasetError):
    """The dataset is there, but the spec's validation split leaves no training images."""


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: see `load`
class Splits:
    """uint8 images (n, 28, 28) and int labels (n,). The validation split is the first
    `validation_size` training images, as in the notebook; it may be empty."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as file:
        data = file.read()
    if len(data) < 4:
        raise DatasetError(f"{path}: too short for an IDX header")
    zero, kind, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != _UBYTE:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise DatasetError(f"{path}: header promises {shape} but holds {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """The inverse of read_idx (used to write small test datasets)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, _UBYTE, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path, "wb") as file:
        file.write(header + array.tobytes())


def find_dataset(name: str, data_dir: Path) -> Path:
    """The folder holding `name`'s four files: `data_dir` itself when it is named after the
    dataset (e.g. .../fashion-mnist), else its subfolder fashion-mnist/ or fashion_mnist/."""
    spellings = {name, name.replace("_", "-")}
    candidates = [data_dir] if data_dir.name in spellings else []
    candidates += [data_dir / spelling for spelling in sorted(spellings)]
    for folder in candidates:
        if all((folder / file).is_file() for file in FILES.values()):
            return folder
    raise DatasetError(
        f"dataset {name!r} not found: none of {[str(c) for c in candidates]} holds the four "
        f"files {', '.join(FILES.values())}; set TRICKLAB_DATA_DIR to their folder"
    )


def training_images(name: str, data_dir: Path, validation_size: int) -> int:
    """How many images a job on `name` trains on, read from the labels file's header alone
    (a few hundred bytes): what the service checks a spec against before queueing it."""
    path = find_dataset(name, data_dir) / FILES["y_train"]
    try:
        with gzip.open(path, "rb") as file:
            header = file.read(8)
    except (OSError, EOFError) as error:
        raise DatasetError(f"{path}: unreadable ({error})") from None
    if len(header) < 8 or header[:4] != struct.pack(">HBB", 0, _UBYTE, 1):
        raise DatasetError(f"{path}: not an IDX label file (magic {header[:4].hex()})")
    (count,) = struct.unpack(">I", header[4:])
    _check_split(name, count, validation_size)
    return count - validation_size


def _check_split(name: str, count: int, validation_size: int) -> None:
    if validation_size >= count:
        raise SplitError(
            f"validation_size {validation_size} leaves no training images: "
            f"{name} has {count} training images"
        )


@lru_cache(maxsize=2)
def _read_all(folder: Path) -> dict[str, np.ndarray]:
    """Read once per worker process; the arrays are shared by every job that uses them."""
    arrays = {key: read_idx(folder / file) for key, file in FILES.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
            raise DatasetError(f"{folder}: {part} images are {images.shape[1:]}, not 28×28")
        if labels.shape != images.shape[:1]:
            raise DatasetError(f"{folder}: {len(images)} {part} images but {len(labels)} labels")
        if labels.size and labels.max() >= NUM_CLASSES:
            raise DatasetError(f"{folder}: {part} label {labels.max()} is outside 0–9")
    return arrays


@lru_cache(maxsize=4)  # the same Splits for the same arguments: jobs share what derives from it
def load(name: str, data_dir: Path, validation_size: int) -> Splits:
    arrays = _read_all(find_dataset(name, data_dir))
    x, y = arrays["x_train"], arrays["y_train"]
    if not len(arrays["x_test"]):
        raise DatasetError(f"{name} has no test images")
    _check_split(name, len(x), validation_size)
    return Splits(
        x_train=x[validation_size:],
        y_train=y[validation_size:],
        x_val=x[:validation_size],
        y_val=y[:validation_size],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
    )
