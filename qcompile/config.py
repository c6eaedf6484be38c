"""User-facing quantization settings."""
from __future__ import annotations

from dataclasses import dataclass

from qcompile.errors import ConfigError

__all__ = ["QuantConfig", "OBSERVERS", "TARGETS", "BIAS_CORRECTIONS", "CLE_RELU6", "WEIGHT_QUANTIZERS"]

OBSERVERS = ("minmax", "moving_average", "percentile", "mse", "kl", "best")
BIAS_CORRECTIONS = ("auto", "empirical", "analytic", "none")
CLE_RELU6 = ("skip", "replace", "auto")
WEIGHT_QUANTIZERS = ("uniform", "pwlq")
TARGETS = ("cortex-m", "generic")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize.

    * ``weight_bits``: bits of the symmetric weights, 2..8 (stored in int8 containers; the
      C kernels accept any int8 values, packing is not done yet).
    * ``per_channel``: one weight scale per output channel (default) or, when ``False``, one
      scale for the whole tensor (per-tensor, as older integer runtimes require).
    * ``weight_observer``: ``"minmax"`` (scale from ``max|w|``), ``"mse"`` (per-channel clipping
      minimizing the weight quantization MSE), ``"output_mse"`` (per-channel clipping minimizing
      the layer's output MSE on calibration data) or ``"auto"``: ``"output_mse"`` below 8 bits,
      else min/max.
    * ``weight_quantizer``: ``"uniform"`` (symmetric uniform levels) or ``"pwlq"``
      (piecewise-linear: a dense center and a sparse tail grid per channel, Fang et al. 2020;
      3..8 bits, stored as codes plus a per-channel level table, see :mod:`qcompile.piecewise`).
    * ``activation_bits``: 8 (int8 activations, asymmetric per tensor).
    * ``activation_observer``: how activation ranges are chosen from calibration data:
      ``"minmax"``, ``"moving_average"`` (EMA of per-batch min/max, ``averaging_constant``),
      ``"percentile"`` (``percentile`` of |values| on each side), ``"mse"`` (the clipping
      range minimizing the quantization MSE of the observed values), ``"kl"`` (TensorRT's
      entropy calibration: the clipping minimizing the KL divergence of the histograms) or
      ``"best"`` (per tensor, whichever of min/max, percentile, MSE and KL gives the lowest
      quantization MSE on the calibration data).
    * ``equalize``: cross-layer equalization (Nagel et al. 2019 sec. 4.1) of conv/linear pairs.
    * ``equalize_relu6``: what CLE does with pairs joined by a ReLU6, whose clamp does not
      commute with per-channel scaling: ``"skip"`` them (exact), ``"replace"`` ReLU6 by ReLU
      as the paper does (changes the float function where the clamp was active) or ``"auto"``:
      replace only where the calibration data never reaches the clamp (``relu6_tolerance``
      fraction of values above 6 at most), skip the rest.
    * ``absorb_bias``: high-bias absorption (Nagel et al. 2019 sec. 4.1.1) after CLE.
    * ``bias_correction``: ``"auto"`` (empirical when calibration data is there, which it
      always is in ``compile``), ``"empirical"``, ``"analytic"`` (from folded BN statistics,
      Nagel et al. 2019 sec. 4.2) or ``"none"``.
    * ``split_outliers``: outlier channel splitting (Zhao et al. 2019) expansion ratio, the
      fraction of extra channels per layer (``0`` switches it off).
    * ``max_calib_samples``: cap on calibration samples read from ``calib``.
    * ``calib_batch_size``: batch size used when ``calib`` is a single tensor.
    """

    weight_bits: int = 8
    activation_bits: int = 8
    activation_observer: str = "mse"
    per_channel: bool = True
    weight_observer: str = "auto"
    weight_quantizer: str = "uniform"
    equalize: bool = True
    equalize_relu6: str = "auto"
    relu6_tolerance: float = 1e-4
    absorb_bias: bool = True
    bias_correction: str = "auto"
    split_outliers: float = 0.0
    percentile: float = 99.99
    averaging_constant: float = 0.01
    max_calib_samples: int = 1024
    calib_batch_size: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.weight_bits, int) or not 2 <= self.weight_bits <= 8:
            raise ConfigError(f"QuantConfig.weight_bits={self.weight_bits}: choose an integer in 2..8")
        if self.activation_bits != 8:
            raise ConfigError(f"QuantConfig.activation_bits={self.activation_bits}: activations are int8")
        if self.activation_observer not in OBSERVERS:
            raise ConfigError(
                f"QuantConfig.activation_observer={self.activation_observer!r}: choose one of {', '.join(OBSERVERS)}"
            )
        if self.weight_observer not in ("auto", "minmax", "mse", "output_mse"):
            raise ConfigError(f"QuantConfig.weight_observer={self.weight_observer!r}: choose auto, minmax, mse or output_mse")
        if self.weight_quantizer not in WEIGHT_QUANTIZERS:
            raise ConfigError(f"QuantConfig.weight_quantizer={self.weight_quantizer!r}: "
                              f"choose one of {', '.join(WEIGHT_QUANTIZERS)}")
        if self.bias_correction not in BIAS_CORRECTIONS:
            raise ConfigError(f"QuantConfig.bias_correction={self.bias_correction!r}: "
                              f"choose one of {', '.join(BIAS_CORRECTIONS)}")
        if self.equalize_relu6 not in CLE_RELU6:
            raise ConfigError(f"QuantConfig.equalize_relu6={self.equalize_relu6!r}: choose one of {', '.join(CLE_RELU6)}")
        if not 0.0 <= self.split_outliers <= 1.0:
            raise ConfigError(f"QuantConfig.split_outliers={self.split_outliers}: an expansion ratio in [0, 1]")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"QuantConfig.percentile={self.percentile}: must be in (50, 100]")
        if not 0.0 < self.averaging_constant <= 1.0:
            raise ConfigError(f"QuantConfig.averaging_constant={self.averaging_constant}: must be in (0, 1]")
        if self.max_calib_samples < 1 or self.calib_batch_size < 1:
            raise ConfigError("QuantConfig.max_calib_samples and calib_batch_size must be positive")
