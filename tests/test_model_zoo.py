"""The networks users bring, as small blocks written here: on the ``ideal`` target the chip equals PyTorch.

Each model is built the way its family builds it (MobileNetV2's inverted residuals, SqueezeNet's
fire modules, ResNeXt's grouped bottlenecks, DenseNet's concatenations, EfficientNet's
squeeze-and-excitation, U-Net's skips, Inception's branches, transformer encoders, a ViT's class
token, LSTM/GRU classifiers, 1-D convolutional nets) plus two that use every op the importer used
to refuse. Each goes through torch.fx and through torch.export, is compiled for ``ideal`` and run
on the chip: within 1e-5 of PyTorch, relative to the output's scale. torchvision's own
definitions are checked too where torchvision imports.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rramc
from rramc.ir import CrossbarOp


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    error = float((actual - expected).abs().max())
    assert error <= rel * float(expected.abs().max()), f"max error {error:.3g} vs scale {float(expected.abs().max()):.3g}"


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters that are not the identity, so folding them is tested."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU6) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act is not None else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2: expand 1×1, depthwise 3×3, project 1×1; a residual when the shape allows."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.block = nn.Sequential(conv_bn(cin, hidden, 1), conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                   conv_bn(hidden, cout, 1, act=None))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return x + self.block(x) if self.residual else self.block(x)


def mobilenet_v2() -> nn.Module:
    return nn.Sequential(conv_bn(3, 8, stride=2), InvertedResidual(8, 8, 1, 4), InvertedResidual(8, 12, 2, 4),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(12, 10))


class Fire(nn.Module):
    """SqueezeNet: squeeze 1×1, then 1×1 and 3×3 expansions concatenated."""

    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU(inplace=True))
        self.expand1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU(inplace=True))
        self.expand3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = self.squeeze(x)
        return torch.cat([self.expand1(x), self.expand3(x)], 1)


def squeezenet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
                         Fire(16, 8, 16), Fire(32, 8, 16), nn.Dropout(0.5), nn.Conv2d(32, 10, 1), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())


class ResNeXtBlock(nn.Module):
    """ResNeXt: a bottleneck whose 3×3 convolution is grouped (cardinality 4)."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, channels, 1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x):  # type: ignore[no-untyped-def]
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + x)


def resnext() -> nn.Module:
    return nn.Sequential(conv_bn(3, 16, act=nn.ReLU), ResNeXtBlock(16, 16), ResNeXtBlock(16, 16), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 10))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(2 * growth), nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, features):  # type: ignore[no-untyped-def]
        x = torch.cat(features, 1)
        return self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


