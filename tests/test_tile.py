"""tile: tiles fit the arrays and reassemble into the original matrices, for any size."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from rramc.errors import TilingError
from rramc.frontend import import_module
from rramc.hardware import load_target
from rramc.ir import CrossbarOp
from rramc.hardware.tiling import split_points
from rramc.pipeline import CompileContext, PassManager, parse_pipeline


def tiled(model: nn.Module, x: torch.Tensor, target, options: str = ""):  # type: ignore[no-untyped-def]
    pipeline = f"canonicalize,quantize,tile{{{options}}}" if options else "canonicalize,quantize,tile"
    return PassManager(parse_pipeline(pipeline)).run(import_module(model, x), CompileContext(target))


@pytest.mark.parametrize(("n_in", "n_out", "rows", "cols"), [(300, 77, 128, 64), (128, 64, 128, 64), (5, 3, 4, 2), (257, 129, 100, 33)])
def test_tiles_partition_and_reassemble_the_matrix(n_in: int, n_out: int, rows: int, cols: int) -> None:
    target = load_target("rram_a").with_changes(crossbar={"rows": max(rows, 128), "cols": 2 * max(cols, 64)})
    graph = tiled(nn.Linear(n_in, n_out), torch.rand(2, n_in), target, f"rows={rows},cols={cols}")
    (node,) = graph.nodes_of(CrossbarOp)
    op = node.op
    tiles = op.tiles()
    assert len(tiles) == -(-n_in // rows) * -(-n_out // cols) == len(node.meta["arrays"])
    rebuilt = torch.full_like(op.g_pos, float("nan"))
    covered = torch.zeros_like(op.g_pos, dtype=torch.int)
    for r, c in tiles:
        assert r.stop - r.start <= rows and c.stop - c.start <= cols
        rebuilt[r, c] = op.g_pos[r, c]
        covered[r, c] += 1
    assert bool((covered == 1).all())  # every cell in exactly one tile
    assert torch.equal(rebuilt, op.g_pos)


def test_default_tiles_fill_the_arrays_of_the_encoding() -> None:
    target = load_target("rram_a")  # 128×128, differential: 64 outputs per array
    op = tiled(nn.Linear(300, 100), torch.rand(2, 300), target).nodes_of(CrossbarOp)[0].op
    assert op.row_splits == (0, 128, 256, 300) and op.col_splits == (0, 64, 100)
    offset = target.with_changes(crossbar={"weight_encoding": "offset"})  # 127 outputs + a reference column
    op = tiled(nn.Linear(300, 200), torch.rand(2, 300), offset).nodes_of(CrossbarOp)[0].op
    assert op.col_splits == (0, 127, 200)


def test_balanced_tiles_and_array_numbering_across_layers() -> None:
    assert split_points(300, 128, balance=True) == (0, 100, 200, 300)
    assert split_points(300, 128, balance=False) == (0, 128, 256, 300)
    graph = tiled(nn.Sequential(nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)), torch.rand(2, 300), load_target("rram_a"))
    arrays = [node.meta["arrays"] for node in graph.nodes_of(CrossbarOp)]
    assert arrays == [[0, 1, 2, 3, 4, 5], [6]]


def test_conv_layers_tile_their_unrolled_matrix(trained_cnn: nn.Module) -> None:
    graph = tiled(trained_cnn, torch.rand(2, 1, 8, 8), load_target("rram_a"), "rows=40,cols=5")
    first, second, head = (n.op for n in graph.nodes_of(CrossbarOp))
    assert first.matrix_shape == (9, 8) and first.row_splits == (0, 9) and first.col_splits == (0, 5, 8)
    assert second.matrix_shape == (72, 16) and second.row_splits == (0, 40, 72)


def test_tiles_larger_than_the_arrays_are_refused() -> None:
    with pytest.raises(TilingError, match="do not fit the target's 128-row arrays"):
        tiled(nn.Linear(4, 2), torch.rand(2, 4), load_target("rram_a"), "rows=200")
    with pytest.raises(TilingError, match="hold 64 outputs with the differential encoding"):
        tiled(nn.Linear(4, 2), torch.rand(2, 4), load_target("rram_a"), "cols=100")
