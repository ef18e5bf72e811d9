"""rramc's intermediate representation: typed ops in a verified dataflow graph."""

from rramc.ir.attributes import ATTRIBUTES, Attribute, DeviceTraining, InputRange
from rramc.ir.graph import Graph, Node
from rramc.ir.ops import (
    CROSSBAR_KINDS,
    OPS,
    Add,
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm,
    Bounds,
    ChannelAffine,
    Clamp,
    Conv2d,
    CrossbarConv2d,
    CrossbarLinear,
    CrossbarOp,
    DigitalOp,
    Input,
    Linear,
    MaxPool2d,
    Op,
    Output,
    ReLU,
    Reshape,
    Shape,
    register_op,
    weight_matrix,
    ZeroPad2d,
)
from rramc.ir.parser import IRParseError, parse_graph
from rramc.ir.tensor_ops import (
    Activation, AdaptiveMaxPool2d, Affine, Binary, Concat, Interpolate, LayerNorm, MatMul, Permute, PReLU, Reduce, Slice,
    Softmax, Where,
)
from rramc.ir.printer import print_graph

__all__ = [
    "ATTRIBUTES", "Attribute", "DeviceTraining", "IRParseError", "InputRange", "parse_graph", "CROSSBAR_KINDS", "OPS", "Add", "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm", "Bounds", "ChannelAffine", "DigitalOp",
    "Clamp", "Conv2d", "CrossbarConv2d", "CrossbarLinear", "CrossbarOp", "Graph", "Input", "Linear",
    "MaxPool2d", "Node", "Op", "Output", "ReLU", "Reshape", "Shape", "print_graph", "register_op", "weight_matrix", "ZeroPad2d",
    "Activation", "AdaptiveMaxPool2d", "Affine", "Binary", "Concat", "Interpolate", "LayerNorm", "MatMul", "Permute", "PReLU",
    "Reduce", "Slice", "Softmax", "Where",
]
