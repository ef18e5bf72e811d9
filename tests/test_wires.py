"""Resistive wires: the solver against independent references, its methods, errors, the place pass,
calibration and training through wires. (The ngspice comparison is in test_wires_ngspice.py.)"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import yaml
from typer.testing import CliRunner

import rramc
from rramc.cli import app
from rramc.errors import PassError, TargetError
from rramc.hardware.column_solver import Conductances, column_currents
from rramc.hardware.devices import LinearDevice, SinhDevice
from rramc.hardware.input_encoding import Read
from rramc.hardware.lowering import Lowering
from rramc.hardware.tiling import TileGrid
from rramc.hardware.wires import ResistiveWires, WiresNotConverged
from rramc.ir import CrossbarOp, Graph
from rramc.ir.cells import DensePairs
from rramc.runtime.executable import Executable
from rramc.sweep import grid_targets, parse_axis

pytestmark = pytest.mark.filterwarnings("ignore:calibrated on .* sample:rramc.errors.RramcWarning")

SINH = SinhDevice(nonlinearity_k=7.5, k_voltage=1.0)


def _cells(rows: int, outputs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    g_pos = 2e-8 + 1.98e-6 * torch.rand(rows, outputs, generator=g, dtype=torch.float64)
    g_neg = 2e-8 + 1.98e-6 * torch.rand(rows, outputs, generator=g, dtype=torch.float64)
    v = torch.rand(3, rows, generator=g, dtype=torch.float64)
    return v, g_pos, g_neg


def _kcl_solution(v: torch.Tensor, g_pos: torch.Tensor, g_neg: torch.Tensor, current, slope, r_word: float, r_bit: float,
                  r_driver: float, r_sense: float) -> torch.Tensor:
    """Newton on Kirchhoff's law for every node at once, dense (the independent reference)."""
    rows, outputs = g_pos.shape
    cols = 2 * outputs
    g = torch.stack([g_pos, g_neg], -1).reshape(rows, cols)
    n = rows * cols
    index = torch.arange(n).reshape(rows, cols)
    results = []
    for source in v:
        # Conductance matrix of the wires alone (word nodes 0..n-1, bit nodes n..2n-1) and its source terms.
        wires = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
        inject = torch.zeros(2 * n, dtype=torch.float64)

        def join(a: int, b: int, conductance: float) -> None:
            wires[a, a] += conductance
            wires[b, b] += conductance
            wires[a, b] -= conductance
            wires[b, a] -= conductance

        for i in range(rows):
            for c in range(cols - 1):
                join(int(index[i, c]), int(index[i, c + 1]), 1 / r_word)
            wires[index[i, 0], index[i, 0]] += 1 / r_driver
            inject[index[i, 0]] += source[i] / r_driver
        for c in range(cols):
            for i in range(rows - 1):
                join(n + int(index[i, c]), n + int(index[i + 1, c]), 1 / r_bit)
            wires[n + index[-1, c], n + index[-1, c]] += 1 / r_sense
        x = torch.cat([source[:, None].expand(rows, cols).reshape(-1), torch.zeros(n, dtype=torch.float64)])
        for _ in range(100):
            cell_v = (x[:n] - x[n:]).reshape(rows, cols)
            i_cell, d_cell = current(cell_v, g).reshape(-1), slope(cell_v, g).reshape(-1)
            residual = wires @ x - inject + torch.cat([i_cell, -i_cell])
            jacobian = wires.clone()
            d = torch.diag(d_cell)
            jacobian[:n, :n] += d
            jacobian[:n, n:] -= d
            jacobian[n:, :n] -= d
            jacobian[n:, n:] += d
            step = torch.linalg.solve(jacobian, -residual)
            x = x + step
            if float(step.abs().max()) < 1e-15:
                break
        sensed = x[n:].reshape(rows, cols)[-1] / r_sense
        results.append(sensed[0::2] - sensed[1::2])
    return torch.stack(results)


