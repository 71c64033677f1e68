"""IDX parsing and reading the Fashion-MNIST files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from data_helpers import needs_fashion_mnist

from sslcore.data.fashion_mnist import DEFAULT_SOURCE_DIR, load_fashion_mnist, select_stratified
from sslcore.data.idx import parse_idx, read_idx


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_parse_round_trip_uint8_and_big_endian_int32():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(_idx_bytes(images)), images)
    ints = np.array([1, -2, 70000], dtype=np.int32)
    decoded = parse_idx(_idx_bytes(ints, 0x0C))
    assert decoded.dtype == np.int32 and decoded.tolist() == [1, -2, 70000]


def test_parse_rejects_bad_magic_type_and_size():
    good = _idx_bytes(np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="magic number"):
        parse_idx(b"\x01" + good[1:])
    with pytest.raises(ValueError, match="element type"):
        parse_idx(good[:2] + b"\x07" + good[3:])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        parse_idx(good[:-1], name="x.idx")


def test_read_idx_gzip_and_shape_check(tmp_path):
    path = tmp_path / "labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(_idx_bytes(np.array([3, 1, 4], np.uint8)))
    assert read_idx(path, expect_shape=(3,)).tolist() == [3, 1, 4]
    with pytest.raises(ValueError, match=r"expected shape \(4,\)"):
        read_idx(path, expect_shape=(4,))
    (tmp_path / "broken.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="not a valid gzip"):
        read_idx(tmp_path / "broken.gz")


def test_missing_fashion_mnist_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, "train")


@needs_fashion_mnist
def test_real_test_split_shapes_and_balance():
    images, labels = load_fashion_mnist(DEFAULT_SOURCE_DIR, "test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    subset = select_stratified(labels, 25)
    assert len(subset) == 25 and np.all(np.diff(subset) > 0)
    counts = np.bincount(labels[subset], minlength=10)
    assert counts.tolist() == [3] * 5 + [2] * 5
    # the first images of each class in file order
    assert subset[labels[subset] == labels[0]][0] == 0
