"""The digital tensor ops: every spelling users write, from PyTorch to the chip.

Each case is a small network around one op spelling. It is imported with torch.fx and (for one
spelling of each ATen op) through torch.export, with and without core-ATen decompositions;
compiled for ``ideal``; and run on the chip, which must equal PyTorch within 1e-5 of the output's
scale. Its IR text and its executable file round-trip. Bounds are checked against sampled values,
refusals for their located messages, and ``reconstruct`` for training through the new ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rramc
from rramc.datasets import Dataset
from rramc.errors import FrontendError, VerifyError
from rramc.frontend import import_exported, import_module
from rramc.hardware.calibration import value_bounds
from rramc.ir import (
    Activation, Affine, Binary, Concat, CrossbarOp, Graph, Input, LayerNorm, Linear, PReLU, Reduce, Softmax, Where,
)
from rramc.ir.tensor_ops import ACTIVATION_FUNCTIONS
from rramc.runtime.executable import Executable


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    assert actual.shape == expected.shape
    error = float((actual - expected).abs().max())
    assert error <= rel * float(expected.abs().max()), f"max error {error:.3g} vs scale {float(expected.abs().max()):.3g}"


class Net(nn.Module):
    """One op spelling under test: ``forward`` is the case's function of (this module, x)."""

    def __init__(self, function: Callable[..., torch.Tensor], layers: tuple[nn.Module, ...],
                 constants: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.function = function
        self.layers = nn.ModuleList(layers)
        for name, value in constants.items():
            self.register_parameter(name, nn.Parameter(value, requires_grad=False))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.function(self, x)


@dataclass(frozen=True)
class Case:
    name: str
    function: Callable[..., torch.Tensor]
    shape: tuple[int, ...]
    kind: str
    """An op kind the imported graph must contain (the op this spelling maps to)."""
    layers: Callable[[], tuple[nn.Module, ...]] = tuple
    constants: Callable[[], dict[str, torch.Tensor]] = dict
    export: str = ""
    """"": torch.fx only (another spelling of the same ATen op is exported); "plain": also torch.export;
    "both": also torch.export with core-ATen decompositions."""
    positive: bool = False

    def build(self) -> tuple[nn.Module, torch.Tensor]:
        torch.manual_seed(0)
        model = Net(self.function, self.layers(), self.constants())
        with torch.no_grad():  # parameters that are not the default (ones, zeros, 0.25), so they are tested
            for p in model.layers.parameters():
                p.copy_(torch.rand_like(p) + 0.25)
        x = torch.randn(4, *self.shape)
        return model.eval(), (x.abs() + 0.1 if self.positive else x)


def first(s: Net, x: torch.Tensor) -> torch.Tensor:
    return s.layers[0](x)


def gated(s: Net, x: torch.Tensor) -> torch.Tensor:
    a, b = torch.chunk(x, 2, -1)
    return a * b.sigmoid()


CASES = [
    # activations: modules, functions, methods
    Case("GELU", first, (6,), "activation", lambda: (nn.GELU(),), export="both"),
    Case("GELU tanh", first, (6,), "activation", lambda: (nn.GELU(approximate="tanh"),), export="plain"),
    Case("F.gelu", lambda s, x: F.gelu(x), (6,), "activation"),
    Case("F.gelu tanh", lambda s, x: F.gelu(x, approximate="tanh"), (6,), "activation"),
    Case("SiLU", first, (6,), "activation", lambda: (nn.SiLU(),), export="both"),
    Case("F.silu", lambda s, x: F.silu(x), (6,), "activation"),
    Case("Sigmoid", first, (6,), "activation", lambda: (nn.Sigmoid(),), export="both"),
    Case("torch.sigmoid", lambda s, x: torch.sigmoid(x), (6,), "activation"),
    Case("F.sigmoid", lambda s, x: F.sigmoid(x), (6,), "activation"),
    Case("x.sigmoid()", lambda s, x: x.sigmoid(), (6,), "activation"),
    Case("Tanh", first, (6,), "activation", lambda: (nn.Tanh(),), export="both"),
    Case("torch.tanh", lambda s, x: torch.tanh(x), (6,), "activation"),
    Case("x.tanh()", lambda s, x: x.tanh(), (6,), "activation"),
    Case("LeakyReLU", first, (6,), "activation", lambda: (nn.LeakyReLU(0.2),), export="both"),
    Case("F.leaky_relu", lambda s, x: F.leaky_relu(x, 0.05), (6,), "activation"),
    Case("ELU", first, (6,), "activation", lambda: (nn.ELU(0.7),), export="both"),
    Case("F.elu", lambda s, x: F.elu(x), (6,), "activation"),
    Case("Hardswish", first, (6,), "activation", lambda: (nn.Hardswish(),), export="both"),
    Case("F.hardswish", lambda s, x: F.hardswish(x * 4), (6,), "activation"),
    Case("Hardsigmoid", first, (6,), "activation", lambda: (nn.Hardsigmoid(),), export="both"),
    Case("F.hardsigmoid", lambda s, x: F.hardsigmoid(x * 4), (6,), "activation"),
    Case("Softplus", first, (6,), "activation", lambda: (nn.Softplus(),), export="both"),
    Case("F.softplus", lambda s, x: F.softplus(x), (6,), "activation"),
    Case("Mish", first, (6,), "activation", lambda: (nn.Mish(),), export="both"),
    Case("F.mish", lambda s, x: F.mish(x), (6,), "activation"),
    Case("PReLU per channel", first, (3, 5), "prelu", lambda: (nn.PReLU(3),), export="both"),
    Case("PReLU single", first, (3, 5), "prelu", lambda: (nn.PReLU(),), export="plain"),
    Case("F.prelu", lambda s, x: F.prelu(x, s.slope), (3, 4, 4), "prelu",
         constants=lambda: {"slope": torch.tensor([0.1, -0.2, 0.3])}),
    Case("exp, neg, abs", lambda s, x: torch.exp(-x.abs()) + x.exp().neg(), (6,), "activation", export="both"),
    Case("sqrt, rsqrt, reciprocal", lambda s, x: x.sqrt() + torch.rsqrt(x) + x.reciprocal() + torch.sqrt(x), (6,),
         "activation", export="both", positive=True),
    Case("log1p", lambda s, x: torch.log1p(x) + x.log1p(), (6,), "activation", export="plain", positive=True),
    Case("torch.where", lambda s, x: torch.where(x > 0.2, x, 0.1 * x) + torch.where(0 >= x, x * x, x), (6,), "where",
         export="both"),
    # arithmetic with constants and between activations
    Case("(x - 0.5) / 0.25", lambda s, x: (x - 0.5) / 0.25, (3, 4, 4), "affine", export="both"),
    Case("1 - x", lambda s, x: 1 - x, (6,), "affine", export="both"),
    Case("2 * x + 1, 3 / x", lambda s, x: 2 * x + 1 + 3 / (x * x + 1), (6,), "affine", export="both"),
    Case("torch.sub, mul, div", lambda s, x: torch.div(torch.mul(torch.sub(x, 0.5), 2.0), 3.0) + x.sub(1).mul(2).div(4),
         (6,), "affine"),
    Case("normalise with buffers", lambda s, x: (x - s.mean) / s.std, (3, 4, 4), "affine", export="both",
         constants=lambda: {"mean": torch.tensor([0.1, 0.2, 0.3]).reshape(3, 1, 1),
                            "std": torch.tensor([0.5, 1.5, 2.0]).reshape(3, 1, 1)}),
    Case("learned positional embedding", lambda s, x: x + s.position, (5, 8), "affine", export="both",
         constants=lambda: {"position": torch.randn(1, 5, 8)}),
    Case("parameter arithmetic in forward", lambda s, x: x * (s.gain * 2 + 1).view(1, -1), (4,), "affine", export="plain",
         constants=lambda: {"gain": torch.randn(4)}),
    Case("activation - activation", lambda s, x: x - x.relu(), (6,), "binary", export="both"),
    Case("activation * activation (broadcast)", lambda s, x: x * x.mean(-1, keepdim=True), (3, 6), "binary", export="both"),
    Case("activation / activation", lambda s, x: x / (x * x + 1), (6,), "binary", export="both"),
    Case("torch.add alpha", lambda s, x: torch.add(x, x.relu(), alpha=2), (6,), "affine", export="both"),
    Case("maximum, minimum", lambda s, x: torch.maximum(x, x.sigmoid()) + torch.minimum(x, -x) + torch.max(x, x * 2),
         (6,), "binary", export="both"),
    Case("x ** 2, pow 0.5", lambda s, x: x ** 2 + x.pow(0.5) + torch.pow(x, -1), (6,), "binary", export="both", positive=True),
    Case("RMS norm", lambda s, x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6), (3, 8), "reduce", export="plain"),
    # shapes, indexing
    Case("x.reshape(x.shape[0], -1)", lambda s, x: x.reshape(x.shape[0], -1), (3, 2, 2), "reshape", export="both"),
    Case("x.view(x.size(0), -1)", lambda s, x: x.view(x.size(0), -1), (3, 2, 2), "reshape"),
    Case("Unflatten", first, (8,), "reshape", lambda: (nn.Unflatten(1, (2, 4)),), export="both"),
    Case("unsqueeze, squeeze", lambda s, x: x.unsqueeze(1).squeeze(1) + torch.unsqueeze(x, -1).squeeze(-1), (3, 4), "reshape"),
    Case("unsqueeze", lambda s, x: x.unsqueeze(2), (3, 4), "reshape", export="both"),
    Case("permute", lambda s, x: x.permute(0, 2, 1), (3, 4), "permute", export="both"),
    Case("torch.permute 4-D", lambda s, x: torch.permute(x, (0, 3, 1, 2)), (3, 4, 5), "permute"),
    Case("transpose", lambda s, x: x.transpose(1, 2), (3, 4), "permute", export="both"),
    Case("torch.transpose, mT", lambda s, x: torch.transpose(x, -1, -2) + x.mT, (3, 3), "permute"),
    Case("x[:, 0]", lambda s, x: x[:, 0], (3, 4), "slice", export="both"),
    Case("x[:, -1, :]", lambda s, x: x[:, -1, :], (3, 4), "slice", export="both"),
    Case("x[:, 1:3, ::2]", lambda s, x: x[:, 1:3, ::2], (4, 5), "slice", export="both"),
    Case("x[..., 0:2]", lambda s, x: x[..., 0:2], (3, 4, 4), "slice", export="both"),
    Case("x[:, None, 1]", lambda s, x: x[:, None, 1], (3, 4), "slice", export="both"),
    Case("chunk", lambda s, x: x.chunk(2, dim=1)[1] * 2, (5, 4), "slice", export="both"),
    Case("torch.chunk unpacked", gated, (3, 8), "slice"),
    Case("split", lambda s, x: x.split([1, 2], dim=1)[1] + torch.split(x, 2, 1)[0].sum(1, keepdim=True), (3, 4), "slice",
         export="both"),
    Case("expand", lambda s, x: x[:, :1].expand(-1, 3, -1) + x, (3, 5), "affine", export="both"),
    Case("expand_as", lambda s, x: x.mean(1, keepdim=True).expand_as(x), (3, 5), "affine"),
    Case("torch.cat", lambda s, x: torch.cat([x, x.relu(), -x], 1), (3, 4, 4), "concat", export="both"),
    Case("class token", lambda s, x: torch.cat([s.token.expand(x.shape[0], -1, -1), x, s.token.expand(x.shape[0], -1, -1)], 1),
         (3, 4), "concat", export="both", constants=lambda: {"token": torch.randn(1, 1, 4)}),
    Case("torch.cat dim -1", lambda s, x: torch.concat([x, x.sigmoid()], dim=-1), (3, 4), "concat"),
    Case("torch.stack", lambda s, x: torch.stack([x, x.tanh()], 1), (3, 4), "concat", export="both"),
    # activation × activation
    Case("x @ x.mT", lambda s, x: x @ x.transpose(-2, -1), (3, 4), "matmul", export="both"),
    Case("torch.matmul 4-D", lambda s, x: torch.matmul(x, x.transpose(-1, -2)).softmax(-1) @ x, (2, 3, 4), "matmul",
         export="plain"),
    Case("torch.bmm", lambda s, x: torch.bmm(x, x.mT) + x.matmul(x.mT), (3, 4), "matmul", export="both"),
    # normalisation, reductions
    Case("Softmax", first, (3, 6), "softmax", lambda: (nn.Softmax(-1),), export="both"),
    Case("Softmax dim 1", first, (3, 6), "softmax", lambda: (nn.Softmax(dim=1),)),
    Case("LogSoftmax", first, (6,), "softmax", lambda: (nn.LogSoftmax(1),), export="both"),
    Case("F.softmax, x.softmax", lambda s, x: F.softmax(x, -1) + x.softmax(1) + torch.softmax(x, 2), (3, 4), "softmax"),
    Case("F.log_softmax", lambda s, x: F.log_softmax(x, dim=-1) + torch.log_softmax(x, 1), (6,), "softmax"),
    Case("Softmax2d", first, (3, 4, 4), "softmax", lambda: (nn.Softmax2d(),)),
    Case("LayerNorm", first, (3, 8), "layer_norm", lambda: (nn.LayerNorm(8),), export="both"),
    Case("LayerNorm 2-D", first, (3, 8), "layer_norm", lambda: (nn.LayerNorm([3, 8]),), export="plain"),
    Case("LayerNorm without affine", first, (8,), "layer_norm", lambda: (nn.LayerNorm(8, elementwise_affine=False),)),
    Case("F.layer_norm", lambda s, x: F.layer_norm(x, (8,), s.w, s.b, 1e-3), (3, 8), "layer_norm",
         constants=lambda: {"w": torch.rand(8) + 0.5, "b": torch.randn(8)}),
    Case("mean over H, W", lambda s, x: x.mean(dim=(2, 3)), (3, 4, 4), "reduce", export="both"),
    Case("mean keepdim", lambda s, x: x - torch.mean(x, -1, keepdim=True), (3, 4), "reduce"),
    Case("sum", lambda s, x: x.sum(1) + torch.sum(x, dim=1), (3, 4), "reduce", export="both"),
    Case("amax, amin", lambda s, x: x.amax(-1) - torch.amin(x, dim=-1), (3, 4), "reduce", export="both"),
    Case("max(dim).values", lambda s, x: x.max(dim=1).values + torch.max(x, 1)[0] + x.min(1, keepdim=True)[0].squeeze(1),
         (3, 4), "reduce", export="both"),
    # spatial
    Case("Upsample nearest", first, (3, 4, 4), "interpolate", lambda: (nn.Upsample(scale_factor=2),), export="both"),
    Case("Upsample bilinear size", first, (3, 4, 4), "interpolate",
         lambda: (nn.Upsample(size=(7, 9), mode="bilinear", align_corners=True),), export="both"),
    Case("UpsamplingNearest2d, UpsamplingBilinear2d", lambda s, x: s.layers[0](x) + s.layers[1](x), (3, 4, 4), "interpolate",
         lambda: (nn.UpsamplingNearest2d(scale_factor=2), nn.UpsamplingBilinear2d(scale_factor=2))),
    Case("F.interpolate scale 1.5", lambda s, x: F.interpolate(x, scale_factor=1.5), (3, 5, 5), "interpolate", export="both"),
    Case("F.interpolate bilinear", lambda s, x: F.interpolate(x, scale_factor=1.7, mode="bilinear"), (3, 5, 5), "interpolate",
         export="both"),
    Case("AdaptiveMaxPool2d", first, (3, 5, 7), "adaptive_max_pool2d", lambda: (nn.AdaptiveMaxPool2d((2, 3)),), export="both"),
    Case("F.adaptive_max_pool2d", lambda s, x: F.adaptive_max_pool2d(x, (1, None)), (3, 5, 7), "adaptive_max_pool2d"),
    Case("MaxPool1d", first, (3, 9), "max_pool2d", lambda: (nn.MaxPool1d(3, 2, 1),), export="plain"),
    Case("F.max_pool1d", lambda s, x: F.max_pool1d(x, 2, ceil_mode=True), (3, 9), "max_pool2d"),
    Case("AvgPool1d", first, (3, 9), "avg_pool2d", lambda: (nn.AvgPool1d(3, 2, 1),), export="both"),
    Case("F.avg_pool1d", lambda s, x: F.avg_pool1d(x, 2), (3, 9), "avg_pool2d"),
    Case("AdaptiveAvgPool1d", first, (3, 9), "adaptive_avg_pool2d", lambda: (nn.AdaptiveAvgPool1d(3),), export="both"),
    # dropout (removed: inference)
    Case("Dropout2d, AlphaDropout, FeatureAlphaDropout", lambda s, x: s.layers[0](x) + s.layers[1](x) * s.layers[2](x),
         (3, 4, 4), "binary", lambda: (nn.Dropout2d(), nn.AlphaDropout(), nn.FeatureAlphaDropout()), export="both"),
    Case("Dropout1d", lambda s, x: s.layers[0](x) * x, (3, 4), "binary", lambda: (nn.Dropout1d(),), export="both"),
    Case("Dropout3d", lambda s, x: s.layers[0](x) * x, (3, 2, 4, 4), "binary", lambda: (nn.Dropout3d(),)),
    Case("F.dropout2d", lambda s, x: F.dropout2d(x, training=False) * F.alpha_dropout(x), (3, 4, 4), "binary", export="both"),
]


