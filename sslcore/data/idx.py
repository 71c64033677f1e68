"""Reader for the IDX file format of MNIST and Fashion-MNIST (plain or gzip-compressed).

Format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a 4-byte magic number ``0x00 0x00 T D``
where ``T`` is the element type code and ``D`` the number of dimensions, then ``D`` big-endian
uint32 sizes, then the elements in C order, big-endian.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

# element type code -> big-endian numpy dtype
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist; check the path or download it")
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(
            f"{path} is not a valid gzip file ({exc}); the file is truncated or corrupt, "
            "replace it with a fresh copy"
        ) from exc


def parse_idx(raw: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of one IDX file.

    Args:
        raw: the whole (decompressed) file.
        name: what to call the data in error messages (usually the file path).

    Returns:
        An array in native byte order with the file's shape, e.g. (N, 28, 28) uint8 for images
        or (N,) uint8 for labels.

    Raises:
        ValueError: if the magic number, the element type or the size does not match the format.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{name}: not an IDX file (magic number {raw[:4].hex() or 'missing'} does not start "
            "with 0000); pass an MNIST/Fashion-MNIST IDX file"
        )
    type_code, ndim = raw[2], raw[3]
    if type_code not in IDX_DTYPES:
        raise ValueError(f"{name}: unknown IDX element type 0x{type_code:02x}; the file is corrupt")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{name}: IDX header truncated ({len(raw)} bytes); the file is corrupt")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{name}: IDX header says shape {shape} ({expected} data bytes) but the file holds "
            f"{len(raw) - header}; the file is truncated or corrupt, replace it"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: Union[str, Path], *, expect_shape: Optional[Tuple[Optional[int], ...]] = None
             ) -> np.ndarray:
    """Read an IDX file (``.gz`` is decompressed) and optionally check its shape.

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz``.
        expect_shape: the expected shape; ``None`` entries match any size.

    Returns:
        The array in native byte order (see :func:`parse_idx`).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not valid IDX, or its shape differs from ``expect_shape``.

    Example:
        >>> images = read_idx("t10k-images-idx3-ubyte.gz", expect_shape=(10000, 28, 28))
    """
    path = Path(path)
    data = parse_idx(_read_bytes(path), name=str(path))
    if expect_shape is not None:
        fits = len(expect_shape) == data.ndim and all(
            e is None or e == s for e, s in zip(expect_shape, data.shape)
        )
        if not fits:
            raise ValueError(
                f"{path}: expected shape {expect_shape}, found {data.shape}; the file belongs to "
                "another data set or is damaged, replace it"
            )
    return data
