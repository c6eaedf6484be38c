"""Exact bounds on every int32 intermediate of an integer program: the overflow-freedom proof.

For each op, :func:`prove_no_overflow` computes the exact range of the values the kernels hold in
int32 over *all* int8 inputs, from the integer weights, the input offset and the fan-in, and
checks it against ``[INT32_MIN, INT32_MAX]``. Arithmetic is on Python integers (arbitrary
precision, so exact, like sympy's ``Integer``); per-channel sums are taken in numpy int64 after
checking they cannot exceed 2**62.

Conv2D / Dense (any weight width; PWLQ codebook layers use their decoded int8 levels; layers
split by OCS are ordinary layers with more channels), per output channel ``c`` with input values
``v = x + input_offset`` in ``[lo, hi] = [-128 + off, 127 + off]`` (``lo <= 0 <= hi``; padding
contributes ``v = 0``)::

    P_c = sum_{w > 0} w * hi + sum_{w < 0} w * lo      N_c = sum_{w > 0} w * lo + sum_{w < 0} w * hi
    full sum  acc_c in [N_c + b_c, P_c + b_c]           (attained by some int8 input)
    any partial sum, bias added first or last, any accumulation order:
              in [N_c + min(b_c, 0), P_c + max(b_c, 0)]  (the tightest order-independent range)

Requantization (TFLite/CMSIS-NN): the accumulator is shifted left by ``max(shift, 0)`` in 64-bit
and saturated to int32 explicitly (defined behaviour in C and the interpreter; where it
saturates, the int8 output clamps anyway because ``|multiplier| >= 2**30``), the high multiply
is a 64-bit product (``|a * b| < 2**62``) and the right shift cannot overflow. So a layer is
overflow-free when its accumulator range fits int32; the report says where the left shift can
saturate. Add: both rescaled inputs and their int32 sum are bounded exactly by evaluating the
(monotone) requantization at the input extremes. Pools sum at most ``count`` values of
``[lo, hi]``; Mul multiplies two 9-bit values; Softmax sums uint32 table entries in 64 bits.

Conv2D / Dense lowered with ``acc_bits = 64`` (the lowering's answer when the int32 bound above
fails, e.g. a fan-in beyond ~66k at 8 bits) accumulate in int64 (``qc_wide.c``); their limit is
``2**62`` including the requantization's left shift, which the IR verifier checks. The report
then says "overflow-free: proven (int64 accumulator)" and, per layer, whether the int32
saturation inside the requantization can change an output or only happens where the int8 output
clamps anyway (:func:`_wide_notes`).

On the C side, the emitter uses a faster requantization (pre-scaled accumulators, int8 weight
pairs) only where it has proved its own, looser bound (``c_weights.requant_plan``/``w8_plan``);
otherwise it uses the exact 64-bit path. ``c_requant`` records which.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qcompile.backends import ir
from qcompile.fixedpoint import INT32_MAX, INT32_MIN, requantize

__all__ = ["LayerBound", "prove_no_overflow"]


@dataclass(frozen=True)
class LayerBound:
    """The exact int32 range of one op's intermediates and whether it is proven overflow-free."""

    name: str
    op: str
    acc_min: int        # smallest value any int32 intermediate can take
    acc_max: int        # largest
    detail: str         # what was bounded (fan-in, weight bits, codebook, ...)
    notes: list[str] = field(default_factory=list)
    c_requant: str | None = None  # "fast" / "exact" for conv/dense: which C requantization was proved usable
    acc_bits: int = 32  # 64: the int64 accumulation path (ir.ACC_BITS)

    @property
    def limit(self) -> int:
        """Largest magnitude the accumulator holds: INT32_MAX, or 2**62 on the int64 path (whose
        requantization multiplies by 2**max(shift, 0) in int64; the IR verifier bounds that)."""
        return INT32_MAX if self.acc_bits == 32 else 1 << 62

    @property
    def proven(self) -> bool:
        return -self.limit <= self.acc_min and self.acc_max <= self.limit

    @property
    def headroom_bits(self) -> float:
        """log2(limit / max |intermediate|): how many more bits the accumulator could take."""
        m = max(abs(self.acc_min), abs(self.acc_max), 1)
        return float(np.log2(self.limit / m))

    def status(self) -> str:
        if not self.proven:
            return "MAY OVERFLOW"
        return "overflow-free: proven" + (" (int64 accumulator)" if self.acc_bits == 64 else "")

    def as_dict(self) -> dict:
        return {"op": self.op, "status": self.status(), "proven": self.proven, "acc_min": self.acc_min,
                "acc_max": self.acc_max, "acc_bits": self.acc_bits, "headroom_bits": round(self.headroom_bits, 2),
                "detail": self.detail, "notes": list(self.notes), "c_requant": self.c_requant}


