"""C emitter: an integer :class:`~qcompile.backends.ir.Program` plus its memory plan -> C99 sources.

The generated code is data plus calls into the hand-written kernel library
(``backends/runtime/qc_kernels.{h,c}``), in the style of emlearn and TVM's AOT executor:

* ``<name>.h``: ``int <name>_run(const int8_t *input, int8_t *output);`` and macros for the
  I/O sizes (elements), arena size (bytes) and I/O quantization (for the user; nothing reads
  them at run time).
* ``<name>.c``: weights, biases, requantization multipliers/shifts and tables as
  ``static const`` arrays (flash), one ``static const`` parameter block per op, one static
  8-byte-aligned arena sized by the memory plan, and ``<name>_run``: one commented kernel call
  per op. The graph input/output tensors are the caller's ``input``/``output`` buffers; every
  other tensor lives at ``arena + plan.offsets[tid]``. In-place reshapes (``plan.aliases``)
  emit no code, other reshapes a ``memmove``.
* ``qc_kernels.{h,c}``: the runtime, copied verbatim.
* ``<name>.mk``: a Makefile fragment (``QC_<NAME>_SRCS``, ``QC_<NAME>_INC``, ``QC_<NAME>_CFLAGS``).

Each op kind has one small emitter registered on :func:`emit_op` (``functools.singledispatch``
on the IR dataclass). Output is deterministic: it depends only on the program and the plan
(no timestamps, no ``id()``, no set or dict-order dependence), so the same model gives
byte-identical files.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from qcompile.backends import ir
from qcompile.backends.c_layout import Layout, add_uses_tables, analyze, scratch_bytes
from qcompile.backends.memory_plan import MemoryPlan
from qcompile.errors import ConfigError, IRVerificationError

__all__ = ["add_fast_fields", "emit_c", "emit_op", "profile_regions", "runtime_sources", "Emitted", "EmitContext", "RUNTIME_DIR",
           "RUNTIME_FILES"]

RUNTIME_DIR = Path(__file__).parent / "runtime"
RUNTIME_FILES = ("qc_kernels.h", "qc_inline.h", "qc_kernels.c", "qc_conv.c")

_INT8_PER_LINE = 16
_INT32_PER_LINE = 10
_MAX_IDENT_BASE = 40
_C_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def runtime_sources() -> dict[str, str]:
    """The kernel library files, ``{file name: text}``."""
    return {f: (RUNTIME_DIR / f).read_text(encoding="utf-8") for f in RUNTIME_FILES}


# ---------------------------------------------------------------------------- formatting


def _c_int(v: int) -> str:
    """A signed C integer literal valid for int32 (``INT32_MIN`` cannot be written directly)."""
    v = int(v)
    if v == -(1 << 31):
        return "(-2147483647 - 1)"
    return str(v)


def _c_macro_int(v: int) -> str:
    return f"({v})" if v < 0 else str(v)


def _c_float(x: float) -> str:
    """A float literal that round-trips ``x`` through ``repr`` (shortest exact decimal)."""
    text = repr(float(x))
    if not any(ch in text for ch in ".eE"):
        text += ".0"
    return text + "f"


def _comment_text(text: str) -> str:
    """Printable ASCII that cannot end or nest a C comment."""
    text = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in str(text))
    return text.replace("*/", "* /").replace("/*", "/ *")


def _shape_text(shape: Sequence[int]) -> str:
    """Python tuple notation: ``(8, 4, 4)``, ``(10,)``."""
    return str(tuple(int(d) for d in shape))


_CTYPES = {
    "int8_t": (-(1 << 7), (1 << 7) - 1, _INT8_PER_LINE),
    "int32_t": (-(1 << 31), (1 << 31) - 1, _INT32_PER_LINE),
    "uint32_t": (0, (1 << 32) - 1, _INT32_PER_LINE),
}


def _c_array(ctype: str, ident: str, values: np.ndarray, comment: str) -> str:
    """A ``static const`` array definition, numbers right-aligned, several per line."""
    lo, hi, per_line = _CTYPES[ctype]
    flat = [int(v) for v in np.asarray(values).ravel().tolist()]
    if not flat:
        raise IRVerificationError(f"array '{ident}' is empty")
    if min(flat) < lo or max(flat) > hi:
        raise IRVerificationError(f"array '{ident}' has values outside {ctype}")
    suffix = "u" if ctype == "uint32_t" else ""
    items = [_c_int(v) + suffix for v in flat]
    width = max(len(s) for s in items)
    lines = [
        "    " + ", ".join(s.rjust(width) for s in items[i:i + per_line]) + ","
        for i in range(0, len(items), per_line)
    ]
    return (f"/* {_comment_text(comment)} */\n"
            f"static const {ctype} {ident}[{len(items)}] = {{\n" + "\n".join(lines) + "\n};\n")


def _c_params(ctype: str, ident: str, groups: Sequence[Sequence[tuple[str, object]]]) -> str:
    """A ``static const`` parameter block with designated initializers, one line per group."""
    lines = []
    for group in groups:
        parts = [f".{key} = {value if isinstance(value, str) else _c_int(value)}" for key, value in group]
        lines.append("    " + ", ".join(parts) + ",")
    return f"static const {ctype} {ident} = {{\n" + "\n".join(lines) + "\n};\n"


def _spatial(shape: Sequence[int]) -> tuple[int, int, int]:
    """``(C, H, W)`` of a ``(C, L)`` (``H = 1``) or ``(C, H, W)`` shape."""
    if len(shape) == 2:
        return int(shape[0]), 1, int(shape[1])
    if len(shape) == 3:
        return int(shape[0]), int(shape[1]), int(shape[2])
    raise IRVerificationError(f"expected a (C, L) or (C, H, W) tensor, got shape {tuple(shape)}")


# ---------------------------------------------------------------------------- context


@dataclass(frozen=True)
class Emitted:
    """What one op contributes: definitions at file scope and statements inside ``<name>_run``."""

    definitions: tuple[str, ...] = ()
    statements: tuple[str, ...] = ()


@dataclass
class EmitContext:
    """Read-only view of the program, plan and layout decisions, plus the allocator of unique C identifiers."""

    program: ir.Program
    plan: MemoryPlan
    model: str
    layout: "Layout" = None  # type: ignore[assignment]
    _used: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        # names of the run function's scope and the model's own file-scope symbols
        self._used.update({"arena", "input", "output", f"{self.model}_arena", f"{self.model}_run"})

    def ident(self, op_name: str, suffix: str) -> str:
        """A fresh file-scope identifier ``<op name>_<suffix>`` (sanitized, deduplicated)."""
        base = re.sub(r"[^A-Za-z0-9_]", "_", op_name)[:_MAX_IDENT_BASE] or "op"
        if base[0].isdigit() or base[0] == "_" or base.lower().startswith("qc_"):
            base = "op_" + base  # no leading digit, no reserved leading underscore, no clash with qc_* names
        candidate = f"{base}_{suffix}"
        n = 2
        while candidate in self._used:
            candidate = f"{base}_{suffix}_{n}"
            n += 1
        self._used.add(candidate)
        return candidate

    def ptr(self, tid: int, element_offset: int = 0) -> str:
        """The C pointer expression of tensor ``tid`` (advanced by ``element_offset`` elements)."""
        if tid == self.program.inputs[0]:  # first: a graph input that is also the output is read here
            base, offset = "input", 0
        elif tid == self.program.outputs[0]:
            base, offset = "output", 0
        elif tid in self.plan.offsets:
            base, offset = "arena", self.plan.offsets[tid]
        else:
            raise IRVerificationError(f"tensor {tid} ('{self.program.tensors[tid].name}') has no memory")
        offset += element_offset
        return f"{base} + {offset}" if base == "arena" or offset else base

    def shape(self, tid: int) -> tuple[int, ...]:
        return self.program.tensors[tid].shape

    def strides(self, tid: int) -> tuple[int, int]:
        """``(c_stride, p_stride)`` of tensor ``tid`` viewed as ``(C, H*W)`` in its chosen layout."""
        c, h, w = _spatial(self.shape(tid)) if len(self.shape(tid)) in (2, 3) else (self.size(tid), 1, 1)
        return (1, c) if self.layout.hwc(tid) else (h * w, 1)

    def scratch_ptr(self, op: ir.Op) -> str:
        return f"(uint32_t *)(void *)(arena + {self.layout.scratch[op.name]})"

    def size(self, tid: int) -> int:
        return self.program.tensors[tid].size

    def header_comment(self, op: ir.Op, note: str = "") -> str:
        """``/* name: Kind (in shapes) -> (out shape); source: node[ -- note] */``."""
        ins = ", ".join(_shape_text(self.shape(t)) for t in op.inputs)
        text = f"{op.name}: {type(op).__name__} {ins} -> {_shape_text(self.shape(op.output))}"
        source = self.program.source.get(op.output)
        if source:
            text += f"; source: {source}"
        if note:
            text += f" -- {note}"
        return f"/* {_comment_text(text)} */"


def _call(ctx: EmitContext, op: ir.Op, kernel: str, params: str, *pointers: str) -> str:
    args = ", ".join((f"&{params}", *pointers))
    return f"{ctx.header_comment(op)}\n{kernel}({args});"


# ---------------------------------------------------------------------------- per-op emitters


@functools.singledispatch
def emit_op(op: object, ctx: EmitContext) -> Emitted:
    """Emit the C for one op. One registered function per IR op kind."""
    raise IRVerificationError(f"C emitter has no rule for {type(op).__name__}")


def _requant_arrays(ctx: EmitContext, op, multiplier: np.ndarray, shift: np.ndarray,
                    prefix: str = "") -> tuple[list[str], str, str]:
    m_id = ctx.ident(op.name, prefix + "multiplier")
    s_id = ctx.ident(op.name, prefix + "shift")
    defs = [
        _c_array("int32_t", m_id, multiplier, f"{op.name}: {prefix}multiplier, Q31 per channel"),
        _c_array("int32_t", s_id, shift, f"{op.name}: {prefix}shift per channel"),
    ]
    return defs, m_id, s_id


INT32_MAX = (1 << 31) - 1
_PERM4 = np.array([0, 2, 1, 3])  # SXTAB16 order of a block of 4 values: (k0, k2), (k1, k3)


def _pack_pairs(values: np.ndarray) -> np.ndarray:
    """int16 values (last axis a multiple of 4, already in (k0,k2,k1,k3) order) -> uint32 words."""
    v = values.astype(np.int64).reshape(-1, 2)
    if v.size and (v.min() < -32768 or v.max() > 32767):
        raise IRVerificationError("packed weight outside int16")
    return ((v[:, 0] & 0xFFFF) | ((v[:, 1] & 0xFFFF) << 16)).astype(np.uint64)


def _pack_gemm(w: np.ndarray, k_pad: int, k_seq: bool = False) -> np.ndarray:
    """``(n_out, K)`` int weights -> the qc_conv/qc_fc word layout (channel pairs x 4-blocks)."""
    n, k = w.shape
    n_pad = n + (n & 1)
    full = np.zeros((n_pad, k_pad), dtype=np.int64)
    full[:n, :k] = w
    perm = np.arange(4) if k_seq else _PERM4
    blocks = full.reshape(n_pad // 2, 2, k_pad // 4, 4)[..., perm].transpose(0, 2, 1, 3)
    return _pack_pairs(blocks)


def _requant_plan(weight_rows: np.ndarray, bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
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


def _pad_channels(a: np.ndarray, groups: int, per_group: int, per_group_pad: int) -> np.ndarray:
    """Per-channel rows (groups * per_group, ...) -> (groups * per_group_pad, ...) with zero rows."""
    a = a.reshape(groups, per_group, *a.shape[1:])
    out = np.zeros((groups, per_group_pad, *a.shape[2:]), dtype=a.dtype)
    out[:, :per_group] = a
    return out.reshape(groups * per_group_pad, *a.shape[2:])


def _rq_array(ident: str, rq: np.ndarray, comment: str) -> str:
    rows = [f"    {{{_c_int(m)}, {_c_int(s)}, {_c_int(r)}}}," for m, s, r in rq.tolist()]
    return f"/* {_comment_text(comment)} */\nstatic const qc_rq {ident}[{len(rows)}] = {{\n" + "\n".join(rows) + "\n};\n"


def _words_array(ident: str, words: np.ndarray, comment: str) -> str:
    return _c_array("uint32_t", ident, words, comment)


_W8_LIMIT = 1 << 23  # |sum w_o x| must stay below this (R - S = 256 * that, exactly in int32)


def _pack_gemm_w8(w: np.ndarray, k_pad: int, k_seq: bool = False) -> np.ndarray:
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


def _w8_plan(rows: np.ndarray, bias: np.ndarray, scale: np.ndarray, fast: bool, input_offset: int,
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
    if bound.size and bound.max() >= _W8_LIMIT:
        return None
    return shift


def _layer_arrays(ctx: EmitContext, op, words: np.ndarray, bias: np.ndarray, rq: np.ndarray,
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
        _words_array(w_id, words, f"{op.name}: {what}; {storage}, {op.w_bits}-bit values, {form}"),
        _c_array("int32_t", b_id, bias, f"{op.name}: {bias_what}"),
        _rq_array(r_id, rq, f"{op.name}: requantization {{multiplier, shift, round}} per (padded) channel"),
    ]
    return defs, w_id, b_id, r_id


def _fused_padding(ctx: EmitContext, op: ir.Conv2D) -> tuple[int, tuple[int, int, int, int]]:
    """(input tensor, padding) of a conv, with a fused Pad folded in."""
    pad = ctx.layout.fused_pads.get(op.name)
    if pad is None:
        return op.input, tuple(op.padding)
    return pad.input, tuple(a + b for a, b in zip(op.padding, pad.padding))


@emit_op.register
def _(op: ir.Conv2D, ctx: EmitContext) -> Emitted:
    from qcompile.backends.c_layout import conv_k_pad, conv_k_seq, is_depthwise

    src, (pt, pl, pb, pr) = _fused_padding(ctx, op)
    c, h, w = _spatial(ctx.shape(src))
    co, ho, wo = _spatial(ctx.shape(op.output))
    cig, kh, kw = (int(d) for d in op.weight.shape[1:])
    in_cs, in_ps = ctx.strides(src)
    out_cs, out_ps = ctx.strides(op.output)
    note = f" (+ fused {ctx.layout.fused_pads[op.name].name})" if op.name in ctx.layout.fused_pads else ""
    geometry = [
        [("kernel_h", kh), ("kernel_w", kw)],
        [("stride_h", op.stride[0]), ("stride_w", op.stride[1])],
        [("dilation_h", op.dilation[0]), ("dilation_w", op.dilation[1])],
        [("pad_top", pt), ("pad_left", pl)],
    ]
    fast, scale, bias, rq = _requant_plan(op.weight, op.bias, op.multiplier, op.shift, op.input_offset,
                                          op.output_offset)
    wq = op.weight.astype(np.int64) * scale[:, None, None, None]
    p_id = ctx.ident(op.name, "params")
    if is_depthwise(op, ctx.program):
        c_pad = (c + 3) // 4 * 4
        taps = np.zeros((c_pad, kh * kw), dtype=np.int64)
        taps[:c] = wq.reshape(c, kh * kw)
        # per 4-channel block, per tap: (c0, c2) (c1, c3)
        words = _pack_pairs(taps.reshape(c_pad // 4, 4, kh * kw).transpose(0, 2, 1)[..., _PERM4])
        bias_p = np.zeros(c_pad, dtype=np.int64)
        bias_p[:c] = bias
        rq_p = np.zeros((c_pad, 3), dtype=np.int64)
        rq_p[:c] = rq
        defs, w_id, b_id, r_id = _layer_arrays(ctx, op, words, bias_p, rq_p,
                                               f"depthwise weight (taps {kh}x{kw}, channels {c_pad})", fast)
        params = _c_params("qc_dwconv_params", p_id, [
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
    w8_shift = _w8_plan(raw, op.bias, scale, fast, op.input_offset, groups, cog)
    w8 = w8_shift is not None
    # element-wise im2col (qc_conv.c) on every core: store the weights in plain k order per pair
    k_seq = conv_k_seq(op, src, ctx.program, ctx.layout.hwc_tensors)
    if w8:  # k = (ky * kw + kx) * cig + ci
        words = np.concatenate([_pack_gemm_w8(raw[g * cog:(g + 1) * cog], k_pad, k_seq) for g in range(groups)])
    else:
        rows = wq.transpose(0, 2, 3, 1).reshape(co, kh * kw * cig)
        words = np.concatenate([_pack_gemm(rows[g * cog:(g + 1) * cog], k_pad, k_seq) for g in range(groups)])
    bias_p = _pad_channels(bias, groups, cog, cout_pad)
    # the fused pixel-pair routine (qc_conv.c): fast form with pre-scale 2, positive multipliers
    fused = w8 and fast and w8_shift == 1 and cog % 2 == 0
    rq_p = _pad_channels(rq, groups, cog, cout_pad)
    defs, w_id, b_id, r_id = _layer_arrays(ctx, op, words, bias_p, rq_p,
                                           f"weight (groups {groups}, channel pairs x k blocks, k_pad {k_pad})",
                                           fast, w8)
    params = _c_params("qc_conv_params", p_id, [
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


@emit_op.register
def _(op: ir.Dense, ctx: EmitContext) -> Emitted:
    fo, fi = (int(d) for d in op.weight.shape)
    k_pad = (fi + 3) // 4 * 4
    fast, scale, bias, rq = _requant_plan(op.weight, op.bias, op.multiplier, op.shift, op.input_offset,
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
    w8_shift = _w8_plan(raw, op.bias, scale, fast, op.input_offset, 1, fo)
    w8 = w8_shift is not None
    words = _pack_gemm_w8(raw, k_pad) if w8 else _pack_gemm(wq, k_pad)
    bias_p = _pad_channels(bias, 1, fo, out_pad)
    defs, w_id, b_id, r_id = _layer_arrays(ctx, op, words, bias_p, _pad_channels(rq, 1, fo, out_pad),
                                           f"weight ({fo}, {fi}), channel pairs x k blocks", fast, w8)
    p_id = ctx.ident(op.name, "params")
    params = _c_params("qc_fc_params", p_id, [
        [("in_features", fi), ("k_pad", k_pad), ("out_features", fo), ("out_pad", out_pad)],
        [("input_offset", op.input_offset), ("act_min", op.act_min), ("act_max", op.act_max)],
        [("rq_fast", int(fast)), ("w8", int(w8)), ("w8_shift", w8_shift or 0)],
        [("weight", w_id), ("bias", b_id), ("rq", r_id)],
    ])
    call = (f"{ctx.header_comment(op, note)}\n"
            f"qc_fc_s8(&{p_id}, {ctx.ptr(op.input)}, {ctx.ptr(op.output)});")
    return Emitted((*defs, params), (call,))


def add_fast_fields(op: ir.Add) -> list[tuple[str, object]]:
    """The fast-path shift/round fields of qc_add_params, or fast = 0 when not provably exact."""
    def stage(m: int, s: int, extra_left: int, bound: int, min_right: int = 0) -> tuple[int, int, int, int] | None:
        left, right = max(s, 0), max(-s, 0)
        total = extra_left + left + 1
        if right < min_right or bound * (1 << total) > INT32_MAX:
            return None
        out_bound = (bound * (1 << (total - 1)) * abs(m) >> 31) + 1
        out_bound = (out_bound >> right) + 1
        return total, right, (1 << (right - 1)) if right else 0, out_bound

    xa = max(abs(-128 + op.input1_offset), abs(127 + op.input1_offset))
    xb = max(abs(-128 + op.input2_offset), abs(127 + op.input2_offset))
    a = stage(op.input1_multiplier, op.input1_shift, op.left_shift, xa)
    b = stage(op.input2_multiplier, op.input2_shift, op.left_shift, xb)
    names = ("fast", "in1_shift", "in1_right", "in1_round", "in2_shift", "in2_right", "in2_round",
             "out_shift", "out_right", "out_round")
    if a is not None and b is not None:
        o = stage(op.output_multiplier, op.output_shift, 0, a[3] + b[3], min_right=1)
        if o is not None:
            rnd = o[2] + op.output_offset * (1 << o[1])
            v_bound = (a[3] + b[3]) * (1 << (o[0] - 1)) + 2
            if v_bound + abs(rnd) <= INT32_MAX and a[2] + (1 << 30) <= INT32_MAX:
                return list(zip(names, (1, a[0], a[1], a[2], b[0], b[1], b[2], o[0], o[1], rnd)))
    return list(zip(names, (0,) * len(names)))


@emit_op.register
def _(op: ir.Add, ctx: EmitContext) -> Emitted:
    p_id = ctx.ident(op.name, "params")
    params = _c_params("qc_add_params", p_id, [
        [("size", ctx.size(op.output))],
        [("input1_offset", op.input1_offset), ("input2_offset", op.input2_offset)],
        [("input1_multiplier", op.input1_multiplier), ("input1_shift", op.input1_shift)],
        [("input2_multiplier", op.input2_multiplier), ("input2_shift", op.input2_shift)],
        [("output_multiplier", op.output_multiplier), ("output_shift", op.output_shift)],
        [("output_offset", op.output_offset), ("left_shift", op.left_shift)],
        [("act_min", op.act_min), ("act_max", op.act_max)],
        *[[kv] for kv in add_fast_fields(op)[:1]],
        add_fast_fields(op)[1:4], add_fast_fields(op)[4:7], add_fast_fields(op)[7:],
    ])
    if add_uses_tables(op, ctx.program):
        call = _call(ctx, op, "qc_add_table_s8", p_id, ctx.ptr(op.input1), ctx.ptr(op.input2), ctx.ptr(op.output),
                     f"(int32_t *)(void *)(arena + {ctx.layout.scratch[op.name]})")
    else:
        call = _call(ctx, op, "qc_add_s8", p_id, ctx.ptr(op.input1), ctx.ptr(op.input2), ctx.ptr(op.output))
    return Emitted((params,), (call,))


@emit_op.register
def _(op: ir.Mul, ctx: EmitContext) -> Emitted:
    size = ctx.size(op.output)
    if ctx.shape(op.input2) == ctx.shape(op.output):
        channels, inner, cs, ps = size, 1, 1, 1  # element-wise: every element is its own "channel"
    else:
        channels = int(ctx.shape(op.output)[0])
        inner = size // channels
        cs, ps = ctx.strides(op.output)
    p_id = ctx.ident(op.name, "params")
    params = _c_params("qc_mul_params", p_id, [
        [("channels", channels), ("inner", inner), ("c_stride", cs), ("i_stride", ps)],
        [("input1_offset", op.input1_offset), ("input2_offset", op.input2_offset)],
        [("output_offset", op.output_offset)],
        [("multiplier", op.multiplier), ("shift", op.shift)],
        [("act_min", op.act_min), ("act_max", op.act_max)],
    ])
    call = _call(ctx, op, "qc_mul_s8", p_id, ctx.ptr(op.input1), ctx.ptr(op.input2), ctx.ptr(op.output))
    return Emitted((params,), (call,))


def _pool_geometry(ctx: EmitContext, op) -> list[list[tuple[str, object]]]:
    c, h, w = _spatial(ctx.shape(op.input))
    _, ho, wo = _spatial(ctx.shape(op.output))
    pt, pl, pb, pr = op.padding
    in_cs, in_ps = ctx.strides(op.input)
    out_cs, out_ps = ctx.strides(op.output)
    return [
        [("channels", c), ("in_h", h), ("in_w", w), ("out_h", ho), ("out_w", wo)],
        [("in_cs", in_cs), ("in_ps", in_ps), ("out_cs", out_cs), ("out_ps", out_ps)],
        [("kernel_h", op.kernel[0]), ("kernel_w", op.kernel[1])],
        [("stride_h", op.stride[0]), ("stride_w", op.stride[1])],
        [("pad_top", pt), ("pad_left", pl), ("pad_bottom", pb), ("pad_right", pr)],
    ]


@emit_op.register
def _(op: ir.MaxPool, ctx: EmitContext) -> Emitted:
    p_id = ctx.ident(op.name, "params")
    params = _c_params("qc_maxpool_params", p_id, [
        *_pool_geometry(ctx, op),
        [("act_min", op.act_min), ("act_max", op.act_max)],
    ])
    return Emitted((params,), (_call(ctx, op, "qc_maxpool_s8", p_id, ctx.ptr(op.input), ctx.ptr(op.output)),))


@emit_op.register
def _(op: ir.AvgPool, ctx: EmitContext) -> Emitted:
    p_id = ctx.ident(op.name, "params")
    params = _c_params("qc_avgpool_params", p_id, [
        *_pool_geometry(ctx, op),
        [("input_offset", op.input_offset), ("output_offset", op.output_offset)],
        [("multiplier", op.multiplier), ("shift", op.shift)],
        [("act_min", op.act_min), ("act_max", op.act_max)],
    ])
    return Emitted((params,), (_call(ctx, op, "qc_avgpool_s8", p_id, ctx.ptr(op.input), ctx.ptr(op.output)),))


@emit_op.register
def _(op: ir.GlobalAvgPool, ctx: EmitContext) -> Emitted:
    channels = int(ctx.shape(op.input)[0])
    cs, ps = ctx.strides(op.input) if len(ctx.shape(op.input)) in (2, 3) else (ctx.size(op.input) // channels, 1)
    p_id = ctx.ident(op.name, "params")
    params = _c_params("qc_global_avgpool_params", p_id, [
        [("channels", channels), ("inner", ctx.size(op.input) // channels), ("c_stride", cs), ("i_stride", ps)],
        [("input_offset", op.input_offset), ("output_offset", op.output_offset)],
        [("multiplier", op.multiplier), ("shift", op.shift)],
    ])
    call = _call(ctx, op, "qc_global_avgpool_s8", p_id, ctx.ptr(op.input), ctx.ptr(op.output))
    return Emitted((params,), (call,))


@emit_op.register
def _(op: ir.Lut, ctx: EmitContext) -> Emitted:
    t_id = ctx.ident(op.name, "table")
    p_id = ctx.ident(op.name, "params")
    table = _c_array("int8_t", t_id, op.table, f"{op.name}: table[x + 128]")
    params = _c_params("qc_lut_params", p_id, [[("size", ctx.size(op.output)), ("table", t_id)]])
    return Emitted((table, params), (_call(ctx, op, "qc_lut_s8", p_id, ctx.ptr(op.input), ctx.ptr(op.output)),))


@emit_op.register
def _(op: ir.PRelu, ctx: EmitContext) -> Emitted:
    channels = int(ctx.shape(op.input)[0])
    rq_defs, m_id, s_id = _requant_arrays(ctx, op, op.neg_multiplier, op.neg_shift, prefix="neg_")
    p_id = ctx.ident(op.name, "params")
    cs, ps = ctx.strides(op.input) if len(ctx.shape(op.input)) in (2, 3) else (ctx.size(op.input) // channels, 1)
    params = _c_params("qc_prelu_params", p_id, [
        [("channels", channels), ("inner", ctx.size(op.input) // channels), ("c_stride", cs), ("i_stride", ps)],
        [("input_offset", op.input_offset), ("output_offset", op.output_offset)],
        [("pos_multiplier", op.pos_multiplier), ("pos_shift", op.pos_shift)],
        [("neg_multiplier", m_id), ("neg_shift", s_id)],
    ])
    return Emitted((*rq_defs, params),
                   (_call(ctx, op, "qc_prelu_s8", p_id, ctx.ptr(op.input), ctx.ptr(op.output)),))


@emit_op.register
def _(op: ir.Concat, ctx: EmitContext) -> Emitted:
    defs: list[str] = []
    calls: list[str] = [ctx.header_comment(op)]
    start = 0
    out_cs, out_ps = ctx.strides(op.output)
    for k, (tid, offset, m, s) in enumerate(zip(op.inputs, op.input_offsets, op.multipliers, op.shifts)):
        channels = int(ctx.shape(tid)[0])
        in_cs, in_ps = ctx.strides(tid)
        p_id = ctx.ident(op.name, f"in{k}_params")
        defs.append(_c_params("qc_concat_params", p_id, [
            [("channels", channels), ("pixels", ctx.size(tid) // channels)],
            [("in_cs", in_cs), ("in_ps", in_ps), ("out_cs", out_cs), ("out_ps", out_ps)],
            [("input_offset", offset), ("output_offset", op.output_offset)],
            [("multiplier", m), ("shift", s)],
        ]))
        calls.append(f"qc_concat_s8(&{p_id}, {ctx.ptr(tid)}, {ctx.ptr(op.output, start * out_cs)});")
        start += channels
    return Emitted(tuple(defs), ("\n".join(calls),))


@emit_op.register
def _(op: ir.Pad, ctx: EmitContext) -> Emitted:
    c, h, w = _spatial(ctx.shape(op.input))
    pt, pl, pb, pr = op.padding
    if op.name in ctx.layout.skipped:
        return Emitted((), (ctx.header_comment(op, "fused into the convolution(s) reading it, no code"),))
    p_id = ctx.ident(op.name, "params")
    in_cs, in_ps = ctx.strides(op.input)
    out_cs, out_ps = ctx.strides(op.output)
    params = _c_params("qc_pad_params", p_id, [
        [("channels", c), ("in_h", h), ("in_w", w)],
        [("in_cs", in_cs), ("in_ps", in_ps), ("out_cs", out_cs), ("out_ps", out_ps)],
        [("pad_top", pt), ("pad_left", pl), ("pad_bottom", pb), ("pad_right", pr)],
        [("value", op.value)],
    ])
    return Emitted((params,), (_call(ctx, op, "qc_pad_s8", p_id, ctx.ptr(op.input), ctx.ptr(op.output)),))


@emit_op.register
def _(op: ir.Softmax, ctx: EmitContext) -> Emitted:
    row = int(ctx.shape(op.input)[-1])
    t_id = ctx.ident(op.name, "exp_table")
    p_id = ctx.ident(op.name, "params")
    table = _c_array("uint32_t", t_id, op.exp_table, f"{op.name}: exp_table[max - x]")
    params = _c_params("qc_softmax_params", p_id, [
        [("rows", ctx.size(op.input) // row), ("row_size", row)],
        [("output_offset", op.output_offset)],
        [("exp_table", t_id)],
    ])
    return Emitted((table, params),
                   (_call(ctx, op, "qc_softmax_s8", p_id, ctx.ptr(op.input), ctx.ptr(op.output)),))


@emit_op.register
def _(op: ir.Reshape, ctx: EmitContext) -> Emitted:
    if op.output in ctx.plan.aliases:
        if ctx.plan.offsets.get(op.output) != ctx.plan.offsets.get(op.input):
            raise IRVerificationError(f"Reshape '{op.name}': aliased output is not at its input's offset")
        return Emitted((), (ctx.header_comment(op, "in place, no code"),))
    src, dst = ctx.ptr(op.input), ctx.ptr(op.output)
    return Emitted((), (f"{ctx.header_comment(op)}\nmemmove({dst}, {src}, {ctx.size(op.output)});",))


# ---------------------------------------------------------------------------- files


def _check_inputs(program: ir.Program, plan: MemoryPlan, name: str) -> None:
    if not _C_IDENT.match(name) or name == "qc_kernels":
        raise ConfigError(f"model name {name!r} must be a C identifier other than 'qc_kernels'")
    if len(program.inputs) != 1 or len(program.outputs) != 1:
        raise IRVerificationError(
            f"the C backend needs exactly one graph input and one output, program '{program.name}' "
            f"has {len(program.inputs)} and {len(program.outputs)}")
    io = {program.inputs[0], program.outputs[0]}
    missing = [op.name for op in program.ops if op.output not in io and op.output not in plan.offsets]
    if missing:
        raise IRVerificationError(f"memory plan does not place the outputs of ops {missing}; was it planned "
                                  f"for this program?")


def _arena_comment(program: ir.Program, plan: MemoryPlan, layout: Layout) -> str:
    lines = [f" * Arena: {layout.arena_size} bytes: planned tensors {plan.arena_size} (lower bound for this op "
             f"order: {plan.lower_bound}) + {layout.arena_size - plan.arena_size} grown for kernel scratch.",
             " * Tensors marked HWC are stored channels-last; the others in PyTorch order.",
             " *   offset     size  live ops    tensor"]
    for tid in sorted(plan.offsets, key=lambda t: (plan.offsets[t], t)):
        first, last = plan.lifetimes[tid]
        alias = " (in-place reshape)" if tid in plan.aliases else ""
        t = program.tensors[tid]
        hwc = " HWC" if layout.hwc(tid) else ""
        lines.append(f" * {plan.offsets[tid]:8d} {t.size:8d}  [{first:3d},{last:3d}]  "
                     f"{_comment_text(t.name)} {_shape_text(t.shape)}{hwc}{alias}")
    for op_name in sorted(layout.scratch, key=lambda n: (layout.scratch[n], n)):
        size = scratch_bytes(next(op for op in program.ops if op.name == op_name), program, layout.hwc_tensors,
                             layout.fused_pads)
        lines.append(f" * {layout.scratch[op_name]:8d} {size:8d}  scratch of {_comment_text(op_name)}")
    return "/*\n" + "\n".join(lines) + "\n */"


def _emit_header(program: ir.Program, plan: MemoryPlan, name: str, layout: Layout, n_regions: int) -> str:
    macro = name.upper()
    profile = (f"\n/* Profiling build: every kernel call is one instruction-count region ({n_regions} per run). */\n"
               f"#define {macro}_PROFILE_REGIONS {n_regions}\n") if n_regions else ""
    tin, tout = program.input, program.output
    return f"""\
