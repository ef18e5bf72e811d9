"""Crossbar physics against independent references.

* device formulas against hand-derived values, broadcasting and gradients;
* a brute-force per-cell reference of a compiled crossbar layer, written here from the IR
  attributes and the target alone (explicit tiles, its own im2col, DAC, per-tile ADC, partial
  sums, neuron, signed read phases), against the runtime's fast path: to float rounding for
  separable devices; for a state-dependent one, whose cells the runtime computes through a
  low-rank expansion, an ADC code may differ only where the expansion's error could flip it;
* the full-scale calibration, exact for a state-dependent device (weights mapped in the read-current domain);
* programming variation (lognormal, with the target's mean and std), stuck cells and read noise, statistically;
* the DAC and ADC quantisers and their straight-through gradients.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import rramc
from rramc.hardware.column_solver import column_currents
from rramc.hardware.converters import adc, dac
from rramc.hardware.currents import with_read_current
from rramc.hardware.devices import DeviceModel, PowerDevice, SinhDevice, StateDependentSinhDevice, TableDevice
from rramc.hardware.expansion import Expansion, device_expansion, tolerance_for
from rramc.hardware.interpreter import float_layer
from rramc.hardware.layer import CrossbarLayer, cell_writer
from rramc.hardware.target import Target, load_target
from rramc.hardware.tiling import TileGrid
from rramc.hardware.weight_encoding import weight_encoding
from rramc.ir import CrossbarConv2d, CrossbarOp

F64 = torch.float64

# compiling on a few dozen samples is deliberate here
pytestmark = pytest.mark.filterwarnings("ignore:calibrated on .* sample:rramc.errors.RramcWarning")

# --------------------------------------------------------------------------------------------
# device formulas
# --------------------------------------------------------------------------------------------


def sinh_device(**fields: float) -> DeviceModel:
    # rram_a's window scaled to keep its read current, so that any k passes its compliance
    return with_read_current(load_target("rram_a"), device={"model": "sinh", **fields}).device


def test_sinh_half_bias_nonlinearity_and_coefficient() -> None:
    device = sinh_device(nonlinearity_k=7.5, k_voltage=1.0)
    assert isinstance(device, SinhDevice)
    g = torch.tensor(3e-5, dtype=F64)
    i_full = device.current(torch.tensor(1.0, dtype=F64), g)
    i_half = device.current(torch.tensor(0.5, dtype=F64), g)
    assert float(i_full / i_half) == pytest.approx(7.5, rel=1e-12)
    b = 2 * math.acosh(3.75)
    assert b == pytest.approx(3.993, abs=5e-4)
    assert device.b_per_volt == pytest.approx(b, rel=1e-12)
    # I = G sinh(BV)/B, written out
    assert float(i_full) == pytest.approx(3e-5 * math.sinh(b) / b, rel=1e-12)
    # odd in V
    assert float(device.current(torch.tensor(-0.3, dtype=F64), g)) == pytest.approx(-3e-5 * math.sinh(0.3 * b) / b, rel=1e-12)


def test_sinh_k_voltage_scales_the_coefficient() -> None:
    device = sinh_device(nonlinearity_k=7.5, k_voltage=0.5)
    ratio = device.current(torch.tensor(0.5, dtype=F64), 1e-5) / device.current(torch.tensor(0.25, dtype=F64), 1e-5)
    assert float(ratio) == pytest.approx(7.5, rel=1e-12)
    assert device.b_per_volt == pytest.approx(4 * math.acosh(3.75), rel=1e-12)


def test_sinh_k2_is_linear() -> None:
    device = sinh_device(nonlinearity_k=2.0)
    v = torch.linspace(-1, 1, 41, dtype=F64)
    g = torch.linspace(1e-6, 1e-4, 41, dtype=F64)
    torch.testing.assert_close(device.current(v, g), g * v, rtol=1e-12, atol=0)
    # the small-argument branch of sinh(z)/z joins the large one smoothly
    tiny = sinh_device(b=1e-5)
    torch.testing.assert_close(tiny.current(v, g), g * torch.sinh(1e-5 * v) / 1e-5, rtol=1e-12, atol=0)


def test_state_dependent_sinh_interpolates_b_in_log_g_and_clamps() -> None:
    device = load_target("rram_b").device
    assert isinstance(device, StateDependentSinhDevice) and not device.separable
    b_hrs, b_lrs = 2 * math.acosh(5.0), 2 * math.acosh(2.5)  # k = 10 at g_min, k = 5 at g_max, at 1 V
    v = torch.tensor(0.8, dtype=F64)
    for g, b in [(2e-8, b_hrs), (2e-6, b_lrs), (2e-7, (b_hrs + b_lrs) / 2),  # 2e-7 is the geometric middle
                 (2e-9, b_hrs), (2e-5, b_lrs)]:  # held constant outside the window
        assert float(device.current(v, torch.tensor(g, dtype=F64))) == pytest.approx(g * math.sinh(b * 0.8) / b, rel=1e-12)
    ratio = device.current(torch.tensor(1.0, dtype=F64), 2e-8) / device.current(torch.tensor(0.5, dtype=F64), 2e-8)
    assert float(ratio) == pytest.approx(10.0, rel=1e-12)


def test_power_device() -> None:
    device = load_target("rram_a").with_changes(device={"model": "power", "exponent": 1.5}).device
    assert isinstance(device, PowerDevice) and device.v_ref == 1.0
    v = torch.tensor([-0.64, 0.0, 0.25, 1.0], dtype=F64)
    torch.testing.assert_close(device.current(v, 2e-5), 2e-5 * torch.tensor([-0.512, 0.0, 0.125, 1.0], dtype=F64))


def sinh_table_target(n_v: int = 21, n_g: int = 6) -> tuple[Target, DeviceModel]:
    """A table device sampled from rram_a's sinh cell (linear in G, so exact along G)."""
    base = load_target("rram_a")
    b = 2 * math.acosh(3.75)
    voltages = [-1.0 + 2.0 * i / (n_v - 1) for i in range(n_v)]
    states = [2e-8 + (2e-6 - 2e-8) * j / (n_g - 1) for j in range(n_g - 1)] + [2e-6]  # rram_a's window, ending exactly at g_max
    currents = [[g * math.sinh(b * v) / b for g in states] for v in voltages]
    data = base.to_mapping()
    data["device"] = {"model": "table", "voltages": voltages, "states": states, "currents": currents}
    target = Target.from_mapping(data, "sinh table")
    assert isinstance(target.device, TableDevice)
    return target, target.device


