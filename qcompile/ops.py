"""The operator catalogue: what each torch.fx node *is*, independent of how it was written.

``classify(node, gm)`` maps module calls (``nn.ReLU``), functions (``F.relu``, ``torch.relu``,
``operator.add``) and methods (``x.relu()``) to one :class:`Kind`. Every pass and the lowering
dispatch on the kind, never on spellings, so supporting a new spelling is a one-line change
here. Anything that maps to no kind is unsupported and reported by the frontend.
"""
from __future__ import annotations

import enum
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx import GraphModule, Node

from qcompile.conv_transpose import zero_insert
from qcompile.packing import unpack_input

__all__ = [
    "Kind", "NodeInfo", "Interpolation", "interpolation", "pixel_shuffle_factor", "classify", "info", "lut_function", "clamp_range", "module_of", "SHARES_INPUT_QUANT",
]


class Kind(enum.Enum):
    INPUT = "input"
    OUTPUT = "output"
    CONV = "conv"            # nn.Conv1d / nn.Conv2d
    LINEAR = "linear"
    BATCHNORM = "batchnorm"
    CLAMP = "clamp"          # relu / relu6 / hardtanh: clamp bounds, fusable
    LUT = "lut"              # other element-wise nonlinearities -> 256-entry table
    PRELU = "prelu"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    GLOBAL_AVGPOOL = "global_avgpool"  # adaptive avg pool (to 1 or sizes dividing the input), x.mean(spatial dims)
    GLOBAL_MAXPOOL = "global_maxpool"  # adaptive max pool (likewise), x.amax(spatial dims)
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    CAT = "cat"
    MINMAX = "minmax"        # torch.maximum / torch.minimum of two tensors
    PACKED = "packed"        # the one placeholder several inputs are packed into (trace); not lowered
    CONST = "const"          # a parameter or buffer read in forward() (self.scale): a constant tensor
    RESHAPE = "reshape"      # flatten / view / reshape / squeeze / unsqueeze / unflatten (row-major re-views)
    MOVE = "move"            # permute / transpose / slicing / narrow / select / items of a split: a strided copy
    SPLIT = "split"          # chunk / split / unbind: a tuple of views, each read through getitem (a MOVE)
    PAD = "pad"
    RESIZE = "resize"        # bilinear / linear interpolation (nearest is a MOVE)
    IDENTITY = "identity"    # dropout, nn.Identity: removed by a pass
    SOFTMAX = "softmax"
    SHAPE = "shape"          # x.size(), x.shape, getitem / arithmetic on them: no tensor value
    QUANT = "quant"          # an inserted ActQuant observer / fake-quantizer


# Kinds whose output has exactly its input's quantization (no observer of their own).
SHARES_INPUT_QUANT = frozenset({Kind.MAXPOOL, Kind.GLOBAL_MAXPOOL, Kind.RESIZE, Kind.RESHAPE, Kind.PAD, Kind.IDENTITY, Kind.MOVE, Kind.SPLIT})


@dataclass
class NodeInfo:
    """The typed analysis record of one node, kept in ``node.meta["qc"]``.

    ``shape`` excludes nothing: it is the traced shape with the batch dim. ``fused_act`` on a
    producer is the real clamp range of the activation fused into it; ``fused_into`` on an
    activation names the producer that absorbed it.
    """

    kind: Kind
    shape: tuple[int, ...] | None = None
    fused_act: tuple[float, float] | None = None
    fused_into: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def info(node: Node) -> NodeInfo:
    return node.meta["qc"]


def module_of(node: Node, gm: GraphModule) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


_LUT_MODULES: dict[type, Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]]] = {
    nn.Sigmoid: lambda m: torch.sigmoid,
    nn.Tanh: lambda m: torch.tanh,
    nn.Hardswish: lambda m: F.hardswish,
    nn.Hardsigmoid: lambda m: F.hardsigmoid,
    nn.GELU: lambda m: (lambda x: F.gelu(x, approximate=m.approximate)),
    nn.SiLU: lambda m: F.silu,
    nn.LeakyReLU: lambda m: (lambda x: F.leaky_relu(x, m.negative_slope)),
}

# Element-wise functions lowered to a lookup table, by the callable that computes them.
LUT_FUNCTIONS: dict[Any, Callable[..., torch.Tensor]] = {
    torch.sigmoid: torch.sigmoid, F.sigmoid: torch.sigmoid, "sigmoid": torch.sigmoid,
    torch.tanh: torch.tanh, F.tanh: torch.tanh, "tanh": torch.tanh,
    torch.abs: torch.abs, "abs": torch.abs,
    F.hardswish: F.hardswish, F.hardsigmoid: F.hardsigmoid,
    F.gelu: F.gelu, F.silu: F.silu, F.leaky_relu: F.leaky_relu,
}