/* {name}.h - generated by qcompile from program '{_comment_text(program.name)}'. Do not edit. */
#ifndef {macro}_H
#define {macro}_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

/* Input: int8 {_shape_text(tin.shape)} in PyTorch order without batch; real = scale * (q - zero_point). */
#define {macro}_INPUT_SIZE {tin.size}
#define {macro}_INPUT_SCALE {_c_float(tin.scale)}
#define {macro}_INPUT_ZERO_POINT {_c_macro_int(tin.zero_point)}

/* Output: int8 {_shape_text(tout.shape)}; real = scale * (q - zero_point). */
#define {macro}_OUTPUT_SIZE {tout.size}
#define {macro}_OUTPUT_SCALE {_c_float(tout.scale)}
#define {macro}_OUTPUT_ZERO_POINT {_c_macro_int(tout.zero_point)}

/* Bytes of the static arena inside {name}.c: {plan.arena_size} planned for tensors
   + {layout.arena_size - plan.arena_size} grown for kernel scratch (im2col). */
#define {macro}_ARENA_SIZE {layout.arena_size}
{profile}
/*
 * Run the model on one sample: input holds {macro}_INPUT_SIZE int8 values, output receives
 * {macro}_OUTPUT_SIZE. The buffers must not overlap. Not reentrant (one static arena).
 * Returns 0 on success, -1 if a pointer is NULL.
 */
