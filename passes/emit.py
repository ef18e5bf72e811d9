"""emit: check that the graph is fully lowered and package it as an executable."""

from __future__ import annotations

from dataclasses import dataclass

from rramc.errors import PassError
from rramc.ir import Conv2d, CrossbarOp, Graph, Input, Linear
from rramc.pipeline import CompileContext, Pass
from rramc.runtime.executable import Executable
from rramc.runtime.interpreter import DIGITAL_KERNELS


@dataclass(frozen=True)
class Emit(Pass):
    """Package the lowered graph and the target into an :class:`Executable` (``ctx.artifacts``).

    Needs: every weighted layer mapped, tiled and calibrated; every other op one the runtime's
    digital periphery executes. Guarantees: ``ctx.artifacts["executable"]``; the graph itself
    is left unchanged.
    """

    name = "emit"

    def requires(self, graph: Graph, ctx: CompileContext) -> None:
        problems = []
        for node in graph:
            op = node.op
            if isinstance(op, (Linear, Conv2d)):
                problems.append(f"%{node.name} ({node.source}) is still a float {op.kind}: run quantize and tile")
            elif isinstance(op, CrossbarOp):
                if op.row_splits is None:
                    problems.append(f"%{node.name} ({node.source}) is not tiled: run tile")
                elif op.input_scale is None or op.gain is None or (op.adc_bits is not None and op.adc_range is None):
                    problems.append(f"%{node.name} ({node.source}) is not calibrated: run calibrate")
            elif not isinstance(op, Input) and type(op) not in DIGITAL_KERNELS:
                problems.append(f"%{node.name} ({node.source}): the runtime cannot execute op '{op.kind}'")
        if problems:
            raise PassError("the graph is not ready to emit:\n  " + "\n  ".join(problems))

    def run(self, graph: Graph, ctx: CompileContext) -> Graph:
        ctx.artifacts["executable"] = Executable(graph.copy(), ctx.target, {"pipeline": ",".join(ctx.passes_run + [str(self)])})
        return graph
