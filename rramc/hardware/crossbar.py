"""Crossbar physics: converters, programming and the bit-line currents of tiled arrays.

This is the code the runtime executes and that calibration and retraining evaluate, so every
function is batched, differentiable torch (quantisers pass gradients straight through).

Layout: a layer's conductances are a matrix with one row per word line (input) and one column
per output. ``row_splits``/``col_splits`` cut it into tiles, one per array; the word lines of each
row block drive their own arrays, and each tile's bit-line currents are digitised by its own ADC
before the partial sums of the row blocks are added.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from rramc.hardware.devices import DeviceModel, SeparableExpansion
from rramc.hardware.target import Target

# Per-cell evaluation of a non-separable device materialises batch × rows × outputs currents;
# batches are cut so that one chunk stays below this many elements (~64 MiB in float32).
PER_CELL_CHUNK_ELEMENTS = 1 << 24


def straight_through(x: Tensor, quantized: Tensor) -> Tensor:
    """``quantized`` in the forward pass, the gradient of ``x`` in the backward pass."""
    return x + (quantized - x).detach()


def dac(x: Tensor, bits: int | None) -> Tensor:
    """Input DAC: ``x`` in [0, 1] → one of ``2**bits`` evenly spaced codes; ideal when bits is None."""
    if bits is None:
        return x
    steps = (1 << bits) - 1
    x = x.clamp(0.0, 1.0)
    if not x.requires_grad:
        return torch.round(x * steps).div_(steps)
    return straight_through(x, torch.round(x * steps) / steps)


def adc(current: Tensor, full_scale: Tensor, bits: int | None) -> Tensor:
    """Signed ADC: clip to ±``full_scale`` and round to ``2**(bits-1) - 1`` steps per sign."""
    if bits is None:
        return current
    steps = (1 << (bits - 1)) - 1
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


def full_scale_response(device: DeviceModel, read_voltage: float, g_min: float, g_max: float) -> float:
    """Current per siemens of weight at a full-scale input: ``[f(Vr, Gmax) - f(Vr, Gmin)]/(Gmax - Gmin)``.

    Dividing by it instead of by ``Vr`` is the conventional ("full-scale") calibration: an input
    of 1 then yields exactly the linear weighted sum. For a separable device it is ``g(Vr)``.
    """
    v = torch.tensor(read_voltage, dtype=torch.float64)
    hi = device.current(v, torch.tensor(g_max, dtype=torch.float64))
    lo = device.current(v, torch.tensor(g_min, dtype=torch.float64))
    return float((hi - lo) / (g_max - g_min))


@dataclass
class TiledConductances:
    """A layer's conductance pair cut into row blocks of arrays, padded to equal height.

    ``g_pos``/``g_neg`` have shape ``[row blocks, rows per block, outputs]``; padding rows hold
    zero conductance and are driven with 0 V, so they carry no current for any device.
    """

    g_pos: Tensor
    g_neg: Tensor
    row_splits: tuple[int, ...]
    col_splits: tuple[int, ...]
    row_index: Tensor  # [row blocks, rows per block] word line of each slot; n_inputs = padding
    _delta: Tensor | None = field(default=None, repr=False)
    _expansion: tuple[SeparableExpansion, list[Tensor]] | None = field(default=None, repr=False)

    @classmethod
    def from_matrices(cls, g_pos: Tensor, g_neg: Tensor, row_splits: tuple[int, ...], col_splits: tuple[int, ...]) -> TiledConductances:
        n_in = g_pos.shape[0]
        height = max(b - a for a, b in zip(row_splits, row_splits[1:]))
        index = torch.full((len(row_splits) - 1, height), n_in, dtype=torch.long, device=g_pos.device)
        for block, (a, b) in enumerate(zip(row_splits, row_splits[1:])):
            index[block, : b - a] = torch.arange(a, b, device=g_pos.device)
        if len(row_splits) == 2:  # one block, no padding: views, no copies
            return cls(g_pos.unsqueeze(0), g_neg.unsqueeze(0), tuple(row_splits), tuple(col_splits), index)

        def blocks(g: Tensor) -> Tensor:
            padded = torch.cat([g, g.new_zeros(1, g.shape[1])])
            return padded[index]

        return cls(blocks(g_pos), blocks(g_neg), tuple(row_splits), tuple(col_splits), index)

    def expansion_deltas(self, expansion: SeparableExpansion) -> list[Tensor]:
        """``ψ_k(G⁺) - ψ_k(G⁻)`` of every term of a separable expansion (cached unless training)."""
        if self._expansion is not None and self._expansion[0] is expansion:
            return self._expansion[1]
        deltas = [p - n for p, n in zip(expansion.conductance_terms(self.g_pos), expansion.conductance_terms(self.g_neg))]
        if not self.g_pos.requires_grad:
            self._expansion = (expansion, deltas)
        return deltas

    @property
    def delta(self) -> Tensor:
        """``g_pos - g_neg``, what a separable device's column current is linear in."""
        if self._delta is not None:
            return self._delta
        delta = self.g_pos - self.g_neg
        if not delta.requires_grad:
            self._delta = delta
        return delta

    def split_inputs(self, v: Tensor) -> Tensor:
        """``[batch, inputs]`` voltages → ``[row blocks, batch, rows per block]`` (padding at 0 V)."""
        if self.row_index.shape[0] == 1 and self.row_index.shape[1] == v.shape[1]:
            return v.unsqueeze(0)  # one block, no padding: no copy
        padded = torch.cat([v, v.new_zeros(v.shape[0], 1)], dim=1)
        return padded[:, self.row_index].permute(1, 0, 2)

    def per_column(self, per_tile: Tensor) -> Tensor:
        """``[row blocks, column blocks]`` → ``[row blocks, outputs]`` (each tile's value on its columns)."""
        widths = torch.tensor([b - a for a, b in zip(self.col_splits, self.col_splits[1:])], device=per_tile.device)
        return per_tile.repeat_interleave(widths, dim=1)

    def per_tile_max(self, per_column: Tensor) -> Tensor:
        """``[..., outputs]`` → ``[..., column blocks]``: the largest value of each tile's columns."""
        return torch.stack([per_column[..., a:b].amax(-1) for a, b in zip(self.col_splits, self.col_splits[1:])], -1)


