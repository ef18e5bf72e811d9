"""The IDX file format of MNIST and Fashion-MNIST: a strict reader, a writer, and the split loader.

An IDX file is a 4-byte big-endian magic number ``0x0000TTDD`` (TT: element type, DD: number of
dimensions), one big-endian uint32 per dimension, then the elements in row-major order.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from rramc.errors import DatasetError

IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions (count, rows, columns)
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension (count)
_UINT8_TYPE = 0x08
_NUM_CLASSES = 10

SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FIX = "replace it with an intact copy (delete it and rerun with --download)"


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """The file ``stem`` or ``stem.gz`` in ``directory`` (plain preferred), or None."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def has_split(directory: Path, split: str) -> bool:
    """Whether ``directory`` holds both IDX files of ``split``."""
    return all(find_idx_file(directory, stem) is not None for stem in SPLIT_FILES[split])


def _read_bytes(path: Path, dataset: str) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"{dataset}: {path} is not a valid gzip file ({exc}); {_FIX}."
        ) from exc
    except OSError as exc:
        raise DatasetError(f"{dataset}: cannot read {path} ({exc}).") from exc


def read_idx(path: str | Path, expected_magic: int, dataset: str = "IDX") -> np.ndarray:
    """Read a uint8 IDX file (plain or ``.gz``), insisting on ``expected_magic`` and an exact size."""
    path = Path(path)
    raw = _read_bytes(path, dataset)
    expected_ndim = expected_magic & 0xFF
    header_size = 4 + 4 * expected_ndim
    if len(raw) < 4:
        raise DatasetError(f"{dataset}: {path} is truncated: {len(raw)} bytes, no IDX header; {_FIX}.")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DatasetError(
            f"{dataset}: {path} has IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(uint8, {expected_ndim}-D); is it the right file? Otherwise {_FIX}."
        )
    if len(raw) < header_size:
        raise DatasetError(
            f"{dataset}: {path} is truncated: {len(raw)} bytes, shorter than its "
            f"{header_size}-byte header; {_FIX}."
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(expected_ndim))
    data_size = int(np.prod(dims, dtype=np.int64))
    actual_size = len(raw) - header_size
    if actual_size != data_size:
        problem = "truncated" if actual_size < data_size else "longer than its header says"
        raise DatasetError(
            f"{dataset}: {path} is {problem}: header says shape {dims} = {data_size} bytes of data, "
            f"the file holds {actual_size}; {_FIX}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file, gzip-compressed when ``path`` ends with ``.gz``."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx needs a uint8 array of 1 to 255 dimensions, got {array.dtype} {array.shape}")
    header = ((_UINT8_TYPE << 8) | array.ndim).to_bytes(4, "big")
    header += b"".join(int(dim).to_bytes(4, "big") for dim in array.shape)
    payload = header + np.ascontiguousarray(array).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as stream:
            stream.write(payload)
    else:
        path.write_bytes(payload)


def load_idx_split(directory: Path, split: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) and labels (N,), both uint8, of ``split`` from the IDX files in ``directory``."""
    image_stem, label_stem = SPLIT_FILES[split]
    image_path = find_idx_file(directory, image_stem)
    label_path = find_idx_file(directory, label_stem)
    if image_path is None or label_path is None:
        raise DatasetError(
            f"{dataset}: {directory} lacks {image_stem}[.gz] or {label_stem}[.gz] for the {split} split."
        )
    images = read_idx(image_path, IMAGES_MAGIC, dataset)
    labels = read_idx(label_path, LABELS_MAGIC, dataset)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{dataset}: {image_path} holds {images.shape[0]} images but {label_path} holds "
            f"{labels.shape[0]} labels; the two files must come from the same release ({_FIX})."
        )
    if labels.size and labels.max() >= _NUM_CLASSES:
        raise DatasetError(
            f"{dataset}: {label_path} holds label {int(labels.max())}, expected 0..{_NUM_CLASSES - 1}; {_FIX}."
        )
    return images, labels
