"""Fixed-point requantization against exact rational arithmetic (sympy), and multiplier encoding."""
from __future__ import annotations

import math

import numpy as np
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.fixedpoint import INT32_MAX, INT32_MIN, quantize_multiplier, requantize, rounding_divide_by_pot, srdhm

int32s = st.integers(INT32_MIN, INT32_MAX)


def _round_half_away(r: sympy.Rational) -> int:
    return int(sympy.sign(r) * sympy.floor(abs(r) + sympy.Rational(1, 2)))


def _tflite_srdhm(a: int, b: int) -> int:
    """gemmlowp/TFLite SaturatingRoundingDoublingHighMul, transcribed (C truncating division)."""
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    q = abs(ab + nudge) // (1 << 31)
    return q if ab + nudge >= 0 else -q


@given(int32s, st.integers(-(2**31) + 1, 2**31 - 1))
def test_srdhm_is_round_half_up_of_exact_product_and_equals_tflite(a, b):
    exact = sympy.Rational(a * b, 2**31)
    got = int(srdhm(np.int64(a), np.int64(b)))
    assert got == int(sympy.floor(exact + sympy.Rational(1, 2)))
    assert got == _tflite_srdhm(a, b)


@given(st.integers(-(2**20), 2**20))
def test_srdhm_ties(a):
    # b = 2**30 makes a*b / 2**31 = a / 2: every odd a is an exact tie
    assert int(srdhm(np.int64(a), np.int64(2**30))) == _tflite_srdhm(a, 2**30) == math.floor(a / 2 + 0.5)


@given(int32s, st.integers(0, 31))
def test_rounding_divide_by_pot_matches_exact(x, e):
    assert int(rounding_divide_by_pot(np.int64(x), np.int64(e))) == _round_half_away(sympy.Rational(x, 2**e))


@given(st.floats(1e-9, 1e3, allow_nan=False))
def test_quantize_multiplier_normalized_and_accurate(real):
    m, s = quantize_multiplier(real)
    if m == 0:
        assert real < 2.0**-31
        return
    assert 2**30 <= m < 2**31
    assert math.isclose(m * 2.0 ** (s - 31), real, rel_tol=2.0**-30)


def test_quantize_multiplier_hand_derived():
    # 0.5 = 0.5 * 2^0 -> mantissa 0.5 -> 2^30, shift 0
    assert quantize_multiplier(0.5) == (2**30, 0)
    # 1.0 = 0.5 * 2^1
    assert quantize_multiplier(1.0) == (2**30, 1)
    # 0.75 = 0.75 * 2^0 -> 0.75 * 2^31 = 1610612736
    assert quantize_multiplier(0.75) == (1610612736, 0)
    assert quantize_multiplier(-0.75) == (-1610612736, 0)
    assert quantize_multiplier(0.0) == (0, 0)


@settings(max_examples=300)
@given(st.integers(-(2**24), 2**24), st.floats(1e-6, 4.0))
def test_requantize_close_to_real_product(acc, real):
    m, s = quantize_multiplier(real)
    got = int(requantize(np.int64(acc), np.int64(m), np.int64(s)))
    # two roundings (high-mul, then divide) -> within one unit of the exact product
    assert abs(got - acc * m * 2.0 ** (s - 31)) <= 1.0


def test_requantize_hand_derived():
    m, s = quantize_multiplier(0.5)  # (2**30, 0): only the high-mul rounds, ties toward +inf
    # 3 * 0.5 = 1.5 -> 2; -3 * 0.5 = -1.5 -> -1; 5 * 0.5 = 2.5 -> 3; -5 * 0.5 = -2.5 -> -2
    assert requantize(np.array([3, -3, 5, -5]), m, s).tolist() == [2, -1, 3, -2]
    m, s = quantize_multiplier(0.25)  # (2**30, -1): high-mul by 1/2 (exact for even x), then /2 ties away
    # 6 -> 3 -> 1.5 -> 2;  -6 -> -3 -> -1.5 -> -2;  2 -> 1 -> 0.5 -> 1;  -2 -> -1 -> -0.5 -> -1
    assert requantize(np.array([6, -6, 2, -2]), m, s).tolist() == [2, -2, 1, -1]
    m, s = quantize_multiplier(1.0)  # (2**30, 1): x << 1 (saturating), then high-mul by 1/2
    assert requantize(np.array([2**30 - 1, -(2**30), 7]), m, s).tolist() == [2**30 - 1, -(2**30), 7]
    # INT32_MAX << 1 saturates to INT32_MAX; (INT32_MAX * 2**30 + 2**30) >> 31 = 2**30
    assert requantize(np.array([INT32_MAX]), m, s).tolist() == [2**30]
    m, s = quantize_multiplier(4.0)  # (2**30, 3): the left shift saturates instead of overflowing
    # 2**30 << 3 -> INT32_MAX -> * 1/2 -> 2**30;  -(2**30) << 3 -> INT32_MIN -> -(2**30);  3 -> 24 -> 12
    assert requantize(np.array([2**30, -(2**30), 3]), m, s).tolist() == [2**30, -(2**30), 12]
