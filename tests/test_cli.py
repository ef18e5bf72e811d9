"""The ``rramc`` command line, happy paths: compile, run, inspect, passes, targets, demo.

A few cases run the real command line in a subprocess (exit code, no traceback on stderr);
the rest go through ``typer.testing.CliRunner`` on :data:`rramc.cli.app`, which is faster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml
from typer.testing import CliRunner

import rramc
from rramc.cli import app
from rramc.datasets.idx import write_idx
from rramc.frontend import save_exported
from rramc.ir import CrossbarOp
from rramc.samples import models
from rramc.training import TrainConfig, train_classifier

RRAM_A_YAML = (resources.files("rramc.targets") / "rram_a.yaml").read_text(encoding="utf-8")
PASS_NAMES = ("canonicalize", "quantize", "tile", "calibrate", "emit")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --- helpers ---------------------------------------------------------------------------------


def invoke(*args: object) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit code, stdout, stderr) with ANSI codes removed."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250", "NO_COLOR": "1"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"rramc {' '.join(map(str, args))} raised {result.exception!r}\n{result.output}") from result.exception
    return result.exit_code, ANSI.sub("", result.stdout), ANSI.sub("", result.stderr)


def ok(*args: object) -> str:
    """Run the CLI in-process, insist on success, return stdout."""
    code, out, err = invoke(*args)
    assert code == 0, f"rramc {' '.join(map(str, args))} exited {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in out + err
    return out


def rramc_subprocess(*args: object, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m rramc.cli`` for real."""
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "rramc.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def torch_accuracy(model: nn.Module, dataset: rramc.Dataset) -> float:
    """Top-1 accuracy of the PyTorch model itself (the digits MLP flattens its input)."""
    with torch.no_grad():
        return int((model.eval()(dataset.images).argmax(1) == dataset.labels).sum()) / len(dataset)


def crossbar_nodes(exe: rramc.Executable) -> list:
    return list(exe.graph.nodes_of(CrossbarOp))