def kinds(graph: Graph) -> list[str]:
    return [n.op.kind for n in graph][1:-1]


@pytest.mark.filterwarnings("ignore::UserWarning")  # PyTorch's own deprecation notes (Upsampling*2d, ...)
@pytest.mark.filterwarnings("ignore:calibrated on 4 sample")  # the chip is run on its calibration batch itself
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_spelling_runs_on_the_chip_as_in_pytorch(case: Case, tmp_path: Path) -> None:
    model, x = case.build()
    with torch.no_grad():
        expected = model(x)
    graph = import_module(model, x)
    assert case.kind in kinds(graph), kinds(graph)
    sources: dict[str, object] = {"torch.fx": model}
    if case.export:
        sources["torch.export"] = torch.export.export(model, (x,))
    if case.export == "both":
        sources["core ATen"] = sources["torch.export"].run_decompositions()  # type: ignore[attr-defined]
    executables = {how: rramc.compile(source, "ideal", calibration_data=x) for how, source in sources.items()}
    for how, exe in executables.items():
        assert_close(exe(x), expected)
        assert_close(exe.reference(x), expected)

    exe = executables["torch.fx"]
    text = exe.graph.to_text()
    parsed = Graph.parse(text)
    assert parsed.to_text() == text
    assert torch.equal(Executable(parsed, exe.target)(x), exe(x))
    loaded = Executable.load(exe.save(tmp_path / "net.rramx"))
    assert loaded.graph.to_text() == text
    assert torch.equal(loaded(x), exe(x))


