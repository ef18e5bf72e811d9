"""The executable file: a faithful round trip, and nothing partial on failure."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

import rramc
from rramc.errors import ExecutableFormatError, RramcError
from rramc.hardware import Target
from rramc.ir import CrossbarOp, DeviceTraining, InputRange, parse_graph
from rramc.runtime.file_format import FORMAT_VERSION


def test_save_load_round_trip_is_exact(trained_cnn, digits_train, digits_test, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = rramc.load_target("rram_b").with_changes(nonidealities={"programming_sigma": 0.02})
    exe = rramc.compile(trained_cnn, target, digits_train.images[:128], metadata={"note": "round trip"}, exact_weights=True)
    path = exe.save(tmp_path / "cnn.rramx")
    loaded = rramc.load_executable(path)
    assert str(loaded.graph) == str(exe.graph)
    assert loaded.graph.to_text() == exe.graph.to_text()  # every value, every typed attribute
    assert loaded.target == exe.target
    assert loaded.metadata == exe.metadata and loaded.metadata["note"] == "round trip"
    for a, b in zip(exe.graph, loaded.graph):
        assert a.meta == b.meta and a.inputs == b.inputs
        if isinstance(a.op, CrossbarOp):
            assert torch.equal(a.op.g_pos, b.op.g_pos) and torch.equal(a.op.adc_range, b.op.adc_range)
            assert a.op.row_splits == b.op.row_splits and isinstance(b.op.row_splits, tuple)
    x = digits_test.images[:16]
    assert torch.equal(loaded(x, seed=5), exe(x, seed=5))
    assert [p.name for p in tmp_path.iterdir()] == ["cnn.rramx"]  # no temporary file left


def test_table_device_targets_are_embedded_in_the_executable(tmp_path: Path) -> None:
    volts = [0.0, 0.25, 0.5, 0.75, 1.0]
    states = [1e-6, 1e-4]
    rows = "\n".join(f"{v},{states[0] * v ** 1.5},{states[1] * v ** 1.5}" for v in volts)
    (tmp_path / "iv.csv").write_text("voltage,1e-6,1e-4\n" + rows + "\n")
    (tmp_path / "t.yaml").write_text(
        "name: measured\ndevice: {model: table, file: iv.csv}\nconductance: {g_min: 1.0e-6, g_max: 1.0e-4}\n"
        "crossbar: {rows: 16, cols: 16, read_voltage: 1.0}\n"
    )
    exe = rramc.compile(torch.nn.Linear(4, 3), str(tmp_path / "t.yaml"), torch.rand(8, 4))
    path = exe.save(tmp_path / "m.rramx")
    (tmp_path / "iv.csv").unlink()  # the executable does not depend on the CSV any more
    loaded = rramc.load_executable(path)
    x = torch.rand(5, 4)
    assert torch.equal(loaded(x), exe(x))


def test_a_failed_save_leaves_nothing(tmp_path: Path) -> None:
    exe = rramc.compile(torch.nn.Linear(4, 3), "ideal", torch.rand(8, 4))
    with pytest.raises(RramcError, match="cannot write the executable to .*missing"):
        exe.save(tmp_path / "missing" / "m.rramx")
    assert list(tmp_path.iterdir()) == []


DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(("name", "prefix"), [("format_v1_mlp_rram_a", ""), ("format_v1_mlp_rram_a_reconstructed", "recon_")])
def test_format_1_files_are_migrated_and_compute_what_they_did(name: str, prefix: str, tmp_path: Path) -> None:
    """Executables written by rramc before the core rebuild (format 1, tests/data/make_format_v1.py) load:
    input_scale/input_signed and meta's input_range become #input_range, meta's reconstruction record
    a #device_training for the file's target, and the chip and float model compute what the old
    rramc computed (up to float32 rounding: the runtime's arithmetic was rewritten)."""
    exe = rramc.load_executable(DATA / f"{name}.rramx")
    manifest = json.loads(safetensors.safe_open(str(DATA / f"{name}.rramx"), "pt").metadata()["rramx.manifest"])
    assert manifest["format_version"] == 1
    old_nodes = {entry["name"]: entry for entry in manifest["nodes"]}
    layers = exe.graph.nodes_of(CrossbarOp)
    assert len(layers) == 2
    for node in layers:
        old = old_nodes[node.name]
        assert node.op.input_range == InputRange(float(old["attrs"]["input_scale"]), old["attrs"]["input_signed"],
                                                 "reconstruct" if prefix else old["meta"]["input_range"])
        assert not {"input_range", "input_scale", "input_signed", "reconstructed"} & set(node.meta)
        assert (node.op.weight_encoding, node.op.input_encoding) == ("differential", "amplitude")
        if prefix:
            record = old["meta"]["reconstructed"]
            training = node.op.trained_for
            assert training == DeviceTraining(target=training.target, granularity="column", epochs=record["epochs"],
                                              init=record["init"], seed=record["seed"], in_loop=tuple(record["in_loop"]),
                                              train_accuracy=record["train_accuracy"])
            assert Target.from_mapping(training.target, "the record") == exe.target  # the file's own target
        else:
            assert node.op.trained_for is None
    assert parse_graph(exe.graph.to_text()).to_text() == exe.graph.to_text()
    expected = safetensors.torch.load_file(str(DATA / "format_v1_outputs.safetensors"))
    torch.testing.assert_close(exe(expected["x"], seed=3), expected[prefix + "chip"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(exe.reference(expected["x"]), expected[prefix + "reference"], rtol=1e-5, atol=1e-6)
    # saved again, it is a file of today's format that loads to the same graph (its weights kept exactly, as they were)
    path = exe.save(tmp_path / "again.rramx")
    assert json.loads(safetensors.safe_open(str(path), "pt").metadata()["rramx.manifest"])["format_version"] == FORMAT_VERSION
    assert rramc.load_executable(path).graph.to_text() == exe.graph.to_text()


def _rewrite_tensor(data: bytes, key: str, change) -> bytes:  # type: ignore[no-untyped-def]
    """The file with one tensor replaced (its bytes kept) and the manifest, with its checksums, untouched."""
    header_len = struct.unpack("<Q", data[:8])[0]
    metadata = json.loads(data[8:8 + header_len])["__metadata__"]
    tensors = safetensors.torch.load(data)
    tensors[key] = change(tensors[key]).contiguous()
    return safetensors.torch.save(tensors, metadata=metadata)


@pytest.mark.parametrize(("what", "change"), [
    ("reshaped", lambda t: t.reshape(t.shape[1], t.shape[0])),
    ("re-typed", lambda t: t.view(torch.int32)),
])
def test_checksums_cover_dtype_and_shape(tmp_path: Path, what: str, change) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    exe = rramc.compile(torch.nn.Linear(5, 3), "ideal", torch.rand(64, 5))
    (node,) = exe.graph.nodes_of(CrossbarOp)
    data = exe.save(tmp_path / "m.rramx").read_bytes()
    key = f"{node.name}.g_pos"
    bad = _rewrite_tensor(data, key, change)
    assert safetensors.torch.load(bad)[key].numpy().tobytes() == safetensors.torch.load(data)[key].numpy().tobytes()
    (tmp_path / "bad.rramx").write_bytes(bad)
    with pytest.raises(ExecutableFormatError, match=f"corrupt: tensor '{key}' does not match its checksum"):
        rramc.load_executable(tmp_path / "bad.rramx")
    (tmp_path / "same.rramx").write_bytes(_rewrite_tensor(data, key, lambda t: t))  # control: the rewrite itself is harmless
    assert rramc.load_executable(tmp_path / "same.rramx").graph.to_text() == rramc.load_executable(tmp_path / "m.rramx").graph.to_text()
