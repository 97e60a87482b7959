"""MNIST from its IDX files (paper Appendix D): :func:`read_idx` and :func:`load_mnist`.

The files may be gzipped or not, in torchvision's ``root/MNIST/raw/`` layout or directly
in ``root``. Images come back uint8 (N, 1, 28, 28), labels int64.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from perturbsets.datasets.files import DatasetFormatError, check_labels, check_split, missing_file_error

__all__ = ["MNIST_SIZES", "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "read_idx", "load_mnist"]

MNIST_SIZES = {"train": 60000, "test": 10000}
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
# IDX type codes (third magic byte) -> big-endian numpy dtypes.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_maybe_gzip(path: Path) -> bytearray:
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name)."""
    if not path.is_file():
        raise missing_file_error(path, "file")
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    try:
        if gzipped:
            with gzip.open(path, "rb") as f:
                return bytearray(f.read())
        return bytearray(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetFormatError(
            f"{path}: could not decompress ({e}); the .gz file is truncated or corrupt, download it again"
        ) from None


def read_idx(path: str | Path, *, magic: int | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or raw.

    Header: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions d, then d big-endian uint32
    sizes; the data follows, big-endian, row-major. The four header bytes read as one
    big-endian int are the "magic number": 0x00000803 for uint8 images (N, rows, cols),
    0x00000801 for uint8 labels (N,).

    Args:
        path: the file (gzip is recognised by its content, not its name).
        magic: if given, the magic number the file must have.

    Returns:
        numpy array of shape (dims...) in native byte order (uint8 for MNIST).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DatasetFormatError: not an IDX file, wrong magic number, unknown type code,
            truncated header or data, trailing bytes, or a corrupt gzip stream.
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise DatasetFormatError(f"{path}: {len(data)} bytes is too short for an IDX header (4-byte magic number)")
    found = int.from_bytes(data[:4], "big")
    if magic is not None and found != magic:
        raise DatasetFormatError(
            f"{path}: magic number 0x{found:08x} but expected 0x{magic:08x}"
            f"{' (IDX images)' if magic == IDX_IMAGES_MAGIC else ' (IDX labels)' if magic == IDX_LABELS_MAGIC else ''}; "
            "is this the right file (images vs labels) and an uncorrupted IDX file?"
        )
    if data[0] or data[1]:
        raise DatasetFormatError(f"{path}: not an IDX file (magic number 0x{found:08x} does not start with two zero bytes)")
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        raise DatasetFormatError(f"{path}: unknown IDX type code 0x{code:02x}; expected one of {sorted(hex(c) for c in _IDX_TYPES)}")
    if ndim == 0:
        raise DatasetFormatError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header ({len(data)} bytes, {ndim} dimensions need {header})")
    dims = struct.unpack(f">{ndim}I", bytes(data[4:header]))
    dtype = np.dtype(_IDX_TYPES[code])
    count = int(np.prod(dims, dtype=np.int64))
    expected = count * dtype.itemsize
    body = len(data) - header
    if body < expected:
        raise DatasetFormatError(
            f"{path}: truncated: the header declares shape {dims} ({expected} bytes of data) but the file holds "
            f"{body}; download it again"
        )
    if body > expected:
        raise DatasetFormatError(
            f"{path}: {body - expected} unexpected trailing byte(s) after the {expected} bytes of data of shape {dims}"
        )
    # A bytearray buffer keeps the uint8 array writable without another copy.
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr if dtype.itemsize == 1 else arr.astype(dtype.newbyteorder("="))


def _find_mnist_file(root: Path, name: str) -> Path:
    tried = []
    for folder in (root / "MNIST" / "raw", root):
        for candidate in (folder / name, folder / f"{name}.gz"):
            tried.append(candidate)
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"MNIST file {name}[.gz] not found under {str(root)!r}; looked for " + ", ".join(str(p) for p in tried)
    )


def load_mnist(root: str | Path, split: str = "train", *, check_size: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images and labels from the IDX files.

    Looks for ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (or ``.gz``) in
    ``root/MNIST/raw/`` (where torchvision puts them) and then in ``root``.

    Args:
        root: the directory.
        split: ``"train"`` (60,000) or ``"test"`` (10,000).
        check_size: require the official number of examples (turn off for subsets).

    Returns:
        images (N, 1, 28, 28) uint8, labels (N,) int64 in 0..9.

    Raises:
        FileNotFoundError: a file is missing (the message lists where it looked).
        DatasetFormatError: malformed file (see :func:`read_idx`), images not 28×28,
            labels outside 0..9, or images and labels of different lengths.
    """
    split = check_split(split)
    root = Path(root)
    image_name, label_name = _MNIST_FILES[split]
    image_path, label_path = _find_mnist_file(root, image_name), _find_mnist_file(root, label_name)
    images = read_idx(image_path, magic=IDX_IMAGES_MAGIC)
    labels = read_idx(label_path, magic=IDX_LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise DatasetFormatError(f"{image_path}: MNIST images must be 28x28, got {images.shape[1]}x{images.shape[2]}")
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(
            f"{image_path} holds {images.shape[0]} images but {label_path} holds {labels.shape[0]} labels; "
            "both files must come from the same split"
        )
    if check_size and images.shape[0] != MNIST_SIZES[split]:
        raise DatasetFormatError(
            f"{image_path}: the MNIST {split} split has {MNIST_SIZES[split]} images, this file holds {images.shape[0]} "
            "(pass check_size=False for a subset)"
        )
    return images[:, None], check_labels(labels, label_path)
