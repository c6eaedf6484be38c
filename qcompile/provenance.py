"""What a build was made from: package versions and a hash of every input of ``compile``.

Recorded in ``report.json`` (``"build"``) and ``report.md`` so a build folder says which model,
data and configuration produced it; the same inputs and versions give byte-identical files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from importlib import metadata
from typing import Any, Iterable

import torch

from qcompile.pass_manager import pass_name

__all__ = ["tensor_digest", "state_dict_digest", "config_digest", "build_info"]

_PACKAGES = ("qcompile", "torch", "numpy", "sympy", "networkx")


def _update_tensor(h: "hashlib._Hash", t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def tensor_digest(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 over dtype, shape and bytes of each tensor, in order."""
    h = hashlib.sha256()
    for t in tensors:
        _update_tensor(h, t)
    return h.hexdigest()


def state_dict_digest(model: torch.nn.Module) -> str:
    """sha256 over the model's ``state_dict`` (names, dtypes, shapes, values), sorted by name."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            _update_tensor(h, value)
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


def config_digest(*parts: Any) -> str:
    """sha256 of a canonical JSON rendering of dataclasses/dicts/values (e.g. the QuantConfig)."""
    return hashlib.sha256(json.dumps(_plain(list(parts)), sort_keys=True).encode()).hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def build_info(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], calib: list[torch.Tensor],
               config: Any, target: Any, name: str, pipeline: Any) -> dict[str, Any]:
    """Versions and input hashes. ``calib`` is the calibration data as used (after batching and
    the ``max_calib_samples`` cut); ``pipeline`` (the one that ran) is recorded by its pass names."""
    passes = [pass_name(p) for p in pipeline]
    target_desc = target.as_dict() if hasattr(target, "as_dict") else target
    inputs = {
        "model_state_dict": state_dict_digest(model),
        "example_inputs": tensor_digest(example_inputs),
        "calibration_data": tensor_digest(calib),
        "config": config_digest(config, target_desc, name, passes),
    }
    inputs["all"] = hashlib.sha256("".join(inputs[k] for k in sorted(inputs)).encode()).hexdigest()
    return {
        "versions": {**{p: _version(p) for p in _PACKAGES}, "python": platform.python_version()},
        "inputs_sha256": inputs,
        "calibration_samples": int(sum(len(b) for b in calib)),
        "pipeline": passes,
    }
