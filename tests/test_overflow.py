"""Overflow proof: exact int32 bounds per layer (backends/overflow.py), adversarial layers whose
accumulators reach INT32_MAX / -INT32_MAX exactly (8-bit, packed 4-bit, PWLQ codebook) run in C
(-O2, AddressSanitizer + UBSan where the host supports them) and match the interpreter bit for bit, one more unit of bias is
rejected by the IR verifier, and the report states "overflow-free: proven" for every layer."""
from __future__ import annotations

import json

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

torch.set_num_threads(1)

IN_ZP = -128  # input offset +128: x + offset in [0, 255], the widest one-sided range


def _requant(reals) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(float(r)) for r in reals]
    return np.array([m for m, _ in pairs], np.int32), np.array([s for _, s in pairs], np.int32)


def _at_the_limit(w: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Biases that put the extreme partial sum of every one-signed channel exactly on +/-INT32_MAX
    (for those, the exact bound and the IR verifier's sum|w| * max|x| + |b| coincide), small biases
    elsewhere, and multipliers that map each channel's accumulator range onto int8."""
    rows = w.astype(np.int64).reshape(len(w), -1)
    p = np.clip(rows, 0, None).sum(1) * 255  # inputs x + offset in [0, 255]
    n = np.clip(rows, None, 0).sum(1) * 255
    one_signed = (n == 0) | (p == 0)
    bias = np.where(one_signed, np.where(p >= -n, INT32_MAX - p, -INT32_MAX - n), 1000)
    span = np.where(one_signed, INT32_MAX, np.maximum(p, -n) + 1000)
    return bias.astype(np.int32), _requant(127.0 / span)


def _program(op_cls, weight, in_shape, out_shape, w_bits=8, codebook=None, bias_delta=0, **conv) -> ir.Program:
    bias, (m, s) = _at_the_limit(weight)
    bias = (bias.astype(np.int64) + bias_delta).astype(np.int32)
    tensors = [ir.Tensor(0, "x", in_shape, 0.02, IN_ZP), ir.Tensor(1, "y", out_shape, 0.05, 0)]
    if op_cls is ir.Dense:
        op = ir.Dense("fc", 0, 1, weight, bias, -IN_ZP, 0, m, s, -128, 127, w_bits, codebook)
    else:
        op = ir.Conv2D("conv", 0, 1, weight, bias, conv["stride"], conv["padding"], (1, 1), 1, -IN_ZP, 0, m, s,
                       -128, 127, w_bits, codebook)
    return ir.verify(ir.Program("adversarial", tensors, [op], [0], [1]))


def _adversarial_inputs(shape, rng) -> np.ndarray:
    return np.concatenate([np.full((1, *shape), 127, np.int8), np.full((1, *shape), -128, np.int8),
                           rng.integers(-128, 128, (4, *shape), dtype=np.int8)])


def _dense_weights(rng) -> np.ndarray:
    fi = 4096
    w = rng.integers(-127, 128, (4, fi)).astype(np.int8)
    w[0], w[1] = 127, -127  # all-positive / all-negative rows: the extremes are hit by constant inputs
    return w


def _conv4_weights(rng) -> np.ndarray:
    w = rng.integers(-7, 8, (3, 16, 3, 3)).astype(np.int8)
    w[0], w[1] = 7, -7
    return w


def _codebook(rng) -> ir.Codebook:
    levels = np.array([[-127, -60, -20, 0, 20, 60, 100, 127]] * 3, np.int8)
    codes = rng.integers(0, 8, (3, 8, 3, 3)).astype(np.uint8)
    codes[0], codes[1] = 7, 0
    return ir.Codebook(codes, levels, 3)


CASES = {
    "dense_int8": lambda rng: (ir.Dense, _dense_weights(rng), (4096,), (4,), 8, None, {}),
    "conv_w4_packed": lambda rng: (ir.Conv2D, _conv4_weights(rng), (16, 6, 6), (3, 6, 6), 4, None,
                                   {"stride": (1, 1), "padding": (1, 1, 1, 1)}),
    "conv_pwlq_codebook": lambda rng: (ir.Conv2D, None, (8, 5, 5), (3, 5, 5), 3, _codebook(rng),
                                       {"stride": (1, 1), "padding": (1, 1, 1, 1)}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_accumulators_at_the_int32_limit_run_exactly_in_c(case, sanitized_runner):
    rng = np.random.default_rng(0)
    cls, w, in_shape, out_shape, bits, cb, conv = CASES[case](rng)
    w = cb.decode() if cb is not None else w
    program = _program(cls, w, in_shape, out_shape, bits, cb, **conv)
    (bound,) = prove_no_overflow(program)
    assert bound.proven and bound.acc_max == INT32_MAX and bound.acc_min == -INT32_MAX
    assert bound.headroom_bits == 0.0
    xs = _adversarial_inputs(in_shape, rng)
    expected = interpret(program, xs)
    got = sanitized_runner.run_program(program, plan_memory(program), "adv", xs)
    np.testing.assert_array_equal(got, expected)
    assert np.unique(expected).size >= 3  # the outputs are not all clamped
    # one more unit of bias in the extreme channels and the verifier refuses the layer
    with pytest.raises(IRVerificationError, match="may overflow"):
        _program(cls, w, in_shape, out_shape, bits, cb, bias_delta=np.sign(
            np.array([1, -1] + [0] * (len(w) - 2))), **conv)


def test_full_sum_bound_is_attained():
    """The full-sum range is exact: the input that picks hi for w > 0 and lo for w < 0 reaches it."""
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (5, 300)).astype(np.int8)
    bias = rng.integers(-10_000, 10_000, 5).astype(np.int32)
    m, s = _requant(np.full(5, 1e-4))
    off = 37
    tensors = [ir.Tensor(0, "x", (300,), 0.02, -off), ir.Tensor(1, "y", (5,), 0.05, 0)]
    program = ir.verify(ir.Program("p", tensors, [ir.Dense("fc", 0, 1, w, bias, off, 0, m, s, -128, 127)], [0], [1]))
    (b,) = prove_no_overflow(program)
    lo, hi = -128 + off, 127 + off
    best = max(int(w[c].astype(np.int64) @ np.where(w[c] > 0, hi, lo) + bias[c]) for c in range(5))
    worst = min(int(w[c].astype(np.int64) @ np.where(w[c] > 0, lo, hi) + bias[c]) for c in range(5))
    assert f"full sum in [{worst:,}, {best:,}]" in b.detail
    assert b.acc_max >= best and b.acc_min <= worst


@pytest.mark.parametrize("cfg", [
    {},
    {"weight_bits": 4},
    {"weight_bits": 4, "weight_quantizer": "pwlq", "pwlq_layers": "all"},
    {"weight_bits": 3, "split_outliers": 0.1},
], ids=["int8", "w4", "pwlq", "w3_ocs"])
def test_report_states_overflow_free_per_layer(cfg, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    x = torch.randn(32, 3, 8, 8)
    art = qcompile.compile(model, (x[:1],), calib=x, config=qcompile.QuantConfig(**cfg), progress=False)
    text = art.report()
    weighted = [op for op in art.program.ops if isinstance(op, (ir.Conv2D, ir.Dense))]
    for op in weighted:
        assert f"  {op.name} ({type(op).__name__}): overflow-free: proven" in text
    if cfg.get("weight_quantizer") == "pwlq":
        assert "PWLQ codebook" in text
    if cfg.get("split_outliers"):
        assert art.records["split_outlier_channels"]["enabled"]
    data = json.loads((art.save(tmp_path / "b") / "report.json").read_text())
    assert set(data["overflow"]) == {op.name for op in art.program.ops}
    assert all(v["proven"] and v["status"] == "overflow-free: proven" for v in data["overflow"].values())


def test_resize_bound_is_the_blend_of_its_taps():
    """Bilinear resize sums 4 taps with integer weights of total Dy * Dx (align_corners=False:
    Dy = 2 * out_h); the proof bounds that sum, not just int8 movement."""
    import torch.nn.functional as F

    class Up(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    x = torch.rand(8, 2, 4, 4)
    art = qcompile.compile(Up(), (x[:1],), calib=x, progress=False)
    (op,) = [o for o in art.program.ops if isinstance(o, ir.Resize)]
    bound = {b.name: b for b in prove_no_overflow(art.program)}[op.name]
    d = (2 * 8) * (2 * 8)
    assert bound.proven and f"sum <= {d}" in bound.detail and bound.acc_max == d * (127 + op.input_offset)
