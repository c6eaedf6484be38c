"""Per-layer weight bits under a flash budget (``QuantConfig(weight_bits="auto", flash_budget=...)``).

The interface is small and open: an allocator takes one :class:`LayerCost` per conv/linear (the
flash bytes of every candidate width, counted exactly as the backend stores them, see
:func:`weight_bytes`) and, for the data-driven methods, a *score provider* ``score(layer, bits)``
giving the distortion that layer adds at that width (lower is better, assumed additive over
layers). :func:`allocate_bits` returns ``{layer: bits}`` with total bytes ``<= budget``. A new
sensitivity measure (e.g. dual variables of a constrained training problem) is just another
score provider: :func:`dual_variable_score` (``dual_variables``).

* ``uniform``: the largest single width whose total fits (:func:`allocate_uniform`).
* ``greedy`` on a score (:func:`allocate_greedy`): start every layer at its cheapest width,
  then repeatedly take the upgrade (any layer, to any wider candidate) with the largest score
  reduction per extra byte that still fits, until none does. Used by

  * ``sqnr_greedy``: the score is the measured noise-to-signal ratio of the *network output*
    with only that layer quantized at that width (nearest rounding), see
    :func:`qcompile.passes.allocate_weight_bits`;
  * ``lossy_coding_length`` (the seed paper's measure, Diao et al. 2022): the score is
    ``L(W) * 4**-bits`` with ``L`` the lossy coding length of Ma et al. 2007 (eq. 6 there),
    :func:`coding_length`, of the layer's weights. ``L`` counts the bits needed to code the
    layer's filters up to a distortion ``eps``: how much information the layer carries. The
    ``4**-bits`` factor is the high-rate distortion of a ``bits``-bit quantizer (each bit
    quarters the squared error). The greedy then ranks upgrades by information per byte,
    so layers whose weights carry more bits of information per weight get the wider
    widths; the paper says the coding length "assigns bit widths" without a formula, this is
    our reading. ``eps`` is relative: ``eps**2 = EPS_REL**2 * ||W||_F**2 / m``, a fixed fraction
    of the mean filter energy, so layers of any scale compare.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from qcompile.backends.ir import storage_bits
from qcompile.errors import ConfigError

__all__ = ["FlashBudgetError", "LayerCost", "Score", "weight_bytes", "layer_cost", "coding_length",
           "coding_length_score", "checked_dual_values", "dual_variable_score", "allocate_uniform", "allocate_greedy", "allocate_bits", "total_bytes", "EPS_REL"]

EPS_REL = 0.1

Score = Callable[[str, int], float]


class FlashBudgetError(ConfigError):
    """``flash_budget`` is missing, or smaller than the weights at the narrowest candidate width."""


@dataclass(frozen=True)
class LayerCost:
    """One conv/linear: its module path and the flash bytes of its weights per candidate width."""

    name: str
    bytes: Mapping[int, int]


def weight_bytes(shape: Sequence[int], bits: int, codebook: bool = False) -> int:
    """Flash bytes of a ``shape`` (``(Co, ...)``) weight at ``bits`` as the backend stores it, the
    same count as :func:`qcompile.backends.ir.weight_storage_bytes`: each output channel's values
    packed in ``storage_bits(bits)``-bit slots and padded to a byte. For codebook (PWLQ) weights
    it adds an int8 level table of ``2**bits`` entries per channel: an upper bound, since the
    backend stores a table once per distinct row (with a uint8 row index) when that is smaller,
    which is only known after quantization; the budget then still holds."""
    co = int(shape[0])
    k = int(np.prod(shape[1:], dtype=np.int64))
    return co * (-(-k * storage_bits(bits) // 8)) + (co * (1 << bits) if codebook else 0)


def layer_cost(name: str, shape: Sequence[int], candidates: Sequence[int], codebook: bool = False) -> LayerCost:
    return LayerCost(name, {b: weight_bytes(shape, b, codebook) for b in sorted(set(candidates))})


def total_bytes(layers: Sequence[LayerCost], bits: Mapping[str, int]) -> int:
    return sum(lc.bytes[bits[lc.name]] for lc in layers)


def _check_budget(layers: Sequence[LayerCost], budget: int) -> None:
    minimum = sum(min(lc.bytes.values()) for lc in layers)
    if budget < minimum:
        narrowest = min(min(lc.bytes) for lc in layers)
        raise FlashBudgetError(f"flash_budget={budget:,} B is below the minimum weight flash of this model, "
                               f"{minimum:,} B (every layer at its narrowest candidate, {narrowest} bits)")


def coding_length(vectors: np.ndarray, eps: float) -> float:
    """Lossy coding length (bits) of ``m`` vectors of dimension ``n`` (the rows of ``vectors``, an
    ``(m, n)`` array) up to distortion ``eps`` (Ma et al. 2007, eq. 6):

        L(W) = (m + n) / 2 * log2 det(I + n / (eps**2 m) W W^T),   W = vectors^T  (n x m).

    The determinant is taken on the smaller of ``W W^T`` and ``W^T W`` (same value)."""
    v = np.asarray(vectors, dtype=np.float64)
    m, n = v.shape
    gram = v @ v.T if m <= n else v.T @ v
    sign, logdet = np.linalg.slogdet(np.eye(gram.shape[0]) + n / (eps * eps * m) * gram)
    if sign <= 0:
        raise ValueError("coding_length: I + c W W^T must be positive definite")
    return (m + n) / 2.0 * logdet / math.log(2.0)


def coding_length_score(weights: Mapping[str, np.ndarray], eps_rel: float = EPS_REL) -> tuple[Score, dict[str, float]]:
    """Score provider of ``lossy_coding_length``: ``L(W) * 4**-bits`` per layer, with each
    layer's filters (output channels) as the vectors and ``eps`` relative to the mean filter
    energy. Also returns ``L`` per layer (bits) for the record."""
    lengths = {}
    for name, w in weights.items():
        v = np.asarray(w, dtype=np.float64).reshape(w.shape[0], -1)
        energy = float((v * v).sum()) / v.shape[0]
        lengths[name] = coding_length(v, eps_rel * math.sqrt(energy)) if energy > 0 else 0.0
    return (lambda name, bits: lengths[name] * 4.0 ** -bits), lengths


def checked_dual_values(duals: Mapping[str, float], what: str = "dual_variables") -> dict[str, float]:
    """``duals`` as a plain ``{str: float}`` dict, after checking every value is a finite real
    number >= 0 (bools rejected); ``what`` names the setting in the error."""
    bad = {k: v for k, v in duals.items()
           if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)) or float(v) < 0}
    if bad:
        raise ConfigError(f"{what}: {bad!r}: dual variables must be finite real numbers >= 0")
    return {k: float(v) for k, v in duals.items()}


def dual_variable_score(duals: Mapping[str, float]) -> Score:
    """Score provider from the constrained method's dual variables (``method="constrained"`` of
    :func:`qcompile.qat.train`, ``result.dual_variables``): ``lambda_l * 4**-bits``. By the
    sensitivity result of Hounie et al. 2022 (sec. 4), ``lambda_l`` is the rate at which the
    optimal loss grows per unit of distortion allowed in layer ``l``; a ``bits``-bit quantizer's
    distortion scales as ``4**-bits``, so the product estimates the loss a width costs and the
    greedy keeps the layers with the largest duals at the higher widths."""
    duals = checked_dual_values(duals)
    return lambda name, bits: float(duals[name]) * 4.0 ** -bits


def allocate_uniform(layers: Sequence[LayerCost], budget: int) -> dict[str, int]:
    """The largest width common to every layer whose total bytes fit ``budget``."""
    _check_budget(layers, budget)
    common = sorted(set.intersection(*(set(lc.bytes) for lc in layers)), reverse=True)
    for b in common:
        if sum(lc.bytes[b] for lc in layers) <= budget:
            return {lc.name: b for lc in layers}
    raise FlashBudgetError(f"flash_budget={budget:,} B: no single width of {sorted(common)} fits "
                           f"(narrowest: {sum(lc.bytes[min(common)] for lc in layers):,} B)")


def allocate_greedy(layers: Sequence[LayerCost], budget: int, score: Score) -> dict[str, int]:
    """Greedy by score reduction per byte (see the module doc); ties go to the earlier layer and
    the narrower upgrade. Upgrades that cost no bytes (3 -> 4 bits share a 4-bit slot) are taken
    whenever they lower the score."""
    _check_budget(layers, budget)
    bits = {lc.name: min(lc.bytes, key=lambda b: (lc.bytes[b], -score(lc.name, b))) for lc in layers}
    used = total_bytes(layers, bits)
    while True:
        best = None
        for lc in layers:
            cur = bits[lc.name]
            s_cur = score(lc.name, cur)
            for b in sorted(lc.bytes):
                extra = lc.bytes[b] - lc.bytes[cur]
                gain = s_cur - score(lc.name, b)
                if b == cur or gain <= 0 or extra < 0 or used + extra > budget:
                    continue
                ratio = math.inf if extra == 0 else gain / extra
                if best is None or ratio > best[0]:
                    best = (ratio, lc.name, b, extra)
        if best is None:
            return bits
        _, name, b, extra = best
        bits[name] = b
        used += extra


def allocate_bits(layers: Sequence[LayerCost], budget: int, score: Score | None = None) -> dict[str, int]:
    """``{layer: bits}`` within ``budget``: greedy on ``score`` when given, else uniform."""
    return allocate_uniform(layers, budget) if score is None else allocate_greedy(layers, budget, score)
