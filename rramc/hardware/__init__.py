"""The chip: target specs and device physics, and the chip layer the runtime and the passes share.

``target``/``devices``/``config``: what a chip is (validated YAML); ``currents``: what its cells
and columns carry when read, and the limits a target declares for that. ``converters``, ``mapping``,
``tiling``, ``lowering``, ``expansion``: its parts. The seams — ``column_solver``,
``input_encoding``, ``weight_encoding`` and the cost observers in ``observers`` — each an
interface plus a registry. ``layer`` computes one crossbar layer, ``calibration`` holds the one
calibration policy, ``interpreter`` executes graphs (float, chip, calibration) and
``device_aware`` trains through the chip.
"""

from rramc.hardware.column_solver import COLUMN_SOLVERS, ColumnSolver
from rramc.hardware.devices import DEVICE_MODELS, DeviceModel
from rramc.hardware.input_encoding import INPUT_ENCODINGS, InputEncoding
from rramc.hardware.observers import COST_OBSERVERS, CostObserver, Observer
from rramc.hardware.target import Target, builtin_targets, load_target
from rramc.hardware.weight_encoding import WEIGHT_ENCODINGS, WeightEncoding

__all__ = [
    "COLUMN_SOLVERS", "COST_OBSERVERS", "DEVICE_MODELS", "INPUT_ENCODINGS", "WEIGHT_ENCODINGS", "ColumnSolver", "CostObserver",
    "DeviceModel", "InputEncoding", "Observer", "Target", "WeightEncoding", "builtin_targets", "load_target",
]
