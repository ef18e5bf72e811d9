"""A user's own data, as rramc's :class:`~rramc.datasets.Dataset`: files, image folders and Python objects.

Where a builtin data set's name is taken (``--calibration``, ``--dataset``, ``calibration_data=``,
``training_data=``), so is the path of

* a ``.npz`` file (``numpy.savez``) with arrays ``images`` and ``labels`` (or ``x`` and ``y``),
  read without pickle;
* a ``.pt``/``.pth`` file (``torch.save``) of a dict ``{"images": ..., "labels": ...}`` (or ``x``/``y``),
  a tuple ``(images, labels)`` or a tensor of images, read with ``weights_only=True``: a file that
  needs pickle (Python objects) is refused unless the user trusts it (``--trust-data``,
  ``trust_data=True``), since unpickling runs code stored in the file;
* a folder of images with one subfolder per class, like torchvision's ``ImageFolder`` (sorted
  folder names are the labels 0, 1, ...), or of images alone (unlabelled: calibration only).

Labels are optional for calibration: a data set without them has ``num_classes`` 0 (and labels
-1), and evaluating or training on it is refused. Images of ``uint8`` and image files are pixel
intensities, scaled to [0, 1] as the builtin sets are; other numbers are taken as they are. The
data's value range becomes the network's declared input range (:func:`infer_value_range`).
Arrays ``(N, H, W)`` get a channel dimension and ``(N, H, W, C)`` with ``C`` of 1, 3 or 4 are
taken to be channels-last and transposed, as the builtin sets are ``(N, C, H, W)``.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from rramc.datasets import DATASETS, VALUE_RANGE, Dataset, load_dataset
from rramc.errors import DatasetError

DataSource = Union[torch.Tensor, Dataset, TorchDataset, DataLoader, str, Path]
"""What ``calibration_data`` and ``training_data`` take (see :func:`to_dataset`)."""

FILE_SUFFIXES = (".npz", ".pt", ".pth")
IMAGE_KEYS = ("images", "x")
LABEL_KEYS = ("labels", "y")
WHOLE = "all"
"""The split of a user's data set: a file or folder is used whole."""
HELD_OUT_SHARE = 0.2
"""The share of a user's data set :func:`held_out` keeps for evaluation when it has no split of its own."""

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_FORMATS = ".npz (numpy.savez with images=..., labels=...), .pt/.pth (torch.save of {'images': ..., 'labels': ...})"
_BUILTIN_OR_FILE = f"a builtin data set ({', '.join(DATASETS)}), a data file ({_FORMATS}) or a folder of images by class"


def is_builtin(spec: str | Path) -> bool:
    """Whether ``spec`` names a builtin data set (a name wins over a file of that name; write ``./digits`` for the file)."""
    return isinstance(spec, str) and spec in DATASETS


def load_data(spec: str | Path, split: str = "test", data_dir: str | Path | None = None, *, download: bool = False,
              trust: bool = False, shape: Sequence[int] | None = None, limit: int | None = None, seed: int = 0) -> Dataset:
    """The data set ``spec`` names on the command line: a builtin set's ``split``, else a data file or folder, used whole.

    ``shape`` is the network's per-sample input shape when known (an image folder is read with its
    channel count); ``limit`` keeps ``limit`` samples drawn by ``seed``, the ones
    ``load_data(...).shuffled(seed).take(limit)`` gives (a folder reads only those images).
    """
    if is_builtin(spec):
        return _drawn(load_dataset(str(spec), split, data_dir, download=download), limit, seed)
    return load_data_file(spec, trust=trust, shape=shape, limit=limit, seed=seed)


def load_data_file(path: str | Path, *, trust: bool = False, shape: Sequence[int] | None = None, limit: int | None = None,
                   seed: int = 0) -> Dataset:
    """A data file (``.npz``, ``.pt``/``.pth``) or image folder as a :class:`Dataset` (see the module docstring)."""
    named = isinstance(path, str) and not re.search(r"[/\\]", path) and not Path(path).suffix  # a name, not a path
    path = Path(path)
    if not path.exists():
        if named:
            raise DatasetError(f"unknown data set '{path}': not one of {', '.join(DATASETS)} (the builtin data sets), "
                               "nor an existing data file or image folder")
        raise DatasetError(f"data file or folder {path} does not exist; give {_BUILTIN_OR_FILE}")
    if path.is_dir():
        return _load_folder(path, shape, limit, seed)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        images, labels = _read_npz(path)
    elif suffix in (".pt", ".pth"):
        loaded = _read_pt(path, trust)
        if isinstance(loaded, Dataset):
            return _drawn(loaded, limit, seed)
        images, labels = loaded
    else:
        raise DatasetError(f"{path}: unknown data file type '{path.suffix}'; rramc reads {_FORMATS} and folders of images "
                           "by class (one subfolder per class)")
    return _drawn(from_arrays(path.name, images, labels), limit, seed)


