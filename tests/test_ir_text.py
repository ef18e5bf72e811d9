"""IR text: print → parse → print is a fixed point for real graphs, the parsed graph computes the
same outputs, and text that does not parse is refused with its line and column."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

import rramc
from rramc.datasets import Dataset
from rramc.errors import VerifyError
from rramc.frontend import import_module
from rramc.hardware.interpreter import FloatKernel, Interpreter
from rramc.ir import (
    Attribute, ChannelAffine, Graph, Input, IRParseError, Linear, Node, Output, Reshape, parse_graph, print_graph,
)
from rramc.pipeline import CompileContext, named_pipeline, parse_pipeline, PassManager
from rramc.samples import models


def assert_same_graph(parsed: Graph, original: Graph) -> None:
    """Every node, operand, shape, meta and attribute identical; tensors bit for bit, with their dtype."""
    assert [n.name for n in parsed] == [n.name for n in original]
    for a, b in zip(parsed, original):
        assert (type(a.op), a.inputs, a.shape, meta(a)) == (type(b.op), b.inputs, b.shape, meta(b)), a.name
        assert a.source == b.source
        for key, value in b.op.attributes().items():
            assert_same_value(a.op.attributes()[key], value, f"%{a.name}.{key}")


def meta(node: Node) -> dict[str, object]:
    """A node's meta as IR text keeps it: a ``source`` equal to the node's name is not written (``Node.source``
    falls back to the name, so nothing is lost)."""
    return {k: v for k, v in node.meta.items() if not (k == "source" and v == node.name)}


def assert_same_value(a: object, b: object, where: str) -> None:
    if isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or bool(((a == b) | (a.isnan() & b.isnan())).all()), where
    elif isinstance(b, Attribute):
        assert type(a) is type(b), where
        for key, value in b.fields().items():
            assert_same_value(a.fields()[key], value, f"{where}.{key}")
    elif isinstance(b, float) and math.isnan(b):
        assert isinstance(a, float) and math.isnan(a), where
    else:
        assert type(a) is type(b) and a == b, where


def round_trip(graph: Graph) -> Graph:
    text = print_graph(graph)
    assert text == graph.to_text()
    parsed = parse_graph(text)
    assert print_graph(parsed) == text  # the fixed point
    assert Graph.parse(text).to_text() == text
    assert_same_graph(parsed, graph)
    return parsed


# --- real graphs ---------------------------------------------------------------------------------


class Assorted(nn.Module):
    """The ops the sample models do not use: adaptive pooling, ReLU6, 1-d BatchNorm, dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2, padding=1, dilation=1)
        self.adaptive = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12, 6)
        self.bn = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 4)

    def forward(self, x):  # type: ignore[no-untyped-def]
        y = self.adaptive(torch.relu(self.conv(x)))
        y = nn.functional.relu6(self.bn(nn.functional.dropout(self.fc(y.flatten(1)), 0.5, self.training)))
        return self.out(y)


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return models.mlp(64, 24, 16, 10).eval()


def imported(model: nn.Module, shape: tuple[int, ...] = (1, 8, 8)) -> tuple[Graph, torch.Tensor]:
    torch.manual_seed(3)
    x = torch.rand(16, *shape)
    return import_module(model, x), x


