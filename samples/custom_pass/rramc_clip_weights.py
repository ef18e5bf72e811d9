"""clip_weights: an rramc pass written outside rramc, registered through an entry point.

The differential mapping scales each output column so that its largest |weight| reaches g_max.
One outlier weight therefore squeezes all the others into a few conductance levels. Clipping
each column at a percentile of |weight| first spends the levels on the bulk of the weights:

    rramc compile model.pt2 -t rram_a -p "canonicalize,clip_weights{percentile=99},quantize,tile,calibrate,emit"
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rramc.errors import PassError
from rramc.ir import Conv2d, Graph, Linear
from rramc.pipeline import CompileContext, Pass, option


@dataclass(frozen=True)
class ClipWeights(Pass):
    """Clip each output's weights at a percentile of their magnitude (run before quantize).

    Needs: float ``linear``/``conv2d`` layers. Guarantees: no weight of an output exceeds the
    ``percentile``-th percentile of that output's |weights|; the node's meta records how many
    weights were clipped.
    """

    name = "clip_weights"
    percentile: float = option("percentile of each output's |weights| to clip at", 99.0)

    def requires(self, graph: Graph, ctx: CompileContext) -> None:
        if not 0 < self.percentile <= 100:
            raise PassError(f"percentile={self.percentile} must lie in (0, 100]")
        if not graph.nodes_of(Linear, Conv2d):
            raise PassError("no float linear/conv2d layers left: run clip_weights before quantize")

    def run(self, graph: Graph, ctx: CompileContext) -> Graph:
        for node in graph.nodes_of(Linear, Conv2d):
            weight = node.op.weight
            flat = weight.reshape(weight.shape[0], -1)
            limit = torch.quantile(flat.abs(), self.percentile / 100.0, dim=1, keepdim=True)
            clipped = torch.maximum(torch.minimum(flat, limit), -limit)
            node.meta["clipped_weights"] = int((clipped != flat).sum())
            node.op = node.op.replace(weight=clipped.reshape(weight.shape))
        return graph
