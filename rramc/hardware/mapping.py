"""Weights → conductances: what ``quantize`` writes and ``reconstruct`` trains through.

Weights are mapped in the *current* domain: the read current of a cell at the full read voltage,
``I(G) = f(Vread, G)``, is made linear in the weight, and conductances are ``I⁻¹`` of those
currents. For a separable device that is the familiar linear map ``G = g_min + c·W``; for a
state-dependent one it makes the conventional full-scale calibration exact (an input of 1 gives
the linear weighted sum), where a map linear in ``G`` would not be. Programmable levels are the
target's, evenly spaced in ``G``; a weight takes the level whose read current is nearest.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from rramc.hardware.converters import snap_to_levels, straight_through
from rramc.hardware.expansion import UniformTable
from rramc.hardware.target import Target

INVERSE_GRID = 4097


class ReadCurrent:
    """``I(G) = f(Vread, G)`` over the window and its inverse, both differentiable."""

    def __init__(self, target: Target) -> None:
        c, device, vread = target.conductance, target.device, target.crossbar.read_voltage
        self.device, self.read_voltage = device, vread
        self.g_min, self.g_max, self.levels = c.g_min, c.g_max, c.levels
        self.linear = device.separable
        v = torch.tensor(vread, dtype=torch.float64)
        self.per_siemens = float(device.unit_current(v)) if device.separable else None
        self.i_min = float(device.current(v, torch.tensor(c.g_min, dtype=torch.float64)))
        self.i_max = float(device.current(v, torch.tensor(c.g_max, dtype=torch.float64)))
        if not self.linear:
            # G as a function of I on a uniform grid of currents, by bisection (I rises with G:
            # the target loader checks it); then linear interpolation, differentiable in I.
            currents = torch.linspace(self.i_min, self.i_max, INVERSE_GRID, dtype=torch.float64)
            low = torch.full_like(currents, c.g_min)
            high = torch.full_like(currents, c.g_max)
            for _ in range(60):
                mid = (low + high) / 2
                above = device.current(torch.full_like(mid, vread), mid) > currents
                high, low = torch.where(above, mid, high), torch.where(above, low, mid)
            self.inverse = UniformTable(self.i_min, self.i_max, ((low + high) / 2)[:, None])
            if c.levels is not None:
                level_g = torch.linspace(c.g_min, c.g_max, c.levels, dtype=torch.float64)
                level_i = device.current(torch.full_like(level_g, vread), level_g)
                self.level_g, self.level_bounds = level_g, (level_i[1:] + level_i[:-1]) / 2

    def current_at(self, g: float) -> float:
        """The read current [A] of conductance ``g`` [S]."""
        return float(self.device.current(torch.tensor(self.read_voltage, dtype=torch.float64), torch.tensor(g, dtype=torch.float64)))

    @property
    def response(self) -> float:
        """Read current per siemens of conductance difference across the window [A/S]."""
        return (self.i_max - self.i_min) / (self.g_max - self.g_min)

    def conductance(self, current: Tensor, levels: int | None) -> Tensor:
        """The conductance whose read current is ``current`` (on ``levels``, the target's or None)."""
        if self.linear:
            assert self.per_siemens is not None
            return snap_to_levels(current / self.per_siemens, self.g_min, self.g_max, levels)
        g = self.inverse(current.clamp(self.i_min, self.i_max))[..., 0]
        if levels is None:
            return g
        if levels != self.levels:
            raise ValueError(f"{levels} levels: a state-dependent device maps onto its target's own levels ({self.levels})")
        bounds = self.level_bounds.to(current)
        snapped = self.level_g.to(current)[torch.bucketize(current.detach(), bounds)]
        return straight_through(g, snapped) if g.requires_grad else snapped


@functools.lru_cache(maxsize=32)
def read_current(target: Target) -> ReadCurrent:
    return ReadCurrent(target)


@dataclass(frozen=True)
class MappingPlan:
    """How a float layer becomes crossbar tiles: what ``quantize`` and ``tile`` will do.

    ``reconstruct`` trains through the same plan, read from the passes that follow it, so what
    is trained is what is compiled.
    """

    weight_encoding: str
    input_encoding: str
    granularity: str = "column"
    levels: int | None = None
    dac_bits: int | None = None
    adc_bits: int | None = None
    tile_rows: int | None = None
    tile_cols: int | None = None
    balance: bool = False
    weight_slices: int | None = None  # bit-slicing: cell pairs per weight and bits per pair (None: unsliced)
    slice_bits: int | None = None

    @classmethod
    def for_target(cls, target: Target, **changes: object) -> MappingPlan:
        """The default plan for ``target`` (what the default pipeline compiles)."""
        from rramc.hardware.weight_encoding import slice_bits

        x = target.crossbar
        bits = slice_bits(target)
        plan = cls(weight_encoding=x.weight_encoding, input_encoding=x.input_encoding, levels=target.conductance.levels,
                   dac_bits=x.dac_bits, adc_bits=x.adc_bits, weight_slices=x.weight_slices if bits is not None else None,
                   slice_bits=bits)
        return dataclasses.replace(plan, **changes)  # type: ignore[arg-type]


def weight_peak(weight: Tensor, per_column: bool) -> Tensor:
    """The largest |weight| of each output (or of the layer), 1 where it is 0; mapped to the window's edge."""
    magnitude = weight.abs()
    peak = magnitude.amax(dim=1) if per_column else magnitude.amax().expand(weight.shape[0])
    return torch.where(peak > 0, peak, torch.ones_like(peak))
