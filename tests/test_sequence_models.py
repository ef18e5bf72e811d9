"""Attention, transformer encoders and recurrent nets on the chip.

Each network is a small classifier around one sequence module, with random weights. Imported
through torch.fx and through torch.export (as exported, and decomposed to core ATen), and compiled
for the ``ideal`` target, the chip computes what the PyTorch module computes. The unrolled
recurrent nets program their hidden-to-hidden arrays once, and what rramc cannot map is refused in
one line that names the layer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import rramc
from rramc.errors import FrontendError
from rramc.frontend import import_exported, import_module
from rramc.hardware.cost import estimate
from rramc.hardware.interpreter import Chip
from rramc.ir import CrossbarOp, Linear, MatMul, Softmax
from rramc.runtime.executable import Executable
from rramc.samples import sequence_models, train

TOKENS, FEATURES, WIDTH = 5, 6, 8


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    error = float((actual - expected).abs().max())
    assert error <= rel * float(expected.abs().max()), f"max error {error:.3g} vs scale {float(expected.abs().max()):.3g}"


class Attending(nn.Module):
    """Token embedding, one self-attention (optionally causal, through a constant mask), mean over tokens, head."""

    def __init__(self, causal: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, WIDTH)
        self.attention = nn.MultiheadAttention(WIDTH, 2, dropout=0.1, batch_first=True)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(TOKENS) if causal else None)
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, x):  # type: ignore[no-untyped-def]
        y = self.embed(x)
        attended, _ = self.attention(y, y, y, attn_mask=self.mask)
        return self.head((y + attended).mean(1))


class Encoding(nn.Module):
    """Token embedding, a transformer encoder (layer), optionally causal (a mask built from the input's
    size, with PyTorch's is_causal hint), the first token's features, head."""

    def __init__(self, encoder: nn.Module, causal: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, WIDTH)
        self.encoder, self.causal = encoder, causal
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, x):  # type: ignore[no-untyped-def]
        if not self.causal:
            return self.head(self.encoder(self.embed(x))[:, 0])
        mask = nn.Transformer.generate_square_subsequent_mask(x.size(1))
        return self.head(self.encoder(self.embed(x), mask, is_causal=True)[:, 0])


class Recurrent(nn.Module):
    """A recurrent net on the raw sequence and a head on its last output step or its last layer's final state."""

    def __init__(self, rnn: nn.RNNBase, read: str) -> None:
        super().__init__()
        self.rnn, self.read = rnn, read
        width = rnn.proj_size or rnn.hidden_size
        self.head = nn.Linear(width * (1 + rnn.bidirectional if read == "last_step" else 1), 3)

    def forward(self, x):  # type: ignore[no-untyped-def]
        if self.read == "last_step":
            out, _ = self.rnn(x)
            return self.head(out[:, -1, :] if isinstance(self.rnn, nn.LSTM) else out[:, -1])  # both spellings
        if isinstance(self.rnn, nn.LSTM):
            _, (h, c) = self.rnn(x)
            return self.head(h[-1] + c[-1])
        return self.head(self.rnn(x)[1][-1])


def layer(**options: object) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(WIDTH, 2, 16, batch_first=True, **options)  # type: ignore[arg-type]


MODELS: dict[str, Callable[[], nn.Module]] = {
    "attention": lambda: Attending(),
    "causal_attention": lambda: Attending(causal=True),
    "encoder_layer_post_norm_relu": lambda: Encoding(layer()),
    "encoder_layer_pre_norm_gelu": lambda: Encoding(layer(norm_first=True, activation="gelu")),
    "encoder_layer_gelu_module_no_bias": lambda: Encoding(layer(activation=nn.GELU(approximate="tanh"), bias=False)),
    "causal_encoder_two_layers_final_norm": lambda: Encoding(nn.TransformerEncoder(
        layer(norm_first=True), 2, norm=nn.LayerNorm(WIDTH), enable_nested_tensor=False), causal=True),
    "lstm_last_step": lambda: Recurrent(nn.LSTM(FEATURES, 7, batch_first=True), "last_step"),
    "lstm_two_layers_bidirectional_h_n": lambda: Recurrent(nn.LSTM(FEATURES, 7, 2, batch_first=True, bidirectional=True,
                                                                   dropout=0.2), "final_state"),
    "gru_two_layers_last_step": lambda: Recurrent(nn.GRU(FEATURES, 7, 2, batch_first=True), "last_step"),
    "gru_bidirectional_no_bias_h_n": lambda: Recurrent(nn.GRU(FEATURES, 7, batch_first=True, bidirectional=True, bias=False),
                                                       "final_state"),
    "rnn_tanh_h_n": lambda: Recurrent(nn.RNN(FEATURES, 7, batch_first=True), "final_state"),
}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().eval()


def inputs(batch: int = 32) -> torch.Tensor:
    return torch.randn(batch, TOKENS, FEATURES, generator=torch.Generator().manual_seed(1))


def exported(model: nn.Module, dynamic_batch: bool = False, decomposed: bool = False) -> torch.export.ExportedProgram:
    """``model`` exported on two samples; with ``dynamic_batch`` for batches of any size, as ``rramc.frontend.save_exported``
    saves a .pt2 (rramc's import is the same either way: the batch stays implicit)."""
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    program = torch.export.export(model, (inputs(2),), dynamic_shapes=shapes)
    return program.run_decompositions() if decomposed else program


@pytest.mark.parametrize("path", ["torch.fx", "torch.export"])
@pytest.mark.parametrize("name", MODELS)
def test_the_chip_on_ideal_computes_what_pytorch_does(name: str, path: str) -> None:
    model, x = build(name), inputs()
    exe = rramc.compile(model if path == "torch.fx" else exported(model), "ideal", calibration_data=x)
    with torch.no_grad():
        assert_close(exe(x), model(x))


@pytest.mark.parametrize("name", ["causal_attention", "causal_encoder_two_layers_final_norm", "lstm_two_layers_bidirectional_h_n"])
def test_core_aten_decompositions_import_as_the_same_network(name: str) -> None:
    model, x = build(name), inputs()
    program = exported(model, dynamic_batch=True, decomposed=True)
    from_fx, from_core = import_module(model, x), import_exported(program)
    assert [(n.op.kind, n.shape) for n in from_core] == [(n.op.kind, n.shape) for n in from_fx]
    assert [n.name for n in from_core.nodes_of(Linear)] == [n.name for n in from_fx.nodes_of(Linear)]
    exe = rramc.compile(program, "ideal", calibration_data=x)
    with torch.no_grad():
        assert_close(exe(x), model(x))


@pytest.mark.parametrize("name", ["causal_attention", "gru_bidirectional_no_bias_h_n"])
def test_the_executable_saves_and_loads_the_same_network(name: str, tmp_path: Path) -> None:
    model, x = build(name), inputs()
    exe = rramc.compile(model, "ideal", calibration_data=x)
    loaded = Executable.load(exe.save(tmp_path / "sequence.rramx"))
    with torch.no_grad():
        assert torch.equal(loaded(x), exe(x))


def test_attention_is_crossbar_projections_around_digital_scores() -> None:
    graph = import_module(build("causal_attention"), inputs())
    linears = {n.name: n.op for n in graph.nodes_of(Linear)}
    # q, k and v come from one read of in_proj_weight: one crossbar layer, sliced digitally
    assert list(linears) == ["embed", "attention_in_proj", "attention_out_proj", "head"]
    assert tuple(linears["attention_in_proj"].weight.shape) == (3 * WIDTH, WIDTH)
    (scores, mixed) = graph.nodes_of(MatMul)
    assert scores.shape == (2, TOKENS, TOKENS) and mixed.shape == (2, TOKENS, WIDTH // 2)
    (softmax,) = graph.nodes_of(Softmax)
    shift = graph.node(softmax.inputs[0]).op.shift  # type: ignore[attr-defined]
    later = torch.ones(TOKENS, TOKENS, dtype=torch.bool).triu(1)
    assert bool((shift[later] < -1e8).all()) and bool((shift[~later] == 0).all())  # later tokens are masked out


@pytest.mark.parametrize("path", ["torch.fx", "torch.export"])
def test_an_unrolled_lstm_programs_its_hidden_to_hidden_arrays_once(path: str) -> None:
    model, x = Recurrent(nn.LSTM(FEATURES, 7, 2, batch_first=True, bidirectional=True), "last_step").eval(), inputs()
    exe = rramc.compile(model if path == "torch.fx" else exported(model, dynamic_batch=True), "ideal", calibration_data=x)
    layers = exe.graph.nodes_of(CrossbarOp)
    hidden = [n for n in layers if n.name.endswith("_hidden")]
    # 2 layers × 2 directions; the first step starts from zero states and reads no hidden arrays
    assert len(hidden) == 4 * (TOKENS - 1)
    owners = {n.op.shares or n.name for n in hidden}  # type: ignore[attr-defined]
    assert len(owners) == 4 and all(n.op.shares in owners for n in hidden if n.name not in owners)  # type: ignore[attr-defined]
    # the arrays programmed: per layer and direction one input-to-hidden and one hidden-to-hidden matrix, and the head
    assert estimate(exe.graph, exe.target)["per_inference"]["arrays"] == 4 * 2 + 1
    chip = Chip(exe.graph, exe.target, seed=0)
    assert all(chip.layers[n.name].cells.pairs is chip.layers[n.op.shares].cells.pairs  # type: ignore[attr-defined]
               for n in hidden if n.op.shares)  # type: ignore[attr-defined]
    with torch.no_grad():
        assert_close(exe(x), model(x))


def test_a_module_called_twice_shares_its_arrays_across_calls() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(FEATURES, WIDTH)
            self.encoder = layer()
            self.head = nn.Linear(WIDTH, 3)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.head(self.encoder(self.encoder(self.embed(x)))[:, -1])

    torch.manual_seed(0)
    model, x = Twice().eval(), inputs()
    for graph in (import_module(model, x), import_exported(exported(model))):
        linears = graph.nodes_of(Linear)
        # embed, head, and per call the attention's two projections and the two feed-forward layers
        assert len(linears) == 2 + 2 * 4 and sum(n.op.shares is not None for n in linears) == 4  # type: ignore[attr-defined]


def refusal(model: nn.Module, path: str, x: torch.Tensor) -> str:
    with pytest.raises(FrontendError) as info:
        if path == "torch.fx":
            import_module(model.eval(), x, "model.pt")
        else:
            import_exported(torch.export.export(model.eval(), (x,)), "model.pt2")
    lines = [line for line in str(info.value).splitlines() if line.startswith("  - ")]
    assert len(lines) == 1, str(info.value)
    return lines[0]


class Padded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(FEATURES, 2, batch_first=True)
        self.register_buffer("padding", torch.tensor([[False] * 4 + [True]] * 2))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.attention(x, x, x, key_padding_mask=self.padding)[0]


class Weighing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(FEATURES, 2, batch_first=True)

    def forward(self, x):  # type: ignore[no-untyped-def]
        out, weights = self.attention(x, x, x)
        return out.sum(-1) + weights.sum(-1)


REFUSED: dict[str, tuple[Callable[[], nn.Module], str, str]] = {
    "lstm_time_first": (lambda: Recurrent(nn.LSTM(FEATURES, 4), "last_step"), "layer 'rnn'",
                             "LSTM with batch_first=False puts time first; rramc keeps the batch dimension first: "
                             "construct it with batch_first=True"),
    "encoder_time_first": (lambda: Encoding(nn.TransformerEncoder(nn.TransformerEncoderLayer(WIDTH, 2, 16), 2,
                                                                  enable_nested_tensor=False)),
                           "TransformerEncoder at layer 'encoder'", "TransformerEncoderLayer with batch_first=False"),
    "lstm_projection": (lambda: Recurrent(nn.LSTM(FEATURES, 6, batch_first=True, proj_size=3), "last_step"),
                        "LSTM at layer 'rnn'", "proj_size=3 is not supported"),
    "key_padding_mask": (Padded, "MultiheadAttention at layer 'attention'", "key_padding_mask is not supported"),
    "attention_weights_used": (Weighing, "layer 'attention'", "the attention weights of layer 'attention' (need_weights)"),
}


@pytest.mark.parametrize("path", ["torch.fx", "torch.export"])
@pytest.mark.parametrize("case", REFUSED)
def test_refusals_are_one_line_naming_the_layer_and_the_fix(case: str, path: str) -> None:
    factory, where, why = REFUSED[case]
    line = refusal(factory(), path, torch.randn(2, TOKENS, FEATURES))
    assert where in line and why in line, line


def test_an_exported_module_rramc_cannot_lift_is_reported_once_by_its_name() -> None:
    model = Encoding(layer(activation=nn.SiLU()))
    line = refusal(model, "torch.export", torch.randn(2, TOKENS, FEATURES))
    assert line.startswith("  - TransformerEncoderLayer at layer 'encoder': this exported call matches no TransformerEncoderLayer")
    # traced whole by torch.fx, the same module says which setting it is
    assert "the feed-forward activation SiLU is not supported" in refusal(model, "torch.fx", torch.randn(2, TOKENS, FEATURES))


def test_the_aten_ops_of_an_unsupported_module_collapse_into_one_line() -> None:
    class Similar(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.similar = nn.CosineSimilarity(-1)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.similar(x, 2 * x)

    # core ATen spells CosineSimilarity with two vector norms and two clamps rramc refuses: one line names the module
    program = torch.export.export(Similar().eval(), (torch.randn(2, TOKENS, WIDTH),)).run_decompositions()
    with pytest.raises(FrontendError) as info:
        import_exported(program, "similar.pt2")
    message = str(info.value)
    assert message.startswith("similar.pt2: 1 unsupported operation(s):\n  - aten.linalg_vector_norm.default at layer "
                              "'similar' (CosineSimilarity; fx node linalg_vector_norm)\n"), message


# --- the sample networks -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits_transformer", "digits_lstm"])
def test_the_sample_sequence_networks_train_and_compile(name: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / f"{name}.pt2"
    train.main(["--model", name, "--dataset", "digits", "--epochs", "1", "-o", str(out)])
    assert "test accuracy" in capsys.readouterr().out
    exe = rramc.compile(out, "ideal")  # calibrated on the data set the archive records
    images = rramc.load_dataset("digits", "test").images[:64]
    with torch.no_grad():
        assert_close(exe(images), torch.export.load(str(out)).module()(images))


@pytest.mark.parametrize("factory", [sequence_models.fashion_transformer, sequence_models.fashion_lstm])
def test_the_fashion_sample_networks_read_28_rows_of_28_pixels(factory: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    model, images = factory().eval(), torch.rand(16, 1, 28, 28)
    exe = rramc.compile(model, "ideal", calibration_data=images)
    assert exe.graph.inputs[0].shape == (1, 28, 28)
    with torch.no_grad():
        assert_close(exe(images), model(images))
