"""A crossbar op's conductance pairs, held densely or as codes into a codebook of the pairs that occur.

A layer's cells are two matrices ``g_pos``/``g_neg`` ``[rows, columns]`` in siemens. On a target
with conductance levels only a few distinct ``(g_pos, g_neg)`` pairs occur (a differential pair
on 32 levels has 63), so :class:`CodedPairs` holds one uint8 (or uint16) code per pair into a
codebook of them: 1 byte per weight instead of 8, exact by construction, and what the executable
file stores. :class:`DensePairs` holds the two matrices as they are: continuous conductances,
conductances that carry gradients in training, a chip instance's programmed cells.

Both answer the same questions without building the dense matrices where they need not:
:meth:`CellPairs.per_pair` evaluates a function of ``(G⁺, G⁻)`` per cell pair (on the codebook, then
looked up, for coded pairs), :meth:`CellPairs.rows` gives a block of rows, :meth:`CellPairs.dense`
the whole matrices.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

CHUNK = 1 << 20
"""Cell pairs handled at once: the intermediates of a 100-million-weight layer stay a few MB."""

CODE_DTYPES = ((256, torch.uint8), (65536, torch.uint16))
"""Code widths by the number of distinct pairs they can index."""


class CellPairs(ABC):
    """The conductance pairs ``g_pos``/``g_neg`` ``[rows, columns]`` [S] of a crossbar op or a chip's layer."""

    @property
    @abstractmethod
    def shape(self) -> tuple[int, int]: ...

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @abstractmethod
    def rows(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """``g_pos[start:stop]``, ``g_neg[start:stop]`` (decoded for coded pairs)."""

    @abstractmethod
    def per_pair(self, function: Callable[[Tensor, Tensor], Tensor], start: int = 0, stop: int | None = None) -> Tensor:
        """``function(g_pos, g_neg)`` of the pairs of rows ``start:stop``: ``[rows, columns, ...]``.

        ``function`` acts elementwise on its two ``[n]``-shaped operands and returns ``[n, ...]``.
        """

    @abstractmethod
    def extrema(self) -> tuple[float, float]:
        """The smallest and the largest conductance of either cell (0, 0 when there are none): cheap, the verifier asks."""

    @abstractmethod
    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> CellPairs:
        """The same pairs with conductances of ``dtype`` on ``device`` (itself when nothing changes)."""

    def dense(self) -> tuple[Tensor, Tensor]:
        """``g_pos``, ``g_neg`` as two matrices (a new copy for coded pairs: O(rows · columns) floats)."""
        return self.rows(0, self.shape[0])

    def side(self, index: int) -> Tensor:
        """``g_pos`` (0) or ``g_neg`` (1) alone, as a matrix."""
        return self.per_pair(lambda g_pos, g_neg: (g_pos, g_neg)[index])

    def equal(self, other: CellPairs) -> bool:
        """Whether both hold the same conductances."""
        if self is other:
            return True
        if self.shape != other.shape:
            return False
        if isinstance(self, CodedPairs) and isinstance(other, CodedPairs) and torch.equal(self.codebook, other.codebook):
            return torch.equal(self.codes, other.codes)
        return all(torch.equal(a, b) for a, b in zip(self.dense(), other.dense()))


@dataclass(frozen=True, eq=False)
class DensePairs(CellPairs):
    """Both matrices as they are (they may require grad)."""

    g_pos: Tensor
    g_neg: Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.g_pos.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> torch.dtype:
        return self.g_pos.dtype

    @property
    def device(self) -> torch.device:
        return self.g_pos.device

    def rows(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        return self.g_pos[start:stop], self.g_neg[start:stop]

    def dense(self) -> tuple[Tensor, Tensor]:
        return self.g_pos, self.g_neg

    def side(self, index: int) -> Tensor:
        return (self.g_pos, self.g_neg)[index]

    def per_pair(self, function: Callable[[Tensor, Tensor], Tensor], start: int = 0, stop: int | None = None) -> Tensor:
        g_pos, g_neg = self.rows(start, self.shape[0] if stop is None else stop)
        rows, columns = g_pos.shape
        values = function(g_pos.reshape(-1), g_neg.reshape(-1))
        return values.reshape(rows, columns, *values.shape[1:])

    def extrema(self) -> tuple[float, float]:
        if self.g_pos.numel() == 0:
            return (0.0, 0.0)
        g_pos, g_neg = self.g_pos.detach(), self.g_neg.detach()
        return (float(torch.minimum(g_pos.min(), g_neg.min())), float(torch.maximum(g_pos.max(), g_neg.max())))

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> DensePairs:
        g_pos, g_neg = (g.to(dtype=dtype, device=device) for g in (self.g_pos, self.g_neg))
        return self if g_pos is self.g_pos and g_neg is self.g_neg else DensePairs(g_pos, g_neg)


@dataclass(frozen=True, eq=False)
class CodedPairs(CellPairs):
    """``codes`` ``[rows, columns]`` (uint8 or uint16): each cell pair's index into ``codebook`` ``[pairs, 2]``,
    the distinct ``(g_pos, g_neg)`` pairs. A code past the codebook (a corrupt file) is refused when the pairs
    are made, once: nothing changes them after."""

    codes: Tensor
    codebook: Tensor

    def __post_init__(self) -> None:
        if self.codes.dtype not in {dtype for _, dtype in CODE_DTYPES} or self.codes.dim() != 2:
            raise ValueError(f"pair codes must be a matrix of uint8 or uint16, not {self.codes.dtype} {list(self.codes.shape)}")
        if self.codebook.dim() != 2 or self.codebook.shape[1] != 2 or len(self.codebook) == 0 or not self.codebook.is_floating_point():
            raise ValueError(f"a pair codebook must be [pairs, 2] floats, not {self.codebook.dtype} {list(self.codebook.shape)}")
        flat = self.codes.reshape(-1)  # uint16 has no max of its own: in chunks, as int32
        largest = max((int(flat[a:a + CHUNK].to(torch.int32).max()) for a in range(0, flat.numel(), CHUNK)), default=0)
        if largest >= len(self.codebook):
            raise ValueError(f"a pair code is {largest}, past the codebook's {len(self.codebook)} pairs")

    @classmethod
    def encode(cls, g_pos: Tensor, g_neg: Tensor) -> CodedPairs | None:
        """The pairs coded, or None when they are too many for uint16 codes, when codes and codebook would not be
        smaller than the pairs themselves, or for values other than float32 (see :class:`PairCoder`)."""
        if g_pos.shape != g_neg.shape or g_pos.dim() != 2 or g_pos.numel() == 0:
            return None
        rows, columns = g_pos.shape
        coder = PairCoder(rows, columns, g_pos.dtype, g_pos.device)
        step = max(1, CHUNK // max(rows, 1))
        for a in range(0, columns, step):
            if coder.codes is None:
                return None
            coder.write(a, g_pos[:, a:a + step], g_neg[:, a:a + step])
        pairs = coder.finish()
        return pairs if isinstance(pairs, CodedPairs) else None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> torch.dtype:
        return self.codebook.dtype

    @property
    def device(self) -> torch.device:
        return self.codebook.device

    def per_pair(self, function: Callable[[Tensor, Tensor], Tensor], start: int = 0, stop: int | None = None) -> Tensor:
        values = function(self.codebook[:, 0], self.codebook[:, 1])  # one value per distinct pair
        codes = self.codes[start:stop]
        out = values.new_empty(*codes.shape, *values.shape[1:])
        flat_out, flat_codes = out.view(-1, *values.shape[1:]), codes.reshape(-1)
        for a in range(0, flat_codes.numel(), CHUNK):
            torch.index_select(values, 0, flat_codes[a:a + CHUNK].to(device=values.device, dtype=torch.int32), out=flat_out[a:a + CHUNK])
        return out

    def rows(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        both = self.per_pair(lambda g_pos, g_neg: torch.stack([g_pos, g_neg], 1), start, stop)
        return both[..., 0], both[..., 1]

    def dense(self) -> tuple[Tensor, Tensor]:
        return self.side(0), self.side(1)

    def extrema(self) -> tuple[float, float]:
        """Over the codebook (coding puts only the pairs that occur in it: no pass over the codes)."""
        return (float(self.codebook.min()), float(self.codebook.max())) if self.codes.numel() else (0.0, 0.0)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> CodedPairs:
        codes, codebook = self.codes.to(device=device), self.codebook.to(dtype=dtype, device=device)
        return self if codes is self.codes and codebook is self.codebook else CodedPairs(codes, codebook)


# --- coding ------------------------------------------------------------------------------------------------


class PairCoder:
    """Codes a matrix of conductance pairs ``[rows, columns]`` as it is written, block of columns by block, into one
    codebook of the pairs met so far (in the order they are met): the layer's dense matrices never exist at once.

    Pairs are compared by their bits (exact, whatever they are). Where coding does not pay — more pairs than
    uint16 codes index, codes and codebook no smaller than the pairs, or values other than float32 — the coder
    goes on densely. :meth:`finish` gives the pairs.
    """

    def __init__(self, rows: int, columns: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.shape, self.dtype, self.device = (rows, columns), dtype, torch.device(device)
        self.known = torch.empty(0, dtype=torch.int64)  # the codebook's pairs, each side's bits read as one int64
        # zeros: a column not yet written decodes to a valid pair when the coder goes dense (it is written later)
        self.codes: Tensor | None = torch.zeros(rows, columns, dtype=CODE_DTYPES[0][1]) if dtype == torch.float32 else None
        self.dense: tuple[Tensor, Tensor] | None = None if self.codes is not None else self._empty_dense()
        self._lookup: Callable[[Tensor, Tensor], Tensor] | None = None

    def write(self, start: int, g_pos: Tensor, g_neg: Tensor) -> None:
        """Columns ``start:start + k`` of the matrix: ``g_pos``/``g_neg`` ``[rows, k]`` (converted to the coder's dtype)."""
        g_pos, g_neg = (g.detach().to(self.dtype) for g in (g_pos, g_neg))
        stop = start + g_pos.shape[1]
        if self.codes is not None:
            # Coded in the order the block lies in memory (a mapping's blocks are transposed views): no copy.
            transposed = not g_pos.is_contiguous() and g_pos.T.is_contiguous() and g_neg.T.is_contiguous()
            lying = (g_pos.T, g_neg.T) if transposed else (g_pos.contiguous(), g_neg.contiguous())
            index = self._code(*lying)
            if index is not None:
                shaped = index.reshape(lying[0].shape).to(self.codes.dtype)
                self.codes[:, start:stop] = shaped.T if transposed else shaped
                return
            self._go_dense()
        assert self.dense is not None
        self.dense[0][:, start:stop] = g_pos.to(self.device)
        self.dense[1][:, start:stop] = g_neg.to(self.device)

    def finish(self) -> CellPairs:
        """The pairs written (every column must have been)."""
        if self.codes is not None and not _worth_coding(len(self.known), self.codes.numel()):
            self._go_dense()
        if self.dense is not None:
            return DensePairs(*self.dense)
        assert self.codes is not None
        return CodedPairs(self.codes, self.known.view(torch.float32).reshape(-1, 2).to(self.device))

    def _code(self, g_pos: Tensor, g_neg: Tensor) -> Tensor | None:
        """The codes of a contiguous block (int32, flat), the codebook completed with its new pairs; None when coding
        stops paying."""
        bits_pos, bits_neg = (g.cpu().reshape(-1).view(torch.int32) for g in (g_pos, g_neg))
        for _ in range(2):
            if self._lookup is not None:
                known_pos, known_neg = self.known.view(torch.int32).reshape(-1, 2).unbind(1)
                index = self._lookup(bits_pos, bits_neg)
                miss = (known_pos[index] != bits_pos) | (known_neg[index] != bits_neg)
                if not bool(miss.any()):
                    return index
                bits_pos_new, bits_neg_new = bits_pos[miss], bits_neg[miss]
            else:
                bits_pos_new, bits_neg_new = bits_pos, bits_neg
            new = torch.unique(_pair_keys(bits_pos_new, bits_neg_new))
            if len(self.known) + len(new) > CODE_DTYPES[-1][0]:
                return None
            self.known = torch.cat([self.known, new])
            if len(self.known) > CODE_DTYPES[0][0] and self.codes is not None and self.codes.dtype == CODE_DTYPES[0][1]:
                self.codes = self.codes.to(torch.int32).to(CODE_DTYPES[1][1])  # uint8 → uint16
            self._lookup = _lookup(self.known)
        raise AssertionError("the second round codes every pair")  # pragma: no cover - its codebook holds them all

    def _empty_dense(self) -> tuple[Tensor, Tensor]:
        return (torch.empty(self.shape, dtype=self.dtype, device=self.device), torch.empty(self.shape, dtype=self.dtype, device=self.device))

    def _go_dense(self) -> None:
        """Decode what is coded so far and go on densely."""
        if self.codes is None:
            return
        dense = self._empty_dense()
        if len(self.known):
            coded = CodedPairs(self.codes, self.known.view(torch.float32).reshape(-1, 2).to(self.device))
            step = max(1, CHUNK // max(self.shape[1], 1))
            for a in range(0, self.shape[0], step):
                dense[0][a:a + step], dense[1][a:a + step] = coded.rows(a, a + step)  # columns not yet written: overwritten later
        self.codes, self.dense = None, dense


def _pair_keys(bits_pos: Tensor, bits_neg: Tensor) -> Tensor:
    return torch.stack([bits_pos, bits_neg], 1).view(torch.int64).reshape(-1)


HASH_SLOTS = 1 << 16
_HASH_SHIFTS = ((3, 16), (5, 13), (7, 11), (11, 20), (13, 23), (1, 9), (17, 7), (9, 19))


def _lookup(known: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """Pairs (the bits of each side) → their index in ``known`` (any order), right for every pair it holds (the caller
    checks the others).

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
    ordered, order = known.sort()
    return lambda p, q: order[torch.searchsorted(ordered, _pair_keys(p, q)).clamp_(max=len(known) - 1)]


def _worth_coding(pairs: int, cells: int) -> bool:
    """Whether codes and codebook take fewer bytes than the float32 pairs themselves."""
    if pairs > CODE_DTYPES[-1][0]:
        return False
    code_size = 1 if pairs <= CODE_DTYPES[0][0] else 2
    return cells * code_size + pairs * 8 < cells * 8


def decode_pairs(codes: Tensor, codebook: Tensor, shape: tuple[int, ...]) -> CodedPairs:
    """The pairs of ``shape`` that a file's codes (flat) and codebook hold.

    Raises ``ValueError`` if they do not fit together (a code past the codebook, a count that is not the shape's).
    """
    if codes.dtype not in {dtype for _, dtype in CODE_DTYPES} or codes.dim() != 1:
        raise ValueError(f"pair codes must be a vector of uint8 or uint16, not {codes.dtype} {list(codes.shape)}")
    if len(shape) != 2 or codes.numel() != math.prod(shape):
        raise ValueError(f"{codes.numel()} pair codes for conductances of shape {list(shape)}")
    return CodedPairs(codes.reshape(shape), codebook)
