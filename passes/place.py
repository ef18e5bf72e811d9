"""place: put the cells that carry the most current where the wires to them are shortest."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from rramc.errors import PassError
from rramc.ir import CrossbarOp, Graph
from rramc.pipeline import CompileContext, Pass, option


@dataclass(frozen=True)
class Place(Pass):
    """Order each tile's word lines and outputs so that large currents travel short wires.

    IR drop grows with the current a wire segment carries times the segments it crosses: a bit
    line's current accumulates towards its sense amplifier and a word line's towards its driver.
    So, within every tile, word lines whose cells draw the most current at the read voltage sit
    nearest the sense amplifiers, and outputs whose column pair draws the most nearest the
    drivers (a pair counts both its cells). The matrix and what the chip computes with ideal
    wires do not change; only where the cells sit.

    Needs: tiled crossbar ops (after ``tile``, before ``calibrate``, so that the ADC ranges are
    measured on the placed arrays). Guarantees: ``row_place`` and ``col_place`` on every crossbar op.
    """

    name = "place"
    rows: bool = option("reorder the word lines of each tile", True)
    cols: bool = option("reorder the outputs of each tile", True)

    def requires(self, graph: Graph, ctx: CompileContext) -> None:
        for node in graph.nodes_of(CrossbarOp):
            if not node.op.is_tiled:  # type: ignore[attr-defined]
                raise PassError(f"%{node.name} is not tiled: run 'tile' before 'place'")

    def run(self, graph: Graph, ctx: CompileContext) -> Graph:
        device, voltage = ctx.target.device, ctx.target.crossbar.read_voltage
        for node in graph.nodes_of(CrossbarOp):
            op = node.op
            assert isinstance(op, CrossbarOp) and op.row_splits is not None and op.col_splits is not None
            if op.shares is not None:  # the same arrays: the same places
                owner = graph.node(op.shares).op
                assert isinstance(owner, CrossbarOp)
                node.op = replace(op, row_place=owner.row_place, col_place=owner.col_place, adc_range=None)
                continue
            g = torch.stack([op.g_pos, op.g_neg]).double()
            current = device.current(torch.full_like(g, voltage), g).abs().sum(0)  # [word lines, outputs]: both cells
            row_place = _ranks(current.sum(1), op.row_splits) if self.rows else None
            col_place = _ranks(current.sum(0), op.col_splits) if self.cols else None
            node.op = replace(op, row_place=row_place, col_place=col_place, adc_range=None)
        return graph


def _ranks(load: Tensor, splits: tuple[int, ...]) -> Tensor:
    """Within each block, each entry's place when sorted by ``load``, largest first (ties: matrix order)."""
    place = torch.empty(len(load), dtype=torch.int64)
    for a, b in zip(splits[:-1], splits[1:]):
        order = torch.sort(-load[a:b], stable=True).indices
        place[a + order] = torch.arange(b - a)
    return place
