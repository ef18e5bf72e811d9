"""The chip: device I-V models, target specs and the crossbar physics the runtime executes."""

from rramc.hardware.devices import DEVICE_MODELS, DeviceModel
from rramc.hardware.target import Target, builtin_targets, load_target

__all__ = ["DEVICE_MODELS", "DeviceModel", "Target", "builtin_targets", "load_target"]
