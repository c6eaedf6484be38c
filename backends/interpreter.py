"""Reference interpreter for the integer IR: the oracle every backend is checked against.

Runs a :class:`~qcompile.backends.ir.Program` on a batch of int8 inputs with numpy ``int64``
arithmetic, op by op, exactly as the C runtime specifies. Convolutions use float64 BLAS on
integer-valued operands, which is exact while every partial sum stays below 2**53; the
interpreter checks that each accumulator fits int32 (what the C kernels accumulate in) and
raises otherwise, so an overflow can never hide behind a wider oracle.
"""
from __future__ import annotations

from functools import singledispatch

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qcompile.backends import ir
from qcompile.errors import IRVerificationError
from qcompile.fixedpoint import INT32_MAX, INT32_MIN, requantize

__all__ = ["interpret", "run_op"]


def interpret(program: ir.Program, x: np.ndarray, *, keep: bool = False) -> np.ndarray | dict[int, np.ndarray]:
    """Run ``program`` on int8 input ``x`` of shape ``(N, *input.shape)`` (or one sample without N).

    Returns the int8 output batch (several outputs: ``(N, output_size)``, each flattened, in return
    order, as the C output buffer holds them), or with ``keep=True`` every tensor as ``{tensor_id: int8 array}``.
    """
    x = np.asarray(x)
    in_shape = program.input_shape
    single = x.shape == in_shape
    if single:
        x = x[None]
    if x.shape[1:] != in_shape:
        raise IRVerificationError(f"input shape {x.shape[1:]} does not match program input {in_shape}")
    if x.dtype != np.int8:
        raise IRVerificationError(f"input dtype {x.dtype}, expected int8")
    env: dict[int, np.ndarray] = {}
    for tid, offset in zip(program.inputs, program.input_offsets()):  # several: segments of the one buffer
        t = program.tensors[tid]
        env[tid] = x.reshape(len(x), -1)[:, offset:offset + t.size].reshape(len(x), *t.shape).astype(np.int64)
    for op in program.ops:
        args = [env[i] for i in op.inputs]
        out_shape = (x.shape[0], *program.tensors[op.output].shape)
        result = run_op(op, program, *args)
        env[op.output] = np.broadcast_to(result, out_shape) if not op.inputs else result.reshape(out_shape)
    if keep:
        return {k: v.astype(np.int8) for k, v in env.items()}
    if len(program.outputs) == 1:
        y = env[program.outputs[0]].astype(np.int8)
    else:  # the C output buffer: every output flattened, in return order
        y = np.concatenate([env[t].reshape(len(x), -1) for t in program.outputs], axis=1).astype(np.int8)
    return y[0] if single else y


def _clamp(v: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.clip(v, lo, hi)


def _check_acc(op, acc: np.ndarray) -> np.ndarray:
    """The accumulators, after checking they fit the op's accumulator (int32, or int64 on the
    wide path, whose bound the verifier proved; ``requantize`` then saturates them like C)."""
    if getattr(op, "acc_bits", 32) == 64:
        return acc
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        raise IRVerificationError(f"{type(op).__name__} '{op.name}': int32 accumulator overflow")
    return acc


def _gemm_dtype(op) -> type:
    """float64 BLAS (exact: int32-bounded sums are far below 2**53), or exact int64 arithmetic
    for the int64 accumulation path, whose sums may exceed 2**53."""
    return np.int64 if op.acc_bits == 64 else np.float64


def _integral(v: np.ndarray) -> np.ndarray:
    return v if v.dtype == np.int64 else np.rint(v).astype(np.int64)


def _as_nchw(x: np.ndarray) -> np.ndarray:
    """View a ``(N, C, L)`` batch as ``(N, C, 1, L)``; ``(N, C, H, W)`` unchanged."""
    return x[:, :, None, :] if x.ndim == 3 else x


def _pad_hw(x: np.ndarray, padding, value) -> np.ndarray:
    pt, pl, pb, pr = padding
    return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=value)


@singledispatch
def run_op(op, program: ir.Program, *args: np.ndarray) -> np.ndarray:
    raise IRVerificationError(f"interpreter has no rule for {type(op).__name__}")


