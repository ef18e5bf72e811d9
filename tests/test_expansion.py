"""Factorised cell currents ``f(V, G) ≈ Σ_k φ_k(V)·ψ_k(G)`` against the device itself, by brute force.

A non-separable device's expansion is a truncated SVD whose rank is the smallest that keeps its
worst error below a tolerance following the ADC (``tolerance_for``). Here, independently of how it
was fitted and measured: the device's own ``current`` on a dense grid holding the points the
expansion measured itself on (every DAC voltage × 16 times its conductances; or, for an ideal DAC,
4 voltages in every interval of its voltage table × twice its conductances) gives the true worst
error, which must be the reported ``max_error`` (to 5 %) and lie below ``tolerance``; the ranks are
the small ones the method promises; separable devices get an exact single term; and column
currents — of the column-solver convenience and of a compiled chip layer — are the per-cell sums
within the expansion's bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rramc
from rramc.hardware.column_solver import column_currents
from rramc.hardware.currents import with_read_current
from rramc.hardware.devices import DeviceModel
from rramc.hardware.expansion import IDEAL_TOLERANCE, VARIANCE_TOLERANCE, Expansion, describe, device_expansion, tolerance_for
from rramc.hardware.layer import CrossbarLayer
from rramc.hardware.target import Target, load_target
from rramc.hardware.tiling import TileGrid
from rramc.ir import CrossbarConv2d, CrossbarOp

F64 = torch.float64

# compiling on a few dozen samples is deliberate here
pytestmark = pytest.mark.filterwarnings("ignore:calibrated on .* sample:rramc.errors.RramcWarning")

RRAM_B = load_target("rram_b")
G_MIN, G_MAX, VREAD = RRAM_B.conductance.g_min, RRAM_B.conductance.g_max, 1.0  # the builtin targets' window and read voltage


def applied_voltages(dac_bits: int | None) -> torch.Tensor:
    """Every voltage a ``dac_bits`` DAC applies; for an ideal DAC a grid of 32769 over [0, Vread]: four
    points in every interval of the finest voltage table an expansion interpolates (8193 nodes), and
    so every point it checks itself."""
    if dac_bits is not None:
        return torch.arange(1 << dac_bits, dtype=F64) / ((1 << dac_bits) - 1) * VREAD
    return torch.linspace(0.0, VREAD, 32769, dtype=F64)


def window_conductances(density: int) -> torch.Tensor:
    """The window, uniformly and log-uniformly: ``density`` times denser than the expansions' own
    check grids (513 and 257 points), holding them."""
    return torch.cat([torch.linspace(G_MIN, G_MAX, 512 * density + 1, dtype=F64),
                      torch.logspace(math.log10(G_MIN), math.log10(G_MAX), 256 * density + 1, dtype=F64)])


def brute_force_error(exact: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], expansion: Expansion,
                      voltages: torch.Tensor, conductances: torch.Tensor) -> float:
    """``max |Σ_k φ_k(V)·ψ_k(G) - f(V, G)|`` over the grid, relative to ``f(Vread, g_max)``."""
    psi = expansion.conductance(conductances)  # [G, terms]
    worst = 0.0
    for v in voltages.split(512):
        approx = expansion.voltage(v) @ psi.T
        worst = max(worst, float((approx - exact(v[:, None], conductances[None, :])).abs().max()))
    full_scale = float(exact(torch.tensor(VREAD, dtype=F64), torch.tensor(G_MAX, dtype=F64)).abs())
    return worst / full_scale


def full_scale_current(device: DeviceModel) -> float:
    return float(device.current(torch.tensor(VREAD, dtype=F64), torch.tensor(G_MAX, dtype=F64)))


def test_tolerance_follows_the_adc() -> None:
    assert tolerance_for(None) == IDEAL_TOLERANCE == 1e-7
    assert tolerance_for(8) == pytest.approx(1 / 127 / 64, rel=1e-12)  # 1/64 of a step of a signed 8-bit ADC
    assert tolerance_for(4) == pytest.approx(1 / 7 / 64, rel=1e-12)
    assert tolerance_for(16) == pytest.approx(1 / 32767 / 64, rel=1e-12)
    assert tolerance_for(20) == IDEAL_TOLERANCE  # never finer than without an ADC


# --------------------------------------------------------------------------------------------
# the reported error is the worst error, below the tolerance, at a small rank
# --------------------------------------------------------------------------------------------

# (DAC bits, ADC bits, the most terms it may take): rank 3 with an 8-bit ADC, at most 6 with ideal ones
RRAM_B_CASES = [(8, 8, 3), (None, 8, 3), (8, None, 6), (None, None, 6)]


def check_reported_error(exact: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], expansion: Expansion,
                         dac_bits: int | None, *, within_tolerance: bool = True) -> float:
    # every applied voltage × 16 times the conductances, or 4 voltages per table interval × twice the conductances
    density = 16 if dac_bits is not None else 2
    worst = brute_force_error(exact, expansion, applied_voltages(dac_bits), window_conductances(density))
    if within_tolerance:
        assert worst <= expansion.tolerance, f"worst error {worst:.3g} above the tolerance {expansion.tolerance:.3g}"
    # The grid holds the points the expansion measured on: the reported error is attained ...
    assert worst >= expansion.max_error * (1 - 1e-9)
    # ... and between them the error rises by little (5 %: the expansion's own measure is a sample)
    assert worst <= expansion.max_error * 1.05, f"worst error {worst:.4g}, reported {expansion.max_error:.4g}"
    return worst


@pytest.mark.parametrize(("dac_bits", "adc_bits", "most_terms"), RRAM_B_CASES)
def test_state_dependent_expansion_meets_its_tolerance_at_a_small_rank(dac_bits: int | None, adc_bits: int | None,
                                                                        most_terms: int) -> None:
    device = RRAM_B.device
    expansion = device_expansion(device, VREAD, G_MIN, G_MAX, dac_bits, tolerance_for(adc_bits))
    assert not expansion.exact and expansion.tolerance == tolerance_for(adc_bits)
    assert expansion.v_max == VREAD
    if adc_bits == 8:
        assert expansion.terms == 3
    assert 2 <= expansion.terms <= most_terms
    check_reported_error(device.current, expansion, dac_bits)


@pytest.mark.parametrize(("dac_bits", "adc_bits"), [(8, 8), (None, 8), (8, None), (None, None)])
def test_squared_expansion_for_read_noise_meets_its_tolerance(dac_bits: int | None, adc_bits: int | None) -> None:
    """The expansion of ``f²`` that read noise's column variance is computed through: its tolerance
    is never tighter than VARIANCE_TOLERANCE (the noise's std is then right to half of it), and the
    expansion is the same from one build to the next."""
    device = RRAM_B.device
    expansion = device_expansion(device, VREAD, G_MIN, G_MAX, dac_bits, tolerance_for(adc_bits), True)
    assert not expansion.exact and expansion.terms <= 6
    assert expansion.tolerance == max(tolerance_for(adc_bits), VARIANCE_TOLERANCE)
    check_reported_error(lambda v, g: device.current(v, g) ** 2, expansion, dac_bits)
    device_expansion.cache_clear()
    again = device_expansion(device, VREAD, G_MIN, G_MAX, dac_bits, tolerance_for(adc_bits), True)
    assert (again.terms, again.max_error) == (expansion.terms, expansion.max_error)


def test_stronger_state_dependence_needs_more_terms_and_still_meets_its_tolerance() -> None:
    base = device_expansion(RRAM_B.device, VREAD, G_MIN, G_MAX, 8, tolerance_for(8))
    device = RRAM_B.with_changes(device={"nonlinearity_k_hrs": 30.0, "nonlinearity_k_lrs": 3.0}).device
    expansion = device_expansion(device, VREAD, G_MIN, G_MAX, 8, tolerance_for(8))
    assert expansion.terms > base.terms
    check_reported_error(device.current, expansion, 8)


def test_rank_is_the_smallest_that_meets_the_tolerance() -> None:
    """One term fewer would not do: the best rank-(r-1) approximation of f on the DAC's voltages ×
    the window (Eckart-Young, in a plain SVD here) already misses the tolerance on those points."""
    device = RRAM_B.device
    for adc_bits in (8, None):
        expansion = device_expansion(device, VREAD, G_MIN, G_MAX, 8, tolerance_for(adc_bits))
        v, g = applied_voltages(8), torch.linspace(G_MIN, G_MAX, 513, dtype=F64)
        f = device.current(v[:, None], g[None, :]) / full_scale_current(device)
        u, s, vh = torch.linalg.svd(f, full_matrices=False)
        r = expansion.terms - 1
        fewer = (u[:, :r] * s[:r]) @ vh[:r]
        assert float((fewer - f).abs().max()) > expansion.tolerance


def table_target() -> Target:
    """A measured-table device of three states whose I-V shapes differ: rank 2 (linear and cubic parts)."""
    volts = [0.0, 0.2, 0.45, 0.7, 1.0, 1.2]
    states = [G_MIN, math.sqrt(G_MIN * G_MAX), G_MAX]
    currents = [[g * (v + a * v**3) for g, a in zip(states, (0.9, 0.5, 0.1))] for v in volts]
    return Target.from_mapping({"name": "t", "device": {"model": "table", "voltages": volts, "states": states, "currents": currents},
                                "conductance": {"g_min": G_MIN, "g_max": G_MAX}, "crossbar": {"rows": 8, "cols": 8, "read_voltage": VREAD}})


def test_table_expansion_has_the_tables_rank() -> None:
    device = table_target().device
    expansion = device_expansion(device, VREAD, G_MIN, G_MAX, 8, IDEAL_TOLERANCE)
    assert expansion.terms == 2 and not expansion.exact
    check_reported_error(device.current, expansion, 8)


def test_an_unreachable_tolerance_is_reported_honestly() -> None:
    """With an ideal DAC, φ is interpolated between grid voltages, and a table's kinks fall between
    them: no rank reaches 1e-7. The most accurate rank is kept, its error is the true one, and the
    description says it is above the tolerance."""
    device = table_target().device
    expansion = device_expansion(device, VREAD, G_MIN, G_MAX, None, IDEAL_TOLERANCE)
    assert expansion.max_error > expansion.tolerance
    check_reported_error(device.current, expansion, None, within_tolerance=False)
    assert "ABOVE the tolerance" in describe(expansion)


# --------------------------------------------------------------------------------------------
# separable devices: one exact term
# --------------------------------------------------------------------------------------------

SEPARABLE = {
    "ideal": load_target("ideal").device,
    "rram_a": load_target("rram_a").device,
    # rram_a's window scaled to keep its read current (b = 6 carries 5 times k = 7.5's): the device is the same
    "sinh_b": with_read_current(load_target("rram_a"), device={"model": "sinh", "b": 6.0}).device,
    "power_1.7": load_target("rram_a").with_changes(device={"model": "power", "exponent": 1.7}).device,
}


@pytest.mark.parametrize("name", list(SEPARABLE))
@pytest.mark.parametrize("dac_bits", [8, None])
def test_separable_devices_have_one_exact_term(name: str, dac_bits: int | None) -> None:
    device = SEPARABLE[name]
    assert device.separable
    v = torch.linspace(-1.5, 1.5, 301, dtype=F64)[:, None]  # any voltage: an exact term holds everywhere
    g = torch.cat([torch.zeros(1, dtype=F64), torch.linspace(G_MIN, 2 * G_MAX, 77, dtype=F64)])[None, :]
    for squared in (False, True):
        expansion = device_expansion(device, VREAD, G_MIN, G_MAX, dac_bits, tolerance_for(8), squared)
        assert expansion.exact and expansion.terms == 1 and expansion.max_error == 0.0 and expansion.v_max is None
        exact = device.current(v, g) ** (2 if squared else 1)
        torch.testing.assert_close(expansion.current(v, g), exact, rtol=1e-12, atol=0)
        assert expansion.covers(100 * v)


# --------------------------------------------------------------------------------------------
# column currents through the expansion
# --------------------------------------------------------------------------------------------


def per_cell_blocks(v: torch.Tensor, g_pos: torch.Tensor, g_neg: torch.Tensor, device: DeviceModel,
                    blocks: list[tuple[int, int]]) -> torch.Tensor:
    """``Σ_i f(V_i, G⁺_ij) - f(V_i, G⁻_ij)`` of every row block, cell by cell: ``[blocks, batch, outputs]``."""
    return torch.stack([(device.current(v[:, a:b, None], g_pos[a:b]) - device.current(v[:, a:b, None], g_neg[a:b])).sum(1)
                        for a, b in blocks])


def test_column_currents_through_the_expansion_equal_the_per_cell_sum() -> None:
    device = RRAM_B.device
    gen = torch.Generator().manual_seed(1)
    g_pos = G_MIN + torch.rand(300, 40, generator=gen, dtype=F64) * (G_MAX - G_MIN)
    g_neg = G_MIN + torch.rand(300, 40, generator=gen, dtype=F64) * (G_MAX - G_MIN)
    grid = TileGrid((0, 128, 256, 300), (0, 25, 40))
    v = torch.rand(16, 300, generator=gen, dtype=F64)
    per_cell = per_cell_blocks(v, g_pos, g_neg, device, grid.row_blocks)
    expanded = column_currents(v, g_pos, g_neg, device, grid=grid, read_voltage=VREAD, window=(G_MIN, G_MAX))
    assert expanded.shape == per_cell.shape == (3, 16, 40)
    # each cell is off by at most the expansion's (ideal-ADC) worst error: a column by its cells' sum of them
    expansion = device_expansion(device, VREAD, G_MIN, G_MAX, None, IDEAL_TOLERANCE)
    cell = 1.05 * expansion.max_error * full_scale_current(device)
    rows = torch.tensor([b - a for a, b in grid.row_blocks], dtype=F64)[:, None, None]
    assert bool(((expanded - per_cell).abs() <= 2 * rows * cell).all())
    assert float((expanded - per_cell).abs().max()) < 1e-7 * float(per_cell.abs().max())
    # beyond v_max (an unclipped ideal DAC) the expansion would not hold: the per-cell path is used
    beyond = column_currents(1.5 * v, g_pos, g_neg, device, grid=grid, read_voltage=VREAD, window=(G_MIN, G_MAX))
    torch.testing.assert_close(beyond, per_cell_blocks(1.5 * v, g_pos, g_neg, device, grid.row_blocks), rtol=1e-12, atol=0)


def test_chip_layers_compute_their_columns_through_the_expansion() -> None:
    """A compiled rram_b layer (8-bit DAC and ADC) reads its tiles through the rank-3 expansion: every
    tile column's current before the ADC is the per-cell sum of the DAC's voltages on the IR's
    conductances, within the expansion's bound."""
    device = RRAM_B.device
    expansion = device_expansion(device, VREAD, G_MIN, G_MAX, 8, tolerance_for(8))
    assert expansion.terms == 3
    cell = 1.05 * expansion.max_error * full_scale_current(device)
    torch.manual_seed(0)
    models = [
        (nn.Sequential(nn.Linear(45, 30), nn.ReLU(), nn.Linear(30, 5)), (45,)),
        (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1)), (3, 7, 7)),
    ]
    gen = torch.Generator().manual_seed(2)
    errors = []
    for model, shape in models:
        exe = rramc.compile(model, RRAM_B, torch.rand(64, *shape, generator=gen), input_range=(0, 1),
                            pipeline="canonicalize,quantize,tile{rows=20,cols=7},calibrate,emit")
        chip = exe.chip(0, dtype=F64)
        with torch.no_grad():
            _, values = chip.interpreter().run(torch.rand(6, *shape, generator=gen, dtype=F64), keep=True)
        for node in exe.graph.nodes_of(CrossbarOp):
            op, layer = node.op, chip.layers[node.name]
            assert isinstance(layer, CrossbarLayer) and op.dac_bits == 8 and op.adc_bits == 8
            assert "3 matmuls per tile" in layer.solver.describe(layer.cells)
            x = values[node.inputs[0]]
            ((sign, current),) = layer.phases(x, op.input_range.scale)
            assert sign == 1.0
            volts = torch.round((x / op.input_range.scale).clamp(0, 1) * 255) / 255 * VREAD  # the DAC, written out
            blocks = list(zip(op.row_splits, op.row_splits[1:]))
            g_pos, g_neg = op.g_pos.to(F64), op.g_neg.to(F64)
            if isinstance(op, CrossbarConv2d):
                kernel = op.weight.shape[2:]
                lines = F.unfold(volts, kernel, dilation=op.dilation, padding=op.padding, stride=op.stride)  # [batch, rows, pixels]
                batch, _, pixels = lines.shape
                flat = lines.transpose(1, 2).reshape(batch * pixels, -1)
                expected = per_cell_blocks(flat, g_pos, g_neg, device, blocks)  # [blocks, batch·pixels, outputs]
                got = current.permute(1, 0, 3, 4, 2).reshape(len(blocks), batch * pixels, -1)  # from [batch, blocks, outputs, H, W]
            else:
                expected, got = per_cell_blocks(volts, g_pos, g_neg, device, blocks), current
            assert got.shape == expected.shape
            rows = torch.tensor([b - a for a, b in blocks], dtype=F64)[:, None, None]
            assert bool(((got - expected).abs() <= 2 * rows * cell).all()), f"%{node.name}"
            errors.append(float((got - expected).abs().max()))
    assert max(errors) > 0  # an approximation, not the per-cell path
