"""Emitters of the multiply-accumulate ops: Conv2D (im2col + GEMM, depthwise, the specialized
depthwise 3x3 of qc_inline.h) and Dense."""
from __future__ import annotations

import numpy as np

from qcompile.backends import ir
from qcompile.backends.c_context import EmitContext, Emitted, emit_op
from qcompile.backends.c_format import c_params, spatial
from qcompile.backends.c_layout import conv_k_pad, conv_k_seq
from qcompile.backends.c_lowbit import emit_dwconv_lb, emit_gemm_lb, is_lowbit
from qcompile.backends.c_wide import emit_wide
from qcompile.backends.c_weights import PERM4, layer_arrays, pack_gemm, pack_gemm_w8, pack_pairs, pad_channels, \
    requant_plan, w8_plan

__all__: list[str] = []  # registers rules on emit_op


def _fused_padding(ctx: EmitContext, op: ir.Conv2D) -> tuple[int, tuple[int, int, int, int]]:
    """(input tensor, padding) of a conv, with a fused Pad folded in."""
    pad = ctx.layout.fused_pads.get(op.name)
    if pad is None:
        return op.input, tuple(op.padding)
    return pad.input, tuple(a + b for a, b in zip(op.padding, pad.padding))


@emit_op.register
def _(op: ir.Conv2D, ctx: EmitContext) -> Emitted:
    src, (pt, pl, pb, pr) = _fused_padding(ctx, op)
    c, h, w = spatial(ctx.shape(src))
    co, ho, wo = spatial(ctx.shape(op.output))
    cig, kh, kw = (int(d) for d in op.weight.shape[1:])
    in_cs, in_ps = ctx.strides(src)
    out_cs, out_ps = ctx.strides(op.output)
    note = f" (+ fused {ctx.layout.fused_pads[op.name].name})" if op.name in ctx.layout.fused_pads else ""
    if op.acc_bits == 64:
        return emit_wide(op, ctx, src, (pt, pl, pb, pr), note.strip())
    geometry = [
        [("kernel_h", kh), ("kernel_w", kw)],
        [("stride_h", op.stride[0]), ("stride_w", op.stride[1])],
        [("dilation_h", op.dilation[0]), ("dilation_w", op.dilation[1])],
        [("pad_top", pt), ("pad_left", pl)],
    ]
    if is_lowbit(op):
        return _conv_lb(op, ctx, src, c, h, w, co, ho, wo, cig, kh, kw, in_cs, in_ps, out_cs, out_ps, geometry, note)
    fast, scale, bias, rq = requant_plan(op.weight, op.bias, op.multiplier, op.shift, op.input_offset,
                                          op.output_offset)
    wq = op.weight.astype(np.int64) * scale[:, None, None, None]
    p_id = ctx.ident(op.name, "params")
    if op.depthwise:
        c_pad = (c + 3) // 4 * 4
        taps = np.zeros((c_pad, kh * kw), dtype=np.int64)
        taps[:c] = wq.reshape(c, kh * kw)
        # per 4-channel block, per tap: (c0, c2) (c1, c3)
        words = pack_pairs(taps.reshape(c_pad // 4, 4, kh * kw).transpose(0, 2, 1)[..., PERM4])
        bias_p = np.zeros(c_pad, dtype=np.int64)
        bias_p[:c] = bias
        rq_p = np.zeros((c_pad, 3), dtype=np.int64)
        rq_p[:c] = rq
        defs, w_id, b_id, r_id = layer_arrays(ctx, op, words, bias_p, rq_p,
                                               f"depthwise weight (taps {kh}x{kw}, channels {c_pad})", fast)
        params = c_params("qc_dwconv_params", p_id, [
            [("channels", c), ("c_pad", c_pad), ("in_h", h), ("in_w", w), ("in_cs", in_cs), ("in_ps", in_ps)],
            [("out_h", ho), ("out_w", wo), ("out_cs", out_cs), ("out_ps", out_ps)],
            *geometry,
            [("input_offset", op.input_offset), ("act_min", op.act_min), ("act_max", op.act_max)],
            [("rq_fast", int(fast)), ("weight", w_id), ("bias", b_id), ("rq", r_id)],
        ])
        kernel = "qc_dwconv_s8"
        if (kh, kw) == (3, 3) and tuple(op.dilation) == (1, 1) and in_cs == 1 and c % 4 == 0 and fast:
            kernel = "qc_dw3x3_s8"  # qc_inline.h: specialized with this parameter block's constants
        call = f"{ctx.header_comment(op, 'depthwise' + note)}\n{kernel}(&{p_id}, {ctx.ptr(src)}, {ctx.ptr(op.output)});"
        return Emitted((*defs, params), (call,))

    groups = op.groups
    cog = co // groups
    cout_pad = cog + (cog & 1)
    k_pad = conv_k_pad(op)
    raw = op.weight.astype(np.int64).transpose(0, 2, 3, 1).reshape(co, kh * kw * cig)
    w8_shift = w8_plan(raw, op.bias, scale, fast, op.input_offset, groups, cog)
    w8 = w8_shift is not None
    # element-wise im2col (qc_conv.c) on every core: store the weights in plain k order per pair
    k_seq = conv_k_seq(op, src, ctx.program, ctx.layout.hwc_tensors)
    if w8:  # k = (ky * kw + kx) * cig + ci
        words = np.concatenate([pack_gemm_w8(raw[g * cog:(g + 1) * cog], k_pad, k_seq) for g in range(groups)])
    else:
        rows = wq.transpose(0, 2, 3, 1).reshape(co, kh * kw * cig)
        words = np.concatenate([pack_gemm(rows[g * cog:(g + 1) * cog], k_pad, k_seq) for g in range(groups)])
    bias_p = pad_channels(bias, groups, cog, cout_pad)
    # the fused pixel-pair routine (qc_conv.c): fast form with pre-scale 2, positive multipliers
    fused = w8 and fast and w8_shift == 1 and cog % 2 == 0
    rq_p = pad_channels(rq, groups, cog, cout_pad)
    defs, w_id, b_id, r_id = layer_arrays(ctx, op, words, bias_p, rq_p,
                                           f"weight (groups {groups}, channel pairs x k blocks, k_pad {k_pad})",
                                           fast, w8)
    params = c_params("qc_conv_params", p_id, [
        [("in_c", c), ("in_h", h), ("in_w", w), ("in_cs", in_cs), ("in_ps", in_ps)],
        [("out_c", co), ("out_h", ho), ("out_w", wo), ("out_cs", out_cs), ("out_ps", out_ps)],
        *geometry,
        [("groups", groups), ("cin_group", cig), ("cout_group", cog), ("cout_pad", cout_pad)],
        [("k", cig * kh * kw), ("k_pad", k_pad)],
        [("input_offset", op.input_offset), ("act_min", op.act_min), ("act_max", op.act_max)],
        [("rq_fast", int(fast)), ("w8", int(w8)), ("w8_shift", w8_shift or 0), ("fused", int(fused)), ("k_seq", int(k_seq))],
        [("weight", w_id), ("bias", b_id), ("rq", r_id)],
    ])
    call = (f"{ctx.header_comment(op, 'im2col + GEMM' + note)}\n"
            f"qc_conv_s8(&{p_id}, {ctx.ptr(src)}, {ctx.ptr(op.output)}, {ctx.scratch_ptr(op)});")
    return Emitted((*defs, params), (call,))


def _conv_lb(op: ir.Conv2D, ctx: EmitContext, src, c, h, w, co, ho, wo, cig, kh, kw, in_cs, in_ps, out_cs, out_ps,
             geometry, note) -> Emitted:
    """A Conv2D with low-bit weights, a codebook or thresholds (c_lowbit)."""
    if op.depthwise:
        c_pad = (c + 3) // 4 * 4
        dw_rows = [
            [("channels", c), ("c_pad", c_pad), ("in_h", h), ("in_w", w), ("in_cs", in_cs), ("in_ps", in_ps)],
            [("out_h", ho), ("out_w", wo), ("out_cs", out_cs), ("out_ps", out_ps)],
            *geometry,
            [("input_offset", op.input_offset), ("act_min", op.act_min), ("act_max", op.act_max)],
        ]
        return emit_dwconv_lb(ctx, op, dw_rows, c, ctx.ptr(src), note)
    groups = op.groups
    cog = co // groups
    k_pad = conv_k_pad(op)
    k_seq = conv_k_seq(op, src, ctx.program, ctx.layout.hwc_tensors)
    raw = op.weight.astype(np.int64).transpose(0, 2, 3, 1).reshape(co, kh * kw * cig)
    rows = [
        [("in_c", c), ("in_h", h), ("in_w", w), ("in_cs", in_cs), ("in_ps", in_ps)],
        [("out_c", co), ("out_h", ho), ("out_w", wo), ("out_cs", out_cs), ("out_ps", out_ps)],
        *geometry,
        [("groups", groups), ("cin_group", cig), ("cout_group", cog), ("cout_pad", cog + (cog & 1))],
        [("k", cig * kh * kw), ("k_pad", k_pad)],
        [("input_offset", op.input_offset), ("act_min", op.act_min), ("act_max", op.act_max)],
    ]
    return emit_gemm_lb(ctx, op, rows, raw, groups, cog, k_pad, k_seq, ctx.ptr(src), "im2col + GEMM, low-bit" + note)


def dense_k_seq(fi: int) -> bool:
    """A low-bit Dense runs as a 1x1 convolution of one pixel with fi channels (channel stride 1)."""
    return fi % 4 != 0


def _dense_lb(op: ir.Dense, ctx: EmitContext) -> Emitted:
    fo, fi = (int(d) for d in op.weight.shape)
    k_pad = (fi + 3) // 4 * 4
    perm = ctx.layout.storage_perm(op.input)
    raw = op.weight.astype(np.int64)
    if perm is not None:
        raw = raw[:, perm]
    rows = [
        [("in_c", fi), ("in_h", 1), ("in_w", 1), ("in_cs", 1), ("in_ps", fi)],
        [("out_c", fo), ("out_h", 1), ("out_w", 1), ("out_cs", 1), ("out_ps", fo)],
        [("kernel_h", 1), ("kernel_w", 1)],
        [("stride_h", 1), ("stride_w", 1)],
        [("dilation_h", 1), ("dilation_w", 1)],
        [("pad_top", 0), ("pad_left", 0)],
        [("groups", 1), ("cin_group", fi), ("cout_group", fo), ("cout_pad", fo + (fo & 1))],
        [("k", fi), ("k_pad", k_pad)],
        [("input_offset", op.input_offset), ("act_min", op.act_min), ("act_max", op.act_max)],
    ]
    note = "low-bit, as a 1x1 convolution" + ("; columns permuted for the channels-last input" if perm is not None else "")
    return emit_gemm_lb(ctx, op, rows, raw, 1, fo, k_pad, dense_k_seq(fi), ctx.ptr(op.input), note, perm)


@emit_op.register
def _(op: ir.Dense, ctx: EmitContext) -> Emitted:
    if op.acc_bits == 64:
        return emit_wide(op, ctx, op.input, (0, 0, 0, 0))
    if is_lowbit(op):
        return _dense_lb(op, ctx)
    fo, fi = (int(d) for d in op.weight.shape)
    k_pad = (fi + 3) // 4 * 4
    fast, scale, bias, rq = requant_plan(op.weight, op.bias, op.multiplier, op.shift, op.input_offset,
                                          op.output_offset)
    wq = op.weight.astype(np.int64) * scale[:, None]
    perm = ctx.layout.storage_perm(op.input)
    note = ""
    if perm is not None:
        wq = wq[:, perm]  # column s multiplies the element stored at position s (channels-last input)
        note = "columns permuted for the channels-last input"
    out_pad = fo + (fo & 1)
    raw = op.weight.astype(np.int64)
    if perm is not None:
        raw = raw[:, perm]
    w8_shift = w8_plan(raw, op.bias, scale, fast, op.input_offset, 1, fo)
    w8 = w8_shift is not None
    words = pack_gemm_w8(raw, k_pad) if w8 else pack_gemm(wq, k_pad)
    bias_p = pad_channels(bias, 1, fo, out_pad)
    defs, w_id, b_id, r_id = layer_arrays(ctx, op, words, bias_p, pad_channels(rq, 1, fo, out_pad),
                                           f"weight ({fo}, {fi}), channel pairs x k blocks", fast, w8)
    p_id = ctx.ident(op.name, "params")
    params = c_params("qc_fc_params", p_id, [
        [("in_features", fi), ("k_pad", k_pad), ("out_features", fo), ("out_pad", out_pad)],
        [("input_offset", op.input_offset), ("act_min", op.act_min), ("act_max", op.act_max)],
        [("rq_fast", int(fast)), ("w8", int(w8)), ("w8_shift", w8_shift or 0)],
        [("weight", w_id), ("bias", b_id), ("rq", r_id)],
    ])
    call = (f"{ctx.header_comment(op, note)}\n"
            f"qc_fc_s8(&{p_id}, {ctx.ptr(op.input)}, {ctx.ptr(op.output)});")
    return Emitted((*defs, params), (call,))
