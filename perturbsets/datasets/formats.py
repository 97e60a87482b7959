"""Readers for the public datasets of the paper, from files the user already has.

Nothing is downloaded: each reader takes the directory the files were extracted into and
checks every file it opens, so a missing, truncated or foreign file fails with an error
that names the file and says what was expected.

* MNIST (paper Appendix D): the IDX files, gzipped or not, in torchvision's
  ``root/MNIST/raw/`` layout or directly in ``root`` -> :func:`load_mnist`, :func:`read_idx`.
* CIFAR-10 (Appendix E): the python batches of ``cifar-10-python.tar.gz`` ->
  :func:`load_cifar10`. They are pickles, read by a restricted unpickler that only admits
  numpy array reconstruction, so a tampered file cannot run code.
* CIFAR-10-C (Appendix E): Hendrycks' release or the authors' per-severity copy ->
  :func:`load_cifar10c` (memory-mapped uint8, nothing decoded to float) and
  :func:`load_cifar10c_versioned` (clean + corrupted versions as a
  :class:`~perturbsets.versions.VersionedData`).

All readers return numpy arrays (``torch.from_numpy`` makes tensors without a copy):
images uint8, labels int64.
"""

from __future__ import annotations

import codecs
import gzip
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from perturbsets.datasets.cifar10c_generator import CORRUPTIONS, OOD_CORRUPTIONS, TRAIN_CORRUPTIONS
from perturbsets.pairs.augment import JointAugmentation
from perturbsets.pairs.lazy import LazyStack
from perturbsets.pairs.versioned import VersionedData

__all__ = [
    "TRAIN_CORRUPTIONS",
    "OOD_CORRUPTIONS",
    "ALL_CORRUPTIONS",
    "DatasetFormatError",
    "ForbiddenGlobalError",
    "read_idx",
    "load_mnist",
    "load_cifar10",
    "load_cifar10c",
    "load_cifar10c_versioned",
    "cifar10c_version_names",
]

# The corruption names live with their implementation; re-exported here for the readers.
ALL_CORRUPTIONS = CORRUPTIONS
SEVERITIES = (1, 2, 3, 4, 5)

MNIST_SIZES = {"train": 60000, "test": 10000}
CIFAR10_SIZES = {"train": 50000, "test": 10000}
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR_BATCH_ROWS = 10000
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
# IDX type codes (third magic byte) -> big-endian numpy dtypes.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetFormatError(ValueError):
    """A dataset file exists but does not hold what its format promises."""


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list; nothing from it was run."""


def _check_split(split: Any) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _missing(path: Path, what: str, tried: Sequence[Path] = ()) -> FileNotFoundError:
    where = "; looked for " + ", ".join(str(p) for p in tried) if len(tried) > 1 else ""
    return FileNotFoundError(f"{what} {str(path)!r} does not exist{where}")


def _check_labels(labels: np.ndarray, path: Path, classes: int = 10) -> np.ndarray:
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetFormatError(
            f"{path}: labels must be a 1-D integer array, got shape {labels.shape} and dtype {labels.dtype}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DatasetFormatError(
            f"{path}: labels must lie in 0..{classes - 1}, found values in [{labels.min()}, {labels.max()}]"
        )
    return np.array(labels, dtype=np.int64)


# --------------------------------------------------------------------------- MNIST / IDX


def _read_maybe_gzip(path: Path) -> bytearray:
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name)."""
    if not path.is_file():
        raise _missing(path, "file")
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
    split = _check_split(split)
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
    return images[:, None], _check_labels(labels, label_path)


# --------------------------------------------------------------------------- CIFAR-10 pickles


def _numpy_internal(*dotted: str) -> Any:
    """A numpy internal by its path under numpy 2 (``_core``) or numpy 1 (``core``)."""
    for path in dotted:
        obj: Any = np
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise pickle.UnpicklingError(f"this numpy has none of {dotted}")


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, "latin1").
    # Only that use is admitted; other codecs (and their imports) are refused.
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "iso-8859-1") or errors != "strict":
        raise ForbiddenGlobalError(f"_codecs.encode is only admitted as encode(str, 'latin1'), got encoding {encoding!r}")
    return codecs.encode(obj, "latin1")