@pytest.mark.parametrize("device", [LinearDevice(), SINH], ids=["linear", "sinh"])
@pytest.mark.parametrize("r", [(0.5, 0.5, 2.0, 3.0), (5.0, 2.0, 10.0, 20.0)], ids=["0.5ohm", "5ohm"])
def test_exact_solver_matches_dense_kirchhoff(device, r) -> None:
    v, g_pos, g_neg = _cells(12, 5)
    r_word, r_bit, r_driver, r_sense = r
    reference = _kcl_solution(v, g_pos, g_neg, device.current, device.slope, r_word, r_bit, r_driver, r_sense)
    solver = ResistiveWires(word_line_resistance=r_word, bit_line_resistance=r_bit, driver_resistance=r_driver,
                            sense_resistance=r_sense, tolerance=1e-13, max_iterations=10000)
    got = column_currents(v, g_pos, g_neg, device, solver=solver)[0]
    torch.testing.assert_close(got, reference, rtol=1e-9, atol=1e-18)
    ideal = column_currents(v, g_pos, g_neg, device)[0]
    assert float(((ideal - reference).abs() / reference.abs()).max()) > 1e-4  # the wires matter here


def test_zero_resistance_is_exactly_the_ideal_path() -> None:
    v, g_pos, g_neg = _cells(20, 7)
    for method in ("exact", "first_order"):
        got = column_currents(v, g_pos, g_neg, SINH, solver=ResistiveWires(method=method))
        assert torch.equal(got, column_currents(v, g_pos, g_neg, SINH))


def test_mirrored_array_gives_mirrored_currents() -> None:
    """Driving from the right and sensing at the top is the left/bottom array mirrored (G+ and G- swap sides)."""
    v, g_pos, g_neg = _cells(9, 4)
    options = {"word_line_resistance": 40.0, "bit_line_resistance": 25.0, "tolerance": 1e-13}
    mirrored = column_currents(v, g_pos, g_neg, SINH,
                               solver=ResistiveWires(**options, word_lines_driven_from="right", bit_lines_sensed_at="top"))
    plain = -column_currents(v.flip(1), g_neg.flip(0).flip(1), g_pos.flip(0).flip(1), SINH, solver=ResistiveWires(**options))
    torch.testing.assert_close(mirrored, plain.flip(-1), rtol=1e-10, atol=0)


def test_first_order_error_is_second_order_in_the_resistance() -> None:
    v, g_pos, g_neg = _cells(32, 16)
    errors = []
    for r in (0.25, 0.5, 1.0):
        exact = column_currents(v, g_pos, g_neg, SINH, solver=ResistiveWires(word_line_resistance=r, bit_line_resistance=r,
                                                                             tolerance=1e-13))
        first = column_currents(v, g_pos, g_neg, SINH, solver=ResistiveWires(word_line_resistance=r, bit_line_resistance=r,
                                                                             method="first_order"))
        ideal = column_currents(v, g_pos, g_neg, SINH)
        errors.append(float((first - exact).abs().max() / exact.abs().max()))
        assert errors[-1] < 0.05 * float((ideal - exact).abs().max() / exact.abs().max())  # it captures the drop
    assert 3.0 < errors[1] / errors[0] < 5.0 and 3.0 < errors[2] / errors[1] < 5.0  # O(R²): halving R quarters it


def test_first_order_is_differentiable_and_exact_passes_the_first_order_gradient() -> None:
    v, g_pos, g_neg = _cells(16, 4)
    g_pos.requires_grad_(True)
    options = {"word_line_resistance": 1.0, "bit_line_resistance": 1.0}
    exact = column_currents(v, g_pos, g_neg, SINH, solver=ResistiveWires(**options, tolerance=1e-12))
    (grad_exact,) = torch.autograd.grad(exact.sum(), g_pos)
    first = column_currents(v, g_pos, g_neg, SINH, solver=ResistiveWires(**options, method="first_order"))
    (grad_first,) = torch.autograd.grad(first.sum(), g_pos)
    with torch.no_grad():
        torch.testing.assert_close(exact, column_currents(v, g_pos, g_neg, SINH, solver=ResistiveWires(**options, tolerance=1e-12)))
    torch.testing.assert_close(grad_exact, grad_first)
    # The gradient is the circuit's: compare with a finite difference of the exact solve.
    h = 1e-12
    bumped = g_pos.detach().clone()
    bumped[3, 1] += h
    with torch.no_grad():
        fd = (column_currents(v, bumped, g_neg, SINH, solver=ResistiveWires(**options, tolerance=1e-14)).sum()
              - column_currents(v, g_pos.detach(), g_neg, SINH, solver=ResistiveWires(**options, tolerance=1e-14)).sum()) / h
    assert math.isclose(float(grad_first[3, 1]), float(fd), rel_tol=2e-2)


def test_non_convergence_names_the_tile_and_is_never_returned() -> None:
    v, g_pos, g_neg = _cells(16, 8)
    with pytest.raises(WiresNotConverged, match=r"row block 0 × outputs 0-7 .* after 1 sweeps"):
        column_currents(v, g_pos, g_neg, SINH, solver=ResistiveWires(word_line_resistance=50.0, bit_line_resistance=50.0,
                                                                     max_iterations=1))


