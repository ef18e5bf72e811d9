"""The pass manager, pipeline text and third-party passes."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import rramc
from rramc.errors import PassError, RramcError
from rramc.frontend import import_module
from rramc.ir import IRParseError, parse_graph
from rramc.pipeline import (
    PASSES, PIPELINES, CompileContext, PassInstrument, PassManager, PassTimings, PrintIR, default_pipeline, make_pass,
    named_pipeline, parse_pipeline, resolve_pipeline,
)

REPO = Path(__file__).resolve().parents[1]


def test_pipeline_text_round_trips_with_typed_options() -> None:
    passes = parse_pipeline(" canonicalize , quantize{levels=16, granularity=layer},tile{rows=64,balance=true},calibrate{adc_percentile=99.9},emit")
    assert [p.name for p in passes] == ["canonicalize", "quantize", "tile", "calibrate", "emit"]
    quantize, tile, calibrate = passes[1], passes[2], passes[3]
    assert (quantize.levels, quantize.granularity) == (16, "layer")
    assert (tile.rows, tile.cols, tile.balance) == (64, None, True)
    assert calibrate.adc_percentile == 99.9
    text = ",".join(map(str, passes))
    assert text == "canonicalize,quantize{granularity=layer,levels=16},tile{rows=64,balance=true},calibrate{adc_percentile=99.9},emit"
    assert [str(p) for p in parse_pipeline(text)] == [str(p) for p in passes]
    assert [p.name for p in default_pipeline()] == ["canonicalize", "quantize", "tile", "calibrate", "emit"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("canonicalize,fold", "unknown pass 'fold'; known: calibrate, canonicalize, emit, place, quantize, reconstruct, tile"),
        ("tile{rows=64,colz=3}", "pass 'tile' has no option 'colz'; its options: rows, cols, balance"),
        ("tile{rows=sixty}", "pass 'tile' option 'rows': expected an integer or none, got 'sixty'"),
        ("tile{balance=maybe}", "expected true or false"),
        ("quantize{granularity=row}", "expected one of column, layer, got 'row'"),
        ("tile{rows}", "option 'rows' needs a value"),
        ("tile{rows=1", "cannot parse pipeline"),
        ("", "the pipeline is empty"),
    ],
)
def test_bad_pipelines_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(PassError, match=message):
        parse_pipeline(text)


def test_manager_prints_times_and_skips() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    printed: list[str] = []
    timings = PassTimings()
    manager = PassManager(default_pipeline(), skip=frozenset({"canonicalize"}),
                          instruments=[PrintIR(lambda name, text: printed.append(f"{name}\n{text}")), timings])
    exe = rramc.compile(model, "ideal", torch.rand(8, 4), pass_manager=manager)
    assert [name for name, _ in timings.timings] == ["quantize", "tile", "calibrate", "emit"]
    assert all(seconds >= 0 for _, seconds in timings.timings)
    assert [p.split("\n")[0] for p in printed] == ["quantize", "tile", "calibrate", "emit"]
    assert "xbar.linear" in printed[0] and "row_splits" not in printed[0] and "row_splits" in printed[1]
    assert exe.metadata["pipeline"] == "quantize,tile,calibrate,emit"
    with pytest.raises(PassError, match="cannot skip \\['tiles'\\]"):
        PassManager(default_pipeline(), skip=frozenset({"tiles"})).run(import_module(model, torch.rand(2, 4)), CompileContext(rramc.load_target("ideal")))


def test_a_pipeline_without_emit_and_passes_out_of_order_are_reported() -> None:
    model = nn.Linear(4, 2)
    with pytest.raises(PassError, match="produced no executable; end it with 'emit'"):
        rramc.compile(model, "ideal", torch.rand(4, 4), pipeline="canonicalize,quantize,tile,calibrate")
    with pytest.raises(PassError, match="(?s)pass .emit. failed .passes run before it: canonicalize, quantize.: .*not tiled: run tile"):
        rramc.compile(model, "ideal", torch.rand(4, 4), pipeline="canonicalize,quantize,emit")
    with pytest.raises(PassError, match="still a float linear"):
        rramc.compile(model, "ideal", torch.rand(4, 4), pipeline="canonicalize,emit")


def test_passes_registered_from_python_join_pipelines() -> None:
    from dataclasses import dataclass

    from rramc.ir import Graph, Linear
    from rramc.pipeline import Pass, option

    @dataclass(frozen=True)
    class ScaleWeights(Pass):
        """Multiply every weight (test pass)."""

        name = "scale_weights"
        factor: float = option("factor", 2.0)

        def run(self, graph: Graph, ctx: CompileContext) -> Graph:
            for node in graph.nodes_of(Linear):
                node.op = node.op.replace(weight=node.op.weight * self.factor, bias=None)
            return graph

    PASSES.register("scale_weights", ScaleWeights)
    try:
        assert make_pass("scale_weights", {"factor": "3"}).factor == 3.0
        model = nn.Linear(4, 2, bias=False)
        x = torch.rand(6, 4)
        exe = rramc.compile(model, "ideal", x, pipeline="canonicalize,scale_weights{factor=3},quantize,tile,calibrate,emit")
        torch.testing.assert_close(exe(x), 3 * model(x).detach(), rtol=1e-5, atol=1e-6)
        with pytest.raises(PassError, match="already defined"):
            PASSES.register("tile", ScaleWeights)
    finally:
        PASSES.unregister("scale_weights")


def test_plugin_pass_installed_from_samples_works_from_the_cli(tmp_path: Path, digits_train) -> None:  # type: ignore[no-untyped-def]
    """pip-install the sample plugin into a private directory and use it through the entry point."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(REPO / "samples" / "custom_pass")], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}

    listed = subprocess.run([sys.executable, "-m", "rramc.cli", "passes"], env=env, capture_output=True, text=True, check=True)
    assert "clip_weights" in listed.stdout and "rramc_clip_weights:ClipWeights (entry point 'clip_weights'" in listed.stdout

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    rramc.frontend.save_exported(model, digits_train.images[:1], tmp_path / "m.pt2", dataset="digits")
    out = tmp_path / "m.rramx"
    pipeline = "canonicalize,clip_weights{percentile=90},quantize,tile,calibrate,emit"
    result = subprocess.run([sys.executable, "-m", "rramc.cli", "compile", str(tmp_path / "m.pt2"), "-t", "ideal", "-o", str(out), "-p", pipeline],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    exe = rramc.load_executable(out)
    (layer,) = exe.graph.nodes_of(rramc.ir.CrossbarOp)
    weight = model[1].weight.detach()
    limit = torch.quantile(weight.abs(), 0.9, dim=1, keepdim=True)
    torch.testing.assert_close(layer.op.weight, weight.clamp(-limit, limit))
    assert layer.meta["clipped_weights"] > 0
    assert "clip_weights{percentile=90.0}" in exe.metadata["pipeline"]


# --- instruments and named pipelines -------------------------------------------------------------


class Recorder(PassInstrument):
    """A user-defined instrument: records every hook call with what it saw."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def enter_pipeline(self, passes, ctx) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("enter", ",".join(p.name for p in passes)))

    def before_pass(self, p, graph, ctx) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("before", p.name, ",".join(ctx.passes_run), _stage(graph)))

    def after_pass(self, p, graph, ctx, seconds) -> None:  # type: ignore[no-untyped-def]
        assert seconds >= 0
        self.events.append(("after", p.name, ",".join(ctx.passes_run), _stage(graph)))

    def exit_pipeline(self, graph, ctx) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("exit", _stage(graph), "graph" in ctx.artifacts and "artifact"))


def _stage(graph) -> str:  # type: ignore[no-untyped-def]
    """How far the graph is lowered: float, mapped, tiled or calibrated."""
    from rramc.ir import CrossbarOp

    layers = [n.op for n in graph.nodes_of(CrossbarOp)]
    if not layers:
        return "float"
    if all(op.is_calibrated for op in layers):
        return "calibrated"
    return "tiled" if all(op.is_tiled for op in layers) else "mapped"


def test_a_user_instrument_sees_every_pass_in_order() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    recorder = Recorder()
    exe = rramc.compile(model, "ideal", torch.rand(64, 4), instruments=[recorder])
    assert recorder.events == [
        ("enter", "canonicalize,quantize,tile,calibrate,emit"),
        ("before", "canonicalize", "", "float"),
        ("after", "canonicalize", "canonicalize", "float"),
        ("before", "quantize", "canonicalize", "float"),
        ("after", "quantize", "canonicalize,quantize", "mapped"),
        ("before", "tile", "canonicalize,quantize", "mapped"),
        ("after", "tile", "canonicalize,quantize,tile", "tiled"),
        ("before", "calibrate", "canonicalize,quantize,tile", "tiled"),
        ("after", "calibrate", "canonicalize,quantize,tile,calibrate", "calibrated"),
        ("before", "emit", "canonicalize,quantize,tile,calibrate", "calibrated"),
        ("after", "emit", "canonicalize,quantize,tile,calibrate,emit", "calibrated"),
        ("exit", "calibrated", "artifact"),
    ]
    assert exe.metadata["pipeline"] == "canonicalize,quantize,tile,calibrate,emit"
    # skipped passes are not announced; the same instrument works on a PassManager directly
    recorder = Recorder()
    graph = import_module(model, torch.rand(2, 4))
    PassManager(parse_pipeline("canonicalize,quantize,tile"), skip=frozenset({"canonicalize"}),
                instruments=[recorder]).run(graph, CompileContext(rramc.load_target("ideal")))
    assert [e[:2] for e in recorder.events] == [("enter", "quantize,tile"), ("before", "quantize"), ("after", "quantize"),
                                                ("before", "tile"), ("after", "tile"), ("exit", "tiled")]


def test_a_failing_pass_is_announced_but_not_finished() -> None:
    recorder = Recorder()
    with pytest.raises(PassError, match="(?s)pass 'emit' failed .passes run before it: canonicalize, quantize.: .*not tiled"):
        rramc.compile(nn.Linear(4, 2), "ideal", torch.rand(64, 4), pipeline="canonicalize,quantize,emit",
                      instruments=[recorder])
    assert [e[:2] for e in recorder.events][-2:] == [("after", "quantize"), ("before", "emit")]


def test_print_ir_and_pass_timings_instruments() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    printed: list[tuple[str, str]] = []
    complete: list[tuple[str, str]] = []
    timings = PassTimings()
    exe = rramc.compile(model, "rram_a", torch.rand(64, 4), pipeline="canonicalize,quantize{levels=16},tile{rows=2},calibrate,emit",
                        instruments=[PrintIR(lambda name, text: printed.append((name, text))),
                                     PrintIR(lambda name, text: complete.append((name, text)), complete=True), timings])
    names = ["canonicalize", "quantize{levels=16}", "tile{rows=2}", "calibrate", "emit"]
    assert [name for name, _ in printed] == names == [name for name, _ in complete]
    assert [name for name, _ in timings.timings] == ["canonicalize", "quantize", "tile", "calibrate", "emit"]
    assert all(seconds >= 0 for _, seconds in timings.timings)
    # people's text elides big tensors; the complete text parses back to the graph after each pass
    assert "g_pos=f32[4,3]," in printed[1][1] and "g_pos=f32[4,3](" in complete[1][1]
    assert "row_splits=(0, 2, 4)" in printed[2][1] and "adc_range" in printed[3][1] and "adc_range" not in printed[2][1]
    assert parse_graph(complete[-1][1]).to_text() == complete[-1][1] == exe.graph.to_text()
    with pytest.raises(IRParseError, match="elided"):
        parse_graph(printed[1][1])
    assert exe.pass_seconds.keys() == {"canonicalize", "quantize", "tile", "calibrate", "emit"}
    # print_ir=True prints to stdout through the same instrument
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        rramc.compile(model, "ideal", torch.rand(64, 4), print_ir=True)
    assert [line for line in buffer.getvalue().splitlines() if line.startswith("// IR after")] == [
        "// IR after canonicalize", "// IR after quantize", "// IR after tile", "// IR after calibrate", "// IR after emit"]


def test_named_pipelines_resolve() -> None:
    assert set(PIPELINES.names()) >= {"default", "naive", "least_squares", "reconstruct"}
    def texts(spec):  # type: ignore[no-untyped-def]
        return [str(p) for p in resolve_pipeline(spec)]

    assert texts("default") == texts("naive") == texts(None) == [str(p) for p in default_pipeline()] == \
        ["canonicalize", "quantize", "tile", "calibrate", "emit"]
    assert texts("least_squares") == ["canonicalize", "quantize", "tile", "calibrate{gain=least_squares}", "emit"]
    assert texts(" reconstruct ") == ["canonicalize", "reconstruct", "quantize", "tile", "calibrate", "emit"]
    assert texts("reconstruct,emit") == ["reconstruct", "emit"]  # text that is not a name is a pipeline
    configured = named_pipeline("reconstruct", reconstruct={"epochs": 1, "lr": 0.01}, tile={"rows": 64})
    assert [str(p) for p in configured] == ["canonicalize", "reconstruct{epochs=1,lr=0.01}", "quantize", "tile{rows=64}",
                                            "calibrate", "emit"]
    with pytest.raises(PassError, match="pipeline 'default' has no pass reconstruct"):
        named_pipeline("default", reconstruct={"epochs": 1})
    with pytest.raises(RramcError, match="unknown pipeline 'fancy'"):
        named_pipeline("fancy")
    # a named pipeline through compile: the least-squares calibration fits offsets
    exe = rramc.compile(nn.Linear(4, 2), "rram_a", torch.rand(64, 4), pipeline="least_squares")
    assert exe.metadata["pipeline"] == "canonicalize,quantize,tile,calibrate{gain=least_squares},emit"
    assert exe.graph.nodes_of(rramc.ir.CrossbarOp)[0].op.offset is not None


def test_repeated_options_empty_pipelines_and_conflicting_arguments_are_refused() -> None:
    with pytest.raises(PassError, match="pass 'quantize': option 'levels' is given twice"):
        parse_pipeline("quantize{levels=8,levels=16}")
    with pytest.raises(PassError, match="pass 'quantize': option 'levels' is given twice"):
        rramc.compile(nn.Linear(4, 2), "ideal", torch.rand(64, 4), pipeline="canonicalize,quantize{levels=8,levels=16},emit")
    for empty in ([], (), " "):
        with pytest.raises(PassError, match="^the pipeline is empty$"):
            rramc.compile(nn.Linear(4, 2), "ideal", torch.rand(64, 4), pipeline=empty)
    with pytest.raises(PassError, match="pipeline item 1: expected an rramc.Pass or pass text .*, got int 42"):
        rramc.compile(nn.Linear(4, 2), "ideal", torch.rand(64, 4), pipeline=["canonicalize", 42])  # type: ignore[list-item]
    # a list may mix passes and pass text
    mixed = rramc.compile(nn.Linear(4, 2), "ideal", torch.rand(64, 4), pipeline=["canonicalize", "quantize{levels=16}", "tile", "calibrate", "emit"])
    assert mixed.metadata["pipeline"] == "canonicalize,quantize{levels=16},tile,calibrate,emit"
    manager = PassManager(default_pipeline())
    for conflict in (dict(pipeline="naive"), dict(skip=["tile"]), dict(print_ir=True), dict(instruments=[PassTimings()])):
        with pytest.raises(PassError, match="give either pass_manager or pipeline/skip/print_ir/instruments, not both"):
            rramc.compile(nn.Linear(4, 2), "ideal", torch.rand(64, 4), pass_manager=manager, **conflict)
