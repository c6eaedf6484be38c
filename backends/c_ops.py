"""Emitters of the element-wise, pooling, data-movement and softmax ops (one rule per IR op kind)."""
from __future__ import annotations

import numpy as np

from qcompile.backends import ir
from qcompile.backends.c_context import EmitContext, Emitted, emit_op, kernel_call
from qcompile.backends.c_format import c_array, c_params, spatial
from qcompile.backends.c_layout import add_uses_tables
from qcompile.backends.c_weights import INT32_MAX, requant_arrays
from qcompile.errors import IRVerificationError

__all__ = ["add_fast_fields", "storage_strides"]


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
    params = c_params("qc_add_params", p_id, [
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
        call = kernel_call(ctx, op, "qc_add_table_s8", p_id, ctx.ptr(op.input1), ctx.ptr(op.input2), ctx.ptr(op.output),
                     f"(int32_t *)(void *)(arena + {ctx.layout.scratch[op.name]})")
    else:
        call = kernel_call(ctx, op, "qc_add_s8", p_id, ctx.ptr(op.input1), ctx.ptr(op.input2), ctx.ptr(op.output))
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
    params = c_params("qc_mul_params", p_id, [
        [("channels", channels), ("inner", inner), ("c_stride", cs), ("i_stride", ps)],
        [("input1_offset", op.input1_offset), ("input2_offset", op.input2_offset)],
        [("output_offset", op.output_offset)],
        [("multiplier", op.multiplier), ("shift", op.shift)],
        [("act_min", op.act_min), ("act_max", op.act_max)],
    ])
    call = kernel_call(ctx, op, "qc_mul_s8", p_id, ctx.ptr(op.input1), ctx.ptr(op.input2), ctx.ptr(op.output))
    return Emitted((params,), (call,))


def _pool_geometry(ctx: EmitContext, op) -> list[list[tuple[str, object]]]:
    c, h, w = spatial(ctx.shape(op.input))
    _, ho, wo = spatial(ctx.shape(op.output))
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
    params = c_params("qc_maxpool_params", p_id, [
        *_pool_geometry(ctx, op),
        [("act_min", op.act_min), ("act_max", op.act_max)],
    ])
    return Emitted((params,), (kernel_call(ctx, op, "qc_maxpool_s8", p_id, ctx.ptr(op.input), ctx.ptr(op.output)),))


@emit_op.register
def _(op: ir.AvgPool, ctx: EmitContext) -> Emitted:
    defs: list[str] = []
    per_window: list[list[tuple[str, object]]] = []
    if op.count_padding is not None:
        rq_defs, m_id, s_id = requant_arrays(ctx, op, op.div_multiplier, op.div_shift, prefix="div_")
        defs.extend(rq_defs)
        ct, cl, cb, cr = op.count_padding
        per_window = [[("div_multiplier", m_id), ("div_shift", s_id)],
                      [("count_top", ct), ("count_left", cl), ("count_bottom", cb), ("count_right", cr)]]
    p_id = ctx.ident(op.name, "params")
    params = c_params("qc_avgpool_params", p_id, [
        *_pool_geometry(ctx, op),
        [("input_offset", op.input_offset), ("output_offset", op.output_offset)],
        [("multiplier", op.multiplier), ("shift", op.shift)],
        [("act_min", op.act_min), ("act_max", op.act_max)],
        *per_window,
    ])
    return Emitted((*defs, params), (kernel_call(ctx, op, "qc_avgpool_s8", p_id, ctx.ptr(op.input), ctx.ptr(op.output)),))


@emit_op.register
def _(op: ir.GlobalAvgPool, ctx: EmitContext) -> Emitted:
    channels = int(ctx.shape(op.input)[0])
    cs, ps = ctx.strides(op.input) if len(ctx.shape(op.input)) in (2, 3) else (ctx.size(op.input) // channels, 1)
    p_id = ctx.ident(op.name, "params")
    params = c_params("qc_global_avgpool_params", p_id, [
        [("channels", channels), ("inner", ctx.size(op.input) // channels), ("c_stride", cs), ("i_stride", ps)],
        [("input_offset", op.input_offset), ("output_offset", op.output_offset)],
        [("multiplier", op.multiplier), ("shift", op.shift)],
    ])
    call = kernel_call(ctx, op, "qc_global_avgpool_s8", p_id, ctx.ptr(op.input), ctx.ptr(op.output))
    return Emitted((params,), (call,))


@emit_op.register
def _(op: ir.Lut, ctx: EmitContext) -> Emitted:
    t_id = ctx.ident(op.name, "table")
    p_id = ctx.ident(op.name, "params")
    table = c_array("int8_t", t_id, op.table, f"{op.name}: table[x + 128]")
    params = c_params("qc_lut_params", p_id, [[("size", ctx.size(op.output)), ("table", t_id)]])
    return Emitted((table, params), (kernel_call(ctx, op, "qc_lut_s8", p_id, ctx.ptr(op.input), ctx.ptr(op.output)),))


@emit_op.register
def _(op: ir.PRelu, ctx: EmitContext) -> Emitted:
    channels = int(ctx.shape(op.input)[0])
    rq_defs, m_id, s_id = requant_arrays(ctx, op, op.neg_multiplier, op.neg_shift, prefix="neg_")
    p_id = ctx.ident(op.name, "params")
    cs, ps = ctx.strides(op.input) if len(ctx.shape(op.input)) in (2, 3) else (ctx.size(op.input) // channels, 1)
    params = c_params("qc_prelu_params", p_id, [
        [("channels", channels), ("inner", ctx.size(op.input) // channels), ("c_stride", cs), ("i_stride", ps)],
        [("input_offset", op.input_offset), ("output_offset", op.output_offset)],
        [("pos_multiplier", op.pos_multiplier), ("pos_shift", op.pos_shift)],
        [("neg_multiplier", m_id), ("neg_shift", s_id)],
    ])
    return Emitted((*rq_defs, params),
                   (kernel_call(ctx, op, "qc_prelu_s8", p_id, ctx.ptr(op.input), ctx.ptr(op.output)),))


def storage_strides(ctx: EmitContext, tid: int) -> tuple[int, ...]:
    """Element step of each logical dim of tensor ``tid`` in its storage (channels-last or PyTorch order)."""
    shape = [int(d) for d in ctx.shape(tid)]
    if len(shape) in (2, 3) and ctx.layout.hwc(tid):
        c = shape[0]
        return (1, c) if len(shape) == 2 else (1, shape[2] * c, c)
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))


def _copy_params(ctx: EmitContext, ident: str, dims, in_strides, out_strides,
                 requant: tuple[int, int, int, int] | None = None) -> str:
    """A qc_copy_params block: dims of extent 1 dropped, the rest ordered by decreasing output stride
    (the innermost loop then writes contiguously), padded in front to QC_COPY_DIMS."""
    loops = sorted(((int(o), int(i), int(n)) for n, i, o in zip(dims, in_strides, out_strides) if n != 1),
                   key=lambda t: -t[0])
    if len(loops) > ir.MAX_COPY_DIMS:
        raise IRVerificationError(f"copy '{ident}' walks {len(loops)} dims (at most {ir.MAX_COPY_DIMS})")
    loops = [(0, 0, 1)] * (ir.MAX_COPY_DIMS - len(loops)) + loops
    off_in, off_out, m, s = requant if requant is not None else (0, 0, 0, 0)

    def arr(values) -> str:
        return "{" + ", ".join(str(int(v)) for v in values) + "}"

    return c_params("qc_copy_params", ident, [
        [("dims", arr(n for _, _, n in loops))],
        [("in_strides", arr(i for _, i, _ in loops))],
        [("out_strides", arr(o for o, _, _ in loops))],
        [("requant", int(requant is not None))],
        [("input_offset", off_in), ("output_offset", off_out), ("multiplier", m), ("shift", s)],
    ])


@emit_op.register
def _(op: ir.MinMax, ctx: EmitContext) -> Emitted:
    p_id = ctx.ident(op.name, "params")
    params = c_params("qc_minmax_params", p_id, [
        [("size", ctx.size(op.output)), ("is_max", int(op.is_max))],
        [("input1_offset", op.input_offsets[0]), ("input1_multiplier", op.multipliers[0]),
         ("input1_shift", op.shifts[0])],
        [("input2_offset", op.input_offsets[1]), ("input2_multiplier", op.multipliers[1]),
         ("input2_shift", op.shifts[1])],
        [("output_offset", op.output_offset)],
    ])
    call = kernel_call(ctx, op, "qc_minmax_s8", p_id, ctx.ptr(op.input1), ctx.ptr(op.input2), ctx.ptr(op.output))
    return Emitted((params,), (call,))


@emit_op.register
def _(op: ir.Constant, ctx: EmitContext) -> Emitted:
    """The values in the tensor's storage order, copied from flash into the arena once per run."""
    strides = storage_strides(ctx, op.output)
    stored = np.empty(op.values.size, dtype=np.int8)
    offsets = sum(i * s for i, s in zip(np.indices(op.values.shape), strides)) if op.values.ndim else np.zeros((), int)
    stored[np.asarray(offsets).ravel()] = op.values.ravel()
    v_id = ctx.ident(op.name, "values")
    values = c_array("int8_t", v_id, stored, f"{op.name}: constant, storage order")
    return Emitted((values,), (f"{ctx.header_comment(op)}\nmemcpy({ctx.ptr(op.output)}, {v_id}, {op.values.size});",))


@emit_op.register
def _(op: ir.Resize, ctx: EmitContext) -> Emitted:
    c, h, w = spatial(ctx.shape(op.input))
    _, ho, wo = spatial(ctx.shape(op.output))
    in_cs, in_ps = ctx.strides(op.input)
    out_cs, out_ps = ctx.strides(op.output)
    r_id, c_id, p_id = ctx.ident(op.name, "rows"), ctx.ident(op.name, "cols"), ctx.ident(op.name, "params")
    rows = c_array("int32_t", r_id, op.rows, f"{op.name}: per output row (i0, i1, a0, a1)")
    cols = c_array("int32_t", c_id, op.cols, f"{op.name}: per output column (j0, j1, b0, b1)")
    params = c_params("qc_resize_params", p_id, [
        [("channels", c), ("in_h", h), ("in_w", w), ("out_h", ho), ("out_w", wo)],
        [("in_cs", in_cs), ("in_ps", in_ps), ("out_cs", out_cs), ("out_ps", out_ps)],
        [("rows", r_id), ("cols", c_id)],
        [("input_offset", op.input_offset), ("output_offset", op.output_offset)],
        [("multiplier", op.multiplier), ("shift", op.shift)],
    ])
    return Emitted((rows, cols, params),
                   (kernel_call(ctx, op, "qc_resize_s8", p_id, ctx.ptr(op.input), ctx.ptr(op.output)),))


@emit_op.register
def _(op: ir.StridedCopy, ctx: EmitContext) -> Emitted:
    ins = storage_strides(ctx, op.input)
    outs = storage_strides(ctx, op.output)
    base = sum(s * k for s, k in zip(op.start, ins))
    in_strides = [sum(r[k] * ins[k] for k in range(len(ins))) for r in op.steps]
    p_id = ctx.ident(op.name, "params")
    params = _copy_params(ctx, p_id, ctx.shape(op.output), in_strides, outs)
    return Emitted((params,), (kernel_call(ctx, op, "qc_copy_s8", p_id, ctx.ptr(op.input, base), ctx.ptr(op.output)),))


def _emit_concat_copies(op: ir.Concat, ctx: EmitContext) -> Emitted:
    """A concat along any axis: one requantizing strided copy per input block."""
    defs: list[str] = []
    calls: list[str] = [ctx.header_comment(op)]
    outs = storage_strides(ctx, op.output)
    start = 0
    for k, (tid, offset, m, s) in enumerate(zip(op.inputs, op.input_offsets, op.multipliers, op.shifts)):
        p_id = ctx.ident(op.name, f"in{k}_params")
        defs.append(_copy_params(ctx, p_id, ctx.shape(tid), storage_strides(ctx, tid), outs,
                                 (offset, op.output_offset, m, s)))
        calls.append(f"qc_copy_s8(&{p_id}, {ctx.ptr(tid)}, {ctx.ptr(op.output, start * outs[op.axis])});")
        start += int(ctx.shape(tid)[op.axis])
    return Emitted(tuple(defs), ("\n".join(calls),))


@emit_op.register
def _(op: ir.Concat, ctx: EmitContext) -> Emitted:
    if op.axis != 0 or len(ctx.shape(op.output)) > 3:
        return _emit_concat_copies(op, ctx)
    defs: list[str] = []
    calls: list[str] = [ctx.header_comment(op)]
    start = 0
    out_cs, out_ps = ctx.strides(op.output)
    for k, (tid, offset, m, s) in enumerate(zip(op.inputs, op.input_offsets, op.multipliers, op.shifts)):
        channels = int(ctx.shape(tid)[0])
        in_cs, in_ps = ctx.strides(tid)
        p_id = ctx.ident(op.name, f"in{k}_params")
        defs.append(c_params("qc_concat_params", p_id, [
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
    c, h, w = spatial(ctx.shape(op.input))
    pt, pl, pb, pr = op.padding
    if op.name in ctx.layout.skipped:
        return Emitted((), (ctx.header_comment(op, "fused into the convolution(s) reading it, no code"),))
    p_id = ctx.ident(op.name, "params")
    in_cs, in_ps = ctx.strides(op.input)
    out_cs, out_ps = ctx.strides(op.output)
    params = c_params("qc_pad_params", p_id, [
        [("channels", c), ("in_h", h), ("in_w", w)],
        [("in_cs", in_cs), ("in_ps", in_ps), ("out_cs", out_cs), ("out_ps", out_ps)],
        [("pad_top", pt), ("pad_left", pl), ("pad_bottom", pb), ("pad_right", pr)],
        [("value", op.value)],
        [("stride_h", op.interior[0] + 1), ("stride_w", op.interior[1] + 1)],
    ])
    return Emitted((params,), (kernel_call(ctx, op, "qc_pad_s8", p_id, ctx.ptr(op.input), ctx.ptr(op.output)),))


@emit_op.register
def _(op: ir.Softmax, ctx: EmitContext) -> Emitted:
    row = int(ctx.shape(op.input)[-1])
    t_id = ctx.ident(op.name, "exp_table")
    p_id = ctx.ident(op.name, "params")
    table = c_array("uint32_t", t_id, op.exp_table, f"{op.name}: exp_table[max - x]")
    params = c_params("qc_softmax_params", p_id, [
        [("rows", ctx.size(op.input) // row), ("row_size", row)],
        [("output_offset", op.output_offset)],
        [("exp_table", t_id)],
    ])
    return Emitted((table, params),
                   (kernel_call(ctx, op, "qc_softmax_s8", p_id, ctx.ptr(op.input), ctx.ptr(op.output)),))


@emit_op.register
def _(op: ir.Reshape, ctx: EmitContext) -> Emitted:
    if op.output in ctx.plan.aliases:
        if ctx.plan.offsets.get(op.output) != ctx.plan.offsets.get(op.input):
            raise IRVerificationError(f"Reshape '{op.name}': aliased output is not at its input's offset")
        return Emitted((), (ctx.header_comment(op, "in place, no code"),))
    src, dst = ctx.ptr(op.input), ctx.ptr(op.output)
    return Emitted((), (f"{ctx.header_comment(op)}\nmemmove({dst}, {src}, {ctx.size(op.output)});",))