def to_dataset(data: DataSource, *, what: str, limit: int | None = None, seed: int = 0, trust: bool = False,
               shape: Sequence[int] | None = None) -> Dataset:
    """``data`` as a :class:`Dataset`: the one conversion of everything ``calibration_data`` and ``training_data`` take.

    An rramc :class:`Dataset` is returned as it is; a tensor holds images without labels;
    a ``torch.utils.data.Dataset`` yields samples ``(x, y)`` or ``x``, a ``DataLoader`` batches of them;
    a path is read by :func:`load_data_file` (``trust``, ``shape`` as there). ``limit`` draws at most
    that many samples: from a map-style torch data set by ``seed`` (the samples
    ``Dataset.shuffled(seed).take(limit)`` would give, without reading the others), from an
    iterable one or a loader the first ones; ``what`` names ``data`` in messages.
    """
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)):
        return load_data_file(data, trust=trust, shape=shape, limit=limit, seed=seed)
    if isinstance(data, torch.Tensor):
        return _drawn(from_arrays(what, data, None), limit, seed)
    if isinstance(data, DataLoader):
        return _from_batches(what, data, limit)
    if isinstance(data, TorchDataset):
        return _from_samples(what, data, limit, seed)
    raise DatasetError(f"{what}: expected a tensor, an rramc Dataset, a torch.utils.data Dataset or DataLoader, or the path "
                       f"of a data file or image folder; got a {type(data).__name__}")


def infer_value_range(images: torch.Tensor) -> tuple[float, float]:
    """The input range to declare for data with these values: [0, 1] or else [-1, 1] when they lie within it
    (the usual conventions, so that other samples of the same kind fit too), else their own [min, max]."""
    low, high = float(images.min()), float(images.max())
    for convention in (VALUE_RANGE, (-1.0, 1.0)):
        if convention[0] <= low and high <= convention[1]:
            return convention
    if low == high:
        return (min(low, 0.0), max(high, 0.0))
    return (low, high)


def held_out(dataset: Dataset, seed: int, share: float = HELD_OUT_SHARE) -> tuple[Dataset, Dataset]:
    """A data set without splits of its own cut into training and evaluation samples (``share`` of them),
    drawn by ``seed``."""
    if len(dataset) < 2:
        raise DatasetError(f"{dataset.name}: {len(dataset)} sample(s) cannot be split into training and evaluation samples")
    shuffled = dataset.shuffled(seed)
    kept = max(1, round(share * len(dataset)))
    train = replace(shuffled.take(len(dataset) - kept), split="train part")
    return train, replace(shuffled, split="held out", images=shuffled.images[-kept:], labels=shuffled.labels[-kept:])


def from_arrays(name: str, images: Any, labels: Any | None) -> Dataset:
    """A :class:`Dataset` from an image array or tensor and optional labels, each checked (``name`` says whose)."""
    pixels, value_range = _images(images, name)
    if labels is None:
        return Dataset(name, WHOLE, pixels, torch.full((len(pixels),), -1, dtype=torch.int64), 0, value_range)
    classes = _labels(labels, len(pixels), name)
    return Dataset(name, WHOLE, pixels, classes, int(classes.max()) + 1, value_range)


# --- arrays ----------------------------------------------------------------------------------------


