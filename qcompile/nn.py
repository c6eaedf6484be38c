"""Modules that passes insert into the graph: activation observers/fake-quantizers and
weight-quantized conv/linear wrappers. Together they make ``art.graph`` a runnable
fake-quant simulation of the integer program."""
from __future__ import annotations

import enum

import torch
import torch.nn as nn
import torch.nn.functional as F

from qcompile.observers import Observer, qparams_from_range

__all__ = ["QuantMode", "ActQuant", "QuantizedWeights", "quantize_weight_per_channel", "mse_clip_factors"]


class QuantMode(enum.Enum):
    FLOAT = "float"        # pass values through untouched
    OBSERVE = "observe"    # record ranges, pass values through
    QUANTIZE = "quantize"  # fake-quantize with the frozen (scale, zero_point)


class ActQuant(nn.Module):
    """Observer + int8 asymmetric fake-quantizer of one activation tensor.

    ``fixed_qparams`` pins the quantization (softmax outputs use 1/256 and -128, as TFLite).
    """

    def __init__(self, observer: Observer, fixed_qparams: tuple[float, int] | None = None):
        super().__init__()
        self.observer = observer
        self.fixed_qparams = fixed_qparams
        # FLOAT until calibration starts: shape propagation between passes must not be observed
        self.mode = QuantMode.FLOAT
        self.scale: float | None = None
        self.zero_point: int | None = None

    def freeze(self) -> tuple[float, int]:
        """Compute ``(scale, zero_point)`` from what was observed and switch to fake-quant."""
        if self.fixed_qparams is not None:
            self.scale, self.zero_point = self.fixed_qparams
        else:
            self.scale, self.zero_point = qparams_from_range(*self.observer.range())
        self.mode = QuantMode.QUANTIZE
        return self.scale, self.zero_point

    @property
    def qparams(self) -> tuple[float, int]:
        if self.scale is None:
            raise RuntimeError("ActQuant has not been calibrated")
        return self.scale, self.zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode is QuantMode.OBSERVE:
            self.observer.observe(x)
            return x
        if self.mode is QuantMode.QUANTIZE:
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, -128, 127)
        return x

    def extra_repr(self) -> str:
        return f"mode={self.mode.value}, scale={self.scale}, zero_point={self.zero_point}"


CLIP_GRID = torch.linspace(0.3, 1.0, 71, dtype=torch.float64)


def mse_clip_factors(weight: torch.Tensor, bits: int, per_channel: bool = True) -> torch.Tensor:
    """Per output channel (or one shared) shrink factor ``alpha`` of ``max|w|`` minimizing the
    squared weight quantization error ``||w - s * clamp(round(w / s))||^2`` with
    ``s = alpha * max|w| / qmax``: the MSE clipping of Banner et al. 2019 / Nagel et al. 2021
    (sec. 3.4.1), searched on a grid. ``alpha = 1`` is in the grid, so it never does worse than
    min/max on the weights."""
    qmax = (1 << (bits - 1)) - 1
    w = weight.detach().to(torch.float64).reshape(weight.shape[0], -1)
    amax = w.abs().amax(dim=1)
    if not per_channel:
        amax = amax.max().expand_as(amax)
    scale = (CLIP_GRID.reshape(-1, 1) * amax.reshape(1, -1) / qmax).clamp_min(1e-300)  # (A, C)
    q = torch.clamp(torch.round(w.unsqueeze(0) / scale.unsqueeze(2)), -qmax, qmax) * scale.unsqueeze(2)
    err = (q - w.unsqueeze(0)).pow(2).sum(dim=2)                                            # (A, C)
    if not per_channel:
        return CLIP_GRID[err.sum(dim=1).argmin()].expand(w.shape[0]).clone()
    return CLIP_GRID[err.argmin(dim=0)]


def quantize_weight_per_channel(weight: torch.Tensor, bits: int,
                                min_scale: torch.Tensor | None = None,
                                per_channel: bool = True,
                                clip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel quantization: ``w ~= w_int * scale[c]``.

    ``scale[c] = max(max|w[c]| / (2**(bits-1) - 1), min_scale[c])``; all-zero channels get
    scale 1 (or ``min_scale``). With ``per_channel=False`` every channel gets the same scale
    (the largest of the per-channel ones): per-tensor quantization in a per-channel container.
    ``clip`` (per channel, in ``(0, 1]``) shrinks ``max|w|`` before the scale is taken
    (see :func:`mse_clip_factors`). Returns ``(w_int as int8 tensor, scale as float64 tensor)``.
    """
    qmax = (1 << (bits - 1)) - 1
    w = weight.detach().to(torch.float64)
    amax = w.reshape(w.shape[0], -1).abs().amax(dim=1)
    if not per_channel:
        amax = amax.max().expand_as(amax).clone()
    if clip is not None:
        amax = amax * clip.to(torch.float64)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    if min_scale is not None:
        scale = torch.maximum(scale, min_scale.to(torch.float64))
        if not per_channel:
            scale = scale.max().expand_as(scale).clone()
    shape = (-1,) + (1,) * (w.dim() - 1)
    w_int = torch.clamp(torch.round(w / scale.reshape(shape)), -qmax, qmax).to(torch.int8)
    return w_int, scale


class QuantizedWeights(nn.Module):
    """A conv/linear whose weights are replaced by their per-channel quantized values.

    Keeps the float module (for its hyper-parameters and float bias) and the integer weights
    and scales that the lowering emits.
    """

    def __init__(self, module: nn.Module, bits: int, min_scale: torch.Tensor | None = None,
                 per_channel: bool = True, clip: torch.Tensor | None = None):
        super().__init__()
        self.module = module
        self.bits = bits
        self.per_channel = per_channel
        self.min_scale = min_scale  # bias headroom floor of the scales; re-quantizing passes keep it
        w_int, scale = quantize_weight_per_channel(module.weight, bits, min_scale, per_channel, clip)
        self.register_buffer("weight_int", w_int)
        self.register_buffer("weight_scale", scale)
        self.simulate = True  # False: compute with the float weights (reference runs)

    def dequantized_weight(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.weight_int.dim() - 1)
        w = self.weight_int.to(torch.float64) * self.weight_scale.reshape(shape)
        return w.to(self.module.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        w = self.dequantized_weight() if self.simulate else m.weight
        if isinstance(m, nn.Linear):
            return F.linear(x, w, m.bias)
        return m._conv_forward(x, w, m.bias)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}"
