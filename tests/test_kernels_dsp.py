"""Every kernel variant of the C runtime bit-exact against the interpreter, on QEMU and the host.

The runtime picks, per layer and at run time, between fast paths and fallbacks: im2col from a
channels-last input in whole 4-channel words or element by element; GEMM blocks of 2 channels
x 2 pixels, the 1-pixel tail, odd channel counts, more channels than one accumulator chunk;
depthwise 3x3 windows unrolled (full and clipped at an edge), general windows, channels past
the last block of 4, and the channel-by-channel path for PyTorch-order inputs; int8 and int16
weight layouts of the GEMM kernels; fast and exact
requantization; the fast and the general Add; strided pools, pads, concats, PReLU and Mul in
both layouts; Dense on a flattened channels-last tensor (permuted weight columns); a Pad fused
into the following convolution. On Cortex-M4/M7/M33 the DSP versions run, on Cortex-M3 (the
Cortex-M0+ build) and on the host the plain-C ones. Many ops share one program (branches from
the input, joined by a Concat) so that one build covers them.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qcompile.backends import ir
from qcompile.backends.c_emitter import emit_c, profile_regions
from qcompile.backends.c_layout import analyze
from qcompile.backends.interpreter import interpret
from qcompile.backends.memory_plan import plan_memory
from qcompile.backends.qemu import run_c_qemu, toolchain_available
from test_c_backend import assert_qemu_matches, CFLAGS, Builder, assert_c_matches, random_input

needs_qemu = pytest.mark.skipif(not toolchain_available(), reason="needs arm-none-eabi-gcc and qemu-system-arm")


def _exact_requant(b: Builder) -> None:
    """Force the exact requantization path of the last op (a zero right shift on channel 0)."""
    op = b.ops[-1]
    m, s = op.multiplier.copy(), op.shift.copy()
    s[0] = 0
    m[0] = 1 << 30  # real 0.5: requantize(acc, 2^30, 0) = round(acc / 2)
    b.ops[-1] = dataclasses.replace(op, multiplier=m, shift=s)


def _int16_weights(b: Builder) -> None:
    """Force the int16 weight layout of the last conv/dense (reduction length >= 520): channel 1
    all +-127, so sum |w_o| * max |x + offset| >= 2^23 breaks the bound of the int8 ("w8")
    channel pairs (see qc_kernels.h). Channel 3 gets a bias far beyond 2^23 (fine for both
    layouts: only sum w_o x is bounded)."""
    op = b.ops[-1]
    w, bias = op.weight.copy(), op.bias.copy()
    rows = w.reshape(w.shape[0], -1)
    assert rows.shape[1] >= 520
    rows[1] = np.where(rows[1] < 0, -127, 127)
    bias[3] = (1 << 26) + 5
    b.ops[-1] = dataclasses.replace(op, weight=w, bias=bias)


def _join(b: Builder, branches: list[int]) -> ir.Program:
    """Flatten every branch and concatenate them (roughly identity rescales) into the graph output."""
    flats = [b.reshape(t, (b.size(t),)) if len(b.shape(t)) > 1 else t for t in branches]
    return b.build(b.concat(flats, reals=list(1.0 + 0.05 * b.rng.random(len(flats)))))


def _hwc(b: Builder, x: int, c: int) -> int:
    """An arena (channels-last) copy of ``x`` with ``c`` channels: a 1x1 convolution."""
    return b.conv(x, c, (1, 1), act=(-128, 127))


def conv_program() -> ir.Program:
    b = Builder(101, (6, 9, 7))
    x = b.input
    a8 = _hwc(b, x, 8)          # HWC, whole 4-channel blocks
    a6 = _hwc(b, x, 6)          # HWC, 6 channels: element-wise im2col
    p = b.pad(a8, (0, 0, 1, 1))  # fused into the conv below (a8 stays live: read again later)
    outs = [b.conv(p, 8, (3, 3), stride=(2, 2)),
        b.conv(a8, 5, (3, 3), padding=(1, 1, 1, 1)),                       # odd cout, odd pixel count
        b.conv(a8, 36, (3, 3), stride=(2, 2), padding=(0, 1, 1, 0)),      # > one accumulator chunk
        b.conv(a6, 7, (2, 2), stride=(3, 3), padding=(1, 0, 2, 1)),       # stride > kernel, asymmetric
        b.conv(a8, 4, (3, 2), dilation=(2, 2), padding=(2, 1, 0, 1)),     # dilation
        b.conv(a8, 6, (1, 1), groups=2),                                   # grouped 1x1
        b.conv(x, 9, (3, 3), padding=(1, 1, 1, 1)),                        # PyTorch-order graph input
        b.conv(a8, 3, (9, 7)),                                             # 1x1 output
        b.conv(a8, 12, (3, 3), groups=4, padding=(1, 1, 1, 1), w_bits=4),  # grouped 3x3, 4-bit
    ]
    b.conv(a8, 10, (3, 3), padding=(1, 1, 1, 1))
    _exact_requant(b)                                                      # exact requantization
    outs.append(b.ops[-1].output)
    b.conv(_hwc(b, x, 64), 6, (3, 3), padding=(1, 1, 1, 1))
    _int16_weights(b)                                                      # int16 weight layout
    outs.append(b.ops[-1].output)
    return _join(b, [b.conv(o, 3, (1, 1)) if len(b.shape(o)) == 3 else o for o in outs])


def depthwise_program() -> ir.Program:
    b = Builder(102, (5, 8, 6))
    x = b.input
    a8, a6, a36 = _hwc(b, x, 8), _hwc(b, x, 6), _hwc(b, x, 36)
    outs = [
        b.conv(a8, 8, (3, 3), padding=(1, 1, 1, 1), groups=8),             # unrolled 3x3, edges
        b.conv(a6, 6, (3, 3), padding=(1, 1, 1, 1), groups=6),             # channels past the last block
        b.conv(a36, 36, (3, 3), stride=(2, 2), padding=(1, 0, 1, 1), groups=36),  # > one chunk, stride 2
        b.conv(a8, 8, (5, 3), padding=(2, 2, 2, 0), dilation=(1, 2), groups=8),   # general windows
        b.conv(x, 5, (3, 3), padding=(1, 1, 1, 1), groups=5),              # PyTorch-order input
        b.conv(a8, 16, (3, 3), padding=(1, 1, 1, 1), groups=8),            # channel multiplier 2 (GEMM)
    ]
    b.conv(a8, 8, (3, 3), padding=(0, 1, 0, 1), groups=8)
    _exact_requant(b)
    outs.append(b.ops[-1].output)
    return _join(b, [b.conv(o, 3, (1, 1)) for o in outs])


def misc_program() -> ir.Program:
    b = Builder(103, (6, 7, 5))
    x = b.input
    a = _hwc(b, x, 8)
    c = _hwc(b, x, 8)
    outs = [
        b.add(a, c),                                                        # fast Add
        b.add(a, c, subtract=True, left_shift=0, reals=(0.7, -0.9, 3.0)),   # general Add (left shift in output)
        b.maxpool(a, (3, 2), (2, 1), (1, 0, 1, 1)),
        b.avgpool(a, (2, 3), (1, 2), (1, 1, 0, 1)),
        b.pad(a, (1, 2, 0, 1)),
        b.concat([a, b.lut(c)]),
        b.mul(a, b.gap(c)),                                                 # squeeze-excite
        b.prelu(a),
        b.dense(b.reshape(a, (b.size(a),)), 37),                            # permuted columns, > one chunk
        b.dense(b.gap(a), 5),                                               # 8 inputs, odd outputs
        b.dense(b.reshape(b.lut(x), (b.size(x),)), 3),                      # 210 inputs (not % 4)
    ]
    b.dense(b.gap(c), 6)
    _exact_requant(b)
    outs.append(b.ops[-1].output)
    w1, w2 = _hwc(b, x, 32), _hwc(b, x, 32)                             # >= 1024 elements: table Add
    for subtract, act in ((False, (-128, 127)), (True, (-20, 90))):
        b.add(w1, w2, subtract=subtract)
        b.ops[-1] = dataclasses.replace(b.ops[-1], act_min=act[0], act_max=act[1])
        outs.append(b.ops[-1].output)
    wide = _hwc(b, x, 16)
    b.dense(b.reshape(wide, (b.size(wide),)), 7)
    _int16_weights(b)                                                   # int16 weight layout
    outs.append(b.ops[-1].output)
    outs = [b.conv(o, 3, (1, 1)) if len(b.shape(o)) == 3 else o for o in outs]
    return _join(b, outs)


PROGRAMS = {"conv": conv_program, "depthwise": depthwise_program, "misc": misc_program}


@pytest.fixture(scope="module", params=sorted(PROGRAMS))
def program(request) -> ir.Program:
    return PROGRAMS[request.param]()


def test_programs_exercise_the_variants():
    conv, dw, misc = conv_program(), depthwise_program(), misc_program()
    for p in (conv, dw, misc):
        layout = analyze(p, plan_memory(p))
        assert layout.hwc_tensors, "no channels-last tensors: the fast paths would not run"
    assert analyze(conv, plan_memory(conv)).fused_pads
    src = emit_c(conv, plan_memory(conv), "m")["m.c"]
    assert ".rq_fast = 1" in src and ".rq_fast = 0" in src and "qc_conv_s8(" in src
    assert ".w8 = 1" in src and ".w8 = 0" in src
    src = emit_c(dw, plan_memory(dw), "m")["m.c"]
    assert "qc_dwconv_s8(" in src and "qc_conv_s8(" in src
    src = emit_c(misc, plan_memory(misc), "m")["m.c"]
    assert ".fast = 1" in src and ".fast = 0" in src and "columns permuted" in src
    assert ".w8 = 1" in src and ".w8 = 0" in src and "qc_add_table_s8(" in src and "qc_add_s8(" in src


def test_host_plain_c(program):
    assert_c_matches(program, n=6, min_distinct=16, sanitize=False)


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("cpu", ["cortex-m4", "cortex-m3", "cortex-m7", "cortex-m33"])
def test_qemu_bit_exact(program, cpu):
    assert_qemu_matches(program, cpu, seed=7, name="kern", min_distinct=16)


@needs_qemu
@pytest.mark.qemu
def test_profile_regions_per_kernel_call_and_deterministic():
    program = misc_program()
    plan = plan_memory(program)
    xs = np.repeat(random_input(program, 1, seed=3), 2, axis=0)
    run = run_c_qemu(program, plan, xs, name="kern", cpu="cortex-m4", profile=True)
    assert np.array_equal(run.outputs, interpret(program, xs))
    regions = profile_regions(program, plan, "kern")
    names = {op.name for op in program.ops}
    assert [r for r, _ in run.op_instructions[0]] == regions
    assert all(r.split("[")[0] in names for r in regions)
    assert run.op_instructions[0] == run.op_instructions[1] and all(c > 0 for _, c in run.op_instructions[0])
    assert run.instructions[0] == sum(c for _, c in run.op_instructions[0])
    whole = run_c_qemu(program, plan, xs[:1], name="kern", cpu="cortex-m4")
    assert whole.instructions[0] >= run.instructions[0]  # run() overhead outside the kernels


def test_profile_build_marks_every_call():
    program = misc_program()
    plan = plan_memory(program)
    src = emit_c(program, plan, "kern", profile=True)
    calls = src["kern.c"].count("QC_REGION_BEGIN();")
    assert calls == len(profile_regions(program, plan, "kern")) == src["kern.c"].count("QC_REGION_END();")
    assert f"#define KERN_PROFILE_REGIONS {calls}" in src["kern.h"]
    assert "PROFILE" not in emit_c(program, plan, "kern")["kern.h"]


def test_arena_macro_includes_scratch():
    program = conv_program()
    plan = plan_memory(program)
    layout = analyze(program, plan)
    header = emit_c(program, plan, "m")["m.h"]
    assert f"#define M_ARENA_SIZE {layout.arena_size}" in header
    assert layout.arena_size >= plan.arena_size
    assert CFLAGS  # the host checks above use the strict warning flags of test_c_backend
