"""How the executable file stores its big tensors compactly.

Conductances: each op's ``g_pos``/``g_neg`` pair is stored as one code per cell pair into a codebook
of its distinct ``(g_pos, g_neg)`` pairs, as the compiler holds them (:mod:`rramc.ir.cells`).

Reference weights (the float layers the chip is compared with): per-output fixed point of
:data:`FIXED_BITS` bits, two values packed in three bytes. Each output's scale is the power of
two ``2^e`` with ``max|w| ≤ 2047·2^e < 2·max|w|``, so the error of every weight is below
``max|w| / 2047`` of its output (under 0.05 % of the output's largest weight), decoding is exact
in float arithmetic and encoding a decoded weight again gives the same bits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rramc.ir.cells import CHUNK

FIXED_BITS = 12
"""Bits of a compact reference weight: the sign and 11 bits of magnitude."""
_TOP = (1 << (FIXED_BITS - 1)) - 1  # 2047: the largest magnitude
_EXPONENT_RANGE = {torch.float32: (-149, 127), torch.float64: (-1074, 1023)}
"""Powers of two that ``q·2^e`` (``|q| ≤ 2047``) stays exact in, down to the smallest subnormal."""

FIXED_ERROR = f"below max|w| / {_TOP} of each output"
"""The bound of a compact reference weight's error, in words."""


def fix(weight: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(packed, exponents)``: ``weight`` ``[outputs, ...]`` as :data:`FIXED_BITS`-bit integers ``q`` with
    ``w ≈ q·2^e`` (``e`` per output, int16), offset by 2048 and packed two in three bytes (uint8).
    None unless it is a float32/float64 layer weight (an output per row) with finite values."""
    if weight.dtype not in _EXPONENT_RANGE or weight.dim() < 2 or weight.numel() == 0:
        return None
    rows = weight.detach().cpu().reshape(weight.shape[0], -1)
    peak = torch.cat([rows[r:s].abs().amax(1) for r, s in _row_chunks(*rows.shape)]).to(torch.float64)
    if not bool(torch.isfinite(peak).all()):  # the peak of a row with an infinite or NaN value is one too
        return None
    exponents = _exponents(peak, rows.dtype)
    scales = _powers_of_two(exponents, rows.dtype)
    packed = torch.empty(3 * ((rows.numel() + 1) // 2), dtype=torch.uint8)
    for r, s in _row_chunks(*rows.shape):
        # Dividing by a power of two is exact (a quotient too small for a normal float rounds to 0 either way).
        q = torch.round(rows[r:s] / scales[r:s, None]).to(torch.int32).reshape(-1)
        start = 3 * (r * rows.shape[1] // 2)
        packed[start:start + 3 * ((q.numel() + 1) // 2)] = _pack(q + (_TOP + 1))
    return packed, exponents


def unfix(packed: Tensor, exponents: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """The weight :func:`fix` stored, of ``shape`` and ``dtype``.

    Raises ``ValueError`` if the parts do not fit together.
    """
    if dtype not in _EXPONENT_RANGE:
        raise ValueError(f"compact weights decode to float32 or float64, not {dtype}")
    if not shape or exponents.dtype != torch.int16 or tuple(exponents.shape) != (shape[0],):
        raise ValueError(f"exponents must be int16 [{shape[0] if shape else '?'}], not {exponents.dtype} {list(exponents.shape)}")
    n = math.prod(shape)
    if packed.dtype != torch.uint8 or tuple(packed.shape) != (3 * ((n + 1) // 2),):
        raise ValueError(f"{list(packed.shape)} packed bytes ({packed.dtype}) for a weight of shape {list(shape)}")
    low, high = _EXPONENT_RANGE[dtype]
    if exponents.numel() and not (low <= int(exponents.min()) and int(exponents.max()) <= high):
        raise ValueError(f"an exponent lies outside {low}..{high}")
    if n == 0:
        return torch.empty(shape, dtype=dtype)
    per_row = n // shape[0]
    scales = _powers_of_two(exponents, dtype)
    weight = torch.empty(shape[0], per_row, dtype=dtype)
    for r, s in _row_chunks(shape[0], per_row):
        start, count = 3 * (r * per_row // 2), (s - r) * per_row
        q = _unpack(packed[start:start + 3 * ((count + 1) // 2)])[:count] - (_TOP + 1)
        weight[r:s] = q.reshape(s - r, per_row).to(dtype) * scales[r:s, None]  # exact: |q| < 2^11 times a power of two
    return weight.reshape(shape)


def _row_chunks(rows: int, per_row: int) -> list[tuple[int, int]]:
    """Blocks of whole rows of about :data:`CHUNK` values, each but the last an even number of values
    (so that no packed pair straddles two blocks)."""
    step = max(1, CHUNK // max(per_row, 1))
    step += step % 2 if per_row % 2 else 0
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def _powers_of_two(exponents: Tensor, dtype: torch.dtype) -> Tensor:
    """``2^e`` in ``dtype`` (exact within :data:`_EXPONENT_RANGE`)."""
    return torch.ldexp(torch.ones(1, dtype=torch.float64), exponents.to(torch.float64)).to(dtype)


def _exponents(peak: Tensor, dtype: torch.dtype) -> Tensor:
    """Per row, the smallest ``e`` with ``max|w| ≤ 2047·2^e`` (within ``dtype``'s exact range), int16."""
    _, e = torch.frexp(peak / _TOP)
    e = e.to(torch.int64)
    top = torch.tensor(float(_TOP), dtype=torch.float64)
    e = torch.where(peak > torch.ldexp(top, e.double()), e + 1, e)  # frexp of a rounded quotient: settle the edge exactly
    e = torch.where(peak <= torch.ldexp(top, e.double() - 1), e - 1, e)
    low, high = _EXPONENT_RANGE[dtype]
    return torch.where(peak > 0, e, low).clamp(low, high).to(torch.int16)


def _pack(u: Tensor) -> Tensor:
    """12-bit values (int32) → bytes, two values in three, the last padded with the code of 0."""
    if u.numel() % 2:
        u = torch.cat([u, u.new_full((1,), _TOP + 1)])
    first, second = u[0::2], u[1::2]
    return torch.stack([first & 0xFF, (first >> 8) | ((second & 0xF) << 4), second >> 4], 1).reshape(-1).to(torch.uint8)


def _unpack(packed: Tensor) -> Tensor:
    b = packed.to(torch.int32).reshape(-1, 3)
    return torch.stack([b[:, 0] | ((b[:, 1] & 0xF) << 8), (b[:, 1] >> 4) | (b[:, 2] << 4)], 1).reshape(-1)