def test_non_convergence_in_a_network_names_the_layer(digits) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    target = rramc.load_target("rram_a").with_changes(wires={"model": "resistive", "word_line_resistance": 20.0,
                                                             "bit_line_resistance": 20.0, "max_iterations": 1})
    with pytest.raises(rramc.RramcError, match=r"%.*\(.*\): the wire solver did not converge"):
        rramc.compile(model, target, digits.images[:8], calibration_data=digits.images[:32])


@pytest.mark.parametrize("field, value, expected", [
    ("word_line_resistance", -1.0, ">= 0"), ("bit_line_resistance", float("nan"), ">= 0"), ("tolerance", 0.0, "> 0"),
    ("max_iterations", 0, ">= 1"), ("method", "spice", "one of exact, first_order"),
    ("word_lines_driven_from", "top", "one of left, right"),
])
def test_bad_wire_fields_are_refused_with_the_field(field, value, expected) -> None:
    with pytest.raises(TargetError, match=rf"field 'wires\.{field}'.*{expected}"):
        rramc.load_target("rram_a").with_changes(wires={"model": "resistive", field: value})


def test_cli_refuses_a_bad_wires_section_and_writes_nothing(tmp_path) -> None:
    data = rramc.load_target("rram_a").to_mapping()
    data["wires"] = {"model": "resistive", "word_line_resistance": -0.5}
    target = tmp_path / "chip.yaml"
    target.write_text(yaml.safe_dump(data))
    out = tmp_path / "m.rramx"
    result = CliRunner().invoke(app, ["compile", "samples/digits_mlp.pt2", "-t", str(target), "-o", str(out)])
    assert result.exit_code != 0
    assert "wires.word_line_resistance" in result.output and "Traceback" not in result.output
    assert not out.exists()


# --- in networks -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return rramc.load_dataset("digits")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10)).eval()


def _wired(r: float, method: str = "first_order", **extra):
    return rramc.load_target("rram_a").with_changes(
        crossbar={"rows": 32, "cols": 32},
        wires={"model": "resistive", "word_line_resistance": r, "bit_line_resistance": r, "method": method, **extra})


def test_zero_ohm_wires_compile_to_the_ideal_chip(digits) -> None:
    x = digits.images[:64]
    ideal = rramc.compile(_mlp(), rramc.load_target("rram_a").with_changes(crossbar={"rows": 32, "cols": 32}), x[:2],
                          calibration_data=x)
    wired = rramc.compile(_mlp(), _wired(0.0, "exact"), x[:2], calibration_data=x)
    assert torch.equal(ideal(x), wired(x))


def test_calibration_sees_the_wires(digits) -> None:
    x = digits.images[:128]
    plain = rramc.compile(_mlp(), _wired(0.0), x[:2], calibration_data=x)
    wired = rramc.compile(_mlp(), _wired(20.0), x[:2], calibration_data=x)
    ranges = [n.op.adc_range for n in plain.graph.nodes_of(CrossbarOp)], [n.op.adc_range for n in wired.graph.nodes_of(CrossbarOp)]
    # IR drop lowers the first layer's currents, which its ADC ranges follow (later layers see
    # other inputs: their ranges are calibrated on the chip's own activations)
    assert float(ranges[1][0].sum()) < 0.9 * float(ranges[0][0].sum())
    # The calibrated wired chip is closer to the float network than the ideal-wire calibration run on wires.
    miscalibrated = Executable(plain.graph, _wired(20.0))
    reference = plain.reference(x)
    assert float((wired(x) - reference).abs().mean()) < float((miscalibrated(x) - reference).abs().mean())


def test_exact_and_first_order_agree_in_a_network_at_small_resistance(digits) -> None:
    x = digits.images[:32]
    exe = rramc.compile(_mlp(), _wired(0.5), x[:2], calibration_data=digits.images[:128])
    exact = Executable(exe.graph, _wired(0.5, "exact"))
    first, reference = exe(x), exact(x)
    assert float((first - reference).abs().max() / reference.abs().max()) < 0.02