# --- shared files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A briefly trained digits MLP as .pt2 and state_dict, a factory module and a target YAML."""
    d = tmp_path_factory.mktemp("cli_files")
    torch.manual_seed(0)
    train = rramc.load_dataset("digits", "train")
    model = train_classifier(models.mlp(64, 32, 10), train, TrainConfig(epochs=3, lr=0.05, batch_size=64)).eval()
    save_exported(model, train.images[:2], d / "mlp.pt2", dataset="digits")
    torch.save(model.state_dict(), d / "mlp_state.pt")
    module = f"rramc_test_nets_{uuid.uuid4().hex[:8]}"
    (d / f"{module}.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        from rramc.samples import models


        def small():
            return models.mlp(64, 32, 10)


        class TinyNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = nn.Linear(64, 24)
                self.fc2 = nn.Linear(24, 10)

            def forward(self, x):
                return self.fc2(self.fc1(x.flatten(1)).relu())
    """))
    target = yaml.safe_load(RRAM_A_YAML)
    target["name"] = "small_arrays"
    target["crossbar"].update(rows=32, cols=32)
    (d / "small_arrays.yaml").write_text(yaml.safe_dump(target))
    noisy = yaml.safe_load(RRAM_A_YAML)
    noisy["name"] = "noisy"
    noisy["nonidealities"] = {"programming_sigma": 0.1, "read_noise_sigma": 0.05}
    (d / "noisy.yaml").write_text(yaml.safe_dump(noisy))
    return {"dir": d, "pt2": d / "mlp.pt2", "state": d / "mlp_state.pt", "module": Path(module),
            "module_file": d / f"{module}.py", "small_target": d / "small_arrays.yaml", "noisy_target": d / "noisy.yaml",
            "model": model}  # type: ignore[dict-item]


@pytest.fixture(scope="module")
def ideal_exe(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli_exe") / "mlp_ideal.rramx"
    ok("compile", files["pt2"], "--target", "ideal", "-o", out)
    return out


@pytest.fixture(scope="module")
def chip_exe(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli_exe") / "mlp_rram_a.rramx"
    ok("compile", files["pt2"], "--target", "rram_a", "-o", out)
    return out


# --- end to end, as a user runs it ---------------------------------------------------------------


def test_subprocess_compile_then_run_with_json_report(files: dict[str, Path], tmp_path: Path) -> None:
    exe_path = tmp_path / "mlp.rramx"
    compiled = rramc_subprocess("compile", files["pt2"], "--target", "rram_a", "-o", exe_path, cwd=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    assert "Traceback" not in compiled.stderr
    assert f"wrote {exe_path}" in compiled.stdout and "rram_a" in compiled.stdout
    exe = rramc.load_executable(exe_path)
    assert exe.target.name == "rram_a" and exe.metadata["calibration"] == "digits"

    report_path = tmp_path / "report.json"
    ran = rramc_subprocess("run", exe_path, "--dataset", "digits", "--json", report_path, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stderr
    assert "float (PyTorch) accuracy" in ran.stdout and "simulated chip accuracy" in ran.stdout
    report = json.loads(report_path.read_text())
    assert report["target"] == "rram_a" and report["samples"] == 360
    expected = torch_accuracy(files["model"], rramc.load_dataset("digits", "test"))  # type: ignore[arg-type]
    assert report["float_accuracy"] == pytest.approx(expected, abs=1e-12)


def test_subprocess_compile_pickled_module_with_trust_pickle(files: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(files["dir"]))
    module = __import__(str(files["module"]))
    torch.manual_seed(0)
    torch.save(module.TinyNet(), tmp_path / "whole.pt")
    out = tmp_path / "whole.rramx"
    done = rramc_subprocess("compile", tmp_path / "whole.pt", "--trust-pickle", "--calibration", "digits",
                            "-t", "ideal", "-o", out, cwd=tmp_path, pythonpath=files["dir"])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    exe = rramc.load_executable(out)
    assert [n.op.matrix_shape for n in crossbar_nodes(exe)] == [(64, 24), (24, 10)]


def test_subprocess_demo_in_a_fresh_directory(tmp_path: Path) -> None:
    done = rramc_subprocess("demo", "--target", "ideal", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "float (PyTorch)" in done.stdout and "naive mapping" in done.stdout and "reconstructed for the device" in done.stdout
    for name in ("digits_mlp.rramx", "digits_mlp_reconstructed.rramx"):
        rramc.load_executable(tmp_path / name)


# --- compile -------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["ideal", "rram_a", "rram_b", "yaml"])
def test_compile_pt2_for_each_target(target: str, files: dict[str, Path], tmp_path: Path) -> None:
    spec = str(files["small_target"]) if target == "yaml" else target
    out = tmp_path / "net.rramx"
    text = ok("compile", files["pt2"], "--target", spec, "-o", out)
    assert f"wrote {out}" in text
    exe = rramc.load_executable(out)
    assert exe.target.name == ("small_arrays" if target == "yaml" else target)
    assert exe.metadata["calibration"] == "digits"
    kinds = [n.op.kind for n in crossbar_nodes(exe)]
    assert kinds == ["xbar.linear", "xbar.linear"]
    if target == "yaml":  # 32×32 arrays: 64 inputs → 2 row blocks, 32 outputs → 2 column blocks of 16
        assert exe.target.crossbar.rows == 32
        assert exe.array_count() == 2 * 2 + 1 * 1
    else:
        assert exe.array_count() == 2


def test_compile_default_output_name_is_the_model_name_in_the_cwd(files: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = ok("compile", files["pt2"], "-t", "ideal")
    assert (tmp_path / "mlp.rramx").is_file()
    assert "mlp.rramx" in text
    assert not (files["dir"] / "mlp.rramx").exists()
    rramc.load_executable(tmp_path / "mlp.rramx")


def test_compile_state_dict_with_a_factory_from_a_file(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "state.rramx"
    ok("compile", files["state"], "--model", f"{files['module_file']}:small", "--calibration", "digits",
       "-t", "ideal", "-o", out)
    exe = rramc.load_executable(out)
    assert exe.metadata["calibration"] == "digits"
    # the weights are the trained ones: the float network reproduces the PyTorch model
    x = rramc.load_dataset("digits", "test").images[:16]
    torch.testing.assert_close(exe.reference(x), files["model"](x).detach())  # type: ignore[operator]


def test_compile_state_dict_with_a_module_factory_importable_from_the_cwd(files: dict[str, Path], tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(files["dir"])
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_factory adds the cwd; undo it afterwards
    out = tmp_path / "state.rramx"
    ok("compile", files["state"].name, "--model", f"{files['module']}:small", "-c", "digits", "-t", "rram_a", "-o", out)
    exe = rramc.load_executable(out)
    assert exe.target.name == "rram_a" and len(crossbar_nodes(exe)) == 2


def test_pipeline_options_change_the_executable(files: dict[str, Path], tmp_path: Path) -> None:
    default, custom = tmp_path / "default.rramx", tmp_path / "custom.rramx"
    ok("compile", files["pt2"], "-t", "ideal", "-o", default)
    ok("compile", files["pt2"], "-t", "ideal", "-o", custom,
       "-p", "canonicalize,quantize{levels=8},tile{rows=32},calibrate,emit")
    base, tuned = rramc.load_executable(default), rramc.load_executable(custom)
    assert base.array_count() == 2
    assert tuned.array_count() == 3  # 64 word lines in blocks of 32, then 32 in one
    assert [n.op.row_splits for n in crossbar_nodes(tuned)] == [(0, 32, 64), (0, 32)]
    assert "quantize{levels=8}" in tuned.metadata["pipeline"] and "tile{rows=32}" in tuned.metadata["pipeline"]
    for node in crossbar_nodes(tuned):  # conductances on 8 levels (ideal is continuous by default)
        assert torch.cat([node.op.g_pos.flatten(), node.op.g_neg.flatten()]).unique().numel() <= 8
    first = crossbar_nodes(base)[0]
    assert first.op.g_pos.unique().numel() > 8


def test_named_pipelines(files: dict[str, Path], tmp_path: Path) -> None:
    x = rramc.load_dataset("digits", "test").images[:64]
    outputs = {}
    for name, pipeline in (("default", "canonicalize,quantize,tile,calibrate,emit"), ("naive", "canonicalize,quantize,tile,calibrate,emit"),
                           ("least_squares", "canonicalize,quantize,tile,calibrate{gain=least_squares},emit")):
        out = tmp_path / f"{name}.rramx"
        ok("compile", files["pt2"], "-t", "rram_a", "--pipeline", name, "-o", out)
        exe = rramc.load_executable(out)
        assert exe.metadata["pipeline"] == pipeline
        outputs[name] = exe(x)
    assert torch.equal(outputs["default"], outputs["naive"])
    assert not torch.equal(outputs["default"], outputs["least_squares"])


def test_print_ir_shows_the_ir_after_every_pass(files: dict[str, Path], tmp_path: Path) -> None:
    text = ok("compile", files["pt2"], "-t", "ideal", "-o", tmp_path / "x.rramx", "--print-ir")
    headers = re.findall(r"// IR after (\S+)", text)
    assert headers == list(PASS_NAMES)
    assert "xbar.linear" in text and "graph {" in text
    assert text.index("// IR after quantize") < text.index("xbar.linear")


def test_time_passes_prints_a_table_with_every_pass(files: dict[str, Path], tmp_path: Path) -> None:
    text = ok("compile", files["pt2"], "-t", "ideal", "-o", tmp_path / "x.rramx", "--time-passes")
    assert "seconds" in text
    for name in PASS_NAMES:
        assert re.search(rf"\b{name}\b.*\d+\.\d{{4}}", text), f"{name} missing from\n{text}"


def test_skip_canonicalize_on_a_network_without_batchnorm(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "skip.rramx"
    ok("compile", files["pt2"], "-t", "ideal", "-o", out, "--skip", "canonicalize", "--time-passes")
    exe = rramc.load_executable(out)
    assert "canonicalize" not in exe.metadata["pipeline"]
    assert exe.metadata["pipeline"].startswith("quantize")
    x = rramc.load_dataset("digits", "test").images[:32]
    torch.testing.assert_close(exe(x), exe.reference(x), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_output_files_follow_the_umask(files: dict[str, Path], tmp_path: Path) -> None:
    """Executables and reports are ordinary files: readable by others unless the umask says no."""
    old = os.umask(0o022)
    try:
        ok("compile", files["pt2"], "-t", "ideal", "-o", tmp_path / "x.rramx")
        ok("run", tmp_path / "x.rramx", "--limit", "10", "--json", tmp_path / "x.json")
    finally:
        os.umask(old)
    assert oct((tmp_path / "x.rramx").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "x.json").stat().st_mode & 0o777) == oct(0o644)


# --- run -----------------------------------------------------------------------------------------


def test_run_prints_accuracies_and_the_per_layer_table(chip_exe: Path) -> None:
    text = ok("run", chip_exe)
    assert "digits (test, 360 samples) on rram_a" in text
    assert re.search(r"float \(PyTorch\) accuracy\s*:\s*\d+\.\d\d %", text)
    assert re.search(r"simulated chip accuracy\s*:\s*\d+\.\d\d %", text)
    assert "same prediction as float" in text
    for column in ("layer", "op", "matrix", "tiles", "this layer alone", "accumulated"):
        assert column in text
    assert "64×32" in text and "32×10" in text and text.count("xbar.linear") == 2


def test_run_json_on_ideal_matches_pytorch(files: dict[str, Path], ideal_exe: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "r.json"
    text = ok("run", ideal_exe, "--dataset", "digits", "--json", report_path)
    assert f"wrote {report_path}" in text
    report = json.loads(report_path.read_text())
    expected = torch_accuracy(files["model"], rramc.load_dataset("digits", "test"))  # type: ignore[arg-type]
    assert expected > 0.5  # the model learned something, so the comparison means something
    assert report["float_accuracy"] == pytest.approx(expected, abs=1e-12)
    assert report["chip_accuracy"] == report["float_accuracy"]
    assert report["agreement"] == 1.0
    assert report["dataset"] == "digits" and report["split"] == "test" and report["target"] == "ideal"
    assert [layer["matrix"] for layer in report["layers"]] == [[64, 32], [32, 10]]


def test_run_limit_batch_size_and_split(chip_exe: Path, tmp_path: Path) -> None:
    ok("run", chip_exe, "--json", tmp_path / "all.json")
    ok("run", chip_exe, "--batch-size", "7", "--json", tmp_path / "b7.json")
    ok("run", chip_exe, "--limit", "50", "--json", tmp_path / "l50.json")
    ok("run", chip_exe, "--split", "train", "--limit", "100", "--json", tmp_path / "train.json")
    full, b7, l50, train = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("all", "b7", "l50", "train"))
    assert full["samples"] == 360 and l50["samples"] == 50 and train["samples"] == 100
    assert train["split"] == "train"
    # batching changes nothing: every sample is computed on its own
    assert b7["float_accuracy"] == full["float_accuracy"] and b7["chip_accuracy"] == full["chip_accuracy"]
    for a, b in zip(b7["layers"], full["layers"]):
        assert a["local_error"] == pytest.approx(b["local_error"], rel=1e-4)


def test_run_seed_selects_the_chip_instance(files: dict[str, Path], tmp_path: Path) -> None:
    exe_path = tmp_path / "noisy.rramx"
    ok("compile", files["pt2"], "-t", files["noisy_target"], "-o", exe_path)
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        text = ok("run", exe_path, "--seed", seed, "--limit", "120", "--json", tmp_path / f"{name}.json")
        assert f"chip seed {seed}" in text
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert runs["a"]["seed"] == 1 and runs["c"]["seed"] == 2
    assert runs["a"]["layers"] == runs["b"]["layers"]  # same seed, same chip
    assert runs["a"]["layers"][0]["local_error"] != runs["c"]["layers"][0]["local_error"]


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small MNIST-format IDX files: 28×28 uint8 images and labels."""
    d = tmp_path_factory.mktemp("mnist_idx")
    rng = np.random.RandomState(0)
    for prefix, n in (("train", 96), ("t10k", 40)):
        write_idx(d / f"{prefix}-images-idx3-ubyte", rng.randint(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(d / f"{prefix}-labels-idx1-ubyte", rng.randint(0, 10, n).astype(np.uint8))
    return d


@pytest.mark.parametrize("flat", [False, True], ids=["1x28x28", "784"])
def test_run_on_mnist_idx_files(flat: bool, mnist_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = (nn.Sequential(nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10)) if flat else models.mlp(784, 16, 10)).eval()
    example = torch.rand(2, 784) if flat else torch.rand(2, 1, 28, 28)
    save_exported(model, example, tmp_path / "m.pt2")
    exe_path, report_path = tmp_path / "m.rramx", tmp_path / "m.json"
    ok("compile", tmp_path / "m.pt2", "-t", "ideal", "--calibration", "mnist", "--data-dir", mnist_dir, "-o", exe_path)
    assert rramc.load_executable(exe_path).metadata["calibration"] == "mnist"
    text = ok("run", exe_path, "--dataset", "mnist", "--data-dir", mnist_dir, "--json", report_path)
    assert "mnist (test, 40 samples)" in text
    report = json.loads(report_path.read_text())
    test = rramc.load_dataset("mnist", "test", mnist_dir)
    with torch.no_grad():
        expected = int((model(test.images.reshape(len(test), *example.shape[1:])).argmax(1) == test.labels).sum()) / len(test)
    assert report["samples"] == 40
    assert report["float_accuracy"] == pytest.approx(expected, abs=1e-12)
    assert report["chip_accuracy"] == report["float_accuracy"]


# --- inspect, passes, targets --------------------------------------------------------------------


def test_inspect_shows_ir_tiles_and_utilisation(chip_exe: Path) -> None:
    """The IR and the list of every array on request (--ir, --arrays); by default a line per layer (tests/test_inspect_summary.py)."""
    text = ok("inspect", chip_exe, "--ir", "--arrays")
    assert str(chip_exe) in text and "mlp.pt2" in text
    assert "pipeline canonicalize,quantize,tile,calibrate,emit" in text
    assert "target rram_a" in text
    assert "read at 1 V: cells 0.136–13.6 µA (on/off 100), column ≤ 1.74 mA" in text  # derived from the device
    assert "limits: compliance 20 µA, sense range 2.5 mA" in text
    assert "graph {" in text and text.count("= xbar.linear(") == 2
    assert "Arrays (one per tile)" in text and "utilisation" in text and "word lines" in text
    assert "0:64" in text and "25.0 %" in text  # 64 rows × 32 differential outputs of 128×128
    assert re.search(r"2 arrays of 128×128, 4,736 of 32,768 cells used \(14\.5 %\)", text)

    brief = ok("inspect", chip_exe)
    assert "graph {" not in brief and "= xbar.linear(" not in brief and "Arrays (one per tile)" not in brief
    assert "Layers" in brief and "2 arrays of 128×128" in brief


def test_passes_lists_the_builtin_passes_with_options() -> None:
    text = ok("passes")
    for name in PASS_NAMES:
        assert re.search(rf"^{name}\s+\S", text, re.MULTILINE), f"{name} missing from\n{text}"
    assert "(built in)" in text
    for option in ("levels=none", "(an integer or none)", "rows=none", "fold_batch_norm=true", "(true or false)",
                   "adc_percentile=100.0", "granularity=column", "balance=false", "samples=512"):
        assert option in text, option
    assert "default pipeline: canonicalize,quantize,tile,calibrate,emit" in text
    assert "``" not in text and ":class:" not in text and ":func:" not in text  # docstrings' markup is for Sphinx, not terminals


def test_targets_lists_the_builtin_targets() -> None:
    text = ok("targets")
    lines = [line for line in text.splitlines() if re.match(r"^\w+:", line)]
    assert [line.split(":")[0] for line in lines] == ["ideal", "rram_a", "rram_b"]
    assert "model=linear" in text and "nonlinearity_k=7.5" in text and "model=sinh_state" in text
    # read currents at the read voltage, not G·V: rram_a's sinh cells carry 6.79·G at 1 V
    assert "cells 0.136–13.6 µA (on/off 100), column ≤ 1.74 mA (128 rows at g_max)" in text
    assert "cells 0.214–7.31 µA (on/off 34.2), column ≤ 936 µA" in text
    assert text.count("limits: compliance 20 µA, sense range 2.5 mA") == 3


def test_targets_fields_lists_every_field_with_units() -> None:
    text = ok("targets", "--fields")
    for section in ("conductance", "crossbar", "nonidealities", "device (model: sinh)", "device (model: table)"):
        assert re.search(rf"^{re.escape(section)}$", text, re.MULTILINE), section
    assert re.search(r"^  g_min: .*\[S\]", text, re.MULTILINE)
    assert re.search(r"^  read_voltage: .*\[V\]", text, re.MULTILINE)
    # encodings and wires are open to plugins: the built-in choices are named, not a closed list
    assert re.search(r"^  weight_encoding: .*differential.*offset", text, re.MULTILINE)
    assert re.search(r"^  input_encoding: .*amplitude", text, re.MULTILINE)
    assert re.search(r"^wires \(model: ideal\)$", text, re.MULTILINE)
    assert re.search(r"^  adc_bits: an integer >= 2 and <= 16 or null", text, re.MULTILINE)
    assert re.search(r"^  nonlinearity_k: ", text, re.MULTILINE)
    assert re.search(r"^  compliance: a number > 0 and <= 1 or null \[A\]", text, re.MULTILINE)
    assert re.search(r"^  sense_range: a number > 0 and <= 1 or null \[A\]", text, re.MULTILINE)
    # every key a target file has, the top level's and the device model's included
    assert re.search(r"^  name: ", text, re.MULTILINE) and re.search(r"^  description: .*optional", text, re.MULTILINE)
    assert re.search(r"^  model: one of linear, power, sinh, sinh_state, table", text, re.MULTILINE)


def test_targets_validates_and_describes_a_file(files: dict[str, Path]) -> None:
    text = ok("targets", files["small_target"])
    assert text.startswith("small_arrays:")
    assert "32×32 arrays" in text and "nonlinearity_k=7.5" in text
    assert ok("targets", "rram_b").startswith("rram_b:")


def test_demo_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = ok("demo", "-o", "d.rramx")
    accuracy = {row: float(re.search(rf"{row}.*?([\d.]+) %", text).group(1))  # type: ignore[union-attr]
                for row in ("float \\(PyTorch\\)", "naive mapping", "reconstructed for the device")}
    floating, naive, rebuilt = accuracy.values()
    # the method, side by side: rram_a's nonlinearity costs the naive mapping, reconstruction recovers most of it
    assert floating > 95 and naive < floating - 20 and rebuilt > naive + 20, text
    assert "wrote d.rramx" in text and "wrote d_reconstructed.rramx" in text
    assert rramc.load_executable(tmp_path / "d.rramx").target.name == "rram_a"
    assert rramc.load_executable(tmp_path / "d_reconstructed.rramx").metadata["pipeline"].startswith("canonicalize,reconstruct")


@pytest.mark.parametrize("command", ["compile", "run", "inspect", "sweep", "demo", "targets"])
def test_flags_show_no_value_type_in_help(command: str) -> None:
    """A flag takes no value: its help line must not print one (typer's own --help line aside)."""
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 0
    flagged = [line for line in result.stdout.splitlines() if "<bool>" in line and "--help" not in line]
    assert not flagged, flagged
