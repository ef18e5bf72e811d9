"""Input encodings beyond amplitude: bit_serial, pulse_width and predistorted.

Each is checked against an independent, cell-by-cell computation in float64, against amplitude
where the device is linear (the ideal target), and on the nonlinear targets, where they must
recover the float network without retraining (the reason they exist).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import rramc
from rramc.errors import PassError, TargetError
from rramc.hardware.column_solver import Conductances, IdealWires
from rramc.hardware.expansion import IDEAL_TOLERANCE
from rramc.hardware.input_encoding import input_encoding
from rramc.hardware.lowering import Lowering
from rramc.hardware.predistortion import Predistorted
from rramc.hardware.tiling import TileGrid
from rramc.ir.cells import DensePairs
from rramc.samples import models
from rramc.training import TrainConfig, train_classifier

ENCODINGS = ("amplitude", "bit_serial", "pulse_width", "predistorted")


@pytest.fixture(scope="module")
def clipped_mlp(digits_train):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return train_classifier(models.mlp(64, 64, 32, 10, clipped=True), digits_train, TrainConfig(epochs=20, lr=0.05, batch_size=64))


def _target(name: str, encoding: str, **crossbar: object) -> rramc.Target:
    base = rramc.load_target(name)
    return base.with_changes(crossbar={"dac_bits": 8, "input_encoding": encoding, **crossbar})


def _column_charge(target: rramc.Target, x: torch.Tensor, g_pos: torch.Tensor, g_neg: torch.Tensor) -> torch.Tensor:
    """Σ over the encoding's reads of weight · Σ_i duration_i · (f(V_i, G⁺) - f(V_i, G⁻)), cell by cell in float64."""
    encoding = input_encoding(target.crossbar.input_encoding, target)
    total = torch.zeros(x.shape[0], g_pos.shape[1], dtype=torch.float64)
    for read in encoding.reads(x, 1.0, target.crossbar.dac_bits):
        v = read.voltages.to(torch.float64)[:, :, None]
        d = 1.0 if read.durations is None else read.durations.to(torch.float64)[:, :, None]
        cells = target.device.current(v, g_pos[None]) - target.device.current(v, g_neg[None])
        total += read.weight * (d * cells).sum(1)
    return total


@pytest.mark.parametrize("name", ["rram_a", "rram_b"])
@pytest.mark.parametrize("encoding", ["bit_serial", "pulse_width"])
def test_binary_voltage_encodings_sum_linearly_in_the_inputs(name: str, encoding: str) -> None:
    """Only 0 V and Vread reach a cell, so the charge is Σ_i (code_i / steps)·[f(Vread, G⁺) - f(Vread, G⁻)]:
    linear in the DAC codes whatever the device's nonlinearity in V."""
    target = _target(name, encoding)
    c = target.conductance
    generator = torch.Generator().manual_seed(0)
    g_pos = c.g_min + (c.g_max - c.g_min) * torch.rand(16, 5, generator=generator, dtype=torch.float64)
    g_neg = c.g_min + (c.g_max - c.g_min) * torch.rand(16, 5, generator=generator, dtype=torch.float64)
    x = torch.rand(7, 16, generator=generator, dtype=torch.float64)
    codes = (x * 255).round() / 255
    vread = torch.tensor(target.crossbar.read_voltage, dtype=torch.float64)
    linear = codes @ (target.device.current(vread, g_pos) - target.device.current(vread, g_neg))
    torch.testing.assert_close(_column_charge(target, x, g_pos, g_neg), linear, rtol=1e-12, atol=1e-18)


def test_the_solver_computes_what_the_cells_carry() -> None:
    """The column solver's currents for every encoding's reads, against the cell-by-cell sum (rram_a)."""
    for encoding in ENCODINGS:
        target = _target("rram_a", encoding)
        c = target.conductance
        generator = torch.Generator().manual_seed(1)
        g_pos = c.g_min + (c.g_max - c.g_min) * torch.rand(16, 5, generator=generator, dtype=torch.float64)
        g_neg = c.g_min + (c.g_max - c.g_min) * torch.rand(16, 5, generator=generator, dtype=torch.float64)
        x = torch.rand(7, 16, generator=generator, dtype=torch.float64)
        cells = Conductances(DensePairs(g_pos, g_neg), TileGrid((0, 16), (0, 5)), Lowering(), target.device, target.crossbar.read_voltage,
                             (c.g_min, c.g_max), 8, IDEAL_TOLERANCE)
        solver = IdealWires()
        state = solver.prepare(cells)
        reads = input_encoding(encoding, target).reads(x, 1.0, 8)
        solved = sum(read.weight * solver.read(state, read, None)[0] for read in reads)
        expected = _column_charge(target, x, g_pos, g_neg)
        assert float((solved - expected).abs().max()) <= 1e-6 * float(expected.abs().max()), encoding


