"""The executable file stores conductances as codes into a codebook (exactly), reference weights in
12-bit fixed point (within a stated bound) unless asked to keep them, and shared tensors once."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
import torch.nn as nn

import rramc
from rramc.errors import ExecutableFormatError
from rramc.ir import CrossbarOp
from rramc.ir.cells import CodedPairs
from rramc.runtime import compact
from rramc.runtime.file_format import FORMAT_VERSION, serialize

DATA = Path(__file__).parent / "data"


def _mlp(*sizes: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def _compile(target: str | rramc.Target, *sizes: int, exact_weights: bool = False) -> rramc.Executable:
    x = torch.rand(64, sizes[0])
    return rramc.compile(_mlp(*sizes), target, calibration_data=x, input_range=(0.0, 1.0), exact_weights=exact_weights)


def _stored(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safetensors.safe_open(str(path), "pt") as f:
        manifest = json.loads(f.metadata()["rramx.manifest"])
    return safetensors.torch.load_file(str(path)), manifest


@pytest.fixture(scope="module")
def rram_a_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[rramc.Executable, Path]:
    exe = _compile("rram_a", 64, 48, 10)
    return exe, exe.save(tmp_path_factory.mktemp("compact") / "mlp.rramx")


def test_conductances_on_levels_are_codes_into_their_distinct_pairs(rram_a_file) -> None:  # type: ignore[no-untyped-def]
    exe, path = rram_a_file
    tensors, manifest = _stored(path)
    assert manifest["format_version"] == FORMAT_VERSION == 3
    loaded = rramc.load_executable(path)
    for node, again in zip(exe.graph.nodes_of(CrossbarOp), loaded.graph.nodes_of(CrossbarOp)):
        op = node.op
        assert f"{node.name}.g_pos" not in tensors and f"{node.name}.g_neg" not in tensors
        codes, codebook = tensors[f"{node.name}.conductances.codes"], tensors[f"{node.name}.conductances.codebook"]
        pairs = torch.stack([op.g_pos.reshape(-1), op.g_neg.reshape(-1)], 1).unique(dim=0)  # plain PyTorch
        assert codes.dtype == torch.uint8 and codes.numel() == op.g_pos.numel()
        assert len(codebook) == len(pairs) <= 63  # a differential pair on 32 levels: one cell at g_min
        assert torch.equal(codebook[codes.long()].reshape(*op.g_pos.shape, 2), torch.stack([op.g_pos, op.g_neg], -1))
        assert torch.equal(again.op.g_pos, op.g_pos) and torch.equal(again.op.g_neg, op.g_neg)  # exact
    x = torch.rand(16, 64)
    assert torch.equal(loaded(x, seed=2), exe(x, seed=2))


def test_up_to_65536_pairs_take_uint16_codes(tmp_path: Path) -> None:
    target = rramc.load_target("rram_a").with_changes(conductance={"levels": 1024})  # 2047 distinct pairs at most
    exe = _compile(target, 200, 64, 10)
    tensors, _ = _stored(exe.save(tmp_path / "m.rramx"))
    first = exe.graph.nodes_of(CrossbarOp)[0]
    assert tensors[f"{first.name}.conductances.codes"].dtype == torch.uint16
    assert 256 < len(tensors[f"{first.name}.conductances.codebook"]) <= 2047
    assert torch.equal(rramc.load_executable(tmp_path / "m.rramx").graph.nodes_of(CrossbarOp)[0].op.g_pos, first.op.g_pos)


def test_continuous_cells_keep_float32_conductances_and_exact_weights(tmp_path: Path) -> None:
    """On the ideal target the chip computes the weights as given: only an exact reference shows it."""
    exe = _compile("ideal", 64, 48, 10)
    tensors, manifest = _stored(exe.save(tmp_path / "m.rramx"))
    assert manifest["reference_weights"] == "exact"
    for node in exe.graph.nodes_of(CrossbarOp):
        assert tensors[f"{node.name}.g_pos"].dtype == torch.float32 and f"{node.name}.conductances.codes" not in tensors
    loaded = rramc.load_executable(tmp_path / "m.rramx")
    assert loaded.graph.to_text() == exe.graph.to_text()
    x = torch.rand(16, 64)
    torch.testing.assert_close(loaded(x), loaded.reference(x), rtol=1e-5, atol=1e-5)


def test_reference_weights_are_12_bit_fixed_point_within_the_bound(rram_a_file) -> None:  # type: ignore[no-untyped-def]
    exe, path = rram_a_file
    tensors, manifest = _stored(path)
    assert manifest["reference_weights"] == "fixed12"
    loaded = rramc.load_executable(path)
    assert loaded.reference_weights == "fixed12" and "12-bit fixed point" in loaded.reference_description()
    for node, again in zip(exe.graph.nodes_of(CrossbarOp), loaded.graph.nodes_of(CrossbarOp)):
        w, stored = node.op.weight, again.op.weight
        assert f"{node.name}.weight" not in tensors
        assert tensors[f"{node.name}.weight.fixed12"].numel() == 3 * w.numel() // 2  # 12 bits a weight
        assert stored.dtype == w.dtype and stored.shape == w.shape and not torch.equal(stored, w)
        error = (stored.double() - w.double()).abs().amax(1)
        assert bool((error <= w.double().abs().amax(1) / 2047).all())
        steps = stored.double() / torch.exp2(tensors[f"{node.name}.weight.exponents"].double())[:, None]
        assert torch.equal(steps, steps.round()) and float(steps.abs().max()) <= 2047  # integers of 12 bits
        assert torch.equal(again.op.bias, node.op.bias)  # only weights are rounded
    x = torch.rand(16, 64)
    assert torch.equal(loaded(x, seed=1), exe(x, seed=1))  # the chip does not read them
    torch.testing.assert_close(loaded.reference(x), exe.reference(x), rtol=0, atol=1e-3)


def test_exact_weights_keeps_them(tmp_path: Path) -> None:
    exe = _compile("rram_a", 64, 48, 10, exact_weights=True)
    tensors, manifest = _stored(exe.save(tmp_path / "m.rramx"))
    assert manifest["reference_weights"] == "exact"
    loaded = rramc.load_executable(tmp_path / "m.rramx")
    assert loaded.graph.to_text() == exe.graph.to_text() and loaded.reference_description().startswith("exact")
    assert all(tensors[f"{n.name}.weight"].dtype == torch.float32 for n in exe.graph.nodes_of(CrossbarOp))


def test_a_loaded_executable_saves_to_the_same_bytes(rram_a_file, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Decoding is exact and 12-bit fixed point with power-of-two scales encodes a decoded weight to the same bits."""
    _, path = rram_a_file
    loaded = rramc.load_executable(path)
    assert loaded.save(tmp_path / "again.rramx").read_bytes() == path.read_bytes()
    assert serialize(loaded.graph, loaded.target, loaded.metadata) == path.read_bytes()


