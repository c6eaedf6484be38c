"""Piecewise-linear weight quantization (PWLQ; Fang et al. 2020, "Post-Training Piecewise
Linear Quantization for Deep Neural Networks", ECCV, sec. 3).

A channel's range ``[-m, m]`` (``m = max|w|``) is split at a breakpoint ``p`` into a dense
*center* region ``[-p, p]`` and a sparse *tail* ``p < |w| <= m``; each region is quantized
uniformly with its own step (the paper's eq. 3-4, ``uni(|r|; b-1, 0, p)`` and
``uni(|r|; b-1, p, m)``). The paper finds ``p`` by minimizing the quantization error; we do
so per channel by exhaustive search on the channel's actual weights (the paper minimizes the
expected error under a fitted Gaussian/Laplacian; the empirical error is the natural reading
when the weights are at hand and costs milliseconds at our sizes).

Level budget (our choice, stated because the paper counts an extra region bit): a ``b``-bit
code indexes ``2**b`` entries, of which ``2**b - 1`` are used, exactly as many levels as
symmetric uniform ``b``-bit quantization has. The center gets ``2 * Lc + 1`` levels
``j * p / Lc`` (``Lc = 2**(b-2) - 1``), the tail ``Lt = 2**(b-2)`` levels per side
``p + k (m - p) / Lt``. At ``p = m * Lc / (Lc + Lt)`` both steps equal ``m / (2**(b-1) - 1)``
and PWLQ *is* uniform quantization; that breakpoint is always in the search, so PWLQ never has
a larger weight error than uniform. ``center`` moves levels between the regions (``Lc + Lt``
stays ``2**(b-1) - 1``); :func:`center_splits` are the splits the calibrated pass also tries.

Integer realization: every level is rounded to the channel's int8 grid ``u = m / 127``, and
weights are quantized to the nearest *realized* level. The layer then runs as an ordinary
int8-weight layer with scale ``u`` (exact: one int32 accumulator, one fixed-point
requantization), while flash stores only the ``b``-bit codes plus a ``2**b``-entry int8 table
per channel (:class:`qcompile.backends.ir.Codebook`). The rounding to the int8 grid moves a
level by at most ``u / 2 = m / 254``, an order of magnitude below the 4-bit step.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from qcompile.nn import QuantizedWeights

__all__ = ["pwlq_levels", "center_splits", "search_breakpoints", "quantize_piecewise", "uniform_codebook", "PiecewiseQuantizedWeights",
           "BREAKPOINT_GRID", "INT8_LEVEL"]

INT8_LEVEL = 127
BREAKPOINT_GRID = np.linspace(0.02, 0.98, 97)


def _region_sizes(bits: int, center: int | None = None) -> tuple[int, int]:
    """``(Lc, Lt)``: center levels per side and tail levels per side of a ``bits``-bit code;
    ``Lc + Lt = 2**(bits-1) - 1`` always, ``center`` overrides the default ``Lc = 2**(bits-2) - 1``."""
    if not 3 <= bits <= 8:
        raise ValueError(f"piecewise-linear quantization needs 3..8 bits, got {bits}")
    per_side = (1 << (bits - 1)) - 1
    lc = (1 << (bits - 2)) - 1 if center is None else int(center)
    if not 1 <= lc < per_side:
        raise ValueError(f"piecewise-linear quantization at {bits} bits needs 1 <= center < {per_side}, got {center}")
    return lc, per_side - lc


def center_splits(bits: int) -> tuple[int, ...]:
    """The center sizes ``Lc`` tried per channel besides the default: one level per side moved
    from the tail to the center and back (``Lc - 1``, ``Lc + 1``), where both regions keep one."""
    lc, lt = _region_sizes(bits)
    return tuple(c for c in (lc - 1, lc + 1) if 1 <= c < lc + lt)


def uniform_ratio(bits: int, center: int | None = None) -> float:
    """The breakpoint ``p / m`` at which PWLQ's levels coincide with uniform quantization's."""
    lc, lt = _region_sizes(bits, center)
    return lc / (lc + lt)


def pwlq_levels(m: np.ndarray, p: np.ndarray, bits: int, center: int | None = None) -> np.ndarray:
    """Sorted real levels ``(C, 2**bits)`` per channel (the unused last code repeats level 0);
    ``center``: ``Lc`` center levels per side instead of the default (see :func:`_region_sizes`)."""
    lc, lt = _region_sizes(bits, center)
    m = np.asarray(m, dtype=np.float64).reshape(-1, 1)
    p = np.asarray(p, dtype=np.float64).reshape(-1, 1)
    center = p * np.arange(-lc, lc + 1) / max(lc, 1)
    tail = p + (m - p) * np.arange(1, lt + 1) / lt
    levels = np.concatenate([-tail[:, ::-1], center, tail, np.zeros_like(p)], axis=1)
    return levels


def _nearest(w: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the nearest of each row's sorted ``levels`` (last entry ignored) for ``w (C, K)``."""
    used = levels[:, :-1]
    mid = (used[:, 1:] + used[:, :-1]) / 2
    return np.stack([np.searchsorted(mid[c], w[c]) for c in range(w.shape[0])])


