"""C backend tests: the generated C must match the reference interpreter bit for bit.

Every test builds integer IR programs by hand (random but valid parameters, checked by
``ir.verify``), runs them through ``interpreter.interpret`` and through the emitted C compiled
for the host (``host_build.run_c_host``) and compares the int8 outputs exactly. Several
variants of an op are chained into one program so that one gcc run covers them, and each
output is checked to be non-degenerate so a collapsed signal cannot hide a mismatch.

Also here: the fixed-point helpers of ``qc_kernels.h`` against ``fixedpoint.requantize`` on
edge values, a hypothesis property test over random op chains, byte-determinism of
``emit_c`` (across hash seeds), a Cortex-M4 ``-Werror`` compile with a check that the objects
need no floating point or libc beyond mem*, the Makefile fragment, and memory-plan invariants.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
from itertools import combinations
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompile.backends import ir
from qcompile.backends.c_emitter import RUNTIME_DIR, emit_c
from qcompile.backends.host_build import (
    CORTEX_M4_CFLAGS,
    HOST_CFLAGS,
    SANITIZE_CFLAGS,
    STRICT_WARNING_CFLAGS,
    compile_objects,
    run_c_host,
    write_sources,
)
from qcompile.backends.interpreter import interpret
from qcompile.backends.memory_plan import MemoryPlan, plan_memory
from qcompile.errors import BuildError, ConfigError, IRVerificationError
from qcompile.fixedpoint import INT32_MAX, INT32_MIN, quantize_multiplier, requantize

CFLAGS = (*HOST_CFLAGS, *STRICT_WARNING_CFLAGS)
N_SAMPLES = 40
ARM_CC = "arm-none-eabi-gcc"


# ---------------------------------------------------------------------------- program builder


def _spatial(shape: Sequence[int]) -> tuple[int, int, int]:
    return (shape[0], 1, shape[1]) if len(shape) == 2 else (shape[0], shape[1], shape[2])


def _like(shape: Sequence[int], c: int, h: int, w: int) -> tuple[int, ...]:
    """A shape of the same rank as ``shape`` ((C, L) or (C, H, W))."""
    return (c, w) if len(shape) == 2 else (c, h, w)


def _q(real: float) -> tuple[int, int]:
    return quantize_multiplier(float(real))


def _q_array(reals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = [_q(r) for r in np.asarray(reals, dtype=np.float64).ravel()]
    return (np.array([m for m, _ in pairs], dtype=np.int32), np.array([s for _, s in pairs], dtype=np.int32))


X_RMS = 75.0  # typical |x + input_offset| of int8 activations; scales multipliers to spread outputs


class Builder:
    """Builds random but valid IR programs. Every op method returns the id of its output tensor.

    Multipliers are chosen so that typical accumulators land around +-60 after requantization
    (outputs spread over the int8 range rather than collapsing to a clamp value).
    """

    def __init__(self, seed: int, input_shape: Sequence[int]):
        self.rng = np.random.default_rng(seed)
        self.tensors: list[ir.Tensor] = []
        self.ops: list[ir.Op] = []
        self.source: dict[int, str] = {}
        self.input = self.tensor(input_shape, zp=int(self.rng.integers(-128, 128)))

    # -- tensors and parameters
    def tensor(self, shape: Sequence[int], *, scale: float | None = None, zp: int | None = None) -> int:
        tid = len(self.tensors)
        scale = float(self.rng.uniform(0.01, 0.2)) if scale is None else scale
        zp = int(self.rng.integers(-40, 41)) if zp is None else zp
        self.tensors.append(ir.Tensor(tid, f"t{tid}", tuple(int(d) for d in shape), scale, zp))
        return tid

    def same_quant(self, x: int, shape: Sequence[int]) -> int:
        t = self.tensors[x]
        return self.tensor(shape, scale=t.scale, zp=t.zero_point)

    def shape(self, t: int) -> tuple[int, ...]:
        return self.tensors[t].shape

    def zp(self, t: int) -> int:
        return self.tensors[t].zero_point

    def size(self, t: int) -> int:
        return self.tensors[t].size

    def name(self, kind: str) -> str:
        return f"{kind}.{len(self.ops)}"  # dots exercise C identifier sanitizing

    def spread(self, n: int | None = None, width: float = 1.0):
        return 2.0 ** self.rng.uniform(-width, width, n)

    def act(self, zp_out: int) -> tuple[int, int]:
        r = self.rng.random()
        if r < 0.6:
            return -128, 127
        if r < 0.85:
            return zp_out, 127  # ReLU
        lo = int(self.rng.integers(-128, 0))
        return lo, int(self.rng.integers(lo + 1, 128))

    def add_op(self, op: ir.Op) -> int:
        self.ops.append(op)
        self.source[op.output] = f"model/{op.name}"
        return op.output

    def build(self, output: int | None = None, name: str = "test") -> ir.Program:
        out = self.ops[-1].output if output is None else output
        return ir.verify(ir.Program(name, list(self.tensors), list(self.ops), [self.input], [out],
                                    dict(self.source)))

    # -- ops with explicit parameters
    def conv(self, x: int, out_c: int, kernel=(3, 3), stride=(1, 1), dilation=(1, 1), padding=(0, 0, 0, 0),
             groups: int = 1, w_bits: int = 8, act: tuple[int, int] | None = None) -> int:
        shape = self.shape(x)
        c, h, w = _spatial(shape)
        (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = kernel, stride, dilation, padding
        ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
        wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
        assert ho >= 1 and wo >= 1, "invalid conv geometry"
        out = self.tensor(_like(shape, out_c, ho, wo))
        qmax = (1 << (w_bits - 1)) - 1
        cig = c // groups
        weight = self.rng.integers(-qmax, qmax + 1, (out_c, cig, kh, kw)).astype(np.int8)
        typical = math.sqrt(cig * kh * kw) * max(qmax * 0.6, 0.8) * X_RMS
        bias = self.rng.integers(-int(typical), int(typical) + 1, out_c).astype(np.int32)
        m, s = _q_array(60.0 / typical * self.spread(out_c))
        lo, hi = act or self.act(self.zp(out))
        return self.add_op(ir.Conv2D(self.name("conv"), x, out, weight, bias, tuple(stride), tuple(padding),
                                     tuple(dilation), groups, -self.zp(x), self.zp(out), m, s, lo, hi, w_bits))

    def dense(self, x: int, out_f: int, w_bits: int = 8) -> int:
        fi = self.size(x)
        out = self.tensor((out_f,))
        qmax = (1 << (w_bits - 1)) - 1
        weight = self.rng.integers(-qmax, qmax + 1, (out_f, fi)).astype(np.int8)
        typical = math.sqrt(fi) * max(qmax * 0.6, 0.8) * X_RMS
        bias = self.rng.integers(-int(typical), int(typical) + 1, out_f).astype(np.int32)
        m, s = _q_array(60.0 / typical * self.spread(out_f))
        lo, hi = self.act(self.zp(out))
        return self.add_op(ir.Dense(self.name("dense"), x, out, weight, bias, -self.zp(x), self.zp(out),
                                    m, s, lo, hi, w_bits))

    def add(self, a: int, b: int, *, subtract: bool = False, left_shift: int = 20,
            reals: tuple[float, float, float] | None = None) -> int:
        out = self.tensor(self.shape(a))
        if reals is None:  # TFLite's ADD preparation with random relative scales
            s1, s2 = self.spread(2)
            twice = 2.0 * max(s1, s2)
            reals = (s1 / twice, (-1.0 if subtract else 1.0) * s2 / twice, twice * 60.0 / (X_RMS * (1 << left_shift)))
        (m1, sh1), (m2, sh2), (mo, sho) = (_q(r) for r in reals)
        lo, hi = self.act(self.zp(out))
        return self.add_op(ir.Add(self.name("sub" if subtract else "add"), a, b, out, -self.zp(a), -self.zp(b),
                                  m1, sh1, m2, sh2, mo, sho, self.zp(out), left_shift, lo, hi))

    def mul(self, a: int, b: int) -> int:
        out = self.tensor(self.shape(a))
        m, s = _q(60.0 / (X_RMS * X_RMS) * self.spread())
        lo, hi = self.act(self.zp(out))
        return self.add_op(ir.Mul(self.name("mul"), a, b, out, -self.zp(a), -self.zp(b), self.zp(out), m, s, lo, hi))

    def _pool_out(self, x: int, kernel, stride, padding) -> tuple[int, ...]:
        shape = self.shape(x)
        c, h, w = _spatial(shape)
        ho = (h + padding[0] + padding[2] - kernel[0]) // stride[0] + 1
        wo = (w + padding[1] + padding[3] - kernel[1]) // stride[1] + 1
        assert ho >= 1 and wo >= 1, "invalid pool geometry"
        return _like(shape, c, ho, wo)

    def maxpool(self, x: int, kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), act=(-128, 127)) -> int:
        out = self.same_quant(x, self._pool_out(x, kernel, stride, padding))
        return self.add_op(ir.MaxPool(self.name("maxpool"), x, out, tuple(kernel), tuple(stride), tuple(padding),
                                      *act))

    def avgpool(self, x: int, kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0)) -> int:
        out = self.tensor(self._pool_out(x, kernel, stride, padding))
        m, s = _q(self.spread(width=0.5) / (kernel[0] * kernel[1]))
        lo, hi = self.act(self.zp(out))
        return self.add_op(ir.AvgPool(self.name("avgpool"), x, out, tuple(kernel), tuple(stride), tuple(padding),
                                      -self.zp(x), self.zp(out), m, s, lo, hi))

    def gap(self, x: int, keep_dims: bool = False) -> int:
        c = self.shape(x)[0]
        inner = self.size(x) // c
        out = self.tensor((c, 1, 1) if keep_dims else (c,))
        m, s = _q(self.spread(width=0.5) / inner)
        return self.add_op(ir.GlobalAvgPool(self.name("gap"), x, out, -self.zp(x), self.zp(out), m, s))

    def lut(self, x: int) -> int:
        out = self.tensor(self.shape(x))
        table = self.rng.integers(-128, 128, 256).astype(np.int8)
        return self.add_op(ir.Lut(self.name("lut"), x, out, table))

    def prelu(self, x: int) -> int:
        out = self.tensor(self.shape(x))
        c = self.shape(x)[0]
        pm, ps = _q(self.spread())
        slopes = self.rng.uniform(-1.5, 1.5, c)
        slopes[self.rng.random(c) < 0.15] = 0.0  # zero multipliers
        nm, ns = _q_array(slopes)
        return self.add_op(ir.PRelu(self.name("prelu"), x, out, -self.zp(x), self.zp(out), pm, ps, nm, ns))

    def concat(self, xs: Sequence[int], identity_first: bool = False, reals: Sequence[float] | None = None) -> int:
        shape = self.shape(xs[0])
        out_shape = (sum(self.shape(x)[0] for x in xs), *shape[1:])
        out = self.tensor(out_shape, zp=self.zp(xs[0]) if identity_first else None)
        reals = self.spread(len(xs)) if reals is None else np.array(reals, dtype=np.float64)
        if identity_first:
            reals[0] = 1.0  # same quantization: the kernel's plain-copy path
        pairs = [_q(r) for r in reals]
        return self.add_op(ir.Concat(self.name("concat"), tuple(xs), out, tuple(-self.zp(x) for x in xs),
                                     tuple(m for m, _ in pairs), tuple(s for _, s in pairs), self.zp(out)))

    def pad(self, x: int, padding=(1, 1, 1, 1)) -> int:
        shape = self.shape(x)
        c, h, w = _spatial(shape)
        pt, pl, pb, pr = padding
        out = self.same_quant(x, _like(shape, c, h + pt + pb, w + pl + pr))
        return self.add_op(ir.Pad(self.name("pad"), x, out, tuple(padding), self.zp(x)))

    def reshape(self, x: int, shape: Sequence[int]) -> int:
        out = self.same_quant(x, shape)
        return self.add_op(ir.Reshape(self.name("reshape"), x, out))

    def transpose(self, x: int) -> int:
        """Swap the two last dims of a (C, H, W) tensor: a StridedCopy."""
        shape = self.shape(x)
        out = self.same_quant(x, (shape[0], shape[2], shape[1]))
        return self.add_op(ir.StridedCopy(self.name("transpose"), x, out, (0, 0, 0), ((1, 0, 0), (0, 0, 1), (0, 1, 0))))

    def resize(self, x: int) -> int:
        """Bilinear x2 (or linear x2 on (C, L)): an ir.Resize."""
        from qcompile.backends.lower import linear_taps

        shape = self.shape(x)
        c, h, w = _spatial(shape)
        rows = linear_taps(h, 2 * h, False) if len(shape) == 3 else np.array([[0, 0, 1, 0]], dtype=np.int32)
        out = self.same_quant(x, (c, 2 * h, 2 * w) if len(shape) == 3 else (c, 2 * w))
        m, sh = _q(1.0 / (int(rows[0, 2] + rows[0, 3]) * 4 * w))
        return self.add_op(ir.Resize(self.name("resize"), x, out, rows, linear_taps(w, 2 * w, False), -self.zp(x),
                                     self.zp(x), m, sh))

    def minmax_const(self, x: int) -> int:
        """max(x, constant) then min with x again: ir.Constant and ir.MinMax."""
        const = self.tensor(self.shape(x))
        self.add_op(ir.Constant(self.name("const"), const, self.rng.integers(-128, 128, self.shape(x)).astype(np.int8)))
        out = self.tensor(self.shape(x))
        pairs = [_q(r) for r in self.spread(2)]
        y = self.add_op(ir.MinMax(self.name("max"), x, const, out, True, (-self.zp(x), -self.zp(const)),
                                  tuple(m for m, _ in pairs), tuple(s for _, s in pairs), self.zp(out)))
        out2 = self.tensor(self.shape(x))
        pairs = [_q(r) for r in self.spread(2)]
        return self.add_op(ir.MinMax(self.name("min"), y, x, out2, False, (-self.zp(y), -self.zp(x)),
                                     tuple(m for m, _ in pairs), tuple(s for _, s in pairs), self.zp(out2)))

    def softmax(self, x: int) -> int:
        out = self.tensor(self.shape(x), scale=1.0 / 256.0, zp=-128)
        exp_bits = int(self.rng.integers(16, 32))
        d = np.arange(256, dtype=np.float64)
        table = np.round(2.0 ** exp_bits * np.exp(-d * self.tensors[x].scale * 4.0)).astype(np.uint32)
        return self.add_op(ir.Softmax(self.name("softmax"), x, out, table, -128))

    # -- ops with random parameters (always valid for the current shape)
    def random_conv(self, x: int, mode: str | None = None) -> int:
        shape = self.shape(x)
        c, h, w = _spatial(shape)
        one_d = len(shape) == 2
        mode = mode or str(self.rng.choice(["dense", "depthwise", "grouped", "pointwise"]))
        divisors = [g for g in range(2, c + 1) if c % g == 0]
        if mode == "depthwise":
            groups, out_c = c, c * int(self.rng.integers(1, 3))
        elif mode == "grouped" and divisors:
            groups = int(self.rng.choice(divisors))
            out_c = groups * int(self.rng.integers(1, 4))
        else:
            groups, out_c = 1, int(self.rng.integers(1, 11))
        w_bits = int(self.rng.choice([8, 8, 8, 6, 4, 2]))
        if mode == "pointwise":  # 1x1, stride 1, no padding: keeps the spatial shape
            return self.conv(x, out_c, (1, 1), groups=groups, w_bits=w_bits)
        for _ in range(30):
            kh, kw = (1 if one_d else int(self.rng.integers(1, 4))), int(self.rng.integers(1, 6 if one_d else 4))
            sh, sw = (1 if one_d else int(self.rng.integers(1, 3))), int(self.rng.integers(1, 3))
            dh, dw = (1 if one_d else int(self.rng.integers(1, 3))), int(self.rng.integers(1, 3))
            pt, pb = (0, 0) if one_d else tuple(int(v) for v in self.rng.integers(0, 3, 2))
            pl, pr = (int(v) for v in self.rng.integers(0, 3, 2))
            if (h + pt + pb - dh * (kh - 1) - 1) >= 0 and (w + pl + pr - dw * (kw - 1) - 1) >= 0:
                return self.conv(x, out_c, (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr), groups, w_bits)
        return self.conv(x, out_c, (1, 1), groups=groups, w_bits=w_bits)

    def same_shape_branch(self, x: int) -> int:
        """A LUT or a 'same' depthwise conv of ``x`` (for Add/Sub side branches)."""
        if self.rng.integers(2):
            return self.lut(x)
        c = self.shape(x)[0]
        if len(self.shape(x)) == 2:
            return self.conv(x, c, (1, 3), padding=(0, 1, 0, 1), groups=c)
        return self.conv(x, c, (3, 3), padding=(1, 1, 1, 1), groups=c)

    def random_pool(self, x: int, kind: str) -> int:
        c, h, w = _spatial(self.shape(x))
        one_d = len(self.shape(x)) == 2
        for _ in range(30):
            kh, kw = (1 if one_d else int(self.rng.integers(1, 4))), int(self.rng.integers(1, 4))
            sh, sw = (1 if one_d else int(self.rng.integers(1, 3))), int(self.rng.integers(1, 3))
            pt, pb = (0, 0) if one_d else tuple(int(v) for v in self.rng.integers(0, kh + 1, 2))
            pl, pr = (int(v) for v in self.rng.integers(0, kw + 1, 2))
            if h + pt + pb >= kh and w + pl + pr >= kw:
                if kind == "max":
                    return self.maxpool(x, (kh, kw), (sh, sw), (pt, pl, pb, pr), self.act(self.zp(x)))
                return self.avgpool(x, (kh, kw), (sh, sw), (pt, pl, pb, pr))
        return self.maxpool(x, (1, 1), (1, 1)) if kind == "max" else self.avgpool(x, (1, 1), (1, 1))

    def random_pad(self, x: int) -> int:
        one_d = len(self.shape(x)) == 2
        t, b = (0, 0) if one_d else tuple(int(v) for v in self.rng.integers(0, 3, 2))
        l, r = (int(v) for v in self.rng.integers(0, 3, 2))
        return self.pad(x, (t, l, b, r))


def random_input(program: ir.Program, n: int = N_SAMPLES, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-128, 128, (n, *program.input.shape)).astype(np.int8)


def assert_c_matches(program: ir.Program, *, n: int = N_SAMPLES, min_distinct: int = 4, sanitize: bool = False,
                     plan: MemoryPlan | None = None) -> np.ndarray:
    """Run ``program`` through the interpreter and the host-compiled C; require identical int8 outputs."""
    xs = random_input(program, n)
    expected = interpret(program, xs)
    got = run_c_host(program, plan or plan_memory(program), xs, name="model", cflags=CFLAGS, sanitize=sanitize)
    assert got.dtype == np.int8 and got.shape == expected.shape
    if not np.array_equal(got, expected):
        bad = np.argwhere(got != expected)
        raise AssertionError(f"C differs from the interpreter at {len(bad)} of {expected.size} values, "
                             f"first at {tuple(bad[0])}: C {got[tuple(bad[0])]} vs interpreter "
                             f"{expected[tuple(bad[0])]}")
    assert np.unique(expected).size >= min_distinct, "degenerate output: the test would prove little"
    return got


def assert_qemu_matches(program: ir.Program, cpu: str, *, seed: int, n: int = 3, min_distinct: int = 1,
                        name: str = "model") -> None:
    """Run ``program`` on ``n`` random inputs in the interpreter and as firmware for ``cpu`` on QEMU;
    require identical int8 outputs (and at least ``min_distinct`` distinct output values)."""
    from qcompile.backends.qemu import run_c_qemu

    xs = random_input(program, n, seed=seed)
    run = run_c_qemu(program, plan_memory(program), xs, name=name, cpu=cpu)
    expected = interpret(program, xs)
    assert np.unique(expected).size >= min_distinct, "degenerate output: the test would prove little"
    bad = np.argwhere(run.outputs != expected)
    assert bad.size == 0, f"{cpu}: {len(bad)} mismatches, first at {tuple(bad[0])}"


# ---------------------------------------------------------------------------- fixed-point helpers


def _host_supports(flags: Sequence[str], directory: Path) -> bool:
    """Whether ``cc`` can build and run a trivial program with ``flags`` (e.g. sanitizers)."""
    (directory / "t.c").write_text("int main(void) { return 0; }\n")
    try:
        build = subprocess.run(["cc", *flags, "t.c", "-o", "t"], cwd=directory, capture_output=True, timeout=60)
        return build.returncode == 0 and subprocess.run([str(directory / "t")], capture_output=True,
                                                        timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def ubsan_flags(tmp_path_factory) -> tuple[str, ...]:
    """UBSan flags if the host toolchain supports them, else nothing."""
    flags = ("-fsanitize=undefined", "-fno-sanitize-recover=all")
    return flags if _host_supports(flags, tmp_path_factory.mktemp("ubsan")) else ()


def test_requantize_helper_matches_fixedpoint(tmp_path, ubsan_flags):
    """``qc_requantize64`` equals ``fixedpoint.requantize`` on edge and random values, UB-free."""
    rng = np.random.default_rng(1)
    edge_acc = [0, 1, -1, 2, -2, 3, -3, 127, -128, 255, -255, INT32_MAX, INT32_MIN, INT32_MAX - 1, INT32_MIN + 1,
                1 << 30, -(1 << 30), (1 << 32) - 1, -(1 << 32) + 1, 255 << 24, -(255 << 24)]
    edge_m = [0, 1 << 30, -(1 << 30), INT32_MAX, -INT32_MAX, (1 << 30) + 1, 1518500250]
    edge_s = [-31, -30, -17, -1, 0, 1, 2, 15, 29, 30]
    grid = np.array([(a, m, s) for a in edge_acc for m in edge_m for s in edge_s], dtype=np.int64)
    n = 20000
    sign = rng.choice([-1, 1], n)
    rand = np.stack([
        np.where(rng.random(n) < 0.5, rng.integers(-300, 301, n), rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True)),
        sign * rng.integers(1 << 30, INT32_MAX, n, endpoint=True),
        rng.integers(-31, 31, n),
    ], axis=1)
    cases = np.concatenate([grid, rand])
    rec = np.zeros(len(cases), dtype=[("acc", "<i8"), ("m", "<i4"), ("s", "<i4")])
    rec["acc"], rec["m"], rec["s"] = cases[:, 0], cases[:, 1], cases[:, 2]
    expected = requantize(cases[:, 0], cases[:, 1], cases[:, 2])

    (tmp_path / "h.c").write_text("""\