_CLAMP_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.hardtanh, "relu", torch.clamp, "clamp"}

_MODULE_KINDS: list[tuple[type | tuple[type, ...], Kind]] = [
    ((nn.Conv1d, nn.Conv2d), Kind.CONV),
    (nn.Linear, Kind.LINEAR),
    ((nn.BatchNorm1d, nn.BatchNorm2d), Kind.BATCHNORM),
    ((nn.ReLU, nn.ReLU6, nn.Hardtanh), Kind.CLAMP),
    (tuple(_LUT_MODULES), Kind.LUT),
    (nn.PReLU, Kind.PRELU),
    ((nn.MaxPool1d, nn.MaxPool2d), Kind.MAXPOOL),
    ((nn.AvgPool1d, nn.AvgPool2d), Kind.AVGPOOL),
    ((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d), Kind.GLOBAL_AVGPOOL),
    ((nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d), Kind.GLOBAL_MAXPOOL),
    ((nn.Flatten, nn.Unflatten), Kind.RESHAPE),
    ((nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d), Kind.PAD),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity), Kind.IDENTITY),
    (nn.Softmax, Kind.SOFTMAX),
    ((nn.PixelShuffle, nn.PixelUnshuffle), Kind.MOVE),
]

_FUNCTION_KINDS: dict[Any, Kind] = {
    **{f: Kind.LUT for f in LUT_FUNCTIONS if not isinstance(f, str)},
    **{f: Kind.CLAMP for f in _CLAMP_FUNCTIONS if not isinstance(f, str)},
    F.prelu: Kind.PRELU,
    F.max_pool1d: Kind.MAXPOOL, F.max_pool2d: Kind.MAXPOOL,
    F.avg_pool1d: Kind.AVGPOOL, F.avg_pool2d: Kind.AVGPOOL,
    F.adaptive_avg_pool1d: Kind.GLOBAL_AVGPOOL, F.adaptive_avg_pool2d: Kind.GLOBAL_AVGPOOL,
    torch.mean: Kind.GLOBAL_AVGPOOL,
    F.adaptive_max_pool1d: Kind.GLOBAL_MAXPOOL, F.adaptive_max_pool2d: Kind.GLOBAL_MAXPOOL, torch.amax: Kind.GLOBAL_MAXPOOL,
    operator.add: Kind.ADD, torch.add: Kind.ADD, operator.iadd: Kind.ADD,
    operator.sub: Kind.SUB, torch.sub: Kind.SUB, operator.isub: Kind.SUB,
    operator.mul: Kind.MUL, torch.mul: Kind.MUL, operator.imul: Kind.MUL,
    torch.cat: Kind.CAT, torch.concat: Kind.CAT, torch.stack: Kind.CAT,
    torch.maximum: Kind.MINMAX, torch.minimum: Kind.MINMAX, torch.max: Kind.MINMAX, torch.min: Kind.MINMAX,
    torch.flatten: Kind.RESHAPE, torch.reshape: Kind.RESHAPE, torch.squeeze: Kind.RESHAPE,
    torch.unsqueeze: Kind.RESHAPE, torch.permute: Kind.MOVE, torch.transpose: Kind.MOVE,
    torch.swapaxes: Kind.MOVE, torch.movedim: Kind.MOVE, torch.narrow: Kind.MOVE, torch.select: Kind.MOVE,
    torch.flip: Kind.MOVE,
    torch.chunk: Kind.SPLIT, torch.split: Kind.SPLIT, torch.tensor_split: Kind.SPLIT, torch.unbind: Kind.SPLIT,
    F.pad: Kind.PAD, zero_insert: Kind.PAD, unpack_input: Kind.INPUT,
    F.pixel_shuffle: Kind.MOVE, F.pixel_unshuffle: Kind.MOVE, torch.pixel_shuffle: Kind.MOVE,
    torch.pixel_unshuffle: Kind.MOVE,
    F.dropout: Kind.IDENTITY, F.dropout1d: Kind.IDENTITY, F.dropout2d: Kind.IDENTITY,
    F.softmax: Kind.SOFTMAX, torch.softmax: Kind.SOFTMAX,
    getattr: Kind.SHAPE, operator.getitem: Kind.SHAPE, operator.floordiv: Kind.SHAPE,
}

