"""A user's own data: .npz and .pt files, image folders and Python data sets, in Python and on the command line.

Every file is written here; what the loader gives is compared with the arrays written (or with
Pillow's own conversion of the images), and every bad input must end with one located message.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from torch.utils.data import Dataset as TorchDataset
from typer.testing import CliRunner

import rramc
from rramc.cli import app
from rramc.datasets import Dataset, check_classes
from rramc.datasets.user_data import held_out, infer_value_range, load_data, load_data_file, to_dataset
from rramc.errors import DatasetError, RramcWarning
from rramc.frontend import import_module
from rramc.ir import CrossbarOp
from rramc.samples import models

ANSI = re.compile(r"\x1b\[[0-9;]*m")
RNG = np.random.default_rng(0)


class Opaque:
    """A class a pickle names: loading it needs trust."""


def write_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (8, 8), mode: str = "RGB") -> dict[str, np.ndarray]:
    """``count`` random images per class folder; the arrays written, by file path."""
    written = {}
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            pixels = RNG.integers(0, 256, shape, dtype=np.uint8)
            path = root / name / f"{i:02d}.png"
            Image.fromarray(pixels, mode).save(path)
            written[str(path)] = pixels
    return written


# --- files ---------------------------------------------------------------------------------------


def test_npz_images_and_labels_are_read_as_written(tmp_path: Path) -> None:
    images = RNG.random((6, 1, 4, 4), dtype=np.float32)
    np.savez(tmp_path / "mine.npz", images=images, labels=np.array([0, 2, 1, 2, 0, 1]))
    data = load_data_file(tmp_path / "mine.npz")
    assert (data.name, data.split, data.num_classes, data.value_range) == ("mine.npz", "all", 3, (0.0, 1.0))
    torch.testing.assert_close(data.images, torch.from_numpy(images))
    assert data.labels.tolist() == [0, 2, 1, 2, 0, 1] and data.labels.dtype == torch.int64


def test_uint8_channels_last_under_x_and_y_is_scaled_and_transposed(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "xy.npz", x=pixels, y=np.arange(5, dtype=np.uint8))
    data = load_data_file(tmp_path / "xy.npz")
    assert data.sample_shape == (3, 6, 7) and data.value_range == (0.0, 1.0)
    torch.testing.assert_close(data.images, torch.from_numpy(pixels.transpose(0, 3, 1, 2) / 255.0).float())
    grey = RNG.integers(0, 256, (4, 6, 7), dtype=np.uint8)
    np.savez(tmp_path / "grey.npz", images=grey)
    assert load_data_file(tmp_path / "grey.npz").sample_shape == (1, 6, 7)


@pytest.mark.parametrize(("low", "high", "declared"), [(0.1, 0.9, (0.0, 1.0)), (-0.7, 0.2, (-1.0, 1.0)), (-0.4, 2.8, (-0.4, 2.8)),
                                                       (5.0, 5.0, (0.0, 5.0))])
def test_the_value_range_is_a_usual_convention_when_the_data_lie_within_it_else_their_own(low, high, declared) -> None:  # type: ignore[no-untyped-def]
    images = torch.tensor([[low, high], [high, low]])
    assert infer_value_range(images) == pytest.approx(declared)


def test_unlabelled_data_calibrate_but_are_refused_for_evaluation(tmp_path: Path) -> None:
    np.savez(tmp_path / "bare.npz", images=RNG.random((3, 4)))
    data = load_data_file(tmp_path / "bare.npz")
    assert data.num_classes == 0 and data.labels.tolist() == [-1, -1, -1] and "no labels" in repr(data)
    with pytest.raises(DatasetError, match="'bare.npz' has no labels, and evaluating needs one per sample"):
        check_classes(10, data)


def test_pt_files_hold_a_dict_a_tuple_or_a_tensor(tmp_path: Path) -> None:
    images, labels = torch.rand(5, 2, 3), torch.tensor([1, 0, 1, 1, 0])
    torch.save({"images": images, "labels": labels}, tmp_path / "dict.pt")
    torch.save((images, labels), tmp_path / "tuple.pth")
    torch.save({"x": images}, tmp_path / "x.pt")
    torch.save(images, tmp_path / "tensor.pt")
    for name, labelled in (("dict.pt", True), ("tuple.pth", True), ("x.pt", False), ("tensor.pt", False)):
        data = load_data_file(tmp_path / name)
        torch.testing.assert_close(data.images, images[:, None])  # (N, H, W) gets its channel
        assert data.labels.tolist() == (labels.tolist() if labelled else [-1] * 5), name


def test_a_pt_file_that_needs_pickle_is_refused_unless_trusted(tmp_path: Path) -> None:
    torch.save({"images": np.ones((3, 4), dtype=np.float32), "labels": np.arange(3)}, tmp_path / "numpy.pt")
    with pytest.raises(DatasetError) as refused:
        load_data_file(tmp_path / "numpy.pt")
    for words in ("numpy.pt holds pickled Python objects", "numpy", "runs code stored in the file", "--trust-data",
                  "trust_data=True", "torch.from_numpy"):
        assert words in str(refused.value)
    data = load_data_file(tmp_path / "numpy.pt", trust=True)
    assert data.labels.tolist() == [0, 1, 2] and data.sample_shape == (4,)
    torch.save({"images": torch.rand(2, 3), "labels": Opaque()}, tmp_path / "opaque.pt")
    with pytest.raises(DatasetError, match=r"opaque.pt holds pickled Python objects \(test_user_data.Opaque\)"):
        load_data_file(tmp_path / "opaque.pt")


# --- folders -------------------------------------------------------------------------------------


def test_a_folder_by_class_is_read_like_imagefolder(tmp_path: Path) -> None:
    written = write_folder(tmp_path / "pets", {"dog": 2, "cat": 3})
    data = load_data_file(tmp_path / "pets")
    assert (data.num_classes, data.sample_shape, data.value_range) == (2, (3, 8, 8), (0.0, 1.0))
    assert data.labels.tolist() == [0, 0, 0, 1, 1]  # sorted class names: cat 0, dog 1
    files = sorted(written)
    expected = np.stack([written[f] for f in files]).transpose(0, 3, 1, 2) / 255.0
    torch.testing.assert_close(data.images, torch.from_numpy(expected).float())
    grey = load_data_file(tmp_path / "pets", shape=(1, 8, 8))  # the network's channel count: Pillow's own conversion
    converted = np.stack([np.asarray(Image.open(f).convert("L")) for f in files]) / 255.0
    torch.testing.assert_close(grey.images, torch.from_numpy(converted[:, None]).float())


def test_a_grey_folder_stays_grey_and_loose_images_are_unlabelled(tmp_path: Path) -> None:
    write_folder(tmp_path / "digits", {"0": 2, "1": 2}, mode="L")
    assert load_data_file(tmp_path / "digits").sample_shape == (1, 8, 8)
    (tmp_path / "loose").mkdir()
    for i in range(3):
        Image.fromarray(RNG.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "loose" / f"{i}.png")
    (tmp_path / "loose" / "notes.txt").write_text("not an image")
    data = load_data_file(tmp_path / "loose")
    assert len(data) == 3 and data.num_classes == 0


def test_a_limit_reads_only_the_samples_shuffled_take_would_keep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(tmp_path / "set", {"a": 5, "b": 6})
    whole = load_data_file(tmp_path / "set")
    opened: list[str] = []
    original = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: (opened.append(str(path)), original(path, *a, **k))[1])
    drawn = load_data_file(tmp_path / "set", limit=4, seed=3)
    expected = whole.shuffled(3).take(4)
    torch.testing.assert_close(drawn.images, expected.images)
    assert drawn.labels.tolist() == expected.labels.tolist() and len(set(opened)) == 4


# --- bad input -----------------------------------------------------------------------------------


def bad_files(root: Path) -> dict[str, tuple[Path, list[str]]]:
    """Bad data files and folders, each with the words its message must hold."""
    cases: dict[str, tuple[Path, list[str]]] = {}

    def npz(name: str, words: list[str], **arrays: object) -> None:
        np.savez(root / f"{name}.npz", **arrays)
        cases[name] = (root / f"{name}.npz", [f"{name}.npz", *words])

    npz("lengths", ["4 images but 3 labels", "one label per image"], images=np.zeros((4, 2)), labels=np.zeros(3, int))
    npz("strings", ["text", "real numbers"], images=np.array([["a", "b"], ["c", "d"]]))
    npz("complex", ["complex numbers", "real numbers"], images=np.ones((2, 2), dtype=complex))
    npz("objects", ["Python objects", "does not unpickle"], images=np.array([object(), 1], dtype=object))
    npz("nan", ["NaN or infinite", "sample 1", "finite"], images=np.array([[0.0, 1.0], [np.nan, 0.5]]))
    npz("inf", ["NaN or infinite", "sample 0"], images=np.array([[np.inf, 1.0], [0.0, 0.5]]))
    npz("float_labels", ["float64", "integers", "class indices"], images=np.zeros((2, 2)), labels=np.array([0.0, 1.0]))
    npz("negative", ["label -3 of sample 1 is negative"], images=np.zeros((2, 2)), labels=np.array([0, -3]))
    npz("one_hot", ["shape [2, 3]", "argmax"], images=np.zeros((2, 2)), labels=np.eye(3, dtype=int)[:2])
    npz("no_images", ["no array named 'images' (or 'x')", "'pixels'"], pixels=np.zeros((2, 2)))
    npz("empty", ["holds no samples"], images=np.zeros((0, 4)))
    (root / "notes.csv").write_text("1,2\n")
    cases["extension"] = (root / "notes.csv", ["notes.csv", "unknown data file type '.csv'", ".npz", ".pt", "folders of images"])
    cases["missing"] = (root / "absent.npz", ["absent.npz does not exist", "digits, mnist, fashion-mnist, cifar10"])
    (root / "text.pt").write_text("not a torch file")
    cases["not_torch"] = (root / "text.pt", ["text.pt is not a PyTorch data file"])
    torch.save([torch.zeros(2), torch.zeros(2), torch.zeros(2)], root / "triple.pt")
    cases["triple"] = (root / "triple.pt", ["triple.pt holds a list", "(images, labels)"])
    torch.save({"Opaque": Opaque()}, root / "pickled.pt")
    cases["pickled"] = (root / "pickled.pt", ["pickled.pt holds pickled Python objects", "--trust-data"])
    (root / "void").mkdir()
    cases["empty_folder"] = (root / "void", ["void holds no images", "one subfolder per class"])
    (root / "texts" / "a").mkdir(parents=True)
    (root / "texts" / "a" / "readme.txt").write_text("x")
    cases["no_images_folder"] = (root / "texts", ["class folder 'a' holds no images"])
    (root / "broken" / "a").mkdir(parents=True)
    (root / "broken" / "a" / "bad.png").write_bytes(b"\x89PNG not really")
    cases["unreadable"] = (root / "broken", [str(root / "broken" / "a" / "bad.png"), "cannot read the image"])
    write_folder(root / "sizes", {"a": 2})
    Image.new("RGB", (9, 8)).save(root / "sizes" / "a" / "odd.png")
    cases["sizes"] = (root / "sizes", [str(root / "sizes" / "a" / "odd.png"), "9×8", "8×8", "one size"])
    write_folder(root / "mixed", {"a": 1})
    Image.new("RGB", (8, 8)).save(root / "mixed" / "stray.png")
    cases["mixed"] = (root / "mixed", ["both class folders", "stray.png"])
    return cases


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[str]]]:
    return bad_files(tmp_path_factory.mktemp("bad_data"))


BAD_CASES = ["lengths", "strings", "complex", "objects", "nan", "inf", "float_labels", "negative", "one_hot", "no_images", "empty",
             "extension", "missing", "not_torch", "triple", "pickled", "empty_folder", "no_images_folder", "unreadable", "sizes",
             "mixed"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_data_gets_one_located_message(case: str, bad) -> None:  # type: ignore[no-untyped-def]
    path, words = bad[case]
    with pytest.raises(DatasetError) as refused:
        load_data_file(path)
    missing = [w for w in words if w not in str(refused.value)]
    assert not missing, f"{case}: message lacks {missing}: {refused.value}"


def test_a_name_that_is_neither_builtin_nor_a_file_lists_the_builtins() -> None:
    with pytest.raises(DatasetError, match="unknown data set 'imagenet': not one of digits, mnist, fashion-mnist, cifar10"):
        load_data("imagenet")


# --- Python objects ------------------------------------------------------------------------------


class Counting(TorchDataset):
    """A huge map-style data set that counts the samples read."""

    def __init__(self, size: int) -> None:
        self.size, self.read = size, 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.read += 1
        return torch.full((1, 2, 2), index / self.size), index % 7


class Stream(IterableDataset):
    def __iter__(self):  # type: ignore[no-untyped-def]
        for i in range(1000):
            yield torch.full((3,), float(i) / 1000)


def test_a_map_style_data_set_is_drawn_from_without_reading_the_rest() -> None:
    source = Counting(1_000_000)
    data = to_dataset(source, what="calibration_data", limit=16, seed=5)
    assert source.read == 16 and len(data) == 16 and data.num_classes == 7
    order = np.random.RandomState(5).permutation(1_000_000)[:16]  # Dataset.shuffled(5).take(16)'s samples
    torch.testing.assert_close(data.images[:, 0, 0, 0], torch.from_numpy(order / 1_000_000).float())
    assert data.labels.tolist() == [int(i) % 7 for i in order]


def test_tensors_loaders_and_iterable_data_sets_become_datasets() -> None:
    x, y = torch.rand(20, 3), torch.randint(0, 4, (20,))
    dataset = Dataset("given", "train", x, y, 4)
    assert to_dataset(dataset, what="d") is dataset
    assert to_dataset(x, what="t").num_classes == 0
    loaded = to_dataset(DataLoader(TensorDataset(x, y), batch_size=6), what="loader", limit=10)
    torch.testing.assert_close(loaded.images, x[:10])
    assert loaded.labels.tolist() == y[:10].tolist()
    inputs_only = to_dataset(DataLoader(TensorDataset(x), batch_size=6), what="loader")
    assert len(inputs_only) == 20 and inputs_only.num_classes == 0
    stream = to_dataset(Stream(), what="stream", limit=5)
    torch.testing.assert_close(stream.images[:, 0], torch.arange(5) / 1000.0)


def test_python_data_of_mixed_kinds_or_shapes_are_refused() -> None:
    class Mixed(TorchDataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            return (torch.zeros(2), 1) if i == 0 else torch.zeros(2 + (i == 2))

    with pytest.raises(DatasetError, match="calibration_data: sample 1 lacks labels and the ones before it have them"):
        to_dataset(Mixed(), what="calibration_data")
    with pytest.raises(DatasetError, match="expected a tensor, an rramc Dataset, a torch.utils.data Dataset or DataLoader"):
        to_dataset([1, 2, 3], what="calibration_data")  # type: ignore[arg-type]


def test_held_out_keeps_a_fifth_for_evaluation() -> None:
    data = Dataset("mine", "all", torch.rand(50, 2), torch.arange(50) % 5, 5)
    train, test = held_out(data, seed=1)
    assert (len(train), len(test)) == (40, 10) and test.split == "held out"
    assert sorted(train.labels.tolist() + test.labels.tolist()) == sorted(data.labels.tolist())


# --- rramc.compile -------------------------------------------------------------------------------


def test_compile_takes_every_kind_of_data_and_they_agree(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.mlp(16, 8, 4).eval()
    graph = import_module(model, torch.rand(2, 16))
    x, y = torch.rand(600, 16) * 2 - 0.5, torch.randint(0, 4, (600,))
    np.savez(tmp_path / "cal.npz", images=x.numpy(), labels=y.numpy())
    reference = Dataset("cal", "all", x, y, 4, infer_value_range(x)).shuffled(0).take(512)

    def ranges(calibration: object) -> list[tuple[float, bool, tuple[float, ...]]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RramcWarning)
            exe = rramc.compile(graph, "rram_a", calibration_data=calibration)
        return [(n.op.input_range.scale, n.op.input_range.signed, tuple(n.op.adc_range.flatten().tolist()))
                for n in exe.graph.nodes_of(CrossbarOp)]

    expected = ranges(reference)
    assert ranges(TensorDataset(x, y)) == expected
    assert ranges(str(tmp_path / "cal.npz")) == expected
    assert ranges(tmp_path / "cal.npz") == expected
    loader = ranges(DataLoader(TensorDataset(x), batch_size=100))  # a loader's first samples, unshuffled
    assert loader == ranges(Dataset("cal", "all", x[:512], torch.full((512,), -1), 0, infer_value_range(x[:512])))
    with pytest.raises(DatasetError, match="'training_data' has no labels, and training needs one per sample"):
        rramc.compile(graph, "rram_a", calibration_data=x, training_data=x)


def test_compile_reads_an_image_folder_with_the_networks_channels(tmp_path: Path) -> None:
    write_folder(tmp_path / "colour", {"a": 3, "b": 3})
    graph = import_module(models.mlp(64, 10).eval(), torch.rand(2, 1, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RramcWarning)
        exe = rramc.compile(graph, "ideal", calibration_data=tmp_path / "colour")
    assert exe.graph.inputs[0].op.value_range == (0.0, 1.0)


# --- the command line ----------------------------------------------------------------------------


def cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250", "NO_COLOR": "1"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"rramc {' '.join(map(str, args))} crashed: {result.exception!r}")
    return result.exit_code, ANSI.sub("", result.stdout), ANSI.sub("", result.stderr)


def cli_fails(folder: Path, *args: object) -> str:
    """The command must fail with one message and leave ``folder`` as it was."""
    before = set(os.listdir(folder))
    code, out, err = cli(*args)
    assert code == 1 and err.lstrip().startswith("error: ") and err.count("error:") == 1 and "Traceback" not in out + err, err
    assert set(os.listdir(folder)) == before, "left files behind"
    return " ".join(err.strip().removeprefix("error: ").split())


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, write_digits_mlp) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """The digits MLP's files, a factory module for its state dict, and data files of 8×8 images."""
    folder = tmp_path_factory.mktemp("user_data_cli")
    paths = write_digits_mlp(folder)
    (folder / "nets.py").write_text("from rramc.samples import models\n\n\ndef small():\n    return models.mlp(64, 32, 10)\n")
    digits = rramc.load_dataset("digits", "test").take(120)
    np.savez(folder / "digits.npz", images=digits.images.numpy()[:, 0], labels=digits.labels.numpy())
    np.savez(folder / "unlabelled.npz", images=digits.images.numpy())
    np.savez(folder / "small.npz", images=RNG.random((10, 5, 5)), labels=np.arange(10))
    torch.save({"images": digits.images.numpy(), "labels": digits.labels.numpy()}, folder / "pickled.pt")
    for i, (image, label) in enumerate(zip(digits.images[:40], digits.labels[:40])):
        (folder / "images" / str(int(label))).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(folder / "images" / str(int(label)) / f"{i}.png")
    return {**paths, "dir": folder, "nets": folder / "nets.py"}


