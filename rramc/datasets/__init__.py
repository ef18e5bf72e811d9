"""Evaluation data sets as tensors: where they are looked for, how they are loaded, and downloads.

Look-up order for a data set ``<name>`` when no ``data_dir`` is given: ``$RRAMC_DATA_DIR/<name>``,
``~/.cache/rramc/<name>``, and for Fashion-MNIST Debian's ``/usr/share/datasets/fashion-mnist``.
With ``data_dir``: ``data_dir`` itself and ``data_dir/<name>``. CIFAR-10 is also looked for in the
``cifar-10-batches-py`` folder of each of these.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from rramc.datasets import cifar, idx
from rramc.datasets import download as _downloader
from rramc.datasets.digits import load_digits_split
from rramc.errors import DatasetError

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10")
SPLITS: tuple[str, ...] = ("train", "test")
DATA_DIR_ENV = "RRAMC_DATA_DIR"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_NUM_CLASSES = 10
_MAX_PIXEL = np.float32(255.0)


VALUE_RANGE = (0.0, 1.0)
"""The range of every data set's pixel values (intensities / 255): the declared input range of networks compiled on them."""


@dataclass(frozen=True, eq=False, repr=False)  # eq=False: comparing tensor fields with == is ambiguous
class Dataset:
    """One split of a data set: images float32 in [0, 1] and labels (N,) int64.

    ``load_dataset`` gives images of shape (N, C, H, W); :meth:`reshaped_for` gives them a
    network's per-sample shape, such as (N, 64) for a flat-input network. A user's data
    (:mod:`rramc.datasets.user_data`) may lie in another ``value_range``, and may have no labels:
    ``num_classes`` is then 0 and every label -1 (calibration data; see :func:`require_labels`).
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    value_range: tuple[float, float] = VALUE_RANGE
    """The range the images' values lie in; compiling on the data set declares it as the input range."""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.float32 or self.images.ndim < 2:
            raise DatasetError(
                f"{self.name} ({self.split}): images must be a float32 tensor (N, C, H, W) (or (N, ...) with "
                f"another per-sample shape), got {self.images.dtype} of shape {tuple(self.images.shape)}."
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise DatasetError(
                f"{self.name} ({self.split}): labels must be an int64 tensor (N,) with N = {self.images.shape[0]}, "
                f"got {self.labels.dtype} of shape {tuple(self.labels.shape)}."
            )

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __repr__(self) -> str:
        # Short on purpose: the dataclass default would print every tensor element.
        count = len(self)
        shape = "×".join(map(str, self.sample_shape))
        low, high = self.value_range
        classes = f"{self.num_classes} classes" if self.num_classes else "no labels"
        return (
            f"Dataset({self.name!r}, {self.split}, {count} sample{'' if count == 1 else 's'} of {shape}, "
            f"{classes}, values in [{low:g}, {high:g}])"
        )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one image: (C, H, W) as loaded, or what :meth:`reshaped_for` gave it."""
        return tuple(self.images.shape[1:])

    def reshaped_for(self, shape: Sequence[int]) -> Dataset:
        """The data set with every sample reshaped to ``shape`` (a network's per-sample input shape).

        Allowed when a sample holds as many values as ``shape`` does, e.g. the digits' (1, 8, 8) to
        (64,); otherwise a DatasetError names both shapes. The rules are :func:`fit_inputs`'s, so a
        data set reshaped once here passes through it unchanged batch after batch.
        """
        target = tuple(int(size) for size in shape)
        if not target or min(target) < 1:
            raise DatasetError(
                f"{self.name}: cannot reshape samples of shape {list(self.sample_shape)} to {list(target)}; "
                f"give a per-sample shape of one or more positive sizes, e.g. (64,) or (1, 8, 8)."
            )
        images = fit_inputs(self.images, target, self.name)
        return self if images is self.images else replace(self, images=images)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) batches in order; the last one may be smaller."""
        if batch_size < 1:
            raise DatasetError(f"{self.name}: batch size must be at least 1, got {batch_size}.")
        for start in range(0, len(self), batch_size):
            yield self.images[start : start + batch_size], self.labels[start : start + batch_size]

    def take(self, n: int) -> Dataset:
        """The first ``n`` samples (all of them when ``n`` exceeds the size)."""
        if n < 0:
            raise DatasetError(f"{self.name}: cannot take {n} samples; use a count of 0 or more.")
        return replace(self, images=self.images[:n], labels=self.labels[:n])

    def shuffled(self, seed: int) -> Dataset:
        """The samples in a permutation determined by ``seed`` alone."""
        # numpy's legacy RandomState is frozen across versions, unlike torch.randperm's algorithm.
        order = torch.from_numpy(np.random.RandomState(seed).permutation(len(self)))
        return replace(self, images=self.images[order], labels=self.labels[order])

    def center_crop(self, size: int) -> Dataset:
        """The central ``size`` x ``size`` window of every image (offsets rounded down)."""
        if self.images.ndim < 3:
            raise DatasetError(
                f"{self.name}: cannot crop samples of shape {list(self.sample_shape)}; cropping needs images "
                f"(C, H, W) or (H, W), so crop before reshaping the data set to a flat shape."
            )
        height, width = self.images.shape[-2:]
        if not 1 <= size <= min(height, width):
            raise DatasetError(
                f"{self.name}: cannot crop {height}x{width} images to {size}x{size}; "
                f"choose a size from 1 to {min(height, width)}."
            )
        top, left = (height - size) // 2, (width - size) // 2
        cropped = self.images[..., top : top + size, left : left + size].contiguous()
        return replace(self, images=cropped)


def default_download_dir(name: str) -> Path:
    """Where ``load_dataset(name, download=True)`` puts files when no ``data_dir`` is given."""
    return Path.home() / ".cache" / "rramc" / name


def search_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """The directories ``load_dataset`` looks in for data set ``name``, in order."""
    if data_dir is not None:
        bases = [Path(data_dir), Path(data_dir) / name]
    else:
        bases = [Path(os.environ[DATA_DIR_ENV]) / name] if os.environ.get(DATA_DIR_ENV) else []
        bases.append(default_download_dir(name))
        if name == "fashion-mnist":
            bases.append(DEBIAN_FASHION_MNIST_DIR)
    if name == "cifar10":
        return [path for base in bases for path in (base, base / cifar.BATCH_DIR)]
    return bases


def _locate(name: str, split: str, dirs: list[Path]) -> Path | None:
    has_split = cifar.has_split if name == "cifar10" else idx.has_split
    return next((directory for directory in dirs if has_split(directory, split)), None)


def _not_found(name: str, split: str, dirs: list[Path], data_dir: str | Path | None) -> DatasetError:
    if name == "cifar10":
        expected = ", ".join(cifar.SPLIT_FILES[split]) + f" (the {cifar.BATCH_DIR} folder of cifar-10-python.tar.gz)"
    else:
        expected = ", ".join(f"{stem}[.gz]" for stem in idx.SPLIT_FILES[split])
    target = Path(data_dir) if data_dir is not None else default_download_dir(name)
    remedies = [
        f"rerun with --download (load_dataset(..., download=True)) on a machine that is online, "
        f"which stores them in {target}",
        f"copy them into one of the directories above (or into $RRAMC_DATA_DIR/{name})",
    ]
    if name == "fashion-mnist":
        remedies.append(f"run `apt-get install dataset-fashion-mnist`, which puts them in {DEBIAN_FASHION_MNIST_DIR}")
    return DatasetError(
        f"{name}: the {split} split was not found. Searched: {', '.join(map(str, dirs))}. "
        f"Expected files: {expected}. To get them: {'; or '.join(remedies)}."
    )


def _to_dataset(name: str, split: str, images: np.ndarray, labels: np.ndarray) -> Dataset:
    """A Dataset from uint8 images (N, H, W) or (N, C, H, W) and integer labels."""
    if images.ndim == 3:
        images = images[:, None]
    pixels = torch.from_numpy(images.astype(np.float32) / _MAX_PIXEL)
    return Dataset(name, split, pixels, torch.from_numpy(labels.astype(np.int64)), _NUM_CLASSES)


def load_dataset(
    name: str, split: str = "test", data_dir: str | Path | None = None, download: bool = False
) -> Dataset:
    """Load ``split`` of data set ``name``, downloading it first when it is missing and ``download`` is set."""
    if name not in DATASETS:
        raise DatasetError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}.")
    if split not in SPLITS:
        raise DatasetError(f"{name}: unknown split {split!r}; choose one of: {', '.join(SPLITS)}.")
    if name == "digits":
        images, labels = load_digits_split(split)
        return Dataset(name, split, torch.from_numpy(images[:, None]), torch.from_numpy(labels), _NUM_CLASSES)

    dirs = search_dirs(name, data_dir)
    directory = _locate(name, split, dirs)
    if directory is None and download:
        _downloader.download(name, Path(data_dir) if data_dir is not None else default_download_dir(name))
        directory = _locate(name, split, dirs)
    if directory is None:
        raise _not_found(name, split, dirs, data_dir)
    if name == "cifar10":
        return _to_dataset(name, split, *cifar.load_cifar_split(directory, split))
    return _to_dataset(name, split, *idx.load_idx_split(directory, split, name))


def fit_inputs(images: torch.Tensor, shape: tuple[int, ...], dataset: str) -> torch.Tensor:
    """Give data-set samples the network's input shape (flattening if the sizes agree)."""
    if tuple(images.shape[1:]) == shape:
        return images
    if math.prod(images.shape[1:]) == math.prod(shape):
        return images.reshape(images.shape[0], *shape)
    raise DatasetError(
        f"data set '{dataset}' has samples of shape {list(images.shape[1:])} ({math.prod(images.shape[1:])} values), "
        f"but the network takes {list(shape)} ({math.prod(shape)} values); use a data set of the size it was trained on"
    )


def require_labels(dataset: Dataset, purpose: str) -> Dataset:
    """``dataset``, refused when it has no labels (``num_classes`` 0), which ``purpose`` needs."""
    if dataset.num_classes == 0:
        raise DatasetError(f"data set '{dataset.name}' has no labels, and {purpose} needs one per sample: an array 'labels' "
                           "(or 'y') next to the images, a tuple (images, labels), or one subfolder per class")
    return dataset


def check_classes(outputs: int, dataset: Dataset) -> None:
    """Refuse a data set without labels, or with more classes than the network has outputs."""
    require_labels(dataset, "evaluating")
    if outputs < dataset.num_classes:
        raise DatasetError(f"the network has {outputs} outputs but data set '{dataset.name}' has {dataset.num_classes} classes")
