"""The compile-time specialized and direct-input kernels, bit-exact against the interpreter.

* ``qc_dw3x3_s8`` (qc_inline.h): depthwise 3x3 on a channels-last input, channels % 4 == 0, fast
  requantization; the assembly blocks for full, 3x2, 2x3 and 2x2 windows (stride 1 and 2,
  symmetric and asymmetric padding), the C path for clamped activations and 1-wide windows.
* ``qc_im2col`` rows of whole words for a one-channel input (kernel_w % 4 == 0: the first conv
  of DS-CNN) and for a channels-last input whose window rows are contiguous (cin_group = C = 2,
  kernel_w = 2), border pixels through the element-wise path.
* the fused pixel-pair GEMM routine for every reduction length modulo 4 (1..5 blocks and 16).
* ``qc_fc_s8`` reading its int8 input directly (no scratch), including a partial last block.
* ``qc_avgpool_s8``'s channels-last SIMD path (with a channel tail, clipped windows).

Each program runs on the host (plain C) and on QEMU: Cortex-M4/M7/M33 (DSP versions) and
Cortex-M3 (the portable build).
"""
from __future__ import annotations

import numpy as np
import pytest

from qcompile.backends import ir
from qcompile.backends.c_emitter import emit_c
from qcompile.backends.c_layout import analyze
from qcompile.backends.interpreter import interpret
from qcompile.backends.memory_plan import plan_memory
from qcompile.backends.qemu import run_c_qemu, toolchain_available
from test_c_backend import assert_qemu_matches, Builder, assert_c_matches, random_input

needs_qemu = pytest.mark.skipif(not toolchain_available(), reason="needs arm-none-eabi-gcc and qemu-system-arm")

FULL = (-128, 127)


def _join(b: Builder, branches: list[int]) -> ir.Program:
    flats = [b.reshape(t, (b.size(t),)) if len(b.shape(t)) > 1 else t for t in branches]
    return b.build(b.concat(flats, reals=list(1.0 + 0.05 * b.rng.random(len(flats)))))


def depthwise3x3_program() -> ir.Program:
    b = Builder(201, (3, 7, 6))
    x = b.input
    a4, a12, a8 = (b.conv(x, c, (1, 1), act=FULL) for c in (4, 12, 8))
    outs = [
        b.conv(a4, 4, (3, 3), padding=(1, 1, 1, 1), groups=4, act=FULL),          # all 4 window shapes
        b.conv(a12, 12, (3, 3), stride=(2, 2), padding=(1, 1, 1, 1), groups=12, act=FULL),
        b.conv(a12, 12, (3, 3), stride=(2, 2), padding=(0, 1, 1, 0), groups=12, act=FULL),  # asymmetric
        b.conv(a8, 8, (3, 3), groups=8, act=FULL),                                 # no padding
        b.conv(a8, 8, (3, 3), padding=(1, 1, 1, 1), groups=8, act=(-20, 90)),      # clamped: C path
    ]
    narrow = b.conv(b.conv(x, 4, (1, 6), act=FULL), 4, (3, 3), padding=(1, 1, 1, 1), groups=4, act=FULL)
    outs.append(narrow)                                                            # 1-wide input: 1-tap rows
    return _join(b, [b.conv(o, 3, (1, 1)) for o in outs])


def gemm_program() -> ir.Program:
    b = Builder(202, (1, 12, 11))
    x = b.input
    outs = [
        b.conv(x, 8, (4, 4), stride=(2, 2), padding=(2, 1, 1, 2), act=FULL),      # 1 input channel, k = 16
        b.conv(x, 6, (3, 8), padding=(1, 3, 1, 4), act=FULL),                      # kernel_w 8, wide padding
    ]
    c2 = b.conv(x, 2, (1, 1), act=FULL)
    outs.append(b.conv(c2, 6, (3, 2), padding=(1, 1, 1, 0), act=FULL))            # cin = C = 2, rows of 4 bytes
    for cin in (4, 8, 12, 16, 20, 64):                                            # 1, 2, 3, 4, 5, 16 blocks
        outs.append(b.conv(b.conv(x, cin, (1, 1), act=FULL), 6, (1, 1), act=FULL))
    wide = b.conv(x, 6, (1, 1), act=FULL)
    outs += [
        b.avgpool(wide, (3, 2), (2, 1), (1, 0, 1, 1)),                             # HWC, channel tail of 2
        b.avgpool(b.conv(x, 4, (1, 1), act=FULL), (12, 11), (1, 1)),               # 132 taps in int16 lanes
        b.avgpool(b.conv(x, 4, (1, 1), act=FULL), (12, 11), (1, 1), (6, 6, 5, 5)),  # clipped windows
        b.dense(b.reshape(wide, (b.size(wide),)), 9),                              # 792 inputs, read directly
        b.dense(b.gap(wide), 5),                                                   # 6 inputs: partial block
    ]
    return _join(b, outs)


PROGRAMS = {"depthwise3x3": depthwise3x3_program, "gemm": gemm_program}


@pytest.fixture(scope="module", params=sorted(PROGRAMS))
def program(request) -> ir.Program:
    return PROGRAMS[request.param]()


def test_programs_use_the_kernels():
    dw = emit_c(depthwise3x3_program(), plan_memory(depthwise3x3_program()), "m")["m.c"]
    assert dw.count("qc_dw3x3_s8(") == 6
    g = gemm_program()
    src = emit_c(g, plan_memory(g), "m")["m.c"]
    assert ".k_seq = 0" in src and ".fused = 1" in src and "qc_fc_s8(" in src
    layout = analyze(g, plan_memory(g))
    assert not any(isinstance(op, ir.Dense) for op in g.ops if op.name in layout.scratch)


def test_host_plain_c(program):
    assert_c_matches(program, n=4, min_distinct=16, sanitize=False)


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("cpu", ["cortex-m4", "cortex-m3", "cortex-m7", "cortex-m33"])
def test_qemu_bit_exact(program, cpu):
    assert_qemu_matches(program, cpu, seed=9, name="spec", min_distinct=16)


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("opt", ["-Os", "-O1"])
def test_qemu_other_optimization_levels(opt):
    program = depthwise3x3_program()
    xs = random_input(program, 2, seed=10)
    run = run_c_qemu(program, plan_memory(program), xs, name="spec", cpu="cortex-m4", opt=opt)
    assert np.array_equal(run.outputs, interpret(program, xs))