def test_compile_calibrates_on_a_data_file_and_says_its_range(work: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "mine.rramx"
    code, stdout, err = cli("compile", work["pt2"], "-t", "rram_a", "-o", out, "--calibration", work["dir"] / "digits.npz")
    assert code == 0, err
    assert "calibrating on 120 samples of digits.npz: the network's inputs are declared in [0, 1]" in stdout
    exe = rramc.load_executable(out)
    assert exe.metadata["calibration"] == "digits.npz" and exe.graph.inputs[0].op.value_range == (0.0, 1.0)


def test_a_state_dict_takes_its_input_shape_from_an_image_folder(work: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "state.rramx"
    code, _, err = cli("compile", work["state"], "--model", f"{work['nets']}:small", "-t", "ideal", "-o", out,
                       "--calibration", work["dir"] / "images")
    assert code == 0, err
    assert rramc.load_executable(out).graph.inputs[0].shape == (1, 8, 8)


def test_run_on_a_data_file_and_on_a_folder_matches_the_python_run(work: dict[str, Path], tmp_path: Path) -> None:
    exe = rramc.load_executable(work["exe"])
    for data in (work["dir"] / "digits.npz", work["dir"] / "images"):
        code, stdout, err = cli("run", work["exe"], "--dataset", data, "--json", tmp_path / "report.json")
        assert code == 0, err
        report = exe.run(load_data_file(data, shape=(1, 8, 8)))
        written = json.loads((tmp_path / "report.json").read_text())
        assert (written["dataset"], written["samples"]) == (data.name, report.samples) and report.samples in (40, 120)
        assert written["chip_accuracy"] == pytest.approx(report.chip_accuracy)


def test_command_line_data_errors_are_located_and_write_nothing(work: dict[str, Path], tmp_path: Path) -> None:
    d = work["dir"]
    message = cli_fails(tmp_path, "run", work["exe"], "--dataset", d / "unlabelled.npz", "--json", tmp_path / "r.json")
    assert "'unlabelled.npz' has no labels, and evaluating needs one per sample" in message
    message = cli_fails(tmp_path, "run", work["exe"], "--dataset", d / "small.npz", "--json", tmp_path / "r.json")
    assert "'small.npz' has samples of shape [1, 5, 5]" in message and "the network takes [1, 8, 8]" in message
    message = cli_fails(tmp_path, "compile", work["pt2"], "-t", "ideal", "-o", tmp_path / "x.rramx", "-c", d / "pickled.pt")
    assert "pickled.pt holds pickled Python objects" in message and "--trust-data" in message
    message = cli_fails(tmp_path, "compile", work["pt2"], "-t", "ideal", "-o", tmp_path / "x.rramx", "-c", d / "absent.npz")
    assert "absent.npz does not exist" in message
    message = cli_fails(tmp_path, "compile", work["pt2"], "-t", "ideal", "-o", tmp_path / "x.rramx", "--reconstruct",
                        "--dataset", d / "unlabelled.npz")
    assert "'unlabelled.npz' has no labels, and training (--reconstruct) needs one per sample" in message
    message = cli_fails(tmp_path, "compile", d / "digits.npz", "-t", "ideal", "-o", tmp_path / "x.rramx")
    assert "digits.npz is a numpy data file, not a model: give it to --calibration or --dataset" in message
    torch.save({"images": torch.zeros(2, 64)}, tmp_path / "data_as_model.pt")
    message = cli_fails(tmp_path, "compile", tmp_path / "data_as_model.pt", "-t", "ideal", "-o", tmp_path / "x.rramx")
    assert "holds data" in message and "give it to --calibration or --dataset" in message


def test_trusted_pickled_data_is_accepted(work: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "trusted.rramx"
    code, _, err = cli("compile", work["pt2"], "-t", "ideal", "-o", out, "-c", work["dir"] / "pickled.pt", "--trust-data")
    assert code == 0, err
    code, stdout, err = cli("run", out, "--dataset", work["dir"] / "pickled.pt", "--trust-data")
    assert code == 0 and "pickled.pt (all, 120 samples)" in stdout, err


def test_reconstruct_trains_on_a_data_file(work: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rebuilt.rramx"
    code, _, err = cli("compile", work["pt2"], "-t", "rram_a", "-o", out, "--reconstruct", "--epochs", "1",
                       "--dataset", work["dir"] / "digits.npz")
    assert code == 0, err
    exe = rramc.load_executable(out)
    assert exe.metadata["calibration"] == "digits.npz"
    assert {n.op.trained_for.epochs for n in exe.graph.nodes_of(CrossbarOp)} == {1}


def test_sweep_holds_out_part_of_a_data_file(work: dict[str, Path], tmp_path: Path) -> None:
    code, stdout, err = cli("sweep", work["pt2"], "-t", "ideal", "-o", tmp_path / "sweep", "--dataset", work["dir"] / "digits.npz",
                            "--adc-bits", "6,8", "--no-reconstruct")
    assert code == 0, err
    assert "digits.npz has no train and test splits of its own: training on 96 of its samples, evaluating on the other 24" \
        in " ".join(stdout.split())
    assert (tmp_path / "sweep" / "sweep.csv").exists()