int {name}_run(const int8_t *input, int8_t *output);

#ifdef __cplusplus
}}
#endif

#endif /* {macro}_H */
"""


_PROFILE_MACROS = """\
/*
 * Instruction-count regions (QEMU icount plugin markers; no-ops elsewhere). Each marker sits in
 * its own 16-byte aligned two-instruction function: QEMU 7.2 was seen to drop the plugin callback
 * of a marker inside a translation block cut at a code page end, which an aligned function
 * ending in a branch never is. Each region therefore also counts the marker function's return
 * and the call of the END function: run_c_qemu subtracts these 2 (PROFILE_OVERHEAD).
 */
#if defined(__arm__) || defined(__thumb__)
__attribute__((naked, noinline, used, aligned(16))) static void qc_region_begin(void)
{
    __asm__ volatile("mov r11, r11\\n\\tbx lr");
}
__attribute__((naked, noinline, used, aligned(16))) static void qc_region_end(void)
{
    __asm__ volatile("mov r10, r10\\n\\tbx lr");
}
#define QC_REGION_BEGIN() __asm__ volatile("bl qc_region_begin" ::: "lr", "memory")
#define QC_REGION_END() __asm__ volatile("bl qc_region_end" ::: "lr", "memory")
#else
#define QC_REGION_BEGIN() ((void)0)
#define QC_REGION_END() ((void)0)
#endif
"""

_KERNEL_CALL = re.compile(r"^(qc_\w+_s8)\(", re.M)


def _profile(statement: str, op: ir.Op, regions: list[str]) -> str:
    """Wrap every kernel call of ``statement`` in region markers; record one region name per call."""
    lines = statement.splitlines()
    calls = [i for i, line in enumerate(lines) if _KERNEL_CALL.match(line)]
    for k, i in enumerate(reversed(calls)):
        lines[i:i + 1] = ["QC_REGION_BEGIN();", lines[i], "QC_REGION_END();"]
    for k in range(len(calls)):
        regions.append(op.name if len(calls) == 1 else f"{op.name}[{k}]")
    return "\n".join(lines)


def _emit_source(program: ir.Program, plan: MemoryPlan, name: str, layout: Layout,
                 profile: bool = False) -> tuple[str, list[str]]:
    ctx = EmitContext(program, plan, name, layout)
    definitions: list[str] = []
    statements: list[str] = []
    regions: list[str] = []
    for op in program.ops:
        emitted = emit_op(op, ctx)
        definitions.extend(emitted.definitions)
        statements.extend(_profile(s, op, regions) if profile else s for s in emitted.statements)
    if program.outputs[0] == program.inputs[0]:
        statements.append(f"/* the graph output is the graph input */\n"
                          f"memmove(output, input, {program.output.size});")

    macro = name.upper()
    parts = [
        f"/* {name}.c - generated by qcompile from program '{_comment_text(program.name)}'. Do not edit. */\n"
        f"#include \"{name}.h\"\n\n#include <string.h>\n\n#include \"qc_kernels.h\"\n#include \"qc_inline.h\"\n",
        *((_PROFILE_MACROS,) if profile else ()),
        *definitions,
    ]
    run_prologue = ""
    if layout.arena_size > 0:
        parts.append(f"{_arena_comment(program, plan, layout)}\n"
                     f"static union {{\n    int64_t align; /* 8-byte alignment in plain C99 */\n"
                     f"    int8_t bytes[{macro}_ARENA_SIZE];\n}} {name}_arena;\n")
        run_prologue = f"    int8_t *const arena = {name}_arena.bytes;\n\n"
    body = "\n".join(_indent(s) for s in statements)
    parts.append(
        f"int {name}_run(const int8_t *input, int8_t *output)\n{{\n{run_prologue}"
        f"    if (input == NULL || output == NULL) {{\n        return -1;\n    }}\n"
        f"{body}\n    return 0;\n}}\n"
    )
    return "\n".join(parts), regions


def profile_regions(program: ir.Program, plan: MemoryPlan, name: str = "model") -> list[str]:
    """Op name of every instruction-count region of ``emit_c(..., profile=True)``, in run order
    (``op[k]`` for the k-th kernel call of an op with several, e.g. Concat)."""
    return _emit_source(program, plan, name, analyze(program, plan), profile=True)[1]


def _indent(statement: str) -> str:
    return "".join(f"    {line}\n" for line in statement.splitlines())


def _emit_makefile(name: str) -> str:
    v = f"QC_{name.upper()}"
    return f"""\
