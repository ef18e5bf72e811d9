"""emit: check that the graph is fully lowered and hand it over as the executable's program."""

from __future__ import annotations

from dataclasses import dataclass

from rramc.errors import PassError
from rramc.hardware.interpreter import executable_by_runtime
from rramc.ir import Conv2d, CrossbarOp, Graph, Linear
from rramc.pipeline import CompileContext, Pass


@dataclass(frozen=True)
class Emit(Pass):
    """Hand the lowered graph over as the executable's program (``ctx.artifacts["graph"]``).

    Needs: every weighted layer mapped, tiled and calibrated; every other op one the runtime's
    digital periphery executes. Guarantees: ``ctx.artifacts["graph"]`` holds a copy of the graph
    (its own nodes and ops, the same tensors: see :meth:`Graph.copy`) and ``ctx.artifacts["pipeline"]``
    the passes that made it; the graph itself is unchanged.
    The driver (:func:`rramc.compile`) packages them with the target into an executable.
    """

    name = "emit"

    def requires(self, graph: Graph, ctx: CompileContext) -> None:
        problems = []
        for node in graph:
            op = node.op
            if isinstance(op, (Linear, Conv2d)):
                problems.append(f"%{node.name} ({node.source}) is still a float {op.kind}: run quantize and tile")
            elif isinstance(op, CrossbarOp) and not op.is_tiled:
                problems.append(f"%{node.name} ({node.source}) is not tiled: run tile")
            elif isinstance(op, CrossbarOp) and not op.is_calibrated:
                problems.append(f"%{node.name} ({node.source}) is not calibrated: run calibrate")
            elif not executable_by_runtime(node):
                problems.append(f"%{node.name} ({node.source}): the runtime cannot execute op '{op.kind}'")
        if problems:
            raise PassError("the graph is not ready to emit:\n  " + "\n  ".join(problems))

    def run(self, graph: Graph, ctx: CompileContext) -> Graph:
        ctx.artifacts["graph"] = graph.copy(share_tensors=True)
        ctx.artifacts["pipeline"] = ",".join(ctx.passes_run + [str(self)])
        return graph