# Everything a CIFAR-10 python batch (or a re-save of it with any pickle protocol)
# references: numpy array and dtype reconstruction. Values are thunks so numpy internals
# are only looked up when a file asks for them.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_internal("_core.multiarray._reconstruct", "core.multiarray._reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_internal("_core.multiarray._reconstruct", "core.multiarray._reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_internal("_core.numeric._frombuffer", "core.numeric._frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_internal("_core.numeric._frombuffer", "core.numeric._frombuffer"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`_ALLOWED_GLOBALS`.

    A pickle runs code only through the globals it names (functions called by REDUCE /
    NEWOBJ / BUILD); refusing every other name makes loading safe. Containers, numbers and
    strings need no globals.
    """

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise ForbiddenGlobalError(
                f"forbidden global {module}.{name}: a CIFAR-10 batch only contains numpy arrays, lists and strings, "
                "so this file was not made by the CIFAR-10 tools and is refused unrun"
            )
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenGlobalError(f"forbidden persistent id {pid!r} in a CIFAR-10 batch")


def _unpickle(path: Path) -> Any:
    if not path.is_file():
        raise _missing(path, "CIFAR-10 batch")
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the files were written by Python 2, whose str keys and
            # array buffers must come back as bytes (keys b"data", b"labels").
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except ForbiddenGlobalError as e:
        raise ForbiddenGlobalError(f"{path}: {e}") from None
    except Exception as e:  # any parser failure of a damaged file: report the file
        raise DatasetFormatError(
            f"{path} could not be read as a CIFAR-10 python batch ({type(e).__name__}: {e}); the file is truncated or "
            "corrupt, extract cifar-10-python.tar.gz again"
        ) from None


def _get(d: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DatasetFormatError(f"{path}: no {key!r} entry; a CIFAR-10 batch is a dict with b'data' and b'labels', found keys {sorted(map(repr, d))}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = _unpickle(path)
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a dict with b'data' and b'labels', got {type(obj).__name__}")
    data, labels = _get(obj, "data", path), _get(obj, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetFormatError(f"{path}: b'data' must be a uint8 array of shape (n, 3072) (3×32×32 per row), got a {desc}")
    if not isinstance(labels, (list, tuple, np.ndarray)) or any(isinstance(v, (bytes, str, float)) for v in labels[:1]):
        raise DatasetFormatError(f"{path}: b'labels' must be a list of integer class indices, got {type(labels).__name__}")
    try:
        labels_np = np.asarray(labels)
    except (ValueError, TypeError):
        raise DatasetFormatError(f"{path}: b'labels' must be a list of integer class indices") from None
    if labels_np.shape != (data.shape[0],):
        raise DatasetFormatError(
            f"{path}: {data.shape[0]} images in b'data' but {labels_np.size} labels in b'labels'; the file is damaged"
        )
    return data, _check_labels(labels_np, path)


def _cifar10_dir(root: Path, first: str) -> Path:
    candidates = (root / "cifar-10-batches-py", root)
    for folder in candidates:
        if (folder / first).is_file():
            return folder
    for folder in candidates:
        if folder.is_dir() and any((folder / n).is_file() for names in _CIFAR_FILES.values() for n in names):
            return folder
    raise FileNotFoundError(
        f"no CIFAR-10 python batches under {str(root)!r}: expected {root / 'cifar-10-batches-py' / first} "
        "(the layout of cifar-10-python.tar.gz) or the batch files directly in that directory"
    )


def load_cifar10(root: str | Path, split: str = "train", *, check_size: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 images and labels from the python batches.

    Reads ``data_batch_1`` … ``data_batch_5`` (train) or ``test_batch`` (test) from
    ``root/cifar-10-batches-py/`` or ``root``. Each is a pickled dict with ``b"data"``, a
    uint8 (10000, 3072) array whose rows are the R, G and B 32×32 planes, and
    ``b"labels"``, a list of 10000 ints. Loading uses a restricted unpickler: any global
    other than numpy's array reconstruction raises :class:`ForbiddenGlobalError` (a
    :class:`pickle.UnpicklingError`) before anything in the file is called.

    Args:
        root: the directory.
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000).
        check_size: require 10,000 rows per batch file.

    Returns:
        images (N, 3, 32, 32) uint8 (CHW, in the order of the files, which is
        torchvision's order), labels (N,) int64 in 0..9.

    Raises:
        FileNotFoundError: a batch file is missing (named).
        ForbiddenGlobalError: the pickle references a forbidden global.
        DatasetFormatError: truncated/corrupt pickle, wrong keys, dtype or shapes.
    """
    split = _check_split(split)
    root = Path(root)
    names = _CIFAR_FILES[split]
    folder = _cifar10_dir(root, names[0])
    images, labels = [], []
    for name in names:
        path = folder / name
        data, y = _read_cifar_batch(path)
        if check_size and data.shape[0] != _CIFAR_BATCH_ROWS:
            raise DatasetFormatError(
                f"{path}: a CIFAR-10 batch holds {_CIFAR_BATCH_ROWS} images, this one {data.shape[0]} "
                "(pass check_size=False for a subset)"
            )
        images.append(data)
        labels.append(y)
    # Row layout R(32×32) G(32×32) B(32×32) is exactly C-order (3, 32, 32).
    return np.concatenate(images).reshape(-1, 3, 32, 32), np.concatenate(labels)


