"""The chip's quantisers: input DAC, per-tile ADC and programmable conductance levels.

All are batched, differentiable torch: in training they pass gradients straight through.
"""

from __future__ import annotations

import torch
from torch import Tensor


def straight_through(x: Tensor, quantized: Tensor) -> Tensor:
    """``quantized`` in the forward pass, the gradient of ``x`` in the backward pass."""
    return x + (quantized - x).detach()


def dac_steps(bits: int) -> int:
    return (1 << bits) - 1


def dac(x: Tensor, bits: int | None) -> Tensor:
    """Input DAC: ``x`` in [0, 1] → one of ``2**bits`` evenly spaced codes; ideal when bits is None."""
    if bits is None:
        return x
    steps = dac_steps(bits)
    x = x.clamp(0.0, 1.0)
    if not x.requires_grad:
        return torch.round(x * steps).div_(steps)
    return straight_through(x, torch.round(x * steps) / steps)


def adc_steps(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def adc(current: Tensor, full_scale: Tensor, bits: int | None) -> Tensor:
    """Signed ADC: clip to ±``full_scale`` and round to ``2**(bits-1) - 1`` steps per sign."""
    if bits is None:
        return current
    steps = adc_steps(bits)
    full_scale = full_scale.clamp_min(torch.finfo(current.dtype).tiny)
    clipped = torch.maximum(torch.minimum(current, full_scale), -full_scale)
    # Divide, not multiply by steps/full_scale: a tile that never carried current has a range of
    # `tiny`, whose reciprocal overflows to inf (and 0·inf is NaN).
    if not clipped.requires_grad:
        return torch.round(clipped / full_scale * steps).mul_(full_scale / steps)
    return straight_through(clipped, torch.round(clipped / full_scale * steps) * (full_scale / steps))


def snap_to_levels(g: Tensor, g_min: float, g_max: float, levels: int | None) -> Tensor:
    """Clip conductances to [g_min, g_max] and round to ``levels`` evenly spaced values."""
    g = g.clamp(g_min, g_max)
    if levels is None:
        return g
    step = (g_max - g_min) / (levels - 1)
    return straight_through(g, g_min + torch.round((g - g_min) / step) * step)