def test_predistorted_levels_give_evenly_spaced_currents() -> None:
    """A separable device: g(V_k) = k/255 · g(Vread) at every level (bisection to float64); the state-dependent
    rram_b gets the least-squares levels and says what error remains."""
    target = _target("rram_a", "predistorted")
    levels = Predistorted(target).levels(8)
    assert levels[0] == 0.0 and levels[-1] == target.crossbar.read_voltage and bool((levels.diff() > 0).all())
    g = torch.tensor(1e-6, dtype=torch.float64)
    currents = target.device.current(levels, g)
    torch.testing.assert_close(currents, torch.arange(256, dtype=torch.float64) / 255 * currents[-1], rtol=1e-12, atol=1e-20)
    assert Predistorted(target).linearity_error(8) == 0.0
    state_dependent = Predistorted(_target("rram_b", "predistorted"))
    error = state_dependent.linearity_error(8)
    assert 1e-4 < error < 0.05  # some error remains, and it is small
    # No other level does better: nudging any level raises its squared error over the window.
    b = state_dependent.target
    window = torch.linspace(b.conductance.g_min, b.conductance.g_max, 65, dtype=torch.float64)
    full = b.device.current(torch.full_like(window, b.crossbar.read_voltage), window)
    for k in (40, 128, 200):
        v = state_dependent.levels(8)[k]
        cost = [float(((b.device.current(torch.full_like(window, float(v + dv)), window) - k / 255 * full) ** 2).sum())
                for dv in (-1e-3, 0.0, 1e-3)]
        assert cost[1] < cost[0] and cost[1] < cost[2]


