"""rramc: a compiler toolchain for RRAM crossbar chips with nonlinear I-V characteristics.

    import rramc
    target = rramc.load_target("rram_a")
    exe = rramc.compile(model, target, example_input)
    report = exe.run(rramc.load_dataset("digits"))
"""

__version__ = "0.1.0"

from rramc.compiler import compile
from rramc.datasets import Dataset, load_dataset
from rramc.errors import RramcError
from rramc.hardware import DEVICE_MODELS, DeviceModel, Target, builtin_targets, load_target
from rramc.ir import Graph
from rramc.pipeline import PASSES, CompileContext, Pass, PassManager, default_pipeline, parse_pipeline
from rramc.runtime.executable import Executable, load_executable
from rramc.runtime.report import Report

__all__ = [
    "DEVICE_MODELS", "PASSES", "CompileContext", "Dataset", "DeviceModel", "Executable", "Graph", "Pass", "PassManager",
    "Report", "RramcError", "Target", "__version__", "builtin_targets", "compile", "default_pipeline", "load_dataset",
    "load_executable", "load_target", "parse_pipeline",
]