def test_place_pass_keeps_ideal_results_and_lowers_the_wire_error(digits) -> None:
    x = digits.images[:64]
    pipeline = "canonicalize,quantize,tile,place,calibrate,emit"
    base = rramc.load_target("rram_a").with_changes(crossbar={"rows": 32, "cols": 32})
    placed = rramc.compile(_mlp(), base, x[:2], calibration_data=x, pipeline=pipeline)
    plain = rramc.compile(_mlp(), base, x[:2], calibration_data=x)
    assert torch.equal(placed(x), plain(x))  # ideal wires cannot tell the places apart
    for node in placed.graph.nodes_of(CrossbarOp):
        assert node.op.row_place is not None and node.op.col_place is not None
    text = placed.graph.to_text()
    assert "row_place" in text and Graph.parse(text).to_text() == text
    # With wires: the same network without and with placement, both uncalibrated against wires
    # (same ADC ranges), on the first-order chip: placement moves the chip towards the ideal one.
    wired = _wired(30.0)
    errors = []
    for exe in (plain, placed):
        ideal_out = exe(x)
        errors.append(float((Executable(exe.graph, wired)(x) - ideal_out).abs().mean()))
    assert errors[1] < errors[0]


def test_place_requires_tiles_and_verify_checks_the_permutation(digits) -> None:
    with pytest.raises(PassError, match="run 'tile' before 'place'"):
        rramc.compile(_mlp(), "rram_a", digits.images[:2], calibration_data=digits.images[:32],
                      pipeline="canonicalize,quantize,place,tile,calibrate,emit")
    exe = rramc.compile(_mlp(), "rram_a", digits.images[:2], calibration_data=digits.images[:32],
                        pipeline="canonicalize,quantize,tile,place,calibrate,emit")
    node = exe.graph.nodes_of(CrossbarOp)[0]
    bad = node.op.row_place.clone()
    bad[0] = bad[1]
    with pytest.raises(ValueError, match="row_place.* not a permutation"):
        node.op.replace(row_place=bad).verify_mapping()


def test_reconstruct_through_wires(digits) -> None:
    """Training through the wires is recorded, and the network it gives is fitted to them: on the
    wired chip it beats its own accuracy on ideal wires, unlike a network trained without them."""
    train = rramc.load_dataset("digits", "train")
    x = train.images[:256]
    wired, plain = _wired(120.0), _wired(0.0)

    def accuracy(exe: Executable) -> float:
        return float((exe(digits.images).argmax(1) == digits.labels).float().mean())

    gain = {}
    for wires in (False, True):
        pipeline = rramc.named_pipeline("reconstruct", reconstruct={"epochs": 4, "lr": 3e-3, "wires": wires, "seed": 0})
        exe = rramc.compile(_mlp(), wired, x[:2], calibration_data=x, pipeline=pipeline, training_data=train)
        op = exe.graph.nodes_of(CrossbarOp)[0].op
        assert ("wires" in op.trained_for.in_loop) == wires
        gain[wires] = accuracy(exe) - accuracy(Executable(exe.graph, plain))
    assert gain[True] > 0.2 and gain[False] < 0


def test_sweep_axis_sets_both_line_resistances() -> None:
    name, values = parse_axis("wire_resistance=0,0.5,2")
    assert name == "crossbar.wire_resistance"
    points = grid_targets(rramc.load_target("rram_a"), {name: values})
    assert [(t.wires.model, t.wires.word_line_resistance, t.wires.bit_line_resistance) for _, t in points] == [
        ("resistive", 0.0, 0.0), ("resistive", 0.5, 0.5), ("resistive", 2.0, 2.0)]
    with pytest.raises(TargetError, match=r"wires\.word_line_resistance.*>= 0"):
        grid_targets(rramc.load_target("rram_a"), {name: [-1.0]})


def test_read_noise_with_wires_has_the_stated_spread() -> None:
    v, g_pos, g_neg = _cells(16, 4)
    v = v[:1].expand(4000, -1)
    solver = ResistiveWires(word_line_resistance=1.0, bit_line_resistance=1.0, tolerance=1e-12)
    cells = Conductances(DensePairs(g_pos, g_neg), TileGrid((0, 16), (0, 4)), Lowering(), SINH, 1.0, (2e-8, 2e-6), None, 1e-7, 0.05)
    state = solver.prepare(cells)
    noisy = solver.read(state, Read(1.0, v), torch.Generator().manual_seed(0))[0]
    quiet = column_currents(v[:1], g_pos, g_neg, SINH, solver=solver)[0, 0]
    torch.testing.assert_close(noisy.mean(0), quiet, rtol=0, atol=float(noisy.std(0).max()) * 5 / math.sqrt(4000))
    assert float(noisy.std(0).min()) > 0
