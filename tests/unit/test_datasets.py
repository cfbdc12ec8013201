import gzip
import re

import numpy as np
import pytest

from core.datasets import FILES, DatasetError, find_dataset, load, read_idx, write_idx
from tests.support.data import TINY_TEST, TINY_TRAIN, write_dataset


def test_idx_round_trip(tmp_path):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), array)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00", "not an unsigned-byte IDX"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "promises (5,) but holds 2"),
    ],
)
def test_malformed_idx_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(content))
    with pytest.raises(DatasetError, match=re.escape(message)):
        read_idx(path)


def test_a_folder_named_after_the_dataset_or_a_parent_of_such_folders(tmp_path):
    fashion = write_dataset(tmp_path / "fashion-mnist")
    mnist = write_dataset(tmp_path / "mnist")
    assert find_dataset("fashion_mnist", tmp_path) == fashion
    assert find_dataset("fashion_mnist", fashion) == fashion
    assert find_dataset("mnist", tmp_path) == mnist
    with pytest.raises(DatasetError, match="dataset 'mnist' not found"):
        find_dataset("mnist", fashion)  # a fashion-mnist folder never stands in for mnist


def test_missing_files_are_named(tmp_path):
    folder = write_dataset(tmp_path / "fashion-mnist")
    (folder / FILES["y_test"]).unlink()
    with pytest.raises(DatasetError, match=re.escape(FILES["y_test"])):
        find_dataset("fashion_mnist", tmp_path)


def test_validation_split_comes_from_the_front_of_the_training_set(data_dir):
    splits = load("fashion_mnist", data_dir, validation_size=100)
    full = read_idx(data_dir / "fashion-mnist" / FILES["x_train"])
    np.testing.assert_array_equal(splits.x_val, full[:100])
    np.testing.assert_array_equal(splits.x_train, full[100:])
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (
        TINY_TRAIN - 100,
        100,
        TINY_TEST,
    )
    assert len(load("fashion_mnist", data_dir, 0).x_val) == 0


def test_a_validation_split_must_leave_training_images(data_dir):
    with pytest.raises(DatasetError, match=f"validation_size {TINY_TRAIN} leaves no training"):
        load("fashion_mnist", data_dir, TINY_TRAIN)


def test_mismatched_labels_are_refused(tmp_path):
    folder = write_dataset(tmp_path / "fashion-mnist")
    write_idx(folder / FILES["y_train"], np.zeros(3, dtype=np.uint8))
    with pytest.raises(DatasetError, match=f"{TINY_TRAIN} train images but 3 labels"):
        load("fashion_mnist", tmp_path, 0)
