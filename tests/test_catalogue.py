"""The bad-input catalogue: every way a user was seen to go wrong, one line each.

A command-line case is ``(id, command, words)``: the command (placeholders below) must fail with
one clean message that contains every word, exit non-zero, print no traceback, write nothing and
leave every input file as it was. A warning case must succeed and warn, on stderr, with the words.
A Python case must raise an :class:`rramc.RramcError` (or warn an :class:`rramc.RramcWarning`)
with the words. A new bad input is one more line.

Placeholders: ``{pt2}`` a digits MLP archive, ``{state}`` its state_dict, ``{nets}`` the module
building it, ``{exe}`` an executable compiled from ``{pt2}``, ``{yaml}`` a copy of rram_a.yaml,
``{text}`` a text file, ``{empty}`` an empty file, ``{dir}`` the folder they are in, and target
files ``{dup_key}``, ``{hot}``, ``{steep}``, ``{table_nan}``; ``{pass_*}`` local pass files.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

import rramc
from rramc.cli import app
from rramc.frontend import save_exported
from rramc.runtime.file_format import serialize

ANSI = re.compile(r"\x1b\[[0-9;]*m")
RRAM_A = yaml.safe_load((resources.files("rramc.targets") / "rram_a.yaml").read_text(encoding="utf-8"))

CLI_CASES: list[tuple[str, str, list[str]]] = [
    # outputs: never an input, never a folder, never another kind of file or another model's executable
    ("output-is-the-model", "compile {pt2} -t rram_a -o {pt2}", ["is an input of this command"]),
    ("output-is-the-target", "compile {pt2} -t {yaml} -o {yaml}", ["is an input of this command"]),
    ("output-is-a-text-file", "compile {pt2} -t rram_a -o {text}", ["exists and is a YAML or text file", "--force"]),
    ("output-of-another-model", "compile {state} -m {nets}:small -c digits -t ideal -o {exe}",
     ["was compiled from", "mlp.pt2, not", "mlp_state.pt", "--force"]),
    ("output-empty-name", "compile {pt2} -t rram_a -o ''", ["--output is empty"]),
    ("output-is-a-folder", "compile {pt2} -t rram_a -o {dir}", ["is a folder"]),
    ("output-in-a-missing-folder", "compile {pt2} -t rram_a -o {dir}/nowhere/x.rramx", ["nowhere does not exist"]),
    ("report-in-a-missing-folder", "run {exe} --json {dir}/nowhere/r.json", ["nowhere does not exist"]),
    ("report-over-a-target", "run {exe} --json {yaml}", ["exists and is a YAML or text file", "not an rramc run report"]),
    ("report-over-the-executable", "run {exe} --json {exe}", ["is an input of this command"]),
    ("demo-over-a-target", "demo -o {yaml}", ["exists and is a YAML or text file"]),
    ("sweep-output-is-a-file", "sweep {pt2} -t rram_a --k 2.5 -o {text}", ["exists and is not a directory"]),
    # seeds and counts
    ("compile-seed-negative", "compile {pt2} -t rram_a --seed -1", ["--seed", "0"]),
    ("run-seed-too-large", "run {exe} --seed 99999999999999999999", ["--seed", "9223372036854775807"]),
    ("calibration-samples-zero", "compile {pt2} -t rram_a -c digits --calibration-samples 0",
     ["--calibration-samples 0", "at least 1"]),
    ("calibration-samples-negative", "compile {pt2} -t rram_a --calibration-samples -5", ["--calibration-samples -5", "at least 1"]),
    ("train-samples-zero", "compile {pt2} -t rram_a --reconstruct --train-samples 0", ["samples=0", "at least 1"]),
    # devices
    ("compile-device-without-reconstruct", "compile {pt2} -t rram_a --device cuda", ["--device", "configure --reconstruct"]),
    ("compile-device-not-a-device", "compile {pt2} -t rram_a --reconstruct --device tpu9", ["--device 'tpu9' is not a torch device"]),
    ("sweep-device-not-a-device", "sweep {pt2} -t rram_a --k 2.5 --device npu -o {dir}/sweep", ["--device 'npu' is not a torch device"]),
    ("epochs-negative", "compile {pt2} -t rram_a --reconstruct --epochs -1", ["epochs=-1", "at least 0"]),
    ("optimizer-unknown", "compile {pt2} -t rram_a --reconstruct --optimizer rmsprop", ["rmsprop", "adam", "sgd"]),
    ("init-unknown", "compile {pt2} -t rram_a --reconstruct --init warm", ["warm", "finetune", "scratch"]),
    ("in-loop-unknown", "compile {pt2} -t rram_a --reconstruct --in-loop gravity", ["gravity", "levels", "wires"]),
    ("training-option-without-reconstruct", "compile {pt2} -t rram_a --lr 0.1", ["--lr", "--reconstruct"]),
    ("batch-size-zero", "run {exe} --batch-size 0", ["batch size 0", "at least 1"]),
    ("limit-zero", "run {exe} --limit 0", ["no samples", "--limit 0"]),
    # pipeline text
    ("option-without-value", "compile {pt2} -t rram_a -p 'canonicalize,quantize{{levels=}},tile,calibrate,emit'",
     ["option 'levels' has no value"]),
    ("option-twice", "compile {pt2} -t rram_a -p 'canonicalize,quantize{{levels=8,levels=16}},tile,calibrate,emit'",
     ["option 'levels' is given twice"]),
    ("option-not-a-number", "compile {pt2} -t rram_a -p 'canonicalize,quantize{{levels=many}},tile,calibrate,emit'",
     ["option 'levels'", "expected an integer or none", "'many'"]),
    ("option-unknown", "compile {pt2} -t rram_a -p 'canonicalize,quantize{{bits=4}},tile,calibrate,emit'",
     ["has no option 'bits'", "levels"]),
    ("pass-unknown", "compile {pt2} -t rram_a -p 'canonicalize,squash,emit'", ["unknown pass 'squash'", "quantize"]),
    ("pipeline-empty", "compile {pt2} -t rram_a -p ''", ["empty"]),
    ("pipeline-unknown-name", "compile {pt2} -t rram_a --pipeline fastest", ["fastest", "default", "reconstruct"]),
    ("skip-not-in-pipeline", "compile {pt2} -t rram_a --skip place", ["place"]),
    # local passes
    ("pass-file-missing", "compile {pt2} -t rram_a --pass-file {dir}/nope.py", ["--pass-file", "nope.py", "no such file"]),
    ("pass-file-not-python", "compile {pt2} -t rram_a --pass-file {yaml}", ["expected a Python file"]),
    ("pass-file-syntax-error", "compile {pt2} -t rram_a --pass-file {pass_syntax}", ["importing it failed", "line 2", "SyntaxError"]),
    ("pass-file-raises", "compile {pt2} -t rram_a --pass-file {pass_raises}", ["importing it failed", "line 3", "kaboom"]),
    ("pass-file-without-passes", "compile {pt2} -t rram_a --pass-file {pass_none}", ["defines no rramc.Pass subclass"]),
    ("pass-file-clashes", "compile {pt2} -t rram_a --pass-file {pass_clash}", ["pass 'quantize'", "already defined", "built in"]),
    # files given to the wrong command, or not what they claim
    ("run-a-model", "run {pt2}", ["is a PyTorch file", "compile it first"]),
    ("run-a-target", "run {yaml}", ["not an rramc executable"]),
    ("run-an-empty-file", "run {empty}", ["empty file", "not an rramc executable"]),
    ("inspect-a-model", "inspect {pt2}", ["compile it first"]),
    ("run-missing", "run {dir}/nope.rramx", ["does not exist"]),
    ("compile-missing-model", "compile {dir}/nope.pt2 -t rram_a", ["nope.pt2"]),
    ("compile-unknown-target", "compile {pt2} -t rram_z", ["rram_z", "ideal", "rram_a", "rram_b"]),
    ("run-unknown-dataset", "run {exe} -d imagenet", ["imagenet", "digits", "fashion-mnist"]),
    ("run-unknown-split", "run {exe} --split validation", ["validation", "train", "test"]),
    ("run-bad-device", "run {exe} --device tpu9", ["tpu9"]),
    # targets
    ("target-duplicate-key", "targets {dup_key}", ["dup_key.yaml", "duplicate key 'read_voltage'", "lines 10 and 11"]),
    ("target-overflowing-current", "targets {hot}", ["hot.yaml", "inf A", "read_voltage = 10 V", "device.b = 100", "overflow"]),
    ("target-steep-k", "targets {steep}", ["steep.yaml", "inf A", "device.nonlinearity_k = 10000", "k_voltage = 0.01"]),
    ("target-table-with-nan", "targets {table_nan}", ["table_nan_iv.csv, line 4, column 3", "'nan' is not a finite number"]),
    ("compile-for-an-overflowing-target", "compile {pt2} -t {hot}", ["hot.yaml", "overflow"]),
    ("targets-fields-with-a-file", "targets {yaml} --fields", ["--fields", "alone"]),
    ("sweep-k-on-a-linear-device", "sweep {pt2} -t ideal --k 2.5 -o {dir}/sw", ["device model 'linear' has no field nonlinearity_k"]),
    ("sweep-k-on-sinh-state", "sweep {pt2} -t rram_b --k 7.5 -o {dir}/sw", ["device model 'sinh_state' has no field nonlinearity_k"]),
    ("sweep-no-axis", "sweep {pt2} -t rram_a -o {dir}/sw", ["at least one axis"]),
    ("sweep-bad-axis-value", "sweep {pt2} -t rram_a --axis crossbar.rows=a -o {dir}/sw", ["crossbar.rows", "got 'a'", "an integer"]),
    ("sweep-axis-mixes-numbers-and-names", "sweep {pt2} -t rram_a --axis crossbar.rows=64,a -o {dir}/sw", ["mix numbers and names"]),
    ("plot-into-a-missing-folder", "plot-device rram_a -o {dir}/nowhere/iv.png", ["nowhere"]),
    ("fit-missing-sweeps", "fit-device {dir}/nope.csv -o {dir}/fit.yaml", ["nope.csv"]),
    ("fit-over-the-executable", "fit-device {dir}/nope.csv -o {exe}", ["exists and is an rramc executable", "--force"]),
    ("plot-over-the-target", "plot-device {yaml} -o {yaml}", ["is an input of this command"]),
    ("plot-over-a-model", "plot-device rram_a -o {pt2}", ["exists and is a PyTorch file", "not a PNG image"]),
]

WARNING_CASES: list[tuple[str, str, list[str]]] = [
    ("diverged-training", "compile {pt2} -t rram_a --reconstruct --lr 1e6 --epochs 1 -o {dir}/out/diverged.rramx",
     ["training diverged", "lower the learning rate"]),
    ("compile-warning-repeated-by-run", "run {dir}/out/diverged.rramx --limit 60", ["when compiled: reconstruct: training diverged"]),
]


# --- files ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, write_digits_mlp) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("catalogue")
    write_digits_mlp(d)
    (d / "nets.py").write_text("from rramc.samples import models\n\ndef small():\n    return models.mlp(64, 32, 10)\n")
    (d / "rram_a.yaml").write_text(yaml.safe_dump(RRAM_A))
    (d / "notes.txt").write_text("my notes: not an executable\n")
    (d / "empty.rramx").write_bytes(b"")
    (d / "out").mkdir()
    text = yaml.safe_dump(RRAM_A)
    (d / "dup_key.yaml").write_text(text.replace("  read_voltage: 1.0\n", "  read_voltage: 1.0\n  read_voltage: 0.5\n"))
    assert "read_voltage: 0.5" in (d / "dup_key.yaml").read_text()
    (d / "hot.yaml").write_text(_target_with(device={"model": "sinh", "b": 100.0}, crossbar={"read_voltage": 10.0}))
    (d / "steep.yaml").write_text(_target_with(device={"model": "sinh", "nonlinearity_k": 1e4, "k_voltage": 0.01}))
    (d / "table_nan_iv.csv").write_text("voltage,2e-8,2e-6\n-1,-2e-8,-2e-6\n0,0,0\n0.5,1e-8,nan\n1,2e-8,2e-6\n")
    (d / "table_nan.yaml").write_text(_target_with(device={"model": "table", "file": "table_nan_iv.csv"}))
    (d / "pass_syntax.py").write_text("from rramc import Pass\nclass Broken(Pass:\n")
    (d / "pass_raises.py").write_text("import rramc\n\nraise RuntimeError('kaboom while importing')\n")
    (d / "pass_none.py").write_text("X = 1\n")
    (d / "pass_clash.py").write_text(
        "from dataclasses import dataclass\nfrom rramc import Pass\n\n\n@dataclass(frozen=True)\nclass MyQuantize(Pass):\n"
        "    name = 'quantize'\n\n    def run(self, graph, ctx):\n        return graph\n")
    names = {"pt2": "mlp.pt2", "state": "mlp_state.pt", "nets": "nets.py", "exe": "mlp.rramx", "yaml": "rram_a.yaml",
             "text": "notes.txt", "empty": "empty.rramx", "dup_key": "dup_key.yaml", "hot": "hot.yaml", "steep": "steep.yaml",
             "table_nan": "table_nan.yaml", "pass_syntax": "pass_syntax.py", "pass_raises": "pass_raises.py",
             "pass_none": "pass_none.py", "pass_clash": "pass_clash.py"}
    return {"dir": d, **{key: d / name for key, name in names.items()}}


def _target_with(**sections: dict[str, Any]) -> str:
    data = yaml.safe_load(yaml.safe_dump(RRAM_A))
    for section, fields in sections.items():
        data[section] = fields if "model" in fields else {**data[section], **fields}
    return yaml.safe_dump(data)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


def _invoke(command: str, files: dict[str, Path]) -> tuple[int, str, str, BaseException | None]:
    args = shlex.split(command.format(**{k: str(v) for k, v in files.items()}))
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300", "NO_COLOR": "1"})
    return result.exit_code, ANSI.sub("", result.stdout), ANSI.sub("", result.stderr), result.exception


# --- the catalogue -------------------------------------------------------------------------------


def test_the_catalogue_is_large() -> None:
    assert len(CLI_CASES) + len(WARNING_CASES) + len(PYTHON_CASES) >= 60


@pytest.mark.parametrize("command, words", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_command_line(command: str, words: list[str], files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(files["dir"])  # a default output would land here, and be caught by the snapshot
    before = _snapshot(files["dir"])
    code, out, err, exception = _invoke(command, files)
    if exception is not None and not isinstance(exception, SystemExit):
        raise AssertionError(f"rramc {command} crashed with {type(exception).__name__}: {exception}")
    assert code != 0, f"rramc {command} succeeded:\n{out}"
    assert "Traceback" not in out + err
    if code == 2:  # a usage error, reported by the command-line parser in its own box
        message = " ".join(err.replace("│", " ").split())
    else:
        assert err.lstrip().startswith("error: ") and err.count("error:") == 1, err
        message = " ".join(err.split())
    missing = [w for w in words if w not in message]
    assert not missing, f"rramc {command}: message lacks {missing}:\n{message}"
    assert _snapshot(files["dir"]) == before, f"rramc {command} changed or left files"


@pytest.mark.parametrize("command, words", [c[1:] for c in WARNING_CASES], ids=[c[0] for c in WARNING_CASES])
def test_untrustworthy_results_warn(command: str, words: list[str], files: dict[str, Path]) -> None:
    code, out, err, exception = _invoke(command, files)
    assert code == 0 and exception is None, f"rramc {command} failed:\n{out}\n{err}"
    message = " ".join(err.split())
    assert "warning:" in message and all(w in message for w in words), f"rramc {command}: stderr lacks {words}:\n{err}"


# --- Python --------------------------------------------------------------------------------------


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))


def _exe() -> rramc.Executable:
    return rramc.compile(_net(), "rram_a", torch.rand(64, 1, 8, 8), input_range=(0, 1))


def _nan_batch() -> torch.Tensor:
    x = torch.rand(64, 1, 8, 8)
    x[3, 0, 2, 2] = float("nan")
    return x


PYTHON_CASES: list[tuple[str, Callable[[], Any], str, list[str]]] = [
    # (id, call, "error" or "warning", words)
    ("load-target-dict", lambda: rramc.load_target({"name": "x"}), "error", ["dict"]),
    ("load-target-int", lambda: rramc.load_target(42), "error", ["int"]),
    ("run-none", lambda: _exe().run(None), "error", ["takes an rramc Dataset", "NoneType"]),
    ("run-a-tensor", lambda: _exe().run(torch.rand(4, 1, 8, 8)), "error", ["takes an rramc Dataset", "exe(x)"]),
    ("call-none", lambda: _exe()(None), "error", ["must be a tensor", "NoneType"]),
    ("call-nan", lambda: _exe()(_nan_batch()), "error", ["NaN"]),
    ("seed-negative", lambda: _exe()(torch.rand(2, 1, 8, 8), seed=-1), "error", ["seed -1"]),
    ("seed-too-large", lambda: _exe()(torch.rand(2, 1, 8, 8), seed=2**70), "error", ["2**63 - 1"]),
    ("pipeline-empty", lambda: rramc.compile(_net(), "rram_a", torch.rand(8, 1, 8, 8), pipeline=[]), "error", ["empty"]),
    ("pipeline-with-a-number", lambda: rramc.compile(_net(), "rram_a", torch.rand(8, 1, 8, 8), pipeline=["canonicalize", 42]),
     "error", ["pipeline item 1", "int 42"]),
    ("pipeline-of-another-type", lambda: rramc.compile(_net(), "rram_a", torch.rand(8, 1, 8, 8), pipeline=42), "error", ["int"]),
    ("compile-a-number", lambda: rramc.compile(42, "rram_a", torch.rand(8, 64)), "error", ["cannot compile a int"]),
    ("compile-without-example", lambda: rramc.compile(_net(), "rram_a"), "error", ["example_input"]),
    ("compile-unknown-target", lambda: rramc.compile(_net(), "rram_z", torch.rand(8, 1, 8, 8)), "error", ["rram_z"]),
    ("input-range-reversed", lambda: rramc.compile(_net(), "rram_a", torch.rand(8, 1, 8, 8), input_range=(1, 0)), "error",
     ["low < high"]),
    ("calibration-nan", lambda: rramc.compile(_net(), "rram_a", _nan_batch()), "error", ["NaN"]),
    ("calibration-one-sample", lambda: rramc.compile(_net(), "rram_a", torch.rand(1, 1, 8, 8), input_range=(0, 1)), "warning",
     ["calibrated on 1 sample"]),
    ("calibration-all-zero", lambda: rramc.compile(_net(), "rram_a", torch.zeros(64, 1, 8, 8), input_range=(0, 1)), "warning",
     ["all zero"]),
    ("calibration-all-equal", lambda: rramc.compile(_net(), "rram_a", torch.full((64, 1, 8, 8), 0.3), input_range=(0, 1)),
     "warning", ["all equal"]),
    ("dataset-wrong-shape", lambda: rramc.load_dataset("digits").reshaped_for((65,)), "error", ["65"]),
    ("dataset-unknown", lambda: rramc.load_dataset("imagenet"), "error", ["imagenet", "digits"]),
    ("pass-file-missing", lambda: rramc.pipeline.load_pass_file("no_such_pass.py"), "error", ["no such file"]),
    ("cost-negative", lambda: rramc.load_target("rram_a").with_changes(cost={"adc_energy_per_step": -1e-15}), "error",
     ["field 'cost.adc_energy_per_step'", ">= 0", "[J]"]),
    ("cost-unknown-field", lambda: rramc.load_target("rram_a").with_changes(cost={"adc_power": 2e-3}), "error",
     ["field 'cost'", "adc_power", "adc_energy_per_step"]),
    ("cost-in-picojoules", lambda: rramc.load_target("rram_a").with_changes(cost={"dac_energy_per_bit": 0.39}), "error",
     ["field 'cost.dac_energy_per_bit'", "<= 1e-06"]),
    ("cost-not-a-number", lambda: rramc.load_target("rram_a").with_changes(cost={"cell_area": "4F2"}), "error",
     ["field 'cost.cell_area'", "'4F2'", "[mm²]"]),
]


@pytest.mark.parametrize("call, kind, words", [c[1:] for c in PYTHON_CASES], ids=[c[0] for c in PYTHON_CASES])
def test_bad_python_call(call: Callable[[], Any], kind: str, words: list[str]) -> None:
    if kind == "error":
        with pytest.raises(rramc.RramcError) as caught:
            call()
        message = str(caught.value)
    else:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            call()
        message = " ".join(str(w.message) for w in seen if issubclass(w.category, rramc.RramcWarning))
    missing = [w for w in words if w not in message]
    assert not missing, f"{kind} lacks {missing}: {message!r}"


# --- what is right must stay right ---------------------------------------------------------------


def test_the_same_command_writes_the_same_bytes(files: dict[str, Path], tmp_path: Path) -> None:
    """Determinism: the same compile (reconstruction included) and the same run, twice, give identical files."""
    written = []
    for attempt in ("a", "b"):
        exe, report = tmp_path / f"{attempt}.rramx", tmp_path / f"{attempt}.json"
        for command in (f"compile {{pt2}} -t rram_b --reconstruct --epochs 1 --train-samples 256 -o {exe}",
                        f"run {exe} --limit 100 --seed 3 --json {report}"):
            code, out, err, _ = _invoke(command, files)
            assert code == 0, out + err
        written.append((exe.read_bytes(), report.read_bytes()))
    assert written[0][0] == written[1][0], "two identical compiles wrote different executables"
    assert written[0][1].replace(b"a.rramx", b"b.rramx") == written[1][1], "two identical runs wrote different reports"
    # safetensors orders the header's metadata by a hash map: the same executable must still be the same bytes every time
    exe = rramc.load_executable(tmp_path / "a.rramx")
    assert {serialize(exe.graph, exe.target, exe.metadata, exe.original) for _ in range(12)} == {written[0][0]}


def test_the_readme_pass_runs_from_a_local_file(files: dict[str, Path], tmp_path: Path) -> None:
    """The README's 'Writing a pass' example, imports and all, compiles a model through --pass-file."""
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text(encoding="utf-8")
    start = text.index("A pass in a local file needs no package")
    code = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL).group(1)  # type: ignore[union-attr]
    (tmp_path / "my_pass.py").write_text(code.replace('name = "clip_weights"', 'name = "readme_clip_weights"'))
    out = tmp_path / "clipped.rramx"
    command = (f"compile {{pt2}} -t rram_a --pass-file {tmp_path / 'my_pass.py'} -o {out} "
               "-p 'canonicalize,readme_clip_weights{{percentile=90}},quantize,tile,calibrate,emit'")
    status, stdout, stderr, _ = _invoke(command, files)
    assert status == 0, stdout + stderr
    exe = rramc.load_executable(out)
    assert exe.metadata["pipeline"] == "canonicalize,readme_clip_weights{percentile=90.0},quantize,tile,calibrate,emit"
    rramc.PASSES.unregister("readme_clip_weights")


def test_a_flat_input_model_sweeps_as_it_compiles(tmp_path: Path) -> None:
    """sweep reshapes the data set for a network that takes flat inputs, as compile and --reconstruct do."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    save_exported(net, torch.rand(2, 64), tmp_path / "flat.pt2", dataset="digits")
    files = {"flat": tmp_path / "flat.pt2", "out": tmp_path / "sweep"}
    code, out, err, _ = _invoke("sweep {flat} -t rram_a --k 2.5 --epochs 1 --train-samples 128 --test-samples 60 -o {out}", files)
    assert code == 0, out + err
    assert (tmp_path / "sweep" / "sweep.csv").read_text().count("\n") == 2


def test_compiling_a_recorded_archive_in_python_uses_its_data_set() -> None:
    """rramc.compile('model.pt2', target) calibrates on the data set the file records, as the CLI does."""
    path = resources.files("rramc.samples") / "digits_mlp.pt2"
    with resources.as_file(path) as model:
        exe = rramc.compile(model, "rram_a")
    assert exe.metadata["calibration"] == "digits"
    assert exe.run(rramc.load_dataset("digits", "test")).chip_accuracy > 0.5
