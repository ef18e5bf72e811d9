"""The "CIFAR-10 python version" batches: a restricted unpickler, a batch writer and the split loader.

Each batch is a pickled dict with ``b"data"`` (N x 3072 uint8: the R, G and B 32x32 planes of each
image, row-major) and ``b"labels"`` (N ints). Pickles can run arbitrary code when loaded, so they are
read with an unpickler that only builds numpy arrays.
"""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rramc.errors import DatasetError

try:
    from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:  # numpy < 2 has no numpy._core
    from numpy.core import multiarray as _multiarray, numeric as _numeric  # type: ignore[no-redef]

BATCH_DIR = "cifar-10-batches-py"
SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_IMAGE_SHAPE = (3, 32, 32)
_NUM_CLASSES = 10
_FIX = "replace it with an intact copy (delete the directory and rerun with --download)"

# What the real batches (Python 2 cPickle of numpy arrays) and pickles of numpy arrays written by
# Python 3 reference. Resolved here, not imported by name, so nothing else is ever imported.
_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles from Python 3 spell bytes
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside ``_ALLOWED_GLOBALS``."""

    def __init__(self, stream, path: Path) -> None:
        super().__init__(stream, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DatasetError(
                f"cifar10: {self._path} asks to load {module}.{name}, which a CIFAR-10 batch never "
                f"needs (only numpy arrays are allowed); refusing to unpickle it. If the file should be "
                f"a CIFAR-10 batch, {_FIX}."
            ) from None


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one CIFAR-10 batch file."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            batch = _BatchUnpickler(stream, path).load()
    except DatasetError:
        raise
    except OSError as exc:
        raise DatasetError(f"cifar10: cannot read {path} ({exc}).") from exc
    except Exception as exc:  # a corrupt pickle can fail in many ways (EOF, bad opcode, bad array state)
        raise DatasetError(f"cifar10: {path} is not a readable CIFAR-10 batch ({exc}); {_FIX}.") from exc

    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"cifar10: {path} is not a dict with b'data' and b'labels'; {_FIX}.")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", type(data).__name__)
        raise DatasetError(f"cifar10: {path} has b'data' {shape}, expected an N x 3072 uint8 array; {_FIX}.")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"cifar10: {path} has b'labels' that are not integers; {_FIX}.") from exc
    if labels.shape != (data.shape[0],):
        raise DatasetError(
            f"cifar10: {path} holds {data.shape[0]} images but labels of shape {labels.shape}; {_FIX}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise DatasetError(f"cifar10: {path} holds labels outside 0..{_NUM_CLASSES - 1}; {_FIX}.")
    return data.reshape(-1, *_IMAGE_SHAPE), labels


def write_cifar_batch(path: str | Path, images: np.ndarray, labels: Sequence[int] | np.ndarray) -> None:
    """Write images (N, 3, 32, 32) uint8 and their labels as a CIFAR-10 python batch file."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != _IMAGE_SHAPE:
        raise ValueError(
            f"write_cifar_batch needs uint8 images of shape (N, 3, 32, 32), got {images.dtype} {images.shape}"
        )
    batch = {
        b"data": np.ascontiguousarray(images).reshape(len(images), -1),
        b"labels": [int(label) for label in labels],
    }
    with Path(path).open("wb") as stream:
        pickle.dump(batch, stream, protocol=4)


def has_split(directory: Path, split: str) -> bool:
    """Whether ``directory`` holds every batch file of ``split``."""
    return all((directory / name).is_file() for name in SPLIT_FILES[split])


def load_cifar_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of ``split`` from the batches in ``directory``."""
    parts = [read_cifar_batch(directory / name) for name in SPLIT_FILES[split]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
