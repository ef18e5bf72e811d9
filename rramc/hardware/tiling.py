"""Tiling geometry: a layer's matrix cut into array-sized tiles.

A layer's conductances are a matrix with one row per word line (input) and one column per
output. ``row_splits``/``col_splits`` cut it into tiles, one per array: the word lines of each
row block drive their own arrays, each tile's bit-line currents are digitised by its own ADC,
and the partial sums of the row blocks are added digitally.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def split_points(size: int, block: int, balance: bool = False) -> tuple[int, ...]:
    """Boundaries cutting ``size`` into blocks of at most ``block``; ``balance`` evens them out."""
    count = -(-size // block)
    if balance:
        return tuple(round(i * size / count) for i in range(count + 1))
    return tuple(min(i * block, size) for i in range(count + 1))


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one layer: row blocks (word lines) × column blocks (outputs)."""

    row_splits: tuple[int, ...]
    col_splits: tuple[int, ...]

    @property
    def row_blocks(self) -> list[tuple[int, int]]:
        return list(zip(self.row_splits[:-1], self.row_splits[1:]))

    @property
    def col_blocks(self) -> list[tuple[int, int]]:
        return list(zip(self.col_splits[:-1], self.col_splits[1:]))

    def column_widths(self, device: torch.device | str = "cpu") -> Tensor:
        return torch.tensor([b - a for a, b in self.col_blocks], device=device)

    def per_column(self, per_tile: Tensor) -> Tensor:
        """``[..., column blocks]`` → ``[..., outputs]`` (each tile's value on its columns)."""
        return per_tile.repeat_interleave(self.column_widths(per_tile.device), dim=-1)

    def per_tile_max(self, per_column: Tensor) -> Tensor:
        """``[..., outputs]`` → ``[..., column blocks]``: the largest value of each tile's columns."""
        return torch.stack([per_column[..., a:b].amax(-1) for a, b in self.col_blocks], -1)

    @property
    def uniform(self) -> bool:
        """One row block: no padding, no gathering."""
        return len(self.row_splits) == 2
