"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization through Weight
Equalization and Bias Correction", sec. 4.1).

For a pair ``y = W2 f(W1 x + b1) + b2`` whose middle ``f`` is positive homogeneous per channel
(ReLU, identity, max/avg pooling, zero padding, a flatten into a linear layer), scaling output
channel ``i`` of layer 1 by ``1/s_i`` and input channel ``i`` of layer 2 by ``s_i`` leaves the
function unchanged (eq. 5-7). With ``r1_i`` the range of output channel ``i`` of ``W1`` and
``r2_i`` the range of input channel ``i`` of ``W2``, ``s_i = sqrt(r1_i * r2_i) / r2_i``
(eq. 11) makes both ranges ``sqrt(r1_i * r2_i)``, which maximizes the summed per-channel
precision (eq. 9-10). Chains of pairs (conv -> dw conv -> conv) are swept until the scales
converge.

Pairs are found on a networkx view of the graph: from each conv/linear, follow single-consumer
chains through pass-through ops; branches, residual adds, concats and anything else end the
search. Depthwise convolutions may sit on either side.

ReLU6 needs care: ``relu6(x / s) != relu6(x) / s`` because the clamp at 6 does not move with
the channel. ``QuantConfig.equalize_relu6`` decides: ``"skip"`` such pairs, ``"replace"`` the
ReLU6 by a ReLU as the paper does for MobileNetV2 (sec. 5), or ``"auto"``: replace only where
the calibration data never (up to ``relu6_tolerance``) reaches 6, so the function is unchanged
on the data; other ReLU6 pairs are skipped. Every decision is recorded.

Preserves: the float function exactly (up to float rounding) for the pairs it equalizes; with
ReLU6 replaced, the function where the clamp was inactive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.nn as nn
from torch.fx import GraphModule, Node

from qcompile.ops import Kind, clamp_range, info
from qcompile.pass_manager import PassContext, PassResult, graph_pass

__all__ = ["equalize_cross_layer", "find_pairs", "Pair", "input_channel_ranges", "scale_pair",
           "collect_preactivations"]

PASS_THROUGH = frozenset({Kind.CLAMP, Kind.MAXPOOL, Kind.AVGPOOL, Kind.GLOBAL_AVGPOOL, Kind.PAD, Kind.RESHAPE})
MAX_SWEEPS = 100
TOL = 1e-6


@dataclass
class Pair:
    """``first -> middle... -> second``; ``relu6`` lists middle ReLU6/clamp nodes with an upper bound."""

    first: Node
    second: Node
    middle: list[Node] = field(default_factory=list)
    clamps: list[Node] = field(default_factory=list)       # clamp nodes in the middle
    bounded: list[Node] = field(default_factory=list)      # clamps with a finite upper bound (ReLU6)
    columns_per_channel: int = 1                            # > 1 when a flatten feeds a linear


def weighted(node: Node, gm: GraphModule) -> nn.Module | None:
    """The conv/linear module of ``node`` if it is one called exactly once, else None."""
    if node.op != "call_module" or info(node).kind not in (Kind.CONV, Kind.LINEAR):
        return None
    mod = gm.get_submodule(node.target)
    if not isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        return None
    return mod


def _graph(gm: GraphModule) -> nx.DiGraph:
    g = nx.DiGraph()
    for n in gm.graph.nodes:
        g.add_node(n)
        for u in n.users:
            g.add_edge(n, u)
    return g


