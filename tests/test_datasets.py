"""Tests of rramc.datasets: loaders, strict file parsing, look-up, restricted unpickling, downloads."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from rramc.datasets import DATASETS, Dataset, load_dataset
from rramc.datasets import download as dl
from rramc.datasets.cifar import read_cifar_batch, write_cifar_batch
from rramc.datasets.idx import write_idx
from rramc.errors import DatasetError

IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """Keep the user's real data directories, mirrors and the Debian package out of every test."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RRAMC_DATA_DIR", raising=False)
    monkeypatch.delenv("RRAMC_DATASET_MIRROR", raising=False)
    monkeypatch.setattr("rramc.datasets.DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian-package")


def fake_idx_split(directory: Path, split: str, n: int, seed: int, gz: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    image_stem, label_stem = IDX_STEMS[split]
    write_idx(directory / f"{image_stem}{suffix}", images)
    write_idx(directory / f"{label_stem}{suffix}", labels)
    return images, labels


def fake_cifar_batches(directory: Path, per_batch: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    directory.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in CIFAR_FILES:
        images = rng.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch)
        write_cifar_batch(directory / name, images, labels)
        batches[name] = (images, labels)
    return batches


# --- digits and the Dataset API ---------------------------------------------------------------


def test_digits_split_is_seed_0_permutation_of_sklearn_digits():
    bunch = load_digits()
    order = np.random.RandomState(0).permutation(1797)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.sample_shape == test.sample_shape == (1, 8, 8)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert train.num_classes == test.num_classes == 10
    assert train.images.min() == 0.0 and train.images.max() == 1.0
    np.testing.assert_array_equal(test.images[:, 0].numpy(), bunch.images[order[1437:]] / 16.0)
    np.testing.assert_array_equal(test.labels.numpy(), bunch.target[order[1437:]])
    np.testing.assert_array_equal(train.labels.numpy(), bunch.target[order[:1437]])


def test_digits_loading_is_deterministic_and_ignores_data_dir(tmp_path):
    first = load_dataset("digits")
    second = load_dataset("digits", data_dir=tmp_path / "nothing-here")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


def test_batches_cover_the_set_in_order_with_a_short_last_batch():
    data = load_dataset("digits", "test")
    batches = list(data.batches(100))
    assert [len(labels) for _, labels in batches] == [100, 100, 100, 60]
    assert torch.equal(torch.cat([images for images, _ in batches]), data.images)
    assert torch.equal(torch.cat([labels for _, labels in batches]), data.labels)
    with pytest.raises(DatasetError, match="batch size"):
        next(data.batches(0))


def test_take_returns_a_prefix_and_clamps_to_the_size():
    data = load_dataset("digits", "test")
    head = data.take(5)
    assert len(head) == 5 and torch.equal(head.labels, data.labels[:5]) and head.name == "digits"
    assert len(data.take(10**6)) == 360


def test_shuffled_is_a_seeded_permutation():
    data = load_dataset("digits", "test")
    a, b, c = data.shuffled(1), data.shuffled(1), data.shuffled(2)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)
    assert not torch.equal(a.labels, c.labels)
    assert not torch.equal(a.labels, data.labels)
    assert torch.equal(a.labels.sort().values, data.labels.sort().values)
    # Images move with their labels.
    order = torch.from_numpy(np.random.RandomState(1).permutation(360))
    assert torch.equal(a.images, data.images[order]) and torch.equal(a.labels, data.labels[order])


def test_center_crop_takes_the_central_window():
    images = torch.arange(2 * 1 * 8 * 6, dtype=torch.float32).reshape(2, 1, 8, 6) / 100
    data = Dataset("toy", "test", images, torch.tensor([0, 1]), 10)
    cropped = data.center_crop(4)
    assert cropped.sample_shape == (1, 4, 4)
    assert torch.equal(cropped.images, images[:, :, 2:6, 1:5])
    assert torch.equal(data.center_crop(6).images, images[:, :, 1:7, :])
    with pytest.raises(DatasetError, match="8x6"):
        data.center_crop(7)


