"""Bad input to the ``rramc`` command line.

Every case must end with one clear message (naming the file, the field and what is allowed), a
non-zero exit status, no traceback, and no partial output file (nor stray temporary file).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import struct
import subprocess
import sys
import uuid
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml
from typer.testing import CliRunner

import rramc
from rramc.cli import app
from rramc.datasets.idx import write_idx
from rramc.frontend import save_exported
from rramc.runtime.file_format import FORMAT_VERSION
from rramc.samples import models

RRAM_A_YAML = (resources.files("rramc.targets") / "rram_a.yaml").read_text(encoding="utf-8")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --- helpers ---------------------------------------------------------------------------------


def fails(*args: object) -> str:
    """Run the CLI in-process, insist on one clean error; return the message (after 'error: ')."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250", "NO_COLOR": "1"})
    command = "rramc " + " ".join(map(str, args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{command} crashed with {type(result.exception).__name__}: {result.exception}")
    out, err = ANSI.sub("", result.stdout), ANSI.sub("", result.stderr)
    assert result.exit_code != 0, f"{command} succeeded:\n{out}"
    assert "Traceback" not in out + err, f"{command} printed a traceback:\n{err}"
    assert err.lstrip().startswith("error: "), f"{command}: stderr does not start with the message:\n{err}"
    assert err.count("error:") == 1, f"{command}: more than one message:\n{err}"
    assert "wrote" not in out
    return " ".join(err.strip().removeprefix("error: ").split())  # undo any line wrapping


def compile_fails(model: object, *args: object, tmp_path: Path, target: str = "ideal") -> str:
    """``rramc compile`` into an empty folder must fail and leave that folder empty."""
    out_dir = tmp_path / f"out_{uuid.uuid4().hex[:6]}"
    out_dir.mkdir()
    message = fails("compile", model, "-t", target, "-o", out_dir / "net.rramx", *args)
    assert not (out_dir / "net.rramx").exists()
    assert list(out_dir.iterdir()) == [], "compile left files behind"
    return message


def run_fails(executable: object, *args: object, tmp_path: Path) -> str:
    """``rramc run --json`` must fail without writing the report."""
    report = tmp_path / f"report_{uuid.uuid4().hex[:6]}.json"
    before = set(os.listdir(tmp_path))
    message = fails("run", executable, "--json", report, *args)
    assert not report.exists()
    assert set(os.listdir(tmp_path)) == before, "run left files behind"
    return message


def has_all(message: str, *words: str) -> None:
    missing = [w for w in words if w not in message]
    assert not missing, f"message lacks {missing}:\n{message}"


def rramc_subprocess(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "rramc.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


# --- shared files ----------------------------------------------------------------------------


NETS = '''
import torch
import torch.nn as nn
from rramc.samples import models

def small():
    return models.mlp(64, 32, 10)

def wider():  # same layer names as small(), other sizes
    return models.mlp(64, 48, 10)

def renamed():  # same sizes as small(), other layer names
    return TinyNet()

def not_a_module():
    return 42

def raises():
    raise ValueError("kaboom in the factory")

class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(self.fc1(x.flatten(1)).relu())

class Gate(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, -1)

class Squash(nn.Module):
    def forward(self, x):
        return torch.special.i0(x)

class Unsupported(nn.Module):
    """a cumulative sum, then a reflect-padded conv, then a Bessel function: three problems in three layers."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.gate = Gate()
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.squash = Squash()
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.head(self.squash(self.grouped(self.gate(self.stem(x)))).flatten(1))

class UnsupportedConvFirst(Unsupported):
    """The same three problems, the conv first."""

    def forward(self, x):
        return self.head(self.squash(self.gate(self.grouped(self.stem(x)))).flatten(1))

def unsupported():
    return Unsupported()

def unsupported_conv_first():
    return UnsupportedConvFirst()
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, write_digits_mlp) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("bad_files")
    paths = write_digits_mlp(d)
    model = models.mlp(64, 32, 10)
    model.load_state_dict(torch.load(paths["state"]))
    torch.save(model.eval(), d / "whole_module.pt")
    (d / "bad_nets.py").write_text(NETS)
    (d / "broken_import.py").write_text("import does_not_exist_xyz\n\ndef small():\n    return None\n")
    return {"dir": d, **paths, "whole": d / "whole_module.pt", "nets": d / "bad_nets.py", "broken": d / "broken_import.py"}


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Valid MNIST-format IDX files of 28×28 images."""
    d = tmp_path_factory.mktemp("mnist_idx")
    rng = np.random.RandomState(0)
    for prefix, n in (("train", 64), ("t10k", 32)):
        write_idx(d / f"{prefix}-images-idx3-ubyte", rng.randint(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(d / f"{prefix}-labels-idx1-ubyte", rng.randint(0, 10, n).astype(np.uint8))
    return d


# --- target files ----------------------------------------------------------------------------


def _rram_a() -> dict:
    return yaml.safe_load(RRAM_A_YAML)


def _with(section: str, **changes: object) -> str:
    data = _rram_a()
    data[section].update(changes)
    return yaml.safe_dump(data)


def _without(section: str) -> str:
    data = _rram_a()
    del data[section]
    return yaml.safe_dump(data)


def _extra_section() -> str:
    data = _rram_a()
    data["chips"] = 4
    return yaml.safe_dump(data)


def _device(model: str) -> str:
    data = _rram_a()
    data["device"] = {"model": model}
    return yaml.safe_dump(data)


SYNTAX_ERROR = "name: broken\ndevice:\n  model: sinh\n   nonlinearity_k: 7.5\nconductance: {}\n"

BAD_TARGETS = {
    "syntax": (SYNTAX_ERROR, ["not valid YAML", "line 4"]),
    "not_a_mapping": ("- rows\n- cols\n", ["expected a mapping", "name, device, conductance, crossbar", "got list"]),
    "missing_section": (_without("crossbar"), ["'crossbar'", "missing"]),
    "unknown_section": (_extra_section(), ["chips", "allowed:", "crossbar", "nonidealities"]),
    "unknown_field": (_with("crossbar", colums=64), ["'crossbar'", "colums", "allowed:", "rows", "cols", "adc_bits", "weight_encoding"]),
    "wrong_type": (_with("crossbar", rows="many"), ["'crossbar.rows'", "'many'", "an integer", ">= 1"]),
    "rows_zero": (_with("crossbar", rows=0), ["'crossbar.rows'", "got 0", ">= 1"]),
    "g_max_below_g_min": (_with("conductance", g_min=1e-4, g_max=1e-6), ["'conductance'", "g_max", "g_min", "above"]),
    "nonlinearity_k": (_with("device", nonlinearity_k=1.5), ["'device.nonlinearity_k'", "1.5", ">= 2"]),
    "adc_bits": (_with("crossbar", adc_bits=1), ["'crossbar.adc_bits'", "got 1", ">= 2", "<= 16", "null"]),
    "weight_encoding": (_with("crossbar", weight_encoding="single"), ["'crossbar.weight_encoding'", "'single'", "differential, offset"]),
    "device_model": (_device("quantum"), ["'device.model'", "'quantum'", "linear", "sinh", "sinh_state", "table"]),
}


@pytest.mark.parametrize("case", list(BAD_TARGETS))
def test_bad_target_file(case: str, files: dict[str, Path], tmp_path: Path) -> None:
    text, words = BAD_TARGETS[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    has_all(compile_fails(files["pt2"], tmp_path=tmp_path, target=str(path)), str(path), *words)
    has_all(fails("targets", path), str(path), *words)


def test_unknown_builtin_target(files: dict[str, Path], tmp_path: Path) -> None:
    message = compile_fails(files["pt2"], tmp_path=tmp_path, target="rram_z")
    has_all(message, "unknown target 'rram_z'", "ideal, rram_a, rram_b")
    has_all(fails("targets", "rram_z"), "rram_z", "ideal, rram_a, rram_b")


def test_missing_target_file(files: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "no_such_chip.yaml"
    has_all(compile_fails(files["pt2"], tmp_path=tmp_path, target=str(missing)), str(missing), "does not exist")
    has_all(fails("targets", missing), str(missing), "does not exist")


# --- model files -----------------------------------------------------------------------------


def test_model_path_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nothing_here.pt2"
    has_all(compile_fails(missing, tmp_path=tmp_path), str(missing), "does not exist")


def test_model_path_is_a_directory(tmp_path: Path) -> None:
    folder = tmp_path / "a_folder"
    folder.mkdir()
    has_all(compile_fails(folder, "-c", "digits", tmp_path=tmp_path), str(folder), "is a directory")


def test_model_file_of_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    message = compile_fails(path, "-c", "digits", tmp_path=tmp_path)
    has_all(message, str(path), "not a PyTorch model file")
    # random bytes are not a pickled module: do not suggest running them with --trust-pickle
    assert "--trust-pickle" not in message and "pickled Python object" not in message


def test_model_file_of_text(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("these are not the weights you are looking for\n")
    has_all(compile_fails(path, "-c", "digits", tmp_path=tmp_path), str(path), "not a PyTorch model file")


def test_truncated_pt2(files: dict[str, Path], tmp_path: Path) -> None:
    data = files["pt2"].read_bytes()
    path = tmp_path / "half.pt2"
    path.write_bytes(data[: len(data) // 2])
    has_all(compile_fails(path, tmp_path=tmp_path), str(path), "truncated")


def test_state_dict_without_model(files: dict[str, Path], tmp_path: Path) -> None:
    message = compile_fails(files["state"], "-c", "digits", tmp_path=tmp_path)
    has_all(message, str(files["state"]), "state_dict", "--model module:factory")


@pytest.mark.parametrize("factory, words", [
    ("{nets}:no_such_function", ["no attribute 'no_such_function'"]),
    ("{broken}:small", ["cannot import", "does_not_exist_xyz"]),
    ("no_such_module_xyz:small", ["cannot import", "no_such_module_xyz"]),
    ("{nets}", ["expected module:function or path/to/file.py:function"]),
    ("{dir}/missing.py:small", ["missing.py", "does not exist"]),
    ("{nets}:not_a_module", ["not an nn.Module", "int"]),
    ("{nets}:raises", ["calling it failed", "kaboom in the factory"]),
    ("{nets}:renamed", ["does not fit", "missing", "fc1.weight", "unexpected", "1.weight"]),
    ("{nets}:wider", ["does not fit", "1.weight", "[48, 64]", "[32, 64]"]),
], ids=["missing_function", "import_error_in_file", "missing_module", "no_colon", "missing_file", "returns_int",
        "factory_raises", "mismatched_keys", "mismatched_shapes"])
def test_state_dict_with_a_wrong_factory(factory: str, words: list[str], files: dict[str, Path], tmp_path: Path) -> None:
    spec = factory.format(nets=files["nets"], broken=files["broken"], dir=files["dir"])
    message = compile_fails(files["state"], "--model", spec, "-c", "digits", tmp_path=tmp_path)
    has_all(message, *words)
    assert message.startswith(f"--model '{spec}'") or str(files["state"]) in message


def test_pickled_module_without_trust_pickle(files: dict[str, Path], tmp_path: Path) -> None:
    message = compile_fails(files["whole"], "-c", "digits", tmp_path=tmp_path)
    has_all(message, str(files["whole"]), "pickled", "runs code", "--trust-pickle",
            "torch.export", "state_dict", "--model module:factory")


@pytest.mark.parametrize("factory", ["unsupported", "unsupported_conv_first"])
def test_unsupported_ops_are_all_listed_with_their_layers(factory: str, files: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(files["dir"]))
    monkeypatch.delitem(sys.modules, "bad_nets", raising=False)
    import bad_nets  # type: ignore[import-not-found]

    model = getattr(bad_nets, factory)().eval()
    save_exported(model, torch.rand(2, 1, 8, 8), tmp_path / "bad.pt2", dataset="digits")
    torch.save(model.state_dict(), tmp_path / "bad_state.pt")
    from_pt2 = compile_fails(tmp_path / "bad.pt2", tmp_path=tmp_path)
    from_state = compile_fails(tmp_path / "bad_state.pt", "--model", f"{files['nets']}:{factory}", "-c", "digits",
                               tmp_path=tmp_path)
    for message in (from_pt2, from_state):
        has_all(message, "3 unsupported operation(s)", "cumsum", "layer 'gate'", "i0", "layer 'squash'",
                "layer 'grouped'", "rramc supports:")


# --- data sets -------------------------------------------------------------------------------


def test_unknown_data_set(files: dict[str, Path], tmp_path: Path) -> None:
    has_all(run_fails(files["exe"], "--dataset", "imagenet", tmp_path=tmp_path),
            "unknown data set 'imagenet'", "digits, mnist, fashion-mnist, cifar10")
    has_all(compile_fails(files["pt2"], "--calibration", "imagenet", tmp_path=tmp_path),
            "unknown data set 'imagenet'", "digits, mnist, fashion-mnist, cifar10")


def test_unknown_split(files: dict[str, Path], tmp_path: Path) -> None:
    has_all(run_fails(files["exe"], "--split", "validation", tmp_path=tmp_path), "'validation'", "train, test")


def test_mnist_in_an_empty_data_dir(files: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    message = run_fails(files["exe"], "--dataset", "mnist", "--data-dir", empty, tmp_path=tmp_path)
    has_all(message, "mnist", "test split was not found", "Searched:", str(empty), str(empty / "mnist"),
            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "--download")


def test_digits_model_on_28x28_files(files: dict[str, Path], mnist_dir: Path, tmp_path: Path) -> None:
    message = run_fails(files["exe"], "--dataset", "mnist", "--data-dir", mnist_dir, tmp_path=tmp_path)
    has_all(message, "'mnist'", "[1, 28, 28]", "784", "[1, 8, 8]", "64")
    message = compile_fails(files["pt2"], "--calibration", "mnist", "--data-dir", mnist_dir, tmp_path=tmp_path)
    has_all(message, "'mnist'", "[1, 28, 28]", "784", "[1, 8, 8]", "64")


def test_digits_state_dict_calibrated_on_28x28_files(files: dict[str, Path], mnist_dir: Path, tmp_path: Path) -> None:
    """The input shape comes from the data set, and the network cannot take it."""
    message = compile_fails(files["state"], "--model", f"{files['nets']}:small", "--calibration", "mnist",
                            "--data-dir", mnist_dir, tmp_path=tmp_path)
    has_all(message, str(files["state"]), "28, 28")


def test_input_shape_that_does_not_fit_the_network(files: dict[str, Path], tmp_path: Path) -> None:
    message = compile_fails(files["state"], "--model", f"{files['nets']}:small", "-c", "digits",
                            "--input-shape", "1,9,9", tmp_path=tmp_path)
    has_all(message, str(files["state"]), "9, 9")


@pytest.mark.parametrize("damage, words", [
    ("truncate", ["t10k-images-idx3-ubyte", "truncated", "(32, 28, 28)"]),
    ("magic", ["t10k-images-idx3-ubyte", "magic number", "0x00000803"]),
    ("count", ["t10k-labels-idx1-ubyte", "32 images", "31 labels"]),
    ("label", ["t10k-labels-idx1-ubyte", "label 12", "0..9"]),
    ("gzip", ["t10k-images-idx3-ubyte.gz", "not a valid gzip file"]),
])
def test_corrupt_idx_files(damage: str, words: list[str], files: dict[str, Path], mnist_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "mnist"
    d.mkdir()
    images = (mnist_dir / "t10k-images-idx3-ubyte").read_bytes()
    labels = (mnist_dir / "t10k-labels-idx1-ubyte").read_bytes()
    if damage == "truncate":
        images = images[:1000]
    elif damage == "magic":
        images = b"\x00\x00\x08\x01" + images[4:]
    elif damage == "count":
        labels = labels[:4] + (31).to_bytes(4, "big") + labels[8:-1]
    elif damage == "label":
        labels = labels[:8] + bytes([12]) + labels[9:]
    if damage == "gzip":
        (d / "t10k-images-idx3-ubyte.gz").write_bytes(images)  # not compressed
    else:
        (d / "t10k-images-idx3-ubyte").write_bytes(images)
    (d / "t10k-labels-idx1-ubyte").write_bytes(labels)
    message = run_fails(files["exe"], "--dataset", "mnist", "--data-dir", d, tmp_path=tmp_path)
    has_all(message, "mnist", str(d), *words)


# --- executables -----------------------------------------------------------------------------


def _header(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _with_header(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _rewrite_manifest(data: bytes, **changes: object) -> bytes:
    """The file with manifest fields changed and the manifest checksum recomputed."""
    header, body = _header(data)
    manifest = json.loads(header["__metadata__"]["rramx.manifest"])
    manifest.update(changes)
    text = json.dumps(manifest, sort_keys=True)
    header["__metadata__"]["rramx.manifest"] = text
    header["__metadata__"]["rramx.manifest_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    return _with_header(header, body)


def _executable(kind: str, files: dict[str, Path], tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.rramx"
    data = files["exe"].read_bytes()
    if kind == "missing":
        return path
    if kind == "random":
        path.write_bytes(random.Random(1).randbytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "flipped":
        header, body = _header(data)
        begin, end = header["1.g_pos"]["data_offsets"]
        flipped = bytearray(body)
        flipped[(begin + end) // 2] ^= 0x01
        path.write_bytes(data[: len(data) - len(body)] + bytes(flipped))
    elif kind == "newer":
        path.write_bytes(_rewrite_manifest(data, format_version=FORMAT_VERSION + 1, rramc_version="9.0.0"))
    elif kind == "manifest_edited":
        header, body = _header(data)
        header["__metadata__"]["rramx.manifest"] = header["__metadata__"]["rramx.manifest"].replace('"ideal"', '"ideai"')
        path.write_bytes(_with_header(header, body))
    elif kind == "plain_safetensors":
        safetensors.torch.save_file({"weight": torch.zeros(4, 4)}, str(path), metadata={"format": "pt"})
    elif kind == "directory":
        path.mkdir()
    return path


BAD_EXECUTABLES = {
    "missing": ["does not exist"],
    "directory": ["is not a file"],
    "empty": ["not an rramc executable", "empty file"],
    "random": ["not an rramc executable"],
    "truncated": ["truncated"],
    "flipped": ["corrupt", "tensor '1.g_pos'", "checksum"],
    "newer": [f"format {FORMAT_VERSION + 1}", "rramc 9.0.0", f"format {FORMAT_VERSION} and older", "Upgrade rramc", "recompile"],
    "manifest_edited": ["corrupt", "manifest", "checksum"],
    "plain_safetensors": ["not an rramc executable", "without an rramc manifest"],
}


@pytest.mark.parametrize("command", ["run", "inspect"])
@pytest.mark.parametrize("kind", list(BAD_EXECUTABLES))
def test_bad_executable(kind: str, command: str, files: dict[str, Path], tmp_path: Path) -> None:
    path = _executable(kind, files, tmp_path)
    message = run_fails(path, tmp_path=tmp_path) if command == "run" else fails("inspect", path)
    has_all(message, str(path), *BAD_EXECUTABLES[kind])


def test_rewriting_the_manifest_keeps_a_valid_file(files: dict[str, Path], tmp_path: Path) -> None:
    """Control for the 'newer' case: the rewrite itself breaks nothing, only the version check fires."""
    path = tmp_path / "same.rramx"
    path.write_bytes(_rewrite_manifest(files["exe"].read_bytes(), format_version=FORMAT_VERSION))
    assert rramc.load_executable(path).target.name == "ideal"


def test_run_on_a_missing_cuda_device(files: dict[str, Path], tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    has_all(run_fails(files["exe"], "--device", "cuda", tmp_path=tmp_path), "--device cuda", "no CUDA device", "use cpu")
    has_all(run_fails(files["exe"], "--device", "tpu9", tmp_path=tmp_path), "'tpu9'", "not a torch device")


def test_run_with_limit_zero(files: dict[str, Path], tmp_path: Path) -> None:
    """Zero samples leave nothing to measure: a message, not a ZeroDivisionError."""
    has_all(run_fails(files["exe"], "--limit", "0", tmp_path=tmp_path), "0")


def test_run_with_a_bad_batch_size(files: dict[str, Path], tmp_path: Path) -> None:
    has_all(run_fails(files["exe"], "--batch-size", "0", tmp_path=tmp_path), "batch size", "0", "at least 1")


# --- pipelines and options -------------------------------------------------------------------


@pytest.mark.parametrize("pipeline, words", [
    ("canonicalize,bogus,tile,emit", ["unknown pass 'bogus'", "known: calibrate, canonicalize, emit, place, quantize, reconstruct, tile"]),
    ("canonicalize,quantize{lvls=8},tile,calibrate,emit", ["pass 'quantize' has no option 'lvls'", "levels", "dac_bits"]),
    ("canonicalize,quantize{levels=eight},tile,calibrate,emit", ["pass 'quantize' option 'levels'", "int", "'eight'"]),
    ("canonicalize,tile{balance=maybe},quantize,calibrate,emit", ["option 'balance'", "true or false", "'maybe'"]),
    ("canonicalize,quantize{granularity=row},tile,calibrate,emit", ["option 'granularity'", "column, layer", "'row'"]),
    ("canonicalize,quantize{levels},tile,calibrate,emit", ["option 'levels'", "needs a value"]),
    ("canonicalize,quantize{levels=8", ["cannot parse pipeline", "position"]),
    ("canonicalize,quantize,tile,calibrate", ["emit"]),
    ("canonicalize,quantize{levels=1},tile,calibrate,emit", ["quantize", "levels=1", "out of range"]),
    ("canonicalize,quantize,tile{rows=500},calibrate,emit", ["tile", "500 rows", "128-row arrays"]),
    ("canonicalize,tile,calibrate,emit", ["emit", "still a float linear", "run quantize"]),
], ids=["unknown_pass", "unknown_option", "bad_int", "bad_bool", "bad_choice", "no_value", "unbalanced_brace",
        "no_emit", "levels_out_of_range", "tile_too_big", "no_quantize"])
def test_bad_pipeline(pipeline: str, words: list[str], files: dict[str, Path], tmp_path: Path) -> None:
    has_all(compile_fails(files["pt2"], "--passes", pipeline, tmp_path=tmp_path), *words)


def test_empty_pipeline_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    """An explicit empty --passes is a pipeline without emit, not a request for the default one."""
    has_all(compile_fails(files["pt2"], "--passes", "", tmp_path=tmp_path), "empty")


def test_skip_a_pass_not_in_the_pipeline(files: dict[str, Path], tmp_path: Path) -> None:
    has_all(compile_fails(files["pt2"], "--skip", "optimise", tmp_path=tmp_path), "cannot skip", "optimise",
            "canonicalize, quantize, tile, calibrate, emit")


def test_skip_emit(files: dict[str, Path], tmp_path: Path) -> None:
    has_all(compile_fails(files["pt2"], "--skip", "emit", tmp_path=tmp_path), "produced no executable", "emit")


@pytest.mark.parametrize("shape, words", [
    ("abc", ["--input-shape 'abc'", "1,28,28"]),
    ("1,,8", ["--input-shape '1,,8'", "1,28,28"]),
    ("0,8", ["--input-shape '0,8'", "positive"]),
    ("-1,64", ["--input-shape '-1,64'", "positive"]),
])
def test_bad_input_shape(shape: str, words: list[str], files: dict[str, Path], tmp_path: Path) -> None:
    message = compile_fails(files["state"], "--model", f"{files['nets']}:small", "-c", "digits",
                            f"--input-shape={shape}", tmp_path=tmp_path)
    has_all(message, *words)


def test_state_dict_without_calibration_data(files: dict[str, Path], tmp_path: Path) -> None:
    """Without data the input shape must be given; with it, calibration works from the weights and says so."""
    message = compile_fails(files["state"], "--model", f"{files['nets']}:small", tmp_path=tmp_path)
    has_all(message, str(files["state"]), "--input-shape")
    out = tmp_path / "from_weights.rramx"
    result = CliRunner().invoke(app, ["compile", str(files["state"]), "--model", f"{files['nets']}:small", "--input-shape", "1,8,8",
                                      "-t", "ideal", "-o", str(out)])
    assert result.exit_code == 0 and "calibrated from the weights" in result.stderr, result.output
    assert rramc.load_executable(out).metadata["calibration"] == "weights"


def test_pipeline_name_and_pipeline_text_together_are_refused(files: dict[str, Path], tmp_path: Path) -> None:
    message = compile_fails(files["pt2"], "--pipeline", "least_squares", "--passes", "canonicalize,quantize,tile,calibrate,emit",
                            tmp_path=tmp_path)
    has_all(message, "--pipeline NAME", "--passes TEXT", "not both")


def test_unknown_pipeline_name_lists_the_pipelines(files: dict[str, Path], tmp_path: Path) -> None:
    has_all(compile_fails(files["pt2"], "--pipeline", "bogus", tmp_path=tmp_path),
            "'bogus'", "default", "least_squares", "naive", "reconstruct")


@pytest.mark.parametrize("which", ["model", "target"])
def test_output_that_is_an_input_is_refused(which: str, files: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "mlp.pt2"
    model.write_bytes(files["pt2"].read_bytes())
    target = tmp_path / "chip.yaml"
    target.write_text(RRAM_A_YAML)
    before = {path: path.read_bytes() for path in (model, target)}
    output = model if which == "model" else target
    message = fails("compile", model, "-t", target, "-o", output)
    has_all(message, f"--output {output} is an input of this command", "choose another output file")
    assert {path: path.read_bytes() for path in (model, target)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chip.yaml", "mlp.pt2"]  # no temporary file left


def test_output_into_a_missing_folder(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "folder" / "net.rramx"
    has_all(fails("compile", files["pt2"], "-t", "ideal", "-o", out), "does not exist", str(out.parent))
    assert not (tmp_path / "no").exists()


# --- the real command line -------------------------------------------------------------------


@pytest.mark.parametrize("case", ["target", "pickle", "executable"])
def test_subprocess_reports_one_message_and_exit_status_1(case: str, files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if case == "target":
        bad = tmp_path / "zero_rows.yaml"
        bad.write_text(_with("crossbar", rows=0))
        args: list[object] = ["compile", files["pt2"], "-t", bad, "-o", out / "net.rramx"]
        words = [str(bad), "'crossbar.rows'", "got 0", ">= 1"]
    elif case == "pickle":
        args = ["compile", files["whole"], "-t", "ideal", "-c", "digits", "-o", out / "net.rramx"]
        words = [str(files["whole"]), "--trust-pickle", "torch.export", "state_dict"]
    else:
        bad = _executable("flipped", files, tmp_path)
        args = ["run", bad, "--json", out / "report.json"]
        words = [str(bad), "corrupt", "checksum"]
    done = rramc_subprocess(*args, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout == ""
    err = ANSI.sub("", done.stderr).strip()
    assert err.startswith("error: ") and err.count("error:") == 1, err
    has_all(" ".join(err.split()), *words)
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no stray temp files