def test_the_ops_feed_crossbar_layers_on_every_route() -> None:
    """A network mixing the new ops with crossbar layers on tokens: the chip equals PyTorch through fx and export.
    (Core ATen decomposes a linear layer on tokens into a view that folds the tokens into the batch: not this route.)"""

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, 16)
            self.norm = nn.LayerNorm(16)
            self.gate = nn.Linear(16, 32)
            self.head = nn.Linear(16, 5)

        def forward(self, x):  # type: ignore[no-untyped-def]
            tokens = self.norm(self.embed((x - 0.5) / 0.25))             # [N, 6, 16]
            scores = (tokens @ tokens.transpose(1, 2) / 4).softmax(-1)   # [N, 6, 6]
            a, b = self.gate(scores @ tokens).chunk(2, dim=-1)
            mixed = F.gelu(a) * torch.sigmoid(b) + tokens
            return self.head(torch.cat([mixed[:, :1], mixed[:, 1:].mean(1, keepdim=True)], 1).amax(1))

    torch.manual_seed(1)
    model = Mixed().eval()
    x = torch.rand(64, 6, 8)
    with torch.no_grad():
        expected = model(x)
    for source in (model, torch.export.export(model, (x,))):
        exe = rramc.compile(source, "ideal", calibration_data=x)
        assert len(exe.graph.nodes_of(CrossbarOp)) == 3
        assert_close(exe(x), expected)