def _drawn(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """``limit`` samples of ``dataset`` drawn by ``seed`` (all of them, in order, without a limit)."""
    return dataset if limit is None else dataset.shuffled(seed).take(limit)


def _tensor(values: Any, name: str, what: str) -> torch.Tensor:
    """``values`` as a tensor of real numbers (a tensor, a numpy array, or nested sequences of numbers)."""
    if isinstance(values, torch.Tensor):
        if values.is_complex():
            raise DatasetError(f"{name}: {what} are complex numbers ({_dtype(values)}); give real numbers")
        return values.detach().cpu()
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:  # ragged nested lists, objects numpy cannot read as numbers
        raise DatasetError(f"{name}: {what} are not an array of numbers ({exc})") from None
    if array.dtype.kind not in "biuf":
        kinds = {"c": "complex numbers", "U": "text", "S": "bytes", "O": "Python objects", "M": "dates", "m": "time spans"}
        raise DatasetError(f"{name}: {what} are {kinds.get(array.dtype.kind, 'not numbers')} ({array.dtype}); give real numbers")
    return torch.from_numpy(np.ascontiguousarray(array))


def _dtype(values: torch.Tensor) -> str:
    return str(values.dtype).removeprefix("torch.")


def _images(values: Any, name: str) -> tuple[torch.Tensor, tuple[float, float]]:
    images = _tensor(values, name, "the images")
    if images.dim() < 2:
        raise DatasetError(f"{name}: the images have shape {list(images.shape)}; expected (N, ...): N samples of one shape, "
                           "e.g. (N, C, H, W), (N, H, W) or (N, features)")
    if len(images) == 0:
        raise DatasetError(f"{name}: holds no samples (the images have shape {list(images.shape)})")
    pixels = images.dtype == torch.uint8
    images = images.float() / 255.0 if pixels else images.float()
    if images.dim() == 3:  # (N, H, W): one channel, as the builtin sets
        images = images[:, None]
    elif images.dim() == 4 and images.shape[-1] in _MODES and images.shape[1] not in _MODES:
        images = images.permute(0, 3, 1, 2).contiguous()  # channels-last (N, H, W, C) → (N, C, H, W)
    finite = torch.isfinite(images)
    if not bool(finite.all()):
        bad = (~finite).flatten(1).any(1)
        raise DatasetError(f"{name}: {int((~finite).sum())} image value(s) are NaN or infinite, in {int(bad.sum())} sample(s) "
                           f"(the first is sample {int(bad.nonzero()[0])}); every value must be a finite number")
    return images, (VALUE_RANGE if pixels else infer_value_range(images))


def _labels(values: Any, count: int, name: str) -> torch.Tensor:
    labels = _tensor(values, name, "the labels")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise DatasetError(f"{name}: the labels are {_dtype(labels)}; they must be integers, the class indices 0, 1, ... "
                           "(e.g. labels.astype(int) or labels.long())")
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 1:
        hint = " (one-hot? give labels.argmax(1))" if labels.dim() == 2 else ""
        raise DatasetError(f"{name}: the labels have shape {list(labels.shape)}; expected one class index per sample, "
                           f"shape ({count},){hint}")
    if len(labels) != count:
        raise DatasetError(f"{name}: {count} images but {len(labels)} labels; give one label per image")
    labels = labels.long()
    if bool((labels < 0).any()):
        first = int((labels < 0).nonzero()[0])
        raise DatasetError(f"{name}: label {int(labels[first])} of sample {first} is negative; labels are class indices 0, 1, ...")
    return labels


# --- files -----------------------------------------------------------------------------------------


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError:  # numpy tried it as a pickle
        raise DatasetError(f"{path} holds pickled Python data, not a .npz archive of arrays; rramc reads .npz files "
                           "without pickle: save numbers with numpy.savez(path, images=..., labels=...)") from None
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path} is not a readable .npz file ({exc})") from None
    if not hasattr(archive, "files"):  # a single .npy array under another name
        raise DatasetError(f"{path} holds one array, not a .npz archive; save it with numpy.savez(path, images=..., labels=...)")
    with archive:
        image_key = next((key for key in IMAGE_KEYS if key in archive.files), None)
        label_key = next((key for key in LABEL_KEYS if key in archive.files), None)
        if image_key is None:
            held = ", ".join(repr(key) for key in archive.files) or "no arrays"
            raise DatasetError(f"{path} has no array named 'images' (or 'x'); it holds {held}. Save the images as images=... "
                               "and the labels as labels=... (or x=..., y=...)")
        try:
            return archive[image_key], None if label_key is None else archive[label_key]
        except ValueError:
            raise DatasetError(f"{path}: the arrays hold Python objects (object arrays), which rramc does not unpickle; "
                               "save numeric arrays") from None
        except (OSError, EOFError, KeyError) as exc:
            raise DatasetError(f"{path} is a damaged .npz file ({exc})") from None