def test_table_reproduces_sinh_within_its_interpolation_bound() -> None:
    _, table = sinh_table_target()
    sinh = load_target("rram_a").device
    b = 2 * math.acosh(3.75)
    h = 0.1  # voltage grid step
    gen = torch.Generator().manual_seed(0)
    v = torch.rand(2000, generator=gen, dtype=F64) * 2 - 1
    g = 2e-8 + (2e-6 - 2e-8) * torch.rand(2000, generator=gen, dtype=F64)
    error = (table.current(v, g) - sinh.current(v, g)).abs()
    # linear interpolation error <= h²/8 · max|∂²I/∂V²| on the interval; ∂²I/∂V² = G·B·sinh(B|V|) rises with |V|
    v_far = (v.abs() + h).clamp_max(1.0)
    bound = g * b * torch.sinh(b * v_far) * h * h / 8
    assert bool((error <= bound * (1 + 1e-9) + 1e-18).all())
    assert float(error.max()) > 1e-3 * float(bound.max())  # it does interpolate (the bound is not vacuous)
    # exact on the grid nodes (and between states, since sinh is linear in G)
    nodes_v = torch.tensor([-1.0, -0.3, 0.0, 0.5, 1.0], dtype=F64)
    torch.testing.assert_close(table.current(nodes_v, 8e-7), sinh.current(nodes_v, 8e-7), rtol=1e-12, atol=1e-20)


def _devices_for_gradcheck() -> dict[str, DeviceModel]:
    return {
        "sinh": load_target("rram_a").device,
        "sinh_state": load_target("rram_b").device,
        "power_1": load_target("rram_a").with_changes(device={"model": "power", "exponent": 1.0}).device,
        "power_2.5": load_target("rram_a").with_changes(device={"model": "power", "exponent": 2.5}).device,
        "table": sinh_table_target()[1],
    }


@pytest.mark.parametrize("name", ["linear", "sinh", "sinh_state", "power", "table"])
def test_current_broadcasts(name: str) -> None:
    device = {
        "linear": load_target("ideal").device,
        "sinh": load_target("rram_a").device,
        "sinh_state": load_target("rram_b").device,
        "power": load_target("rram_a").with_changes(device={"model": "power", "exponent": 1.5}).device,
        "table": sinh_table_target()[1],
    }[name]
    v = torch.tensor([[0.1], [0.5], [0.9]], dtype=F64)
    g = torch.tensor([2e-8, 4e-7, 1e-6, 2e-6], dtype=F64)
    out = device.current(v, g)
    assert out.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            one = device.current(v[i, 0].reshape(1), g[j].reshape(1))
            assert float(out[i, j]) == pytest.approx(float(one[0]), rel=1e-12)