class DenseNet(nn.Module):
    """DenseNet: every layer sees the concatenation of all earlier ones; a transition halves the map."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.layers = nn.ModuleList([DenseLayer(8, 4), DenseLayer(12, 4), DenseLayer(16, 4)])
        self.transition = nn.Sequential(nn.BatchNorm2d(20), nn.ReLU(), nn.Conv2d(20, 10, 1, bias=False), nn.AvgPool2d(2))
        self.norm, self.head = nn.BatchNorm2d(10), nn.Linear(10, 10)

    def forward(self, x):  # type: ignore[no-untyped-def]
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(features))
        x = F.relu(self.norm(self.transition(torch.cat(features, 1))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int, gate: type[nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.fc1, self.fc2, self.gate = nn.Conv2d(channels, squeezed, 1), nn.Conv2d(squeezed, channels, 1), gate()

    def forward(self, x):  # type: ignore[no-untyped-def]
        scale = self.gate(self.fc2(F.silu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * scale


class MBConv(nn.Module):
    """EfficientNet: SiLU, a depthwise convolution, squeeze-and-excitation; MobileNetV3's Hardswish variant."""

    def __init__(self, cin: int, cout: int, act: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        hidden = cin * 4
        self.expand = conv_bn(cin, hidden, 1, act=act)
        self.depthwise = conv_bn(hidden, hidden, 5, groups=hidden, act=act)
        self.se = SqueezeExcite(hidden, max(1, cin // 2), gate)
        self.project = conv_bn(hidden, cout, 1, act=None)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.project(self.se(self.depthwise(self.expand(x)))) + x


def efficientnet() -> nn.Module:
    return nn.Sequential(conv_bn(3, 8, stride=2, act=nn.SiLU), MBConv(8, 8, nn.SiLU, nn.Sigmoid), MBConv(8, 8, nn.Hardswish, nn.Hardsigmoid),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


class UNet(nn.Module):
    """U-Net: down, up by a transposed convolution and by interpolation, skips concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1, self.enc2 = conv_bn(3, 8, act=nn.ReLU), conv_bn(8, 16, act=nn.ReLU)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec1 = conv_bn(16, 8, act=nn.ReLU)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.out = nn.Conv2d(8 + 8, 2, 1)

    def forward(self, x):  # type: ignore[no-untyped-def]
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        d1 = self.dec1(torch.cat([self.up(e2), e1], dim=1))
        nearest = F.interpolate(F.avg_pool2d(d1, 2), scale_factor=2, mode="nearest")
        return self.out(torch.cat([d1, self.upsample(F.avg_pool2d(nearest, 2))], dim=1))


class Inception(nn.Module):
    """Inception: 1×1, 3×3, 5×5 and pooled branches side by side."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = conv_bn(cin, 4, 1, act=nn.ReLU)
        self.b3 = nn.Sequential(conv_bn(cin, 4, 1, act=nn.ReLU), conv_bn(4, 6, 3, act=nn.ReLU))
        self.b5 = nn.Sequential(conv_bn(cin, 2, 1, act=nn.ReLU), nn.Conv2d(2, 4, 5, padding="same"))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, 4, 1, act=nn.ReLU))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], 1)


def inception() -> nn.Module:
    return nn.Sequential(conv_bn(3, 8, act=nn.ReLU), Inception(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(18, 10))


class TransformerClassifier(nn.Module):
    """Tokens embedded, a learned position added, two encoder layers and a final norm, mean-pooled."""

    def __init__(self, norm_first: bool = True, activation: str = "gelu") -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.position = nn.Parameter(torch.randn(1, 6, 16) * 0.1)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, activation=activation, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16), enable_nested_tensor=False)
        self.head = nn.Linear(16, 10)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.encoder(self.embed(x) + self.position).mean(dim=1))


class ClassToken(nn.Module):
    """A ViT's head: a class token concatenated before the patches, attention, the token's output."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.token = nn.Parameter(torch.randn(1, 1, 16))
        self.attention = nn.MultiheadAttention(16, 4, batch_first=True)
        self.norm, self.head = nn.LayerNorm(16), nn.Linear(16, 10)

    def forward(self, x):  # type: ignore[no-untyped-def]
        tokens = torch.cat([self.token.expand(x.shape[0], -1, -1), self.embed(x)], dim=1)
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return self.head(self.norm(attended + tokens)[:, 0])


class LSTMClassifier(nn.Module):
    def __init__(self, bidirectional: bool = False, use_state: bool = False) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 12, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.use_state = use_state
        self.head = nn.Linear(12 * (2 if bidirectional and not use_state else 1), 10)

    def forward(self, x):  # type: ignore[no-untyped-def]
        out, (h, _) = self.lstm(x)
        return self.head(h[-1] if self.use_state else out[:, -1])


class GRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(8, 12, batch_first=True)
        self.head = nn.Linear(12, 10)

    def forward(self, x):  # type: ignore[no-untyped-def]
        out, _ = self.gru(x)
        return self.head(out[:, -1, :])


def conv1d_net() -> nn.Module:
    return nn.Sequential(nn.Conv1d(3, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
                         nn.Conv1d(8, 8, 3, groups=2, padding="same"), nn.ReLU(), nn.AvgPool1d(2), nn.Flatten(), nn.Linear(8 * 4, 10))


class EveryImageOp(nn.Module):
    """The image-side ops the importer used to refuse, one after another."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 4, padding="same")
        self.leaky, self.elu, self.hardswish, self.prelu = nn.LeakyReLU(0.1), nn.ELU(), nn.Hardswish(), nn.PReLU(8)
        self.drop = nn.Dropout2d(0.3)
        self.pool = nn.AdaptiveMaxPool2d(3)
        self.fc = nn.Linear(8 * 9, 10)
        self.out = nn.LogSoftmax(dim=1)

    def forward(self, x):  # type: ignore[no-untyped-def]
        y = F.gelu(self.conv1((x - 0.5) / 0.25))
        y = F.silu(self.conv2(y))
        y = torch.sigmoid(y) * torch.tanh(y) - 0.5 * y
        y = self.prelu(self.hardswish(self.elu(self.leaky(y))))
        y = self.pool(self.drop(y))
        return self.out(self.fc(y.reshape(y.shape[0], -1)))