def _read_pt(path: Path, trust: bool) -> tuple[Any, Any | None] | Dataset:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise DatasetError(f"{path} is not a PyTorch data file (torch.save of a dict or tuple of tensors)") from None
        if not trust:
            classes = ", ".join(dict.fromkeys(re.findall(r"GLOBAL (\S+)", str(exc)))) or "Python classes"
            numpy = " (numpy arrays: convert them with torch.from_numpy, or save a .npz file)" if "numpy" in classes else ""
            raise DatasetError(
                f"{path} holds pickled Python objects ({classes}), not only tensors: loading it runs code stored in the "
                "file, so rramc refuses it. If you trust the file, pass --trust-data (Python: trust_data=True); or save "
                f"the data as tensors: torch.save({{'images': images, 'labels': labels}}, path){numpy}") from None
        try:
            content = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise DatasetError(f"{path}: loading the pickled data failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise DatasetError(f"{path} is not a PyTorch data file ({type(exc).__name__}: {first_line})") from None
    if trust and isinstance(content, (Dataset, TorchDataset, DataLoader)):
        return to_dataset(content, what=path.name)
    if isinstance(content, dict):
        image_key = next((key for key in IMAGE_KEYS if key in content), None)
        if image_key is None:
            held = ", ".join(repr(key) for key in content) or "nothing"
            raise DatasetError(f"{path} holds a dict without 'images' (or 'x'): its keys are {held}. Save "
                               "{'images': images, 'labels': labels} (or 'x', 'y')")
        return content[image_key], next((content[key] for key in LABEL_KEYS if key in content), None)
    if isinstance(content, (tuple, list)) and len(content) in (1, 2):
        return content[0], content[1] if len(content) == 2 else None
    if isinstance(content, torch.Tensor):
        return content, None
    raise DatasetError(f"{path} holds a {type(content).__name__}; expected a dict {{'images': ..., 'labels': ...}}, "
                       "a tuple (images, labels) or a tensor of images")


# --- image folders ---------------------------------------------------------------------------------


def _image_suffixes() -> set[str]:
    from PIL import Image

    return {suffix.lower() for suffix in Image.registered_extensions()}


def _load_folder(folder: Path, shape: Sequence[int] | None, limit: int | None, seed: int) -> Dataset:
    suffixes = _image_suffixes()
    entries = sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))
    classes = [entry for entry in entries if entry.is_dir()]
    loose = [entry for entry in entries if entry.is_file() and entry.suffix.lower() in suffixes]
    if classes and loose:
        raise DatasetError(f"{folder} holds both class folders ({classes[0].name}, ...) and images ({loose[0].name}, ...); "
                           "put every image in the folder of its class")
    if not classes and not loose:
        raise DatasetError(f"{folder} holds no images: expected one subfolder per class with its images "
                           f"(PNG, JPEG, ...), or images alone for calibration")
    files: list[tuple[Path, int]] = [(image, -1) for image in loose]
    for label, class_folder in enumerate(classes):
        images = sorted(entry for entry in class_folder.iterdir()
                        if entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in suffixes)
        if not images:
            raise DatasetError(f"{folder}: class folder '{class_folder.name}' holds no images; every class folder needs its "
                               "images directly inside it (PNG, JPEG, ...)")
        files += [(image, label) for image in images]
    if limit is not None and limit < 1:
        raise DatasetError(f"{folder}: cannot draw {limit} samples; draw at least one")
    if limit is not None and limit < len(files):  # the samples Dataset.shuffled(seed).take(limit) keeps
        files = [files[i] for i in np.random.RandomState(seed).permutation(len(files))[:limit]]
    pixels = _read_images([file for file, _ in files], _mode(shape, [file for file, _ in files]))
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return Dataset(folder.name, WHOLE, pixels, labels, len(classes), VALUE_RANGE)


def _mode(shape: Sequence[int] | None, files: Iterable[Path]) -> str:
    """The Pillow mode to read images in: the network's channel count, else grey when every image is."""
    if shape is not None and len(shape) == 3:
        if shape[0] not in _MODES:
            raise DatasetError(f"the network takes {shape[0]} channels; images give 1 (grey), 3 (RGB) or 4 (RGBA)")
        return _MODES[shape[0]]
    for file in files:
        with _opened(file) as image:
            if image.mode not in _GREY_MODES:
                return "RGB"
    return "L"


