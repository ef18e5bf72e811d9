"""rramc sweep and rramc compile --reconstruct from the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import rramc
from rramc.cli import app
from rramc.frontend import save_exported
from rramc.ir import CrossbarOp
from rramc.pipeline import parse_pipeline
from rramc.samples import models
from rramc.sweep import parse_axis
from rramc.training import TrainConfig, train_classifier

runner = CliRunner()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, digits_train) -> Path:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = train_classifier(models.mlp(64, 32, 10, clipped=True), digits_train, TrainConfig(epochs=10, batch_size=64))
    path = tmp_path_factory.mktemp("models") / "mlp.pt2"
    save_exported(model, digits_train.images[:1], path, dataset="digits")
    return path


def invoke(*args: str):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    return result


@pytest.mark.slow
def test_sweep_writes_table_json_and_plots(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = invoke("sweep", str(model_file), "-t", "rram_a", "-o", str(out), "--k", "2.5,20", "--adc-bits", "6,8",
                    "--epochs", "1", "--train-samples", "300", "--test-samples", "120")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(r["device.nonlinearity_k"], r["crossbar.adc_bits"]) for r in rows] == [("2.5", "6"), ("2.5", "8"), ("20", "6"), ("20", "8")]
    methods = ("naive", "naive_least_squares", "reconstructed")
    assert set(rows[0]) == {"device.nonlinearity_k", "crossbar.adc_bits", "float", "float_retrained", *methods,
                            *(f"{m}_{cost}" for m in methods for cost in ("energy_J", "latency_s"))}
    # the fair baseline: the float network trained the same extra epoch, one value for the whole grid
    assert len({r["float_retrained"] for r in rows}) == 1 and 0.5 < float(rows[0]["float_retrained"]) <= 1
    data = json.loads((out / "sweep.json").read_text())
    assert data["axes"] == {"device.nonlinearity_k": [2.5, 20], "crossbar.adc_bits": [6, 8]}
    k20 = [r for r in data["rows"] if r["device.nonlinearity_k"] == 20]
    k25 = [r for r in data["rows"] if r["device.nonlinearity_k"] == 2.5]
    assert sum(r["naive"] for r in k20) < sum(r["naive"] for r in k25)  # more nonlinear: the naive mapping loses more
    for name in ("sweep_nonlinearity_k.png", "sweep_adc_bits.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_impossible_sweep_grids_fail_before_any_work(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    for args, message in [
        (("--k", "1.5,7.5"), "sweep grid point {'device.nonlinearity_k': 1.5} is impossible"),
        (("--read-voltage", "0,1"), "field 'crossbar.read_voltage': got 0"),
        (("--adc-bits", "1"), "field 'crossbar.adc_bits': got 1"),
        (("--axis", "chip.rows=4"), "unknown section 'chip'"),
        (("--axis", "crossbar.rows"), "expected section.field=v1,v2"),
        (("--axis", "crossbar.rows=a"), "field 'crossbar.rows': got 'a'; expected an integer"),
        ((), "give at least one axis"),
    ]:
        result = invoke("sweep", str(model_file), "-t", "rram_a", "-o", str(out), *args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert not out.exists()
    result = invoke("sweep", str(model_file), "-t", "rram_b", "-o", str(out), "--k", "7.5")
    assert result.exit_code == 1 and "device model 'sinh_state' has no field nonlinearity_k" in result.output, result.output
    result = invoke("sweep", str(model_file), "-t", "ideal", "-o", str(out), "--k", "2.5")
    assert result.exit_code == 1 and "device model 'linear' has no field nonlinearity_k (its fields: none)" in result.output


def test_parse_axis_shortcuts() -> None:
    assert parse_axis("k=2.5,7.5") == ("device.nonlinearity_k", [2.5, 7.5])
    assert parse_axis("crossbar.dac_bits=4,null") == ("crossbar.dac_bits", [4, None])
    assert parse_axis("input_encoding=amplitude, bit_serial") == ("crossbar.input_encoding", ["amplitude", "bit_serial"])
    with pytest.raises(rramc.RramcError, match="mix numbers and names"):
        parse_axis("k=2.5,seven")
    with pytest.raises(rramc.RramcError, match="an empty value"):
        parse_axis("k=2.5,,7.5")


def test_an_encoding_sweep_prices_every_design_and_draws_its_pareto_front(model_file: Path, tmp_path: Path) -> None:
    """Input encodings as an axis: each row carries every method's energy and latency per inference; the designs
    on the Pareto front are those nothing beats in accuracy and cost at once; sweep_pareto.png is drawn."""
    out = tmp_path / "encodings"
    result = invoke("sweep", str(model_file), "-t", "rram_a", "-o", str(out), "--axis", "input_encoding=amplitude,bit_serial",
                    "--no-reconstruct", "--test-samples", "120")
    assert result.exit_code == 0, result.output
    assert "per inference: naive" in result.output and " nJ" in result.output and " µs" in result.output
    data = json.loads((out / "sweep.json").read_text())
    amplitude, bit_serial = data["rows"]
    assert bit_serial["naive"] > amplitude["naive"]  # the nonlinearity met at one voltage only
    assert bit_serial["naive_latency_s"] == pytest.approx(8 * amplitude["naive_latency_s"])  # 8 reads of one bit each
    for row in data["rows"]:  # the per-layer breakdown adds up to the totals
        for key in ("energy_J", "latency_s"):
            assert sum(layer[key] for layer in row["naive_layers"].values()) == pytest.approx(row[f"naive_{key}"])
    assert "naive_layers" not in (out / "sweep.csv").read_text()
    designs = data["designs"]
    assert len(designs) == 4
    for d in designs:
        for key, flag in (("energy_J", "pareto_energy"), ("latency_s", "pareto_latency")):
            dominated = any(o["accuracy"] >= d["accuracy"] and o[key] <= d[key] and (o["accuracy"] > d["accuracy"] or o[key] < d[key])
                            for o in designs)
            assert d[flag] is not dominated
    assert any(d["pareto_latency"] and "amplitude" in d["point"] for d in designs)  # the fastest is on its front
    assert (out / "sweep_pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = invoke("sweep", str(model_file), "-t", "rram_a", "-o", str(tmp_path / "never"), "--axis", "input_encoding=amplitude,thermo")
    assert bad.exit_code == 1 and "'thermo'" in bad.output and "bit_serial" in bad.output, bad.output
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_compile_with_reconstruct_from_the_cli(model_file: Path, tmp_path: Path, digits_test) -> None:  # type: ignore[no-untyped-def]
    naive, rebuilt = tmp_path / "naive.rramx", tmp_path / "rebuilt.rramx"
    assert invoke("compile", str(model_file), "-t", "rram_a", "-o", str(naive)).exit_code == 0
    result = invoke("compile", str(model_file), "-t", "rram_a", "-o", str(rebuilt), "--reconstruct", "--epochs", "4", "--optimizer", "sgd", "--lr", "0.05",
                    "--batch-size", "64", "--in-loop", "converters")
    assert result.exit_code == 0, result.output
    assert "reconstruct for rram_a: epoch 4/4" in result.output
    exe = rramc.load_executable(rebuilt)
    names = [p.name for p in parse_pipeline(exe.metadata["pipeline"])]
    assert names == ["canonicalize", "reconstruct", "quantize", "tile", "calibrate", "emit"]
    (rec,) = [p for p in parse_pipeline(exe.metadata["pipeline"]) if p.name == "reconstruct"]
    # the CLI's options reach the pass; its seed is the compile seed (--seed, 0 here), given or defaulted
    assert (rec.epochs, rec.optimizer, rec.lr, rec.batch_size, rec.converters) == (4, "sgd", 0.05, 64, True)
    assert (rec.levels, rec.variation) == (False, False) and rec.seed in (None, 0)
    assert {n.op.trained_for.seed for n in exe.graph.nodes_of(CrossbarOp)} == {0}
    assert exe.run(digits_test).chip_accuracy > rramc.load_executable(naive).run(digits_test).chip_accuracy
    report = invoke("run", str(rebuilt))
    assert "device-aware (reconstructed for rram_a)" in report.output


def test_the_compile_seed_reaches_reconstruct_from_the_cli(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "seeded.rramx"
    result = invoke("compile", str(model_file), "-t", "rram_a", "-o", str(out), "--reconstruct", "--epochs", "0", "--seed", "5")
    assert result.exit_code == 0, result.output
    layers = rramc.load_executable(out).graph.nodes_of(CrossbarOp)
    assert {n.op.trained_for.seed for n in layers} == {5} and {n.op.trained_for.epochs for n in layers} == {0}


def test_the_named_reconstruct_pipeline_from_the_cli(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "named.rramx"
    result = invoke("compile", str(model_file), "-t", "rram_a", "-o", str(out), "--pipeline", "reconstruct")
    assert result.exit_code == 0, result.output
    layers = rramc.load_executable(out).graph.nodes_of(CrossbarOp)
    assert all(n.op.trained_for is not None and n.op.trained_for.target_name == "rram_a" for n in layers)
    # its training options apply, as with --reconstruct
    result = invoke("compile", str(model_file), "-t", "rram_a", "-o", str(out), "--pipeline", "reconstruct", "--epochs", "0")
    assert result.exit_code == 0, result.output
    assert {n.op.trained_for.epochs for n in rramc.load_executable(out).graph.nodes_of(CrossbarOp)} == {0}


def test_training_options_without_reconstruction_are_refused(model_file: Path, tmp_path: Path) -> None:
    """--epochs and friends would silently do nothing without a reconstruction the CLI configures."""
    out = tmp_path / "m.rramx"
    for args in (("--epochs", "1"), ("--lr", "0.1", "--init", "scratch"),
                 ("-p", "canonicalize,reconstruct,quantize,tile,calibrate,emit", "--batch-size", "64")):
        result = invoke("compile", str(model_file), "-t", "rram_a", "-o", str(out), *args)
        assert result.exit_code == 1 and "configure --reconstruct" in result.output, (args, result.output)
        assert not out.exists()


def test_compile_reconstruct_bad_input(model_file: Path, tmp_path: Path, digits_train) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "m.rramx"
    bare = tmp_path / "bare.pt2"
    save_exported(models.mlp(64, 10), digits_train.images[:1], bare)  # records no data set
    cases = [
        # the bare archive records no data set: calibration (and with it --reconstruct's training) needs one
        ((str(bare), "--reconstruct"), "pass --calibration DATASET"),
        ((str(bare), "--reconstruct"), "--reconstruct --dataset DATASET to train on"),
        ((str(model_file), "--reconstruct", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path)), "fashion-mnist"),
        ((str(model_file), "--reconstruct", "--in-loop", "noise"), "--in-loop: unknown noise"),
        ((str(model_file), "--reconstruct", "--epochs", "-1"), "epochs=-1: must be at least 0"),
        ((str(model_file), "--dataset", "digits"), "--dataset names the training data of --reconstruct (or of a pipeline with a "
                                                   "reconstruct pass); to calibrate on a data set use --calibration"),
    ]
    for args, message in cases:
        result = invoke("compile", *args, "-t", "rram_a", "-o", str(out))
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert not out.exists()
    power = tmp_path / "power.yaml"
    power.write_text("name: p\ndevice: {model: power, exponent: 0.5}\nconductance: {g_min: 1.0e-6, g_max: 1.0e-4}\n"
                     "crossbar: {rows: 64, cols: 64, read_voltage: 1.0}\n")
    result = invoke("compile", str(model_file), "-t", str(power), "-o", str(out), "--reconstruct")
    assert result.exit_code == 1 and "not differentiable with this device.exponent" in result.output
