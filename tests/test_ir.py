"""The IR: printing, verification and editing."""

from __future__ import annotations

import pytest
import torch

from rramc.errors import VerifyError
from rramc.hardware import load_target
from rramc.ir import Add, Clamp, Graph, Input, Linear, Output, ReLU, Reshape
from rramc.pipeline import CompileContext, parse_pipeline, PassManager


def small_graph() -> Graph:
    g = Graph()
    g.add("x", Input(), shape=(1, 4, 4))
    g.add("flat", Reshape(shape=(16,)), ["x"])
    g.add("fc", Linear(weight=torch.ones(8, 16), bias=torch.zeros(8)), ["flat"], meta={"source": "net.fc"})
    g.add("act", Clamp(low=0.0, high=1.0), ["fc"])
    g.add("out", Output(), ["act"])
    return g


def test_printer_shows_ops_shapes_attributes_and_source() -> None:
    text = str(small_graph())
    assert text.splitlines() == [
        "graph {",
        "  %x = input() : [N,1,4,4]",
        "  %flat = reshape(%x) {shape=(16,)} : [N,16]",
        "  %fc = linear(%flat) {weight=f32[8,16], bias=f32[8](0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)} : [N,8]  # net.fc",
        "  %act = clamp(%fc) {low=0.0, high=1.0} : [N,8]",
        "  %out = output(%act) : [N,8]",
        "}",
    ]
    # The complete text writes every value (the 128 weights too), and no elided tensor is left.
    complete = small_graph().to_text()
    assert "weight=f32[8,16](" + ", ".join(["1.0"] * 128) + ")" in complete
    assert complete.replace("weight=f32[8,16](" + ", ".join(["1.0"] * 128) + ")", "weight=f32[8,16]") == text


def test_shapes_are_inferred_and_names_made_unique() -> None:
    g = small_graph()
    node = g.add("fc", ReLU(), ["fc"], after="fc")
    assert node.name == "fc_1" and node.shape == (8,)
    assert [n.name for n in g][:4] == ["x", "flat", "fc", "fc_1"]


@pytest.mark.parametrize(
    ("breaks", "message"),
    [
        (lambda g: setattr(g.node("fc"), "shape", (9,)), "recorded shape [9] but the op computes [8]"),
        (lambda g: setattr(g.node("fc"), "op", Linear(weight=torch.ones(8, 15))), "does not take 16 input features"),
        (lambda g: setattr(g.node("act"), "inputs", ["missing"]), "operand %missing is undefined"),
        (lambda g: setattr(g.node("act"), "inputs", ["fc", "flat"]), "takes 1 operands, has 2"),
        (lambda g: setattr(g.node("act"), "op", Clamp(low=2.0, high=1.0)), "low bound 2.0 is above high bound 1.0"),
        (lambda g: setattr(g.node("flat"), "op", Reshape(shape=(15,))), "cannot reshape [1, 4, 4] to [15]"),
    ],
)
def test_verifier_names_the_node_and_the_problem(breaks, message) -> None:  # type: ignore[no-untyped-def]
    g = small_graph()
    g.verify()
    breaks(g)
    with pytest.raises(VerifyError, match="after pass 'mine'") as info:
        g.verify(after_pass="mine")
    assert message in str(info.value)


def test_verifier_rejects_use_before_definition_and_misplaced_output() -> None:
    g = small_graph()
    g.node("flat").inputs = ["act"]
    with pytest.raises(VerifyError, match="%flat = reshape.*defined after its use"):
        g.verify()
    g = small_graph()
    g.add("late", ReLU(), ["act"])
    with pytest.raises(VerifyError, match="output %out is not the last node"):
        g.verify()


def test_add_requires_equal_shapes() -> None:
    g = small_graph()
    g.add("bad", Add(), ["fc", "flat"], shape=(8,), after="act")
    with pytest.raises(VerifyError, match="operand shapes differ"):
        g.verify()


def test_pass_manager_catches_a_pass_that_breaks_the_ir() -> None:
    """A pass leaving an invalid graph is reported with its name and the node it broke."""
    from dataclasses import dataclass

    from rramc.pipeline import PASSES, Pass

    @dataclass(frozen=True)
    class BreakShapes(Pass):
        name = "break_shapes"

        def run(self, graph: Graph, ctx: CompileContext) -> Graph:
            graph.node("fc").shape = (3,)
            return graph

    PASSES.register("break_shapes", BreakShapes)
    try:
        manager = PassManager(parse_pipeline("canonicalize,break_shapes"))
        with pytest.raises(VerifyError, match=r"after pass 'break_shapes': %fc = linear \(from net.fc\)"):
            manager.run(small_graph(), CompileContext(load_target("ideal")))
    finally:
        PASSES.unregister("break_shapes")


def test_remove_dead_and_copy_are_independent() -> None:
    g = small_graph()
    g.add("unused", ReLU(), ["fc"], after="fc")
    assert g.remove_dead() == ["unused"]
    clone = g.copy()
    clone.node("fc").op.weight.zero_()
    assert float(g.node("fc").op.weight.sum()) == 128.0
    assert "digraph" in g.to_dot() and '"fc" -> "act"' in g.to_dot()


def test_per_channel_affines_bound_their_outputs_as_sampling_finds() -> None:
    from rramc.ir import BatchNorm, ChannelAffine

    scale, shift = torch.tensor([2.0, -1.5, 0.25]), torch.tensor([0.5, 1.0, -2.0])
    affine = ChannelAffine(scale=scale, shift=shift)
    norm = BatchNorm(mean=torch.tensor([0.1, -0.2, 0.3]), var=torch.tensor([0.5, 2.0, 1.0]), weight=scale, bias=shift)
    x = torch.linspace(-0.5, 1.5, 101).reshape(1, 1, -1).expand(1, 3, -1)
    for op in (affine, norm):
        low, high = op.bounds([(-0.5, 1.5)])
        y = op.compute(x)
        assert low == pytest.approx(float(y.min()), abs=1e-6) and high == pytest.approx(float(y.max()), abs=1e-6)
        assert op.bounds([(None, 1.5)]) == (None, None)
