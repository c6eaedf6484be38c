"""Lower a calibrated, weight-quantized FX graph to the integer IR.

Every real-valued parameter becomes integers here, once: biases at scale ``s_in * s_w[c]``,
requantization multipliers ``M = s_in * s_w[c] / s_out`` as Q31 fixed point (Jacob et al. 2018,
eq. 5-7), activation clamps as int8 bounds, element-wise nonlinearities as 256-entry tables.
One small function per op kind, registered in ``_LOWERINGS``.

Quantizers learned by QAT (:mod:`qcompile.qat`, :mod:`qcompile.n2uq`) lower as follows: a
sub-8-bit range ``[qmin, qmax]`` becomes the producer's ``act_min``/``act_max`` (conv, dense,
add/sub, mul); an N2UQ activation quantizer after a conv/dense, and a uniform one with fewer than 8
bits, becomes that op's integer ``thresholds`` (:func:`quantizer_thresholds`,
:func:`accumulator_thresholds`). Anything else raises
:class:`~qcompile.errors.UnsupportedQuantizationError` naming the node.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.fx import GraphModule, Node

from qcompile.backends import ir
from qcompile.conv_transpose import zero_insert
from qcompile.errors import UnsupportedOpError, UnsupportedQuantizationError
from qcompile.fixedpoint import INT32_MAX, INT32_MIN, quantize_multiplier
from qcompile.frontend import output_structure, source_location
from qcompile.n2uq import N2UQActQuant, N2UQWeights
from qcompile.qat import LsqActQuant
from qcompile.nn import QuantizedWeights
from qcompile.piecewise import PiecewiseQuantizedWeights
from qcompile.ops import Kind, clamp_range, info, lut_function
from qcompile.quantization import tensor_qparams
from qcompile.views import view_map, view_source

__all__ = ["lower", "SOFTMAX_EXP_BITS", "accumulator_thresholds", "quantizer_thresholds", "check_quantizers"]

SOFTMAX_EXP_BITS = 22
ADD_LEFT_SHIFT = 20


class _Lowering:
    """State of one lowering run: the IR being built and the fx-node -> tensor map."""

    def __init__(self, gm: GraphModule, name: str):
        self.gm = gm
        self.name = name
        self.tensors: list[ir.Tensor] = []
        self.ops: list[ir.Op] = []
        self.env: dict[Node, int] = {}
        self.source: dict[int, str] = {}

    # -- quantization lookups ------------------------------------------------------------
    def qparams(self, node: Node) -> tuple[float, int]:
        """Quantization of the value ``node`` produces, as its consumers see it."""
        return tensor_qparams(node, self.gm)

    def output_node(self, node: Node) -> Node:
        """The node whose value the op's output tensor represents (the fused activation, if any)."""
        if info(node).fused_act is not None:
            (act,) = node.users
            return act
        return node

    def out_qparams(self, node: Node) -> tuple[float, int]:
        value = self.output_node(node)
        quants = [u for u in value.users if info(u).kind is Kind.QUANT]
        if not quants:
            raise UnsupportedOpError(f"output of '{node.name}' has no quantizer")
        return self.gm.get_submodule(quants[0].target).qparams

    def out_quantizer(self, node: Node) -> Any:
        value = self.output_node(node)
        quants = [u for u in value.users if info(u).kind is Kind.QUANT]
        return self.gm.get_submodule(quants[0].target) if quants else None

    def act_bounds(self, node: Node, scale: float, zp: int) -> tuple[int, int]:
        """int8 clamp bounds of a fused activation (TFLite CalculateActivationRangeQuantized),
        narrowed to the output quantizer's ``2**bits`` levels when it has fewer than 8 bits."""
        lo, hi = info(node).fused_act or (-math.inf, math.inf)
        qlo = -128 if math.isinf(lo) else max(-128, zp + int(round(lo / scale)))
        qhi = 127 if math.isinf(hi) else min(127, zp + int(round(hi / scale)))
        rmin, rmax = getattr(self.out_quantizer(node), "quant_range", (-128, 127))
        return max(qlo, rmin), min(qhi, rmax)

    # -- building ------------------------------------------------------------------------
    def new_tensor(self, node: Node, qparams: tuple[float, int], shape: tuple[int, ...] | None = None,
                   suffix: str = "", represents: bool = True) -> int:
        """A tensor for ``node``'s value, or with ``suffix`` an intermediate of its lowering (not its value).
        ``represents=False``: not comparable with the float value by shape (a batch-less constant)."""
        tid = len(self.tensors)
        shape = tuple(shape if shape is not None else info(node).shape[1:])
        self.tensors.append(ir.Tensor(tid, node.name + suffix, shape, float(qparams[0]), int(qparams[1])))
        if not suffix and represents:
            self.source[tid] = node.name
        return tid

    def tid(self, node: Node) -> int:
        return self.env[node]

    def t(self, node: Node) -> ir.Tensor:
        return self.tensors[self.env[node]]