class EveryTokenOp(nn.Module):
    """The token-side ops: Linear on 3-D activations, x @ W, LayerNorm, attention, mean, a softmax head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.mix = nn.Parameter(torch.randn(16, 16) / 4)
        self.norm = nn.LayerNorm(16)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):  # type: ignore[no-untyped-def]
        t = self.norm(F.gelu(self.embed(x)) @ self.mix)
        causal = nn.Transformer.generate_square_subsequent_mask(t.shape[1])
        attended, _ = self.attention(t, t, t, attn_mask=causal, need_weights=False)
        return F.softmax(self.head((attended * t).mean(1)), dim=-1)


ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mobilenet_v2": (mobilenet_v2, (3, 16, 16)),
    "squeezenet": (squeezenet, (3, 17, 17)),
    "resnext": (resnext, (3, 8, 8)),
    "densenet": (DenseNet, (3, 8, 8)),
    "efficientnet": (efficientnet, (3, 16, 16)),
    "unet": (UNet, (3, 8, 8)),
    "inception": (inception, (3, 8, 8)),
    "transformer_pre_norm": (TransformerClassifier, (6, 8)),
    "transformer_post_norm": (lambda: TransformerClassifier(norm_first=False, activation="relu"), (6, 8)),
    "class_token_attention": (ClassToken, (5, 8)),
    "lstm": (LSTMClassifier, (7, 8)),
    "bidirectional_lstm_state": (lambda: LSTMClassifier(bidirectional=True, use_state=True), (7, 8)),
    "gru": (GRUClassifier, (7, 8)),
    "conv1d": (conv1d_net, (3, 16)),
    "every_image_op": (EveryImageOp, (3, 8, 8)),
    "every_token_op": (EveryTokenOp, (6, 8)),
}


@pytest.mark.parametrize("front", ["fx", "export"])
@pytest.mark.parametrize("name", list(ZOO))
def test_the_chip_on_ideal_equals_pytorch(name: str, front: str) -> None:
    torch.manual_seed(0)
    factory, shape = ZOO[name]
    model = randomize_batch_norms(factory()).eval()
    x = torch.rand(8, *shape)
    source = model if front == "fx" else torch.export.export(model, (x[:2],))
    exe = rramc.compile(source, "ideal", calibration_data=x)
    assert exe.graph.nodes_of(CrossbarOp), "no layer was mapped to crossbars"
    with torch.no_grad():
        assert_close(exe(x), model(x))


def _torchvision() -> object:
    try:
        import torchvision  # noqa: F401 - a broken install (e.g. a CUDA build beside a CPU torch) raises more than ImportError
        return torchvision.models
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"torchvision does not import here ({type(exc).__name__})")


@pytest.mark.parametrize("name", ["mobilenet_v2", "squeezenet1_1", "resnext50_32x4d", "densenet121", "efficientnet_b0",
                                  "shufflenet_v2_x0_5", "mnasnet0_5", "vit_b_16"])
def test_torchvision_definitions_on_ideal(name: str) -> None:
    models = _torchvision()
    torch.manual_seed(0)
    size = 224 if name == "vit_b_16" else 64
    model = randomize_batch_norms(getattr(models, name)(num_classes=10)).eval()
    x = torch.rand(2, 3, size, size)
    exe = rramc.compile(model, "ideal", calibration_data=x)
    with torch.no_grad():
        assert_close(exe(x), model(x))
