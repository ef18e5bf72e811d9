"""The pass manager, pipeline text and third-party passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import rramc
from rramc.errors import PassError
from rramc.frontend import import_module
from rramc.pipeline import PASSES, CompileContext, PassManager, default_pipeline, make_pass, parse_pipeline

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
        ("canonicalize,fold", "unknown pass 'fold'; known: calibrate, canonicalize, emit, quantize, reconstruct, tile"),
        ("tile{rows=64,colz=3}", "pass 'tile' has no option 'colz'; its options: rows, cols, balance"),
        ("tile{rows=sixty}", "pass 'tile' option 'rows': expected int\\?, got 'sixty'"),
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
    manager = PassManager(default_pipeline(), skip=frozenset({"canonicalize"}), print_after_each=True,
                          print_ir=lambda name, text: printed.append(f"{name}\n{text}"))
    exe = rramc.compile(model, "ideal", torch.rand(8, 4), pass_manager=manager)
    assert [name for name, _ in manager.timings] == ["quantize", "tile", "calibrate", "emit"]
    assert all(seconds >= 0 for _, seconds in manager.timings)
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
