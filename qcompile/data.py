"""Normalize user calibration data into a list of float batches, validated against example_inputs."""
from __future__ import annotations

from typing import Any, Iterable

import torch

from qcompile.errors import CalibrationError

__all__ = ["calibration_batches"]


def _as_tensor(item: Any, index: int) -> torch.Tensor:
    if isinstance(item, (tuple, list)) and item:
        item = item[0]
    if isinstance(item, dict):
        raise CalibrationError(f"calibration batch {index} is a dict; yield tensors or (input, label) tuples")
    if not isinstance(item, torch.Tensor):
        raise CalibrationError(f"calibration batch {index} is a {type(item).__name__}, expected a tensor")
    return item


def calibration_batches(calib: Any, example_input: torch.Tensor, *, max_samples: int, batch_size: int) -> list[torch.Tensor]:
    """``calib`` (a tensor of samples, or an iterable of batches / (input, ...) tuples) as float batches.

    Raises :class:`CalibrationError` for no data, a sample shape that differs from
    ``example_input``'s, or NaN/Inf values.
    """
    if calib is None:
        raise CalibrationError("calib is required: a tensor of samples or an iterable of batches (e.g. a DataLoader)")
    sample_shape = tuple(example_input.shape[1:])
    if isinstance(calib, torch.Tensor):
        if calib.dim() == len(sample_shape):  # a single sample
            calib = calib.unsqueeze(0)
        items: Iterable[Any] = calib.split(batch_size)
    else:
        items = calib
    batches: list[torch.Tensor] = []
    seen = 0
    for i, item in enumerate(items):
        x = _as_tensor(item, i)
        if tuple(x.shape[1:]) != sample_shape:
            raise CalibrationError(
                f"calibration batch {i} has samples of shape {tuple(x.shape[1:])}, "
                f"but example_inputs[0] has {sample_shape} (batch dim first)"
            )
        x = x.detach().to(example_input.dtype)
        if not torch.isfinite(x).all():
            raise CalibrationError(f"calibration batch {i} contains NaN or Inf")
        x = x[: max_samples - seen]
        batches.append(x)
        seen += len(x)
        if seen >= max_samples:
            break
    if seen == 0:
        raise CalibrationError("calibration data is empty")
    return batches
