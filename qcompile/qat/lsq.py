"""Learnable uniform quantizers for quantization-aware training: LSQ (Esser et al. 2020,
"Learned Step Size Quantization", ICLR).

LSQ quantizes ``v`` with a learnable step ``s`` (the paper's eq. 1-2)::

    v_bar = round(clip(v / s, -Q_N, Q_P)),   v_hat = v_bar * s

and trains ``s`` through the straight-through estimator of ``round`` (eq. 3), whose gradient
with respect to ``s`` is ``-v/s + round(v/s)`` inside the range and ``-Q_N`` / ``Q_P`` outside.
The step's gradient is multiplied by ``g = 1 / sqrt(N * Q_P)`` (sec. 2.2), ``N`` the number of
weights the step serves (per output channel here) or the number of features of one sample of
the activation.

Two choices of ours, stated because they differ from the paper's defaults:

* Steps are learned *relative to their initial value*: ``s = s0 * v`` with ``v`` the parameter
  (initialized to 1), so a single Adam learning rate serves layers whose steps differ by
  orders of magnitude. ``g`` is applied to the gradient of ``v`` exactly as to ``s``.
* Weights are symmetric with ``Q_N = Q_P = 2**(b-1) - 1`` (the integer IR stores symmetric
  weights); weight steps are per output channel (``QuantConfig.per_channel``, the IR's
  requantization is per channel anyway). Activations are asymmetric: an integer zero point,
  chosen once from the data (:func:`init_activation_range`) and then fixed, with ``2**b``
  levels ``q in [qmin, qmin + 2**b - 1]`` inside int8 (``qmin = -128``). Sub-8-bit
  activations therefore stay int8 tensors that use ``2**b`` values; the lowering turns the
  range into the producer's ``act_min``/``act_max`` clamp.

After training, :meth:`LsqWeights.freeze` / :meth:`LsqActQuant.freeze` snapshot the learned
values (integer weights and float64 steps) into buffers; from then on the modules behave like
the PTQ ones (:class:`~qcompile.nn.QuantizedWeights`, :class:`~qcompile.nn.ActQuant`) and the
lowering reads exactly those values.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from qcompile.nn import ActQuant, QuantizedWeights, QuantMode

__all__ = ["grad_scale", "round_ste", "TrainableWeights", "LsqWeights", "LsqActQuant", "init_activation_range", "ACT_QMIN"]

ACT_QMIN = -128  # sub-8-bit activations use int8 values qmin .. qmin + 2**bits - 1


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``g`` (LSQ's ``gradscale``)."""
    return (x - x * g).detach() + x * g


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round`` forward (half to even, as ``torch.round``), identity gradient."""
    return (torch.round(x) - x).detach() + x


def init_activation_range(values: torch.Tensor, bits: int, qmin: int = ACT_QMIN,
                          grid: int = 40, max_values: int = 65536) -> tuple[float, int]:
    """``(scale, zero_point)`` of a ``bits``-bit asymmetric quantizer for ``values``: the
    clipping ``[alpha * lo, alpha * hi]`` (``alpha`` on a grid in ``[0.2, 1]``) minimizing the
    quantization MSE, with ``zero_point`` an integer in ``[qmin, qmin + 2**bits - 1]``, so
    0.0 is exactly representable when the range contains it."""
    v = values.detach().to(torch.float64).flatten()
    if v.numel() > max_values:  # an even subsample: the search is over 1-D statistics
        v = v[:: -(-v.numel() // max_values)]
    levels = (1 << bits) - 1
    lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
    if hi - lo <= 0:
        return 1.0, qmin
    best = None
    for alpha in torch.linspace(0.2, 1.0, grid, dtype=torch.float64).tolist():
        a, b = alpha * lo, alpha * hi
        s = (b - a) / levels
        zp = int(min(max(round(qmin - a / s), qmin), qmin + levels))
        q = torch.clamp(torch.round(v / s) + zp, qmin, qmin + levels)
        err = float(((q - zp) * s - v).pow(2).mean())
        if best is None or err < best[0]:
            best = (err, s, zp)
    return best[1], best[2]


class TrainableWeights(QuantizedWeights):
    """Base of the QAT weight quantizers: until :meth:`freeze`, ``forward`` computes with
    ``fake_weight()`` (differentiable); afterwards it is the plain :class:`QuantizedWeights`
    simulation of the stored integers."""

    frozen: bool
    simulate: bool

    def fake_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen or not self.simulate:
            return super().forward(x)
        m = self.module
        w = self.fake_weight()
        if isinstance(m, nn.Linear):
            return F.linear(x, w, m.bias)
        return m._conv_forward(x, w, m.bias)


class LsqWeights(TrainableWeights):
    """A conv/linear whose weights are LSQ-quantized with a learnable per-channel step.

    While training, ``forward`` quantizes ``module.weight`` with the current step (STE);
    :meth:`freeze` stores ``weight_int`` (int8) and ``weight_scale`` (float64), after which it
    simulates exactly what the lowering emits. ``min_scale`` (the PTQ bias headroom floor) is
    kept as a floor of the step.
    """

    def __init__(self, q: QuantizedWeights):
        nn.Module.__init__(self)
        self.module = q.module
        self.bits = q.bits
        self.per_channel = q.per_channel
        self.min_scale = q.min_scale
        self.simulate = True
        self.frozen = False
        self.register_buffer("weight_int", q.weight_int.clone())
        self.register_buffer("weight_scale", q.weight_scale.clone())
        self.register_buffer("step0", q.weight_scale.detach().clone().to(torch.float32))
        self.step_rel = nn.Parameter(torch.ones(q.weight_scale.shape[0], dtype=torch.float32))
        qp = (1 << (self.bits - 1)) - 1
        per_step = self.module.weight[0].numel() if self.per_channel else self.module.weight.numel()
        self.grad_g = 1.0 / math.sqrt(per_step * qp)
        self.reference: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.input_scale: Callable[[], torch.Tensor] | None = None

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    # ``input_scale``: set by qcompile.qat.train so training sees the bias rounding the integer
    # program applies (at 2-3 bits ``s_in * s_w`` is a sizeable fraction of the output step)

    def keep_reference(self) -> None:
        """Snapshot the current float weight and bias as the *reference* (full-precision
        counterpart): with ``simulate = False`` the layer then computes with them instead of the
        trained latent weights (used by block replacement, :mod:`qcompile.qat.block_replace`)."""
        m = self.module
        self.reference = (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())

    def fake_bias(self) -> torch.Tensor | None:
        """The float bias on the int32 grid ``s_in * s_w[c]`` the integer program adds (STE), when
        ``input_scale`` (a callable giving the input quantizer's current step) is set; else the bias."""
        b = self.module.bias
        if b is None or self.input_scale is None:
            return b
        unit = self.input_scale() * self.step()
        return round_ste(b / unit) * unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            return super().forward(x)
        if not self.simulate:
            w, b = self.reference if self.reference is not None else (self.module.weight, self.module.bias)
        else:
            w, b = self.fake_weight(), self.fake_bias()
        if isinstance(self.module, nn.Linear):
            return F.linear(x, w, b)
        return self.module._conv_forward(x, w, b)

    def step(self) -> torch.Tensor:
        s = grad_scale(self.step_rel, self.grad_g)
        if not self.per_channel:
            s = s.mean().expand_as(s)
        s = self.step0 * s
        if self.min_scale is not None:
            s = torch.maximum(s, self.min_scale.to(s.dtype))
        return s

    def fake_weight(self) -> torch.Tensor:
        w = self.module.weight
        shape = (-1,) + (1,) * (w.dim() - 1)
        s = self.step().reshape(shape)
        return round_ste(torch.clamp(w / s, -self.qmax, self.qmax)) * s

    @torch.no_grad()
    def freeze(self) -> None:
        """Snapshot the learned integer weights and steps (float64) into the buffers."""
        w = self.module.weight.detach().to(torch.float64)
        s = self.step().detach().to(torch.float64)
        shape = (-1,) + (1,) * (w.dim() - 1)
        self.weight_int = torch.clamp(torch.round(w / s.reshape(shape)), -self.qmax, self.qmax).to(torch.int8)
        self.weight_scale = s
        self.frozen = True

    def extra_repr(self) -> str:
        return f"bits={self.bits} (LSQ), per_channel={self.per_channel}, frozen={self.frozen}"


class LsqActQuant(ActQuant):
    """LSQ fake-quantizer of one activation tensor: learnable step, fixed integer zero point,
    ``2**bits`` levels ``[qmin, qmin + 2**bits - 1]``.

    ``numel`` is the number of features of one sample (for LSQ's gradient scale). After
    :meth:`freeze` it fake-quantizes with the learned ``(scale, zero_point)`` as a float64
    scale, like :class:`~qcompile.nn.ActQuant`; :meth:`freeze` never re-calibrates.
    """

    def __init__(self, bits: int, scale: float, zero_point: int, numel: int, qmin: int = ACT_QMIN):
        super().__init__(observer=None)
        self.bits = bits
        self.qmin = qmin
        self.qmax = qmin + (1 << bits) - 1
        self.zero_point = int(zero_point)
        self.scale = None
        self.register_buffer("step0", torch.tensor(float(scale)))
        self.step_rel = nn.Parameter(torch.ones(()))
        self.grad_g = 1.0 / math.sqrt(max(numel, 1) * max(self.qmax - self.zero_point, 1))
        self.mode = QuantMode.QUANTIZE

    @property
    def quant_range(self) -> tuple[int, int]:
        return self.qmin, self.qmax

    def step(self) -> torch.Tensor:
        return self.step0 * grad_scale(self.step_rel, self.grad_g)

    def freeze(self) -> tuple[float, int]:
        """Fix the learned step as the tensor's float64 scale (idempotent: nothing is re-observed)."""
        if self.scale is None:
            self.scale = float(self.step().detach().to(torch.float64))
        self.mode = QuantMode.QUANTIZE
        return self.scale, self.zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode is not QuantMode.QUANTIZE:
            return x
        if self.scale is not None:
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)
        s = self.step()
        q = torch.clamp(round_ste(x / s) + self.zero_point, self.qmin, self.qmax)
        return (q - self.zero_point) * s

    def extra_repr(self) -> str:
        return f"bits={self.bits} (LSQ), scale={self.scale}, zero_point={self.zero_point}"
