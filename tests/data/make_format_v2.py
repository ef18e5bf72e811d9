"""How tests/data/format_v2_* were made: an executable written by rramc with executable format 2
(commit e804826, before conductances were coded and weights kept in fixed point), and what that
rramc computed on it.

    git archive e804826 | tar -x -C /tmp/old
    python tests/data/make_format_v2.py /tmp/old tests/data

(run with the project's virtual environment; the old tree is imported in place of rramc).
tests/test_compact_executable.py loads the file with today's rramc.
"""

import importlib
import sys
from pathlib import Path

old, out = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(old))
import rramc  # noqa: E402  (the old tree's)

for package in ("passes", "targets", "samples"):  # installed as rramc.<package>, from the tree's top-level folders
    sys.modules[f"rramc.{package}"] = importlib.import_module(package)

import safetensors.torch  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

assert Path(rramc.__file__).is_relative_to(old), rramc.__file__
torch.manual_seed(0)
digits = rramc.load_dataset("digits", "train")
mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))
exe = rramc.compile(mlp, "rram_a", digits.images[:64], calibration_data=digits.images[:128])
exe.save(out / "format_v2_mlp_rram_a.rramx")
x = rramc.load_dataset("digits", "test").images[:32].contiguous()
with torch.no_grad():
    outputs = {"x": x, "chip": exe(x, seed=3), "reference": exe.reference(x)}
safetensors.torch.save_file({k: v.contiguous() for k, v in outputs.items()}, out / "format_v2_outputs.safetensors")