# --------------------------------------------------------------------------- CIFAR-10-C


def _open_npy(path: Path, what: str) -> np.ndarray:
    """Memory-map a .npy file (never unpickling), with errors that name the file."""
    if not path.is_file():
        present = sorted(p.name for p in path.parent.glob("*.npy")) if path.parent.is_dir() else []
        shown = ", ".join(present[:8]) + (f", ... ({len(present)} files)" if len(present) > 8 else "")
        raise FileNotFoundError(
            f"{what} {str(path)!r} does not exist"
            + (f"; {path.parent} holds {shown}" if present else f"; {path.parent} holds no .npy files")
        )
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # numpy reports truncation and bad headers as several types
        raise DatasetFormatError(
            f"{path} is not a readable .npy file ({type(e).__name__}: {e}); it is probably truncated or corrupt, "
            "download or extract it again"
        ) from None
    if not isinstance(arr, np.ndarray):
        raise DatasetFormatError(f"{path} is an .npz archive, expected a single .npy array")
    return arr


def _check_corrupted(arr: np.ndarray, path: Path, rows: int | None = None) -> None:
    if arr.dtype != np.uint8:
        raise DatasetFormatError(f"{path}: dtype {arr.dtype}, expected uint8 (CIFAR-10-C stores 0..255 pixel values)")
    if arr.ndim != 4 or arr.shape[1:] != (32, 32, 3):
        raise DatasetFormatError(f"{path}: shape {arr.shape}, expected (N, 32, 32, 3) (HWC RGB images)")
    if rows is not None and arr.shape[0] != rows:
        raise DatasetFormatError(f"{path}: {arr.shape[0]} images, but labels.npy (and the other files) have {rows}")


def _check_names(corruptions: Any, severities: Any) -> tuple[list[str], list[int]]:
    if isinstance(corruptions, str):
        corruptions = [corruptions]
    corruptions = list(corruptions)
    if not corruptions:
        raise ValueError(f"corruptions is empty; e.g. use TRAIN_CORRUPTIONS {TRAIN_CORRUPTIONS}")
    for c in corruptions:
        if not isinstance(c, str) or not c or "/" in c or "\\" in c or c.startswith("."):
            raise ValueError(f"corruption names must be plain file stems such as 'fog', got {c!r}")
    if len(set(corruptions)) != len(corruptions):
        raise ValueError(f"corruptions lists a name twice: {corruptions}")
    if isinstance(severities, (int, np.integer)):
        severities = [severities]
    severities = list(severities)
    if not severities or any(isinstance(s, bool) or s not in SEVERITIES for s in severities):
        raise ValueError(f"severities must be a non-empty list of ints in 1..5, got {severities!r}")
    if len(set(severities)) != len(severities):
        raise ValueError(f"severities lists a value twice: {severities}")
    return corruptions, [int(s) for s in severities]


def cifar10c_version_names(corruptions: Sequence[str], severities: Sequence[int] = (5,)) -> list[str]:
    """``"<corruption>_<severity>"`` of each of the K stacked versions, in stacking order."""
    corruptions, severities = _check_names(corruptions, severities)
    return [f"{c}_{s}" for c in corruptions for s in severities]


