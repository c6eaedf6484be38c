"""Compile-time weight work of the GEMM and depthwise kernels: the requantization plan (fast vs
exact, pre-scales), the int16-pair and int8 channel-pair ("w8") word layouts of qc_kernels.h with
their exactness proofs, and the per-layer weight/bias/rq arrays."""
from __future__ import annotations

import numpy as np

from qcompile.backends.c_context import EmitContext
from qcompile.backends.c_format import c_array, rq_array, words_array
from qcompile.errors import IRVerificationError

__all__ = ["INT32_MAX", "PERM4", "W8_LIMIT", "layer_arrays", "pack_gemm", "pack_gemm_w8", "pack_pairs",
           "pad_channels", "requant_arrays", "requant_plan", "w8_plan"]


def requant_arrays(ctx: EmitContext, op, multiplier: np.ndarray, shift: np.ndarray,
                    prefix: str = "") -> tuple[list[str], str, str]:
    m_id = ctx.ident(op.name, prefix + "multiplier")
    s_id = ctx.ident(op.name, prefix + "shift")
    defs = [
        c_array("int32_t", m_id, multiplier, f"{op.name}: {prefix}multiplier, Q31 per channel"),
        c_array("int32_t", s_id, shift, f"{op.name}: {prefix}shift per channel"),
    ]
    return defs, m_id, s_id



INT32_MAX = (1 << 31) - 1
PERM4 = np.array([0, 2, 1, 3])  # SXTAB16 order of a block of 4 values: (k0, k2), (k1, k3)


def pack_pairs(values: np.ndarray) -> np.ndarray:
    """int16 values (last axis a multiple of 4, already in (k0,k2,k1,k3) order) -> uint32 words."""
    v = values.astype(np.int64).reshape(-1, 2)
    if v.size and (v.min() < -32768 or v.max() > 32767):
        raise IRVerificationError("packed weight outside int16")
    return ((v[:, 0] & 0xFFFF) | ((v[:, 1] & 0xFFFF) << 16)).astype(np.uint64)