def find_pairs(gm: GraphModule) -> list[Pair]:
    """Every equalizable ``conv/linear -> (per-channel pass-through)* -> conv/linear`` pair."""
    g = _graph(gm)
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    pairs = []
    for n in gm.graph.nodes:
        if weighted(n, gm) is None or calls[n.target] != 1:
            continue
        pair = Pair(n, n)
        cur, channels = n, info(n).shape[1]
        while g.out_degree(cur) == 1:
            (nxt,) = g.successors(cur)
            kind = info(nxt).kind
            if nxt.args[0] is not cur:
                break
            if weighted(nxt, gm) is not None and calls[nxt.target] == 1:
                mod = gm.get_submodule(nxt.target)
                in_features = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
                if in_features % channels == 0 and (isinstance(mod, nn.Linear) or in_features == channels):
                    pair.second = nxt
                    pair.columns_per_channel = in_features // channels
                break
            if kind not in PASS_THROUGH:
                break
            if kind is Kind.CLAMP:
                lo, hi = clamp_range(nxt, gm)
                if lo != 0.0:  # only ReLU-like clamps commute with positive scaling
                    break
                pair.clamps.append(nxt)
                if not math.isinf(hi):
                    pair.bounded.append(nxt)
            if kind is Kind.RESHAPE:
                shp, ishp = info(nxt).shape, info(cur).shape
                if len(shp) != 2 or shp[1] != math.prod(ishp[1:]):
                    break  # only a flatten (channel-major) keeps channels contiguous
            pair.middle.append(nxt)
            cur = nxt
        if pair.second is not n:
            if pair.columns_per_channel > 1 and not isinstance(gm.get_submodule(pair.second.target), nn.Linear):
                continue
            pairs.append(pair)
    return pairs


def output_channel_ranges(mod: nn.Module) -> torch.Tensor:
    w = mod.weight.detach().double()
    return w.reshape(w.shape[0], -1).abs().amax(dim=1)


def input_channel_ranges(mod: nn.Module, channels: int, cols: int) -> torch.Tensor:
    """``r2_i``: max |w| over everything input channel ``i`` of the *pair* touches in ``mod``."""
    w = mod.weight.detach().double()
    if isinstance(mod, nn.Linear):
        return w.abs().reshape(w.shape[0], channels, cols).amax(dim=(0, 2))
    groups = mod.groups
    cig, cog = w.shape[1], w.shape[0] // groups
    r = torch.empty(channels, dtype=torch.float64)
    for c in range(channels):
        gi, j = divmod(c, cig)
        r[c] = w[gi * cog:(gi + 1) * cog, j].abs().max()
    return r


def scale_pair(first: nn.Module, second: nn.Module, s: torch.Tensor, cols: int) -> None:
    """``W1[i] /= s_i, b1[i] /= s_i, W2[:, i] *= s_i`` (eq. 5-7), in place."""
    with torch.no_grad():
        w1 = first.weight.detach().double()
        shape1 = (-1,) + (1,) * (w1.dim() - 1)
        first.weight.copy_((w1 / s.reshape(shape1)).to(first.weight.dtype))
        if first.bias is not None:
            first.bias.copy_((first.bias.detach().double() / s).to(first.bias.dtype))
        stats = getattr(first, "qc_preact_stats", None)
        if stats is not None:  # pre-activation mean/std move with the channel
            first.qc_preact_stats = (stats[0] / s, stats[1] / s)
        w2 = second.weight.detach().double()
        if isinstance(second, nn.Linear):
            f = s.repeat_interleave(cols).reshape(1, -1)
        else:
            groups, cig = second.groups, w2.shape[1]
            cog = w2.shape[0] // groups
            f = s.reshape(groups, 1, cig).expand(groups, cog, cig).reshape(w2.shape[0], cig)
            f = f.reshape(*f.shape, *([1] * (w2.dim() - 2)))
        second.weight.copy_((w2 * f).to(second.weight.dtype))


def collect_preactivations(gm: GraphModule, nodes: list[Node], calib: list[torch.Tensor],
                           max_samples: int = 256):
    """``{node: the values of node's input}`` on the first ``max_samples`` calibration samples,
    captured with a torch.fx Interpreter (the float graph; nothing is quantized yet)."""
    from torch.fx import Interpreter

    wanted = {n.args[0]: n for n in nodes}
    seen: dict[Node, list[torch.Tensor]] = {n: [] for n in nodes}

    class _Capture(Interpreter):
        def run_node(self, n: Node):
            out = super().run_node(n)
            if n in wanted:
                seen[wanted[n]].append(out.detach())
            return out

    taken = 0
    with torch.no_grad():
        for batch in calib:
            if taken >= max_samples:
                break
            _Capture(gm).run(batch[: max_samples - taken])
            taken += min(len(batch), max_samples - taken)
    return {n: torch.cat(v) for n, v in seen.items() if v}