def test_dataset_rejects_inconsistent_tensors():
    with pytest.raises(DatasetError, match="labels"):
        Dataset("toy", "test", torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.int64), 10)
    with pytest.raises(DatasetError, match="float32"):
        Dataset("toy", "test", torch.zeros(3), torch.zeros(3, dtype=torch.int64), 10)  # no per-sample shape
    with pytest.raises(DatasetError, match="float32"):
        Dataset("toy", "test", torch.zeros(3, 1, 2, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.int64), 10)
    flat = Dataset("toy", "test", torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64), 10)  # e.g. reshaped_for((4,))
    assert flat.sample_shape == (4,)


def test_repr_is_short_and_says_what_the_data_set_is():
    data = load_dataset("digits", "test")
    assert repr(data) == "Dataset('digits', test, 360 samples of 1×8×8, 10 classes, values in [0, 1])"
    assert repr(data.take(1)) == "Dataset('digits', test, 1 sample of 1×8×8, 10 classes, values in [0, 1])"
    assert repr(data.reshaped_for((64,))) == "Dataset('digits', test, 360 samples of 64, 10 classes, values in [0, 1])"
    toy = Dataset("toy", "train", torch.zeros(2, 3, 4, 5), torch.zeros(2, dtype=torch.int64), 7, value_range=(-1.0, 2.5))
    assert repr(toy) == "Dataset('toy', train, 2 samples of 3×4×5, 7 classes, values in [-1, 2.5])"
    assert str(data) == repr(data) and len(repr(load_dataset("digits", "train"))) < 100


def test_reshaped_for_gives_every_sample_the_network_shape():
    data = load_dataset("digits", "test")
    flat = data.reshaped_for((64,))
    assert flat.images.shape == (360, 64) and flat.sample_shape == (64,)
    assert torch.equal(flat.images, data.images.reshape(360, 64)) and torch.equal(flat.labels, data.labels)
    assert (flat.name, flat.split, flat.num_classes, flat.value_range) == ("digits", "test", 10, (0.0, 1.0))
    assert data.reshaped_for((1, 8, 8)) is data  # already that shape
    assert data.reshaped_for([8, 8]).sample_shape == (8, 8)  # any sequence of sizes, e.g. a list or torch.Size
    assert torch.equal(flat.reshaped_for(torch.Size([1, 8, 8])).images, data.images)  # and back
    # The other methods keep working on the result.
    assert [len(labels) for _, labels in flat.take(10).batches(4)] == [4, 4, 2]
    assert torch.equal(flat.shuffled(3).labels, data.shuffled(3).labels)


@pytest.mark.parametrize("shape", [(63,), (1, 28, 28), (2, 8, 8)])
def test_reshaped_for_a_shape_of_another_size_names_both_shapes(shape):
    with pytest.raises(DatasetError) as info:
        load_dataset("digits", "test").reshaped_for(shape)
    message = str(info.value)
    assert "'digits'" in message and "[1, 8, 8] (64 values)" in message
    assert f"{list(shape)} ({np.prod(shape)} values)" in message


@pytest.mark.parametrize("shape", [(), (0, 64), (-1,)])
def test_reshaped_for_refuses_shapes_that_are_not_sizes(shape):
    with pytest.raises(DatasetError, match="positive sizes"):
        load_dataset("digits", "test").reshaped_for(shape)


def test_center_crop_of_reshaped_data_sets():
    data = load_dataset("digits", "test")
    squeezed = data.reshaped_for((8, 8))
    assert torch.equal(squeezed.center_crop(4).images, data.center_crop(4).images[:, 0])
    with pytest.raises(DatasetError, match=r"crop before reshaping"):
        data.reshaped_for((64,)).center_crop(4)


