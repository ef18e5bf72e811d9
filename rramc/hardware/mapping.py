"""Weights → conductance pairs: the mapping that ``quantize`` applies and ``reconstruct`` trains through."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from rramc.hardware.crossbar import snap_to_levels
from rramc.hardware.target import Target


def map_weights(
    weight: Tensor,
    target: Target,
    *,
    per_column: bool = True,
    levels: int | None | Literal["target"] = "target",
) -> tuple[Tensor, Tensor, Tensor]:
    """(g_pos, g_neg, conductance_per_weight) for a ``[outputs, inputs]`` weight matrix.

    Conductances come back as ``[inputs, outputs]`` (word lines × bit lines). Differential
    encoding: ``G± = g_min + c·max(±W, 0)`` with ``c`` chosen so the largest weight reaches
    ``g_max``. Offset encoding: ``G = g_ref + c·W`` against a reference at ``g_ref`` (the level
    nearest the middle of the window), so the largest weight reaches the window's edge.
    ``levels``: the target's, a number, or None for continuous conductances.

    A weight that requires grad keeps its graph (levels pass gradients straight through; the
    scale ``c`` is treated as a constant of each step), so training sees the same mapping.
    """
    c = target.conductance
    n_levels = c.levels if levels == "target" else levels
    training = weight.requires_grad
    w = weight if training else weight.detach().to(torch.float64)
    magnitude = w.abs()  # in training, the scale moves with the largest weight: gradients see it
    peak = magnitude.amax(dim=1) if per_column else magnitude.amax().expand(w.shape[0])
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    # The scale puts every conductance inside the window already; only levels need snapping.
    def snap(g: Tensor) -> Tensor:
        return g if n_levels is None else snap_to_levels(g, c.g_min, c.g_max, n_levels)

    if target.crossbar.weight_encoding == "differential":
        scale = (c.g_max - c.g_min) / peak
        g_pos = snap(c.g_min + scale[:, None] * torch.relu(w))
        g_neg = snap(c.g_min + scale[:, None] * torch.relu(-w))
    else:
        mid = torch.tensor((c.g_min + c.g_max) / 2, dtype=w.dtype, device=w.device)
        g_ref = snap(mid)
        half = float(min(c.g_max - g_ref, g_ref - c.g_min))
        scale = half / peak
        g_pos = snap(g_ref + scale[:, None] * w)
        g_neg = g_ref.expand_as(g_pos).clone()
    if training:
        return g_pos.T, g_neg.T, scale
    return g_pos.T.float().contiguous(), g_neg.T.float().contiguous(), scale.float()