_METHOD_KINDS: dict[str, Kind] = {
    "view": Kind.RESHAPE, "reshape": Kind.RESHAPE, "flatten": Kind.RESHAPE, "squeeze": Kind.RESHAPE,
    "unsqueeze": Kind.RESHAPE, "permute": Kind.MOVE, "transpose": Kind.MOVE, "swapaxes": Kind.MOVE,
    "movedim": Kind.MOVE, "narrow": Kind.MOVE, "select": Kind.MOVE, "flip": Kind.MOVE, "expand": Kind.MOVE,
    "expand_as": Kind.MOVE,
    "chunk": Kind.SPLIT, "split": Kind.SPLIT, "tensor_split": Kind.SPLIT, "unbind": Kind.SPLIT,
    "contiguous": Kind.MOVE,  # kept: a later .view() of a permuted tensor needs it; lowers to a free Reshape
    "relu": Kind.CLAMP, "clamp": Kind.CLAMP, "sigmoid": Kind.LUT, "tanh": Kind.LUT,
    "mean": Kind.GLOBAL_AVGPOOL, "amax": Kind.GLOBAL_MAXPOOL, "softmax": Kind.SOFTMAX,
    "add": Kind.ADD, "sub": Kind.SUB, "mul": Kind.MUL,
    "size": Kind.SHAPE, "dim": Kind.SHAPE, "maximum": Kind.MINMAX, "minimum": Kind.MINMAX, "abs": Kind.LUT,
}


def classify(node: Node, gm: GraphModule) -> Kind | None:
    """The :class:`Kind` of ``node``, or ``None`` if qcompile does not support it."""
    if node.op == "placeholder":
        return Kind.PACKED if node.meta.get("qc_packed") else Kind.INPUT
    if node.op == "output":
        return Kind.OUTPUT
    if node.op == "call_module":
        from qcompile.nn import ActQuant, QuantizedWeights  # local: nn imports observers only

        mod = gm.get_submodule(node.target)
        if isinstance(mod, ActQuant):
            return Kind.QUANT
        if isinstance(mod, QuantizedWeights):
            mod = mod.module
        if isinstance(mod, _INTERP_MODULES):
            return Kind.MOVE if interpolation(node, gm).mode == "nearest" else Kind.RESIZE
        for types, kind in _MODULE_KINDS:
            if isinstance(mod, types):
                return kind
        return None
    if node.op == "call_function":
        kind = _FUNCTION_KINDS.get(node.target)
    elif node.op == "call_method":
        kind = _METHOD_KINDS.get(node.target)
    elif node.op == "get_attr":
        return Kind.CONST
    else:
        return None
    if node.op == "call_function" and node.target in _INTERP_FUNCTIONS:
        return Kind.MOVE if interpolation(node, gm).mode == "nearest" else Kind.RESIZE
    if node.target is operator.getitem and _indexes_tensor(node):
        return Kind.MOVE  # x[:, :3], x[..., ::2], torch.chunk(x, 2, 1)[0]: a strided view, copied
    if kind in (*_BINARY, Kind.MINMAX) and not any(_is_tensor(a) for a in (*node.args, *node.kwargs.values())):
        return Kind.SHAPE  # x2.size(2) - x1.size(2): arithmetic on sizes
    if kind in _BINARY and _scalar_operand(node) is not None:
        return Kind.LUT  # x * 0.5, 1 - x, ...: an element-wise function of one tensor
    return kind


_INTERP_MODULES = (nn.Upsample,)  # UpsamplingNearest2d / UpsamplingBilinear2d are subclasses
_INTERP_FUNCTIONS = {F.interpolate: "nearest", F.upsample: "nearest", F.upsample_nearest: "nearest",
                     F.upsample_bilinear: "bilinear"}


@dataclass(frozen=True)
class Interpolation:
    """An interpolation's arguments: ``size`` or ``scale_factor`` (as given), mode, align_corners."""

    mode: str
    align_corners: bool
    size: Any
    scale_factor: Any
    antialias: bool = False


