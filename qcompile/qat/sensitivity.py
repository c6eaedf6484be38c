"""Measured per-layer sensitivity of a quantized graph and Spearman's rank correlation: the
ground truth the constrained method's dual variables are checked against."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch.fx import GraphModule

from qcompile.analysis import float_mode

__all__ = ["layer_sensitivity", "spearman"]


def _top1(gm: GraphModule, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        logits = torch.cat([gm(b) for b in x.split(512)])
    return 100.0 * float((logits.argmax(1) == y).float().mean())


def layer_sensitivity(gm: GraphModule, layers: list[str], x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Top-1 drop (points) when only ``layer``'s weights are quantized (at the width and with the
    step the graph holds) and everything else runs in float: ``top1(float) - top1(only layer)``."""
    out = {}
    with float_mode(gm):
        base = _top1(gm, x, y)
        for name in layers:
            mod = gm.get_submodule(name)
            mod.simulate = True
            try:
                out[name] = base - _top1(gm, x, y)
            finally:
                mod.simulate = False
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
