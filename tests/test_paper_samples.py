"""The paper's sample networks, their training script, and CIFAR-10 cropped to 28×28×3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

import rramc
from rramc.cli import app
from rramc.datasets.cifar import write_cifar_batch
from rramc.datasets.idx import write_idx
from rramc.frontend import import_module, save_exported
from rramc.ir import CrossbarOp, Linear
from rramc.samples import models, train

runner = CliRunner()


def test_the_paper_architectures() -> None:
    for factory, sizes in [(models.paper_mlp, [784, 500, 250, 10]),
                           (models.paper_deep_mlp, [784, 2500, 2000, 1500, 1000, 500, 10]),
                           (models.paper_cifar_mlp, [2352, 4000, 1000, 4000, 10])]:
        model = factory()
        graph = import_module(model, torch.rand(2, sizes[0]))
        layers = graph.nodes_of(Linear)
        assert [n.op.weight.shape[1] for n in layers] + [layers[-1].op.weight.shape[0]] == sizes
        assert [n.op.kind for n in graph].count("clamp") == len(sizes) - 2  # clipped ReLU after every hidden layer


def write_mnist(directory: Path, count: int = 64) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, count).astype(np.uint8)
    images = (rng.random((count, 28, 28)) * 60).astype(np.uint8)
    for i, label in enumerate(labels):  # a learnable pattern: a bright row per class
        images[i, 2 + 2 * label, :] = 255
    for split in ("train", "t10k"):
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", labels)


def test_training_script_saves_a_compilable_archive(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    write_mnist(tmp_path)
    out = tmp_path / "cnn.pt2"
    train.main(["--model", "mnist_cnn", "--dataset", "mnist", "--data-dir", str(tmp_path), "--epochs", "2",
                "--batch-size", "16", "-o", str(out)])
    assert "test accuracy" in capsys.readouterr().out
    result = runner.invoke(app, ["compile", str(out), "-t", "rram_a", "-o", str(tmp_path / "cnn.rramx"), "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    exe = rramc.load_executable(tmp_path / "cnn.rramx")
    assert exe.metadata["model.architecture"] == "mnist_cnn" and exe.metadata["calibration"] == "mnist"


def test_cifar_images_are_cropped_for_the_cifar_mlp(tmp_path: Path) -> None:
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(batches / name, (rng.random((20, 3, 32, 32)) * 255).astype(np.uint8), rng.integers(0, 10, 20).tolist())
    model = models.mlp(2352, 16, 10, clipped=True)
    save_exported(model, torch.rand(1, 3, 28, 28), tmp_path / "cifar.pt2", dataset="cifar10", crop=28)
    out = tmp_path / "cifar.rramx"
    result = runner.invoke(app, ["compile", str(tmp_path / "cifar.pt2"), "-t", "rram_b", "-o", str(out), "--data-dir", str(tmp_path),
                                 "--reconstruct", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert [n.op.matrix_shape for n in rramc.load_executable(out).graph.nodes_of(CrossbarOp)] == [(2352, 16), (16, 10)]
    result = runner.invoke(app, ["run", str(out), "--dataset", "cifar10", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "cifar10 (test, 20 samples)" in result.output
    wrong = runner.invoke(app, ["compile", str(tmp_path / "cifar.pt2"), "-t", "rram_b", "-o", str(tmp_path / "x.rramx"),
                                "--calibration", "digits"])
    assert wrong.exit_code == 1 and "but the network takes [3, 28, 28]" in wrong.output
