"""How the executable file stores its big tensors compactly.

Conductances: each op's ``g_pos``/``g_neg`` pair becomes one code per cell pair into a codebook
of its distinct ``(g_pos, g_neg)`` pairs, uint8 for at most 256 of them and uint16 for at most
65,536: exact by construction, and without knowing the target (a differential pair on 32 levels
has 63 distinct pairs). Continuous conductances (the ``ideal`` target) have about as many pairs
as cells; they stay as they are.

Reference weights (the float layers the chip is compared with): per-output fixed point of
:data:`FIXED_BITS` bits, two values packed in three bytes. Each output's scale is the power of
two ``2^e`` with ``max|w| ≤ 2047·2^e < 2·max|w|``, so the error of every weight is below
``max|w| / 2047`` of its output (under 0.05 % of the output's largest weight), decoding is exact
in float arithmetic and encoding a decoded weight again gives the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

CHUNK = 1 << 20
"""Elements handled at once: the intermediates of a 100-million-weight layer stay a few MB."""

SAMPLE = 1 << 16
"""Cell pairs a codebook is first drawn from (evenly spread): sorting them all would take longer than coding."""

CODE_DTYPES = ((256, torch.uint8), (65536, torch.uint16))
"""Code widths by the number of distinct pairs they can index."""


def pair_codebook(g_pos: Tensor, g_neg: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(codes, codebook)``: ``codebook`` ``[pairs, 2]`` the distinct ``(g_pos, g_neg)`` pairs (in the
    order of their bits), ``codes`` the index of every cell pair's, flat in ``g_pos``'s order. None
    when the pairs are too many for uint16 codes, when codes and codebook would not be smaller than
    the pairs themselves, or for values other than float32."""
    if g_pos.dtype != torch.float32 or g_neg.dtype != torch.float32 or g_pos.shape != g_neg.shape or g_pos.numel() == 0:
        return None
    # Values are compared by their bits (exact, whatever they are), a pair by its two words read as one int64.
    bits_pos, bits_neg = (g.detach().cpu().reshape(-1).view(torch.int32) for g in (g_pos, g_neg))
    n = len(bits_pos)
    # A sample spread over the whole matrix usually holds every pair; a pair it missed sends the
    # coding round once more with the codebook completed.
    step = max(1, n // SAMPLE)
    known = torch.unique(_pair_keys(bits_pos[::step], bits_neg[::step]))
    for _ in range(2):
        if not _worth_coding(len(known), n):
            return None
        code_dtype = next(dtype for limit, dtype in CODE_DTYPES if len(known) <= limit)
        codes = torch.empty(n, dtype=code_dtype)
        missing = known[:0]
        lookup = _lookup(known)
        known_pos, known_neg = known.view(torch.int32).reshape(-1, 2).unbind(1)
        for a in range(0, n, CHUNK):
            p, q = bits_pos[a:a + CHUNK], bits_neg[a:a + CHUNK]
            index = lookup(p, q)
            miss = (known_pos[index] != p) | (known_neg[index] != q)
            if bool(miss.any()):
                missing = torch.unique(torch.cat([missing, _pair_keys(p[miss], q[miss])]))
                if len(known) + len(missing) > CODE_DTYPES[-1][0]:
                    return None
            elif not len(missing):
                codes[a:a + len(p)] = index.to(code_dtype)
        if not len(missing):
            return codes, known.view(torch.float32).reshape(-1, 2)
        known = torch.unique(torch.cat([known, missing]))
    raise AssertionError("the second round codes every pair")  # pragma: no cover - its codebook holds them all


def _pair_keys(bits_pos: Tensor, bits_neg: Tensor) -> Tensor:
    return torch.stack([bits_pos, bits_neg], 1).view(torch.int64).reshape(-1)


HASH_SLOTS = 1 << 16
_HASH_SHIFTS = ((3, 16), (5, 13), (7, 11), (11, 20), (13, 23), (1, 9), (17, 7), (9, 19))


def _lookup(known: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """Pairs (the bits of each side) → their index in ``known``, right for every pair it holds (the caller checks the others).

    Up to 256 known pairs, a table indexed by a hash of the pair's bits, if one of a few hashes tells
    them apart: five cheap operations per pair instead of a binary search's branches; else the search.
    """
    if len(known) <= CODE_DTYPES[0][0]:
        known_pos, known_neg = known.view(torch.int32).reshape(-1, 2).unbind(1)
        for a, b in _HASH_SHIFTS:
            def hashed(p: Tensor, q: Tensor, a: int = a, b: int = b) -> Tensor:
                return (p ^ (q >> a) ^ (p >> b)) & (HASH_SLOTS - 1)

            slots = hashed(known_pos, known_neg)
            if len(torch.unique(slots)) == len(known):
                table = torch.zeros(HASH_SLOTS, dtype=torch.int32)
                table[slots] = torch.arange(len(known), dtype=torch.int32)
                return lambda p, q: table[hashed(p, q)]
    return lambda p, q: torch.searchsorted(known, _pair_keys(p, q)).clamp_(max=len(known) - 1)


def _worth_coding(pairs: int, cells: int) -> bool:
    """Whether codes and codebook take fewer bytes than the float32 pairs themselves."""
    if pairs > CODE_DTYPES[-1][0]:
        return False
    code_size = 1 if pairs <= CODE_DTYPES[0][0] else 2
    return cells * code_size + pairs * 8 < cells * 8


def decode_pairs(codes: Tensor, codebook: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """``g_pos``, ``g_neg`` of ``shape`` from :func:`pair_codebook`'s codes and codebook.

    Raises ``ValueError`` if they do not fit together (a code past the codebook, a count that is not the shape's).
    """
    if codes.dtype not in {dtype for _, dtype in CODE_DTYPES} or codes.dim() != 1:
        raise ValueError(f"pair codes must be a vector of uint8 or uint16, not {codes.dtype} {list(codes.shape)}")
    if codebook.dim() != 2 or codebook.shape[1] != 2 or len(codebook) == 0:
        raise ValueError(f"a pair codebook must be [pairs, 2], not {list(codebook.shape)}")
    if codes.numel() != math.prod(shape):
        raise ValueError(f"{codes.numel()} pair codes for conductances of shape {list(shape)}")
    g_pos, g_neg = (torch.empty(codes.numel(), dtype=codebook.dtype) for _ in range(2))
    values_pos, values_neg = codebook[:, 0].contiguous(), codebook[:, 1].contiguous()
    for a in range(0, codes.numel(), CHUNK):
        index = codes[a:a + CHUNK].to(torch.int32)
        if int(index.max()) >= len(codebook):
            raise ValueError(f"a pair code is {int(index.max())}, past the codebook's {len(codebook)} pairs")
        torch.index_select(values_pos, 0, index, out=g_pos[a:a + CHUNK])
        torch.index_select(values_neg, 0, index, out=g_neg[a:a + CHUNK])
    return g_pos.reshape(shape), g_neg.reshape(shape)


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