def _opened(file: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(file)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{file}: cannot read the image ({exc})") from None


def _read_images(files: list[Path], mode: str) -> torch.Tensor:
    from PIL import Image

    arrays: list[np.ndarray] = []
    first: tuple[Path, tuple[int, int]] | None = None
    for file in files:
        with _opened(file) as image:
            if first is None:
                first = (file, image.size)
            elif image.size != first[1]:
                (w0, h0), (w, h) = first[1], image.size
                raise DatasetError(f"{file} is {w}×{h} pixels, but {first[0]} is {w0}×{h0}; every image must have one size "
                                   "(resize them first)")
            try:
                arrays.append(np.asarray(image.convert(mode), dtype=np.uint8))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise DatasetError(f"{file}: cannot read the image ({exc})") from None
    stacked = np.stack(arrays)
    if stacked.ndim == 3:
        stacked = stacked[:, None]
    else:
        stacked = stacked.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(stacked)).float() / 255.0


# --- Python data sets ------------------------------------------------------------------------------


def _split(item: Any, what: str, index: int) -> tuple[Any, Any | None]:
    """A sample or batch as (inputs, labels or None)."""
    if isinstance(item, (tuple, list)):
        if len(item) == 2:
            return item[0], item[1]
        if len(item) == 1:
            return item[0], None
        raise DatasetError(f"{what}: item {index} has {len(item)} parts; expected an input, or an (input, label) pair")
    return item, None


def _from_samples(what: str, data: TorchDataset, limit: int | None, seed: int) -> Dataset:
    try:
        size = len(data)  # type: ignore[arg-type]
    except TypeError:  # an iterable data set: its first samples
        indices: list[int] | None = None
        samples: Iterable[Any] = iter(data)  # type: ignore[call-overload]
    else:
        chosen = range(size) if limit is None or limit >= size else np.random.RandomState(seed).permutation(size)[:limit]
        indices = [int(i) for i in chosen]
        samples = (data[i] for i in indices)
    images: list[Any] = []
    labels: list[Any] = []
    for position, item in enumerate(samples):
        if limit is not None and position >= limit:
            break
        index = position if indices is None else indices[position]
        x, y = _split(item, what, index)
        _check_labelled(y is not None, bool(labels) if images else None, f"{what}: sample {index}")
        x = x if isinstance(x, torch.Tensor) else np.asarray(x)
        if images and tuple(x.shape) != tuple(images[0].shape):
            raise DatasetError(f"{what}: sample {index} has shape {list(x.shape)}, the first has {list(images[0].shape)}; "
                               "every sample must have one shape")
        images.append(x)
        if y is not None:
            labels.append(y)
    if not images:
        raise DatasetError(f"{what}: holds no samples")
    stacked = torch.stack([torch.as_tensor(x) for x in images])
    return from_arrays(what, stacked, _stack_labels(labels, what) if labels else None)


def _from_batches(what: str, loader: DataLoader, limit: int | None) -> Dataset:
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    count = 0
    for index, batch in enumerate(loader):
        x, y = _split(batch, what, index)
        x = torch.as_tensor(x)
        _check_labelled(y is not None, bool(labels) if images else None, f"{what}: batch {index}")
        if images and tuple(x.shape[1:]) != tuple(images[0].shape[1:]):
            raise DatasetError(f"{what}: batch {index} has samples of shape {list(x.shape[1:])}, the first batch "
                               f"{list(images[0].shape[1:])}; every sample must have one shape")
        images.append(x)
        if y is not None:
            labels.append(torch.as_tensor(y).reshape(-1) if not isinstance(y, torch.Tensor) else y)
        count += len(x)
        if limit is not None and count >= limit:
            break
    if not images:
        raise DatasetError(f"{what}: the loader gave no batches")
    stacked = torch.cat(images)[:limit]
    return from_arrays(what, stacked, torch.cat(labels)[:limit] if labels else None)


def _check_labelled(labelled: bool, before: bool | None, where: str) -> None:
    """Refuse a sample (or batch) with labels among ones without, and the other way round."""
    if before is not None and labelled != before:
        raise DatasetError(f"{where} {'has' if labelled else 'lacks'} labels and the ones before it "
                           f"{'do not' if labelled else 'have them'}; give (input, label) pairs, or inputs alone, throughout")


def _stack_labels(labels: list[Any], what: str) -> torch.Tensor:
    try:
        return torch.stack([torch.as_tensor(y).reshape(()) for y in labels])
    except (RuntimeError, TypeError, ValueError):
        raise DatasetError(f"{what}: every label must be one integer, the class index of its sample") from None
