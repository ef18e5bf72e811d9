"""tile: cut each crossbar layer's matrix into array-sized tiles and assign them to arrays."""

from __future__ import annotations

from dataclasses import dataclass, replace

from rramc.errors import TilingError
from rramc.hardware.mapping import MappingPlan
from rramc.hardware.tiling import split_points
from rramc.hardware.weight_encoding import WEIGHT_ENCODINGS
from rramc.ir import CrossbarOp, Graph
from rramc.pipeline import CompileContext, Pass, option


@dataclass(frozen=True)
class Tile(Pass):
    """Cut each crossbar matrix into tiles of at most ``rows`` word lines × ``cols`` outputs.

    Needs: crossbar ops (after ``quantize``). Guarantees: every crossbar op has ``row_splits`` and
    ``col_splits`` that partition its matrix into tiles fitting one array each (the weight
    encoding says how many outputs an array holds: a differential output takes two bit lines, an
    offset-encoded array one reference column), and ``meta`` ``arrays`` lists the physical array
    of each tile, numbered across the network. Partial sums of the row blocks are added
    digitally after each tile's ADC.
    """

    name = "tile"
    rows: int | None = option("word lines per tile (default: the array's rows)", None)
    cols: int | None = option("outputs per tile (default: as many as an array holds)", None)
    balance: bool = option("make the tiles of a layer equal in size instead of filling arrays first", False)

    def plan(self, base: MappingPlan) -> MappingPlan:
        """``base`` with this pass's tile geometry."""
        return replace(base, tile_rows=self.rows, tile_cols=self.cols, balance=self.balance)

    def run(self, graph: Graph, ctx: CompileContext) -> Graph:
        spec = ctx.target.crossbar
        rows = spec.rows if self.rows is None else self.rows
        if rows > spec.rows or rows < 1:
            raise TilingError(f"tiles of {rows} rows do not fit the target's {spec.rows}-row arrays")
        next_array = 0
        for node in graph.nodes_of(CrossbarOp):
            op = node.op
            assert isinstance(op, CrossbarOp)
            encoding = WEIGHT_ENCODINGS.get(op.weight_encoding)(ctx.target)
            fits = encoding.outputs_per_array()
            cols = fits if self.cols is None else self.cols
            if cols > fits or cols < 1:
                raise TilingError(f"tiles of {cols} outputs do not fit the target's {spec.cols}-column arrays, which hold "
                                  f"{fits} outputs with the {op.weight_encoding} encoding")
            n_rows, n_cols = op.matrix_shape[0], op.columns  # a bit-sliced weight's slices are columns of their own
            node.op = op = replace(op, row_splits=split_points(n_rows, rows, self.balance),
                                   col_splits=split_points(n_cols, cols, self.balance), adc_range=None)
            if op.shares is not None:  # reads the arrays of the layer it shares
                node.meta["arrays"] = list(graph.node(op.shares).meta["arrays"])
                continue
            count = len(op.tiles())
            node.meta["arrays"] = list(range(next_array, next_array + count))
            next_array += count
        return graph
