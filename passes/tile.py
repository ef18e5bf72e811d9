"""tile: cut each crossbar layer's matrix into array-sized tiles and assign them to arrays."""

from __future__ import annotations

from dataclasses import dataclass

from rramc.errors import TilingError
from rramc.ir import CrossbarOp, Graph
from rramc.pipeline import CompileContext, Pass, option


def split_points(size: int, block: int, balance: bool) -> tuple[int, ...]:
    """Boundaries cutting ``size`` into blocks of at most ``block``; ``balance`` evens them out."""
    count = -(-size // block)
    if balance:
        return tuple(round(i * size / count) for i in range(count + 1))
    return tuple(min(i * block, size) for i in range(count + 1))


@dataclass(frozen=True)
class Tile(Pass):
    """Cut each crossbar matrix into tiles of at most ``rows`` word lines × ``cols`` outputs.

    Needs: crossbar ops (after ``quantize``). Guarantees: every crossbar op has ``row_splits`` and
    ``col_splits`` that partition its matrix into tiles fitting one array each (a differential
    output takes two bit lines, an offset-encoded array one reference column), and ``meta``
    ``arrays`` lists the physical array of each tile, numbered across the network. Partial sums
    of the row blocks are added digitally after each tile's ADC.
    """

    name = "tile"
    rows: int | None = option("word lines per tile (default: the array's rows)", None)
    cols: int | None = option("outputs per tile (default: as many as an array holds)", None)
    balance: bool = option("make the tiles of a layer equal in size instead of filling arrays first", False)

    def run(self, graph: Graph, ctx: CompileContext) -> Graph:
        spec = ctx.target.crossbar
        rows = spec.rows if self.rows is None else self.rows
        cols = spec.outputs_per_array if self.cols is None else self.cols
        if rows > spec.rows or rows < 1:
            raise TilingError(f"tiles of {rows} rows do not fit the target's {spec.rows}-row arrays")
        if cols > spec.outputs_per_array or cols < 1:
            raise TilingError(
                f"tiles of {cols} outputs do not fit the target's {spec.cols}-column arrays, which hold "
                f"{spec.outputs_per_array} outputs with the {spec.weight_encoding} encoding"
            )
        next_array = 0
        for node in graph.nodes_of(CrossbarOp):
            op = node.op
            assert isinstance(op, CrossbarOp)
            n_rows, n_cols = op.matrix_shape
            node.op = op.replace(row_splits=split_points(n_rows, rows, self.balance),
                                 col_splits=split_points(n_cols, cols, self.balance), adc_range=None)
            count = len(node.op.tiles())  # type: ignore[attr-defined]
            node.meta["arrays"] = list(range(next_array, next_array + count))
            next_array += count
        return graph