def _resolve_relu6(gm: GraphModule, ctx: PassContext, pairs: list[Pair]) -> tuple[list[Pair], list[dict]]:
    """Apply the ``equalize_relu6`` policy: returns the pairs to equalize and the decisions."""
    policy = ctx.config.equalize_relu6
    bounded = sorted({c for p in pairs for c in p.bounded}, key=lambda n: n.name)
    decisions: list[dict] = []
    replace: set[Node] = set()
    if bounded and policy != "skip":
        stats = collect_preactivations(gm, bounded, ctx.calib) if policy == "auto" and ctx.calib else {}
        for c in bounded:
            hi = clamp_range(c, gm)[1]
            if policy == "replace":
                replace.add(c)
                decisions.append({"node": c.name, "action": "replaced by ReLU"})
                continue
            x = stats.get(c)
            frac = float((x > hi).double().mean()) if x is not None else 1.0
            if frac <= ctx.config.relu6_tolerance:
                replace.add(c)
                decisions.append({"node": c.name, "action": "replaced by ReLU", "above_clamp": frac})
            else:
                decisions.append({"node": c.name, "action": "pair skipped", "above_clamp": frac})
    elif bounded:
        decisions = [{"node": c.name, "action": "pair skipped"} for c in bounded]
    for c in replace:
        if c.op == "call_module":
            parent, _, leaf = c.target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf, nn.ReLU())
        else:
            c.target, c.op = torch.relu, "call_function"
            c.args, c.kwargs = (c.args[0],), {}
    keep = [p for p in pairs if all(c in replace for c in p.bounded)]
    return keep, decisions


DEAD_CHANNEL = 1e-6  # relative range below which a channel is left unscaled


@graph_pass("per-channel weight ranges differ by orders of magnitude; rescaling pairs evens them out")
def equalize_cross_layer(gm: GraphModule, ctx: PassContext) -> PassResult:
    if not ctx.config.equalize:
        ctx.records["equalize_cross_layer"] = {"enabled": False}
        return PassResult(gm, False)
    pairs = find_pairs(gm)
    pairs, relu6 = _resolve_relu6(gm, ctx, pairs)
    mods = [(gm.get_submodule(p.first.target), gm.get_submodule(p.second.target), p.columns_per_channel)
            for p in pairs]
    before = [float((output_channel_ranges(a).max() / output_channel_ranges(a).clamp_min(1e-12).min()))
              for a, _, _ in mods]
    sweeps = 0
    for sweeps in range(1, MAX_SWEEPS + 1):
        worst = 0.0
        for first, second, cols in mods:
            r1 = output_channel_ranges(first)
            r2 = input_channel_ranges(second, r1.numel(), cols)
            # dead channels (range negligible next to the layer's largest, e.g. weights ~1e-30 left by
            # weight decay) carry no signal to balance: equalizing them would blow up their scale
            ok = (r1 > DEAD_CHANNEL * r1.max()) & (r2 > DEAD_CHANNEL * r2.max())
            s = torch.where(ok, torch.sqrt(r1 * r2) / r2.clamp_min(1e-300), torch.ones_like(r1))
            scale_pair(first, second, s, cols)
            worst = max(worst, float(s.log().abs().max()) if s.numel() else 0.0)
        if worst < TOL:
            break
    ctx.records["equalize_cross_layer"] = {
        "enabled": True,
        "pairs": [f"{p.first.name} -> {p.second.name}" for p in pairs],
        "sweeps": sweeps if pairs else 0,
        "relu6": relu6,
        "range_ratio_before": [round(r, 2) for r in before],
        "range_ratio_after": [round(float(output_channel_ranges(a).max() / output_channel_ranges(a).clamp_min(1e-12).min()), 2)
                              for a, _, _ in mods],
    }
    return PassResult(gm, bool(pairs) or any(d["action"].startswith("replaced") for d in relu6))
