"""Shared fixtures: the digits data, small trained networks (trained once per session), ngspice."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from rramc.datasets import Dataset, load_dataset
from rramc.samples import models
from rramc.training import TrainConfig, train_classifier


@pytest.fixture(scope="session")
def digits_train() -> Dataset:
    return load_dataset("digits", "train")


@pytest.fixture(scope="session")
def digits_test() -> Dataset:
    return load_dataset("digits", "test")


@pytest.fixture(scope="session")
def trained_mlp(digits_train: Dataset) -> nn.Module:
    """64-48-32-10 ReLU MLP, about 96 % on digits."""
    torch.manual_seed(0)
    return train_classifier(models.mlp(64, 48, 32, 10), digits_train, TrainConfig(epochs=15, lr=0.05, batch_size=64))


@pytest.fixture(scope="session")
def trained_cnn(digits_train: Dataset) -> nn.Module:
    """The small CNN with BatchNorm and clipped ReLU, trained briefly."""
    torch.manual_seed(0)
    return train_classifier(models.SmallCNN(1, 8, 10), digits_train, TrainConfig(epochs=6, lr=0.05, batch_size=64))


@pytest.fixture(scope="session")
def residual_cnn() -> nn.Module:
    """An untrained residual CNN whose BatchNorm statistics are not the identity."""
    torch.manual_seed(1)
    model = models.ResidualCNN(1, 8, 10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


class LinearUsedTwice(nn.Module):
    """One Linear applied twice (its parameters, one set of arrays), then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(torch.relu(self.fc(x)))))


@pytest.fixture(scope="session")
def linear_used_twice() -> Callable[[], nn.Module]:
    """Makes a fresh :class:`LinearUsedTwice` in eval mode (16 inputs, 4 outputs)."""
    return lambda: LinearUsedTwice().eval()


def _write_digits_mlp(folder: Path) -> dict[str, Path]:
    """An untrained 64-32-10 MLP for digits in ``folder`` as the CLI meets models: ``pt2`` (a torch.export
    archive recording its data set), ``state`` (its state_dict) and ``exe`` (compiled for ``ideal``)."""
    from typer.testing import CliRunner

    from rramc.cli import app
    from rramc.frontend import save_exported

    torch.manual_seed(0)
    model = models.mlp(64, 32, 10).eval()
    paths = {"pt2": folder / "mlp.pt2", "state": folder / "mlp_state.pt", "exe": folder / "mlp.rramx"}
    save_exported(model, torch.rand(2, 1, 8, 8), paths["pt2"], dataset="digits")
    torch.save(model.state_dict(), paths["state"])
    result = CliRunner().invoke(app, ["compile", str(paths["pt2"]), "-t", "ideal", "-o", str(paths["exe"])])
    assert result.exit_code == 0, result.output
    return paths


@pytest.fixture(scope="session")
def write_digits_mlp() -> Callable[[Path], dict[str, Path]]:
    """Writes the bad-input tests' model files into a folder (see :func:`_write_digits_mlp`)."""
    return _write_digits_mlp


@pytest.fixture(scope="session")
def ngspice() -> str:
    """The circuit simulator's path; missing, the test skips, or fails under RRAMC_REQUIRE_NGSPICE=1 (CI)."""
    path = shutil.which("ngspice")
    if path is None:
        if os.environ.get("RRAMC_REQUIRE_NGSPICE") == "1":
            pytest.fail("ngspice is not on PATH but RRAMC_REQUIRE_NGSPICE=1 requires the circuit-simulator reference")
        pytest.skip("ngspice is not on PATH (set RRAMC_REQUIRE_NGSPICE=1 to make this a failure)")
    return path
