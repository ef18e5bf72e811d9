"""Contracts of the rebuilt core that users and plugin authors rely on.

Signed network inputs, the caller's module left as it was, chip seeds and the programmed-chip cache,
reconstruction seeds, the driver's argument checks, and the three hardware seams (column solver,
input encoding, weight encoding) extended by plugins: from Python and through entry points.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn as nn

import rramc
import rramc.runtime.executable as executable_module
from rramc.errors import ClippedInputWarning, ExecutableFormatError, PassError, RramcError, TargetError
from rramc.hardware.column_solver import COLUMN_SOLVERS, ColumnSolver, Conductances
from rramc.hardware.config import spec_field
from rramc.hardware.input_encoding import INPUT_ENCODINGS, InputEncoding, Read
from rramc.hardware.interpreter import Chip
from rramc.hardware.mapping import weight_peak
from rramc.hardware.weight_encoding import WEIGHT_ENCODINGS, MappedWeights, WeightEncoding
from rramc.ir import CrossbarOp
from rramc.ir.cells import DensePairs
from rramc.pipeline import PassInstrument, PassManager, PassTimings, default_pipeline, named_pipeline
from rramc.samples import models

IMAGE = (1, 8, 8)

# These tests calibrate on small batches on purpose; the driver's advice about it is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:calibrated on .* sample:rramc.errors.RramcWarning")


def normalised(x: torch.Tensor) -> torch.Tensor:
    """The usual (x - mean) / std normalisation of [0, 1] images: about half the values negative."""
    return (x - 0.5) / 0.25


def networks() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    residual = models.ResidualCNN(1, 8, 10)
    for m in residual.modules():  # BatchNorm statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return {"mlp": models.mlp(64, 32, 10).eval(), "small_cnn": models.SmallCNN(1, 8, 10).eval(), "residual_cnn": residual.eval()}


def first_layer(exe: rramc.Executable) -> CrossbarOp:
    return exe.graph.nodes_of(CrossbarOp)[0].op  # type: ignore[return-value]


# --- 1. network inputs are signed unless their range is declared ---------------------------------


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "residual_cnn"])
def test_undeclared_inputs_are_signed_even_when_calibrated_on_non_negative_data(name: str) -> None:
    """Calibrated on torch.rand, run on normalised inputs: the first layer reads them in two phases."""
    model = networks()[name]
    calibration = torch.rand(64, *IMAGE, generator=torch.Generator().manual_seed(1))
    x = normalised(torch.rand(48, *IMAGE, generator=torch.Generator().manual_seed(2)))
    assert (x < 0).float().mean() > 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClippedInputWarning)  # nothing is clipped: no warning
        exe = rramc.compile(model, "ideal", calibration)
        got = exe(x)
    assert first_layer(exe).input_range.signed and first_layer(exe).input_range.origin == "calibrated"
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-6)
    report = exe.run(rramc.Dataset("normalised", "test", x, torch.zeros(len(x), dtype=torch.long), 10))
    assert report.clipped == {} and report.warnings == [] and report.agreement == 1.0


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "residual_cnn"])
def test_declared_unsigned_inputs_clip_negative_values_and_say_so(name: str) -> None:
    model = networks()[name]
    calibration = torch.rand(64, *IMAGE, generator=torch.Generator().manual_seed(1))
    x = normalised(torch.rand(48, *IMAGE, generator=torch.Generator().manual_seed(2)))
    exe = rramc.compile(model, "ideal", calibration, input_range=(0, 1))
    op = first_layer(exe)
    assert not op.input_range.signed and op.input_range.origin == "declared" and op.input_range.scale == 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = exe(x), exe(x)
    clipped = [w for w in caught if issubclass(w.category, ClippedInputWarning)]
    assert len(clipped) == 1, [str(w.message) for w in caught]  # once per executable, not once per call
    assert "input_range" in str(clipped[0].message)
    assert torch.equal(first, second)
    with torch.no_grad():  # what the chip computes: the negative values are lost (the ideal DAC does not clip above 1)
        torch.testing.assert_close(first, model(x.clamp_min(0)), rtol=1e-5, atol=1e-6)

    report = exe.run(rramc.Dataset("normalised", "test", x, torch.zeros(len(x), dtype=torch.long), 10))
    source = exe.graph.nodes_of(CrossbarOp)[0].source
    assert report.clipped == {source: {"negative": int((x < 0).sum()), "over_full_scale": 0, "inputs": x.numel()}}
    assert f"layer {source}" in report.warnings[0] and "negative values" in report.warnings[0]
    # losing half the inputs may also leave outputs that barely follow the float network's: that warning may join it
    assert all("barely correlated" in w for w in report.warnings[1:]), report.warnings


def test_a_dac_counts_inputs_above_the_declared_range() -> None:
    """On a chip with a DAC, values above the declared full scale are clipped too, and counted apart."""
    model = networks()["mlp"]
    x = normalised(torch.rand(48, *IMAGE, generator=torch.Generator().manual_seed(2)))
    exe = rramc.compile(model, "rram_a", torch.rand(64, *IMAGE), input_range=(0, 1))
    report = exe.run(rramc.Dataset("normalised", "test", x, torch.zeros(len(x), dtype=torch.long), 10))
    counts = report.clipped[exe.graph.nodes_of(CrossbarOp)[0].source]
    assert counts == {"negative": int((x < 0).sum()), "over_full_scale": int((x > 1).sum()), "inputs": x.numel()}
    assert int((x > 1).sum()) > 0


# --- 2. the caller's module -----------------------------------------------------------------------


@pytest.mark.parametrize("parent_training", [True, False])
def test_compile_leaves_the_modules_modes_and_state_as_they_were(parent_training: bool) -> None:
    torch.manual_seed(0)
    model = models.SmallCNN(1, 8, 10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    model.train(parent_training)
    model.features[1].train(not parent_training)  # a BatchNorm whose mode differs from its parent's
    modes = {name: m.training for name, m in model.named_modules()}
    state = copy.deepcopy(model.state_dict())
    x = torch.rand(16, *IMAGE)
    exe = rramc.compile(model, "ideal", x)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert model.features[1].training is not parent_training
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state), "compiling changed the module's parameters or statistics"
    with torch.no_grad():  # whatever the caller's mode, the compiled network is the inference (eval-mode) network
        torch.testing.assert_close(exe.reference(x), copy.deepcopy(model).eval()(x), rtol=1e-5, atol=1e-6)


# --- 3. chip seeds -----------------------------------------------------------------------------------


def test_run_and_call_draw_the_same_chip_and_noise_for_a_seed(trained_mlp, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    target = rramc.load_target("rram_a").with_changes(nonidealities={"programming_sigma": 0.05, "read_noise_sigma": 0.05})
    exe = rramc.compile(trained_mlp, target, digits_train.images[:256], input_range=(0, 1))
    x = digits_test.images[:200]
    outputs = {seed: exe(x, seed=seed) for seed in (3, 4)}
    assert torch.equal(exe(x, seed=3), outputs[3])  # same seed: same chip instance, same read noise
    assert not torch.equal(outputs[3], outputs[4])
    predictions = {seed: out.argmax(1) for seed, out in outputs.items()}
    assert not torch.equal(predictions[3], predictions[4])  # the noise is large enough to change predictions
    for seed in (3, 4):
        # labelled with the chip's own predictions for this seed, the run must score exactly 100 %
        dataset = rramc.Dataset("digits", "test", x, predictions[seed], 10)
        assert exe.run(dataset, batch_size=len(dataset), seed=seed).chip_accuracy == 1.0
        same = int((predictions[7 - seed] == predictions[seed]).sum())
        assert exe.run(dataset, batch_size=len(dataset), seed=7 - seed).chip_accuracy == same / len(dataset)


# --- 4. the compile seed reaches reconstruction --------------------------------------------------


def test_the_compile_seed_seeds_reconstruction(digits_train) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = models.mlp(64, 24, 10, clipped=True)
    data = digits_train.take(384)

    def trained(compile_seed: int, **options: Any) -> list[torch.Tensor]:
        pipeline = named_pipeline("reconstruct", reconstruct={"epochs": 1, "batch_size": 64, "lr": 0.01, **options})
        exe = rramc.compile(model, "rram_a", data.images[:128], pipeline=pipeline, training_data=data, seed=compile_seed)
        layers = exe.graph.nodes_of(CrossbarOp)
        assert {n.op.trained_for.seed for n in layers} == {options.get("seed", compile_seed)}
        return [n.op.weight for n in layers]

    one, again, two = trained(1), trained(1), trained(2)
    assert all(torch.equal(a, b) for a, b in zip(one, again))
    assert not any(torch.equal(a, b) for a, b in zip(one, two))
    # the pass's own seed option wins over the compile seed
    assert all(torch.equal(a, b) for a, b in zip(trained(1, seed=7), trained(2, seed=7)))


# --- 5. the driver's arguments -----------------------------------------------------------------------


def test_a_pass_manager_excludes_pipeline_skip_print_ir_and_instruments() -> None:
    model, x = models.mlp(64, 10), torch.rand(4, *IMAGE)
    manager = PassManager(default_pipeline())
    for extra in ({"pipeline": "default"}, {"pipeline": default_pipeline()}, {"skip": ["canonicalize"]}, {"print_ir": True},
                  {"instruments": [PassTimings()]}):
        with pytest.raises(PassError, match="give either pass_manager or pipeline/skip/print_ir/instruments, not both"):
            rramc.compile(model, "ideal", x, pass_manager=manager, **extra)

    class Seen(PassInstrument):
        def __init__(self) -> None:
            self.names: list[str] = []

        def after_pass(self, p, graph, ctx, seconds) -> None:  # type: ignore[no-untyped-def]
            self.names.append(p.name)

    seen = Seen()
    manager = PassManager(default_pipeline(), skip=frozenset({"canonicalize"}), instruments=[seen])
    exe = rramc.compile(model, "ideal", x, pass_manager=manager)
    assert seen.names == ["quantize", "tile", "calibrate", "emit"] and exe.metadata["pipeline"].startswith("quantize")
    assert list(manager.instruments) == [seen]  # the caller's manager is not modified


# --- 6. the programmed chip is kept --------------------------------------------------------------------


def test_each_chip_instance_is_programmed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    programmed: list[int] = []

    class CountingChip(Chip):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            programmed.append(kwargs.get("seed", 0))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(executable_module, "Chip", CountingChip)
    target = rramc.load_target("rram_a").with_changes(nonidealities={"programming_sigma": 0.05})
    exe = rramc.compile(models.mlp(64, 16, 10), target, torch.rand(32, *IMAGE), input_range=(0, 1))
    x = torch.rand(8, *IMAGE)
    chip = exe.chip(0)
    first = exe(x)
    second = exe(x)
    exe.run(rramc.Dataset("r", "test", x, torch.zeros(8, dtype=torch.long), 10))
    assert programmed == [0] and exe.chip(0) is chip and torch.equal(first, second)
    assert exe.chip(1) is not chip and exe.chip(1) is exe.chip(1) and programmed == [0, 1]
    assert exe.chip(0, dtype=torch.float64) is not chip and len(programmed) == 3  # another precision is another chip


# --- 7. plugins: a column solver, an input encoding and a weight encoding ------------------------------


@dataclass(frozen=True)
class BruteForceWires(ColumnSolver):
    """Every cell's current from the device's I-V, added up word line by word line: no expansion, no matmul."""

    model: ClassVar[str] = "brute_force"
    vectors_per_chunk: int = spec_field("input vectors evaluated at once", low=1, default=4096)

    def prepare(self, cells: Conductances) -> Conductances:
        return cells

    def read(self, cells: Conductances, read: Read, generator: torch.Generator | None) -> torch.Tensor:
        voltages = read.voltages
        lowering = cells.lowering
        vectors = lowering.vectors(voltages)  # [vectors, word lines]
        blocks = []
        for a, b in cells.grid.row_blocks:
            chunks = []
            for start in range(0, vectors.shape[0], self.vectors_per_chunk):
                v = vectors[start : start + self.vectors_per_chunk]
                current = v.new_zeros(v.shape[0], cells.g_pos.shape[1])
                variance = torch.zeros_like(current)
                for row in range(a, b):
                    on_line = v[:, row : row + 1]
                    i_pos = cells.device.current(on_line, cells.g_pos[row])
                    i_neg = cells.device.current(on_line, cells.g_neg[row])
                    current = current + i_pos - i_neg
                    variance = variance + i_pos**2 + i_neg**2
                if cells.read_noise_sigma > 0:
                    noise = torch.randn(current.shape, generator=generator, dtype=current.dtype, device=current.device)
                    current = current + cells.read_noise_sigma * variance.sqrt() * noise
                chunks.append(current)
            blocks.append(lowering.restore(torch.cat(chunks), voltages.shape[0], lowering.output_size(voltages)))
        return torch.stack(blocks, dim=lowering.block_dim)


class BitSerial(InputEncoding):
    """One read per bit of the input's DAC code, each at 0 V or the read voltage, weighted 2**b/(2**bits - 1)."""

    name = "plugin_bit_serial"
    default_bits: ClassVar[int] = 8

    def reads(self, x: torch.Tensor, scale: float, dac_bits: int | None) -> list[Read]:
        bits = dac_bits or self.default_bits
        steps = (1 << bits) - 1
        codes = torch.round((x.detach() / scale).clamp(0.0, 1.0) * steps).long()
        vread = torch.tensor([0.0, self.target.crossbar.read_voltage], dtype=x.dtype, device=x.device)
        return [Read((1 << b) / steps, ((codes >> b) & 1).to(x.dtype) * vread[1], vread) for b in range(bits)]

    def clipped(self, x: torch.Tensor, scale: float, dac_bits: int | None) -> torch.Tensor:
        return (x > scale).sum()