#include <stdio.h>
#include "qc_kernels.h"
int main(void)
{
    int64_t acc;
    int32_t ms[2];
    while (fread(&acc, sizeof acc, 1, stdin) == 1 && fread(ms, sizeof ms[0], 2, stdin) == 2) {
        const int32_t y = qc_requantize64(acc, ms[0], ms[1]);
        if (fwrite(&y, sizeof y, 1, stdout) != 1) {
            return 1;
        }
    }
    return 0;
}
""")
    subprocess.run(["cc", *CFLAGS, *ubsan_flags, f"-I{RUNTIME_DIR}", "h.c", "-o", "h"], cwd=tmp_path, check=True,
                   timeout=120)
    proc = subprocess.run([str(tmp_path / "h")], input=rec.tobytes(), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    got = np.frombuffer(proc.stdout, dtype="<i4")
    mismatch = np.flatnonzero(got != expected)
    assert got.size == len(cases) and mismatch.size == 0, f"first mismatch: {cases[mismatch[:1]]}"


# ---------------------------------------------------------------------------- one test per op kind


def test_conv2d_grouped_depthwise_strided_dilated_padded():
    b = Builder(10, (5, 9, 11))
    x = b.conv(b.input, 7, (3, 3), padding=(1, 1, 1, 1))                                   # dense 3x3 'same'
    x = b.conv(x, 14, (3, 3), stride=(2, 1), padding=(0, 1, 1, 0), groups=7)              # depthwise x2, asym pad
    x = b.conv(x, 6, (2, 3), dilation=(2, 1), padding=(2, 0, 1, 2), groups=2, w_bits=4)   # grouped, dilated
    x = b.conv(x, 3, (1, 1), groups=3, w_bits=3, act=(-128, 127))                      # pointwise grouped
    x = b.random_conv(x, "dense")
    assert_c_matches(b.build())


def test_conv1d():
    b = Builder(11, (6, 23))
    x = b.conv(b.input, 5, (1, 5), stride=(1, 2), dilation=(1, 2), padding=(0, 3, 0, 1))
    x = b.conv(x, 5, (1, 3), padding=(0, 1, 0, 1), groups=5)                              # depthwise 1-D
    x = b.conv(x, 9, (1, 2), stride=(1, 3), padding=(0, 0, 0, 2), groups=1, w_bits=5)
    x = b.random_conv(x, "grouped")
    assert_c_matches(b.build())


def test_conv_random_variants():
    for seed in range(3):
        b = Builder(100 + seed, (int(3 + seed), 8, 7))
        x = b.input
        for mode in ("dense", "depthwise", "grouped", "pointwise"):
            x = b.random_conv(x, mode)
        assert_c_matches(b.build(), min_distinct=2)


def test_dense():
    b = Builder(12, (3, 4, 5))
    x = b.dense(b.input, 17)        # reads a (C, H, W) tensor as 60 features
    x = b.dense(x, 9, w_bits=3)
    x = b.dense(x, 13, w_bits=8)
    assert_c_matches(b.build())


def test_add_and_subtract():
    b = Builder(13, (6, 5, 7))
    t = b.lut(b.input)
    s = b.add(b.input, t)
    d = b.add(s, b.input, subtract=True)
    dd = b.add(d, d, left_shift=14)                                # the same tensor on both sides
    # saturation of the left shift: (x + o) << 23, times 4 -> clamped to int32 before the high multiply
    sat = b.add(dd, t, left_shift=23, reals=(4.0, 0.0, 1.0 / (1 << 23)))
    y = b.add(sat, dd)
    assert_c_matches(b.build(y))


def test_mul_elementwise_and_per_channel():
    b = Builder(14, (6, 4, 5))
    sq = b.mul(b.input, b.lut(b.input))                   # equal shapes
    se = b.mul(sq, b.gap(sq, keep_dims=False))            # input2 (C,)
    se2 = b.mul(se, b.gap(b.input, keep_dims=True))       # input2 (C, 1, 1)
    flat = b.reshape(se2, (6, 20))
    one_d = b.mul(flat, b.gap(flat))                      # 1-D (C, L) with (C,)
    g = b.gap(one_d)
    vec = b.mul(g, b.lut(g))                              # rank-1 equal shapes
    assert_c_matches(b.build(vec), min_distinct=3)
    b2 = Builder(15, (5, 9))
    assert_c_matches(b2.build(b2.mul(b2.input, b2.gap(b2.input, keep_dims=False))))


def test_maxpool():
    b = Builder(16, (5, 10, 9))
    # random LUTs between the pools keep values spread (a max of maxes saturates)
    x = b.maxpool(b.input, (3, 3), (2, 2), (1, 1, 1, 1))
    x = b.maxpool(b.lut(x), (2, 2), (1, 1), (2, 0, 0, 2), act=(-100, 90))   # windows entirely in padding
    x = b.maxpool(b.lut(x), (3, 2), (2, 3), (0, 1, 2, 0))
    f = b.reshape(b.lut(x), (5, b.size(x) // 5))
    y = b.maxpool(f, (1, 3), (1, 2), (0, 1, 0, 3))                         # 1-D
    assert_c_matches(b.build(y))


def test_avgpool():
    b = Builder(17, (4, 11, 8))
    # random LUTs between the pools keep values spread (averages of averages concentrate)
    x = b.avgpool(b.input, (3, 3), (2, 2), (1, 1, 1, 1))
    x = b.avgpool(b.lut(x), (2, 2), (1, 1), (2, 0, 0, 2))                  # windows entirely in padding
    x = b.avgpool(b.lut(x), (2, 3), (3, 1), (0, 2, 1, 0))
    f = b.reshape(b.lut(x), (4, b.size(x) // 4))
    y = b.avgpool(f, (1, 4), (1, 3), (0, 2, 0, 1))                         # 1-D
    assert_c_matches(b.build(y))


def test_global_avgpool():
    b = Builder(18, (7, 6, 5))
    g = b.gap(b.input, keep_dims=True)
    m = b.mul(b.input, g)
    g2 = b.gap(b.reshape(m, (7, 30)))                               # 1-D input
    y = b.concat([g2, b.gap(b.input)])
    assert_c_matches(b.build(y))


def test_lut():
    b = Builder(19, (3, 7, 5))
    y = b.lut(b.lut(b.reshape(b.lut(b.input), (3, 35))))
    assert_c_matches(b.build(y), min_distinct=50)


def test_prelu():
    b = Builder(20, (5, 4, 3))
    x = b.prelu(b.input)
    x = b.prelu(b.reshape(x, (5, 12)))
    y = b.prelu(b.reshape(x, (60,)))
    assert_c_matches(b.build(y))


def test_concat():
    b = Builder(21, (4, 5, 6))
    a = b.conv(b.input, 3, (3, 3), padding=(1, 1, 1, 1))
    # block 0: same scale and zero point (plain copy); block 2: same scale, other zero point
    lut = b.lut(b.input)
    assert b.zp(lut) != b.zp(b.input)
    c = b.concat([b.input, a, lut, b.input], identity_first=True, reals=[1.0, 0.7, 1.0, 1.3])
    one_d = b.reshape(c, (15, 30))
    y = b.concat([b.lut(one_d), one_d])
    assert_c_matches(b.build(y))


def test_pad():
    b = Builder(22, (3, 5, 4))
    x = b.pad(b.input, (1, 2, 0, 3))
    x = b.pad(x, (0, 0, 2, 0))
    f = b.reshape(x, (3, b.size(x) // 3))
    y = b.pad(f, (0, 2, 0, 1))
    assert_c_matches(b.build(y))


def test_softmax():
    b = Builder(23, (4, 6, 10))
    s = b.softmax(b.input)                  # rows over the last dim
    f = b.dense(b.reshape(s, (240,)), 12)
    y = b.softmax(f)                        # a single row
    assert_c_matches(b.build(y))


# ---------------------------------------------------------------------------- memory corner cases


def _prog_input_to_output_reshape() -> ir.Program:
    b = Builder(30, (3, 4, 5))
    return b.build(b.reshape(b.input, (60,)))


def _prog_input_is_output() -> ir.Program:
    b = Builder(31, (2, 9))
    return b.build(b.input)


def _prog_output_read_later() -> ir.Program:
    b = Builder(32, (4, 6, 6))
    y = b.conv(b.input, 5, (3, 3), padding=(1, 1, 1, 1))
    z = b.lut(y)                            # reads the graph output after it is written
    b.add(y, z)
    b.reshape(y, (180,))
    return b.build(y)


def _prog_input_read_after_reshape_copies() -> ir.Program:
    b = Builder(33, (3, 8))
    r = b.reshape(b.input, (24,))           # input -> arena copy
    t = b.lut(b.input)
    u = b.reshape(t, (24,))                 # arena -> arena copy: t stays live
    v = b.reshape(u, (3, 8))                # in place: u dies here
    s = b.add(t, v)
    w = b.add(b.reshape(r, (3, 8)), s)
    return b.build(b.reshape(w, (4, 6)))    # arena -> output copy


def _prog_reshape_chain_aliases() -> ir.Program:
    b = Builder(34, (4, 3, 3))
    t = b.lut(b.input)
    r1 = b.reshape(t, (4, 9))
    r2 = b.reshape(r1, (36,))
    return b.build(b.dense(r2, 11))


def _prog_name_collisions() -> ir.Program:
    b = Builder(35, (3, 6))
    x = b.lut(b.input)
    b.ops[-1] = ir.Lut("blk.0", b.ops[-1].input, b.ops[-1].output, b.ops[-1].table)
    y = b.lut(x)
    b.ops[-1] = ir.Lut("blk_0", b.ops[-1].input, b.ops[-1].output, b.ops[-1].table)
    z = b.lut(y)
    b.ops[-1] = ir.Lut("qc_lut", b.ops[-1].input, b.ops[-1].output, b.ops[-1].table)  # would shadow a kernel type
    b.source[z] = "evil */ comment /* \u00e9"
    return b.build(z)


@pytest.mark.parametrize("make", [
    _prog_input_to_output_reshape,
    _prog_input_is_output,
    _prog_output_read_later,
    _prog_input_read_after_reshape_copies,
    _prog_reshape_chain_aliases,
    _prog_name_collisions,
], ids=lambda f: f.__name__[len("_prog_"):])
def test_memory_corner_cases(make: Callable[[], ir.Program]):
    program = make()
    plan = plan_memory(program)
    check_plan(program, plan)
    assert_c_matches(program, plan=plan)


def test_in_place_reshape_emits_no_code():
    program = _prog_reshape_chain_aliases()
    plan = plan_memory(program)
    assert len(plan.aliases) == 2
    source = emit_c(program, plan, "model")["model.c"]
    assert "memmove" not in source and source.count("in place, no code") == 2


@pytest.fixture(scope="module")
def asan_supported(tmp_path_factory) -> bool:
    return _host_supports(SANITIZE_CFLAGS, tmp_path_factory.mktemp("asan"))


# AddressSanitizer only guards the exact-size heap input/output buffers of the driver and the
# ends of the static arena, so every kernel reads the graph input directly and, per case, one
# kernel with tricky indexing writes the graph output.
SANITIZE_FINAL_OPS: dict[str, Callable[[Builder, int], int]] = {
    "conv": lambda b, x: b.conv(x, 4, (3, 2), (2, 1), (2, 2), (1, 2, 2, 0)),
    "depthwise": lambda b, x: b.conv(x, 8, (2, 3), (1, 2), (1, 1), (0, 1, 1, 1), groups=4),
    "maxpool": lambda b, x: b.maxpool(x, (3, 2), (2, 1), (2, 1, 0, 2)),
    "avgpool": lambda b, x: b.avgpool(x, (2, 3), (1, 2), (1, 2, 1, 0)),
    "pad": lambda b, x: b.pad(x, (2, 1, 0, 3)),
    "concat": lambda b, x: b.concat([x, b.lut(x), x]),
    "se_mul": lambda b, x: b.mul(x, b.gap(x)),
    "softmax": lambda b, x: b.softmax(x),
    "dense": lambda b, x: b.dense(x, 9),
}


@pytest.mark.parametrize("final", sorted(SANITIZE_FINAL_OPS))
def test_sanitizers(final: str, asan_supported: bool):
    """AddressSanitizer + UBSan: kernels stay inside the I/O buffers and have no UB."""
    if not asan_supported:
        pytest.skip("the host compiler cannot build and run with -fsanitize=address,undefined")
    b = Builder(40, (4, 5, 6))
    x = b.input
    if final == "conv":  # fan out: every other kernel reads the graph input directly (dead results)
        for make in (lambda: b.random_conv(x, "dense"), lambda: b.maxpool(x, (2, 2), (1, 1), (1, 1, 0, 0)),
                     lambda: b.avgpool(x, (2, 3), (1, 2), (0, 1, 1, 1)), lambda: b.pad(x, (1, 0, 0, 1)),
                     lambda: b.concat([x, x]), lambda: b.add(x, x), lambda: b.mul(x, x), lambda: b.gap(x),
                     lambda: b.prelu(x), lambda: b.lut(x), lambda: b.softmax(x), lambda: b.dense(x, 3),
                     lambda: b.reshape(x, (b.size(x),))):
            make()
    y = SANITIZE_FINAL_OPS[final](b, x)
    assert_c_matches(b.build(y), sanitize=True, n=8, min_distinct=3)


# ---------------------------------------------------------------------------- property test


SPATIAL_OPS = ("conv", "depthwise", "maxpool", "avgpool", "pad", "lut", "prelu", "add", "sub", "mul", "se",
               "concat", "to_1d", "softmax")
HEADS = ("none", "gap", "gap_dense", "flatten_dense", "flatten_dense_softmax")


def build_chain(seed: int, one_d: bool, channels: int, length: int, ops: Sequence[str], head: str,
                output_pick: int) -> ir.Program:
    """A random program: ``ops`` applied in sequence (with side branches), then a head."""
    b = Builder(seed, (channels, length) if one_d else (channels, max(1, length // 3), length))
    x = b.input
    for kind in ops:
        c = b.shape(x)[0]
        if kind == "conv":
            x = b.random_conv(x)
        elif kind == "depthwise":
            x = b.random_conv(x, "depthwise")
        elif kind in ("maxpool", "avgpool"):
            x = b.random_pool(x, kind[:3])
        elif kind == "pad":
            x = b.random_pad(x)
        elif kind == "lut":
            x = b.lut(x)
        elif kind == "prelu":
            x = b.prelu(x)
        elif kind in ("add", "sub"):
            x = b.add(x, b.same_shape_branch(x), subtract=kind == "sub")
        elif kind == "mul":
            x = b.mul(x, b.prelu(x))
        elif kind == "se":
            x = b.mul(x, b.lut(b.gap(x, keep_dims=bool(b.rng.integers(2)))))
        elif kind == "concat":
            if c < 24:
                x = b.concat([x, b.random_conv(x, "pointwise")], identity_first=bool(b.rng.integers(2)))
        elif kind == "transpose":
            if len(b.shape(x)) == 3:
                x = b.transpose(x)
        elif kind == "resize":
            if b.size(x) <= 4096:
                x = b.resize(x)
        elif kind == "minmax":
            x = b.minmax_const(x)
        elif kind == "to_1d":
            if len(b.shape(x)) == 3:
                x = b.reshape(x, (c, b.size(x) // c))
        elif kind == "softmax":
            x = b.softmax(x)
    if head == "gap":
        x = b.gap(x)
    elif head == "gap_dense":
        x = b.dense(b.gap(x), 7)
    elif head.startswith("flatten_dense"):
        x = b.dense(b.reshape(x, (b.size(x),)), 10)
        if head.endswith("softmax"):
            x = b.softmax(x)
    candidates = [op.output for op in b.ops] or [b.input]
    output = candidates[-1] if output_pick == 0 else candidates[output_pick % len(candidates)]
    return b.build(output, name="chain")


chain_args = dict(
    seed=st.integers(0, 2 ** 32 - 1),
    one_d=st.booleans(),
    channels=st.integers(1, 6),
    length=st.integers(3, 13),
    ops=st.lists(st.sampled_from(SPATIAL_OPS), min_size=1, max_size=6),
    head=st.sampled_from(HEADS),
    output_pick=st.integers(0, 3),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**chain_args)
def test_random_chains_match_interpreter(seed, one_d, channels, length, ops, head, output_pick):
    program = build_chain(seed, one_d, channels, length, ops, head, output_pick)
    plan = plan_memory(program)
    check_plan(program, plan)
    assert_c_matches(program, n=32, plan=plan, min_distinct=1)


@settings(max_examples=60, deadline=None)
@given(**chain_args)
def test_memory_plan_invariants(seed, one_d, channels, length, ops, head, output_pick):
    program = build_chain(seed, one_d, channels, length, ops, head, output_pick)
    check_plan(program, plan_memory(program))


def check_plan(program: ir.Program, plan: MemoryPlan) -> None:
    """No two simultaneously-live arena tensors overlap; everything fits; arena >= lower bound."""
    io = {program.inputs[0], program.outputs[0]}
    produced = {op.output: i for i, op in enumerate(program.ops)}
    arena_tensors = {t for t in produced if t not in io}
    assert set(plan.offsets) == arena_tensors
    # lifetimes recomputed independently: producer index .. last reader index
    for tid in arena_tensors:
        readers = [i for i, op in enumerate(program.ops) if tid in op.inputs]
        assert plan.lifetimes[tid] == (produced[tid], max(readers, default=produced[tid]))
    # memory groups: an op computed in place (reshape, element-wise) shares an input's bytes
    group = {tid: tid for tid in arena_tensors}
    for op in program.ops:
        if op.output in plan.aliases:
            shared = [t for t in op.inputs if t in plan.offsets and plan.offsets[t] == plan.offsets[op.output]]
            assert shared, f"in-place output of {op.name} is not at an input's offset"
            group[op.output] = group[shared[0]]
    sizes = {tid: program.tensors[tid].size for tid in arena_tensors}
    for tid in arena_tensors:
        assert plan.offsets[tid] % 8 == 0
        assert 0 <= plan.offsets[tid] and plan.offsets[tid] + sizes[tid] <= plan.arena_size
    for a, b in combinations(sorted(arena_tensors), 2):
        (a0, a1), (b0, b1) = plan.lifetimes[a], plan.lifetimes[b]
        if a0 <= b1 and b0 <= a1 and group[a] != group[b]:
            oa, ob = plan.offsets[a], plan.offsets[b]
            assert oa + sizes[a] <= ob or ob + sizes[b] <= oa, f"tensors {a} and {b} overlap while both live"
    assert plan.arena_size >= plan.lower_bound
    for step in range(len(program.ops)):  # an independent (weaker) bound: bytes live at each step
        live = {group[t] for t in arena_tensors if plan.lifetimes[t][0] <= step <= plan.lifetimes[t][1]}
        assert plan.arena_size >= sum(sizes[g] for g in live)


def test_memory_plan_linear_chain_is_optimal():
    b = Builder(50, (8, 8))
    y = b.lut(b.reshape(b.lut(b.lut(b.input)), (64,)))
    y = b.dense(b.lut(y), 5)
    program = b.build(y)
    plan = plan_memory(program)
    check_plan(program, plan)
    assert plan.arena_size == plan.lower_bound == 64  # the LUTs run in place


# ---------------------------------------------------------------------------- emission properties


def _all_ops_program(seed: int = 60) -> ir.Program:
    return build_chain(seed, False, 5, 9, ["conv", "depthwise", "maxpool", "pad", "add", "sub", "mul", "se",
                                           "concat", "transpose", "resize", "minmax", "avgpool", "prelu", "softmax", "to_1d",
                                           "conv"],
                       "flatten_dense_softmax", 0)


def test_all_ops_program_covers_every_op_kind():
    kinds = {type(op) for op in _all_ops_program().ops}
    assert kinds == set(ir.Op.__args__)


def test_emit_is_deterministic(tmp_path):
    a = emit_c(_all_ops_program(), plan_memory(_all_ops_program()), "net")
    b = emit_c(_all_ops_program(), plan_memory(_all_ops_program()), "net")  # fresh objects, same content
    assert list(a) == ["net.h", "net.c", "qc_kernels.h", "qc_inline.h", "qc_kernels.c", "qc_conv.c", "qc_wide.c", "net.mk"]
    assert a == b
    # independent of the hash seed (set/dict iteration order) of the emitting process
    (tmp_path / "program.pkl").write_bytes(pickle.dumps(_all_ops_program()))
    script = ("import hashlib, pickle, sys; from qcompile.backends.c_emitter import emit_c; "
              "from qcompile.backends.memory_plan import plan_memory; "
              "p = pickle.loads(open(sys.argv[1], 'rb').read()); f = emit_c(p, plan_memory(p), 'net'); "
              "print(hashlib.sha256(repr(sorted(f.items())).encode()).hexdigest())")
    other_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # differs from this process's
    # cwd outside the checkout: `python -c` puts the cwd first on sys.path
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "program.pkl")],
                         env={**os.environ, "PYTHONHASHSEED": other_seed}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == hashlib.sha256(repr(sorted(a.items())).encode()).hexdigest()


def test_emitted_code_shape():
    program = _all_ops_program()
    files = emit_c(program, plan_memory(program), "net")
    header, source = files["net.h"], files["net.c"]
    for macro in ("NET_INPUT_SIZE", "NET_OUTPUT_SIZE", "NET_ARENA_SIZE", "NET_INPUT_SCALE",
                  "NET_INPUT_ZERO_POINT", "NET_OUTPUT_SCALE", "NET_OUTPUT_ZERO_POINT"):
        assert re.search(rf"^#define {macro} \S", header, re.M), macro
    assert "int net_run(const int8_t *input, int8_t *output);" in header
    assert 'extern "C"' in header and "#ifndef NET_H" in header
    scale = re.search(r"#define NET_INPUT_SCALE (\S+)f$", header, re.M).group(1)
    assert float(scale) == program.input.scale
    assert "malloc" not in source and "printf" not in source and "float" not in source
    assert "int64_t align;" in source
    # one commented kernel call per op but reshapes and constants (Concat: one call per input block)
    n_calls = len(re.findall(r"^    qc_\w+_s8\(&", source, re.M))
    expected = sum(len(op.inputs) if isinstance(op, ir.Concat) else 1
                   for op in program.ops if not isinstance(op, (ir.Reshape, ir.Constant)))  # Constant: a memcpy
    assert n_calls == expected
    # large arrays are compact: no line holds more than 16 numbers, weight lines hold 16
    rows = re.findall(r"^ +(-?\d+u?,(?: +-?\d+u?,)*)$", source, re.M)
    assert rows and max(r.count(",") for r in rows) <= 16


def test_emit_rejects_bad_names_and_multi_input():
    program = _prog_reshape_chain_aliases()
    plan = plan_memory(program)
    for bad in ("my-model", "1net", "qc_kernels", ""):
        with pytest.raises(ConfigError):
            emit_c(program, plan, bad)
    two_in = ir.Program("two", program.tensors, program.ops, [*program.inputs, program.ops[0].output],
                        program.outputs)
    with pytest.raises(IRVerificationError):
        emit_c(two_in, plan_memory(two_in), "net")
    # two outputs: one buffer, in order, bit-exact with the interpreter
    two_out = ir.Program("two", program.tensors, program.ops, program.inputs, [program.ops[0].output,
                                                                              program.ops[-1].output])
    xs = random_input(two_out, 3)
    np.testing.assert_array_equal(run_c_host(two_out, None, xs), interpret(two_out, xs))


def test_build_error_carries_compiler_stderr():
    program = _prog_reshape_chain_aliases()
    with pytest.raises(BuildError, match="nosuchflag"):
        run_c_host(program, None, random_input(program, 2), cflags=(*HOST_CFLAGS, "-fnosuchflag"))


@pytest.mark.skipif(shutil.which(ARM_CC) is None, reason=f"{ARM_CC} not installed")
def test_cortex_m4_compile_is_warning_free_and_float_free(tmp_path):
    program = _all_ops_program()
    files = emit_c(program, plan_memory(program), "net")
    compile_objects(files, cc=ARM_CC, cflags=(*CORTEX_M4_CFLAGS, *STRICT_WARNING_CFLAGS), workdir=tmp_path)
    # soft-float build: any run-time float arithmetic would show up as an __aeabi_f*/d* call
    soft = tuple(f if not f.startswith("-mfloat-abi") else "-mfloat-abi=soft" for f in CORTEX_M4_CFLAGS
                 if not f.startswith("-mfpu"))
    compile_objects(files, cc=ARM_CC, cflags=soft, workdir=tmp_path / "soft")
    nm = shutil.which("arm-none-eabi-nm")
    if nm is None:
        return
    undefined = set()
    for obj in ("net.o", "qc_kernels.o", "qc_conv.o"):
        out = subprocess.run([nm, "-u", obj], cwd=tmp_path / "soft", capture_output=True, text=True,
                             check=True, timeout=60).stdout
        undefined |= {line.split()[-1] for line in out.splitlines() if line.strip()}
    float_helpers = re.compile(r"^__aeabi_([fd](add|sub|rsub|mul|div|neg|cmp\w*|2\w+)|u?[il]2[fd]|ul2[fd])$")
    allowed = re.compile(r"^(memcpy|memmove|memset|qc_\w+_s8|__aeabi_\w+)$")
    assert not [s for s in undefined if float_helpers.match(s)], undefined
    assert all(allowed.match(s) for s in undefined), undefined


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_makefile_fragment_builds(tmp_path):
    program = _prog_reshape_chain_aliases()
    write_sources(emit_c(program, plan_memory(program), "net"), tmp_path / "gen")
    (tmp_path / "Makefile").write_text(
        "include gen/net.mk\n"
        "OBJS := $(QC_NET_SRCS:.c=.o)\n"
        "CFLAGS += $(QC_NET_INC) $(QC_NET_CFLAGS) -Werror\n"
        "all: $(OBJS)\n"
    )
    subprocess.run(["make", "-s", "all"], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    assert (tmp_path / "gen" / "net.o").exists() and (tmp_path / "gen" / "qc_kernels.o").exists()


# --------------------------------------------------------------------------- verifier negatives


def _conv_program(**overrides):
    from qcompile.fixedpoint import quantize_multiplier

    m, s = quantize_multiplier(0.01)
    fields = dict(name="c", input=0, output=1, weight=np.ones((2, 1, 3, 3), np.int8), bias=np.zeros(2, np.int32),
                  stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1, input_offset=0, output_offset=0,
                  multiplier=np.full(2, m, np.int32), shift=np.full(2, s, np.int32), act_min=-128, act_max=127)
    fields.update(overrides)
    tensors = [ir.Tensor(0, "x", (1, 5, 5), 0.1, 0), ir.Tensor(1, "y", (2, 3, 3), 0.1, 0)]
    return ir.Program("p", tensors, [ir.Conv2D(**fields)], [0], [1])


@pytest.mark.parametrize("overrides, match", [
    ({"stride": (0, 1)}, "stride"),
    ({"padding": (-1, 0, 1, 0)}, "padding"),
    ({"act_min": 5, "act_max": 4}, "act_min > act_max"),
    ({"output_offset": 200}, "outside int8"),
    ({"bias": np.full(2, 2**31 - 100, np.int32)}, "accumulator may overflow"),
    ({"thresholds": np.zeros((2, 0), np.int32)}, "L >= 1"),
    ({"thresholds": np.array([[1, 0], [0, 1]], np.int32)}, "must not decrease"),
])
def test_verifier_rejects_invalid_conv(overrides, match):
    ir.verify(_conv_program())  # the baseline is valid
    with pytest.raises(IRVerificationError, match=match):
        ir.verify(_conv_program(**overrides))
