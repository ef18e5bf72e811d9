"""rramc: a compiler toolchain for RRAM crossbar chips with nonlinear I-V characteristics.

    import rramc
    target = rramc.load_target("rram_a")
    exe = rramc.compile(model, target, example_input, calibration_data=batch, input_range=(0, 1))
    report = exe.run(rramc.load_dataset("digits"))

The names below are imported on first use (PEP 562), so that ``import rramc.errors`` — and the
command line's ``--help`` — do not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rramc._lazy import lazy_package
from rramc._version import __version__
from rramc.errors import RramcError, RramcWarning

_LAZY = {
    "rramc.datasets": ["Dataset", "load_dataset"],
    "rramc.driver": ["compile", "compile_file"],
    "rramc.hardware": ["COLUMN_SOLVERS", "COST_OBSERVERS", "DEVICE_MODELS", "INPUT_ENCODINGS", "WEIGHT_ENCODINGS", "ColumnSolver",
                       "CostObserver", "DeviceModel", "InputEncoding", "Observer", "Target", "WeightEncoding", "builtin_targets",
                       "load_target"],
    "rramc.ir": ["Graph"],
    "rramc.pipeline": ["PASSES", "PIPELINES", "CompileContext", "Pass", "PassInstrument", "PassManager", "default_pipeline",
                       "named_pipeline", "option", "parse_pipeline"],
    "rramc.runtime.executable": ["Executable", "load_executable"],
    "rramc.runtime.report": ["Report"],
}
_SUBMODULES = {"cli", "datasets", "device_fit", "device_plot", "driver", "errors", "executors", "frontend", "hardware", "ir",
               "pipeline", "registry", "runtime", "sweep", "training"}
__all__ = sorted([*(n for listed in _LAZY.values() for n in listed), "RramcError", "RramcWarning", "__version__"])
__getattr__, __dir__ = lazy_package("rramc", _LAZY, _SUBMODULES, globals())


if TYPE_CHECKING:
    from rramc.datasets import Dataset, load_dataset
    from rramc.driver import compile, compile_file
    from rramc.hardware import (
        COLUMN_SOLVERS, COST_OBSERVERS, DEVICE_MODELS, INPUT_ENCODINGS, WEIGHT_ENCODINGS, ColumnSolver, CostObserver,
        DeviceModel, InputEncoding, Observer, Target, WeightEncoding, builtin_targets, load_target,
    )
    from rramc.ir import Graph
    from rramc.pipeline import (
        PASSES, PIPELINES, CompileContext, Pass, PassInstrument, PassManager, default_pipeline, named_pipeline, option,
        parse_pipeline,
    )
    from rramc.runtime.executable import Executable, load_executable
    from rramc.runtime.report import Report
