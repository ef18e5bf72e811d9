"""The frontend: torch.fx and torch.export networks imported into the IR compute what PyTorch does."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rramc.errors import FrontendError
from rramc.frontend import import_exported, import_module, load_model, save_exported
from rramc.ir import BatchNorm, Clamp, Conv2d, Linear, MaxPool2d, ReLU, Reshape
from rramc.hardware.interpreter import FloatKernel, Interpreter
from rramc.samples import sample_path


class Everything(nn.Module):
    """Every supported construct, in module and functional form."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding="same", dilation=1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.adaptive = nn.AdaptiveAvgPool2d(2)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, 12)
        self.bn1d = nn.BatchNorm1d(12)
        self.act6 = nn.ReLU6()
        self.out = nn.Linear(12, 10)

    def forward(self, x):  # type: ignore[no-untyped-def]
        y = F.hardtanh(self.bn(self.conv(x)), 0.0, 1.0)
        y = y + torch.relu(self.conv2(y))
        y = self.adaptive(F.avg_pool2d(self.pool(y), 1))
        y = torch.clamp(y, 0, 1).view(y.size(0), -1)
        y = self.act6(self.bn1d(self.drop(self.fc(y))))
        return self.out(y.clamp(max=1.0))


@pytest.fixture
def everything() -> nn.Module:
    torch.manual_seed(0)
    model = Everything()
    for bn in (model.bn, model.bn1d):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def kinds(graph) -> list[str]:  # type: ignore[no-untyped-def]
    return [n.op.kind for n in graph][1:-1]


def test_fx_import_reproduces_pytorch(everything: nn.Module) -> None:
    x = torch.rand(5, 1, 7, 7)
    graph = import_module(everything, x)
    assert kinds(graph) == ["conv2d", "batch_norm", "clamp", "conv2d", "relu", "add", "max_pool2d", "avg_pool2d",
                            "adaptive_avg_pool2d", "clamp", "reshape", "linear", "batch_norm", "clamp", "clamp", "linear"]
    assert graph.node("fc").meta == {"source": "fc", "module_type": "Linear"}
    assert graph.node("conv2").op.padding == (1, 1)
    torch.testing.assert_close(Interpreter(graph, FloatKernel())(x), everything(x), rtol=1e-5, atol=1e-6)


def test_export_import_matches_fx_import(everything: nn.Module, tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = torch.rand(3, 1, 7, 7)
    save_exported(everything, x[:1], tmp_path / "m.pt2", dataset="digits")
    loaded = load_model(tmp_path / "m.pt2")
    assert loaded.metadata == {"dataset": "digits"}
    assert [type(n.op) for n in loaded.graph] == [type(n.op) for n in import_module(everything, x)]
    torch.testing.assert_close(Interpreter(loaded.graph, FloatKernel())(x), everything(x), rtol=1e-5, atol=1e-6)
    # Layer names come from the module hierarchy, also for ATen ops.
    assert {n.source for n in loaded.graph.nodes_of(Linear)} == {"fc", "out"}


def test_saved_archives_carry_no_paths_of_the_exporting_machine(everything: nn.Module, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # torch.export records a stack trace per node, with absolute paths of this test file and of torch.
    save_exported(everything, torch.rand(1, 1, 7, 7), tmp_path / "m.pt2")
    archives = {"saved here": tmp_path / "m.pt2", "shipped sample": sample_path("digits_mlp.pt2")}
    for label, path in archives.items():
        with zipfile.ZipFile(path) as archive:
            text = b"".join(archive.read(name) for name in archive.namelist()).decode("latin-1")
        assert __file__ not in text and str(Path(torch.__file__).parents[1]) not in text, label
        assert all("stack_trace" not in n.meta for n in torch.export.load(str(path)).graph.nodes), label


def test_nested_modules_keep_their_paths(trained_cnn: nn.Module) -> None:
    graph = import_module(trained_cnn, torch.rand(2, 1, 8, 8))
    assert [n.source for n in graph.nodes_of(Conv2d)] == ["features.0", "features.4"]
    assert [n.source for n in graph.nodes_of(BatchNorm)] == ["features.1", "features.5"]
    assert len(graph.nodes_of(MaxPool2d)) == 2 and len(graph.nodes_of(Clamp)) == 2


def test_unsupported_ops_are_all_reported_at_once() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")

        def forward(self, x):  # type: ignore[no-untyped-def]
            ordered, _ = torch.sort(torch.cumsum(self.conv(x), -1), dim=-1)
            return torch.special.i0(ordered)

    with pytest.raises(FrontendError) as info:
        import_module(Odd(), torch.rand(1, 4, 6, 6), "odd.pt2")
    message = str(info.value)
    assert message.startswith("odd.pt2: 4 unsupported operation(s)")
    for expected in ("Conv2d at layer 'conv' (fx node conv): padding_mode='reflect' is not supported",
                     "cumsum", "sort", "special_i0"):
        assert expected in message
    # consequences of an unsupported op are not reported again: not the output, not taking an element of sort's result
    assert "output" not in message and "getitem" not in message


def test_constant_add_and_multiple_outputs_are_refused() -> None:
    class Shift(nn.Module):  # a constant that differs from sample to sample: it would add one row per sample
        def forward(self, x):  # type: ignore[no-untyped-def]
            return x.flatten(1) + torch.arange(3.0).reshape(3, 1)

    with pytest.raises(FrontendError, match="varies along the batch dimension"):
        import_module(Shift(), torch.rand(1, 4))

    class Two(nn.Module):
        def forward(self, x):  # type: ignore[no-untyped-def]
            return x.relu(), x

    with pytest.raises(FrontendError, match="returns several values"):
        import_module(Two(), torch.rand(1, 4))


def test_identity_reshapes_and_dropout_disappear() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Identity(), nn.Linear(4, 2))
    graph = import_module(model, torch.rand(2, 4))
    assert kinds(graph) == ["linear"]
    graph = import_module(nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)), torch.rand(2, 1, 2, 2))
    assert [type(n.op) for n in graph][1:-1] == [ReLU, Reshape, Linear]


def test_export_with_core_aten_decompositions(everything: nn.Module) -> None:
    """Programs run through core-ATen decompositions (addmm, convolution) still import."""
    x = torch.rand(2, 1, 7, 7)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 3)).eval()
    program = torch.export.export(model, (x,)).run_decompositions()
    targets = {str(n.target) for n in program.graph.nodes}
    assert "aten.addmm.default" in targets and "aten.convolution.default" in targets
    graph = import_exported(program)
    assert kinds(graph) == ["conv2d", "relu", "avg_pool2d", "reshape", "linear"]
    torch.testing.assert_close(Interpreter(graph, FloatKernel())(x), model(x), rtol=1e-5, atol=1e-6)
