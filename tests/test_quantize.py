"""quantize: weights → differential (or offset) conductance pairs on the target's levels."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from rramc.frontend import import_module
from rramc.hardware import load_target
from rramc.ir import CrossbarConv2d, CrossbarLinear, Linear
from rramc.hardware.weight_encoding import weight_encoding
from rramc.pipeline import CompileContext, PassManager, parse_pipeline


def map_weights(weight: torch.Tensor, target, *, per_column: bool = True):  # type: ignore[no-untyped-def]
    """(g_pos, g_neg, conductance_per_weight) of the target's weight encoding, on the target's levels."""
    mapped = weight_encoding(target.crossbar.weight_encoding, target).map(weight, per_column=per_column,
                                                                          levels=target.conductance.levels)
    return mapped.g_pos, mapped.g_neg, mapped.conductance_per_weight


def quantized(model: nn.Module, x: torch.Tensor, target, pipeline="canonicalize,quantize"):  # type: ignore[no-untyped-def]
    graph = import_module(model, x)
    return PassManager(parse_pipeline(pipeline)).run(graph, CompileContext(target))


def test_differential_pairs_on_levels_reproduce_the_weights() -> None:
    target = load_target("rram_a")  # 32 levels in [0.02, 2] µS
    c = target.conductance
    torch.manual_seed(0)
    w = torch.randn(7, 13)
    g_pos, g_neg, scale = map_weights(w, target)
    step = (c.g_max - c.g_min) / (c.levels - 1)
    for g in (g_pos, g_neg):
        assert g.shape == (13, 7)
        assert float(g.min()) >= c.g_min - 1e-12 and float(g.max()) <= c.g_max + 1e-12
        codes = (g.double() - c.g_min) / step
        torch.testing.assert_close(codes, codes.round(), atol=1e-3, rtol=0)
    # one cell of each pair sits at g_min; the largest |weight| of each column reaches g_max
    assert bool(((g_pos - c.g_min).abs() < 1e-12).logical_or((g_neg - c.g_min).abs() < 1e-12).all())
    assert torch.allclose((g_pos - g_neg).abs().amax(0), torch.full((7,), c.g_max - c.g_min))
    error = (g_pos - g_neg).T / scale[:, None] - w
    assert float(error.abs().max()) <= 0.5 * step / float(scale.min()) + 1e-6


def test_continuous_levels_are_exact_and_layer_granularity_shares_a_scale() -> None:
    target = load_target("ideal")
    w = torch.randn(5, 9, dtype=torch.float64).float()
    g_pos, g_neg, scale = map_weights(w, target)
    torch.testing.assert_close((g_pos - g_neg).T / scale[:, None], w, rtol=1e-5, atol=1e-6)
    _, _, layer_scale = map_weights(w, target, per_column=False)
    assert torch.allclose(layer_scale, layer_scale[0].expand(5))
    assert float(layer_scale[0]) == pytest.approx((target.conductance.g_max - target.conductance.g_min) / float(w.abs().max()))


def test_offset_encoding_uses_a_reference_column_at_mid_window() -> None:
    target = load_target("ideal").with_changes(crossbar={"weight_encoding": "offset"})
    c = target.conductance
    w = torch.randn(4, 6)
    g_pos, g_neg, scale = map_weights(w, target)
    mid = (c.g_min + c.g_max) / 2
    assert torch.allclose(g_neg, torch.full_like(g_neg, mid))
    torch.testing.assert_close((g_pos - g_neg).T / scale[:, None], w, rtol=1e-4, atol=1e-5)
    assert float(g_pos.min()) >= c.g_min * (1 - 1e-6) and float(g_pos.max()) <= c.g_max * (1 + 1e-6)


def test_state_dependent_cells_are_mapped_in_the_current_domain() -> None:
    """rram_b's current is not linear in G: the read currents at full voltage, not the conductances,
    are linear in the weights, so the full-scale calibration stays exact; on levels, each cell takes
    the level whose read current is nearest."""
    target = load_target("rram_b")
    c, device, vread = target.conductance, target.device, target.crossbar.read_voltage
    torch.manual_seed(0)
    w = torch.randn(6, 9)

    def current(g: torch.Tensor) -> torch.Tensor:
        return device.current(torch.full_like(g.double(), vread), g.double())

    i_min, i_max = (float(current(torch.tensor(g))) for g in (c.g_min, c.g_max))
    encoding = weight_encoding("differential", target)
    mapped = encoding.map(w, per_column=True, levels=None)
    per_weight = mapped.conductance_per_weight.double() * (i_max - i_min) / (c.g_max - c.g_min)  # A per weight unit
    torch.testing.assert_close((current(mapped.g_pos) - current(mapped.g_neg)).T / per_weight[:, None], w.double(),
                               rtol=1e-4, atol=1e-4)
    linear_in_g = (mapped.g_pos - mapped.g_neg).T.double() / mapped.conductance_per_weight.double()[:, None]
    assert float((linear_in_g - w).abs().max()) > 1e-2  # the conductances themselves are not linear in W
    levels = encoding.map(w, per_column=True, levels=c.levels)
    grid = torch.linspace(c.g_min, c.g_max, c.levels, dtype=torch.float64)
    for g, exact in ((levels.g_pos, mapped.g_pos), (levels.g_neg, mapped.g_neg)):
        assert bool(torch.isclose(g.double()[..., None], grid.float().double(), rtol=1e-6, atol=0).any(-1).all())
        nearest = grid[(current(grid)[None, None, :] - current(exact)[..., None]).abs().argmin(-1)]
        torch.testing.assert_close(g.double(), nearest, rtol=1e-6, atol=0)


def test_pass_lowers_every_layer_and_options_override_the_target(trained_cnn: nn.Module) -> None:
    x = torch.rand(4, 1, 8, 8)
    graph = quantized(trained_cnn, x, load_target("rram_a"), "canonicalize,quantize{levels=4,adc_bits=6,dac_bits=0}")
    ops = [n.op for n in graph]
    assert not any(isinstance(op, Linear) for op in ops)
    layers = [op for op in ops if isinstance(op, (CrossbarLinear, CrossbarConv2d))]
    assert [type(op) for op in layers] == [CrossbarConv2d, CrossbarConv2d, CrossbarLinear]
    for op in layers:
        assert op.adc_bits == 6 and op.dac_bits is None
        assert len(torch.unique(torch.cat([op.g_pos.flatten(), op.g_neg.flatten()]))) <= 4
        assert op.matrix_shape == (op.weight[0].numel(), op.weight.shape[0])


def test_levels_zero_means_continuous_even_on_a_levelled_target() -> None:
    torch.manual_seed(0)
    graph = quantized(nn.Linear(30, 20), torch.rand(2, 30), load_target("rram_a"), "canonicalize,quantize{levels=0}")
    (node,) = [n for n in graph if isinstance(n.op, CrossbarLinear)]
    assert len(torch.unique(node.op.g_pos)) > 100  # not snapped to rram_a's 32 levels