def test_fixed_point_bound_and_edges() -> None:
    """Rows of very different scales, a zero row, an odd count of values, float64: the bound holds and decoding is exact."""
    torch.manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        w = torch.randn(7, 3, 3, 3, dtype=dtype) * torch.logspace(-30, 6, 7, dtype=dtype)[:, None, None, None]
        w[2] = 0
        packed, exponents = compact.fix(w)  # type: ignore[misc]
        decoded = compact.unfix(packed, exponents, tuple(w.shape), dtype)
        peak = w.reshape(7, -1).abs().amax(1)
        assert bool(((decoded - w).reshape(7, -1).abs().amax(1) <= peak / 2047).all())
        assert torch.equal(decoded[2], w[2])
        assert torch.equal(compact.unfix(*compact.fix(decoded), tuple(w.shape), dtype), decoded)  # type: ignore[misc]
    assert compact.fix(torch.tensor([[1.0, float("nan")]])) is None and compact.fix(torch.ones(3)) is None


def test_a_pair_the_sample_misses_is_still_coded() -> None:
    levels = torch.linspace(2e-8, 2e-6, 32)
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(0, 32, (3000, 700), generator=generator)
    g_pos, g_neg = levels[index], torch.full((3000, 700), 2e-8)
    g_pos[1234, 5] = 1.2345e-7  # off the levels, once
    coded = CodedPairs.encode(g_pos, g_neg)
    assert coded is not None and len(coded.codebook) == 33 and coded.codes.dtype == torch.uint8
    decoded = coded.dense()
    assert torch.equal(decoded[0], g_pos) and torch.equal(decoded[1], g_neg)


