"""Separable expansions: a non-separable device computed as a few matmuls, within a measured bound."""

from __future__ import annotations

import torch

import rramc
from rramc.hardware.crossbar import TiledConductances, bitline_currents, currents_from_drive
from rramc.hardware.devices import cached_expansion

F64 = torch.float64


def test_state_dependent_series_matches_the_device_within_its_bound() -> None:
    device = rramc.load_target("rram_b").device
    expansion = cached_expansion(device, 1.0, (1e-6, 1e-4))
    assert expansion is not None and expansion.terms <= 16 and expansion.max_error < 1e-9
    gen = torch.Generator().manual_seed(0)
    v = torch.rand(2000, generator=gen, dtype=F64)
    g = 1e-6 + torch.rand(2000, generator=gen, dtype=F64) * 99e-6
    exact = device.current(v, g)
    assert float((expansion.current(v, g) - exact).abs().max()) <= 2 * expansion.max_error * float(device.current(torch.ones(1, dtype=F64), torch.full((1,), 1e-4, dtype=F64)))
    # a harsher device needs more terms and still meets the bound
    harsh = rramc.load_target("rram_b").with_changes(device={"nonlinearity_k_hrs": 70.0, "nonlinearity_k_lrs": 60.0}).device
    harsh_expansion = cached_expansion(harsh, 1.0, (1e-6, 1e-4))
    assert harsh_expansion.terms > expansion.terms and harsh_expansion.max_error < 1e-8


def test_table_expansion_is_exact() -> None:
    volts = [0.0, 0.2, 0.45, 0.7, 1.0, 1.2]
    states = [1e-6, 1e-5, 1e-4]
    currents = [[g * (v + 0.3 * v**3) * (1 + 100 * g) for g in states] for v in volts]
    target = rramc.Target.from_mapping({"name": "t", "device": {"model": "table", "voltages": volts, "states": states, "currents": currents},
                                        "conductance": {"g_min": 1e-6, "g_max": 1e-4}, "crossbar": {"rows": 8, "cols": 8, "read_voltage": 1.0}})
    expansion = cached_expansion(target.device, 1.0, (1e-6, 1e-4))
    assert expansion.terms == 5 and expansion.max_error < 1e-12
    v = torch.linspace(0, 1, 301, dtype=F64)[:, None]
    g = torch.linspace(1e-6, 1e-4, 77, dtype=F64)[None, :]
    torch.testing.assert_close(expansion.current(v, g), target.device.current(v, g), rtol=1e-12, atol=1e-18)


def test_column_currents_through_the_expansion_equal_the_per_cell_sum() -> None:
    device = rramc.load_target("rram_b").device
    expansion = cached_expansion(device, 1.0, (1e-6, 1e-4))
    gen = torch.Generator().manual_seed(1)
    g_pos = 1e-6 + torch.rand(300, 40, generator=gen, dtype=F64) * 99e-6
    g_neg = 1e-6 + torch.rand(300, 40, generator=gen, dtype=F64) * 99e-6
    tiles = TiledConductances.from_matrices(g_pos, g_neg, (0, 128, 256, 300), (0, 25, 40))
    v = torch.rand(16, 300, generator=gen, dtype=F64)
    per_cell = bitline_currents(v, tiles, device)
    expanded = currents_from_drive(v, tiles, device, expansion=expansion)
    scale = float(per_cell.abs().max())
    assert float((expanded - per_cell).abs().max()) < 1e-8 * scale
    # beyond v_max (an unclipped ideal DAC) the series would not hold: the per-cell path is used
    beyond = currents_from_drive(1.5 * v, tiles, device, expansion=expansion)
    torch.testing.assert_close(beyond, bitline_currents(1.5 * v, tiles, device))