class CentredPair(WeightEncoding):
    """A differential pair about the middle of the window: ``G± = g_mid ± c·W/2`` (in read current)."""

    name = "centred_pair"

    def outputs_per_array(self) -> int:
        return self.target.crossbar.cols // 2

    def bit_lines(self, outputs: int) -> int:
        return 2 * outputs

    def map(self, weight: torch.Tensor, *, per_column: bool, levels: int | None) -> MappedWeights:
        w = weight if weight.requires_grad else weight.detach().double()
        c, rc = self.target.conductance, self.read_current
        scale = (c.g_max - c.g_min) / weight_peak(w, per_column)  # S per weight unit: G+ - G- = scale·W
        middle = rc.current_at((c.g_min + c.g_max) / 2)
        half = (scale * rc.response / 2)[:, None] * w
        g_pos, g_neg = rc.conductance(middle + half, levels), rc.conductance(middle - half, levels)
        return MappedWeights(DensePairs(g_pos.T.to(weight.dtype).contiguous(), g_neg.T.to(weight.dtype).contiguous()),
                             scale.to(weight.dtype))


@pytest.fixture
def plugins() -> Iterator[None]:
    registered = []
    try:
        for registry, name, cls in ((COLUMN_SOLVERS, "brute_force", BruteForceWires), (INPUT_ENCODINGS, "plugin_bit_serial", BitSerial),
                                    (WEIGHT_ENCODINGS, "centred_pair", CentredPair)):
            registry.register(name, cls)
            registered.append((registry, name))
        yield
    finally:
        for registry, name in registered:
            registry.unregister(name)