def _quantize_error(w: np.ndarray, levels: np.ndarray) -> np.ndarray:
    idx = _nearest(w, levels)
    q = np.take_along_axis(levels, idx, axis=1)
    return ((w - q) ** 2).sum(axis=1)


def _channel_ranges(w: np.ndarray, per_channel: bool) -> np.ndarray:
    """``m`` per channel of ``w (C, K)``: ``max|w|`` of the channel, or of the whole tensor."""
    m = np.abs(w).max(axis=1)
    return m if per_channel else np.full_like(m, m.max())


def search_breakpoints(w: np.ndarray, bits: int, per_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(m, p)`` per channel of ``w (C, K)``: ``m = max|w|`` and the breakpoint from
    :data:`BREAKPOINT_GRID` (plus the uniform-equivalent one) minimizing the squared error."""
    w = np.asarray(w, dtype=np.float64).reshape(w.shape[0], -1)
    m = _channel_ranges(w, per_channel)
    ratios = np.unique(np.append(BREAKPOINT_GRID, uniform_ratio(bits)))
    errs = np.stack([_quantize_error(w, pwlq_levels(m, r * m, bits)) for r in ratios])  # (R, C)
    if not per_channel:
        errs = np.repeat(errs.sum(axis=1, keepdims=True), w.shape[0], axis=1)
    return m, ratios[errs.argmin(axis=0)] * m


def quantize_piecewise(weight: torch.Tensor, bits: int, min_scale: torch.Tensor | None = None,
                       per_channel: bool = True, ratios: np.ndarray | None = None,
                       center: int | None = None) -> dict[str, np.ndarray]:
    """PWLQ of a conv/linear weight, realized on each channel's int8 grid.

    The breakpoints are searched (:func:`search_breakpoints`, default level split) unless
    ``ratios`` gives ``p / m`` per output channel (a ``(C,)`` array, or a scalar for every
    channel); ``center`` sets the level split (:func:`pwlq_levels`).

    Returns ``codes`` (uint8, the weight's shape), ``levels`` (int8 ``(C, 2**bits)``),
    ``weight_int`` (int8, ``levels[c, codes]``), ``scale`` (float64 ``(C,)``, the int8 grid
    step ``max(m / 127, min_scale)``) and ``breakpoint`` (``p / m`` per channel).
    """
    shape = tuple(weight.shape)
    w = weight.detach().to(torch.float64).reshape(shape[0], -1).numpy()
    if ratios is None:
        m, p = search_breakpoints(w, bits, per_channel)
    else:  # given breakpoints: no search
        m = _channel_ranges(w, per_channel)
        p = np.broadcast_to(np.asarray(ratios, dtype=np.float64), m.shape) * m
    scale = np.where(m > 0, m / INT8_LEVEL, 1.0)
    if min_scale is not None:
        scale = np.maximum(scale, min_scale.detach().to(torch.float64).numpy())
    real = pwlq_levels(m, p, bits, center)
    levels = np.clip(np.rint(real / scale[:, None]), -INT8_LEVEL, INT8_LEVEL)
    order = np.argsort(levels[:, :-1], axis=1, kind="stable")  # rounding keeps order; be explicit
    sorted_levels = np.take_along_axis(levels[:, :-1], order, axis=1)
    idx_sorted = _nearest(w / scale[:, None], np.concatenate([sorted_levels, levels[:, -1:]], axis=1))
    codes = np.take_along_axis(order, idx_sorted, axis=1)
    levels8 = levels.astype(np.int8)
    weight_int = np.take_along_axis(levels8, codes, axis=1)
    return {"codes": codes.astype(np.uint8).reshape(shape), "levels": levels8,
            "weight_int": weight_int.reshape(shape), "scale": scale,
            "breakpoint": np.where(m > 0, p / np.where(m > 0, m, 1), 0.0)}


def uniform_codebook(weight_int: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, levels)`` of symmetric uniform ``bits``-bit integers ``weight_int (C, ...)``:
    every channel's table is ``-qmax .. qmax`` (one spare code), ``codes = w + qmax``."""
    qmax = (1 << (bits - 1)) - 1
    levels = np.append(np.arange(-qmax, qmax + 1), 0).astype(np.int8)
    return (weight_int.astype(np.int16) + qmax).astype(np.uint8), np.tile(levels, (weight_int.shape[0], 1))


class PiecewiseQuantizedWeights(QuantizedWeights):
    """A conv/linear with PWLQ weights: simulates and lowers like
    :class:`~qcompile.nn.QuantizedWeights` (int8 levels at scale ``u``) and additionally
    carries the ``bits``-bit codes and per-channel level tables the flash stores."""

    def __init__(self, module: nn.Module, bits: int, min_scale: torch.Tensor | None = None,
                 per_channel: bool = True, ratios: np.ndarray | None = None, center: int | None = None):
        nn.Module.__init__(self)
        self.module = module
        self.bits = bits
        self.per_channel = per_channel
        self.min_scale = min_scale
        q = quantize_piecewise(module.weight, bits, min_scale, per_channel, ratios, center)
        self.register_buffer("weight_int", torch.from_numpy(q["weight_int"]))
        self.register_buffer("weight_scale", torch.from_numpy(q["scale"]))
        self.register_buffer("codes", torch.from_numpy(q["codes"]))
        self.register_buffer("levels", torch.from_numpy(q["levels"]))
        self.breakpoint = q["breakpoint"]
        self.simulate = True

    def take_channels(self, other: QuantizedWeights, channels: torch.Tensor) -> None:
        """Replace the selected output channels by ``other``'s (same layer and bits): its codes,
        level tables, int8 weights, scales and breakpoints when ``other`` is piecewise too; the
        uniform table ``-qmax .. qmax`` and a NaN breakpoint when it is a plain
        :class:`~qcompile.nn.QuantizedWeights`."""
        if not bool(channels.any()):
            return
        if isinstance(other, PiecewiseQuantizedWeights):
            codes, levels, breakpoint = other.codes.numpy(), other.levels.numpy(), other.breakpoint
        else:
            codes, levels = uniform_codebook(other.weight_int.numpy(), self.bits)
            breakpoint = np.full(self.breakpoint.shape, np.nan)
        sel = channels.numpy()
        for name, new in (("weight_int", other.weight_int.numpy()), ("weight_scale", other.weight_scale.numpy()),
                          ("codes", codes), ("levels", levels)):
            buf = getattr(self, name).numpy().copy()
            buf[sel] = new[sel]
            setattr(self, name, torch.from_numpy(buf))
        self.breakpoint = np.where(sel, breakpoint, self.breakpoint)

    def extra_repr(self) -> str:
        return f"bits={self.bits} (piecewise-linear), per_channel={self.per_channel}"
