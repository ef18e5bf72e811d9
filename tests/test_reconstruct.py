"""reconstruct: the network retrained through the device I-V, as the runtime computes it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import rramc
from rramc.errors import DatasetError, PassError
from rramc.frontend import import_module
from rramc.ir import Clamp, CrossbarOp, Linear
from rramc.pipeline import CompileContext, PassManager, parse_pipeline
from rramc.samples import models
from rramc.training import TrainConfig, train_classifier

RECONSTRUCT = "canonicalize,reconstruct{epochs=6,batch_size=64,lr=0.003},quantize,tile,calibrate,emit"


@pytest.fixture(scope="module")
def clipped_mlp(digits_train) -> nn.Module:  # type: ignore[no-untyped-def]
    """A conventionally trained 64-64-32-10 MLP with clipped ReLU."""
    torch.manual_seed(0)
    return train_classifier(models.mlp(64, 64, 32, 10, clipped=True), digits_train, TrainConfig(epochs=20, lr=0.05, batch_size=64))


def reconstructed_graph(model: nn.Module, target: str, data, options: str = "epochs=6,batch_size=64"):  # type: ignore[no-untyped-def]
    graph = import_module(model, data.images[:2])
    ctx = CompileContext(rramc.load_target(target), training_data=data)
    return PassManager(parse_pipeline(f"canonicalize,reconstruct{{{options}}}")).run(graph, ctx)


@pytest.mark.slow
def test_reconstruction_beats_the_naive_mapping_on_held_back_data(clipped_mlp, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    calibration = digits_train.images[:512]
    for target in ("rram_a", "rram_b"):
        naive = rramc.compile(clipped_mlp, target, calibration).run(digits_test)
        least_squares = rramc.compile(clipped_mlp, target, calibration,
                                      pipeline="canonicalize,quantize,tile,calibrate{gain=least_squares},emit").run(digits_test)
        rebuilt = rramc.compile(clipped_mlp, target, calibration, pipeline=RECONSTRUCT, training_data=digits_train).run(digits_test)
        assert least_squares.float_accuracy == naive.float_accuracy  # calibration must not touch the float network
        assert rebuilt.chip_accuracy > naive.chip_accuracy + 0.03, target
        assert rebuilt.chip_accuracy > naive.float_accuracy - 0.03, target
        assert rebuilt.reference.startswith("float, device-aware (reconstructed for")
    naive = rramc.compile(clipped_mlp, "rram_a", calibration).run(digits_test)
    least_squares = rramc.compile(clipped_mlp, "rram_a", calibration,
                                  pipeline="canonicalize,quantize,tile,calibrate{gain=least_squares},emit").run(digits_test)
    assert least_squares.chip_accuracy > naive.chip_accuracy  # a smarter calibration recovers part of the loss


@pytest.mark.slow
def test_a_network_reconstructed_for_sinh_cells_is_worse_on_linear_cells(clipped_mlp, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    """The weights really learned the device: on the ideal chip they lose to weights trained for it."""
    for_rram = reconstructed_graph(clipped_mlp, "rram_a", digits_train)
    for_ideal = reconstructed_graph(clipped_mlp, "ideal", digits_train)
    calibration = digits_train.images[:512]
    on_ideal_from_rram = rramc.compile(for_rram, "ideal", calibration).run(digits_test)
    on_ideal_from_ideal = rramc.compile(for_ideal, "ideal", calibration).run(digits_test)
    on_rram_from_rram = rramc.compile(for_rram, "rram_a", calibration).run(digits_test)
    assert on_ideal_from_rram.chip_accuracy < on_ideal_from_ideal.chip_accuracy - 0.05
    assert on_rram_from_rram.chip_accuracy > on_ideal_from_rram.chip_accuracy + 0.05


@pytest.mark.slow
def test_the_trained_model_is_what_the_chip_computes(clipped_mlp, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    """With continuous conductances and ideal converters the chip equals the trained model exactly."""
    target = rramc.load_target("rram_b").with_changes(conductance={"levels": None}, crossbar={"dac_bits": None, "adc_bits": None})
    graph = import_module(clipped_mlp, digits_train.images[:2])
    exe = rramc.compile(graph, target, digits_train.images[:256], training_data=digits_train,
                        pipeline="canonicalize,reconstruct{epochs=1,samples=300},quantize,tile,calibrate,emit")
    report = exe.run(digits_test)
    assert report.chip_accuracy == report.float_accuracy and report.agreement == 1.0
    assert all(layer.local_error < 1e-5 and layer.cumulative_error < 1e-5 for layer in report.layers)
    layers = exe.graph.nodes_of(CrossbarOp)
    assert [n.op.input_range.origin for n in layers] == ["reconstruct"] * 3
    assert layers[0].op.trained_for.target_name == "rram_b"
    assert layers[0].op.trained_for.target == target.to_mapping()  # the whole spec it was trained for, as modified


def test_relu_networks_get_clipped_activations_and_training_is_deterministic(trained_mlp, digits_train) -> None:  # type: ignore[no-untyped-def]
    first = reconstructed_graph(trained_mlp, "rram_a", digits_train, "epochs=1,samples=400,seed=3")
    second = reconstructed_graph(trained_mlp, "rram_a", digits_train, "epochs=1,samples=400,seed=3")
    other = reconstructed_graph(trained_mlp, "rram_a", digits_train, "epochs=1,samples=400,seed=4")
    clamps = first.nodes_of(Clamp)
    assert len(clamps) == 2 and all(n.op.low == 0.0 and n.op.high > 0 and n.meta["clipped_by"] == "reconstruct" for n in clamps)
    assert [n.op.input_range.scale for n in first.nodes_of(Linear)][1:] == [n.op.high for n in clamps]
    assert all(n.op.input_range.origin == "reconstruct" and not n.op.input_range.signed for n in first.nodes_of(Linear)[1:])
    for a, b, c in zip(first.nodes_of(Linear), second.nodes_of(Linear), other.nodes_of(Linear)):
        assert torch.equal(a.op.weight, b.op.weight)
        assert not torch.equal(a.op.weight, c.op.weight)


@pytest.mark.slow
def test_chip_effects_in_the_training_loop_and_conv_networks(trained_cnn, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    calibration = digits_train.images[:256]
    target = rramc.load_target("rram_a").with_changes(nonidealities={"programming_sigma": 0.03})
    naive = rramc.compile(trained_cnn, target, calibration).run(digits_test)
    pipeline = "canonicalize,reconstruct{epochs=3,batch_size=64,levels=true,converters=true,variation=true},quantize,tile,calibrate,emit"
    exe = rramc.compile(trained_cnn, target, calibration, pipeline=pipeline, training_data=digits_train)
    report = exe.run(digits_test)
    assert [layer.kind for layer in report.layers] == ["xbar.conv2d", "xbar.conv2d", "xbar.linear"]
    assert report.chip_accuracy > naive.chip_accuracy
    assert exe.graph.nodes_of(CrossbarOp)[0].op.trained_for.in_loop == ("levels", "converters", "variation")


@pytest.mark.slow
def test_from_scratch_training(digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    model = models.mlp(64, 32, 10, clipped=True)  # untrained
    exe = rramc.compile(model, "rram_a", digits_train.images[:256], training_data=digits_train,
                        pipeline="canonicalize,reconstruct{epochs=8,batch_size=32,init=scratch,lr=0.01},quantize,tile,calibrate,emit")
    assert exe.run(digits_test).chip_accuracy > 0.8


def test_reconstruct_refuses_what_it_cannot_train(digits_train) -> None:  # type: ignore[no-untyped-def]
    clipped_mlp = models.mlp(64, 16, 10, clipped=True)  # refused before any training: no need for trained weights
    example = digits_train.images[:2]
    with pytest.raises(PassError, match="reconstruct needs training data"):
        rramc.compile(clipped_mlp, "rram_a", example, pipeline="canonicalize,reconstruct,quantize,tile,calibrate,emit")
    power = rramc.load_target("rram_a").with_changes(device={"model": "power", "exponent": 0.5})
    with pytest.raises(PassError, match="device model 'power' is not differentiable with this device.exponent"):
        rramc.compile(clipped_mlp, power, example, training_data=digits_train,
                      pipeline="canonicalize,reconstruct,quantize,tile,calibrate,emit")
    with pytest.raises(PassError, match="run reconstruct before quantize"):
        rramc.compile(clipped_mlp, "rram_a", example, training_data=digits_train,
                      pipeline="canonicalize,quantize,reconstruct,tile,calibrate,emit")
    with pytest.raises(PassError, match="reconstruct option device tpu9 .*not a torch device|reconstruct option device 'tpu9' is not"):
        rramc.compile(clipped_mlp, "rram_a", example, training_data=digits_train,
                      pipeline="canonicalize,reconstruct{device=tpu9},quantize,tile,calibrate,emit")
    if not torch.cuda.is_available():
        with pytest.raises(PassError, match="reconstruct option device cuda: no CUDA device is available here"):
            rramc.compile(clipped_mlp, "rram_a", example, training_data=digits_train,
                          pipeline="canonicalize,reconstruct{device=cuda},quantize,tile,calibrate,emit")
    wrong_size = rramc.load_dataset("digits", "train")
    big = models.mlp(784, 10)
    with pytest.raises(DatasetError, match="has samples of shape \\[1, 8, 8\\] .64 values., but the network takes \\[784\\]"):
        rramc.compile(big, "rram_a", torch.rand(2, 784), training_data=wrong_size,
                      pipeline="canonicalize,reconstruct,quantize,tile,calibrate,emit")


def test_a_reconstructed_executable_keeps_the_network_as_given(clipped_mlp, digits_train, digits_test, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The run report of a reconstructed network shows the original network's accuracy too, also after save and load."""
    calibration = digits_train.images[:256]
    naive = rramc.compile(clipped_mlp, "rram_a", calibration)
    rebuilt = rramc.compile(clipped_mlp, "rram_a", calibration, training_data=digits_train,
                            pipeline="canonicalize,reconstruct{epochs=1,batch_size=64},quantize,tile,calibrate,emit")
    assert naive.original is None and rebuilt.original is not None
    assert not rebuilt.original.nodes_of(CrossbarOp) and rebuilt.original.nodes_of(Linear)
    rebuilt = rramc.load_executable(rebuilt.save(tmp_path / "rebuilt.rramx"))
    plain, report = naive.run(digits_test), rebuilt.run(digits_test)
    assert plain.original_accuracy is None
    assert report.original_accuracy == plain.float_accuracy  # the very network compiled naively
    assert report.float_accuracy != plain.float_accuracy  # its device-aware model is another network
    with torch.no_grad():
        x = digits_test.images[:8]
        assert torch.equal(rramc.Executable(rebuilt.original, rebuilt.target).reference(x), clipped_mlp(x))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine: reconstruct{device=cuda} runs where one is"))])
def test_training_on_a_device_trains_the_same_network(trained_mlp, digits_train, device: str) -> None:  # type: ignore[no-untyped-def]
    """reconstruct{device=D} trains on D what the default trains on the CPU: the same start, batches and noise draws,
    so the same weights (bit-equal on the CPU, within float32 reduction order on a GPU), written back to the CPU."""
    options = "epochs=1,samples=300,seed=3,variation=true,init=scratch"
    on_cpu = reconstructed_graph(trained_mlp, "rram_a", digits_train, options)
    there = reconstructed_graph(trained_mlp, "rram_a", digits_train, f"{options},device={device}")
    for a, b in zip(on_cpu.nodes_of(Linear), there.nodes_of(Linear)):
        assert b.op.weight.device.type == "cpu"
        if device == "cpu":
            assert torch.equal(a.op.weight, b.op.weight)
        else:
            assert torch.allclose(a.op.weight, b.op.weight, atol=2e-3), (a.name, (a.op.weight - b.op.weight).abs().max())
