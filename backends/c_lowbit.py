"""Emitters of the "lb" kernels (qc_kernels.h): Conv2D / Dense / depthwise layers whose weights are
stored below 8 bits, through a codebook, or with a threshold output stage.

Routing (:func:`is_lowbit`): a Conv2D or Dense takes this path when its weights are stored in fewer
than 8 bits (``ir.storage_bits``), it has a :class:`~qcompile.backends.ir.Codebook`, or it has
``thresholds``; every other layer keeps today's int8 kernels. Weight forms (``qc_conv_lb_s8``):

* ``W4`` -- 4-/3-bit uniform values, two per byte, channel pairs (e, o) sharing a byte (low nibble
  ``w_e``, high nibble ``w_o - (w_e < 0)``, so the signed byte is ``w_e + 16 w_o``); unpacked in the
  MAC loop with SXTB16 (see qc_kernels.h).
* ``DECODE`` -- 2-bit uniform values four per byte, or codebook codes (2, 4 or 8 bits per field),
  row-major; expanded per chunk of output channels into the int8 channel-pair layout in scratch.
* ``W8`` -- 8-bit (or 5..7-bit) values in today's int8 channel-pair layout, with a threshold stage.

Channels-last layers with the fast requantization (pre-scale 2) run whole pixel pairs in one assembly
routine: ``qc_w4_pair_full/clamp`` for W4, ``qc_w8_pair_full/clamp`` on the expanded int8 pairs.
Channels-last threshold layers (1..4-bit outputs, levels unclamped) do the same with the count in
registers: the routine :func:`threshold_pair` names for the layer (``qc_w4_pair_thr16_15`` ...).

Depthwise layers on this path store row-major ``(C, taps)`` fields: expanded once into scratch and run
by the specialized ``qc_dw3x3_s8`` (3x3, channels-last, fast form) or ``qc_dw3x3_thr_s8`` (the same
kernel with a threshold output stage), else by ``qc_dwconv_s8`` per channel chunk
(``qc_dwconv_lb_s8``). Threshold layers use unscaled accumulators (exact form, no pre-scale) and count
the thresholds reached with ``qc_threshold_count`` / ``qc_threshold_count16`` (branch-free halving
steps for the 1, 3, 7 or 15 thresholds of 1..4-bit outputs, binary search otherwise) in the store
:func:`threshold_store` names per layer, so models without threshold layers link none. They store
no requantization records, and their threshold rows as int16 when the rows, clipped to the reachable
accumulator range, fit (:func:`threshold_table`), else int32.

Scratch (RAM) cost: a DECODE layer's expansion takes at most :data:`DECODE_BUDGET` bytes (channels per
chunk chosen to fit), a depthwise layer's ``4 * taps`` bytes per channel up to the same budget (a
threshold layer off the specialized 3x3 kernel: ``8 * taps`` bytes, one 4-channel block).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompile.backends import ir
from qcompile.backends.c_context import EmitContext, Emitted
from qcompile.backends.c_format import c_array, c_params, rq_array, words_array
from qcompile.backends.c_weights import INT32_MAX, pack_gemm, pack_gemm_w8, pad_channels, requant_plan, w8_plan

__all__ = ["DECODE_BUDGET", "GemmPlan", "THRESHOLD_PAIR_LENGTHS", "threshold_pair", "decode_scratch", "dw3x3_specialized", "dw_plan", "emit_dwconv_lb", "emitted_param_bytes", "emit_gemm_lb", "gemm_plan",
           "is_lowbit", "lowbit_scratch", "pack_fields", "pack_w4", "threshold_bytes", "threshold_table"]

DECODE_BUDGET = 8192  # bytes of scratch for the int8 expansion of a DECODE layer's channel chunk


def is_lowbit(op) -> bool:
    return isinstance(op, (ir.Conv2D, ir.Dense)) and (
        op.codebook is not None or ir.storage_bits(op.w_bits) < 8 or op.thresholds is not None)


def pack_fields(values: np.ndarray, bits: int) -> np.ndarray:
    """Fields (non-negative, < 2**bits) -> bytes, field i at bit i * bits (low bits first)."""
    v = np.asarray(values, dtype=np.int64).ravel()
    per = 8 // bits
    v = np.concatenate([v, np.zeros((-len(v)) % per, dtype=np.int64)]).reshape(-1, per)
    return (v << (bits * np.arange(per))).sum(axis=1).astype(np.uint8)


def pack_w4(w: np.ndarray, k_pad: int, k_seq: bool) -> np.ndarray:
    """``(n, K)`` values in [-8, 7] (odd-channel values in [-7, 7]) -> W4 words (one per channel pair
    and 4-block): byte b holds k = order[b], low nibble w_e, high nibble w_o - (w_e < 0)."""
    n, k = w.shape
    n_pad = n + (n & 1)
    full = np.zeros((n_pad, k_pad), dtype=np.int64)
    full[:n, :k] = w
    e, o = full[0::2], full[1::2]
    byte = (e & 15) | (((o - (e < 0)) & 15) << 4)
    order = [0, 2, 1, 3] if k_seq else [0, 1, 2, 3]
    byte = byte.reshape(n_pad // 2, k_pad // 4, 4)[..., order]
    return (byte << np.array([0, 8, 16, 24])).sum(axis=-1).reshape(-1).astype(np.uint64)


def _exact(op) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = op.multiplier.astype(np.int64)
    rq = np.stack([m, op.shift.astype(np.int64), np.full_like(m, op.output_offset)], axis=1)
    return np.ones_like(m), op.bias.astype(np.int64), rq


@dataclass
class GemmPlan:
    mode: str            # "w4", "decode", "w8"
    fast: bool
    shift: int           # pre-scale of the accumulators (w8_shift)
    w8: bool             # int8 channel-pair layout (else int16 pairs) for "w8" / "decode"
    bias: np.ndarray
    rq: np.ndarray
    chunk: int           # "decode": channels expanded per pass
    field_bits: int      # "decode": bits per stored field


def gemm_plan(op, raw: np.ndarray, groups: int, cog: int, k_pad: int) -> GemmPlan:
    """Weight form, requantization form and scratch chunk of a low-bit Conv2D/Dense; ``raw`` is the
    ``(Co, K)`` int8 weight (decoded levels for a codebook) in the kernel's k order."""
    fast, scale, bias, rq = requant_plan(op.weight, op.bias, op.multiplier, op.shift, op.input_offset,
                                          op.output_offset)
    if op.thresholds is not None or (fast and (len(set(scale.tolist())) != 1 or int(scale[0]) > 256)):
        fast = False
        scale, bias, rq = _exact(op)
    shift = int(scale[0]).bit_length() - 1 if fast else 0
    xmax = max(abs(-128 + op.input_offset), abs(127 + op.input_offset))
    row = np.abs(raw.astype(np.int64)).sum(axis=1) * xmax if raw.size else np.zeros(1, dtype=np.int64)
    sb = ir.storage_bits(op.w_bits)
    cout_pad = cog + (cog & 1)
    if op.codebook is None and sb == 4 and int(row.max(initial=0)) * 17 <= INT32_MAX:
        return GemmPlan("w4", fast, shift, False, bias, rq, cout_pad, 4)
    w8 = w8_plan(raw, op.bias, scale, fast, op.input_offset, groups, cog) is not None
    if not w8 and fast:
        fast, shift = False, 0
        scale, bias, rq = _exact(op)
        w8 = w8_plan(raw, op.bias, scale, False, op.input_offset, groups, cog) is not None
    if op.codebook is None and sb == 8:
        return GemmPlan("w8", fast, shift, w8, bias, rq, cout_pad, 8)
    field_bits = ir.storage_bits(op.codebook.bits) if op.codebook is not None else sb
    per_channel = k_pad * (1 if w8 else 2)
    chunk = cout_pad if cout_pad * per_channel <= DECODE_BUDGET else max(2, DECODE_BUDGET // per_channel // 2 * 2)
    return GemmPlan("decode", fast, shift, w8, bias, rq, chunk, field_bits)


def decode_scratch(plan: GemmPlan, k_pad: int) -> int:
    return plan.chunk * k_pad * (1 if plan.w8 else 2) if plan.mode == "decode" else 0


def threshold_table(op) -> tuple[np.ndarray, int]:
    """The threshold rows as stored and their width in bits (16 or 32): each row clipped to its
    channel's reachable accumulator range ``[lo, hi]`` (:func:`ir.accumulator_range`), stored as
    int16 when every clipped value fits, else int32.

    Clipping is exact: the accumulator never leaves ``[lo, hi]``, so a threshold ``<= lo`` is reached
    by every accumulator, as ``lo`` is, and one ``> hi`` by none, as ``hi + 1`` is. It turns the
    lowering's ``INT32_MIN`` / ``INT32_MAX`` sentinels (clamped-away levels) into values near the
    data; the thresholds a low-bit layer reaches are a few hundred units (they are within the
    accumulator range of 2..4-bit weights on 2..4-bit activations), so such layers store 2 bytes per
    threshold; an 8-bit-weight layer on 8-bit inputs (a first layer) usually needs int32."""
    lo, hi = ir.accumulator_range(op.weight, op.bias, op.input_offset)
    rows = np.clip(op.thresholds.astype(np.int64), lo[:, None], hi[:, None] + 1)
    fits16 = rows.size == 0 or (int(rows.min()) >= -(1 << 15) and int(rows.max()) < (1 << 15))
    return rows, 16 if fits16 else 32


def threshold_bytes(op) -> int:
    """Flash bytes of a layer's threshold table as the C backend stores it (0 without one)."""
    if op.thresholds is None:
        return 0
    c_out = int(op.thresholds.shape[0])
    if not (isinstance(op, ir.Conv2D) and op.depthwise):  # GEMM rows: channel pairs per group
        groups = op.groups if isinstance(op, ir.Conv2D) else 1
        cog = c_out // groups
        c_out = groups * (cog + (cog & 1))
    return c_out * int(op.thresholds.shape[1]) * threshold_table(op)[1] // 8


def _thresholds(ctx: EmitContext, op, groups: int, cog: int, cout_pad: int) -> tuple[list[str], list[tuple[str, object]]]:
    """The threshold array and the lb parameter fields that point at it."""
    t = op.thresholds
    if t is None:
        return [], [("thresholds", "NULL"), ("threshold_bits", 0), ("n_thresholds", 0)]
    ident = ctx.ident(op.name, "thresholds")
    rows, bits = threshold_table(op)
    rows = pad_channels(rows, groups, cog, cout_pad)
    array = c_array(f"int{bits}_t", ident, rows, f"{op.name}: thresholds ({t.shape[1]} per (padded) channel, "
                                                  f"non-decreasing, clipped to the reachable accumulator range); "
                                                  f"out = offset + #reached")
    return [array], [("thresholds", ident), ("threshold_bits", bits), ("n_thresholds", int(t.shape[1]))]


def _rq(ctx: EmitContext, op, rows: np.ndarray, defs: list[str]) -> str:
    """Append the requantization records ``rows`` and return their identifier; a layer with a
    threshold stage never requantizes, so it stores none (``NULL``)."""
    if op.thresholds is not None:
        return "NULL"
    r_id = ctx.ident(op.name, "rq")
    defs.append(rq_array(r_id, rows, f"{op.name}: requantization {{multiplier, shift, round}} per (padded) channel"))
    return r_id


def _stored(op, perm_cols=None, kperm=None) -> np.ndarray:
    """The stored fields of a DECODE layer, ``(Co, K)`` in the kernel's k order: codes or values."""
    src = op.codebook.codes if op.codebook is not None else op.weight
    a = src.astype(np.int64)
    if a.ndim == 4:
        a = a.transpose(0, 2, 3, 1)
    a = a.reshape(a.shape[0], -1)
    if perm_cols is not None:
        a = a[:, perm_cols]
    if op.codebook is None:
        a = a & ((1 << ir.storage_bits(op.w_bits)) - 1)
    return a


def _codebook_tables(ctx: EmitContext, op, defs: list[str]) -> tuple[str, str]:
    """Append the codebook's level tables as stored (:meth:`ir.Codebook.shared_tables`): the
    distinct rows and, when channels share rows, a uint8 row index per channel. Returns the
    identifiers of both (``"NULL"`` for the index when every channel has its own row)."""
    rows, index = op.codebook.shared_tables()
    n = 1 << op.codebook.bits
    levels_id = ctx.ident(op.name, "levels")
    if index is None:
        defs.append(c_array("int8_t", levels_id, rows, f"{op.name}: codebook, {n} int8 levels per output channel"))
        return levels_id, "NULL"
    rows_id = ctx.ident(op.name, "level_rows")
    defs.append(c_array("int8_t", levels_id, rows, f"{op.name}: codebook, {len(rows)} distinct tables of {n} "
                                                   f"int8 levels shared by the {len(index)} output channels"))
    defs.append(c_array("uint8_t", rows_id, index, f"{op.name}: codebook table of each output channel"))
    return levels_id, rows_id


def gemm_lb_parts(ctx: EmitContext, op, raw: np.ndarray, groups: int, cog: int, k_pad: int, k_seq: bool,
                  perm=None) -> tuple[list[str], GemmPlan, list[tuple[str, object]], str, str, str]:
    """Arrays of a low-bit GEMM layer: (definitions, plan, lb fields, weight id, bias id, rq id)."""
    plan = gemm_plan(op, raw, groups, cog, k_pad)
    cout_pad = cog + (cog & 1)
    defs: list[str] = []
    w_id = "NULL"
    packed_id, levels_id, rows_id = "NULL", "NULL", "NULL"
    form = "fast requantization" if plan.fast else ("thresholds" if op.thresholds is not None else "exact requantization")
    if plan.mode == "w4":
        words = np.concatenate([pack_w4(raw[g * cog:(g + 1) * cog], k_pad, k_seq) for g in range(groups)])
        w_id = ctx.ident(op.name, "weight")
        defs.append(words_array(w_id, words, f"{op.name}: {op.w_bits}-bit weights, two per byte (W4 channel "
                                             f"pairs x k blocks, k_pad {k_pad}), {form}"))
    elif plan.mode == "w8":
        w_id = ctx.ident(op.name, "weight")
        if plan.w8:
            words = np.concatenate([pack_gemm_w8(raw[g * cog:(g + 1) * cog], k_pad, k_seq) for g in range(groups)])
        else:
            words = np.concatenate([pack_gemm(raw[g * cog:(g + 1) * cog], k_pad, k_seq) for g in range(groups)])
        defs.append(words_array(w_id, words, f"{op.name}: {op.w_bits}-bit weights, "
                                             f"{'int8 channel pairs' if plan.w8 else 'int16 pairs'}, {form}"))
    else:
        packed_id = ctx.ident(op.name, "packed")
        what = f"{op.codebook.bits}-bit codes" if op.codebook is not None else f"{op.w_bits}-bit weights"
        defs.append(c_array("uint8_t", packed_id, pack_fields(_stored(op, perm), plan.field_bits),
                            f"{op.name}: {what}, {plan.field_bits} bits each, row-major (out, k), low bits first"))
        if op.codebook is not None:
            levels_id, rows_id = _codebook_tables(ctx, op, defs)
    b_id = ctx.ident(op.name, "bias")
    defs.append(c_array("int32_t", b_id, pad_channels(plan.bias, groups, cog, cout_pad),
                        f"{op.name}: bias per (padded) channel" + (f", pre-scaled by 2^{plan.shift}" if plan.shift else "")))
    r_id = _rq(ctx, op, pad_channels(plan.rq, groups, cog, cout_pad), defs)
    t_defs, t_fields = _thresholds(ctx, op, groups, cog, cout_pad)
    defs.extend(t_defs)
    mode = {"w8": "QC_LB_W8", "w4": "QC_LB_W4", "decode": "QC_LB_DECODE"}[plan.mode]
    code_bits = op.codebook.bits if op.codebook is not None else 0
    lb_fields = [
        [("mode", mode), ("bits", plan.field_bits), ("code_bits", code_bits), ("chunk", plan.chunk)],
        [("packed", packed_id), ("levels", levels_id), ("level_row", rows_id)],
        [*t_fields, ("output_offset", op.output_offset), ("threshold_store", threshold_store(op))],
    ]
    return defs, plan, lb_fields, w_id, b_id, r_id


THRESHOLD_PAIR_LENGTHS = (1, 3, 7, 15)


def levels_unclamped(op) -> bool:
    """Whether every level ``output_offset + 0 .. L`` of a threshold stage lies inside
    ``[act_min, act_max]``, so the kernels may store the counts without a clamp."""
    return op.act_min <= op.output_offset and op.output_offset + int(op.thresholds.shape[1]) <= op.act_max


def count_unrolled(op) -> bool:
    """Whether a threshold stage's count runs unrolled and unclamped (the stores
    ``qc_threshold_store<BITS>_<LEN>`` and the fused pixel-pair routines): ``len`` in 1, 3, 7, 15
    and :func:`levels_unclamped`."""
    return int(op.thresholds.shape[1]) in THRESHOLD_PAIR_LENGTHS and levels_unclamped(op)


def threshold_store(op) -> str:
    """The output store of a threshold layer (``qc_threshold_store_fn`` of qc_kernels.h), ``"NULL"``
    without a threshold stage: ``qc_threshold_store<BITS>_<LEN>`` (count unrolled, no clamp) for
    ``len`` in 1, 3, 7, 15 with unclamped levels, else ``qc_threshold_store<BITS>``. Naming it per
    layer keeps the stores out of models that do not use them."""
    if op.thresholds is None:
        return "NULL"
    bits = threshold_table(op)[1]
    if count_unrolled(op):
        return f"qc_threshold_store{bits}_{int(op.thresholds.shape[1])}"
    return f"qc_threshold_store{bits}"


def threshold_routines(program: ir.Program) -> tuple[dict[str, bool], dict[tuple[int, int], int]]:
    """What the threshold layers of ``program`` may link, for the code-size bound of
    :func:`qcompile.target.memory_estimate`: the stores their layers name (:func:`threshold_store`,
    each with whether it is an unrolled one; a depthwise layer's counted although DSP cores drop
    it), and per (row width, length) key the
    number of fused pixel-pair routines their (non-depthwise, even channels per group) convolutions
    may name on DSP cores (:func:`threshold_pair`: one per weight form, so at most 2 per key;
    counted without the plan's weight form or the output layout, an over-count when a layer falls
    back to the C loop)."""
    stores: dict[str, bool] = {}
    pairs: dict[tuple[int, int], int] = {}
    for op in program.ops:
        if not isinstance(op, (ir.Conv2D, ir.Dense)) or op.thresholds is None:
            continue
        unrolled = count_unrolled(op)
        stores[threshold_store(op)] = unrolled
        conv = isinstance(op, ir.Conv2D) and not op.depthwise
        if conv and unrolled and (int(op.weight.shape[0]) // op.groups) % 2 == 0:
            key = (threshold_table(op)[1], int(op.thresholds.shape[1]))
            pairs[key] = min(2, pairs.get(key, 0) + 1)
    return stores, pairs


def threshold_pair(op, plan: GemmPlan, cog: int, geometry: dict) -> str:
    """The fused pixel-pair routine of a threshold layer (``QC_THR_PAIR(w4|w8, 16|32, len)`` of
    qc_kernels.h, ``NULL`` on cores without DSP) when it applies, else ``"NULL"``: W4 pairs or int8
    channel pairs, an even channel count per group, a channels-last output of at least two pixels,
    ``len`` in 1, 3, 7, 15 and every level inside ``[act_min, act_max]`` (the routine does not clamp).
    Naming the routine per layer lets ``--gc-sections`` drop the others."""
    if op.thresholds is None or not (plan.mode == "w4" or plan.w8) or cog % 2:
        return "NULL"
    pixels = geometry["out_h"] * geometry["out_w"]
    if not count_unrolled(op) or geometry["out_cs"] != 1 or pixels < 2:
        return "NULL"
    return f"QC_THR_PAIR({'w4' if plan.mode == 'w4' else 'w8'}, {threshold_table(op)[1]}, {int(op.thresholds.shape[1])})"


def emit_gemm_lb(ctx: EmitContext, op, conv_groups: list, raw: np.ndarray, groups: int, cog: int, k_pad: int,
                 k_seq: bool, src_ptr: str, note: str, perm=None) -> Emitted:
    """``conv_groups``: the qc_conv_params geometry rows (everything but the weight form)."""
    defs, plan, lb_fields, w_id, b_id, r_id = gemm_lb_parts(ctx, op, raw, groups, cog, k_pad, k_seq, perm)
    c_id, p_id = ctx.ident(op.name, "conv"), ctx.ident(op.name, "params")
    # qc_w4_pair_full/clamp or qc_w8_pair_full/clamp (qc_conv.c): W4 or int8 channel pairs, fast form with
    # pre-scale 2 (multipliers >= 0), even channel count (every channel of a chunk real), no thresholds
    fused = int((plan.mode == "w4" or plan.w8) and plan.fast and plan.shift == 1 and cog % 2 == 0
                and op.thresholds is None)
    conv = c_params("qc_conv_params", c_id, [
        *conv_groups,
        [("rq_fast", int(plan.fast)), ("w8", int(plan.w8)), ("w8_shift", plan.shift), ("fused", fused), ("k_seq", int(k_seq))],
        [("weight", w_id), ("bias", b_id), ("rq", r_id)],
    ])
    pair = threshold_pair(op, plan, cog, dict(kv for row in conv_groups for kv in row))
    params = c_params("qc_conv_lb_params", p_id, [[("conv", f"&{c_id}")], *lb_fields, [("pair", pair)]])
    call = (f"{ctx.header_comment(op, note)}\n"
            f"qc_conv_lb_s8(&{p_id}, {src_ptr}, {ctx.ptr(op.output)}, {ctx.scratch_ptr(op)});")
    return Emitted((*defs, conv, params), (call,))


def dw_plan(op) -> tuple[bool, int, np.ndarray, np.ndarray]:
    """(fast, w_shift, bias, rq) of a low-bit depthwise layer."""
    fast, scale, bias, rq = requant_plan(op.weight, op.bias, op.multiplier, op.shift, op.input_offset,
                                          op.output_offset)
    if op.thresholds is not None or (fast and len(set(scale.tolist())) != 1):
        fast = False
        scale, bias, rq = _exact(op)
    return fast, (int(scale[0]).bit_length() - 1 if fast else 0), bias, rq


def dw_chunk(op) -> int:
    """Channels of a low-bit depthwise layer expanded (int16 pairs, 4 bytes per tap) per qc_dwconv_s8 pass."""
    c = int(op.weight.shape[0])
    taps = int(op.weight.shape[2]) * int(op.weight.shape[3])
    return min((c + 3) // 4 * 4, max(4, DECODE_BUDGET // (4 * taps) // 4 * 4))


def dw3x3_specialized(op, fast: bool, in_cs: int) -> bool:
    """Whether a low-bit depthwise layer runs the specialized 3x3 kernel of qc_inline.h on its taps
    expanded once into scratch: 3x3, dilation 1, channels-last input, whole 4-channel blocks, every
    channel's expansion within the scratch budget, and either the fast requantization or a
    threshold stage whose levels ``output_offset + 0 .. L`` lie inside ``[act_min, act_max]`` (the
    kernel stores them unclamped)."""
    c = int(op.weight.shape[0])
    shape_ok = (tuple(op.weight.shape[2:]) == (3, 3) and tuple(op.dilation) == (1, 1) and in_cs == 1
                and c % 4 == 0 and dw_chunk(op) >= c)
    if op.thresholds is not None:
        return shape_ok and levels_unclamped(op)
    return shape_ok and fast


def emit_dwconv_lb(ctx: EmitContext, op, dw_rows: list, c: int, src_ptr: str, note: str) -> Emitted:
    fast, w_shift, bias, rq = dw_plan(op)
    c_pad = (c + 3) // 4 * 4
    kh, kw = int(op.weight.shape[2]), int(op.weight.shape[3])
    if op.codebook is not None:
        bits = ir.storage_bits(op.codebook.bits)
        fields = op.codebook.codes.astype(np.int64).reshape(c, kh * kw)
    else:
        bits = ir.storage_bits(op.w_bits)
        fields = op.weight.astype(np.int64).reshape(c, kh * kw) & ((1 << bits) - 1)
    packed_id = ctx.ident(op.name, "packed")
    what = f"{op.codebook.bits}-bit codes" if op.codebook is not None else f"{op.w_bits}-bit weights"
    defs = [c_array("uint8_t", packed_id, pack_fields(fields, bits),
                    f"{op.name}: depthwise {what}, {bits} bits each, row-major (channel, tap {kh}x{kw})")]
    levels_id, rows_id = _codebook_tables(ctx, op, defs) if op.codebook is not None else ("NULL", "NULL")
    b_id = ctx.ident(op.name, "bias")
    bias_p = np.zeros(c_pad, dtype=np.int64)
    bias_p[:c] = bias
    rq_p = np.zeros((c_pad, 3), dtype=np.int64)
    rq_p[:c] = rq
    defs.append(c_array("int32_t", b_id, bias_p, f"{op.name}: bias per (padded) channel"))
    r_id = _rq(ctx, op, rq_p, defs)
    t_defs, t_fields = _thresholds(ctx, op, 1, c, c)
    defs.extend(t_defs)
    d_id, p_id = ctx.ident(op.name, "dw"), ctx.ident(op.name, "params")
    dw = c_params("qc_dwconv_params", d_id, [
        *dw_rows,
        [("rq_fast", int(fast)), ("weight", "NULL"), ("bias", b_id), ("rq", r_id)],
    ])
    in_cs = dict(dw_rows[0])["in_cs"]
    specialized = dw3x3_specialized(op, fast, in_cs)
    store = threshold_store(op)
    if specialized and store != "NULL":
        store = f"QC_DW3X3_THR_STORE({store})"  # NULL where the specialized kernel counts inline
    params = c_params("qc_dwconv_lb_params", p_id, [
        [("dw", f"&{d_id}")],
        [("bits", bits), ("code_bits", op.codebook.bits if op.codebook is not None else 0), ("w_shift", w_shift),
         ("chunk", dw_chunk(op))],
        [("packed", packed_id), ("levels", levels_id), ("level_row", rows_id)],
        [*t_fields, ("output_offset", op.output_offset), ("threshold_store", store)],
    ])
    if specialized:
        # expand once into scratch, then the specialized 3x3 kernel of qc_inline.h (a block-scope
        # parameter block: its weight is an address constant inside the arena)
        weight = f"(const uint32_t *)(const void *)({ctx.model}_arena.bytes + {ctx.layout.scratch[op.name]})"
        spec = c_params("qc_dwconv_params", "spec", [
            *dw_rows, [("rq_fast", int(fast)), ("weight", weight), ("bias", b_id), ("rq", r_id)]])
        kernel = (f"qc_dw3x3_s8(&spec, {src_ptr}, {ctx.ptr(op.output)})" if op.thresholds is None else
                  f"qc_dw3x3_thr_s8(&{p_id}, &spec, {src_ptr}, {ctx.ptr(op.output)}, {ctx.scratch_ptr(op)})")
        call = (f"{ctx.header_comment(op, 'depthwise, expanded into scratch' + note)}\n"
                f"qc_dwconv_expand_s8(&{p_id}, {ctx.scratch_ptr(op)});\n{{\n"
                + "".join(f"    {line}\n" for line in spec.splitlines())
                + f"{kernel};\n}}")  # unindented: a profile region
        return Emitted((*defs, dw, params), (call,))
    call = (f"{ctx.header_comment(op, 'depthwise' + note)}\n"
            f"qc_dwconv_lb_s8(&{p_id}, {src_ptr}, {ctx.ptr(op.output)}, {ctx.scratch_ptr(op)});")
    return Emitted((*defs, dw, params), (call,))


def lowbit_scratch(op, program: ir.Program, src: int, hwc: frozenset[int]) -> int:
    """Scratch bytes of a low-bit layer: im2col (as qc_conv_s8) + the DECODE chunk; depthwise: the
    expanded taps of one 4-channel block."""
    from qcompile.backends.c_layout import conv_k_pad, conv_k_seq, strides

    if isinstance(op, ir.Conv2D):
        if op.depthwise:
            taps = int(op.weight.shape[2]) * int(op.weight.shape[3])
            in_cs = strides(program.tensors[src].shape, src in hwc)[0]
            expanded = op.thresholds is None or dw3x3_specialized(op, False, in_cs)
            return 4 * taps * dw_chunk(op) if expanded else 8 * taps
        co, cig, kh, kw = (int(d) for d in op.weight.shape)
        k_pad = conv_k_pad(op)
        k_seq = conv_k_seq(op, src, program, hwc)
        raw = op.weight.astype(np.int64).transpose(0, 2, 3, 1).reshape(co, kh * kw * cig)
        plan = gemm_plan(op, raw, op.groups, co // op.groups, k_pad)
    else:
        fo, fi = (int(d) for d in op.weight.shape)
        k_pad = (fi + 3) // 4 * 4
        k_seq = fi % 4 != 0
        plan = gemm_plan(op, op.weight.astype(np.int64), 1, fo, k_pad)
    return (6 if k_seq else 4) * k_pad + decode_scratch(plan, k_pad)


def _gemm_int8_w8(op, raw: np.ndarray, groups: int, cog: int) -> bool:
    """Whether today's int8 GEMM kernels store ``op`` in the int8 channel-pair layout (c_ops_gemm)."""
    fast, scale, _, _ = requant_plan(op.weight, op.bias, op.multiplier, op.shift, op.input_offset,
                                     op.output_offset)
    return w8_plan(raw, op.bias, scale, fast, op.input_offset, groups, cog) is not None


def emitted_param_bytes(op) -> int:
    """Bytes of the ``static const`` arrays the C emitter writes for a Conv2D / Dense: weights as
    stored (packed values or codes, int8 channel pairs, int16 pairs), codebook level tables (shared
    rows plus their index), the padded
    bias (int32), requantization records (3 x int32, none with a threshold stage) and thresholds
    (:func:`threshold_bytes`)."""
    if op.acc_bits == 64:
        from qcompile.backends.c_wide import wide_param_bytes

        return wide_param_bytes(op)
    if isinstance(op, ir.Conv2D):
        co, cig, kh, kw = (int(d) for d in op.weight.shape)
        groups, k, depthwise = op.groups, cig * kh * kw, op.depthwise
    else:
        co, k = (int(d) for d in op.weight.shape)
        groups, depthwise = 1, False
    levels = op.codebook.table_bytes if op.codebook is not None else 0
    per_channel = 4 if op.thresholds is not None else 16  # bias, + {multiplier, shift, round} without thresholds
    if depthwise:
        c_pad = (co + 3) // 4 * 4
        if is_lowbit(op):
            bits = ir.storage_bits(op.codebook.bits if op.codebook is not None else op.w_bits)
            weights = -(-co * k * bits // 8) + levels
        else:
            weights = 2 * c_pad * k
        return weights + per_channel * c_pad + threshold_bytes(op)
    cog = co // groups
    cout_pad = cog + (cog & 1)
    k_pad = (k + 3) // 4 * 4
    raw = op.weight.astype(np.int64)
    raw = (raw.transpose(0, 2, 3, 1) if raw.ndim == 4 else raw).reshape(co, k)
    n_pad = groups * cout_pad
    if not is_lowbit(op):
        weights = n_pad * k_pad * (1 if _gemm_int8_w8(op, raw, groups, cog) else 2)
    else:
        plan = gemm_plan(op, raw, groups, cog, k_pad)
        if plan.mode == "w4":
            weights = n_pad * k_pad // 2
        elif plan.mode == "w8":
            weights = n_pad * k_pad * (1 if plan.w8 else 2)
        else:
            weights = -(-co * k * plan.field_bits // 8) + levels
    return weights + per_channel * n_pad + threshold_bytes(op)