@pytest.mark.parametrize(
    ("name", "split", "listed"),
    [("imagenet", "test", list(DATASETS)), ("digits", "validation", ["train", "test"])],
)
def test_unknown_name_or_split_lists_the_allowed_values(name, split, listed):
    with pytest.raises(DatasetError) as info:
        load_dataset(name, split)
    assert all(value in str(info.value) for value in listed)


# --- IDX: round trips and corrupt files ------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_through_load_dataset(tmp_path, gz):
    train_images, train_labels = fake_idx_split(tmp_path, "train", n=9, seed=1, gz=gz)
    test_images, test_labels = fake_idx_split(tmp_path, "test", n=4, seed=2, gz=gz)
    train, test = load_dataset("mnist", "train", data_dir=tmp_path), load_dataset("mnist", "test", data_dir=tmp_path)
    assert (len(train), len(test)) == (9, 4) and test.sample_shape == (1, 28, 28)
    assert test.images.dtype == torch.float32 and test.labels.dtype == torch.int64
    np.testing.assert_array_equal(train.images[:, 0].numpy(), train_images.astype(np.float32) / 255)
    np.testing.assert_array_equal(test.images[:, 0].numpy(), test_images.astype(np.float32) / 255)
    np.testing.assert_array_equal(train.labels.numpy(), train_labels)
    np.testing.assert_array_equal(test.labels.numpy(), test_labels)


def test_write_idx_writes_the_standard_header(tmp_path):
    write_idx(tmp_path / "images", np.zeros((2, 3, 4), np.uint8))
    write_idx(tmp_path / "labels.gz", np.array([7, 1], np.uint8))
    raw = (tmp_path / "images").read_bytes()
    assert raw[:16] == struct.pack(">IIII", 0x803, 2, 3, 4) and len(raw) == 16 + 24
    assert gzip.decompress((tmp_path / "labels.gz").read_bytes()) == struct.pack(">II", 0x801, 2) + b"\x07\x01"


def test_data_dir_subdirectory_and_env_and_cache_lookup(tmp_path, monkeypatch):
    expected, _ = fake_idx_split(tmp_path / "given" / "fashion-mnist", "test", n=2, seed=3)
    data = load_dataset("fashion-mnist", data_dir=tmp_path / "given")
    np.testing.assert_array_equal(data.images[:, 0].numpy(), expected / np.float32(255))

    fake_idx_split(tmp_path / "home" / ".cache" / "rramc" / "mnist", "test", n=3, seed=4)
    assert len(load_dataset("mnist")) == 3
    fake_idx_split(tmp_path / "env" / "mnist", "test", n=5, seed=5)
    monkeypatch.setenv("RRAMC_DATA_DIR", str(tmp_path / "env"))
    assert len(load_dataset("mnist")) == 5  # $RRAMC_DATA_DIR comes before the cache


def corrupt_bad_magic(directory: Path) -> str:
    write_idx(directory / "t10k-images-idx3-ubyte", np.zeros(4, np.uint8))  # a 1-D (labels) file
    return "t10k-images-idx3-ubyte"


def corrupt_truncated(directory: Path) -> str:
    path = directory / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    return path.name


def corrupt_truncated_header(directory: Path) -> str:
    path = directory / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:6])
    return path.name


def corrupt_trailing_bytes(directory: Path) -> str:
    path = directory / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\x00")
    return path.name


