"""How tests/data/format_v1_* were made: executables written by rramc before the core rebuild
(commit 7277824, executable format 1), and what that rramc computed on them.

    git archive 7277824 | tar -x -C /tmp/old
    python tests/data/make_format_v1.py /tmp/old tests/data

(run with the project's virtual environment; the old tree is imported in place of rramc).
tests/test_executable.py loads the files with today's rramc, which migrates format 1 to 2.
"""

import importlib
import sys
from pathlib import Path

old, out = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(old))
import rramc  # noqa: E402  (the old tree's)

for package in ("passes", "targets", "samples"):  # installed as rramc.<package> in the old layout
    sys.modules[f"rramc.{package}"] = importlib.import_module(package)

import safetensors.torch  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

assert Path(rramc.__file__).is_relative_to(old), rramc.__file__
torch.manual_seed(0)
digits = rramc.load_dataset("digits", "train")
mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 10))
exe = rramc.compile(mlp, "rram_a", digits.images[:64], calibration_data=digits.images[:128])
exe.save(out / "format_v1_mlp_rram_a.rramx")
recon = rramc.compile(mlp, "rram_a", digits.images[:64], calibration_data=digits.images[:128], training_data=digits.take(128),
                      pipeline="canonicalize,reconstruct{epochs=1,batch_size=32},quantize,tile,calibrate,emit")
recon.save(out / "format_v1_mlp_rram_a_reconstructed.rramx")
x = rramc.load_dataset("digits", "test").images[:32].contiguous()
with torch.no_grad():
    outputs = {"x": x, "chip": exe(x, seed=3), "reference": exe.reference(x),
               "recon_chip": recon(x, seed=3), "recon_reference": recon.reference(x)}
safetensors.torch.save_file({k: v.contiguous() for k, v in outputs.items()}, out / "format_v1_outputs.safetensors")