# --- bounds ----------------------------------------------------------------------------------

INTERVALS = [(-3.0, 2.0), (0.5, 4.0), (-6.0, -1.0), (-0.6, -0.2), (0.0, 1.0)]


def sampled(low: float, high: float) -> torch.Tensor:
    return torch.linspace(low, high, 200_001, dtype=torch.float64)


def contains(bounds: tuple[float | None, float | None], values: torch.Tensor, slack: float = 1e-9) -> bool:
    lo, hi = bounds
    return (lo is None or float(values.min()) >= lo - slack) and (hi is None or float(values.max()) <= hi + slack)


@pytest.mark.parametrize("function", sorted(ACTIVATION_FUNCTIONS))
def test_activation_bounds_hold_for_sampled_values(function: str) -> None:
    op = Activation(function=function, alpha=0.3 if ACTIVATION_FUNCTIONS[function].takes_alpha else None)
    for low, high in INTERVALS:
        values = op.compute(sampled(low, high))
        values = values[torch.isfinite(values)]  # sqrt and friends outside their domain
        assert values.numel() == 0 or contains(op.bounds([(low, high)]), values), (function, low, high, op.bounds([(low, high)]))
    # an input that is signed and unbounded (an undeclared graph input): only the function's own range
    values = op.compute(sampled(-40.0, 40.0))
    assert contains(op.bounds([(-math.inf, None)]), values[torch.isfinite(values)]), function


