"""The ``predistorted`` input encoding: DAC levels placed so that equal input steps give equal current steps.

A separable device carries ``G·g(V)``: with the DAC's level ``k`` at ``V_k = g⁻¹(k/(2^B-1) · g(Vread))``
a column sums ``g(Vread)·Σ_i u_i·G_i``, linear in the inputs without retraining. A state-dependent
device has no such voltage for every ``G`` at once: each level is the voltage whose currents are
closest, in the least-squares sense over the conductance window, to ``k/(2^B-1)`` of the read
currents, and :meth:`Predistorted.linearity_error` says what remains.

Without a DAC in the model (training without converters), the same map ``u → V(u)`` is read from a
fine table by linear interpolation, differentiable in ``u``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from rramc._lazy import lazy_import
from rramc.hardware.input_encoding import InputEncoding, Read
from rramc.hardware.target import Target

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from rramc.hardware import converters
    from rramc.hardware.expansion import UniformTable
else:
    torch = lazy_import("torch", globals())
    converters = lazy_import("rramc.hardware.converters", globals())

CONTINUOUS_POINTS = 4097
"""Nodes of the continuous map u → V(u) (the model without a DAC): interpolation error ~1e-7 of Vread."""
WINDOW_POINTS = 65
"""Conductances across the window that a state-dependent device's levels are fitted on."""
MONOTONE_POINTS = 257


class Predistorted(InputEncoding):
    """One read per phase, the DAC's levels at the voltages whose currents are evenly spaced."""

    name = "predistorted"

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._cast: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}  # the levels as each read's inputs are

    @classmethod
    def problem(cls, target: Target) -> tuple[str, str] | None:
        # Levels are found by bisection on V: the current must rise with V over [0, Vread] for every G.
        device, c, vread = target.device, target.conductance, target.crossbar.read_voltage
        for g in (c.g_min, c.g_max):
            previous = 0.0
            for step in range(1, MONOTONE_POINTS):
                v = vread * step / (MONOTONE_POINTS - 1)
                current = device.current_at(v, g)
                if not current > previous:
                    return ("input_encoding", f"predistorted needs a read current that rises with the voltage over "
                                              f"[0, {vread:g}] V, but a cell of {g:g} S carries {current:.4g} A at {v:.4g} V, "
                                              f"no more than at lower voltages; use another input encoding")
                previous = current
        return None

    def levels(self, dac_bits: int) -> Tensor:
        """The DAC's ``2^B`` output voltages [V], float64, ascending from 0 to ``Vread``."""
        return _levels(self.target, converters.dac_steps(dac_bits))

    def linearity_error(self, dac_bits: int | None) -> float:
        """Largest deviation of a level's current from its share of the read current, over the
        window's conductances, relative to the full-scale current of ``g_max`` (0 for a separable device;
        without a DAC, on 255 steps)."""
        steps = converters.dac_steps(dac_bits) if dac_bits is not None else 255
        return _residual(self.target, steps)

    def caveat(self, dac_bits: int | None, adc_bits: int | None) -> str | None:
        error = self.linearity_error(dac_bits)
        # Worth a word once it exceeds half the ADC's step (relative to its full scale), or 0.1 % without an ADC.
        tolerance = 0.5 / converters.adc_steps(adc_bits) if adc_bits is not None else 1e-3
        if error <= tolerance:
            return None
        return (f"the predistorted levels leave a linearity error of {100 * error:.2g} % of the full-scale read current "
                f"(above half the ADC's step, {100 * tolerance:.2g} %): the device's I-V depends on its state, so no voltage "
                "gives every conductance its share of the current; reconstruct (--reconstruct) trains the rest away")

    def reads(self, x: Tensor, scale: float, dac_bits: int | None) -> list[Read]:
        if dac_bits is None or x.requires_grad or dac_bits > 16:
            u = converters.dac(x.clamp(0.0, scale) * (1.0 / scale), dac_bits)  # straight-through in training
            return [Read(1.0, _continuous(self.target)(u)[..., 0].to(x.dtype))]
        steps = converters.dac_steps(dac_bits)
        codes = x.mul(steps / scale).clamp_(0.0, steps).round_()  # the codes amplitude's DAC gives
        key = (dac_bits, x.dtype, x.device)
        if key not in self._cast:
            self._cast[key] = self.levels(dac_bits).to(dtype=x.dtype, device=x.device)
        return [Read(1.0, levels=self._cast[key], codes=codes, uniform=False)]


@functools.lru_cache(maxsize=32)
def _levels(target: Target, steps: int) -> Tensor:
    shares = torch.arange(steps + 1, dtype=torch.float64) / steps
    return _voltages_for(target, shares)


@functools.lru_cache(maxsize=32)
def _continuous(target: Target) -> UniformTable:
    from rramc.hardware.expansion import UniformTable

    shares = torch.linspace(0.0, 1.0, CONTINUOUS_POINTS, dtype=torch.float64)
    return UniformTable(0.0, 1.0, _voltages_for(target, shares)[:, None])


def _window(target: Target) -> Tensor:
    c = target.conductance
    return torch.linspace(c.g_min, c.g_max, WINDOW_POINTS, dtype=torch.float64)


def _voltages_for(target: Target, shares: Tensor) -> Tensor:
    """The voltage of each share ``s`` of the read current: ``g⁻¹(s·g(Vread))`` for a separable device,
    else the least-squares voltage over the window, found by bisection on the slope of the squared
    error. Each conductance's error is unimodal in V (its current rises with V); their sum is for the
    smooth state-dependent models here, and the tests check the optimum locally."""
    vread = target.crossbar.read_voltage
    device = target.device
    g = _window(target) if not device.separable else torch.ones(1, dtype=torch.float64)
    full = device.current(torch.full_like(g, vread), g)  # [window]
    wanted = shares[:, None] * full[None, :]  # [shares, window]
    low = torch.zeros_like(shares)
    high = torch.full_like(shares, vread)

    def current(v: Tensor) -> Tensor:
        return device.current(v[:, None].expand_as(wanted), g[None, :].expand_as(wanted))

    for _ in range(60):  # 2^-60 of Vread: exact in float64
        mid = (low + high) / 2
        excess = current(mid) - wanted
        if not device.separable:
            # d/dV Σ_g (I(V, g) - wanted)² has the sign of Σ_g (I - wanted)·∂I/∂V (∂I/∂V > 0); a
            # separable device (one g) needs the sign of I - wanted alone.
            h = 1e-6 * vread
            excess = excess * (current(mid + h) - current(mid - h))
        above = excess.sum(1) > 0
        high, low = torch.where(above, mid, high), torch.where(above, low, mid)
    voltages = (low + high) / 2
    voltages[shares == 0] = 0.0  # exact ends: no input is no voltage, a full-scale input the read voltage
    voltages[shares == 1] = vread
    return voltages


@functools.lru_cache(maxsize=32)
def _residual(target: Target, steps: int) -> float:
    if target.device.separable:
        return 0.0
    g = _window(target)
    shares = torch.arange(steps + 1, dtype=torch.float64) / steps
    v = _levels(target, steps)
    vread = target.crossbar.read_voltage
    full = target.device.current(torch.full_like(g, vread), g)
    error = target.device.current(v[:, None].expand(-1, len(g)), g[None, :].expand(len(v), -1)) - shares[:, None] * full[None, :]
    return float(error.abs().max() / full.max())