@pytest.mark.parametrize("encoding", ENCODINGS[1:])
def test_on_the_linear_target_every_encoding_is_amplitude(encoding: str, clipped_mlp, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    """ideal cells are linear in V: every encoding computes amplitude's outputs, to float32 rounding with an ideal
    ADC (one read against several, summed in another order), and within a few ADC steps with an 8-bit one.
    Predistorted levels equal amplitude's k/255·Vread only to float32 rounding (they come from a bisection), which
    flips the odd DAC code of the next layer: there, within one step of the DAC."""
    x = digits_test.images[:200]
    exact = 1e-5 if encoding != "predistorted" else 2e-3
    for adc_bits, tolerance in ((None, exact), (8, 0.05)):
        outputs = {}
        for name in ("amplitude", encoding):
            target = _target("ideal", name, adc_bits=adc_bits)
            exe = rramc.compile(clipped_mlp, target, x[:2], calibration_data=digits_train, pipeline="naive")
            outputs[name] = exe.chip(0).interpreter().run(x)[0]
        scale = float(outputs["amplitude"].abs().max())
        assert float((outputs[encoding] - outputs["amplitude"]).abs().max()) <= tolerance * scale, (encoding, adc_bits)


@pytest.mark.parametrize("encoding", ENCODINGS[1:])
def test_on_a_separable_nonlinear_device_the_float_accuracy_comes_back_without_retraining(
        encoding: str, clipped_mlp, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    """rram_a (sinh, k = 7.5): amplitude loses 17 points naively; the encodings that meet the I-V at one voltage, or
    undo it, keep the float accuracy within the converters' resolution (one test sample: 0.28 points)."""
    amplitude = rramc.compile(clipped_mlp, "rram_a", digits_train.images[:2], calibration_data=digits_train,
                              pipeline="naive").run(digits_test)
    report = rramc.compile(clipped_mlp, _target("rram_a", encoding), digits_train.images[:2], calibration_data=digits_train,
                           pipeline="naive").run(digits_test)
    assert amplitude.chip_accuracy < report.float_accuracy - 0.1
    assert report.chip_accuracy >= report.float_accuracy - 0.01, (encoding, report.chip_accuracy, report.float_accuracy)


@pytest.mark.parametrize("encoding", ["bit_serial", "pulse_width", "predistorted"])
def test_reconstruct_trains_through_every_encoding(encoding: str, clipped_mlp, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    """The device-aware model computes what the chip computes with the encoding (the chip scores what the trained
    model scores, within a few samples), and training moves the weights (the straight-through gradient flows)."""
    target = _target("rram_b", encoding)
    exe = rramc.compile(clipped_mlp, target, digits_train.images[:2], calibration_data=digits_train, training_data=digits_train,
                        pipeline="canonicalize,reconstruct{epochs=1,batch_size=64,samples=600},quantize,tile,calibrate,emit")
    report = exe.run(digits_test)
    assert abs(report.chip_accuracy - report.float_accuracy) <= 0.02
    first = exe.graph.nodes_of(rramc.ir.CrossbarOp)[0].op.weight
    assert not torch.equal(first, clipped_mlp[1].weight.detach())


def test_pulse_width_with_wires_reads_slot_by_slot() -> None:
    """With wire resistance the pulses are read slot by slot; with (almost) no resistance that is the ideal charge
    (with an ideal ADC: an 8-bit one would round each slot on its own)."""
    base = _target("rram_a", "pulse_width", dac_bits=3, adc_bits=None)
    wired = base.with_changes(wires={"model": "resistive", "word_line_resistance": 1e-6, "bit_line_resistance": 1e-6})
    reads = input_encoding("pulse_width", wired).reads(torch.rand(4, 8), 1.0, 3)
    assert len(reads) == 7 and all(r.durations is None and r.seconds == wired.crossbar.read_time for r in reads)
    net = models.mlp(8, 4)
    x = torch.rand(32, 8)
    ideal = rramc.compile(net, base, x, pipeline="naive").chip(0).interpreter().run(x)[0]
    slots = rramc.compile(net, wired, x, pipeline="naive").chip(0).interpreter().run(x)[0]
    torch.testing.assert_close(slots, ideal, rtol=1e-4, atol=1e-4 * float(ideal.abs().max()))


def test_predistortion_on_a_state_dependent_device_is_reported() -> None:
    net = models.mlp(8, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rramc.compile(net, _target("rram_b", "predistorted"), torch.rand(64, 8), pipeline="naive")
    assert any("linearity error of" in str(w.message) and "reconstruct" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rramc.compile(net, _target("rram_a", "predistorted"), torch.rand(64, 8), pipeline="naive")
    assert not any("linearity error" in str(w.message) for w in caught)


@pytest.mark.parametrize("crossbar, words", [
    ({"input_encoding": "bit_serial", "dac_bits": None}, ["crossbar.dac_bits", "bit_serial needs the input's resolution"]),
    ({"input_encoding": "pulse_width", "dac_bits": None}, ["crossbar.dac_bits", "pulse_width"]),
    ({"input_encoding": "pulse_width", "pulse_step": 1e-8}, ["crossbar.pulse_step", "shorter than crossbar.read_time"]),
    ({"input_encoding": "thermometer"}, ["crossbar.input_encoding", "'thermometer'", "bit_serial", "predistorted"]),
    ({"read_time": -1e-9}, ["crossbar.read_time"]),
])
def test_encodings_the_target_cannot_use_are_refused(crossbar: dict, words: list[str]) -> None:
    with pytest.raises(TargetError) as error:
        rramc.load_target("rram_a").with_changes(crossbar=crossbar)
    assert all(w in str(error.value) for w in words), str(error.value)


def test_predistortion_needs_a_current_that_rises_with_the_voltage() -> None:
    """A measured device whose current falls between 0.5 V and 1 V has no inverse to place levels by."""
    table = {"model": "table", "voltages": [0.0, 0.5, 1.0], "states": [2e-8, 2e-6],
             "currents": [[0.0, 0.0], [1e-7, 2e-6], [0.8e-7, 1.6e-6]]}
    target = rramc.load_target("rram_a").with_changes(device=table)
    with pytest.raises(TargetError, match="crossbar.input_encoding.*predistorted needs a read current that rises with the voltage"):
        target.with_changes(crossbar={"input_encoding": "predistorted"})
    with pytest.raises(PassError, match="option input_encoding=predistorted on target .*rises with the voltage"):
        rramc.compile(models.mlp(8, 4), target, torch.rand(4, 8), pipeline="canonicalize,quantize{input_encoding=predistorted},tile,calibrate,emit")