def pack_gemm(w: np.ndarray, k_pad: int, k_seq: bool = False) -> np.ndarray:
    """``(n_out, K)`` int weights -> the qc_conv/qc_fc word layout (channel pairs x 4-blocks)."""
    n, k = w.shape
    n_pad = n + (n & 1)
    full = np.zeros((n_pad, k_pad), dtype=np.int64)
    full[:n, :k] = w
    perm = np.arange(4) if k_seq else PERM4
    blocks = full.reshape(n_pad // 2, 2, k_pad // 4, 4)[..., perm].transpose(0, 2, 1, 3)
    return pack_pairs(blocks)


def requant_plan(weight_rows: np.ndarray, bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
                  input_offset: int, output_offset: int) -> tuple[bool, np.ndarray, np.ndarray, np.ndarray]:
    """Decide fast vs exact requantization for a layer; returns (fast, scale, bias', rq rows).

    Fast (see qc_rq in qc_kernels.h) needs, for every channel: right shift >= 1, multiplier >= 0, weights
    times 2^(left+1) inside int16, every partial sum times 2^(left+1) inside int32 (bound
    from the IR verifier: sum|w| * max|x + offset| + |bias|), and the rounding sum inside int32.
    """
    w = np.abs(weight_rows.astype(np.int64)).reshape(len(bias), -1)
    xmax = max(abs(-128 + input_offset), abs(127 + input_offset))
    bound = w.sum(axis=1) * xmax + np.abs(bias.astype(np.int64))
    shift = shift.astype(np.int64)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    scale = np.left_shift(np.ones_like(left), left + 1)
    rnd = np.where(right >= 1, np.left_shift(np.ones_like(right), np.maximum(right - 1, 0)), 0) \
        + output_offset * np.left_shift(np.ones_like(right), right)
    fast = bool(np.all(right >= 1)
                and np.all(multiplier >= 0)  # qc_conv.c's SMMLAR paths take the sign from the accumulator
                and np.all(bound * scale <= INT32_MAX)
                and np.all(w.max(axis=1, initial=0) * scale <= 32767)
                and np.all(bound * (scale // 2) + 2 + np.abs(rnd) <= INT32_MAX))
    m = multiplier.astype(np.int64)
    if fast:
        rq = np.stack([m, right, rnd], axis=1)
        return True, scale, bias.astype(np.int64) * scale, rq
    rq = np.stack([m, shift, np.full_like(m, output_offset)], axis=1)
    return False, np.ones_like(scale), bias.astype(np.int64), rq


def pad_channels(a: np.ndarray, groups: int, per_group: int, per_group_pad: int) -> np.ndarray:
    """Per-channel rows (groups * per_group, ...) -> (groups * per_group_pad, ...) with zero rows."""
    a = a.reshape(groups, per_group, *a.shape[1:])
    out = np.zeros((groups, per_group_pad, *a.shape[2:]), dtype=a.dtype)
    out[:, :per_group] = a
    return out.reshape(groups * per_group_pad, *a.shape[2:])


W8_LIMIT = 1 << 23  # |sum w_o x| must stay below this (R - S = 256 * that, exactly in int32)


def pack_gemm_w8(w: np.ndarray, k_pad: int, k_seq: bool = False) -> np.ndarray:
    """``(n_out, K)`` int8 weights -> the int8 ("w8") word layout of qc_conv/qc_fc (see qc_kernels.h).

    Per channel pair (e, o) and 4-block (k0..k3): words (k0, k2), (k1, k3); each word holds bytes
    [w_e(ka), w_o'(ka), w_e(kb), w_o'(kb)] with w_o' = w_o - (w_e < 0).
    """
    n, k = w.shape
    n_pad = n + (n & 1)
    full = np.zeros((n_pad, k_pad), dtype=np.int64)
    full[:n, :k] = w
    e, o = full[0::2], full[1::2]
    o = o - (e < 0)
    if o.size and o.min() < -128:
        raise IRVerificationError("int8 weight pair outside int8")  # callers check _w8_ok first
    e4 = e.reshape(n_pad // 2, k_pad // 4, 4) & 0xFF
    o4 = o.reshape(n_pad // 2, k_pad // 4, 4) & 0xFF

    def word(a: int, b: int) -> np.ndarray:
        return e4[..., a] | (o4[..., a] << 8) | (e4[..., b] << 16) | (o4[..., b] << 24)

    pairs = ((0, 1), (2, 3)) if k_seq else ((0, 2), (1, 3))
    return np.stack([word(*pairs[0]), word(*pairs[1])], axis=-1).reshape(-1).astype(np.uint64)


def w8_plan(rows: np.ndarray, bias: np.ndarray, scale: np.ndarray, fast: bool, input_offset: int,
             groups: int, per_group: int) -> int | None:
    """The w8_shift of an int8-weight GEMM layer, or None when the int8 layout cannot be proved exact.

    Needs: weights in [-128, 127] with w_o' = w_o - (w_e < 0) still >= -128; one pre-scale for the
    whole layer (2^shift, shift <= 8; 0 for exact requantization); and for every odd channel of a
    pair |sum w_o x| < 2^23 (x + offset in [-128 + offset, 127 + offset]); the bias is added after.
    """
    w = rows.astype(np.int64).reshape(len(bias), -1)
    if w.size == 0 or w.min() < -128 or w.max() > 127:
        return None
    shift = 0
    if fast:
        if len(set(scale.tolist())) != 1:
            return None
        shift = int(scale[0]).bit_length() - 1
        if shift > 8:
            return None
    xmax = max(abs(-128 + input_offset), abs(127 + input_offset))
    wg = w.reshape(groups, per_group, -1)
    even, odd = wg[:, 0:per_group - 1:2], wg[:, 1::2]
    if np.any(odd - (even < 0) < -128):
        return None
    bound = np.abs(odd).sum(axis=2) * xmax
    if bound.size and bound.max() >= W8_LIMIT:
        return None
    return shift


def layer_arrays(ctx: EmitContext, op, words: np.ndarray, bias: np.ndarray, rq: np.ndarray,
                  what: str, fast: bool, w8: bool = False) -> tuple[list[str], str, str, str]:
    w_id, b_id, r_id = ctx.ident(op.name, "weight"), ctx.ident(op.name, "bias"), ctx.ident(op.name, "rq")
    form = "pre-scaled by 2^(left+1), fast requantization" if fast else "exact requantization"
    if w8:
        form = "fast requantization (accumulators scaled by 2^w8_shift)" if fast else "exact requantization"
        storage = "int8 channel pairs [e, o', e, o'] (qc_kernels.h)"
        bias_what = "bias per (padded) channel, pre-scaled by 2^w8_shift"
    else:
        storage = "int16 pairs"
        bias_what = "bias per (padded) channel"
    defs = [
        words_array(w_id, words, f"{op.name}: {what}; {storage}, {op.w_bits}-bit values, {form}"),
        c_array("int32_t", b_id, bias, f"{op.name}: {bias_what}"),
        rq_array(r_id, rq, f"{op.name}: requantization {{multiplier, shift, round}} per (padded) channel"),
    ]
    return defs, w_id, b_id, r_id