def interpolation(node: Node, gm: GraphModule | None) -> Interpolation | None:
    """The arguments of an upsampling node (``nn.Upsample``, ``F.interpolate``...), else ``None``."""
    if node.op == "call_module" and gm is not None:
        mod = gm.get_submodule(node.target)
        if isinstance(mod, _INTERP_MODULES):
            return Interpolation(mod.mode, bool(mod.align_corners), mod.size, mod.scale_factor)
        return None
    if node.op != "call_function" or node.target not in _INTERP_FUNCTIONS:
        return None
    names = ("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")
    a = dict(zip(names, node.args))
    a.update(node.kwargs)
    if node.target is F.upsample_bilinear:
        return Interpolation("bilinear", True, a.get("size"), a.get("scale_factor"))
    if node.target is F.upsample_nearest:
        return Interpolation("nearest", False, a.get("size"), a.get("scale_factor"))
    return Interpolation(a.get("mode", "nearest"), bool(a.get("align_corners") or False), a.get("size"),
                         a.get("scale_factor"), bool(a.get("antialias", False)))


def pixel_shuffle_factor(node: Node, gm: GraphModule | None) -> tuple[int, bool] | None:
    """``(r, is_unshuffle)`` of a pixel (un)shuffle node, else ``None``."""
    if node.op == "call_module" and gm is not None:
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.PixelShuffle):
            return int(mod.upscale_factor), False
        if isinstance(mod, nn.PixelUnshuffle):
            return int(mod.downscale_factor), True
        return None
    if node.op == "call_function" and node.target in (F.pixel_shuffle, torch.pixel_shuffle):
        return int(node.args[1] if len(node.args) > 1 else node.kwargs["upscale_factor"]), False
    if node.op == "call_function" and node.target in (F.pixel_unshuffle, torch.pixel_unshuffle):
        return int(node.args[1] if len(node.args) > 1 else node.kwargs["downscale_factor"]), True
    return None


def _is_tensor(a: Any) -> bool:
    qi = a.meta.get("qc") if isinstance(a, Node) else None
    return qi is not None and qi.shape is not None


def _indexes_tensor(node: Node) -> bool:
    """Whether a getitem reads a tensor (slicing) or one tensor of a split, not a shape tuple."""
    src = node.args[0]
    qi = src.meta.get("qc") if isinstance(src, Node) else None
    return qi is not None and (qi.kind is Kind.SPLIT or qi.shape is not None)


_BINARY = (Kind.ADD, Kind.SUB, Kind.MUL)
_BINARY_FN = {Kind.ADD: operator.add, Kind.SUB: operator.sub, Kind.MUL: operator.mul}


def _scalar_operand(node: Node) -> tuple[int, float] | None:
    """``(position, value)`` of the Python-number operand of a binary op, if it has one."""
    args = list(node.args[:2]) + [node.kwargs[k] for k in ("other",) if k in node.kwargs]
    for i, a in enumerate(args[:2]):
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            return i, float(a)
    return None


def lut_function(node: Node, gm: GraphModule) -> Callable[[torch.Tensor], torch.Tensor]:
    """The float function a LUT node computes (with its arguments bound)."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return _LUT_MODULES[type(mod)](mod)
    scalar = _scalar_operand(node)
    if scalar is not None:
        kind = _FUNCTION_KINDS.get(node.target) if node.op == "call_function" else _METHOD_KINDS[node.target]
        op, (pos, c) = _BINARY_FN[kind], scalar
        if "alpha" in node.kwargs:
            raise ValueError("alpha= is not supported on scalar add/sub")
        return (lambda x: op(c, x)) if pos == 0 else (lambda x: op(x, c))
    fn = LUT_FUNCTIONS[node.target]
    extra_args = tuple(node.args[1:])
    kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
    return lambda x: fn(x, *extra_args, **kwargs)


def clamp_range(node: Node, gm: GraphModule) -> tuple[float, float]:
    """Real bounds ``(lo, hi)`` of a CLAMP node (relu, relu6, hardtanh, clamp); inf when open."""
    inf = float("inf")
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.ReLU):
            return 0.0, inf
        return float(mod.min_val), float(mod.max_val)  # ReLU6 is a Hardtanh(0, 6)
    target = node.target
    if target in (torch.relu, F.relu, "relu"):
        return 0.0, inf
    if target is F.relu6:
        return 0.0, 6.0
    if target is F.hardtanh:
        args = list(node.args[1:3])
        lo = node.kwargs.get("min_val", args[0] if len(args) > 0 else -1.0)
        hi = node.kwargs.get("max_val", args[1] if len(args) > 1 else 1.0)
        return float(lo), float(hi)
    # torch.clamp / x.clamp(min, max)
    args = list(node.args[1:3])
    lo = node.kwargs.get("min", args[0] if len(args) > 0 else None)
    hi = node.kwargs.get("max", args[1] if len(args) > 1 else None)
    return (-inf if lo is None else float(lo)), (inf if hi is None else float(hi))
