"""rramc: a compiler toolchain for RRAM crossbar chips with nonlinear I-V characteristics.

    import rramc
    target = rramc.load_target("rram_a")
    exe = rramc.compile(model, target, example_input, calibration_data=batch, input_range=(0, 1))
    report = exe.run(rramc.load_dataset("digits"))
"""

from rramc._version import __version__
from rramc.datasets import Dataset, load_dataset
from rramc.driver import compile, compile_file
from rramc.errors import RramcError, RramcWarning
from rramc.hardware import (
    COLUMN_SOLVERS, COST_OBSERVERS, DEVICE_MODELS, INPUT_ENCODINGS, WEIGHT_ENCODINGS, ColumnSolver, CostObserver, DeviceModel,
    InputEncoding, Observer, Target, WeightEncoding, builtin_targets, load_target,
)
from rramc.ir import Graph
from rramc.pipeline import (
    PASSES, PIPELINES, CompileContext, Pass, PassInstrument, PassManager, default_pipeline, named_pipeline, parse_pipeline,
)
from rramc.runtime.executable import Executable, load_executable
from rramc.runtime.report import Report

__all__ = [
    "COLUMN_SOLVERS", "COST_OBSERVERS", "DEVICE_MODELS", "INPUT_ENCODINGS", "PASSES", "PIPELINES", "WEIGHT_ENCODINGS",
    "ColumnSolver", "CompileContext", "CostObserver", "Dataset", "DeviceModel", "Executable", "Graph", "InputEncoding",
    "Observer", "Pass", "PassInstrument", "PassManager", "Report", "RramcError", "RramcWarning", "Target", "WeightEncoding",
    "__version__", "builtin_targets", "compile", "compile_file", "default_pipeline", "load_dataset", "load_executable",
    "load_target", "named_pipeline", "parse_pipeline",
]