def _per_severity_dir(root: Path, split: str) -> Path | None:
    name = f"cifar-10-c-{split}"
    if root.name == name and root.is_dir():
        return root
    return root / name if (root / name).is_dir() else None


def _hendrycks_dir(root: Path, first: str) -> Path | None:
    for folder in (root, root / "CIFAR-10-C"):
        if (folder / f"{first}.npy").is_file() or (folder / "labels.npy").is_file():
            return folder
    return None


def load_cifar10c(
    root: str | Path,
    corruptions: Sequence[str] = TRAIN_CORRUPTIONS,
    severities: Sequence[int] = (5,),
    split: str = "train",
    layout: str = "auto",
    *,
    check_size: bool = True,
) -> tuple[LazyStack, np.ndarray]:
    """CIFAR-10-C corrupted images, memory-mapped, stacked as versions of each image.

    Two layouts:

    * ``"hendrycks"`` (the Zenodo release, test split only): ``root/<corruption>.npy``
      (or ``root/CIFAR-10-C/...``), uint8 (5·N, 32, 32, 3), rows ``[(s−1)·N, s·N)`` =
      severity s, plus ``labels.npy`` (5·N,) (the N labels repeated 5 times).
    * ``"per_severity"`` (the authors' copy, train and test):
      ``root/cifar-10-c-{split}/<corruption>_<severity>.npy``, uint8 (N, 32, 32, 3), plus
      ``labels.npy`` (N,).

    ``"auto"`` uses the per-severity folder if it exists, else Hendrycks' files. The
    paper trains on :data:`TRAIN_CORRUPTIONS` (12) and tests out of distribution on
    :data:`OOD_CORRUPTIONS` (3), all at severity 5.

    Files are opened with ``np.load(mmap_mode="r", allow_pickle=False)``: nothing is read
    until indexed and nothing is converted to float (the authors' loader held the 50,000 ×
    12 training images as float32, ≈7.4 GB, defect 46).

    Args:
        root: the directory.
        corruptions: file stems, e.g. ``TRAIN_CORRUPTIONS``.
        severities: severities in 1..5.
        split: ``"train"`` or ``"test"``.
        layout: ``"auto"``, ``"hendrycks"`` or ``"per_severity"``.
        check_size: require N = 50,000 (train) or 10,000 (test).

    Returns:
        versions: :class:`~perturbsets.versions.LazyStack` of shape (N, K, 32, 32, 3)
            uint8, K = len(corruptions)·len(severities), corruption-major: version
            ``k = i·len(severities) + j`` is corruption i at severity j (see
            :func:`cifar10c_version_names`); each part is a memory map.
        labels: (N,) int64.

    Raises:
        FileNotFoundError: a corruption file or ``labels.npy`` is missing (named).
        DatasetFormatError: a truncated or unreadable .npy, wrong dtype or shape, images
            and labels of different lengths, inconsistent labels, wrong N.
        ValueError: bad arguments, or Hendrycks' (test-only) files for ``split="train"``.
    """
    split = _check_split(split)
    corruptions, severities = _check_names(corruptions, severities)
    if layout not in ("auto", "hendrycks", "per_severity"):
        raise ValueError(f"layout must be 'auto', 'hendrycks' or 'per_severity', got {layout!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10-C directory {str(root)!r} does not exist")
    folder = _per_severity_dir(root, split) if layout != "hendrycks" else None
    if folder is None and layout == "per_severity":
        raise FileNotFoundError(
            f"{str(root / f'cifar-10-c-{split}')!r} does not exist; the per-severity layout is "
            f"<root>/cifar-10-c-{split}/<corruption>_<severity>.npy"
        )
    if folder is not None:
        labels_path = folder / "labels.npy"
        labels = _check_labels(np.asarray(_open_npy(labels_path, "CIFAR-10-C labels file")), labels_path)
        parts = []
        for c in corruptions:
            for s in severities:
                path = folder / f"{c}_{s}.npy"
                arr = _open_npy(path, f"CIFAR-10-C file for corruption {c!r} severity {s}")
                _check_corrupted(arr, path, labels.shape[0])
                parts.append(arr)
    else:
        folder = _hendrycks_dir(root, corruptions[0]) if layout == "auto" else root
        if folder is None:
            raise FileNotFoundError(
                f"no CIFAR-10-C files under {str(root)!r}: expected either {root / f'cifar-10-c-{split}'}/"
                f"<corruption>_<severity>.npy (per-severity layout) or {root}/<corruption>.npy + labels.npy "
                "(Hendrycks' release)"
            )
        if split == "train":
            raise ValueError(
                f"{folder} holds Hendrycks' CIFAR-10-C release, which covers the CIFAR-10 test split only; for "
                "split='train' use the per-severity layout <root>/cifar-10-c-train/<corruption>_<severity>.npy"
            )
        labels_path = folder / "labels.npy"
        all_labels = np.asarray(_open_npy(labels_path, "CIFAR-10-C labels file"))
        if all_labels.ndim != 1 or all_labels.shape[0] % len(SEVERITIES):
            raise DatasetFormatError(
                f"{labels_path}: shape {all_labels.shape}, expected (5·N,): the N test labels once per severity"
            )
        n = all_labels.shape[0] // len(SEVERITIES)
        blocks = all_labels.reshape(len(SEVERITIES), n)
        for s in severities[1:]:
            if not np.array_equal(blocks[s - 1], blocks[severities[0] - 1]):
                raise DatasetFormatError(f"{labels_path}: the labels of severity {s} differ from severity {severities[0]}")
        labels = _check_labels(blocks[severities[0] - 1], labels_path)
        parts = []
        for c in corruptions:
            path = folder / f"{c}.npy"
            arr = _open_npy(path, f"CIFAR-10-C file for corruption {c!r}")
            _check_corrupted(arr, path, 5 * n)
            # Slicing a memory map is a view: still nothing read.
            parts.extend(arr[(s - 1) * n : s * n] for s in severities)
    if check_size and labels.shape[0] != CIFAR10_SIZES[split]:
        raise DatasetFormatError(
            f"{labels_path}: CIFAR-10-C {split} has {CIFAR10_SIZES[split]} images per corruption, these files "
            f"{labels.shape[0]} (pass check_size=False for a subset)"
        )
    return LazyStack(parts), labels