def test_activation_bounds_are_tight_where_the_function_bounds_its_output() -> None:
    """The bounds the brief names: sigmoid (0, 1), tanh (-1, 1), hardswish and GELU/SiLU lower bounds, ELU >= -alpha,
    each close to the sampled extremes (a bound too loose to use would fail here)."""
    unbounded = (-math.inf, None)
    assert Activation(function="sigmoid").bounds([unbounded]) == (0.0, 1.0)
    assert Activation(function="tanh").bounds([unbounded]) == (-1.0, 1.0)
    assert Activation(function="elu", alpha=0.7).bounds([unbounded]) == (-0.7, None)
    for function, x in (("gelu", sampled(-4, 4)), ("gelu_tanh", sampled(-4, 4)), ("silu", sampled(-6, 4)),
                        ("mish", sampled(-6, 4)), ("hardswish", sampled(-4, 4))):
        op = Activation(function=function)
        low, high = op.bounds([unbounded])
        assert high is None and low is not None
        assert 0 <= float(op.compute(x).min()) - low < 1e-3, function
    # a known interval maps through the increasing part exactly
    low, high = Activation(function="sigmoid").bounds([(-1.0, 2.0)])
    assert (low, high) == pytest.approx((1 / (1 + math.exp(1.0)), 1 / (1 + math.exp(-2.0))))