def word_line_drive(v: Tensor, device: DeviceModel) -> Tensor:
    """What the column sums need from each word-line voltage: ``g(V)`` for a separable device, else ``V``.

    It is elementwise, so it may be computed before a convolution's im2col unrolling (on ``k²``
    times fewer values) and padding stays zero (``g(0) = 0``).
    """
    return device.unit_current(v) if device.separable else v


def bitline_currents(
    v: Tensor,
    tiles: TiledConductances,
    device: DeviceModel,
    *,
    read_noise_sigma: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Differential bit-line current of every tile column: ``Σ_i f(V_i, G⁺_ij) - f(V_i, G⁻_ij)``.

    ``v``: word-line voltages ``[batch, inputs]``. Returns ``[row blocks, batch, outputs]`` [A].
    """
    return currents_from_drive(word_line_drive(v, device), tiles, device, read_noise_sigma=read_noise_sigma, generator=generator)


def currents_from_drive(
    drive: Tensor,
    tiles: TiledConductances,
    device: DeviceModel,
    *,
    read_noise_sigma: float = 0.0,
    generator: torch.Generator | None = None,
    expansion: SeparableExpansion | None = None,
) -> Tensor:
    """:func:`bitline_currents` from :func:`word_line_drive` values ``[batch, inputs]``.

    A separable device costs one batched matmul of ``g(V)`` with ``G⁺ - G⁻``; a non-separable one
    given its ``expansion`` one matmul per term, ``Σ_k φ_k(V) @ (ψ_k(G⁺) - ψ_k(G⁻))``; otherwise
    (and with read noise, whose variance does not expand) it is evaluated per cell, in batch
    chunks. Read noise (each cell's current times ``1 + σ·ε``) is added with its exact column
    variance ``σ²·Σ_i (f⁺² + f⁻²)``.
    """
    blocks = tiles.split_inputs(drive)
    # The expansion holds up to v_max only; an ideal (unclipped) DAC may exceed it.
    if not device.separable and expansion is not None and read_noise_sigma == 0 and float(drive.detach().max()) <= expansion.v_max:
        current = None
        for phi, delta in zip(expansion.voltage_terms(blocks), tiles.expansion_deltas(expansion)):
            term = torch.bmm(phi, delta)
            current = term if current is None else current + term
        assert current is not None
        return current
    if device.separable:
        current = torch.bmm(blocks, tiles.delta)
        if read_noise_sigma > 0:
            variance = torch.bmm(blocks * blocks, tiles.g_pos**2 + tiles.g_neg**2)
    else:
        current, variance = _per_cell_currents(blocks, tiles, device, with_variance=read_noise_sigma > 0)
    if read_noise_sigma > 0:
        noise = torch.randn(current.shape, generator=generator, dtype=current.dtype, device=current.device)
        current = current + read_noise_sigma * variance.clamp_min(0).sqrt() * noise
    return current


def _per_cell_currents(vb: Tensor, tiles: TiledConductances, device: DeviceModel, *, with_variance: bool) -> tuple[Tensor, Tensor | None]:
    blocks, batch, height = vb.shape
    outputs = tiles.g_pos.shape[-1]
    chunk = max(1, PER_CELL_CHUNK_ELEMENTS // max(1, height * outputs))
    currents, variances = [], []
    for start in range(0, batch, chunk):
        v = vb[:, start : start + chunk, :, None]  # [blocks, chunk, rows, 1]
        i_pos = device.current(v, tiles.g_pos[:, None])
        i_neg = device.current(v, tiles.g_neg[:, None])
        currents.append((i_pos - i_neg).sum(2))
        if with_variance:
            variances.append((i_pos**2 + i_neg**2).sum(2))
    return torch.cat(currents, 1), (torch.cat(variances, 1) if with_variance else None)


def program_conductances(
    g_pos: Tensor,
    g_neg: Tensor,
    target: Target,
    col_splits: tuple[int, ...],
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Write target conductances to a chip instance: programming variation and stuck cells.

    With the offset encoding ``g_neg`` is one reference cell per word line and array, shared by
    the array's columns, so its variation and faults are drawn once per (word line, tile).
    """
    spec, c = target.nonidealities, target.conductance
    if not (spec.programming_sigma or spec.stuck_off_fraction or spec.stuck_on_fraction):
        return g_pos, g_neg

    def write(g: Tensor) -> Tensor:
        if spec.programming_sigma:
            noise = torch.randn(g.shape, generator=generator, dtype=g.dtype, device=g.device)
            g = (g + spec.programming_sigma * (c.g_max - c.g_min) * noise).clamp(c.g_min, c.g_max)
        if spec.stuck_off_fraction or spec.stuck_on_fraction:
            u = torch.rand(g.shape, generator=generator, dtype=g.dtype, device=g.device)
            g = torch.where(u < spec.stuck_off_fraction, torch.full_like(g, c.g_min), g)
            on = (u >= spec.stuck_off_fraction) & (u < spec.stuck_off_fraction + spec.stuck_on_fraction)
            g = torch.where(on, torch.full_like(g, c.g_max), g)
        return g

    if target.crossbar.weight_encoding == "offset":
        starts = list(col_splits[:-1])
        widths = torch.tensor([b - a for a, b in zip(col_splits, col_splits[1:])], device=g_neg.device)
        reference = write(g_neg[:, starts]).repeat_interleave(widths, dim=1)
        return write(g_pos), reference
    return write(g_pos), write(g_neg)