def _in_range(offset: int) -> tuple[int, int]:
    return -128 + int(offset), 127 + int(offset)


def _saturation_note(lo: int, hi: int, shift) -> list[str]:
    left = int(np.max(np.maximum(np.asarray(shift, dtype=np.int64), 0), initial=0))
    if left and (lo << left < INT32_MIN or hi << left > INT32_MAX):
        return [f"requantization left shift {left} saturates at int32 for extreme inputs (defined; the int8 "
                f"output clamps there anyway)"]
    return []


def _weighted(program: ir.Program, op) -> LayerBound:
    w = op.weight.astype(np.int64).reshape(op.weight.shape[0], -1)
    fan_in = w.shape[1]
    lo, hi = _in_range(op.input_offset)
    if fan_in * 128 * 256 >= 1 << 62:
        raise ValueError(f"{op.name}: fan-in {fan_in} too large for the int64 pre-check")
    pos, neg = np.clip(w, 0, None).sum(axis=1), np.clip(w, None, 0).sum(axis=1)
    p = pos * hi + neg * lo
    n = pos * lo + neg * hi
    b = op.bias.astype(np.int64)
    part_max = int((p + np.maximum(b, 0)).max(initial=0))
    part_min = int((n + np.minimum(b, 0)).min(initial=0))
    full_lo, full_hi = int((n + b).min(initial=0)), int((p + b).max(initial=0))
    kind = f"{op.w_bits}-bit weights" + (f" (PWLQ codebook, {op.codebook.bits}-bit codes)" if op.codebook else "")
    detail = f"fan-in {fan_in}, {kind}, inputs [{lo}, {hi}]; full sum in [{full_lo:,}, {full_hi:,}]"
    notes = [] if op.thresholds is not None else _saturation_note(full_lo, full_hi, op.shift)
    if op.acc_bits == 64:
        notes = _wide_notes(op, n + b, p + b)
        return LayerBound(op.name, type(op).__name__, part_min, part_max, detail, notes, "exact", 64)
    c_requant = None
    if op.thresholds is None:
        from qcompile.backends.c_weights import requant_plan

        c_requant = "fast" if requant_plan(op.weight, op.bias, op.multiplier, op.shift, op.input_offset,
                                           op.output_offset)[0] else "exact"
    else:
        notes.append("threshold output stage: int32 comparisons only")
    return LayerBound(op.name, type(op).__name__, part_min, part_max, detail, notes, c_requant)


def _wide_notes(op, full_lo: np.ndarray, full_hi: np.ndarray) -> list[str]:
    """The int64 path: where ``acc * 2**max(shift, 0)`` can pass int32, ``requantize`` saturates it
    before the multiply. That is exact when the saturated value already drives the int8 output to
    its clamp (``act_max`` above, ``act_min`` below; swapped for a negative multiplier): then any
    larger accumulator would clamp there too, requantization being monotone."""
    m = np.asarray(op.multiplier, dtype=np.int64)
    s = np.asarray(op.shift, dtype=np.int64)
    y_hi = requantize(np.full(m.shape, INT32_MAX, dtype=np.int64), m, s) + op.output_offset
    y_lo = requantize(np.full(m.shape, INT32_MIN, dtype=np.int64), m, s) + op.output_offset
    left = np.maximum(s, 0)
    over_hi = (full_hi << left) > INT32_MAX
    over_lo = (full_lo << left) < INT32_MIN
    pos = m >= 0
    ok_hi = np.where(pos, y_hi >= op.act_max, y_hi <= op.act_min)
    ok_lo = np.where(pos, y_lo <= op.act_min, y_lo >= op.act_max)
    bad = np.flatnonzero((over_hi & ~ok_hi) | (over_lo & ~ok_lo))
    saturating = int((over_hi | over_lo).sum())
    head = f"int64 accumulator: the int32 bound is exceeded in {saturating} of {len(m)} channels"
    if bad.size == 0:
        return [f"{head}; the requantization saturates those at int32 only where the int8 output clamps "
                "anyway: same outputs as unbounded arithmetic"]
    return [f"{head}; in channels {bad[:8].tolist()}{' ...' if bad.size > 8 else ''} the int32 saturation "
            "before the multiply can change outputs for such accumulators (defined, identical in C and "
            "the interpreter)"]