def _requant(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(float(r)) for r in np.atleast_1d(np.asarray(real, dtype=np.float64))]
    return np.array([m for m, _ in pairs], dtype=np.int32), np.array([s for _, s in pairs], dtype=np.int32)


def _requant1(real: float) -> tuple[int, int]:
    return quantize_multiplier(float(real))


def _arg(node: Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1])) if len(v) == 2 else (1, int(v[0]))
    return int(v), int(v)


def _spatial(v: Any, rank: int) -> tuple[int, int]:
    """A 1-D or 2-D hyper-parameter as ``(h, w)``; 1-D ops get ``h = 1``-neutral values by caller."""
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1])) if len(v) == 2 else (int(v[0]), int(v[0]))
    return int(v), int(v)


def accumulator_thresholds(thresholds: np.ndarray, bias: np.ndarray, s_in: float, s_w: np.ndarray,
                           bias_int: np.ndarray, act_range: tuple[float, float] = (-math.inf, math.inf),
                           acc_bound: np.ndarray | None = None, name: str = "?") -> np.ndarray:
    """Integer thresholds ``t[c, k]`` on a conv/dense int32 accumulator that reproduce the N2UQ
    decisions ``clamp(y, lo, hi) >= T[k]`` of the fake-quant graph exactly (``thresholds`` is
    ``T[k]``, or ``T[c, k]`` when the quantizer learned one row per channel).

    The graph computes ``y = s_in * s_w[c] * A + b[c]`` with ``A = acc - bias_int[c]`` the integer
    dot product (``acc`` is what the int32 accumulator holds, ``bias_int`` its integer bias), then
    the fused activation's clamp to ``[lo, hi]``, then counts the thresholds reached. Since
    ``s_in * s_w[c] > 0``::

        y >= T  <=>  acc >= bias_int[c] + (T - b[c]) / (s_in * s_w[c])
                <=>  acc >= t := bias_int[c] + ceil((T - b[c]) / (s_in * s_w[c]))

    (``acc`` is an integer). ``t`` is computed in exact rational arithmetic
    (:class:`fractions.Fraction` of the float64 values of ``T``, ``b``, ``s_in``, ``s_w``), so the
    rule has no rounding error of its own: a tie ``y == T`` counts as reached on both sides. The
    clamp: ``T <= lo`` is always reached (``t = INT32_MIN``); ``T > hi`` never (``t = INT32_MAX``,
    valid because ``acc_bound``, the verifier's static bound on ``|acc|``, must then be below
    INT32_MAX). Thresholds beyond the int32 range saturate the same way. ``T`` non-decreasing
    gives ``t`` non-decreasing per channel.
    """
    lo, hi = act_range
    co = len(s_w)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim == 2 and thresholds.shape[0] != co:
        raise UnsupportedQuantizationError(f"'{name}': {thresholds.shape[0]} rows of thresholds for {co} channels")
    rows = thresholds if thresholds.ndim == 2 else np.broadcast_to(thresholds, (co, thresholds.shape[-1]))
    out = np.empty((co, rows.shape[1]), dtype=np.int64)
    s_in_q = Fraction(float(s_in))
    for c in range(co):
        unit = s_in_q * Fraction(float(s_w[c]))
        b = Fraction(float(bias[c]))
        for k, t_real in enumerate(rows[c]):
            if t_real <= lo:
                out[c, k] = INT32_MIN
            elif t_real > hi:
                out[c, k] = INT32_MAX
            else:
                q = (Fraction(float(t_real)) - b) / unit
                out[c, k] = min(max(int(bias_int[c]) + math.ceil(q), INT32_MIN), INT32_MAX)
        if acc_bound is not None and np.any(out[c] == INT32_MAX) and int(acc_bound[c]) >= INT32_MAX:
            raise UnsupportedQuantizationError(
                f"'{name}': channel {c} has a threshold no accumulator may reach, but the accumulator "
                f"bound {int(acc_bound[c])} does not exclude INT32_MAX")
    return out.astype(np.int32)


def quantizer_thresholds(quantizer: Any) -> np.ndarray | None:
    """Real input thresholds of an activation quantizer that lowers to a threshold stage, else ``None``.

    N2UQ: its learned thresholds. A uniform (LSQ) quantizer with fewer than 8 bits: the rounding
    boundaries ``s * (k - k0 - 1/2)``, ``k = 1..2**bits - 1`` (``k0 = zero_point - qmin``), since
    ``clamp(round(x / s) + zero_point, qmin, qmax) = qmin + #{k : x >= s * (k - k0 - 1/2)}`` up to
    ties. Comparisons are exact where the fixed-point multiply is not: with 2..4-bit weights and
    activations an accumulator holds a few dozen units, and the two roundings of
    ``RoundingDivideByPOT(SRDHM(acc, M0))`` then move a sizeable fraction of outputs by a level.
    """
    if isinstance(quantizer, N2UQActQuant):
        return quantizer.thresholds.numpy()
    if isinstance(quantizer, LsqActQuant) and quantizer.bits < 8:
        k = np.arange(1, (1 << quantizer.bits), dtype=np.float64)
        return quantizer.scale * (k - (quantizer.zero_point - quantizer.qmin) - 0.5)
    return None