def test_imported_graphs_round_trip_and_compute_the_same(mlp, trained_cnn, residual_cnn) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    assorted = Assorted()
    for bn in assorted.modules():
        if isinstance(bn, nn.BatchNorm1d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    assorted.eval()
    for name, model in (("mlp", mlp), ("cnn", trained_cnn), ("residual", residual_cnn), ("assorted", assorted)):
        graph, x = imported(model)
        canonical = PassManager(parse_pipeline("canonicalize")).run(graph.copy(), CompileContext(rramc.load_target("ideal")))
        for g in (graph, canonical):
            parsed = round_trip(g)
            expected = Interpreter(g, FloatKernel())(x)
            assert torch.equal(Interpreter(parsed, FloatKernel())(x), expected), name
        with torch.no_grad():
            torch.testing.assert_close(Interpreter(parse_graph(graph.to_text()), FloatKernel())(x), model(x), rtol=1e-5, atol=1e-5)
    assert {"batch_norm", "add", "avg_pool2d", "adaptive_avg_pool2d", "max_pool2d", "clamp", "relu"} <= {
        n.op.kind for m in (trained_cnn, residual_cnn, assorted) for n in imported(m)[0]}


@pytest.fixture(scope="module")
def digits64(digits_train: Dataset) -> Dataset:
    return digits_train.take(64)


COMPILES: dict[str, Callable[[nn.Module, Dataset], rramc.Executable]] = {
    "ideal": lambda m, d: rramc.compile(m, "ideal", d.images, input_range=(0, 1)),
    "ideal_least_squares": lambda m, d: rramc.compile(m, "ideal", d.images, pipeline="least_squares"),
    "rram_a": lambda m, d: rramc.compile(m, "rram_a", d.images, input_range=(0, 1)),
    "rram_a_offset_tiled": lambda m, d: rramc.compile(
        m, "rram_a", d.images, input_range=(0, 1),
        pipeline="canonicalize,quantize{weight_encoding=offset},tile{rows=20,cols=7},calibrate,emit"),
    "rram_b": lambda m, d: rramc.compile(m, "rram_b", d.images, input_range=(0, 1)),
    "rram_a_reconstructed": lambda m, d: rramc.compile(
        m, "rram_a", d.images, training_data=d, seed=1,
        pipeline=named_pipeline("reconstruct", reconstruct={"epochs": 1, "batch_size": 32})),
}


@pytest.mark.filterwarnings("ignore::rramc.RramcWarning")  # 1-epoch training is near chance, and says so
@pytest.mark.parametrize("how", sorted(COMPILES))
def test_compiled_graphs_round_trip_and_run_the_same(how: str, mlp, trained_cnn, digits64) -> None:  # type: ignore[no-untyped-def]
    reconstructed = how.endswith("_reconstructed")
    models_ = {"mlp": mlp} if reconstructed else {"mlp": mlp, "cnn": trained_cnn}
    for name, model in models_.items():
        exe = COMPILES[how](model, digits64)
        parsed = round_trip(exe.graph)
        again = rramc.Executable(parsed, exe.target, exe.metadata)
        x = digits64.images[:24]
        assert torch.equal(again(x, seed=2), exe(x, seed=2)), (how, name)
        assert torch.equal(again.reference(x), exe.reference(x)), (how, name)
        if reconstructed:
            layers = parsed.nodes_of(rramc.ir.CrossbarOp)
            assert all(n.op.trained_for is not None and n.op.input_range.origin == "reconstruct" for n in layers)
        if how == "ideal_least_squares":
            assert all(n.op.offset is not None for n in parsed.nodes_of(rramc.ir.CrossbarOp))


def test_unusual_values_round_trip_exactly() -> None:
    """Other dtypes, subnormals, signed zeros, infinities, NaN, unicode and JSON-quoted sources."""
    g = Graph()
    g.add("x", Input(value_range=(-1.5, 2.0)), shape=(3, 1, 1))
    shift = torch.tensor([float("inf"), -0.0, float("nan")], dtype=torch.float64)
    scale = torch.tensor([5e-324, 1.0000000000000002, -1.7976931348623157e308], dtype=torch.float64)
    g.add("affine", ChannelAffine(scale=scale, shift=shift), ["x"], meta={"source": "block 1/affine ∂", "note": "µS"})
    g.add("half", ChannelAffine(scale=torch.tensor([0.1, 3.0, 65504.0], dtype=torch.float16),
                                shift=torch.tensor([1e-3, -2.5, 7.0], dtype=torch.bfloat16)), ["affine"])
    g.add("flat", Reshape(shape=(3,)), ["half"], meta={"source": "flat", "folded": ["a", "b"], "n": 1, "f": 0.1})
    g.add("fc", Linear(weight=torch.tensor([[1e-45, -3.4028235e38, 0.1]]), bias=torch.tensor([-0.0])), ["flat"])
    g.add("out", Output(), ["fc"])
    parsed = round_trip(g)
    assert parsed.node("affine").meta == {"source": "block 1/affine ∂", "note": "µS"}
    assert parsed.node("half").op.scale.dtype == torch.float16 and parsed.node("half").op.shift.dtype == torch.bfloat16
    assert str(parsed.node("affine").op.shift[1].item()) == "-0.0" and parsed.node("fc").op.weight[0, 0].item() == torch.tensor(1e-45).item() > 0
    assert parsed.inputs[0].op.value_range == (-1.5, 2.0)


# --- errors ---------------------------------------------------------------------------------------


def small_text() -> str:
    g = Graph()
    g.add("x", Input(), shape=(4,))
    g.add("fc", Linear(weight=torch.ones(2, 4), bias=torch.zeros(2)), ["x"], meta={"source": "net.fc"})
    g.add("act", rramc.ir.Clamp(low=0.0, high=1.0), ["fc"])
    g.add("out", Output(), ["act"])
    return g.to_text()


def caret_column(message: str) -> int:
    """The 1-based column the caret under the quoted line points at, relative to that quoted line."""
    lines = message.splitlines()
    quoted, caret = lines[1], lines[2]
    assert caret.strip() == "^", message
    return caret.index("^") - (len(quoted) - len(quoted.lstrip())) + 1


def edited(old: str, new: str) -> str:
    good = small_text()
    assert old in good
    return good.replace(old, new, 1)


LOCATED = [
    # (what, edit (old, new), line, the token the caret points at, message)
    ("stray character", ("{low=0.0,", "{low=0.0;"), 4, ";", "unexpected character ';'"),
    ("elided tensor", ("weight=f32[2,4](" + ", ".join(["1.0"] * 8) + ")", "weight=f32[2,4]"), 3, ", bias",
     "the values of this tensor were elided (f32[2, 4])"),
    ("missing batch dimension", (": [N,2]\n  %out", ": [2]\n  %out"), 4, "2]", "expected name, found '2'"),
    ("text after the shape", (": [N,2]\n  %out", ": [N,2] extra\n  %out"), 4, "extra", "unexpected text after the shape"),
]


@pytest.mark.parametrize(("what", "edit", "line", "token", "message"), LOCATED, ids=[c[0] for c in LOCATED])
def test_parse_errors_name_the_line_and_point_at_the_token(what: str, edit: tuple[str, str], line: int, token: str,
                                                           message: str) -> None:
    bad = edited(*edit)
    with pytest.raises(IRParseError) as info:
        parse_graph(bad)
    text = str(info.value)
    assert re.match(rf"IR text line {line}, column \d+: ", text), text
    assert message in text
    quoted = text.splitlines()[1].strip()
    assert quoted == bad.splitlines()[line - 1].split("  #")[0].strip()  # the offending line is quoted
    assert quoted[caret_column(text) - 1:].startswith(token), text
    assert isinstance(info.value, VerifyError)  # IRParseError is a VerifyError (an RramcError)


# Errors reported once the offending token has been read: the message names the line and the
# token, but the caret points past it (see test_semantic_parse_errors_point_at_the_token below).
NAMED = [
    ("unknown op", ("clamp(%fc)", "clump(%fc)"), 4, "clump", "unknown op 'clump'; known: "),
    ("unknown value", ("high=1.0", "high=one"), 4, "one", "unknown value 'one'"),
    ("unknown attribute kind", ("high=1.0", "high=#range<a=1>"), 4, "#range", "unknown attribute #range; known: "),
    ("repeated attribute", ("high=1.0", "high=1.0, high=2.0"), 4, "high=2.0", "high is given twice"),
    ("too few values", ("bias=f32[2](0.0, 0.0)", "bias=f32[2](0.0)"), 3, "f32[2](0.0)", "a tensor of shape [2] needs 2 values, got 1"),
    ("undefined operand", ("%act = clamp(%fc)", "%act = clamp(%nowhere)"), 4, "%nowhere", "%act uses %nowhere before it is defined"),
    ("defined twice", ("%act = clamp(%fc)", "%fc = clamp(%fc)"), 4, "%fc =", "%fc is defined twice"),
    ("unknown field", ("low=0.0", "lo=0.0"), 4, "lo=", "clamp has no field(s) lo; its fields: high, low"),
]


@pytest.mark.parametrize(("what", "edit", "line", "token", "message"), NAMED, ids=[c[0] for c in NAMED])
def test_parse_errors_name_the_line_and_what_is_wrong(what: str, edit: tuple[str, str], line: int, token: str,
                                                      message: str) -> None:
    bad = edited(*edit)
    with pytest.raises(IRParseError) as info:
        parse_graph(bad)
    text = str(info.value)
    assert re.match(rf"IR text line {line}, column \d+: ", text), text
    assert message in text
    assert text.splitlines()[1].strip() == bad.splitlines()[line - 1].split("  #")[0].strip()
    assert token in text.splitlines()[1]


def test_elided_text_of_a_real_graph_says_how_to_get_parsable_text(mlp) -> None:  # type: ignore[no-untyped-def]
    graph, _ = imported(mlp)
    with pytest.raises(IRParseError, match=r"IR text line 4, column \d+: the values of this tensor were elided \(f32\[24, 64\]\); "
                                           r"print the graph with every value \(print_graph\(graph\) or graph.to_text\(\)\)"):
        parse_graph(str(graph))
    parse_graph(print_graph(graph, max_elements=10**9))  # a limit no tensor reaches elides nothing


def test_structural_errors_name_the_line() -> None:
    good = small_text()
    cases = [
        (good.replace("graph {", "graf {"), r"IR text line 1: expected 'graph \{', found 'graf \{'"),
        ("// a comment\n\n" + good.rsplit("}", 1)[0], r"IR text line 7: expected the closing '\}' of the graph"),
        ("", r"IR text line 1: expected 'graph \{'"),
        (good.replace("# net.fc", '# net.fc {"broken"'), r"IR text line 3: the comment after '#' must be a layer name and/or a JSON object"),
    ]
    for text, message in cases:
        with pytest.raises(IRParseError, match=message):
            parse_graph(text)


def test_text_that_parses_but_is_not_valid_ir_is_refused_by_the_verifier() -> None:
    good = small_text()
    with pytest.raises(VerifyError, match=r"after pass 'parsing IR text': %act = clamp \(from act\): recorded shape \[3\]"):
        parse_graph(good.replace("high=1.0} : [N,2]", "high=1.0} : [N,3]"))
    with pytest.raises(VerifyError, match="low bound 2.0 is above high bound 1.0"):
        parse_graph(good.replace("low=0.0", "low=2.0"))
    with pytest.raises(VerifyError, match=r"input_range.origin = 'guessed'"):
        parse_graph(good.replace("bias=f32[2](0.0, 0.0)",
                                 'bias=f32[2](0.0, 0.0), input_range=#input_range<scale=1.0, signed=false, origin="guessed">'))


# --- error locations ----------------------------------------------------------------------------


def test_parse_error_columns_count_the_lines_indentation() -> None:
    good = small_text()
    bad = good.replace("{low=0.0,", "{low=0.0;")
    line = bad.splitlines()[3]
    with pytest.raises(IRParseError, match=rf"IR text line 4, column {line.index(';') + 1}:"):
        parse_graph(bad)


@pytest.mark.parametrize(("what", "edit", "line", "token", "message"), NAMED, ids=[c[0] for c in NAMED])
def test_semantic_parse_errors_point_at_the_token(what: str, edit: tuple[str, str], line: int, token: str,
                                                  message: str) -> None:
    with pytest.raises(IRParseError) as info:
        parse_graph(edited(*edit))
    text = str(info.value)
    assert text.splitlines()[1].strip()[caret_column(text) - 1:].startswith(token), text