def load_cifar10c_versioned(
    cifar10_root: str | Path,
    cifar10c_root: str | Path,
    corruptions: Sequence[str] = TRAIN_CORRUPTIONS,
    severities: Sequence[int] = (5,),
    split: str = "train",
    *,
    pairing: str = "centered",
    augment: JointAugmentation | None = None,
    layout: str = "auto",
    check_size: bool = True,
) -> VersionedData:
    """CIFAR-10 images with their CIFAR-10-C corruptions as a :class:`VersionedData`.

    Version 0 is the clean CIFAR-10 image (in memory, uint8, 150 MB for train) and versions
    1..K the corruptions in :func:`load_cifar10c` order (memory-mapped). With the default
    ``pairing="centered"`` the pairs are (clean, corruption): 12 per image, 600,000 for the
    training set, as in paper Appendix E. The paper trains with
    ``augment=JointCropFlip(pad=4, crop=(32, 32))``.

    Raises:
        DatasetFormatError: the two datasets have different lengths, or different labels
            (the CIFAR-10-C files are then not in CIFAR-10's image order).
    """
    images, labels = load_cifar10(cifar10_root, split, check_size=check_size)
    stack, c_labels = load_cifar10c(cifar10c_root, corruptions, severities, split, layout, check_size=check_size)
    if c_labels.shape[0] != labels.shape[0]:
        raise DatasetFormatError(
            f"CIFAR-10 {split} has {labels.shape[0]} images but the CIFAR-10-C files hold {c_labels.shape[0]}"
        )
    differ = int(np.count_nonzero(c_labels != labels))
    if differ:
        raise DatasetFormatError(
            f"CIFAR-10-C labels.npy disagrees with the CIFAR-10 {split} labels at {differ} of {labels.shape[0]} "
            "positions: the corrupted images are not in CIFAR-10's order (or belong to the other split)"
        )
    versions = LazyStack([images.transpose(0, 2, 3, 1), *stack.parts])  # all (N, 32, 32, 3)
    return VersionedData(versions, labels, pairing=pairing, channels_last=True, augment=augment)
