"""Normalize user calibration data into a list of float batches, validated against example_inputs."""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from qcompile.errors import CalibrationError

__all__ = ["calibration_batches"]


def _packed_batches(calib: Any, examples: tuple[torch.Tensor, ...], *, max_samples: int,
                    batch_size: int) -> list[torch.Tensor]:
    from qcompile.packing import pack

    k = len(examples)
    if calib is None:
        raise CalibrationError(f"calib is required: a tuple of {k} sample tensors or an iterable of {k}-tuples")
    if isinstance(calib, (tuple, list)) and len(calib) == k and all(isinstance(c, torch.Tensor) for c in calib):
        items = list(zip(*(c.split(batch_size) for c in calib)))
    else:
        items = calib
    return _first_samples(_packed_items(items, examples, pack), max_samples)


def _packed_items(items: Iterable[Any], examples: tuple[torch.Tensor, ...], pack) -> Iterator[torch.Tensor]:
    """Each batch of ``k``-input tuples, validated and packed."""
    k = len(examples)
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) < k:
            raise CalibrationError(f"calibration batch {i} must hold the model's {k} inputs, got {type(item).__name__}")
        parts = []
        for j, (x, ex) in enumerate(zip(item[:k], examples)):
            if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != tuple(ex.shape[1:]):
                raise CalibrationError(f"calibration batch {i}, input {j}: expected samples of shape "
                                       f"{tuple(ex.shape[1:])} (batch dim first)")
            if not torch.isfinite(x).all():
                raise CalibrationError(f"calibration batch {i}, input {j} contains NaN or Inf")
            parts.append(x.detach().to(ex.dtype))
        if len({len(p) for p in parts}) != 1:
            raise CalibrationError(f"calibration batch {i}: the inputs have different batch sizes")
        yield pack(parts)


def _first_samples(batches: Iterable[torch.Tensor], max_samples: int) -> list[torch.Tensor]:
    """The batches up to ``max_samples`` samples in all (the last one cut), reading no further."""
    out: list[torch.Tensor] = []
    seen = 0
    for x in batches:
        x = x[: max_samples - seen]
        out.append(x)
        seen += len(x)
        if seen >= max_samples:
            break
    if seen == 0:
        raise CalibrationError("calibration data is empty")
    return out


def _as_tensor(item: Any, index: int) -> torch.Tensor:
    if isinstance(item, (tuple, list)) and item:
        item = item[0]
    if isinstance(item, dict):
        raise CalibrationError(f"calibration batch {index} is a dict; yield tensors or (input, label) tuples")
    if not isinstance(item, torch.Tensor):
        raise CalibrationError(f"calibration batch {index} is a {type(item).__name__}, expected a tensor")
    return item


def calibration_batches(calib: Any, example_input: torch.Tensor | tuple[torch.Tensor, ...], *, max_samples: int,
                        batch_size: int) -> list[torch.Tensor]:
    """``calib`` (a tensor of samples, or an iterable of batches / (input, ...) tuples) as float batches.

    Several inputs (``example_input`` a tuple of k tensors): ``calib`` is a tuple of k sample tensors,
    or an iterable of batches whose first k elements are the inputs; the batches come back packed
    (:func:`qcompile.packing.pack`), as the traced graph takes them.

    Raises :class:`CalibrationError` for no data, a sample shape that differs from
    ``example_input``'s, or NaN/Inf values.
    """
    if isinstance(example_input, (tuple, list)):
        return _packed_batches(calib, tuple(example_input), max_samples=max_samples, batch_size=batch_size)
    if calib is None:
        raise CalibrationError("calib is required: a tensor of samples or an iterable of batches (e.g. a DataLoader)")
    sample_shape = tuple(example_input.shape[1:])
    if isinstance(calib, torch.Tensor):
        if calib.dim() == len(sample_shape):  # a single sample
            calib = calib.unsqueeze(0)
        items: Iterable[Any] = calib.split(batch_size)
    else:
        items = calib
    return _first_samples(_checked_items(items, example_input), max_samples)


def _checked_items(items: Iterable[Any], example_input: torch.Tensor) -> Iterator[torch.Tensor]:
    """Each batch as a tensor of ``example_input``'s dtype, validated."""
    sample_shape = tuple(example_input.shape[1:])
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
        yield x
