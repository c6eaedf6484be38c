"""User-facing quantization settings."""
from __future__ import annotations

from dataclasses import dataclass

from qcompile.errors import ConfigError

__all__ = ["QuantConfig", "OBSERVERS", "TARGETS"]

OBSERVERS = ("minmax", "moving_average", "percentile", "mse")
TARGETS = ("cortex-m", "generic")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize.

    * ``weight_bits``: bits of the symmetric per-output-channel weights (8 for now; the IR
      field is 2..8 so lower widths can follow).
    * ``activation_bits``: 8 (int8 activations, asymmetric per tensor).
    * ``activation_observer``: how activation ranges are chosen from calibration data:
      ``"minmax"``, ``"moving_average"`` (EMA of per-batch min/max, ``averaging_constant``),
      ``"percentile"`` (``percentile`` of |values| on each side) or ``"mse"`` (the clipping
      range minimizing the quantization MSE of the observed values).
    * ``max_calib_samples``: cap on calibration samples read from ``calib``.
    * ``calib_batch_size``: batch size used when ``calib`` is a single tensor.
    """

    weight_bits: int = 8
    activation_bits: int = 8
    activation_observer: str = "mse"
    percentile: float = 99.99
    averaging_constant: float = 0.01
    max_calib_samples: int = 1024
    calib_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.weight_bits != 8:
            raise ConfigError(f"QuantConfig.weight_bits={self.weight_bits}: only 8-bit weights are supported so far")
        if self.activation_bits != 8:
            raise ConfigError(f"QuantConfig.activation_bits={self.activation_bits}: activations are int8")
        if self.activation_observer not in OBSERVERS:
            raise ConfigError(
                f"QuantConfig.activation_observer={self.activation_observer!r}: choose one of {', '.join(OBSERVERS)}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"QuantConfig.percentile={self.percentile}: must be in (50, 100]")
        if not 0.0 < self.averaging_constant <= 1.0:
            raise ConfigError(f"QuantConfig.averaging_constant={self.averaging_constant}: must be in (0, 1]")
        if self.max_calib_samples < 1 or self.calib_batch_size < 1:
            raise ConfigError("QuantConfig.max_calib_samples and calib_batch_size must be positive")