@pytest.mark.parametrize("exact_weights", [False, True])
def test_tensors_shared_by_ops_are_stored_once_and_load_as_one(exact_weights: bool, tmp_path: Path,
                                                              linear_used_twice: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    exe = rramc.compile(linear_used_twice(), "rram_a", calibration_data=torch.rand(64, 16), input_range=(0.0, 1.0),
                        exact_weights=exact_weights)
    first, second, _ = exe.graph.nodes_of(CrossbarOp)
    assert second.op.shares == first.name and second.op.cells is first.op.cells and second.op.weight is first.op.weight
    tensors, _ = _stored(exe.save(tmp_path / "m.rramx"))
    assert not [key for key in tensors if key.startswith(f"{second.name}.") and key.split(".")[1] in
                ("g_pos", "g_neg", "conductances", "weight", "bias", "conductance_per_weight")]
    assert f"{second.name}.gain" in tensors  # its own periphery
    a, b, _ = rramc.load_executable(tmp_path / "m.rramx").graph.nodes_of(CrossbarOp)
    for name in ("cells", "weight", "bias", "conductance_per_weight"):
        assert getattr(a.op, name) is getattr(b.op, name), name
    assert a.op.gain is not b.op.gain


def test_format_2_files_still_load_and_compute_what_they_did() -> None:
    """tests/data/make_format_v2.py wrote this file with the rramc of format 2 (float32 tensors, one per attribute)."""
    exe = rramc.load_executable(DATA / "format_v2_mlp_rram_a.rramx")
    _, manifest = _stored(DATA / "format_v2_mlp_rram_a.rramx")
    assert manifest["format_version"] == 2 and "reference_weights" not in manifest
    assert exe.reference_weights == "exact"
    expected = safetensors.torch.load_file(str(DATA / "format_v2_outputs.safetensors"))
    assert torch.equal(exe(expected["x"], seed=3), expected["chip"])
    # The float reference is a float matmul: its last bit follows the machine's BLAS kernels, not the file.
    torch.testing.assert_close(exe.reference(expected["x"]), expected["reference"], rtol=1e-6, atol=1e-7)


def test_executable_sizes_per_parameter(tmp_path: Path) -> None:
    """Codes (1 byte a cell pair) and 12-bit weights: about 2.5 bytes a parameter, where float32 took 12."""
    exe = _compile("rram_a", 784, 256, 128, 10)
    params = sum(n.op.weight.numel() + n.op.bias.numel() for n in exe.graph.nodes_of(CrossbarOp))
    compact_size = exe.save(tmp_path / "c.rramx").stat().st_size
    exe.reference_weights = "exact"
    exact_size = exe.save(tmp_path / "e.rramx").stat().st_size
    assert compact_size < 2.7 * params + 40_000
    assert exact_size < 5.2 * params + 40_000  # codes and float32 weights
    assert compact_size < exact_size < 12 * params


def _rewrite(path: Path, key: str, value: torch.Tensor) -> bytes:
    """The file with one tensor replaced and the manifest's checksums made to match: only the content is wrong."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    manifest = json.loads(json.loads(data[8:8 + n])["__metadata__"]["rramx.manifest"])
    tensors = safetensors.torch.load(data)
    tensors[key] = value
    digest = hashlib.sha256(f"{value.dtype}{list(value.shape)}".encode() + value.contiguous().numpy().tobytes())
    manifest["tensor_sha256"][key] = digest.hexdigest()
    manifest.pop("tensor_offsets")
    text = json.dumps(manifest, sort_keys=True)
    return safetensors.torch.save(tensors, metadata={"rramx.manifest": text,
                                                     "rramx.manifest_sha256": hashlib.sha256(text.encode()).hexdigest()})


@pytest.mark.parametrize(("what", "change", "words"), [
    ("a code past the codebook", lambda t: torch.full_like(t, 200), ["corrupt", "past the codebook"]),
    ("codes of another count", lambda t: t[:-1], ["corrupt", "pair codes for conductances of shape"]),
])
def test_inconsistent_codes_are_refused_with_a_located_message(rram_a_file, tmp_path: Path, what: str, change, words) -> None:  # type: ignore[no-untyped-def]
    exe, path = rram_a_file
    node = exe.graph.nodes_of(CrossbarOp)[0]
    key = f"{node.name}.conductances.codes"
    bad = tmp_path / "bad.rramx"
    bad.write_bytes(_rewrite(path, key, change(safetensors.torch.load_file(str(path))[key])))
    with pytest.raises(ExecutableFormatError) as caught:
        rramc.load_executable(bad)
    for word in (str(bad), *words):
        assert word in str(caught.value), (what, str(caught.value))


def test_the_command_line_keeps_exact_weights_on_request(write_digits_mlp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from rramc.cli import app

    pt2 = write_digits_mlp(tmp_path)["pt2"]
    for flag, kept in (([], "fixed12"), (["--exact-weights"], "exact")):
        result = CliRunner().invoke(app, ["compile", str(pt2), "-t", "rram_a", "-o", str(tmp_path / f"{kept}.rramx"), *flag])
        assert result.exit_code == 0, result.output
        assert _stored(tmp_path / f"{kept}.rramx")[1]["reference_weights"] == kept
    for kept, words in (("fixed12", "reference weights: 12-bit fixed point per output"), ("exact", "reference weights: exact")):
        for command in (["inspect", str(tmp_path / f"{kept}.rramx")], ["run", str(tmp_path / f"{kept}.rramx"), "--limit", "20"]):
            result = CliRunner().invoke(app, command, terminal_width=160)
            assert result.exit_code == 0 and words in result.output, result.output