def _rq_range(lo: int, hi: int, multiplier, shift) -> tuple[int, int]:
    """Exact range of ``requantize`` over ``[lo, hi]`` (monotone in the input for a fixed multiplier)."""
    vals = requantize(np.array([lo, hi], dtype=np.int64), np.int64(multiplier), np.int64(shift))
    return int(vals.min()), int(vals.max())


def _bound(program: ir.Program, op) -> LayerBound:  # noqa: C901 - one case per op kind
    name, kind = op.name, type(op).__name__
    if isinstance(op, (ir.Conv2D, ir.Dense)):
        return _weighted(program, op)
    if isinstance(op, ir.Add):
        ranges = []
        for off, m, s in ((op.input1_offset, op.input1_multiplier, op.input1_shift),
                          (op.input2_offset, op.input2_multiplier, op.input2_shift)):
            lo, hi = _in_range(off)
            lo, hi = lo << op.left_shift, hi << op.left_shift
            ranges.append((lo, hi, *_rq_range(lo, hi, m, s)))
        s_lo = ranges[0][2] + ranges[1][2]
        s_hi = ranges[0][3] + ranges[1][3]
        vals = [v for r in ranges for v in r] + [s_lo, s_hi]
        return LayerBound(name, kind, min(vals), max(vals),
                          f"inputs << {op.left_shift}, rescaled, summed: sum in [{s_lo:,}, {s_hi:,}]",
                          _saturation_note(s_lo, s_hi, op.output_shift))
    if isinstance(op, ir.Mul):
        a, b = _in_range(op.input1_offset), _in_range(op.input2_offset)
        prods = [x * y for x in a for y in b]
        return LayerBound(name, kind, min(prods + [0]), max(prods + [0]), "product of two 9-bit values",
                          _saturation_note(min(prods), max(prods), op.shift))
    if isinstance(op, (ir.AvgPool, ir.GlobalAvgPool)):
        count = int(np.prod(op.kernel)) if isinstance(op, ir.AvgPool) else \
            int(np.prod(program.tensors[op.input].shape[1:]))
        lo, hi = _in_range(op.input_offset)
        return LayerBound(name, kind, min(count * lo, 0), max(count * hi, 0), f"sum of {count} inputs in [{lo}, {hi}]",
                          _saturation_note(count * lo, count * hi, op.shift))
    if isinstance(op, ir.PRelu):
        lo, hi = _in_range(op.input_offset)
        return LayerBound(name, kind, min(lo, 0), max(hi, 0), f"inputs [{lo}, {hi}] rescaled per sign",
                          _saturation_note(lo, hi, np.concatenate([np.atleast_1d(op.pos_shift), op.neg_shift])))
    if isinstance(op, ir.Concat):
        ranges = [_in_range(o) for o in op.input_offsets]
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
        notes = [n for r, s in zip(ranges, op.shifts) for n in _saturation_note(r[0], r[1], s)]
        return LayerBound(name, kind, min(lo, 0), max(hi, 0), "inputs rescaled block by block", notes[:1])
    if isinstance(op, ir.Resize):
        lo, hi = _in_range(op.input_offset)
        wr = np.abs(op.rows[:, 2:].astype(np.int64)).sum(axis=1).max(initial=0)
        wc = np.abs(op.cols[:, 2:].astype(np.int64)).sum(axis=1).max(initial=0)
        a_lo, a_hi = min(int(wr * wc) * lo, 0), max(int(wr * wc) * hi, 0)
        return LayerBound(name, kind, a_lo, a_hi,
                          f"blend of 4 inputs in [{lo}, {hi}] with integer weights of sum <= {int(wr * wc)}",
                          _saturation_note(a_lo, a_hi, op.shift))
    if isinstance(op, ir.Softmax):
        return LayerBound(name, kind, -128, 127, f"row sums of uint32 table entries in 64 bits "
                          f"(row length {program.tensors[op.input].shape[-1]})")
    return LayerBound(name, kind, -128, 127, "int8 data movement or table lookup only")


def prove_no_overflow(program: ir.Program) -> list[LayerBound]:
    """One :class:`LayerBound` per op, in program order."""
    return [_bound(program, op) for op in program.ops]
