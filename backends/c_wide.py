"""Emitter of the int64 accumulation path: a Conv2D or Dense whose partial sums can exceed int32
(``acc_bits == 64``, see :mod:`qcompile.backends.ir`) runs ``qc_conv_wide_s8`` (``qc_wide.c``),
a direct convolution with an int64 accumulator and the exact 64-bit requantization. Weights are
stored as plain int8 in ``(out_c, kernel_h, kernel_w, cin_group)`` order; a Dense is a 1x1
convolution of one pixel (its columns permuted when its input is stored channels-last)."""
from __future__ import annotations

import numpy as np

from qcompile.backends import ir
from qcompile.backends.c_context import EmitContext, Emitted
from qcompile.backends.c_format import c_array, c_params, spatial
from qcompile.backends.c_weights import requant_arrays

__all__ = ["emit_wide", "wide_param_bytes"]


def wide_param_bytes(op) -> int:
    """Flash of a wide layer's arrays: int8 weights, int32 bias, multiplier and shift."""
    return int(op.weight.size) + 12 * int(op.weight.shape[0])


def emit_wide(op, ctx: EmitContext, src: int, padding: tuple[int, int, int, int], note: str = "") -> Emitted:
    """``op`` (acc_bits 64) reading tensor ``src`` with ``padding`` (top, left, bottom, right): the
    conv's own, with a fused Pad folded in by the caller."""
    if isinstance(op, ir.Conv2D):
        c, h, w = spatial(ctx.shape(src))
        co, ho, wo = spatial(ctx.shape(op.output))
        cig, kh, kw = (int(d) for d in op.weight.shape[1:])
        in_cs, in_ps = ctx.strides(src)
        out_cs, out_ps = ctx.strides(op.output)
        weights = op.weight.transpose(0, 2, 3, 1)
        geometry = [[("kernel_h", kh), ("kernel_w", kw)], [("stride_h", op.stride[0]), ("stride_w", op.stride[1])],
                    [("dilation_h", op.dilation[0]), ("dilation_w", op.dilation[1])],
                    [("pad_top", padding[0]), ("pad_left", padding[1])]]
        groups = op.groups
    else:
        co, c = (int(d) for d in op.weight.shape)
        h = w = ho = wo = kh = kw = 1
        cig, in_cs, in_ps, out_cs, out_ps = c, 1, c, 1, co
        perm = ctx.layout.storage_perm(op.input)
        weights = op.weight if perm is None else op.weight[:, perm]
        if perm is not None:
            note = (note + "; " if note else "") + "columns permuted for the channels-last input"
        geometry = [[("kernel_h", 1), ("kernel_w", 1)], [("stride_h", 1), ("stride_w", 1)],
                    [("dilation_h", 1), ("dilation_w", 1)], [("pad_top", 0), ("pad_left", 0)]]
        groups = 1
    w_id, b_id, p_id = ctx.ident(op.name, "weight"), ctx.ident(op.name, "bias"), ctx.ident(op.name, "params")
    rq_defs, m_id, s_id = requant_arrays(ctx, op, op.multiplier, op.shift)
    defs = [c_array("int8_t", w_id, np.ascontiguousarray(weights),
                    f"{op.name}: int8 weights (out_c, kernel_h, kernel_w, cin_group), {op.w_bits}-bit values, "
                    "int64 accumulation path"),
            c_array("int32_t", b_id, op.bias, f"{op.name}: bias per channel"), *rq_defs]
    params = c_params("qc_conv_wide_params", p_id, [
        [("in_c", c), ("in_h", h), ("in_w", w), ("in_cs", in_cs), ("in_ps", in_ps)],
        [("out_c", co), ("out_h", ho), ("out_w", wo), ("out_cs", out_cs), ("out_ps", out_ps)],
        *geometry,
        [("groups", groups), ("cin_group", cig), ("cout_group", co // groups)],
        [("input_offset", op.input_offset), ("output_offset", op.output_offset)],
        [("act_min", op.act_min), ("act_max", op.act_max)],
        [("weight", w_id), ("bias", b_id), ("multiplier", m_id), ("shift", s_id)],
    ])
    text = "int64 accumulation (partial sums can exceed int32)" + (f"; {note}" if note else "")
    call = f"{ctx.header_comment(op, text)}\nqc_conv_wide_s8(&{p_id}, {ctx.ptr(src)}, {ctx.ptr(op.output)});"
    return Emitted((*defs, params), (call,))
