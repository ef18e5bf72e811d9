"""canonicalize: the IR before and after, and the float outputs unchanged."""

from __future__ import annotations

import torch
import torch.nn as nn

from rramc.frontend import import_module
from rramc.hardware import load_target
from rramc.ir import AvgPool2d, ChannelAffine, Clamp
from rramc.pipeline import CompileContext, make_pass
from rramc.hardware.interpreter import FloatKernel, Interpreter


def canonicalize(graph, **options):  # type: ignore[no-untyped-def]
    graph = make_pass("canonicalize", options).run(graph, CompileContext(load_target("ideal")))
    graph.verify()
    return graph


def test_batch_norm_folds_into_conv_and_linear(trained_cnn: nn.Module, residual_cnn: nn.Module) -> None:
    for model in (trained_cnn, residual_cnn):
        x = torch.rand(8, 1, 8, 8)
        graph = import_module(model, x)
        assert "batch_norm" in {n.op.kind for n in graph}
        after = canonicalize(graph.copy())
        assert "batch_norm" not in {n.op.kind for n in after}
        assert after.node("features_0" if "features_0" in after else "stem_0").meta["folded"]
        torch.testing.assert_close(Interpreter(after, FloatKernel())(x), model(x), rtol=1e-5, atol=1e-5)


def test_unfoldable_batch_norm_becomes_a_digital_affine() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(1)
    bn.running_mean.fill_(0.3)
    bn.running_var.fill_(2.0)
    model = nn.Sequential(bn, nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(4, 1, 4, 4)
    after = canonicalize(import_module(model, x))
    assert [n.op.kind for n in after][1:-1] == ["channel_affine", "reshape", "linear"]
    assert isinstance(after.node("0").op, ChannelAffine)
    torch.testing.assert_close(Interpreter(after, FloatKernel())(x), model(x))
    # With folding switched off, even a foldable norm stays digital.
    folded_off = canonicalize(import_module(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)).eval(), x), fold_batch_norm=False)
    assert "channel_affine" in [n.op.kind for n in folded_off]


def test_relu_then_clamp_becomes_one_clipped_relu_and_reshapes_collapse() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):  # type: ignore[no-untyped-def]
            y = torch.relu(x.view(x.size(0), 2, 4).reshape(x.size(0), 8))
            return self.fc(torch.clamp(y, max=0.5))

    x = torch.randn(5, 8)
    net = Net()
    graph = import_module(net, x)
    assert [n.op.kind for n in graph][1:-1] == ["reshape", "reshape", "relu", "clamp", "linear"]
    after = canonicalize(graph)
    assert [n.op.kind for n in after][1:-1] == ["clamp", "linear"]
    clamp = after.nodes_of(Clamp)[0].op
    assert (clamp.low, clamp.high) == (0.0, 0.5)
    torch.testing.assert_close(Interpreter(after, FloatKernel())(x), net(x))


def test_exact_adaptive_pooling_becomes_average_pooling() -> None:
    model = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.rand(3, 1, 6, 6)
    after = canonicalize(import_module(model, x))
    pool = after.nodes_of(AvgPool2d)[0].op
    assert pool.kernel_size == (3, 3) and pool.stride == (3, 3)
    torch.testing.assert_close(Interpreter(after, FloatKernel())(x), model(x))
    # 7 → 3 has no exact window: the adaptive op stays (the runtime executes it digitally).
    inexact = canonicalize(import_module(nn.Sequential(nn.AdaptiveAvgPool2d(3)).eval(), torch.rand(1, 1, 7, 7)))
    assert "adaptive_avg_pool2d" in [n.op.kind for n in inexact]