def ideal_converters(target: str | rramc.Target, **crossbar: Any) -> rramc.Target:
    """``target`` with continuous conductances and ideal converters (``crossbar`` changes on top)."""
    base = rramc.load_target(target)
    return base.with_changes(conductance={"levels": None}, crossbar={"dac_bits": None, "adc_bits": None, **crossbar})


@pytest.mark.parametrize("target", ["ideal", "rram_a", "rram_a_converters"])
def test_brute_force_wires_equal_ideal_wires_on_separable_cells(plugins: None, target: str) -> None:
    spec = rramc.load_target("rram_a") if target == "rram_a_converters" else ideal_converters(target)
    torch.manual_seed(0)
    for model, x in ((models.mlp(64, 24, 10).eval(), torch.randn(24, *IMAGE)), (networks()["residual_cnn"], torch.randn(8, *IMAGE))):
        exe = rramc.compile(model, spec, x, pipeline="canonicalize,quantize,tile{rows=40,cols=7},calibrate,emit")
        brute = rramc.Executable(exe.graph, spec.with_changes(wires={"model": "brute_force"}))
        assert brute.target.wires == BruteForceWires() and brute.device_evaluation() == "brute_force"
        assert all(isinstance(layer.solver, BruteForceWires) for layer in brute.chip(0, dtype=torch.float64).layers.values())
        # the same programmed cells, evaluated both ways (float64: the sums differ only in rounding order)
        expected = exe.chip(0, dtype=torch.float64)(x.double())
        got = brute.chip(0, dtype=torch.float64)(x.double())
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
        if target == "ideal":
            with torch.no_grad():
                torch.testing.assert_close(brute(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_plugin_column_solver_is_configured_validated_and_saved_like_a_builtin(plugins: None, tmp_path: Path) -> None:
    target = rramc.load_target("ideal").with_changes(wires={"model": "brute_force", "vectors_per_chunk": 5})
    assert target.wires == BruteForceWires(vectors_per_chunk=5) and "wires: brute_force" in target.describe()
    with pytest.raises(TargetError, match=r"field 'wires.vectors_per_chunk': got 0; expected an integer >= 1"):
        rramc.load_target("ideal").with_changes(wires={"model": "brute_force", "vectors_per_chunk": 0})
    with pytest.raises(TargetError, match=r"field 'wires.model': got 'brute'; expected one of brute_force, ideal"):
        rramc.load_target("ideal").with_changes(wires={"model": "brute"})
    model, x = models.mlp(64, 16, 10).eval(), torch.rand(12, *IMAGE)
    exe = rramc.compile(model, target, x, input_range=(0, 1))
    loaded = rramc.load_executable(exe.save(tmp_path / "brute.rramx"))
    assert loaded.target.wires == BruteForceWires(vectors_per_chunk=5)
    torch.testing.assert_close(loaded(x), exe(x), rtol=0, atol=0)
    COLUMN_SOLVERS.unregister("brute_force")
    try:
        with pytest.raises(ExecutableFormatError, match="got .brute_force.; expected one of ideal, resistive"):
            rramc.load_executable(tmp_path / "brute.rramx")
    finally:
        COLUMN_SOLVERS.register("brute_force", BruteForceWires)


def dac_rounded_mlp(model: nn.Sequential, exe: rramc.Executable, x: torch.Tensor, bits: int) -> torch.Tensor:
    """The MLP with every crossbar layer's input rounded as a ``bits``-bit DAC rounds it, sign by sign."""
    steps = (1 << bits) - 1
    ranges = iter([n.op.input_range for n in exe.graph.nodes_of(CrossbarOp)])
    h = x.flatten(1)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                scale = next(ranges).scale
                u = h / scale
                h = layer(torch.sign(u) * torch.round(u.abs().clamp(max=1.0) * steps) / steps * scale)
            elif not isinstance(layer, nn.Flatten):
                h = layer(h)
    return h


def test_bit_serial_on_linear_cells_is_amplitude_up_to_dac_rounding(plugins: None) -> None:
    bits = 5
    torch.manual_seed(0)
    model = models.mlp(64, 24, 16, 10).eval()
    calibration = torch.randn(64, *IMAGE)  # signed inputs: two phases, each bit-serial
    x = torch.randn(32, *IMAGE)
    linear = rramc.load_target("rram_a").with_changes(device={"model": "linear"}, conductance={"levels": None},
                                                      crossbar={"dac_bits": bits, "adc_bits": None})
    amplitude = rramc.compile(model, linear, calibration)
    serial = rramc.compile(model, linear.with_changes(crossbar={"input_encoding": "plugin_bit_serial"}), calibration)
    assert {n.op.input_encoding for n in serial.graph.nodes_of(CrossbarOp)} == {"plugin_bit_serial"}
    expected = dac_rounded_mlp(model, amplitude, x, bits)
    torch.testing.assert_close(amplitude(x), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(serial(x), expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert float((serial(x) - model(x)).abs().max()) > 1e-3  # the rounding is visible: the comparison is not vacuous
    data = rramc.Dataset("randn", "test", x, torch.zeros(len(x), dtype=torch.long), 10)
    reads = [exe.run(data).costs["operations"]["per_inference"]["reads"] for exe in (amplitude, serial)]
    assert reads[1] == pytest.approx(bits * reads[0], rel=1e-12)  # one read per bit plane


def test_bit_serial_on_sinh_cells_is_linear_in_the_input_unlike_amplitude(plugins: None) -> None:
    """Each bit plane reads at 0 V or Vread only, so the sinh I-V never sees an intermediate voltage."""
    bits = 8
    torch.manual_seed(0)
    model = nn.Linear(32, 6)
    sinh = ideal_converters("rram_a", dac_bits=bits)
    steps = (1 << bits) - 1
    grid = torch.Generator().manual_seed(3)
    a = torch.randint(0, steps // 2 + 1, (16, 32), generator=grid) / steps  # inputs on the DAC grid, a + b ≤ 1
    b = torch.randint(0, steps // 2 + 1, (16, 32), generator=grid) / steps
    for encoding in ("plugin_bit_serial", "amplitude"):
        exe = rramc.compile(model, sinh.with_changes(crossbar={"input_encoding": encoding}), torch.ones(4, 32), input_range=(0, 1))
        bias = model.bias.detach()
        additive = (exe(a + b) - bias) - ((exe(a) - bias) + (exe(b) - bias))
        exact = exe(a) - model(a).detach()
        scale = float(model(a).detach().abs().max())
        if encoding == "plugin_bit_serial":
            assert float(additive.abs().max()) < 1e-5 * scale and float(exact.abs().max()) < 1e-5 * scale
        else:  # the amplitude encoding applies sinh(B·x·Vread): neither additive nor the linear layer
            assert float(additive.abs().max()) > 0.05 * scale and float(exact.abs().max()) > 0.05 * scale


def test_centred_pairs_hold_the_weights_about_the_middle_of_the_window(plugins: None) -> None:
    torch.manual_seed(0)
    model = models.mlp(64, 24, 10).eval()
    x = torch.rand(16, *IMAGE)
    centred_ideal = rramc.load_target("ideal").with_changes(crossbar={"weight_encoding": "centred_pair"})
    exe = rramc.compile(model, centred_ideal, x, input_range=(0, 1))
    c = centred_ideal.conductance
    for node in exe.graph.nodes_of(CrossbarOp):
        assert node.op.weight_encoding == "centred_pair"
        cells = exe.chip(0).layers[node.name].cells
        torch.testing.assert_close(cells.g_pos + cells.g_neg, torch.full_like(cells.g_pos, c.g_min + c.g_max), rtol=1e-6, atol=0)
        assert float(cells.g_pos.min()) >= c.g_min * (1 - 1e-6) and float(cells.g_pos.max()) <= c.g_max * (1 + 1e-6)
    with torch.no_grad():
        torch.testing.assert_close(exe(x), model(x), rtol=1e-5, atol=1e-5)
    assert [u["cells"] for u in exe.array_usage()] == [64 * 2 * 24, 24 * 2 * 10]
    # on separable cells only G+ - G- matters: centred and differential pairs compute the same
    sinh = ideal_converters("rram_a")
    differential = rramc.compile(model, sinh, x, input_range=(0, 1))
    centred = rramc.compile(model, sinh.with_changes(crossbar={"weight_encoding": "centred_pair"}), x, input_range=(0, 1))
    torch.testing.assert_close(centred(x), differential(x), rtol=1e-4, atol=1e-5)


def test_a_network_through_all_three_plugins(plugins: None) -> None:
    """brute-force wires, bit-serial inputs and centred pairs together, on linear cells: the DAC-rounded network."""
    bits = 6
    torch.manual_seed(0)
    model = models.mlp(64, 24, 10).eval()
    calibration, x = torch.randn(48, *IMAGE), torch.randn(16, *IMAGE)
    target = rramc.load_target("ideal").with_changes(
        wires={"model": "brute_force"}, crossbar={"input_encoding": "plugin_bit_serial", "weight_encoding": "centred_pair", "dac_bits": bits})
    exe = rramc.compile(model, target, calibration, pipeline="canonicalize,quantize,tile{rows=48},calibrate,emit")
    assert [len(n.op.tiles()) for n in exe.graph.nodes_of(CrossbarOp)] == [2, 1]
    torch.testing.assert_close(exe(x), dac_rounded_mlp(model, exe, x, bits), rtol=1e-4, atol=1e-5)
    assert "wires: brute_force" in exe.target.describe() and "bit_serial inputs" in exe.target.describe()


class NotASolver:
    model = "not_a_solver"


class MissingRead(ColumnSolver):
    model = "missing_read"

    def prepare(self, cells: Conductances) -> Conductances:
        return cells


@dataclass(frozen=True)
class Misnamed(BruteForceWires):
    model: ClassVar[str] = "called_otherwise"


def test_registering_a_broken_or_clashing_plugin_is_refused() -> None:
    cases = [
        (COLUMN_SOLVERS, "not_a_solver", NotASolver, f"column solver (wires model) 'not_a_solver' from {__name__}.NotASolver "
                                                     "(registered at run time) is not a subclass of rramc's ColumnSolver"),
        (COLUMN_SOLVERS, "missing_read", MissingRead, f"'missing_read' from {__name__}.MissingRead (registered at run time) "
                                                      "does not implement ColumnSolver: missing read"),
        (COLUMN_SOLVERS, "misnamed", Misnamed, f"'misnamed' from {__name__}.Misnamed (registered at run time) declares "
                                               "model = 'called_otherwise'; it must be registered under that name"),
        (INPUT_ENCODINGS, "serial", BitSerial, f"input encoding 'serial' from {__name__}.BitSerial (registered at run time) "
                                               "declares name = 'plugin_bit_serial'"),
        (WEIGHT_ENCODINGS, "centred_pair", BitSerial, "is not a subclass of rramc's WeightEncoding"),
        (COLUMN_SOLVERS, "ideal", BruteForceWires, "column solver (wires model) 'ideal' is already defined: "
                                                   "rramc.hardware.column_solver:IdealWires (built in)"),
        (WEIGHT_ENCODINGS, "offset", CentredPair, "weight encoding 'offset' is already defined: "
                                                  "rramc.hardware.weight_encoding:Offset (built in)"),
    ]
    for registry, name, cls, message in cases:
        names = registry.names()
        with pytest.raises(TargetError) as caught:
            registry.register(name, cls)
        assert message in str(caught.value), str(caught.value)
        assert registry.names() == names and (name not in names or registry.get(name) is not cls)  # nothing (half-)registered
    COLUMN_SOLVERS.register("brute_force", BruteForceWires)
    try:
        COLUMN_SOLVERS.register("brute_force", BruteForceWires)  # the same class again is no clash
        with pytest.raises(TargetError, match="column solver .wires model. 'brute_force' is already defined: registered at run time"):
            COLUMN_SOLVERS.register("brute_force", dataclass(frozen=True)(type("Other", (BruteForceWires,), {})))
    finally:
        COLUMN_SOLVERS.unregister("brute_force")
    assert "brute_force" not in COLUMN_SOLVERS.names()


def test_a_refused_run_time_registration_names_the_class() -> None:
    with pytest.raises(TargetError) as caught:
        COLUMN_SOLVERS.register("missing_read", MissingRead)
    assert f"{MissingRead.__module__}:{MissingRead.__qualname__}" in str(caught.value) or MissingRead.__qualname__ in str(caught.value)


GOOD_PLUGIN = '''
from dataclasses import dataclass
from typing import ClassVar

import torch

from rramc.hardware.column_solver import ColumnSolver


@dataclass(frozen=True)
class PerCellWires(ColumnSolver):
    """Ideal wires evaluated cell by cell."""

    model: ClassVar[str] = "per_cell_plugin"

    def prepare(self, cells):
        return cells

    def read(self, cells, read, generator):
        v = read.voltages
        vectors = cells.lowering.vectors(v)[:, :, None]
        blocks = []
        for a, b in cells.grid.row_blocks:
            i = cells.device.current(vectors[:, a:b], cells.g_pos[a:b]) - cells.device.current(vectors[:, a:b], cells.g_neg[a:b])
            blocks.append(cells.lowering.restore(i.sum(1), v.shape[0], cells.lowering.output_size(v)))
        return torch.stack(blocks, dim=cells.lowering.block_dim)
'''

BROKEN_PLUGIN = '''
from dataclasses import dataclass
from typing import ClassVar

from rramc.hardware.column_solver import ColumnSolver


@dataclass(frozen=True)
class NoRead(ColumnSolver):
    model: ClassVar[str] = "broken_plugin"

    def prepare(self, cells):
        return cells
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
dependencies = ["rramc"]

[tool.setuptools]
py-modules = ["{module}"]

[project.entry-points."rramc.column_solvers"]
{name} = "{module}:{cls}"
'''

PLUGIN_CHECK = '''
import json, sys, torch, rramc
from rramc.errors import TargetError
from rramc.hardware.column_solver import COLUMN_SOLVERS
from rramc.samples import models

result = {"names": COLUMN_SOLVERS.names(), "origin": COLUMN_SOLVERS.origins()["per_cell_plugin"]}
target = rramc.load_target("rram_a").with_changes(wires={"model": "per_cell_plugin"})
torch.manual_seed(0)
model, x = models.mlp(64, 16, 10).eval(), torch.rand(24, 1, 8, 8)
exe = rramc.compile(model, target, x, input_range=(0, 1))
ideal = rramc.Executable(exe.graph, target.with_changes(wires={"model": "ideal"}))
result["wires"] = type(exe.target.wires).__name__
result["difference"] = float((exe.chip(0, dtype=torch.float64)(x.double()) - ideal.chip(0, dtype=torch.float64)(x.double())).abs().max())
try:
    rramc.load_target("ideal").with_changes(wires={"model": "broken_plugin"})
except TargetError as exc:
    result["broken"] = str(exc)
from typer.testing import CliRunner
from rramc.cli import app
described = CliRunner().invoke(app, ["targets", sys.argv[1]], env={"COLUMNS": "250"})
result["targets"] = [described.exit_code, described.output]
print(json.dumps(result))
'''


def test_column_solvers_from_installed_distributions(tmp_path: Path) -> None:
    """pip-install two tiny distributions into a private directory: one solver is found by a target, the broken one refused."""
    packages = []
    for dist, module, name, cls, source in (("rramc-per-cell-wires", "rramc_per_cell_wires", "per_cell_plugin", "PerCellWires", GOOD_PLUGIN),
                                            ("rramc-broken-wires", "rramc_broken_wires", "broken_plugin", "NoRead", BROKEN_PLUGIN)):
        package = tmp_path / dist
        package.mkdir()
        (package / "pyproject.toml").write_text(PYPROJECT.format(dist=dist, module=module, name=name, cls=cls))
        (package / f"{module}.py").write_text(textwrap.dedent(source))
        packages.append(str(package))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(site), *packages], check=True, capture_output=True)
    yaml_target = tmp_path / "plugin_target.yaml"
    yaml_target.write_text("name: plugged\ndevice: {model: sinh, nonlinearity_k: 7.5}\nconductance: {g_min: 1.0e-6, g_max: 1.0e-4}\n"
                           "crossbar: {rows: 64, cols: 64, read_voltage: 1.0}\nwires: {model: per_cell_plugin}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))}
    done = subprocess.run([sys.executable, "-c", PLUGIN_CHECK, str(yaml_target)], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"ideal", "per_cell_plugin", "broken_plugin"} <= set(result["names"])
    assert result["origin"] == "rramc_per_cell_wires:PerCellWires (entry point 'per_cell_plugin' of rramc-per-cell-wires)"
    assert result["wires"] == "PerCellWires" and result["difference"] < 1e-12
    assert "column solver (wires model) 'broken_plugin' from rramc_broken_wires:NoRead (entry point 'broken_plugin' of " \
           "rramc-broken-wires) does not implement ColumnSolver: missing read" in result["broken"]
    code, described = result["targets"]  # a target file selects the plugin by name
    assert code == 0 and described.startswith("plugged:") and "wires: per_cell_plugin" in described, described


def test_a_batch_with_nan_is_refused_with_a_message() -> None:
    """A NaN would otherwise become a garbage DAC code (an index far out of range) deep in the runtime."""
    torch.manual_seed(0)
    model = models.mlp(8, 6, 3).eval()
    exe = rramc.compile(model, "rram_b", torch.rand(64, 8), input_range=(0.0, 1.0))
    bad = torch.rand(4, 8)
    bad[1, 2] = float("nan")
    with pytest.raises(RramcError, match="NaN or infinite"):
        exe(bad)
    bad[1, 2] = float("inf")
    with pytest.raises(RramcError, match="NaN or infinite"):
        exe.reference(bad)


def test_a_data_set_is_enough_to_compile_a_module(digits_train) -> None:  # type: ignore[no-untyped-def]
    """No example input needed: the calibration data shows the shapes, and declares its value range."""
    torch.manual_seed(0)
    model = models.mlp(64, 16, 10).eval()
    exe = rramc.compile(model, "ideal", calibration_data=digits_train.take(128))
    (graph_input,) = exe.graph.inputs
    assert graph_input.shape == (1, 8, 8) and graph_input.op.value_range == (0.0, 1.0)
    x = digits_train.images[:16]
    torch.testing.assert_close(exe(x), model(x), rtol=1e-5, atol=1e-6)