def test_bounds_of_arithmetic_shapes_and_reductions_hold_for_sampled_values() -> None:
    torch.manual_seed(0)
    a, b = torch.rand(2000, 3, 4) * 3 - 1, torch.rand(2000, 3, 4) * 2 + 0.5   # in [-1, 2] and [0.5, 2.5]
    ba, bb = (-1.0, 2.0), (0.5, 2.5)
    scale, shift = torch.tensor([[-2.0], [0.0], [3.0]]), torch.tensor([1.0, -1.0, 0.5, 0.0])
    checks = [
        (Affine(scale=scale, shift=shift), [a], [ba]),
        (PReLU(weight=torch.tensor([0.1, 0.2, 0.5])), [a], [ba]),
        (Concat(dim=1), [a, b], [ba, bb]),
        (Concat(dim=0, constants=((1, torch.full((2, 4), 3.0)),)), [a, b], [ba, bb]),
        (Reduce(function="mean", dims=(1,)), [a], [ba]),
        (Reduce(function="sum", dims=(0, 1)), [b], [bb]),
        (Softmax(dim=1), [a], [ba]),
        (Softmax(dim=1, log=True), [a], [ba]),
        (Where(compare="gt", threshold=0.0), [a, a, b], [ba, ba, bb]),
    ] + [(Binary(function=f), [a, b], [ba, bb]) for f in ("add", "sub", "mul", "div", "maximum", "minimum")]
    for op, operands, bounds in checks:
        result = op.bounds(bounds)
        assert contains(result, op.compute(*operands)), (op, result)
        one_sided = (isinstance(op, Reduce) and op.function == "sum") or (isinstance(op, Softmax) and op.log)
        assert one_sided or None not in result, op  # bounded operands bound these on both sides
    # the affine map's bounds are the extremes it reaches: 2 * -2 - 1 and 2 * 3 + 1
    assert Affine(scale=scale, shift=shift).bounds([ba]) == (-5.0, 7.0)
    assert Affine(scale=torch.tensor(2.0), shift=torch.tensor(1.0)).bounds([(-math.inf, None)]) == (-math.inf, None)