@pytest.mark.parametrize("name", list(_devices_for_gradcheck()))
def test_current_is_differentiable(name: str) -> None:
    device = _devices_for_gradcheck()[name]
    gen = torch.Generator().manual_seed(1)
    # voltages away from 0 and from the table's 0.1 V grid nodes (finite differences cross no kink)
    v = (torch.tensor([0.13, 0.27, 0.44, 0.66, 0.83, -0.36], dtype=F64)[:, None]).expand(6, 5).contiguous()
    v = (v + 0.01 * torch.rand(6, 5, generator=gen, dtype=F64)).requires_grad_()
    # conductances in units of 0.2 µS (so that gradcheck's finite-difference step is small), inside the
    # window (rram_b's B(G) is clamped outside it) and away from the table's 0.396 µS state grid
    u = torch.tensor([1.3, 2.5, 4.7, 6.2, 8.9], dtype=F64).expand(6, 5).contiguous().requires_grad_()
    assert torch.autograd.gradcheck(lambda v, u: device.current(v, u * 2e-7) * 5e6, (v, u), eps=1e-6, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# brute-force per-cell reference of a compiled layer
# --------------------------------------------------------------------------------------------


def ref_dac(x: torch.Tensor, bits: int | None) -> torch.Tensor:
    if bits is None:
        return x
    steps = 2**bits - 1
    return torch.round(x.clamp(0.0, 1.0) * steps) / steps


def ref_adc(current: torch.Tensor, full_scale: float, bits: int | None) -> torch.Tensor:
    if bits is None:
        return current
    steps = 2 ** (bits - 1) - 1
    lsb = full_scale / steps
    return torch.round(current.clamp(-full_scale, full_scale) / lsb) * lsb


def ref_im2col(op: CrossbarConv2d, v: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """``[batch, C, H, W]`` voltages → ``[batch, out pixels, C·kh·kw]`` word-line voltages (0 V in the padding)."""
    batch, channels, height, width = v.shape
    kh, kw = op.weight.shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = op.stride, op.padding, op.dilation
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    padded = v.new_zeros(batch, channels, height + 2 * ph, width + 2 * pw)
    padded[:, :, ph:ph + height, pw:pw + width] = v
    rows = []
    for oy in range(out_h):
        for ox in range(out_w):
            lines = [padded[:, c, oy * sh + ky * dh, ox * sw + kx * dw]
                     for c in range(channels) for ky in range(kh) for kx in range(kw)]  # channel, then kernel row, then column
            rows.append(torch.stack(lines, dim=1))
    return torch.stack(rows, dim=1), (out_h, out_w)


def runtime_expansion(op: CrossbarOp, target: Target) -> Expansion | None:
    """The expansion the runtime computes this op's cells through; None where it is exact (a separable
    device: one exact term)."""
    if target.device.separable:
        return None
    c = target.conductance
    return device_expansion(target.device, target.crossbar.read_voltage, c.g_min, c.g_max, op.dac_bits, tolerance_for(op.adc_bits))


def reference_layer(op: CrossbarOp, target: Target, x: torch.Tensor,
                    expansion: Expansion | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output recomputed cell by cell from the IR attributes (float64), and how far from
    it a computation may be whose every cell current comes from ``expansion`` instead of the device.

    The output is the device's exact per-cell currents. The allowance is 0 without ``expansion``.
    With it, a tile column may be off by the sum of its cells' expansion errors (each taken from
    the expansion against the device, here) before its ADC; the ADC's code is then certain only
    where that whole interval rounds to one code, and may differ by the codes it spans elsewhere
    (without an ADC the interval itself passes through). A read whose voltages exceed the
    expansion's range is computed per cell by the runtime: exact, no allowance.
    """
    x = x.to(F64)
    device, vread = target.device, target.crossbar.read_voltage
    g_pos, g_neg = op.g_pos.to(F64), op.g_neg.to(F64)
    n_out = g_pos.shape[1]
    assert op.input_range is not None
    u = x / op.input_range.scale
    phases = [(1.0, u.clamp_min(0.0))]
    if op.input_range.signed:
        phases.append((-1.0, (-u).clamp_min(0.0)))
    total = slack = None
    for sign, part in phases:
        volts = ref_dac(part, op.dac_bits) * vread
        if isinstance(op, CrossbarConv2d):
            lines, (out_h, out_w) = ref_im2col(op, volts)
        else:
            lines = volts[:, None, :]  # one vector per sample
        approximate = expansion is not None and (expansion.v_max is None or float(volts.max()) <= expansion.v_max * (1 + 1e-6))
        batch, vectors, _ = lines.shape
        acc = torch.zeros(batch, vectors, n_out, dtype=F64)
        unsure = torch.zeros(batch, vectors, n_out, dtype=F64)
        for rb, (r0, r1) in enumerate(zip(op.row_splits, op.row_splits[1:])):
            for cb, (c0, c1) in enumerate(zip(op.col_splits, op.col_splits[1:])):
                # every cell of the tile: [batch, vectors, rows, cols]
                v_cells = lines[:, :, r0:r1, None]
                i_pos, i_neg = device.current(v_cells, g_pos[r0:r1, c0:c1]), device.current(v_cells, g_neg[r0:r1, c0:c1])
                column = (i_pos - i_neg).sum(dim=2)
                margin = torch.zeros_like(column)
                if approximate:
                    assert expansion is not None
                    errors = ((expansion.current(v_cells, g_pos[r0:r1, c0:c1]) - i_pos).abs()
                              + (expansion.current(v_cells, g_neg[r0:r1, c0:c1]) - i_neg).abs())
                    margin = errors.sum(dim=2) * (1 + 1e-6) + 1e-9 * column.abs()  # and float64 rounding
                if op.adc_bits is not None:
                    full_scale = float(op.adc_range[rb, cb])
                    low, high = ref_adc(column - margin, full_scale, op.adc_bits), ref_adc(column + margin, full_scale, op.adc_bits)
                    column = ref_adc(column, full_scale, op.adc_bits)
                    unsure[:, :, c0:c1] += high - low
                else:
                    unsure[:, :, c0:c1] += margin
                acc[:, :, c0:c1] += sign * column
        total = acc if total is None else total + acc
        slack = unsure if slack is None else slack + unsure
    assert total is not None and slack is not None
    y = total * op.gain.to(F64)
    slack = slack * op.gain.to(F64).abs()
    offset = op.bias if op.offset is None else op.offset  # a fitted neuron offset replaces the bias
    if offset is not None:
        y = y + offset.to(F64)
    if isinstance(op, CrossbarConv2d):
        return (y.reshape(batch, out_h, out_w, n_out).permute(0, 3, 1, 2),
                slack.reshape(batch, out_h, out_w, n_out).permute(0, 3, 1, 2))
    return y[:, 0, :], slack[:, 0, :]


def assert_matches_reference(got: torch.Tensor, expected: torch.Tensor, allowance: torch.Tensor, rtol: float, atol: float,
                             what: str) -> None:
    """``got`` equals ``expected`` within ``rtol``/``atol`` plus the reference's ``allowance``."""
    assert got.shape == expected.shape
    limit = atol + rtol * expected.abs() + allowance
    excess = (got - expected).abs() - limit
    worst = int(excess.argmax())
    assert bool((excess <= 0).all()), (
        f"{what}: {int((excess > 0).sum())} of {got.numel()} outputs differ from the per-cell reference; worst by "
        f"{float((got - expected).abs().flatten()[worst]):.3g} (allowed {float(limit.flatten()[worst]):.3g})")


def check_against_reference(exe: rramc.Executable, x: torch.Tensor) -> list[CrossbarOp]:
    """Every crossbar layer's runtime output vs. the per-cell reference on the layer's traced input."""
    chip = exe.chip(0, dtype=F64)
    with torch.no_grad():
        _, values = chip.interpreter().run(x.to(F64), keep=True)
    ops = []
    for node in exe.graph.nodes_of(CrossbarOp):
        op = node.op
        expansion = runtime_expansion(op, exe.target)
        expected, allowance = reference_layer(op, exe.target, values[node.inputs[0]], expansion)
        got = values[node.name]
        scale = float(expected.abs().max())
        assert scale > 0
        if expansion is None:  # a separable device: the cells are exact, nothing is allowed beyond rounding
            assert bool((allowance == 0).all())
        elif op.adc_bits is None:  # the expansion's error passes through, far below the comparison's own tolerance
            assert float(allowance.max()) <= 1e-6 * scale
        else:  # an ADC code the expansion's error may flip is the exception
            assert float((allowance > 0).double().mean()) <= 0.1
        assert_matches_reference(got, expected, allowance, 1e-6, 1e-6 * scale, f"%{node.name}")
        # the layer call on its own agrees with the traced value
        torch.testing.assert_close(chip.layers[node.name](values[node.inputs[0]]), got, rtol=1e-12, atol=1e-12 * scale)
        ops.append(op)
    return ops


def mlp(n_in: int = 45) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, 30), nn.ReLU(), nn.Linear(30, 17), nn.ReLU(), nn.Linear(17, 5))


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 6, 3, stride=2, padding=1, dilation=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 3 * 3, 4),
    )


