"""High-bias absorption (Nagel et al. 2019, sec. 4.1.1, eq. 14-16).

For a pair ``W2 relu(W1 x + b1) + b2`` and a vector ``c >= 0`` such that the pre-activation
channel ``i`` stays ``>= c_i`` (almost always): ``relu(W1 x + b1) = relu(W1 x + b1 - c) + c``,
so ``b1 <- b1 - c`` and ``b2 <- b2 + W2 c`` leave the function unchanged while shrinking the
activation range that gets quantized. ``c_i = max(0, beta_i - 3 gamma_i)`` from the folded BN
statistics (eq. 16); without them, ``c_i = max(0, min of channel i on the calibration data)``
(exact on that data).

Only pairs whose middle is ReLU-like with no upper clamp, pooling without padding and a
flatten, and whose second layer has no zero padding (a padded border would see ``0`` instead
of ``c``) are touched.

Preserves: the float function wherever the pre-activations stay above ``c`` (always, on the
calibration data when ``c`` comes from it).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.fx import GraphModule

from qcompile.ops import Kind, info
from qcompile.pass_manager import PassContext, PassResult, graph_pass
from qcompile.passes.equalize_cross_layer import Pair, collect_preactivations, find_pairs

__all__ = ["absorb_high_bias"]


def _unpadded(mod: nn.Module) -> bool:
    if isinstance(mod, nn.Linear):
        return True
    p = mod.padding
    return p == "valid" or (not isinstance(p, str) and all(v == 0 for v in p))


def _absorbable(p: Pair, gm: GraphModule) -> bool:
    if not p.clamps or p.bounded or not _unpadded(gm.get_submodule(p.second.target)):
        return False
    for n in p.middle:
        kind = info(n).kind
        if kind is Kind.PAD:
            return False
        if kind is Kind.AVGPOOL and n.op == "call_module":
            pad = gm.get_submodule(n.target).padding
            if pad not in (0, (0,), (0, 0)):
                return False
    return True


def propagate_constant(second: nn.Module, c: torch.Tensor, cols: int) -> torch.Tensor:
    """``W2 c``: the output of ``second``'s weights (no bias) for a per-input-channel constant ``c``."""
    w = second.weight.detach().double()
    if isinstance(second, nn.Linear):
        return w @ c.repeat_interleave(cols)
    groups, cig = second.groups, w.shape[1]
    cog = w.shape[0] // groups
    wsum = w.reshape(w.shape[0], cig, -1).sum(dim=2)              # (cout, cig)
    cg = c.reshape(groups, cig).repeat_interleave(cog, dim=0)     # (cout, cig)
    return (wsum * cg).sum(dim=1)


@graph_pass("a positive pre-activation floor moves into the next bias; narrower ranges to quantize")
def absorb_high_bias(gm: GraphModule, ctx: PassContext) -> PassResult:
    if not ctx.config.absorb_bias:
        ctx.records["absorb_high_bias"] = {"enabled": False}
        return PassResult(gm, False)
    pairs = [p for p in find_pairs(gm) if _absorbable(p, gm)]
    need_data = [p.clamps[0] for p in pairs if getattr(gm.get_submodule(p.first.target), "qc_preact_stats", None) is None]
    data = collect_preactivations(gm, need_data, ctx.calib) if need_data and ctx.calib else {}
    done = []
    with torch.no_grad():
        for p in pairs:
            first, second = gm.get_submodule(p.first.target), gm.get_submodule(p.second.target)
            if first.bias is None:
                continue
            stats = getattr(first, "qc_preact_stats", None)
            if stats is not None:
                c, source = (stats[0] - 3.0 * stats[1]).clamp_min(0.0), "bn"
            elif p.clamps[0] in data:
                x = data[p.clamps[0]].double().transpose(0, 1).reshape(first.weight.shape[0], -1)
                c, source = x.amin(dim=1).clamp_min(0.0), "calibration"
            else:
                continue
            if not bool((c > 0).any()):
                continue
            first.bias.copy_((first.bias.detach().double() - c).to(first.bias.dtype))
            shift = propagate_constant(second, c, p.columns_per_channel)
            if second.bias is None:
                second.bias = nn.Parameter(torch.zeros(second.weight.shape[0], dtype=second.weight.dtype))
            second.bias.copy_((second.bias.detach().double() + shift).to(second.bias.dtype))
            if stats is not None:
                first.qc_preact_stats = (stats[0] - c, stats[1])
            done.append({"pair": f"{p.first.name} -> {p.second.name}", "channels": int((c > 0).sum()),
                         "max_absorbed": round(float(c.max()), 4), "from": source})
    ctx.records["absorb_high_bias"] = {"enabled": True, "pairs": done}
    return PassResult(gm, bool(done))