def check_quantizers(gm: GraphModule) -> None:
    """Raise :class:`UnsupportedQuantizationError` for a quantizer the IR cannot express: N2UQ
    thresholds anywhere but after a conv/linear, or fewer than 8 bits after an op without a
    clamp stage."""
    for node in gm.graph.nodes:
        if info(node).kind is not Kind.QUANT or node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        value = node.args[0]
        prod = value.args[0] if info(value).fused_into is not None else value
        kind = info(prod).kind
        where = f"quantizer '{node.name}' of node '{prod.name}' ({kind.name.lower()}) at {source_location(prod)}"
        if isinstance(mod, N2UQActQuant):
            if kind not in (Kind.CONV, Kind.LINEAR):
                raise UnsupportedQuantizationError(
                    f"{where}: N2UQ thresholds can only replace a conv/dense requantization")
            if mod.thresholds is None:
                raise UnsupportedQuantizationError(f"{where}: N2UQ quantizer was never frozen (no thresholds)")
        elif getattr(mod, "quant_range", (-128, 127)) != (-128, 127):
            if kind not in (Kind.CONV, Kind.LINEAR, Kind.ADD, Kind.SUB, Kind.MUL):
                raise UnsupportedQuantizationError(
                    f"{where}: a {mod.bits}-bit range needs an act_min/act_max clamp, which this op lacks")


# ------------------------------------------------------------------------------- per kind