SMALL_TILES = "canonicalize,quantize,tile{rows=20,cols=7},calibrate,emit"
IDEAL_CONVERTERS = "canonicalize,quantize{dac_bits=0,adc_bits=0},tile{rows=20,cols=7},calibrate,emit"


def _assert_multi_tile(ops: list[CrossbarOp]) -> None:
    assert any(op.grid[0] >= 3 for op in ops), [op.grid for op in ops]
    assert any(op.grid[1] >= 3 for op in ops), [op.grid for op in ops]
    # a short (padded) last row block somewhere
    assert any(len({b - a for a, b in zip(op.row_splits, op.row_splits[1:])}) > 1 for op in ops)


@pytest.mark.parametrize("target_name", ["rram_a", "rram_b", "ideal"])
def test_mlp_over_many_tiles_matches_per_cell_reference(target_name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    data = torch.rand(48, 45, generator=gen)
    exe = rramc.compile(mlp(), target_name, data, input_range=(0, 1), pipeline=SMALL_TILES)
    ops = check_against_reference(exe, torch.rand(16, 45, generator=gen) * 1.2)  # some inputs above the declared range
    _assert_multi_tile(ops)
    assert not any(op.input_range.signed for op in ops) and ops[0].input_range.scale == 1.0
    if target_name != "ideal":
        assert all(op.dac_bits == 8 and op.adc_bits == 8 and op.adc_range is not None for op in ops)


def test_small_array_target_matches_per_cell_reference() -> None:
    target = load_target("rram_a").with_changes(crossbar={"rows": 16, "cols": 10})
    gen = torch.Generator().manual_seed(1)
    exe = rramc.compile(mlp(), target, torch.rand(48, 45, generator=gen), input_range=(0, 1))
    ops = check_against_reference(exe, torch.rand(16, 45, generator=gen))
    assert ops[0].row_splits == (0, 16, 32, 45) and ops[0].col_splits == (0, 5, 10, 15, 20, 25, 30)
    _assert_multi_tile(ops)


def test_offset_encoding_matches_per_cell_reference() -> None:
    target = load_target("rram_b").with_changes(crossbar={"rows": 16, "cols": 8, "weight_encoding": "offset"})
    gen = torch.Generator().manual_seed(2)
    exe = rramc.compile(mlp(), target, torch.rand(48, 45, generator=gen), input_range=(0, 1))
    ops = check_against_reference(exe, torch.rand(16, 45, generator=gen))
    assert ops[0].col_splits[1] == 7  # 8 bit lines: 7 weights and the reference column
    _assert_multi_tile(ops)


@pytest.mark.parametrize("target_name", ["rram_a", "rram_b"])
def test_conv_layers_match_per_cell_reference(target_name: str) -> None:
    gen = torch.Generator().manual_seed(3)
    data = torch.rand(16, 3, 7, 7, generator=gen)
    exe = rramc.compile(cnn(), target_name, data, input_range=(0, 1), pipeline=SMALL_TILES)
    convs = [n.op for n in exe.graph.nodes_of(CrossbarConv2d)]
    assert len(convs) == 2 and convs[0].grid == (2, 2) and convs[1].grid == (4, 1)
    check_against_reference(exe, torch.rand(4, 3, 7, 7, generator=gen))


@pytest.mark.parametrize("target_name", ["rram_a", "rram_b"])
def test_ideal_converters_match_per_cell_reference(target_name: str) -> None:
    gen = torch.Generator().manual_seed(4)
    exe = rramc.compile(mlp(), target_name, torch.rand(48, 45, generator=gen), input_range=(0, 1), pipeline=IDEAL_CONVERTERS)
    ops = check_against_reference(exe, torch.rand(16, 45, generator=gen) * 1.3)
    assert all(op.dac_bits is None and op.adc_bits is None and op.adc_range is None for op in ops)
    _assert_multi_tile(ops)
    conv = rramc.compile(cnn(), target_name, torch.rand(8, 3, 7, 7, generator=gen), input_range=(0, 1), pipeline=IDEAL_CONVERTERS)
    check_against_reference(conv, torch.rand(3, 3, 7, 7, generator=gen))


@pytest.mark.parametrize("target_name", ["rram_a", "rram_b"])
@pytest.mark.parametrize("pipeline", [SMALL_TILES, IDEAL_CONVERTERS])
def test_signed_inputs_match_per_cell_reference(target_name: str, pipeline: str) -> None:
    gen = torch.Generator().manual_seed(5)
    exe = rramc.compile(mlp(), target_name, torch.randn(48, 45, generator=gen), pipeline=pipeline)
    ops = check_against_reference(exe, torch.randn(16, 45, generator=gen))
    assert ops[0].input_range.signed and not ops[1].input_range.signed


def test_signed_conv_matches_per_cell_reference() -> None:
    gen = torch.Generator().manual_seed(6)
    exe = rramc.compile(cnn(), "rram_b", torch.randn(16, 3, 7, 7, generator=gen), pipeline=SMALL_TILES)
    ops = check_against_reference(exe, torch.randn(3, 3, 7, 7, generator=gen))
    assert ops[0].input_range.signed


@pytest.mark.parametrize("target_name", ["rram_a", "rram_b"])
def test_reference_is_sensitive(target_name: str) -> None:
    """The comparison can fail: the reference with one ADC range changed disagrees with the runtime
    (for rram_b too, where the reference allows for the expansion's error)."""
    gen = torch.Generator().manual_seed(7)
    exe = rramc.compile(mlp(), target_name, torch.rand(48, 45, generator=gen), input_range=(0, 1), pipeline=SMALL_TILES)
    node = exe.graph.nodes_of(CrossbarOp)[0]
    x = torch.rand(8, 45, generator=gen, dtype=F64)
    got = exe.chip(0, dtype=F64).layers[node.name](x)
    expansion = runtime_expansion(node.op, exe.target)
    assert (expansion is None) == (target_name == "rram_a")
    wrong = node.op.replace(adc_range=node.op.adc_range * torch.tensor([[1.0] * 4 + [1.05]] + [[1.0] * 5] * 2))
    expected, allowance = reference_layer(wrong, exe.target, x, expansion)
    with pytest.raises(AssertionError, match="differ from the per-cell reference"):
        assert_matches_reference(got, expected, allowance, 1e-6, 1e-9, "wrong ADC range")
    expected, allowance = reference_layer(node.op, exe.target, x, expansion)
    assert_matches_reference(got, expected, allowance, 1e-6, 1e-9, "right ADC range")


def test_full_scale_calibration_is_exact_for_a_state_dependent_device() -> None:
    """Weights are mapped in the read-current domain: with every input at full scale (the input
    range's scale, the read voltage on every word line), continuous conductances and ideal
    converters, rram_b's layers give exactly the float layers' W·x + b (to float rounding and the
    inverse map's interpolation, ~1e-7), though its nonlinearity depends on the conductance state: a
    map linear in G, with the same conventional gain, is several per cent off (9 % on the first layer
    here)."""
    target = load_target("rram_b")
    pipeline = "canonicalize,quantize{levels=0,dac_bits=0,adc_bits=0},tile{rows=20,cols=7},calibrate,emit"
    gen = torch.Generator().manual_seed(9)
    nets = [rramc.compile(mlp(), target, torch.rand(48, 45, generator=gen), input_range=(0, 1), pipeline=pipeline),
            rramc.compile(cnn(), target, torch.rand(16, 3, 7, 7, generator=gen), input_range=(0, 1), pipeline=pipeline),
            rramc.compile(mlp(), target, torch.randn(48, 45, generator=gen), pipeline=pipeline)]  # signed inputs
    chips = [exe.chip(0, dtype=F64) for exe in nets]
    checked = signed = 0
    for exe, chip in zip(nets, chips):
        for node in exe.graph.nodes_of(CrossbarOp):
            op = node.op
            steps = (op.g_pos.to(F64) - target.conductance.g_min) / ((target.conductance.g_max - target.conductance.g_min) / 31)
            assert bool(((steps - steps.round()).abs() > 0.01).any())  # continuous conductances, not the target's 32 levels
            assert op.dac_bits is None and op.adc_bits is None and op.input_range is not None
            scale = op.input_range.scale
            shape = (2, *exe.graph.node(node.inputs[0]).shape)
            signs = torch.ones(shape, dtype=F64)
            if op.input_range.signed:  # a signed layer reads either sign at full scale
                signs[1] = torch.where(torch.rand(shape[1:], generator=gen) < 0.5, -1.0, 1.0)
                signed += 1
            x = scale * signs
            expected = float_layer(op, x)
            got = chip.layers[node.name](x)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
            checked += 1
    assert checked == 9 and signed == 1
    # the first layer's inputs are all at full scale: a map linear in G would be far off
    node = nets[0].graph.nodes_of(CrossbarOp)[0]
    op, c = node.op, target.conductance
    x = torch.full((1, 45), op.input_range.scale, dtype=F64)
    w = op.weight.to(F64)
    per_weight = (c.g_max - c.g_min) / w.abs().amax(1)  # G = g_min + c·max(±W, 0), largest weight at g_max
    g_pos, g_neg = ((c.g_min + per_weight[:, None] * torch.relu(sign * w)).T for sign in (1.0, -1.0))
    vread = torch.tensor(target.crossbar.read_voltage, dtype=F64)
    linear_in_g = (target.device.current(vread, g_pos) - target.device.current(vread, g_neg)).sum(0) * op.gain.to(F64)
    expected = float_layer(op, x)[0] - op.bias.to(F64)
    assert float(((linear_in_g - expected).abs() / expected.abs().max()).max()) > 0.05


# --------------------------------------------------------------------------------------------
# programming non-idealities and read noise
# --------------------------------------------------------------------------------------------


def noisy_target(**nonidealities: float) -> Target:
    return load_target("rram_a").with_changes(nonidealities=nonidealities)


def programmed(target: Target, g_pos: torch.Tensor, g_neg: torch.Tensor, col_splits: tuple[int, ...],
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The conductances one chip instance holds for these targets: the target's cell writer applied
    through its weight encoding (which draws a shared reference cell once)."""
    write = cell_writer(target, generator)
    assert write is not None
    grid = TileGrid((0, g_pos.shape[0]), col_splits)
    return weight_encoding(target.crossbar.weight_encoding, target).program(g_pos, g_neg, write, grid)


def test_no_nonidealities_write_nothing() -> None:
    assert cell_writer(load_target("rram_a"), torch.Generator()) is None


@pytest.mark.parametrize(("sigma", "where"), [(0.05, "g_max"), (0.05, "middle"), (0.01, "g_min"), (0.003, "g_min")])
def test_programming_sigma_gives_the_stated_mean_and_spread(sigma: float, where: str) -> None:
    """A programmed cell's conductance has the target as its mean and programming_sigma·(g_max - g_min)
    as its standard deviation, at the window's edges as in its middle (nothing is clipped)."""
    target = noisy_target(programming_sigma=sigma)
    c = target.conductance
    g0 = {"g_min": c.g_min, "middle": (c.g_min + c.g_max) / 2, "g_max": c.g_max}[where]
    g = torch.full((1000, 1000), g0, dtype=F64)  # 1M cells in each of g_pos and g_neg
    g_pos, g_neg = programmed(target, g, g.clone(), (0, 500, 1000), torch.Generator().manual_seed(0))
    std = sigma * (c.g_max - c.g_min)
    for prog in (g_pos, g_neg):
        n = prog.numel()
        assert abs(float(prog.mean()) - g0) < 5 * std / math.sqrt(n)  # ±5 standard errors
        assert float(prog.std()) == pytest.approx(std, rel=0.02)
        assert float(prog.min()) > 0  # a conductance
    assert not torch.equal(g_pos, g_neg)  # drawn independently
    assert abs(float(torch.corrcoef(torch.stack([g_pos.flatten(), g_neg.flatten()]))[0, 1])) < 0.005


def test_programming_variation_is_lognormal_with_the_stated_moments() -> None:
    """Where the spread exceeds the target itself (5 % of the window at g_min, 4.95 times g_min) the
    sample std converges too slowly to check directly: the logarithm of the conductance is normal
    with the moments of the lognormal whose mean and std are the stated ones."""
    target = noisy_target(programming_sigma=0.05)
    c = target.conductance
    gen = torch.Generator().manual_seed(1)
    for g0 in (c.g_min, 3 * c.g_min, c.g_max):
        prog, _ = programmed(target, torch.full((1000, 1000), g0, dtype=F64), torch.full((1, 1000), g0, dtype=F64), (0, 1000), gen)
        ratio = 0.05 * (c.g_max - c.g_min) / g0  # stated std / stated mean
        s2 = math.log1p(ratio**2)
        log_g = prog.log()
        n = log_g.numel()
        assert abs(float(log_g.mean()) - (math.log(g0) - s2 / 2)) < 5 * math.sqrt(s2 / n)
        assert float(log_g.std()) == pytest.approx(math.sqrt(s2), rel=5 * math.sqrt(0.5 / n))
        assert float(((log_g - log_g.mean()) ** 3).mean() / log_g.var() ** 1.5) == pytest.approx(0.0, abs=5 * math.sqrt(6 / n))


def test_programming_variation_is_not_clipped_to_the_window() -> None:
    target = noisy_target(programming_sigma=0.05)
    c = target.conductance
    gen = torch.Generator().manual_seed(2)
    edge_pos, edge_neg = programmed(target, torch.full((500, 200), c.g_max, dtype=F64), torch.full((500, 200), c.g_min, dtype=F64),
                                    (0, 200), gen)
    assert float(edge_pos.max()) > c.g_max and float(edge_neg.min()) < c.g_min and float(edge_neg.min()) > 0
    # lognormal about g_max: above it with probability P(Z > s/2), s² = log(1 + (std/mean)²)
    s = math.sqrt(math.log1p((0.05 * (c.g_max - c.g_min) / c.g_max) ** 2))
    above = 0.5 * math.erfc(s / 2 / math.sqrt(2))
    assert float((edge_pos > c.g_max).double().mean()) == pytest.approx(above, abs=5 * math.sqrt(0.25 / edge_pos.numel()))


def test_programmed_layer_holds_the_varied_cells() -> None:
    """Through the runtime: a layer programmed on a chip instance holds cells spread as the target states."""
    sigma = 0.005  # a std of half g_min: at the cells on g_min (half of them) the lognormal's tails stay light enough to sample
    exe = rramc.compile(mlp(), "rram_a", torch.rand(16, 45), input_range=(0, 1), pipeline=IDEAL_CONVERTERS)
    node = exe.graph.nodes_of(CrossbarOp)[0]
    target = exe.target.with_changes(nonidealities={"programming_sigma": sigma})
    c = target.conductance
    deviations = []
    for seed in range(40):
        layer = CrossbarLayer.program(node, target, generator=torch.Generator().manual_seed(seed), dtype=F64)
        g_pos, g_neg = layer.cells.g_pos, layer.cells.g_neg
        assert g_pos.shape == node.op.g_pos.shape == (45, 30)
        deviations += [g_pos - node.op.g_pos.to(F64), g_neg - node.op.g_neg.to(F64)]
    dev = torch.stack(deviations)  # 108k cells, at every programmed level
    std = sigma * (c.g_max - c.g_min)
    assert abs(float(dev.mean())) < 5 * std / math.sqrt(dev.numel())
    assert float(dev.std()) == pytest.approx(std, rel=0.03)
    # each seed is one chip instance, the same every time it is programmed
    again = CrossbarLayer.program(node, target, generator=torch.Generator().manual_seed(39), dtype=F64)
    assert torch.equal(again.cells.g_pos, layer.cells.g_pos)


def test_offset_reference_cells_vary_once_per_word_line_and_array() -> None:
    target = load_target("rram_a").with_changes(crossbar={"weight_encoding": "offset"}, nonidealities={"programming_sigma": 0.05})
    c = target.conductance
    mid = (c.g_min + c.g_max) / 2
    g = torch.full((300, 12), mid, dtype=F64)
    _, g_neg = programmed(target, g, g.clone(), (0, 5, 12), torch.Generator().manual_seed(0))
    assert torch.equal(g_neg[:, :5], g_neg[:, :1].expand(-1, 5)) and torch.equal(g_neg[:, 5:], g_neg[:, 5:6].expand(-1, 7))
    assert not torch.equal(g_neg[:, 0], g_neg[:, 5])
    dev = torch.cat([g_neg[:, 0], g_neg[:, 5]]) - mid
    assert float(dev.std()) == pytest.approx(0.05 * (c.g_max - c.g_min), rel=0.1)


def test_stuck_cells_land_near_the_requested_fractions() -> None:
    target = noisy_target(stuck_off_fraction=0.1, stuck_on_fraction=0.05)
    c = target.conductance
    mid = (c.g_min + c.g_max) / 2
    g = torch.full((200, 100), mid, dtype=F64)
    g_pos, g_neg = programmed(target, g, g.clone(), (0, 100), torch.Generator().manual_seed(0))
    for prog in (g_pos, g_neg):
        off = float((prog == c.g_min).double().mean())
        on = float((prog == c.g_max).double().mean())
        assert off == pytest.approx(0.1, abs=0.01)  # ±5 standard errors on 20k cells
        assert on == pytest.approx(0.05, abs=0.008)
        assert float((prog == mid).double().mean()) == pytest.approx(0.85, abs=0.012)
    # through the runtime: a programmed layer holds such cells
    exe = rramc.compile(mlp(), target.with_changes(nonidealities={"stuck_off_fraction": 0.0, "stuck_on_fraction": 0.0}),
                        torch.rand(16, 45), pipeline=IDEAL_CONVERTERS)
    node = exe.graph.nodes_of(CrossbarOp)[0]
    layer = CrossbarLayer.program(node, target.with_changes(nonidealities={"stuck_on_fraction": 0.3}),
                                  generator=torch.Generator().manual_seed(0), dtype=F64)
    real = layer.cells.g_pos.reshape(-1)
    assert real.numel() == 45 * 30
    at_max = float(torch.isclose(real, torch.tensor(c.g_max, dtype=F64), rtol=1e-6, atol=0).double().mean())
    before = float(torch.isclose(node.op.g_pos.to(F64), torch.tensor(c.g_max, dtype=F64), rtol=1e-6, atol=0).double().mean())
    assert at_max == pytest.approx(0.3 + 0.7 * before, abs=0.05)


@pytest.mark.parametrize("target_name", ["rram_a", "rram_b"])
def test_read_noise_std_matches_the_per_cell_formula(target_name: str) -> None:
    device = load_target(target_name).device
    gen = torch.Generator().manual_seed(0)
    rows, cols, reads = 6, 3, 20000
    g_pos = 2e-8 + (2e-6 - 2e-8) * torch.rand(rows, cols, generator=gen, dtype=F64)
    g_neg = 2e-8 + (2e-6 - 2e-8) * torch.rand(rows, cols, generator=gen, dtype=F64)
    v = torch.rand(rows, generator=gen, dtype=F64)
    sigma = 0.05
    # the window and read voltage of the targets (a non-separable device's expansions are then shared with other tests)
    samples = column_currents(v.expand(reads, rows), g_pos, g_neg, device, read_voltage=1.0, window=(2e-8, 2e-6),
                              read_noise_sigma=sigma, generator=gen)[0]
    # per cell: I_ij (1 + σ ε_ij), independent  =>  var = σ² Σ_i (f⁺_ij² + f⁻_ij²)
    f_pos = torch.stack([torch.stack([device.current(v[i], g_pos[i, j]) for j in range(cols)]) for i in range(rows)])
    f_neg = torch.stack([torch.stack([device.current(v[i], g_neg[i, j]) for j in range(cols)]) for i in range(rows)])
    expected_std = sigma * ((f_pos**2 + f_neg**2).sum(0)).sqrt()
    expected_mean = (f_pos - f_neg).sum(0)
    torch.testing.assert_close(samples.std(0), expected_std, rtol=0.03, atol=0)
    assert bool(((samples.mean(0) - expected_mean).abs() < 5 * expected_std / math.sqrt(reads)).all())
    # columns are read independently
    corr = torch.corrcoef(samples.T)
    assert float((corr - torch.eye(cols, dtype=F64)).abs().max()) < 0.05


def test_read_noise_of_a_programmed_layer_follows_the_target() -> None:
    target = load_target("rram_b").with_changes(crossbar={"rows": 16, "cols": 10})
    gen = torch.Generator().manual_seed(1)
    exe = rramc.compile(mlp(), target, torch.rand(32, 45, generator=gen), input_range=(0, 1),
                        pipeline="canonicalize,quantize{dac_bits=0,adc_bits=0},tile,calibrate,emit")
    node = exe.graph.nodes_of(CrossbarOp)[0]
    assert node.op.row_splits == (0, 16, 32, 45)
    noisy = target.with_changes(nonidealities={"read_noise_sigma": 0.1})
    layer = CrossbarLayer.program(node, noisy, dtype=F64)
    x = torch.rand(1, 45, generator=gen, dtype=F64).expand(5000, 45)
    scale = node.op.input_range.scale
    ((_, current),) = layer.phases(x, scale, torch.Generator().manual_seed(2))
    assert current.shape == (3, 5000, 30)  # [row blocks, batch, outputs]
    volts = x[0] / scale * target.crossbar.read_voltage
    g_pos, g_neg = node.op.g_pos.to(F64), node.op.g_neg.to(F64)
    for rb, (r0, r1) in enumerate(zip(node.op.row_splits, node.op.row_splits[1:])):
        i_pos = noisy.device.current(volts[r0:r1, None], g_pos[r0:r1])
        i_neg = noisy.device.current(volts[r0:r1, None], g_neg[r0:r1])
        f2 = i_pos**2 + i_neg**2  # [rows, outputs], per cell
        assert f2.shape == (r1 - r0, 30)
        expected = 0.1 * f2.sum(0).sqrt()
        torch.testing.assert_close(current[rb].std(0), expected, rtol=0.07, atol=0)
        mean = (i_pos - i_neg).sum(0)
        assert bool(((current[rb].mean(0) - mean).abs() < 5 * expected / math.sqrt(5000)).all())


# --------------------------------------------------------------------------------------------
# converters
# --------------------------------------------------------------------------------------------


def test_dac_levels() -> None:
    x = torch.linspace(-0.5, 1.5, 2001, dtype=F64)
    y = dac(x, 3)
    levels = torch.arange(8, dtype=F64) / 7
    assert torch.equal(torch.unique(y), levels)
    inside = (x >= 0) & (x <= 1)
    assert float((y[inside] - x[inside]).abs().max()) <= 1 / 14 + 1e-12  # the nearest level
    assert bool((y[x < 0] == 0).all() and (y[x > 1] == 1).all())
    assert torch.equal(dac(x, None), x)  # ideal: neither quantised nor clipped


def test_adc_levels_and_clipping() -> None:
    fs = torch.tensor(3e-5, dtype=F64)
    i = torch.linspace(-1.5, 1.5, 3001, dtype=F64) * fs
    y = adc(i, fs, 4)
    lsb = float(fs) / 7
    codes = y / lsb
    torch.testing.assert_close(codes, torch.round(codes), rtol=0, atol=1e-9)
    assert torch.unique(torch.round(codes)).tolist() == list(range(-7, 8))
    assert float(y.abs().max()) <= float(fs) * (1 + 1e-12)
    torch.testing.assert_close(y[i >= fs], fs.expand(int((i >= fs).sum())), rtol=1e-12, atol=0)  # clipped at +full scale
    torch.testing.assert_close(y[i <= -fs], -fs.expand(int((i <= -fs).sum())), rtol=1e-12, atol=0)
    inside = i.abs() <= fs
    assert float((y[inside] - i[inside]).abs().max()) <= lsb / 2 * (1 + 1e-9)
    assert torch.equal(adc(i, fs, None), i)
    # per-column full scales broadcast
    per_col = adc(torch.full((2, 3), 0.9, dtype=F64), torch.tensor([0.5, 1.0, 2.0], dtype=F64), 4)
    # 0.9 A: clipped to 0.5; 6.3 LSB of 1/7 -> 6/7; 3.15 LSB of 2/7 -> 6/7
    torch.testing.assert_close(per_col, torch.tensor([[0.5, 6 / 7, 6 / 7]] * 2, dtype=F64), rtol=1e-12, atol=0)


def test_converters_pass_gradients_straight_through() -> None:
    x = torch.linspace(-0.5, 1.5, 201, dtype=F64).requires_grad_()
    dac(x, 3).sum().backward()
    inside = (x > 0) & (x < 1)
    assert torch.equal(x.grad[inside], torch.ones(int(inside.sum()), dtype=F64))
    assert bool((x.grad[(x < 0) | (x > 1)] == 0).all())  # clipped inputs pass none
    y = dac(x.detach().requires_grad_(), 3)
    assert torch.equal(y.detach(), dac(x.detach(), 3))  # same forward value with and without gradients

    fs = torch.tensor(2.0, dtype=F64)
    i = torch.linspace(-3, 3, 301, dtype=F64).requires_grad_()
    adc(i, fs, 4).sum().backward()
    inside = i.abs() < 2
    assert torch.equal(i.grad[inside], torch.ones(int(inside.sum()), dtype=F64))
    assert bool((i.grad[i.abs() > 2] == 0).all())
    assert torch.equal(adc(i.detach().requires_grad_(), fs, 4).detach(), adc(i.detach(), fs, 4))


@pytest.mark.parametrize("target_name", ["rram_a", "rram_b"])
def test_least_squares_neuron_matches_per_cell_reference(target_name: str) -> None:
    gen = torch.Generator().manual_seed(8)
    pipeline = "canonicalize,quantize,tile{rows=20,cols=7},calibrate{gain=least_squares},emit"
    exe = rramc.compile(mlp(), target_name, torch.rand(48, 45, generator=gen), input_range=(0, 1), pipeline=pipeline)
    ops = check_against_reference(exe, torch.rand(16, 45, generator=gen))
    assert all(op.offset is not None for op in ops)