def test_bounds_decide_the_crossbar_input_range() -> None:
    """Calibration reads the ops' bounds: after a sigmoid the next layer's inputs are unsigned with full
    scale 1, after tanh signed with full scale 1, after an affine of a declared input its image."""
    x = torch.rand(64, 6)
    for activation, signed in ((nn.Sigmoid(), False), (nn.Tanh(), True)):
        model = nn.Sequential(nn.Linear(6, 5), activation, nn.Linear(5, 3)).eval()
        exe = rramc.compile(model, "ideal", calibration_data=x, input_range=(0, 1))
        second = exe.graph.nodes_of(CrossbarOp)[1].op
        assert (second.input_range.scale, second.input_range.signed, second.input_range.origin) == (1.0, signed, "static")

    class Normalised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.fc((x - 0.5) / 0.25)

    exe = rramc.compile(Normalised().eval(), "ideal", calibration_data=x, input_range=(0, 1))
    first_range = exe.graph.nodes_of(CrossbarOp)[0].op.input_range
    assert (first_range.scale, first_range.signed) == (2.0, True)
    graph = import_module(Normalised(), x)
    graph.inputs[0].op = Input(value_range=(0.0, 1.0))
    assert value_bounds(graph)[graph.node("fc").inputs[0]] == (-2.0, 2.0)


# --- refusals --------------------------------------------------------------------------------

class Function(nn.Module):
    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.function(x)