def _lower_weighted(lw: _Lowering, node: Node) -> None:
    qmod: QuantizedWeights = lw.gm.get_submodule(node.target)
    mod = qmod.module
    x = node.args[0]
    s_in, zp_in = lw.qparams(x)
    s_out, zp_out = lw.out_qparams(node)
    s_w = qmod.weight_scale.detach().double().numpy()
    w_int = qmod.weight_int.detach().numpy().astype(np.int8)
    bias = mod.bias.detach().double().numpy() if mod.bias is not None else np.zeros(w_int.shape[0])
    bias_int = np.clip(np.rint(bias / (s_in * s_w)), INT32_MIN, INT32_MAX).astype(np.int32)
    mult, shift = _requant(s_in * s_w / s_out)
    out = lw.new_tensor(lw.output_node(node), (s_out, zp_out), info(node).shape[1:])
    lo, hi = lw.act_bounds(node, s_out, zp_out)
    codebook = None
    if isinstance(qmod, (PiecewiseQuantizedWeights, N2UQWeights)):
        codebook = ir.Codebook(qmod.codes.numpy().astype(np.uint8), qmod.levels.numpy().astype(np.int8), qmod.bits)
    bound = ir.accumulator_bound(w_int, bias_int, -zp_in)
    acc_bits = 32 if int(bound.max(initial=0)) <= INT32_MAX else 64
    if acc_bits == 64:
        codebook = None  # the int64 path reads plain int8 weights (``weight`` holds the decoded levels)
    common = dict(name=node.name, input=lw.tid(x), output=out, bias=bias_int, input_offset=-zp_in,
                  output_offset=zp_out, multiplier=mult, shift=shift, act_min=lo, act_max=hi, w_bits=qmod.bits,
                  acc_bits=acc_bits)
    quantizer = lw.out_quantizer(node)
    real_thresholds = quantizer_thresholds(quantizer)
    if real_thresholds is not None and acc_bits == 64:
        raise UnsupportedQuantizationError(
            f"layer '{node.name}' at {source_location(node)}: its accumulator can exceed int32 (bound "
            f"{int(bound.max()):,}), and the N2UQ threshold stage needs int32 accumulators; narrow the layer's "
            "fan-in or use activation_quantizer='lsq' for its output")
    if real_thresholds is not None:  # out = qmin + #{k : acc >= t[c, k]}
        common.update(output_offset=quantizer.qmin, act_min=quantizer.qmin, act_max=quantizer.qmax,
                      thresholds=accumulator_thresholds(real_thresholds, bias, s_in, s_w, bias_int,
                                                        info(node).fused_act or (-math.inf, math.inf), bound,
                                                        node.name))
    if isinstance(mod, nn.Linear):
        lw.ops.append(ir.Dense(weight=w_int, codebook=codebook, **common))
        return
    one_d = isinstance(mod, nn.Conv1d)
    k = w_int.shape[2:]
    kh, kw = (1, k[0]) if one_d else k
    stride = (1, mod.stride[0]) if one_d else tuple(mod.stride)
    dilation = (1, mod.dilation[0]) if one_d else tuple(mod.dilation)
    if isinstance(mod.padding, str):
        if mod.padding == "valid":
            pads = [(0, 0)] * len(k)
        else:  # "same": PyTorch puts the odd extra element after
            pads = [(d * (kk - 1) // 2, d * (kk - 1) - d * (kk - 1) // 2) for d, kk in zip(mod.dilation, k)]
    else:
        pads = [(p, p) for p in mod.padding]
    if one_d:
        pads = [(0, 0)] + pads
    padding = (pads[0][0], pads[1][0], pads[0][1], pads[1][1])
    shape4 = (w_int.shape[0], w_int.shape[1], kh, kw)
    if codebook is not None:
        codebook = ir.Codebook(codebook.codes.reshape(shape4), codebook.levels, codebook.bits)
    lw.ops.append(ir.Conv2D(weight=w_int.reshape(shape4), stride=stride, padding=padding, dilation=dilation,
                            groups=mod.groups, codebook=codebook, **common))


def _batchless(node: Node) -> tuple[int, ...]:
    """The value's shape without the batch dim; a constant (get_attr) has none, only leading 1s to drop."""
    shape = tuple(info(node).shape)
    src = node
    while info(src).kind is Kind.QUANT:
        src = src.args[0]
    if info(src).kind is Kind.CONST:
        while len(shape) > 1 and shape[0] == 1:
            shape = shape[1:]
        return shape
    return shape[1:]


def _broadcast(lw: _Lowering, node: Node, x: Node) -> int:
    """Tensor id of operand ``x`` of the element-wise ``node``, materialized to the output's shape (a
    StridedCopy with zero steps over the broadcast dims, PyTorch's right-aligned rule) when smaller."""
    out_shape = tuple(info(node).shape[1:])
    shape = _batchless(x)
    if shape == out_shape:
        return lw.tid(x)
    lead = len(out_shape) - len(shape)
    steps = tuple(tuple(1 if (k == d - lead and shape[k] == n) else 0 for k in range(len(shape)))
                  for d, n in enumerate(out_shape))
    k = sum(1 for op in lw.ops if op.name.startswith(f"{node.name}_bcast"))
    out = lw.new_tensor(node, lw.qparams(x), out_shape, suffix=f"_bcast{k}")
    lw.ops.append(ir.StridedCopy(f"{node.name}_bcast{k}", lw.tid(x), out, (0,) * len(shape), steps))
    return out


def _lower_add_sub(lw: _Lowering, node: Node) -> None:
    a, b = node.args[:2]
    (s1, z1), (s2, z2) = lw.qparams(a), lw.qparams(b)
    s_out, zp_out = lw.out_qparams(node)
    twice_max = 2.0 * max(s1, s2)
    m1, sh1 = _requant1(s1 / twice_max)
    m2, sh2 = _requant1((-1.0 if info(node).kind is Kind.SUB else 1.0) * s2 / twice_max)
    mo, sho = _requant1(twice_max / ((1 << ADD_LEFT_SHIFT) * s_out))
    ta, tb = _broadcast(lw, node, a), _broadcast(lw, node, b)
    out = lw.new_tensor(lw.output_node(node), (s_out, zp_out), info(node).shape[1:])
    lo, hi = lw.act_bounds(node, s_out, zp_out)
    lw.ops.append(ir.Add(node.name, ta, tb, out, -z1, -z2, m1, sh1, m2, sh2, mo, sho, zp_out,
                         ADD_LEFT_SHIFT, lo, hi))


def _per_channel_operand(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
    return len(shape) >= 1 and shape[0] == out_shape[0] and int(np.prod(shape)) == shape[0] and \
        len(shape) <= len(out_shape)


def _lower_mul(lw: _Lowering, node: Node) -> None:
    a, b = node.args[:2]
    out_shape = tuple(info(node).shape[1:])
    if _batchless(a) != out_shape:  # keep the smaller operand second
        a, b = b, a
    (s1, z1), (s2, z2) = lw.qparams(a), lw.qparams(b)
    s_out, zp_out = lw.out_qparams(node)
    m, sh = _requant1(s1 * s2 / s_out)
    ta = _broadcast(lw, node, a)
    sb = _batchless(b)
    # a (C, 1, ..) operand aligned with the channels is the kernel's native per-channel broadcast
    tb = lw.tid(b) if sb == out_shape or (len(sb) == len(out_shape) and _per_channel_operand(sb, out_shape)) \
        else _broadcast(lw, node, b)
    out = lw.new_tensor(lw.output_node(node), (s_out, zp_out), out_shape)
    lo, hi = lw.act_bounds(node, s_out, zp_out)
    lw.ops.append(ir.Mul(node.name, ta, tb, out, -z1, -z2, zp_out, m, sh, lo, hi))


def _lower_minmax(lw: _Lowering, node: Node) -> None:
    a, b = node.args[:2]
    s_out, zp_out = lw.out_qparams(node)
    qs = [lw.qparams(a), lw.qparams(b)]
    reqs = [_requant1(s / s_out) for s, _ in qs]
    ta, tb = _broadcast(lw, node, a), _broadcast(lw, node, b)
    out = lw.new_tensor(node, (s_out, zp_out))
    is_max = node.target in (torch.maximum, torch.max, "maximum")
    lw.ops.append(ir.MinMax(node.name, ta, tb, out, is_max, (-qs[0][1], -qs[1][1]), (reqs[0][0], reqs[1][0]),
                            (reqs[0][1], reqs[1][1]), zp_out))


def _lower_const(lw: _Lowering, node: Node) -> None:
    value = lw.gm
    for part in node.target.split("."):
        value = getattr(value, part)
    s, zp = lw.out_qparams(node)
    shape = _batchless(node)
    q = np.clip(np.rint(value.detach().double().numpy() / s) + zp, -128, 127).astype(np.int8).reshape(shape)
    out = lw.new_tensor(node, (s, zp), shape, represents=False)
    lw.ops.append(ir.Constant(node.name, out, q))


def _pool_params(lw: _Lowering, node: Node) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]:
    """Kernel, stride and (top, left, bottom, right) padding of a pool. ``ceil_mode`` windows past the
    bottom/right edge become extra bottom/right padding, sized from the traced output shape."""
    mod = lw.gm.get_submodule(node.target) if node.op == "call_module" else None
    if mod is not None:
        kernel, stride, padding = mod.kernel_size, mod.stride, mod.padding
    else:
        kernel = _arg(node, 1, "kernel_size")
        stride = _arg(node, 2, "stride") or kernel
        padding = _arg(node, 3, "padding", 0)
    one_d = len(info(node).shape) == 3
    if one_d:
        k, s, p = (1, _pair(kernel)[1]), (1, _pair(stride)[1]), (0, _pair(padding)[1])
    else:
        k, s, p = _spatial(kernel, 2), _spatial(stride, 2), _spatial(padding, 2)
    c_in, h, w = _spatial_shape(info(node.args[0]).shape[1:])
    _, ho, wo = _spatial_shape(info(node).shape[1:])
    pb = max(p[0], (ho - 1) * s[0] + k[0] - h - p[0])
    pr = max(p[1], (wo - 1) * s[1] + k[1] - w - p[1])
    return k, s, (p[0], p[1], pb, pr)


def _spatial_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    return (shape[0], 1, shape[1]) if len(shape) == 2 else tuple(shape)


def _lower_maxpool(lw: _Lowering, node: Node) -> None:
    kernel, stride, padding = _pool_params(lw, node)
    x = node.args[0]
    out = lw.new_tensor(node, lw.qparams(x))
    lw.ops.append(ir.MaxPool(node.name, lw.tid(x), out, kernel, stride, padding))


def _avgpool_options(lw: _Lowering, node: Node) -> tuple[bool, int | None]:
    """``(count_include_pad, divisor_override)`` of an average pool."""
    mod = lw.gm.get_submodule(node.target) if node.op == "call_module" else None
    if mod is not None:
        return bool(mod.count_include_pad), getattr(mod, "divisor_override", None)
    return bool(node.kwargs.get("count_include_pad", True)), node.kwargs.get("divisor_override")


def _lower_avgpool(lw: _Lowering, node: Node) -> None:
    """Average pooling; the divisor follows PyTorch (``count_include_pad``, ``ceil_mode``,
    ``divisor_override``): fixed when every window has ``kh * kw`` counted positions, else per window
    through a table of ``kh * kw + 1`` requantization pairs (:class:`~ir.AvgPool`)."""
    kernel, stride, padding = _pool_params(lw, node)
    x = node.args[0]
    s_in, zp_in = lw.qparams(x)
    s_out, zp_out = lw.out_qparams(node)
    include_pad, override = _avgpool_options(lw, node)
    torch_pad = (padding[0], padding[1], padding[0], padding[1])
    out = lw.new_tensor(node, (s_out, zp_out))
    if override:
        m, sh = _requant1(s_in / (s_out * override))
        lw.ops.append(ir.AvgPool(node.name, lw.tid(x), out, kernel, stride, padding, -zp_in, zp_out, m, sh))
        return
    m, sh = _requant1(s_in / (s_out * kernel[0] * kernel[1]))
    if include_pad and padding == torch_pad:  # every window lies inside the padded input
        lw.ops.append(ir.AvgPool(node.name, lw.tid(x), out, kernel, stride, padding, -zp_in, zp_out, m, sh))
        return
    taps = kernel[0] * kernel[1]
    dm, ds = _requant(np.array([s_in / (s_out * d) for d in range(1, taps + 1)]))
    dm, ds = np.concatenate([[0], dm]).astype(np.int32), np.concatenate([[0], ds]).astype(np.int32)
    lw.ops.append(ir.AvgPool(node.name, lw.tid(x), out, kernel, stride, padding, -zp_in, zp_out, m, sh,
                             count_padding=torch_pad if include_pad else (0, 0, 0, 0),
                             div_multiplier=dm, div_shift=ds))


def _adaptive_window(node: Node) -> tuple[tuple[int, int], tuple[int, int, int]] | None:
    """Kernel (= stride) of an adaptive pool or spatial reduction, and the pooled ``(C, H', W')``."""
    c, h, w = _spatial_shape(info(node.args[0]).shape[1:])
    shape = info(node).shape[1:]
    if len(shape) == len(info(node.args[0]).shape[1:]):
        _, ho, wo = _spatial_shape(shape)
    else:
        ho = wo = 1  # x.amax((2, 3)) without keepdim
    return (h // ho, w // wo), (c, ho, wo) if len(info(node.args[0]).shape) == 4 else (c, wo)


def _lower_global_avgpool(lw: _Lowering, node: Node) -> None:
    x = node.args[0]
    s_in, zp_in = lw.qparams(x)
    s_out, zp_out = lw.out_qparams(node)
    kernel, pooled = _adaptive_window(node)
    if int(np.prod(pooled[1:])) > 1:  # adaptive pooling to a size dividing the input: kernel = stride
        m, sh = _requant1(s_in / (s_out * kernel[0] * kernel[1]))
        out = lw.new_tensor(node, (s_out, zp_out))
        lw.ops.append(ir.AvgPool(node.name, lw.tid(x), out, kernel, kernel, (0, 0, 0, 0), -zp_in, zp_out, m, sh))
        return
    count = int(np.prod(info(x).shape[2:]))
    m, sh = _requant1(s_in / (s_out * count))
    out = lw.new_tensor(node, (s_out, zp_out))
    lw.ops.append(ir.GlobalAvgPool(node.name, lw.tid(x), out, -zp_in, zp_out, m, sh))


def _lower_global_maxpool(lw: _Lowering, node: Node) -> None:
    """Adaptive max pooling (to sizes dividing the input) and ``amax`` over the spatial dims as a
    :class:`~ir.MaxPool` with kernel = stride; a reshape drops the pooled dims ``amax`` removes."""
    x = node.args[0]
    qp = lw.qparams(x)
    kernel, pooled = _adaptive_window(node)
    shape = tuple(info(node).shape[1:])
    pooled_t = lw.new_tensor(node, qp, pooled, suffix="" if pooled == shape else "_pooled")
    lw.ops.append(ir.MaxPool(node.name if pooled == shape else f"{node.name}_pool", lw.tid(x), pooled_t,
                             kernel, kernel, (0, 0, 0, 0)))
    if pooled != shape:
        lw.ops.append(ir.Reshape(node.name, pooled_t, lw.new_tensor(node, qp)))


def lut_table(fn: Callable[[torch.Tensor], torch.Tensor], s_in: float, zp_in: int, s_out: float, zp_out: int) -> np.ndarray:
    """``table[q + 128] = quantize(fn(dequantize(q)))`` for every int8 ``q`` (float64, round half even)."""
    q = torch.arange(-128, 128, dtype=torch.float64)
    y = fn((q - zp_in) * s_in).to(torch.float64)
    return torch.clamp(torch.round(y / s_out) + zp_out, -128, 127).numpy().astype(np.int8)


def _lower_lut(lw: _Lowering, node: Node) -> None:
    x = node.args[0] if isinstance(node.args[0], Node) else node.args[1]
    if info(node).kind is Kind.CLAMP:
        lo, hi = clamp_range(node, lw.gm)
        fn = lambda v: torch.clamp(v, lo, hi)  # noqa: E731
    else:
        fn = lut_function(node, lw.gm)
    s_in, zp_in = lw.qparams(x)
    s_out, zp_out = lw.out_qparams(node)
    out = lw.new_tensor(node, (s_out, zp_out))
    lw.ops.append(ir.Lut(node.name, lw.tid(x), out, lut_table(fn, s_in, zp_in, s_out, zp_out)))


def _lower_prelu(lw: _Lowering, node: Node) -> None:
    x = node.args[0]
    s_in, zp_in = lw.qparams(x)
    s_out, zp_out = lw.out_qparams(node)
    channels = info(node).shape[1]
    alpha = lw.gm.get_submodule(node.target).weight.detach().double().numpy()
    alpha = np.broadcast_to(alpha, (channels,))
    pm, ps = _requant1(s_in / s_out)
    nm, ns = _requant(alpha * s_in / s_out)
    out = lw.new_tensor(node, (s_out, zp_out))
    lw.ops.append(ir.PRelu(node.name, lw.tid(x), out, -zp_in, zp_out, pm, ps, nm, ns))


def _lower_cat(lw: _Lowering, node: Node) -> None:
    """``torch.cat`` on any non-batch dim; ``torch.stack`` as a cat of inputs re-viewed with a new size-1 dim."""
    xs = list(node.args[0])
    rank = len(info(node).shape)
    axis = int(_arg(node, 1, "dim", 0)) % rank - 1
    s_out, zp_out = lw.out_qparams(node)
    qs = [lw.qparams(x) for x in xs]
    reqs = [_requant1(s / s_out) for s, _ in qs]
    tids = [lw.tid(x) for x in xs]
    if node.target is torch.stack:
        for k, x in enumerate(xs):
            shape = list(info(x).shape[1:])
            shape.insert(axis, 1)
            view = lw.new_tensor(node, qs[k], tuple(shape), suffix=f"_in{k}")
            lw.ops.append(ir.Reshape(f"{node.name}_in{k}", tids[k], view))
            tids[k] = view
    out = lw.new_tensor(node, (s_out, zp_out))
    lw.ops.append(ir.Concat(node.name, tuple(tids), out, tuple(-z for _, z in qs),
                            tuple(m for m, _ in reqs), tuple(s for _, s in reqs), zp_out, axis))


def linear_taps(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
    """``(n_out, 4)`` int32 rows ``(i0, i1, a0, a1)``: output ``y`` is ``(a0 * x[i0] + a1 * x[i1]) / D`` with
    PyTorch's source coordinate as an exact fraction (see :class:`~ir.Resize`); every row sums to ``D``."""
    rows = []
    if align_corners:
        d = max(n_out - 1, 1)
        nums = [y * (n_in - 1) if n_out > 1 else 0 for y in range(n_out)]
    else:
        d = 2 * n_out
        nums = [max((2 * y + 1) * n_in - n_out, 0) for y in range(n_out)]
    for num in nums:
        i0, r = divmod(num, d)
        i0 = min(i0, n_in - 1)
        rows.append((i0, min(i0 + 1, n_in - 1), d - r, r))
    return np.array(rows, dtype=np.int32)


def _lower_resize(lw: _Lowering, node: Node) -> None:
    """Bilinear/linear interpolation as an integer :class:`~ir.Resize`; the output keeps the input's
    quantization (a convex combination stays in the input's range)."""
    from qcompile.ops import interpolation

    x = node.args[0]
    it = interpolation(node, lw.gm)
    _, h, w = _spatial_shape(info(x).shape[1:])
    _, ho, wo = _spatial_shape(info(node).shape[1:])
    rows = linear_taps(h, ho, it.align_corners) if len(info(node).shape) == 4 else \
        np.array([[0, 0, 1, 0]], dtype=np.int32)
    cols = linear_taps(w, wo, it.align_corners)
    s, zp = lw.qparams(x)
    m, sh = _requant1(1.0 / (int(rows[0, 2] + rows[0, 3]) * int(cols[0, 2] + cols[0, 3])))
    out = lw.new_tensor(node, (s, zp))
    lw.ops.append(ir.Resize(node.name, lw.tid(x), out, rows, cols, -zp, zp, m, sh))


def _lower_move(lw: _Lowering, node: Node) -> None:
    """A strided view (permute, slicing, split item...) as a :class:`~ir.StridedCopy`; one that keeps the
    row-major element order (a permute of size-1 dims, a full slice) as a free :class:`~ir.Reshape`."""
    src = view_source(node)
    m = view_map(node, lw.gm)
    qp = lw.qparams(src)
    shape = tuple(info(node).shape[1:])
    if m.is_reshape(tuple(info(src).shape[1:])):
        lw.ops.append(ir.Reshape(node.name, lw.tid(src), lw.new_tensor(node, qp)))
    elif m.out_shape == shape:
        lw.ops.append(ir.StridedCopy(node.name, lw.tid(src), lw.new_tensor(node, qp), m.start, m.steps))
    else:  # pixel shuffle, nearest upsampling: a copy to the factored shape, read back row-major
        factored = lw.new_tensor(node, qp, m.out_shape, suffix="_factored")
        lw.ops.append(ir.StridedCopy(f"{node.name}_copy", lw.tid(src), factored, m.start, m.steps))
        lw.ops.append(ir.Reshape(node.name, factored, lw.new_tensor(node, qp)))


def _lower_pad(lw: _Lowering, node: Node) -> None:
    x = node.args[0]
    if node.target is zero_insert:  # a transposed convolution's zero insertion
        (sh, sw), padding = node.args[1], node.args[2]
        qp = lw.qparams(x)
        out = lw.new_tensor(node, qp)
        lw.ops.append(ir.Pad(node.name, lw.tid(x), out, tuple(padding), qp[1], (sh - 1, sw - 1)))
        return
    if node.op == "call_module":
        pad = lw.gm.get_submodule(node.target).padding
    else:
        pad = _arg(node, 1, "pad")
    pad = tuple(int(info(p).notes["value"] if isinstance(p, Node) else p) for p in pad)  # sizes from x.size()
    left, right = pad[0], pad[1]
    top, bottom = (pad[2], pad[3]) if len(pad) >= 4 else (0, 0)
    if len(info(node).shape) == 3 and (top or bottom):
        raise UnsupportedOpError(f"padding of a 1-D tensor along channels at '{node.name}'")
    qp = lw.qparams(x)
    out = lw.new_tensor(node, qp)
    lw.ops.append(ir.Pad(node.name, lw.tid(x), out, (top, left, bottom, right), qp[1]))


def _lower_reshape(lw: _Lowering, node: Node) -> None:
    x = node.args[0]
    out = lw.new_tensor(node, lw.qparams(x))
    lw.ops.append(ir.Reshape(node.name, lw.tid(x), out))


def _swap_last(lw: _Lowering, node: Node, tid: int, axis: int, name: str, qp) -> int:
    """A StridedCopy of ``tid`` with dim ``axis`` and the last dim exchanged."""
    shape = list(lw.tensors[tid].shape)
    r = len(shape)
    perm = list(range(r))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    out = lw.new_tensor(node, qp, tuple(shape[p] for p in perm), suffix=f"_{name}")
    steps = tuple(tuple(1 if k == perm[d] else 0 for k in range(r)) for d in range(r))
    lw.ops.append(ir.StridedCopy(f"{node.name}_{name}", tid, out, (0,) * r, steps))
    return out


def _lower_softmax(lw: _Lowering, node: Node) -> None:
    """Softmax over the last dim; over another dim (MTCNN's ``Softmax(dim=1)`` on a feature map) between
    two strided copies that move that dim last and back."""
    x = node.args[0]
    s_in, zp_in = lw.qparams(x)
    s_out, zp_out = lw.out_qparams(node)
    d = np.arange(256, dtype=np.float64)
    table = np.rint((1 << SOFTMAX_EXP_BITS) * np.exp(-d * s_in)).astype(np.uint32)
    mod = lw.gm.get_submodule(node.target) if node.op == "call_module" else None
    dim = mod.dim if mod is not None else _arg(node, 1, "dim")
    rank = len(info(node).shape)
    axis = dim % rank - 1
    if axis == rank - 2:
        out = lw.new_tensor(node, (s_out, zp_out))
        lw.ops.append(ir.Softmax(node.name, lw.tid(x), out, table, zp_out))
        return
    moved = _swap_last(lw, node, lw.tid(x), axis, "to_last", (s_in, zp_in))
    soft = lw.new_tensor(node, (s_out, zp_out), lw.tensors[moved].shape, suffix="_last")
    lw.ops.append(ir.Softmax(f"{node.name}_last", moved, soft, table, zp_out))
    back = _swap_last(lw, node, soft, axis, "back", (s_out, zp_out))
    lw.ops.append(ir.Reshape(node.name, back, lw.new_tensor(node, (s_out, zp_out))))


_LOWERINGS: dict[Kind, Callable[[_Lowering, Node], None]] = {
    Kind.CONV: _lower_weighted,
    Kind.LINEAR: _lower_weighted,
    Kind.ADD: _lower_add_sub,
    Kind.SUB: _lower_add_sub,
    Kind.MUL: _lower_mul,
    Kind.MAXPOOL: _lower_maxpool,
    Kind.AVGPOOL: _lower_avgpool,
    Kind.GLOBAL_AVGPOOL: _lower_global_avgpool,
    Kind.GLOBAL_MAXPOOL: _lower_global_maxpool,
    Kind.LUT: _lower_lut,
    Kind.PRELU: _lower_prelu,
    Kind.CAT: _lower_cat,
    Kind.PAD: _lower_pad,
    Kind.RESHAPE: _lower_reshape,
    Kind.MOVE: _lower_move,
    Kind.RESIZE: _lower_resize,
    Kind.MINMAX: _lower_minmax,
    Kind.CONST: _lower_const,
    Kind.SOFTMAX: _lower_softmax,
}


def lower(gm: GraphModule, name: str = "model") -> ir.Program:
    """Translate the quantized graph ``gm`` to a verified :class:`~qcompile.backends.ir.Program`."""
    check_quantizers(gm)
    lw = _Lowering(gm, name)
    inputs: list[int] = []
    outputs: list[int] = []
    structure = None
    for node in gm.graph.nodes:
        qi = info(node)
        kind = qi.kind
        if kind is Kind.INPUT:
            lw.env[node] = lw.new_tensor(node, lw.out_qparams(node))
            inputs.append(lw.env[node])
        elif kind is Kind.QUANT:
            lw.env[node] = lw.env[node.args[0]]
        elif kind is Kind.CLAMP and qi.fused_into is not None:
            lw.env[node] = lw.env[node.args[0]]
        elif kind is Kind.CLAMP:
            _lower_lut(lw, node)
            lw.env[node] = lw.ops[-1].output
        elif kind in (Kind.SHAPE, Kind.SPLIT, Kind.PACKED):
            continue  # no tensor of its own: shape arithmetic, or the tuple a split item reads through
        elif kind is Kind.OUTPUT:
            structure, leaves = output_structure(node.args[0])
            outputs.extend(lw.env[leaf] for leaf in leaves)
        elif kind in _LOWERINGS:
            _LOWERINGS[kind](lw, node)
            lw.env[node] = lw.ops[-1].output
        else:
            raise UnsupportedOpError(f"cannot lower node '{node.name}' of kind {kind} at {source_location(node)}",
                                     nodes=[(node.name, str(node.target), source_location(node))])
    if any(t in inputs for t in outputs):
        raise UnsupportedOpError("the model returns its input unchanged; there is nothing to compile")
    if len(set(outputs)) != len(outputs):
        raise UnsupportedOpError("the model returns the same tensor twice; return it once (the C output buffer "
                                 "holds each output once)")
    program = ir.Program(name, lw.tensors, lw.ops, inputs, outputs, lw.source, structure)
    return ir.verify(program)
