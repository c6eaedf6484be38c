"""Nonuniform-to-uniform quantization (N2UQ; Liu et al. 2022, "Nonuniform-to-Uniform
Quantization: Towards Accurate Quantization via Generalized Straight-Through Estimation", CVPR).

**Activations** (the paper's sec. 3.1-3.2; the reference code's ``LTQ``): ``L = 2**b - 1``
learnable *input* thresholds, *uniform* output levels. With interval lengths ``a_1..a_L > 0``
and a start ``B_0``, the interval boundaries are ``B_j = B_0 + a_1 + ... + a_j`` and the
forward thresholds are the interval midpoints ``T_j = B_{j-1} + a_j / 2``; the output is

    x_q = s * (#{j : x >= T_j} - k0)                       (uniform levels, step s)

(the paper's eq. 4 with output levels ``0..L`` shifted by an integer ``k0`` so that tensors
with negative values, e.g. a conv feeding a residual add, keep them; ``k0 = 0`` after a ReLU).
Gradients use the **generalized straight-through estimator** (GSTE, eq. 6-8): the backward
pass differentiates the piecewise-linear function through the boundaries

    F(x) = (j - 1) + (x - B_{j-1}) / a_j    for x in [B_{j-1}, B_j],   0 below B_0, L above B_L

(the expectation of stochastic binarization in each interval), so ``dx_q/dx = s / a_j`` inside
interval ``j`` and the thresholds (``B_0`` and every ``a_j``) receive gradients through ``F``.
``B_0`` and ``a`` are learned in units of the initial step ``s0`` (``a`` initialized to 1, i.e.
uniform rounding), and ``a_j`` is floored at ``1e-3`` as in the reference code. The output
step ``s`` is learned too (the reference code's ``scale2``), relative to ``s0``.

**Weights** (sec. 3.3, "entropy preserving weight regularization", and the reference code's
``HardQuantizeConv``): per output channel, ``w' = w / (gamma * mean|w|)`` with
``gamma = (2**b - 1) / 2**(b-1)``, clipped to ``[-1, 1]`` and rounded to the ``2**b`` uniform
levels ``-1 + 2k / (2**b - 1)``, ``k = 0..2**b - 1`` (no zero level, so all ``2**b`` codes carry
information); the gradient is the straight-through identity. In integers: ``w_int = 2k - (2**b
- 1)`` (odd values, ``|w_int| <= 2**b - 1``) at scale ``gamma * mean|w| / (2**b - 1)``, stored as
``b``-bit codes plus a per-channel level table (:class:`qcompile.backends.ir.Codebook`), which
fits int8 for ``b <= 7``. (The reference code's clip value is a parameter but receives no
gradient, so it is the constant 2 used here.)

The lowering turns an activation quantizer that follows a conv/linear into integer thresholds
on that layer's int32 accumulator (:func:`qcompile.backends.lower.accumulator_thresholds`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from qcompile.nn import ActQuant, QuantizedWeights, QuantMode
from qcompile.qat.lsq import ACT_QMIN, TrainableWeights

__all__ = ["N2UQActQuant", "GeneralizedSTE", "threshold_count", "N2UQWeights", "n2uq_weight_codes", "MAX_N2UQ_WEIGHT_BITS", "A_MIN"]

A_MIN = 1e-3  # floor of the interval lengths (units of s0), the reference code's eps
MAX_N2UQ_WEIGHT_BITS = 7  # odd integers up to 2**b - 1 must fit int8


class GeneralizedSTE(torch.autograd.Function):
    """The GSTE of the paper's eq. 6-8 as one autograd function: the forward pass returns the
    count ``#{j : x >= T_j}`` with ``T_j = B_{j-1} + a_j / 2``; the backward pass is the gradient
    of ``F(x) = sum_j clamp((x - B_{j-1}) / a_j, 0, 1)`` (the module docstring's ``F``):

        dF/dx = 1 / a_j,   dF/dB_{j-1} = -1 / a_j,   dF/da_j = -(x - B_{j-1}) / a_j**2

    for ``x`` in interval ``j`` (``B_{j-1} <= x < B_j``; the last interval includes ``B_L``), and
    0 outside ``[B_0, B_L]``. ``b`` (``B_0..B_L``) and ``a`` have shape ``(L + 1,)`` and ``(L,)``
    for one set of thresholds, or ``(C, L + 1)`` and ``(C, L)`` for one set per channel
    (dimension 1 of ``x``).

    Written out rather than left to autograd over ``count + F - F.detach()``: that needed a
    gather per element and several temporaries per level, which made the quantizer most of a
    training step's time, and its forward value could be an ulp off the count; this one's is the
    count exactly. One set of thresholds finds each element's interval by binary search
    (``bucketize``) and sums the per-interval gradients in one pass (``bincount``), whatever the
    number of levels; one set per channel takes a pass per level (there is no per-channel
    ``bucketize`` without a channel-major copy): on a 64x32x14x14 tensor, forward and backward,
    one core, 19 ms at 2 bits (per tensor 21 ms), 48 ms at 4 and 419 ms at 7 (per tensor 38, 41).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, b, a)
        return threshold_count(x, b[..., :-1] + a / 2, x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, b, a = ctx.saved_tensors
        if a.dim() == 1:
            return _per_tensor_gradients(grad, x, b, a)
        levels = a.shape[-1]
        reduce_dims = [d for d in range(x.dim()) if d != 1]
        lows, highs, steps = _level_columns(b[..., :-1], x), _level_columns(b[..., 1:], x), _level_columns(a, x)
        grad_x, grad_b, grad_a = torch.zeros_like(x), torch.zeros_like(b), torch.zeros_like(a)
        for j, (low, high, step) in enumerate(zip(lows, highs, steps)):
            inside = (x >= low) & ((x < high) if j < levels - 1 else (x <= high))
            g = torch.where(inside, grad, 0.0)
            grad_x += g / step
            grad_b[..., j] = -g.sum(reduce_dims) / a[..., j]
            grad_a[..., j] = -(g * (x - low)).sum(reduce_dims) / a[..., j] ** 2
        return grad_x, grad_b, grad_a


def _per_tensor_gradients(grad: torch.Tensor, x: torch.Tensor, b: torch.Tensor,
                          a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:meth:`GeneralizedSTE.backward` for one set of thresholds: each element's interval by
    binary search, the per-interval sums by one ``bincount`` (accumulated in float64)."""
    levels = a.shape[0]
    above = torch.bucketize(x, b, right=True)                     # #{i : x >= B_i}, 0..L+1
    inside = (above > 0) & (x <= b[-1])
    interval = above.clamp(1, levels) - 1                          # 0-based; x = B_L is in the last
    g = torch.where(inside, grad, 0.0)
    grad_x = g / a[interval]

    def per_interval(values: torch.Tensor) -> torch.Tensor:
        return torch.bincount(interval.reshape(-1), values.reshape(-1).double(), minlength=levels).to(a.dtype)

    grad_b = torch.zeros_like(b)
    grad_b[:-1] = -per_interval(g) / a
    grad_a = -per_interval(g * (x - b[interval])) / a ** 2
    return grad_x, grad_b, grad_a


def threshold_count(x: torch.Tensor, thresholds: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``#{j : x >= T_j}`` per element (as ``dtype``), for sorted thresholds ``(L,)`` or one sorted
    row per channel ``(C, L)`` (dimension 1 of ``x``)."""
    if thresholds.dim() == 1:
        return torch.bucketize(x, thresholds, right=True).to(dtype)
    count = torch.zeros(x.shape, dtype=dtype, device=x.device)
    for t in _level_columns(thresholds, x):
        count += x >= t
    return count


def _level_columns(table: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
    """Column ``j`` of a ``(L,)`` or ``(C, L)`` table, shaped to broadcast against ``x`` (a scalar,
    or ``(1, C, 1, ...)`` along dimension 1)."""
    if table.dim() == 1:
        return list(table.unbind(0))
    shape = (1, table.shape[0]) + (1,) * (x.dim() - 2)
    return [column.reshape(shape) for column in table.unbind(1)]


class N2UQActQuant(ActQuant):
    """N2UQ activation quantizer with GSTE (see the module docstring).

    Output values are int8 ``q = qmin + #{j : x >= T_j}`` with ``real = scale * (q - zero_point)``,
    ``zero_point = qmin + k0``. :meth:`freeze` stores the thresholds as float64 ``thresholds``
    (sorted, length ``2**bits - 1``) and the output step as ``scale``; the frozen forward then
    counts thresholds exactly as the integer program does (``x >= T``).

    ``channels=C`` learns one set of thresholds (``B_0`` and ``a``) per channel of dimension 1
    (``thresholds`` of shape ``(C, 2**bits - 1)``) with the output levels (step, zero point)
    still shared by the tensor. This goes beyond the paper, which learns one set per layer. It
    costs nothing in the integer program, because a threshold stage already holds one table row
    per output channel (the real thresholds divided by that channel's accumulator unit).
    """

    def __init__(self, bits: int, scale: float, zero_point: int, qmin: int = ACT_QMIN, channels: int | None = None):
        super().__init__(observer=None)
        self.bits = bits
        self.levels = (1 << bits) - 1
        self.qmin = qmin
        self.qmax = qmin + self.levels
        if not qmin <= zero_point <= self.qmax:
            raise ValueError(f"zero point {zero_point} outside [{qmin}, {self.qmax}]")
        self.zero_point = int(zero_point)
        self.k0 = self.zero_point - qmin
        self.scale = None
        self.thresholds: torch.Tensor | None = None
        self.channels = channels
        self.register_buffer("step0", torch.tensor(float(scale)))
        lead = () if channels is None else (channels,)
        self.start = nn.Parameter(torch.full(lead, float(-self.k0)))  # B_0 / s0
        self.a = nn.Parameter(torch.ones(lead + (self.levels,)))       # interval lengths / s0
        self.out_rel = nn.Parameter(torch.ones(()))                # s / s0
        self.mode = QuantMode.QUANTIZE

    @property
    def quant_range(self) -> tuple[int, int]:
        return self.qmin, self.qmax

    def boundaries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B_0..B_L, a_1..a_L)`` in real units (``a`` floored at ``A_MIN * s0``); with
        ``channels``, one row per channel."""
        a = torch.clamp(self.a, min=A_MIN) * self.step0
        b0 = (self.start * self.step0).unsqueeze(-1)
        return torch.cat([b0, b0 + torch.cumsum(a, -1)], -1), a

    def current_thresholds(self) -> torch.Tensor:
        """Forward thresholds ``T_j = B_{j-1} + a_j / 2`` in real units (``(L,)`` or ``(channels, L)``)."""
        b, a = self.boundaries()
        return b[..., :-1] + a / 2

    def freeze(self) -> tuple[float, int]:
        """Fix thresholds (float64) and output step (idempotent: nothing is re-observed)."""
        if self.scale is None:
            with torch.no_grad():
                self.thresholds = self.current_thresholds().detach().to(torch.float64).clone()
                self.scale = float((self.out_rel * self.step0).detach().to(torch.float64))
        self.mode = QuantMode.QUANTIZE
        return self.scale, self.zero_point

    def _gste(self, x: torch.Tensor) -> torch.Tensor:
        """Counts in the forward pass, the piecewise-linear ``F`` in the backward pass."""
        b, a = self.boundaries()
        return GeneralizedSTE.apply(x, b, a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode is not QuantMode.QUANTIZE:
            return x
        if self.scale is not None:
            count = threshold_count(x.to(torch.float64), self.thresholds, torch.float64)
            return ((count - self.k0) * self.scale).to(x.dtype)
        s = self.out_rel * self.step0
        return (self._gste(x) - self.k0) * s

    def extra_repr(self) -> str:
        per = "" if self.channels is None else f", thresholds per channel ({self.channels})"
        return f"bits={self.bits} (N2UQ{per}), scale={self.scale}, zero_point={self.zero_point}"


def n2uq_weight_codes(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes k in 0..2**b-1, per-channel scale gamma * mean|w| / (2**b - 1))`` in float64."""
    w = weight.detach().to(torch.float64)
    n = (1 << bits) - 1
    gamma = n / (1 << (bits - 1))
    sf = gamma * w.reshape(w.shape[0], -1).abs().mean(dim=1)
    sf = torch.where(sf > 0, sf, torch.ones_like(sf))
    shape = (-1,) + (1,) * (w.dim() - 1)
    codes = torch.round((torch.clamp(w / sf.reshape(shape), -1.0, 1.0) + 1.0) * n / 2)
    return codes, sf / n


class N2UQWeights(TrainableWeights):
    """A conv/linear with the paper's weight quantizer (module docstring). While training the
    scale follows ``mean|w|``; :meth:`freeze` stores ``weight_int`` (odd int8 values),
    ``weight_scale`` and the codebook (``codes``, ``levels``) that the lowering emits."""

    def __init__(self, q: QuantizedWeights, bits: int):
        nn.Module.__init__(self)
        if not 2 <= bits <= MAX_N2UQ_WEIGHT_BITS:
            raise ValueError(f"N2UQ weights need 2..{MAX_N2UQ_WEIGHT_BITS} bits, got {bits}")
        self.module = q.module
        self.bits = bits
        self.per_channel = True
        self.min_scale = None
        self.simulate = True
        self.frozen = False
        self.register_buffer("weight_int", q.weight_int.clone())
        self.register_buffer("weight_scale", q.weight_scale.clone())
        self.register_buffer("codes", torch.zeros(q.weight_int.shape, dtype=torch.uint8))
        n = (1 << bits) - 1
        table = torch.arange(-n, n + 1, 2, dtype=torch.int8)  # 2**b odd levels
        self.register_buffer("levels", table.expand(q.weight_int.shape[0], -1).clone())

    def fake_weight(self) -> torch.Tensor:
        w = self.module.weight
        codes, scale = n2uq_weight_codes(w, self.bits)
        shape = (-1,) + (1,) * (w.dim() - 1)
        n = (1 << self.bits) - 1
        wq = ((2 * codes - n) * scale.reshape(shape)).to(w.dtype)
        return wq + w - w.detach()

    @torch.no_grad()
    def freeze(self) -> None:
        codes, scale = n2uq_weight_codes(self.module.weight, self.bits)
        n = (1 << self.bits) - 1
        self.codes = codes.to(torch.uint8)
        self.weight_int = (2 * codes - n).to(torch.int8)
        self.weight_scale = scale
        self.frozen = True

    def extra_repr(self) -> str:
        return f"bits={self.bits} (N2UQ weights), frozen={self.frozen}"