@pytest.mark.filterwarnings("ignore:Implicit dimension choice for softmax")
@pytest.mark.parametrize("function, shape, words", [
    (lambda x: F.softmax(x, 0), (4, 6), ["softmax", "along the batch dimension (dim=0)"]),
    (lambda x: x.mean(), (4, 6), ["mean", "reduces over every dimension, the batch included"]),
    (lambda x: x[0], (4, 6), ["getitem", "indexes the batch dimension"]),
    (lambda x: x.permute(1, 0, 2), (4, 3, 2), ["permute", "moves the batch dimension"]),
    (lambda x: x.view(-1), (4, 6), ["view", "reshapes the batch dimension ([4, 6] to [24])"]),
    (lambda x: x.sum(1), (4, 6), ["sum", "a single number per sample"]),
    (lambda x: x @ x.mean(1), (4, 3, 4), ["matmul", "3-D and 2-D activations mixes samples"]),
    (lambda x: x + torch.arange(4.0).reshape(4, 1), (4, 6), ["add", "varies along the batch dimension"]),
    (lambda x: x[:, torch.tensor([0, 2])], (4, 6), ["getitem", "tensors or lists"]),
    (lambda x: F.interpolate(x, scale_factor=2, mode="bicubic"), (4, 2, 3, 3),
     ["interpolate", "'bicubic'", "'nearest', 'bilinear'"]),
    (lambda x: F.layer_norm(x, (4, 6)), (4, 6), ["layer_norm", "the batch dimension included"]),
    (lambda x: F.softmax(x), (4, 6), ["softmax", "give dim"]),
    (lambda x: torch.max(x, 1)[1], (4, 6, 2), ["only the first result is supported, not the indices"]),
    (lambda x: (x > 0).float(), (4, 6), ["gt", "only as the condition of torch.where"]),
])
def test_refusals_are_located(function: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], words: list[str]) -> None:
    with pytest.raises(FrontendError) as info:
        import_module(Function(function), torch.randn(*shape), "net.pt2")
    message = str(info.value)
    assert message.startswith("net.pt2: ") and "(fx node " in message
    for word in words:
        assert word in message, message


def test_matmul_of_incompatible_shapes_is_refused_by_the_verifier() -> None:
    text = """graph {
  %x = input() : [N,3,4]
  %y = input() : [N,3,4]
  %s = matmul(%x, %y) : [N,3,4]
  %output = output(%s) : [N,3,4]
}"""
    with pytest.raises(VerifyError, match=r"%s = matmul .*cannot multiply \[3, 4\] by \[3, 4\]: 4 columns against 3 rows"):
        Graph.parse(text)


def test_an_unknown_activation_in_ir_text_is_refused_with_the_allowed_names() -> None:
    text = """graph {
  %x = input() : [N,4]
  %a = activation(%x) {function="swish"} : [N,4]
  %output = output(%a) : [N,4]
}"""
    with pytest.raises(VerifyError) as info:
        Graph.parse(text)
    message = str(info.value)
    assert "%a = activation" in message and "unknown activation function 'swish'" in message
    assert ", ".join(sorted(ACTIVATION_FUNCTIONS)) in message
    with pytest.raises(VerifyError, match="leaky_relu needs alpha"):
        Graph.parse(text.replace('"swish"', '"leaky_relu"'))


def test_a_decomposed_four_dimensional_matmul_says_the_batch_is_folded() -> None:
    """Core ATen folds the heads into the batch for a 4-D matmul (view [N*h, n, d]): refused, saying so."""
    x = torch.randn(2, 3, 4, 5)
    program = torch.export.export(Function(lambda t: t @ t.transpose(-1, -2)), (x,)).run_decompositions()
    with pytest.raises(FrontendError, match=r"reshapes the batch dimension \(\[2, 3, 4, 5\] to \[6, 4, 5\]\)"):
        import_exported(program)


# --- training through the ops ----------------------------------------------------------------

def test_reconstruct_trains_through_gelu_and_layer_norm() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 3)).eval()
    images = torch.rand(192, 12)
    labels = (images[:, :4].sum(1) * 3 / 4).long().clamp(max=2)
    data = Dataset("random", "train", images, labels, 3)
    exe = rramc.compile(model, "rram_a", calibration_data=images[:64], training_data=data,
                        pipeline="canonicalize,reconstruct{epochs=2,batch_size=32,lr=0.01},quantize,tile,calibrate,emit")
    layers = exe.graph.nodes_of(CrossbarOp)
    assert [n.op.input_range.origin for n in layers] == ["reconstruct"] * 2
    # the gradient reached the first layer through LayerNorm and GELU: its weights changed
    assert not torch.allclose(layers[0].op.weight, model[0].weight.detach(), atol=1e-4)
    assert not torch.allclose(layers[1].op.weight, model[3].weight.detach(), atol=1e-4)
    assert [type(n.op) for n in exe.graph][2:4] == [Activation, LayerNorm]
    assert exe.original is not None and len(exe.original.nodes_of(Linear)) == 2
