"""Outlier channel splitting (Zhao et al. 2019, "Improving Neural Network Quantization without
Retraining using Outlier Channel Splitting", sec. 3, weight splitting).

For ``y = W2 f(W1 x + b1)`` with ``f`` element-wise, input channel ``i`` of ``W2`` holding the
largest |weight| is split: the producer computes channel ``i`` twice (its row of ``W1`` and
``b1`` duplicated, appended as a new channel) and ``W2``'s column(s) for ``i`` are halved and
copied to the new channel, so ``W2[:, i] x_i = W2[:, i]/2 x_i + W2[:, i]/2 x_i``. Repeated
greedily on the current largest weight until ``ceil(ratio * C)`` channels were added
(``QuantConfig.split_outliers``). The widened layers are ordinary conv/linear layers and lower
to the same C kernels; the record lists the extra MACs and constant bytes.

Only pairs with a non-grouped producer and consumer (a depthwise conv ties its input channel to
its output channel) are split.

Preserves: the float function, exactly up to float rounding.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.fx import GraphModule

from qcompile.pass_manager import PassContext, PassResult, graph_pass
from qcompile.ops import info
from qcompile.passes.equalize_cross_layer import Pair, find_pairs

__all__ = ["split_outlier_channels"]


def _groups(mod: nn.Module) -> int:
    return 1 if isinstance(mod, nn.Linear) else mod.groups


def _column_view(w: torch.Tensor, channels: int, cols: int, linear: bool) -> torch.Tensor:
    """``(cout, channels, rest)`` view of the consumer weight by input channel."""
    if linear:
        return w.reshape(w.shape[0], channels, cols)
    return w.reshape(w.shape[0], channels, -1)


def _split(p: Pair, gm: GraphModule, ratio: float) -> dict | None:
    first, second = gm.get_submodule(p.first.target), gm.get_submodule(p.second.target)
    if _groups(first) != 1 or _groups(second) != 1:
        return None
    linear2 = isinstance(second, nn.Linear)
    channels, cols = first.weight.shape[0], p.columns_per_channel
    n_new = math.ceil(ratio * channels)
    if n_new < 1:
        return None
    w2 = _column_view(second.weight.detach().double(), channels, cols, linear2).clone()
    src = list(range(channels))
    for _ in range(n_new):
        c = int(w2.abs().amax(dim=(0, 2)).argmax())
        w2[:, c] /= 2
        w2 = torch.cat([w2, w2[:, c:c + 1]], dim=1)
        src.append(src[c])
    idx = torch.tensor(src)
    with torch.no_grad():
        w1 = first.weight.detach()
        first.weight = nn.Parameter(w1[idx].clone())
        if first.bias is not None:
            first.bias = nn.Parameter(first.bias.detach()[idx].clone())
        stats = getattr(first, "qc_preact_stats", None)
        if stats is not None:
            first.qc_preact_stats = (stats[0][idx], stats[1][idx])
        total = channels + n_new
        if linear2:
            second.weight = nn.Parameter(w2.reshape(w2.shape[0], total * cols).to(second.weight.dtype))
            second.in_features = total * cols
        else:
            second.weight = nn.Parameter(w2.reshape(w2.shape[0], total, *second.weight.shape[2:]).to(second.weight.dtype))
            second.in_channels = total
        if isinstance(first, nn.Linear):
            first.out_features = total
        else:
            first.out_channels = total
    # cost: new producer channels + new consumer input columns (per inference)
    out1 = info(p.first).shape[1:]
    per_ch1 = math.prod(out1[1:]) if len(out1) > 1 else 1
    k1 = w1[0].numel()
    if linear2:
        macs2, bytes2 = second.weight.shape[0] * n_new * cols, second.weight.shape[0] * n_new * cols
    else:
        out2 = info(p.second).shape[1:]
        kprod = math.prod(second.weight.shape[2:])
        macs2, bytes2 = math.prod(out2) * n_new * kprod, second.weight.shape[0] * n_new * kprod
    return {"pair": f"{p.first.name} -> {p.second.name}", "channels": channels, "split": n_new,
            "duplicated": sorted(set(src[channels:])),
            "extra_macs": n_new * per_ch1 * k1 + macs2,
            "extra_bytes": n_new * (k1 + 4 + 8) + bytes2}


@graph_pass("outlier weights stretch the quantization grid; splitting their channel halves them")
def split_outlier_channels(gm: GraphModule, ctx: PassContext) -> PassResult:
    ratio = ctx.config.split_outliers
    if ratio <= 0:
        ctx.records["split_outlier_channels"] = {"enabled": False}
        return PassResult(gm, False)
    done = [r for p in find_pairs(gm) if (r := _split(p, gm, ratio)) is not None]
    ctx.records["split_outlier_channels"] = {
        "enabled": True, "ratio": ratio, "pairs": done,
        "extra_macs": sum(r["extra_macs"] for r in done), "extra_bytes": sum(r["extra_bytes"] for r in done),
    }
    return PassResult(gm, bool(done))
