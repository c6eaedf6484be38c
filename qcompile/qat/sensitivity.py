"""Measured per-layer sensitivity of a quantized graph and Spearman's rank correlation: the
ground truth the constrained method's dual variables are checked against.

Two measures, each with only one layer's weights quantized and everything else in float:
the top-1 drop (the issue's definition) and the mean KL divergence of the network's output
distribution from the float network's. On a 1,000-sample test split a top-1 drop moves in steps
of 0.1 point and a layer that flips a handful of predictions is indistinguishable from one that
flips none, so most of the drops of a robust layer are sampling noise and their ranks are
arbitrary; the KL is continuous and ranks those layers too."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import numpy as np
import torch
from torch.fx import GraphModule

from qcompile.analysis import float_mode

__all__ = ["layer_sensitivity", "layer_output_divergence", "spearman"]


def _logits(gm: GraphModule, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([gm(b) for b in x.split(512)])


def _top1(gm: GraphModule, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((_logits(gm, x).argmax(1) == y).float().mean())


@contextmanager
def _only_quantized(gm: GraphModule, name: str) -> Iterator[None]:
    """Inside :func:`float_mode`: simulate the quantization of ``name``'s weights alone."""
    mod = gm.get_submodule(name)
    mod.simulate = True
    try:
        yield
    finally:
        mod.simulate = False


def layer_sensitivity(gm: GraphModule, layers: list[str], x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Top-1 drop (points) when only ``layer``'s weights are quantized (at the width and with the
    step the graph holds) and everything else runs in float: ``top1(float) - top1(only layer)``."""
    out = {}
    with float_mode(gm):
        base = _top1(gm, x, y)
        for name in layers:
            with _only_quantized(gm, name):
                out[name] = base - _top1(gm, x, y)
    return out


def layer_output_divergence(gm: GraphModule, layers: list[str], x: torch.Tensor) -> dict[str, float]:
    """Mean ``KL(p_float || p_only layer)`` (nats per sample) of the softmax outputs when only
    ``layer``'s weights are quantized, as in :func:`layer_sensitivity`; needs no labels."""
    out = {}
    with float_mode(gm):
        base = torch.log_softmax(_logits(gm, x).double(), 1)
        for name in layers:
            with _only_quantized(gm, name):
                quantized = torch.log_softmax(_logits(gm, x).double(), 1)
            out[name] = float((base.exp() * (base - quantized)).sum(1).mean())
    return out


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    for val in np.unique(v):  # ties share their mean rank
        tie = v == val
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Spearman's rank correlation of two per-layer scores over their common layers (ties get
    mean ranks); ``nan`` when either side is constant or fewer than 3 layers are shared."""
    keys = [k for k in a if k in b]
    if len(keys) < 3:
        return float("nan")
    ra = _ranks(np.array([a[k] for k in keys], dtype=np.float64))
    rb = _ranks(np.array([b[k] for k in keys], dtype=np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
