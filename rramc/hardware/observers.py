"""Observers of a graph's execution, and the cost-observer seam.

The interpreter tells every observer about each node it computes (:meth:`Observer.on_node`);
crossbar layers also report every read of their arrays (:meth:`Observer.on_read`) and the
inputs they had to clip (:meth:`Observer.on_clip`). Calibration statistics, per-layer errors,
clip counts and cost models are observers: none of them needs its own loop over the graph.

A *cost observer* is an :class:`Observer` that also summarises what it saw
(:meth:`CostObserver.summary`). Built in: ``operations`` (reads, DAC and ADC conversions and
multiply-accumulates per layer) and ``energy`` (energy, latency and area per layer, from the
target's ``cost`` section: :mod:`rramc.hardware.cost`). A new one is a subclass in its own
module plus a line in :data:`COST_OBSERVERS` (or an entry point in ``rramc.cost_observers``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections import defaultdict
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from rramc.errors import RramcError
from rramc.registry import Registry

if TYPE_CHECKING:
    from rramc.hardware.input_encoding import Read
    from rramc.hardware.layer import CrossbarLayer
    from rramc.ir import Node


class Observer:
    """Base of observers; every hook does nothing unless overridden."""

    def on_node(self, node: Node, operands: list[Tensor], value: Tensor) -> None:
        """``node`` was computed from ``operands``."""

    def on_read(self, layer: CrossbarLayer, read: Read, currents: Tensor) -> None:
        """``layer`` read its arrays once: ``currents`` are its tile columns' currents before the ADC
        [A], in the layer's lowering's layout. They are valid during the call only (the readout
        converts them in place): copy what you keep."""

    def on_clip(self, layer: CrossbarLayer, negative: int, over: int, total: int) -> None:
        """``layer`` received ``total`` input values: ``negative`` ones it cannot apply (unsigned inputs)
        and ``over`` ones beyond the full-scale input, both clipped."""


CLIPPED_SHARE = 0.01
"""Inputs clipped above full scale are normal in small numbers (ranges come from samples); beyond
this share of a layer's inputs they are worth a warning. Negative inputs lost by an unsigned layer
always are."""


class ClipCounter(Observer):
    """Inputs each crossbar layer clipped: ``{layer source: [negative, over full scale, total]}``."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])

    def on_clip(self, layer: CrossbarLayer, negative: int, over: int, total: int) -> None:
        entry = self.counts[layer.source]
        entry[0] += negative
        entry[1] += over
        entry[2] += total

    def clipped(self) -> dict[str, tuple[int, int, int]]:
        """Only the layers that clipped something."""
        return {k: (v[0], v[1], v[2]) for k, v in self.counts.items() if v[0] or v[1]}

    def worth_a_warning(self) -> dict[str, tuple[int, int, int]]:
        """The layers that lost negative inputs, or clipped more than :data:`CLIPPED_SHARE` of them."""
        return {k: v for k, v in self.clipped().items() if v[0] or v[1] > CLIPPED_SHARE * v[2]}


class CostObserver(Observer):
    """Base of cost observers: ``name`` is its registry name; :meth:`summary` what it measured."""

    name: ClassVar[str]

    @abstractmethod
    def summary(self, samples: int) -> dict[str, Any]:
        """What was measured, per inference (``samples``: how many inferences ran)."""


class OperationCounts(CostObserver):
    """Array reads, DAC and ADC conversions and multiply-accumulates of every crossbar layer.

    A read drives every word line of a row block with one DAC conversion and digitises every
    used bit-line pair (one ADC conversion per tile output); the multiply-accumulates are the
    cells that take part (word lines × outputs per tile and read).
    """

    name = "operations"

    def __init__(self) -> None:
        self.layers: dict[str, dict[str, int]] = defaultdict(lambda: {"reads": 0, "dac_conversions": 0, "adc_conversions": 0, "macs": 0})

    def on_read(self, layer: CrossbarLayer, read: Read, currents: Tensor) -> None:
        rows, outputs = layer.op.matrix_shape[0], layer.op.columns  # a bit-sliced weight's slices are columns of their own
        blocks = len(layer.grid.row_blocks)
        vectors = currents.numel() // (blocks * outputs)
        entry = self.layers[layer.source]
        entry["reads"] += vectors
        entry["dac_conversions"] += vectors * rows
        entry["adc_conversions"] += vectors * blocks * outputs
        entry["macs"] += vectors * rows * outputs

    def summary(self, samples: int) -> dict[str, Any]:
        if samples < 1:
            raise RramcError("operation counts need at least one inference")
        per_layer = {name: {k: v / samples for k, v in counts.items()} for name, counts in self.layers.items()}
        totals = {k: sum(layer[k] for layer in per_layer.values()) for k in ("reads", "dac_conversions", "adc_conversions", "macs")}
        return {"per_inference": totals, "layers": per_layer}


COST_OBSERVERS: Registry[type[CostObserver]] = Registry(
    what="cost observer",
    group="rramc.cost_observers",
    builtins={"operations": "rramc.hardware.observers:OperationCounts", "energy": "rramc.hardware.cost:ChipCost"},
    error=RramcError,
    interface=CostObserver,
)
"""Every cost observer by name: the built-ins plus the ``rramc.cost_observers`` entry points."""
