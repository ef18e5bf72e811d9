"""The executable file: a faithful round trip, and nothing partial on failure."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rramc
from rramc.errors import RramcError
from rramc.ir import CrossbarOp


def test_save_load_round_trip_is_exact(trained_cnn, digits_train, digits_test, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = rramc.load_target("rram_b").with_changes(nonidealities={"programming_sigma": 0.02})
    exe = rramc.compile(trained_cnn, target, digits_train.images[:128], metadata={"note": "round trip"})
    path = exe.save(tmp_path / "cnn.rramx")
    loaded = rramc.load_executable(path)
    assert str(loaded.graph) == str(exe.graph)
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