# {name}.mk - generated by qcompile. Makefile fragment for model '{name}'.
# Usage:
#   include path/to/{name}.mk
#   SRCS   += $({v}_SRCS)
#   CFLAGS += $({v}_INC) $({v}_CFLAGS)
{v}_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
{v}_SRCS := $({v}_DIR)/{name}.c {" ".join(f"$({v}_DIR)/{f}" for f in RUNTIME_FILES if f.endswith(".c"))}
{v}_INC := -I$({v}_DIR)
# Suggested flags (the sources are C99 and warning-free under -Wall -Wextra -pedantic).
{v}_CFLAGS := -std=c99 -O2 -Wall -Wextra -pedantic
# Cortex-M4F example: -mthumb -mcpu=cortex-m4 -mfloat-abi=hard -mfpu=fpv4-sp-d16
"""


def emit_c(program: ir.Program, plan: MemoryPlan, name: str, *, profile: bool = False) -> dict[str, str]:
    """Generate the C sources of ``program`` with memory ``plan``; returns ``{file name: text}``.

    Files: ``<name>.h``, ``<name>.c``, the runtime (:data:`RUNTIME_FILES`), ``<name>.mk``.
    ``profile=True`` wraps every kernel call in instruction-count region markers
    (:func:`profile_regions` names them) and defines ``<NAME>_PROFILE_REGIONS``.
    ``name`` must be a C identifier; it prefixes the public symbols (``<name>_run``) and
    upper-cased the macros (``<NAME>_INPUT_SIZE``...). Raises :class:`ConfigError` for a bad
    name and :class:`IRVerificationError` for programs the backend cannot express (more than
    one graph input or output, a plan that does not match the program).
    """
    ir.verify(program)
    _check_inputs(program, plan, name)
    layout = analyze(program, plan)
    source, regions = _emit_source(program, plan, name, layout, profile)
    files = {
        f"{name}.h": _emit_header(program, plan, name, layout, len(regions) if profile else 0),
        f"{name}.c": source,
    }
    files.update(runtime_sources())
    files[f"{name}.mk"] = _emit_makefile(name)
    return files