def corrupt_count_mismatch(directory: Path) -> str:
    write_idx(directory / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    return "t10k-labels-idx1-ubyte"


def corrupt_label_out_of_range(directory: Path) -> str:
    write_idx(directory / "t10k-labels-idx1-ubyte", np.array([1, 2, 3, 10], np.uint8))
    return "t10k-labels-idx1-ubyte"


def corrupt_gzip(directory: Path) -> str:
    path = directory / "t10k-images-idx3-ubyte"
    gz = path.with_name(path.name + ".gz")
    gz.write_bytes(gzip.compress(path.read_bytes())[:-20])
    path.unlink()
    return gz.name


@pytest.mark.parametrize(
    ("corrupt", "phrase"),
    [
        (corrupt_bad_magic, "magic number 0x00000801, expected 0x00000803"),
        (corrupt_truncated, "truncated"),
        (corrupt_truncated_header, "truncated"),
        (corrupt_trailing_bytes, "longer than its header"),
        (corrupt_count_mismatch, "4 images but"),
        (corrupt_label_out_of_range, "label 10"),
        (corrupt_gzip, "gzip"),
    ],
)
def test_corrupt_idx_files_are_reported_by_name(tmp_path, corrupt, phrase):
    fake_idx_split(tmp_path, "test", n=4, seed=6)
    culprit = corrupt(tmp_path)
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(info.value)
    assert phrase in message and culprit in message and message.startswith("mnist")


def test_missing_files_message_names_dirs_files_and_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv("RRAMC_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", "train")
    message = str(info.value)
    for needle in (
        str(tmp_path / "env" / "fashion-mnist"),
        str(tmp_path / "home" / ".cache" / "rramc" / "fashion-mnist"),
        str(tmp_path / "no-debian-package"),
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "--download",
        "apt-get install dataset-fashion-mnist",
    ):
        assert needle in message

    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", data_dir=tmp_path / "given")
    message = str(info.value)
    assert str(tmp_path / "given" / "cifar-10-batches-py") in message and "test_batch" in message
    assert "apt-get" not in message


# --- CIFAR-10 ----------------------------------------------------------------------------------


def test_cifar_round_trip_in_batch_order(tmp_path):
    batches = fake_cifar_batches(tmp_path / "cifar-10-batches-py")
    train = load_dataset("cifar10", "train", data_dir=tmp_path)
    test = load_dataset("cifar10", "test", data_dir=tmp_path / "cifar-10-batches-py")
    assert (len(train), len(test)) == (15, 3) and train.sample_shape == (3, 32, 32)
    train_batches = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    expected_images = np.concatenate([images for images, _ in train_batches])
    np.testing.assert_array_equal(train.images.numpy(), expected_images.astype(np.float32) / 255)
    np.testing.assert_array_equal(train.labels.numpy(), np.concatenate([labels for _, labels in train_batches]))
    np.testing.assert_array_equal(test.labels.numpy(), batches["test_batch"][1])


def python2_batch_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as the real files are: Python 2 cPickle protocol 2, a numpy 1.x array, str as BINSTRING."""

    def string(value: bytes) -> bytes:
        return (b"U" + bytes([len(value)]) if len(value) < 256 else b"T" + struct.pack("<I", len(value))) + value

    def integer(value: int) -> bytes:
        return b"J" + struct.pack("<i", value)

    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + string(b"b") + b"\x87R"
        + b"(" + integer(1) + integer(data.shape[0]) + integer(data.shape[1]) + b"\x86"
        + b"cnumpy\ndtype\n" + string(b"u1") + integer(0) + integer(1) + b"\x87R"
        + b"(" + integer(3) + string(b"|") + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb"
        + b"\x89" + string(data.tobytes()) + b"tb"
    )
    label_list = b"](" + b"".join(integer(label) for label in labels) + b"e"
    return (
        b"\x80\x02}(" + string(b"batch_label") + string(b"testing batch 1 of 1")
        + string(b"data") + array + string(b"labels") + label_list + b"u."
    )


def test_reads_python2_batches_with_rgb_planes(tmp_path):
    data = np.random.default_rng(8).integers(0, 256, size=(2, 3072), dtype=np.uint8)
    (tmp_path / "test_batch").write_bytes(python2_batch_pickle(data, [3, 9]))
    test = load_dataset("cifar10", data_dir=tmp_path)
    assert test.labels.tolist() == [3, 9]
    # Each row is the R, then G, then B 32x32 plane, row-major.
    for channel in range(3):
        plane = data[:, channel * 1024 : (channel + 1) * 1024].reshape(2, 32, 32)
        np.testing.assert_array_equal(test.images[:, channel].numpy(), plane.astype(np.float32) / 255)


class RunsShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CallsEval:
    def __reduce__(self):
        return eval, ("1 + 1",)


@pytest.mark.parametrize("payload", ["os.system", "eval"])
def test_malicious_pickles_are_refused_without_running(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = RunsShellCommand(marker) if payload == "os.system" else CallsEval()
    batch_path = tmp_path / "test_batch"
    batch_path.write_bytes(pickle.dumps({b"data": evil, b"labels": [0]}, protocol=2))
    with pytest.raises(DatasetError) as info:
        read_cifar_batch(batch_path)
    assert "refusing" in str(info.value) and str(batch_path) in str(info.value)
    assert ("system" if payload == "os.system" else "eval") in str(info.value)
    assert not marker.exists()


def test_cifar_batch_with_wrong_contents_is_reported(tmp_path):
    batch_path = tmp_path / "test_batch"
    batch_path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DatasetError, match="3072"):
        read_cifar_batch(batch_path)
    batch_path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetError, match="not a readable CIFAR-10 batch"):
        read_cifar_batch(batch_path)


# --- downloads from a file:// mirror -----------------------------------------------------------


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def mnist_mirror(tmp_path, monkeypatch):
    """A local mirror of fake MNIST .gz files, with the checksum table pointed at them."""
    served = tmp_path / "mirror" / "mnist"
    expected = {split: fake_idx_split(served, split, n=5, seed=10 + i, gz=True) for i, split in enumerate(IDX_STEMS)}
    monkeypatch.setitem(dl.CHECKSUMS, "mnist", {path.name: md5(path) for path in sorted(served.iterdir())})
    return served, expected


def test_download_from_mirror_env_var(tmp_path, monkeypatch, mnist_mirror):
    served, expected = mnist_mirror
    monkeypatch.setenv("RRAMC_DATASET_MIRROR", (tmp_path / "mirror").as_uri())
    target = tmp_path / "data"
    test = load_dataset("mnist", "test", data_dir=target, download=True)
    np.testing.assert_array_equal(test.labels.numpy(), expected["test"][1])
    np.testing.assert_array_equal(test.images[:, 0].numpy(), expected["test"][0] / np.float32(255))
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in served.iterdir())


def test_download_into_the_cache_through_the_mirrors_table(tmp_path, monkeypatch, mnist_mirror):
    served, expected = mnist_mirror
    monkeypatch.setitem(dl.MIRRORS, "mnist", served.as_uri() + "/")
    train = load_dataset("mnist", "train", download=True)
    np.testing.assert_array_equal(train.labels.numpy(), expected["train"][1])
    assert (tmp_path / "home" / ".cache" / "rramc" / "mnist" / "train-images-idx3-ubyte.gz").is_file()


def test_checksum_mismatch_leaves_no_file(tmp_path, monkeypatch, mnist_mirror):
    served, _ = mnist_mirror
    monkeypatch.setitem(dl.MIRRORS, "mnist", served.as_uri())
    monkeypatch.setitem(dl.CHECKSUMS["mnist"], "t10k-images-idx3-ubyte.gz", "0" * 32)
    target = tmp_path / "data"
    with pytest.raises(DatasetError) as info:
        dl.download("mnist", target)
    assert "download failed" in str(info.value) and "md5" in str(info.value) and "0" * 32 in str(info.value)
    assert not target.exists()  # neither the file nor a temporary nor the folder the download made

    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="md5"):
        dl.download("mnist", target)
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]  # no temporary left either


def test_unreachable_mirror_says_offline_and_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setenv("RRAMC_DATASET_MIRROR", (tmp_path / "no-such-mirror").as_uri())
    target = tmp_path / "data"
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", data_dir=target, download=True)
    message = str(info.value)
    assert "offline" in message and str(target) in message and "t10k-images-idx3-ubyte.gz" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert not target.exists()


# --- failed downloads, offline: the URL seam is replaced, the network is never touched ---------


@pytest.fixture
def offline(monkeypatch):
    """No network: ``open_url`` fails as urlopen does without one, and the real urlopen fails the test."""
    opened = []

    def no_network(url, timeout=None):
        opened.append(url)
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    def must_not_be_called(*args, **kwargs):
        pytest.fail("a test reached urllib.request.urlopen; it must go through the replaced dl.open_url")

    monkeypatch.setattr(dl, "open_url", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", must_not_be_called)
    return opened


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (hidden ones too), with the contents of the files."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_offline_download_removes_the_folders_it_created_and_says_what_to_do(tmp_path, offline, name):
    target = tmp_path / "data" / "sets" / name
    with pytest.raises(DatasetError) as info:
        load_dataset(name, "test", data_dir=target, download=True)
    message = str(info.value)
    assert message.startswith(f"{name}: the download failed")
    assert "Temporary failure in name resolution" in message and "offline" in message  # why
    assert "by hand" in message and str(target) in message  # where to put the files
    assert all(filename in message for filename in dl.CHECKSUMS[name])
    assert dl.MIRRORS[name] in message and "RRAMC_DATASET_MIRROR" in message
    assert "<urlopen error" not in message
    assert offline == [dl.mirror_url(name) + next(iter(dl.CHECKSUMS[name]))]
    assert not (tmp_path / "data").exists()


def test_offline_download_into_the_cache_removes_only_what_it_created(tmp_path, offline):
    home = tmp_path / "home"
    (home / "elsewhere").mkdir(parents=True)  # $HOME exists; ~/.cache does not yet
    with pytest.raises(DatasetError, match=r"download failed") as info:
        load_dataset("mnist", download=True)
    assert str(home / ".cache" / "rramc" / "mnist") in str(info.value)
    assert sorted(p.name for p in home.iterdir()) == ["elsewhere"]


def test_failed_download_leaves_pre_existing_folders_and_files_untouched(tmp_path, offline, mnist_mirror):
    served, _ = mnist_mirror
    target = tmp_path / "data"
    (target / "cifar-10-batches-py").mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    (target / "t10k-images-idx3-ubyte.gz").write_bytes((served / "t10k-images-idx3-ubyte.gz").read_bytes())
    (target / "train-labels-idx1-ubyte.gz").write_bytes(b"an old, wrong copy")
    before = tree(target)
    with pytest.raises(DatasetError, match=r"download failed"):
        load_dataset("mnist", "test", data_dir=target, download=True)
    assert tree(target) == before
    assert offline == [dl.mirror_url("mnist") + "t10k-labels-idx1-ubyte.gz"]  # the verified file was kept, not fetched


class Response:
    """A urlopen response that serves ``body`` and then, if ``fail_after`` is set, drops the connection."""

    def __init__(self, body: bytes, fail_after: int | None = None) -> None:
        self.stream, self.fail_after, self.served = io.BytesIO(body), fail_after, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def read(self, size: int) -> bytes:
        if self.fail_after is not None and self.served >= self.fail_after:
            raise ConnectionResetError(104, "Connection reset by peer")
        chunk = self.stream.read(size if self.fail_after is None else min(size, self.fail_after - self.served))
        self.served += len(chunk)
        return chunk


@pytest.mark.parametrize("pre_existing", [False, True])
def test_connection_lost_midway_removes_partial_and_finished_files(
    tmp_path, monkeypatch, offline, mnist_mirror, pre_existing
):
    served, _ = mnist_mirror
    files = list(dl.CHECKSUMS["mnist"])  # fetched in this order; the third one breaks off half-way
    seen_partial = []

    def flaky(url, timeout=None):
        filename = url.rsplit("/", 1)[-1]
        body = (served / filename).read_bytes()
        if filename != files[2]:
            return Response(body)
        seen_partial.extend(p.name for p in target.iterdir() if p.name.endswith(".part"))
        return Response(body, fail_after=len(body) // 2)

    monkeypatch.setattr(dl, "open_url", flaky)
    target = tmp_path / "data" / "mnist"
    if pre_existing:
        target.mkdir(parents=True)
        (target / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", "train", data_dir=target, download=True)
    assert "download failed" in str(info.value) and "Connection reset by peer" in str(info.value)
    assert seen_partial  # a partial file did exist while the third file was coming in
    if pre_existing:
        assert tree(target) == {"notes.txt": b"mine"}
    else:
        assert not (tmp_path / "data").exists()


def test_interrupted_download_removes_what_it_created(tmp_path, monkeypatch, offline):
    def interrupted(url, timeout=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(dl, "open_url", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dl.download("cifar10", tmp_path / "data" / "cifar10")
    assert not (tmp_path / "data").exists()


def test_successful_download_through_the_url_seam_keeps_everything(tmp_path, monkeypatch, offline, mnist_mirror):
    served, expected = mnist_mirror
    monkeypatch.setattr(dl, "open_url", lambda url, timeout=None: Response((served / url.rsplit("/", 1)[-1]).read_bytes()))
    target = tmp_path / "data" / "mnist"
    test = load_dataset("mnist", "test", data_dir=target, download=True)
    np.testing.assert_array_equal(test.labels.numpy(), expected["test"][1])
    assert tree(target) == tree(served)


def tar_gz(path: Path, members: dict[str, bytes], symlink: str | None = None) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        if symlink is not None:
            info = tarfile.TarInfo(symlink)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)


def serve_cifar_archive(tmp_path: Path, monkeypatch, members: dict[str, bytes], symlink: str | None = None) -> None:
    served = tmp_path / "mirror" / "cifar10"
    served.mkdir(parents=True)
    tar_gz(served / "cifar-10-python.tar.gz", members, symlink)
    monkeypatch.setitem(dl.CHECKSUMS, "cifar10", {"cifar-10-python.tar.gz": md5(served / "cifar-10-python.tar.gz")})
    monkeypatch.setenv("RRAMC_DATASET_MIRROR", (tmp_path / "mirror").as_uri())


def test_cifar_download_extracts_the_batches_and_drops_the_archive(tmp_path, monkeypatch):
    batches = fake_cifar_batches(tmp_path / "made")
    members = {f"cifar-10-batches-py/{name}": (tmp_path / "made" / name).read_bytes() for name in CIFAR_FILES}
    serve_cifar_archive(tmp_path, monkeypatch, members)
    target = tmp_path / "data"
    test = load_dataset("cifar10", data_dir=target, download=True)
    np.testing.assert_array_equal(test.labels.numpy(), batches["test_batch"][1])
    assert sorted(p.name for p in (target / "cifar-10-batches-py").iterdir()) == sorted(CIFAR_FILES)
    assert sorted(p.name for p in target.iterdir()) == ["cifar-10-batches-py"]


@pytest.mark.parametrize(
    ("members", "symlink", "phrase"),
    [
        ({"cifar-10-batches-py/../../escaped": b"x"}, None, "outside"),
        ({"/tmp/absolute-escape": b"x"}, None, "outside"),
        ({}, "cifar-10-batches-py/test_batch", "link"),
    ],
)
def test_cifar_archive_members_escaping_the_directory_are_refused(tmp_path, monkeypatch, members, symlink, phrase):
    serve_cifar_archive(tmp_path, monkeypatch, members, symlink)
    target = tmp_path / "data" / "cifar10"
    with pytest.raises(DatasetError, match=phrase):
        dl.download("cifar10", target)
    assert not (tmp_path / "data").exists()  # both folders were made by the download
    assert not (tmp_path / "data" / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert not Path("/tmp/absolute-escape").exists()


# --- the real thing, when Debian's package is installed ----------------------------------------

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="package dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_test_split(monkeypatch):
    monkeypatch.setattr("rramc.datasets.DEBIAN_FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST)
    test = load_dataset("fashion-mnist", "test")
    assert len(test) == 10000 and test.sample_shape == (1, 28, 28)
    assert test.images.min() == 0.0 and test.images.max() == 1.0
    assert test.labels.bincount(minlength=10).tolist() == [1000] * 10
