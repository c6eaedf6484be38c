"""Fixed-point arithmetic with exactly the rounding of TFLite / CMSIS-NN.

Integer-only inference (Jacob et al. 2018, "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", eq. 5-6) writes a real multiplier
``M = s_in * s_w / s_out`` as ``M = M0 * 2**shift`` with ``M0`` a Q31 integer in
``[2**30, 2**31)``. Applying it to an int32 accumulator is

    requantize(acc) = RoundingDivideByPOT(SRDHM(acc << max(shift, 0), M0), max(-shift, 0))

where SRDHM is ``SaturatingRoundingDoublingHighMul``. These functions are the single
definition of that arithmetic in the project: the reference interpreter calls them on
numpy ``int64`` arrays and the C runtime (``backends/runtime/qc_kernels.h``) implements the
same steps; tests check the two agree bit for bit.

Two details are deliberate:

* SRDHM is computed as CMSIS-NN's ``arm_nn_doubling_high_mult_no_sat``,
  ``(a*b + 2**30) >> 31``, i.e. ``floor(a*b / 2**31 + 1/2)`` (ties round toward +inf). For
  every ``|multiplier| < 2**31`` this equals TFLite's ``(a*b + nudge) / 2**31`` with C
  truncation, so kernels can later be swapped for CMSIS-NN bit-exactly.
  ``RoundingDivideByPOT`` then rounds ties away from zero.
* A positive shift multiplies before the high-mul. CMSIS-NN does that in int32 without
  saturation (undefined on overflow); we saturate to int32 in both the interpreter and C so
  that the result is always defined and identical.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "INT32_MIN",
    "INT32_MAX",
    "quantize_multiplier",
    "multiplier_to_real",
    "srdhm",
    "rounding_divide_by_pot",
    "requantize",
]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
MAX_SHIFT = 30   # left shift allowed before the high multiply
MIN_SHIFT = -31  # right shift of at most 31


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Return ``(M0, shift)`` with ``real ~= M0 * 2**(shift - 31)``, as TFLite's QuantizeMultiplier.

    ``M0`` carries the sign of ``real``; ``|M0|`` lies in ``[2**30, 2**31)`` unless ``real`` is
    zero or too small to represent (then ``(0, 0)``). Rounding of the mantissa is half away
    from zero (``std::round``). Exact: ``frexp`` and the scaling by ``2**31`` are exact in binary64.
    """
    if not math.isfinite(real):
        raise ValueError(f"multiplier must be finite, got {real!r}")
    if real == 0.0:
        return 0, 0
    sign = -1 if real < 0 else 1
    mantissa, exponent = math.frexp(abs(real))  # abs(real) = mantissa * 2**exponent, mantissa in [0.5, 1)
    q = math.floor(mantissa * (1 << 31) + 0.5)
    if q == (1 << 31):
        q //= 2
        exponent += 1
    if exponent < MIN_SHIFT:
        return 0, 0
    if exponent > MAX_SHIFT:
        raise ValueError(f"multiplier {real!r} too large for fixed-point requantization")
    return sign * q, exponent


def multiplier_to_real(multiplier: int, shift: int) -> float:
    """The real number that ``(multiplier, shift)`` encodes."""
    return multiplier * 2.0 ** (shift - 31)


def srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rounding doubling high multiply ``floor(a*b / 2**31 + 1/2)`` of int32 values held in int64 arrays."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    return (a * b + (1 << 30)) >> 31


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """Divide by ``2**exponent`` rounding to nearest, ties away from zero (gemmlowp/CMSIS-NN)."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    result = x >> exponent
    threshold = (mask >> 1) + (result < 0)
    return result + (remainder > threshold)


def requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Apply ``(multiplier, shift)`` to int32 accumulators exactly as the C runtime does.

    ``multiplier``/``shift`` broadcast against ``acc`` (per-channel requantization passes
    arrays shaped to the channel axis). Returns int64 values in int32 range.
    """
    acc = np.asarray(acc, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    shifted = np.clip(acc << left, INT32_MIN, INT32_MAX)
    return rounding_divide_by_pot(srdhm(shifted, multiplier), right)