@run_op.register
def _(op: ir.Conv2D, program, x):
    x = _as_nchw(x) + op.input_offset  # padded positions become 0 == real zero
    xp = _pad_hw(x, op.padding, 0)
    co, cig, kh, kw = op.weight.shape
    dh, dw = op.dilation
    sh, sw = op.stride
    win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, Ho, Wo, kh, kw)
    n, _, ho, wo = win.shape[:4]
    cog = co // op.groups
    dt = _gemm_dtype(op)
    w = op.weight.astype(dt)
    out = np.empty((n, co, ho, wo), dtype=np.int64)
    for g in range(op.groups):
        patch = win[:, g * cig:(g + 1) * cig].astype(dt)  # (N, cig, Ho, Wo, kh, kw)
        patch = patch.transpose(0, 2, 3, 1, 4, 5).reshape(n, ho, wo, cig * kh * kw)
        wg = w[g * cog:(g + 1) * cog].reshape(cog, cig * kh * kw)
        out[:, g * cog:(g + 1) * cog] = _integral(patch @ wg.T).transpose(0, 3, 1, 2)
    acc = _check_acc(op, out + op.bias.astype(np.int64)[None, :, None, None])
    return _output_stage(op, acc.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@run_op.register
def _(op: ir.Dense, program, x):
    dt = _gemm_dtype(op)
    xf = (x.reshape(x.shape[0], -1).astype(np.int64) + op.input_offset).astype(dt)
    acc = _integral(xf @ op.weight.astype(dt).T) + op.bias.astype(np.int64)
    return _output_stage(op, _check_acc(op, acc))


def _output_stage(op, acc: np.ndarray) -> np.ndarray:
    """int32 accumulators, channels last, to int8: fixed-point requantization, or with
    ``op.thresholds`` the count of per-channel thresholds reached; then the clamp."""
    if op.thresholds is None:
        y = requantize(acc, op.multiplier, op.shift)
    else:
        y = (acc[..., None] >= op.thresholds.astype(np.int64)).sum(axis=-1)
    return _clamp(y + op.output_offset, op.act_min, op.act_max)


@run_op.register
def _(op: ir.Add, program, x1, x2):
    a = requantize((x1 + op.input1_offset) << op.left_shift, op.input1_multiplier, op.input1_shift)
    b = requantize((x2 + op.input2_offset) << op.left_shift, op.input2_multiplier, op.input2_shift)
    y = requantize(_check_acc(op, a + b), op.output_multiplier, op.output_shift)
    return _clamp(y + op.output_offset, op.act_min, op.act_max)


@run_op.register
def _(op: ir.Mul, program, x1, x2):
    if x2.shape != x1.shape:  # per-channel broadcast over trailing dims
        x2 = x2.reshape(x2.shape[0], x2.shape[1], *([1] * (x1.ndim - 2)))
    prod = (x1 + op.input1_offset) * (x2 + op.input2_offset)
    y = requantize(prod, op.multiplier, op.shift)
    return _clamp(y + op.output_offset, op.act_min, op.act_max)


def _pool_windows(op, x, fill):
    x = _pad_hw(_as_nchw(x), op.padding, fill)
    win = sliding_window_view(x, tuple(op.kernel), axis=(2, 3))
    return win[:, :, ::op.stride[0], ::op.stride[1]]


@run_op.register
def _(op: ir.MaxPool, program, x):
    y = _pool_windows(op, x, -(1 << 40)).max(axis=(-2, -1))
    return _clamp(y, op.act_min, op.act_max)


def avgpool_divisors(op: ir.AvgPool, in_h: int, in_w: int, out_h: int, out_w: int) -> np.ndarray:
    """Divisor of each output position: window positions inside the input extended by ``count_padding``."""
    ct, cl, cb, cr = op.count_padding

    def counts(n_out, stride, pad, k, lo, hi):
        start = np.arange(n_out) * stride - pad
        return np.minimum(start + k, hi) - np.maximum(start, lo)

    rows = counts(out_h, op.stride[0], op.padding[0], op.kernel[0], -ct, in_h + cb)
    cols = counts(out_w, op.stride[1], op.padding[1], op.kernel[1], -cl, in_w + cr)
    return np.clip(rows[:, None] * cols[None, :], 0, None)


@run_op.register
def _(op: ir.AvgPool, program, x):
    acc = _pool_windows(op, x + op.input_offset, 0).sum(axis=(-2, -1))
    if op.count_padding is not None:
        h, w = _as_nchw(x).shape[2:]
        d = avgpool_divisors(op, h, w, acc.shape[2], acc.shape[3])
        y = requantize(_check_acc(op, acc), op.div_multiplier.astype(np.int64)[d], op.div_shift.astype(np.int64)[d])
        return _clamp(y + op.output_offset, op.act_min, op.act_max)
    y = requantize(_check_acc(op, acc), op.multiplier, op.shift)
    return _clamp(y + op.output_offset, op.act_min, op.act_max)


@run_op.register
def _(op: ir.GlobalAvgPool, program, x):
    acc = (x + op.input_offset).reshape(x.shape[0], x.shape[1], -1).sum(axis=-1)
    y = requantize(_check_acc(op, acc), op.multiplier, op.shift)
    return _clamp(y + op.output_offset, -128, 127)


@run_op.register
def _(op: ir.Lut, program, x):
    return op.table.astype(np.int64)[x + 128]


@run_op.register
def _(op: ir.PRelu, program, x):
    v = x + op.input_offset
    shape = (1, -1) + (1,) * (x.ndim - 2)
    pos = requantize(v, op.pos_multiplier, op.pos_shift)
    neg = requantize(v, op.neg_multiplier.reshape(shape), op.neg_shift.reshape(shape))
    return _clamp(np.where(v >= 0, pos, neg) + op.output_offset, -128, 127)


@run_op.register
def _(op: ir.Concat, program, *xs):
    blocks = [
        _clamp(requantize(x + off, m, s) + op.output_offset, -128, 127)
        for x, off, m, s in zip(xs, op.input_offsets, op.multipliers, op.shifts)
    ]
    return np.concatenate(blocks, axis=1 + op.axis)


@run_op.register
def _(op: ir.MinMax, program, x1, x2):
    a, b = (_clamp(requantize(x + off, m, s) + op.output_offset, -128, 127)
            for x, off, m, s in zip((x1, x2), op.input_offsets, op.multipliers, op.shifts))
    return np.maximum(a, b) if op.is_max else np.minimum(a, b)


@run_op.register
def _(op: ir.Constant, program):
    return op.values.astype(np.int64)[None]


@run_op.register
def _(op: ir.Resize, program, x):
    v = _as_nchw(x) + op.input_offset
    r, c = op.rows.astype(np.int64), op.cols.astype(np.int64)
    top = v[:, :, r[:, 0], :] * r[None, None, :, 2, None] + v[:, :, r[:, 1], :] * r[None, None, :, 3, None]
    acc = top[:, :, :, c[:, 0]] * c[:, 2] + top[:, :, :, c[:, 1]] * c[:, 3]
    y = requantize(_check_acc(op, acc), op.multiplier, op.shift)
    return _clamp(y + op.output_offset, -128, 127)


@run_op.register
def _(op: ir.StridedCopy, program, x):
    out_shape = program.tensors[op.output].shape
    grid = np.indices(out_shape, dtype=np.int64)
    index = []
    for k, s in enumerate(op.start):
        v = np.full(out_shape, s, dtype=np.int64)
        for d in range(len(out_shape)):
            v = v + op.steps[d][k] * grid[d]
        index.append(v)
    return x[(slice(None), *index)]


@run_op.register
def _(op: ir.Pad, program, x):
    v = _as_nchw(x)
    ih, iw = op.interior
    if ih or iw:
        n, c, h, w = v.shape
        spread = np.full((n, c, h + (h - 1) * ih, w + (w - 1) * iw), op.value, dtype=v.dtype)
        spread[:, :, ::ih + 1, ::iw + 1] = v
        v = spread
    return _pad_hw(v, op.padding, op.value)


@run_op.register
def _(op: ir.Reshape, program, x):
    return x


@run_op.register
def _(op: ir.Softmax, program, x):
    rows = x.reshape(-1, x.shape[-1])
    d = rows.max(axis=1, keepdims=True) - rows
    e = op.exp_table.astype(np.int64)[d]
    total = e.sum(axis=1, keepdims=True)
    y = ((e << 8) + total // 2) // total + op.output_offset
    return _clamp(y, -128, 127).reshape(x.shape)
