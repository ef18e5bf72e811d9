"""The chip: target specs and device physics, and the chip layer the runtime and the passes share.

``target``/``devices``/``config``: what a chip is (validated YAML); ``currents``: what its cells
and columns carry when read, and the limits a target declares for that. ``converters``, ``mapping``,
``tiling``, ``lowering``, ``expansion``: its parts. The seams — ``column_solver``,
``input_encoding``, ``weight_encoding`` and the cost observers in ``observers`` — each an
interface plus a registry. ``layer`` computes one crossbar layer, ``calibration`` holds the one
calibration policy, ``interpreter`` executes graphs (float, chip, calibration) and
``device_aware`` trains through the chip.

The names below are imported on first use (PEP 562), as in :mod:`rramc`: importing a module of
this package runs this file first, and loading or describing a target (``target``, ``devices``,
``currents``, the seams' registries) must not pay for torch, which the other modules import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rramc._lazy import lazy_package

_LAZY = {
    "rramc.hardware.column_solver": ["COLUMN_SOLVERS", "ColumnSolver"],
    "rramc.hardware.devices": ["DEVICE_MODELS", "DeviceModel"],
    "rramc.hardware.input_encoding": ["INPUT_ENCODINGS", "InputEncoding"],
    "rramc.hardware.observers": ["COST_OBSERVERS", "CostObserver", "Observer"],
    "rramc.hardware.target": ["Target", "builtin_targets", "load_target"],
    "rramc.hardware.weight_encoding": ["WEIGHT_ENCODINGS", "WeightEncoding"],
}
_SUBMODULES = {"calibration", "column_solver", "config", "converters", "currents", "device_aware", "devices", "expansion",
               "input_encoding", "interpreter", "layer", "lowering", "mapping", "observers", "target", "tiling",
               "weight_encoding", "wires"}
__all__ = sorted(n for listed in _LAZY.values() for n in listed)
__getattr__, __dir__ = lazy_package("rramc.hardware", _LAZY, _SUBMODULES, globals())


if TYPE_CHECKING:
    from rramc.hardware.column_solver import COLUMN_SOLVERS, ColumnSolver
    from rramc.hardware.devices import DEVICE_MODELS, DeviceModel
    from rramc.hardware.input_encoding import INPUT_ENCODINGS, InputEncoding
    from rramc.hardware.observers import COST_OBSERVERS, CostObserver, Observer
    from rramc.hardware.target import Target, builtin_targets, load_target
    from rramc.hardware.weight_encoding import WEIGHT_ENCODINGS, WeightEncoding
