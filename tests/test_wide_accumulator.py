"""The int64 accumulation path (issue: layers that could overflow int32 are handled, not only
rejected): a conv/dense whose exact accumulator bound passes INT32_MAX is lowered with
``acc_bits = 64``; the interpreter and C (host with AddressSanitizer + UBSan, and Cortex-M4 on
QEMU) agree bit for bit on inputs that drive the sums far beyond int32; the overflow proof states
"overflow-free: proven (int64 accumulator)" and whether the int32 saturation of the
requantization can change an output; hand-built int32 layers past the bound stay rejected."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn as nn

import qcompile
from qcompile.backends import ir
from qcompile.backends.interpreter import interpret
from qcompile.backends.memory_plan import plan_memory
from qcompile.backends.overflow import prove_no_overflow
from qcompile.errors import IRVerificationError
from qcompile.fixedpoint import INT32_MAX, quantize_multiplier

from qcompile.backends.qemu import toolchain_available
from test_c_backend import assert_qemu_matches

torch.set_num_threads(1)

FAN_IN = 70_000  # 127 * 255 * 70_000 = 2.27e9 > INT32_MAX: 8-bit weights of full magnitude overflow int32


def _dense_program(acc_bits: int, real_scale: float, fan_in: int = FAN_IN) -> ir.Program:
    """A dense layer with rows all +127, all -127 and random; input offset +128 (x + offset in
    [0, 255]), so the first two rows reach +-127 * 255 * fan_in, about 2**31.1."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (3, fan_in)).astype(np.int8)
    w[0], w[1] = 127, -127
    m, s = quantize_multiplier(real_scale)
    mult, shift = np.full(3, m, np.int32), np.full(3, s, np.int32)
    tensors = [ir.Tensor(0, "x", (fan_in,), 0.01, -128), ir.Tensor(1, "y", (3,), 1.0, 0)]
    op = ir.Dense("fc", 0, 1, w, np.array([5, -5, 0], np.int32), 128, 0, mult, shift, -128, 127, 8, None, None, acc_bits)
    return ir.verify(ir.Program("wide", tensors, [op], [0], [1]))


def _extreme_inputs(rng) -> np.ndarray:
    return np.concatenate([np.full((1, FAN_IN), 127, np.int8), np.full((1, FAN_IN), -128, np.int8),
                           np.full((1, FAN_IN), 60, np.int8), rng.integers(-128, 128, (3, FAN_IN), dtype=np.int8)])


def test_int32_layer_past_the_bound_is_rejected_and_int64_accepted():
    with pytest.raises(IRVerificationError, match="may overflow"):
        _dense_program(32, 1e-7)
    (bound,) = prove_no_overflow(_dense_program(64, 1e-7))
    assert bound.acc_bits == 64 and bound.proven and bound.acc_max > INT32_MAX
    assert bound.status() == "overflow-free: proven (int64 accumulator)"


@pytest.mark.parametrize("real_scale, exact", [(1e-7, True), (2e-10, False)])
def test_int64_dense_matches_the_interpreter_beyond_int32(real_scale, exact, sanitized_runner):
    """At scale 1e-7 the saturation at int32 only happens where the int8 output clamps anyway
    (the proof says so); at 2e-10 the int32 saturation matters (the proof says which channels) and
    C still equals the interpreter."""
    program = _dense_program(64, real_scale)
    (bound,) = prove_no_overflow(program)
    assert ("same outputs as unbounded arithmetic" in bound.notes[0]) == exact, bound.notes
    xs = _extreme_inputs(np.random.default_rng(1))
    expected = interpret(program, xs)
    acc = (xs.astype(np.int64) + 128) @ program.ops[0].weight.astype(np.int64).T + program.ops[0].bias
    assert np.abs(acc).max() > INT32_MAX  # the test really goes past int32
    np.testing.assert_array_equal(sanitized_runner.run_program(program, plan_memory(program), "wide", xs), expected)
    if exact:  # unbounded real arithmetic, rounded and clamped, gives the same int8 outputs
        ideal = np.clip(np.round(acc * real_scale), -128, 127)
        assert np.abs(ideal - expected).max() <= 1


class _HugeFanIn(nn.Module):
    """A conv over 1100 channels with an 8x8 kernel (fan-in 70,400) and a dense over its input's
    flattening (fan-in 70,400), both with weights of one magnitude: their 8-bit accumulators can
    exceed int32 for inputs in [0, 1] (zero point -128)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1100, 3, 8)
        self.fc = nn.Linear(1100 * 64, 2)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in (self.conv, self.fc):
                m.weight.copy_(torch.where(torch.rand(m.weight.shape, generator=g) < 0.5, -1.0, 1.0) * 1e-3)

    def forward(self, x):
        return torch.cat([self.conv(x).flatten(1), self.fc(x.flatten(1))], dim=1)


@pytest.fixture(scope="module")
def huge():
    x = torch.rand(8, 1100, 8, 8, generator=torch.Generator().manual_seed(1))
    art = qcompile.compile(_HugeFanIn().eval(), (x[:1],), calib=x, progress=False)
    return art, x


def test_compile_lowers_huge_fan_in_layers_to_int64_and_reports_it(huge):
    art, _ = huge
    wide = {op.name: op.acc_bits for op in art.program.ops if isinstance(op, (ir.Conv2D, ir.Dense))}
    assert wide == {"conv": 64, "fc": 64}
    text = art.report()
    assert "conv (Conv2D): overflow-free: proven (int64 accumulator)" in text
    assert "fc (Dense): overflow-free: proven (int64 accumulator)" in text


def test_int64_layers_of_a_compiled_model_are_bit_exact_on_host(huge, sanitized_runner):
    art, x = huge
    xq = art.quantize_input(x[:3])
    xq[0] = 127  # every input at its maximum: the sums pass int32
    np.testing.assert_array_equal(sanitized_runner.run(art, xq), art.run_int(xq))


@pytest.mark.skipif(not toolchain_available(), reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_int64_dense_is_bit_exact_on_cortex_m4():
    assert_qemu_matches(_dense_program(64, 1e-7, fan_in=20_000), "cortex-m4", seed=3, n=3, min_distinct=2)
