"""Bias correction (Nagel et al. 2019, sec. 4.2): remove the expected output shift that weight
quantization adds, ``E[y~] - E[y] = eps E[x]`` with ``eps = W~ - W`` (eq. 19), by
``b <- b - eps E[x]`` per output channel.

* empirical: ``E[eps x]`` measured per output channel on the calibration data, with the input
  ``x`` that the quantized graph produces (activations fake-quantized, earlier layers already
  corrected), one layer at a time in graph order;
* analytic (data-free): ``E[x]`` from the BN statistics of the producing layer, through its
  ReLU/clamp as a clipped normal (eq. 20-21); layers without such a producer are left alone.

``QuantConfig.bias_correction``: ``"auto"`` (empirical when there is calibration data, else
analytic), ``"empirical"``, ``"analytic"``, ``"none"``. The record says which one ran and the
largest shift removed per layer.

Preserves: the graph; changes only float biases of weight-quantized layers (the int32 biases
are computed from them at lowering).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx import GraphModule, Node

from qcompile.nn import QuantizedWeights
from qcompile.ops import Kind, clamp_range, info
from qcompile.pass_manager import PassContext, PassResult, graph_pass

__all__ = ["correct_bias", "clipped_normal_mean"]

EMPIRICAL_SAMPLES = 512
_THROUGH = (Kind.QUANT, Kind.RESHAPE, Kind.AVGPOOL, Kind.GLOBAL_AVGPOOL)


def clipped_normal_mean(mu: torch.Tensor, sigma: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``E[clamp(X, lo, hi)]`` for ``X ~ N(mu, sigma^2)`` (Nagel et al. 2019, eq. 20-21, general bounds)."""
    sigma = sigma.clamp_min(1e-12)
    n = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    a = (lo - mu) / sigma if not math.isinf(lo) else torch.full_like(mu, -math.inf)
    b = (hi - mu) / sigma if not math.isinf(hi) else torch.full_like(mu, math.inf)
    pa, pb = n.cdf(a), n.cdf(b)
    da = torch.exp(n.log_prob(a)) if not math.isinf(lo) else torch.zeros_like(mu)
    db = torch.exp(n.log_prob(b)) if not math.isinf(hi) else torch.zeros_like(mu)
    out = mu * (pb - pa) + sigma * (da - db)
    if not math.isinf(lo):
        out = out + lo * pa
    if not math.isinf(hi):
        out = out + hi * (1 - pb)
    return out


def _weight_error(q: QuantizedWeights) -> torch.Tensor:
    return q.dequantized_weight().double() - q.module.weight.detach().double()


def _apply_error(q: QuantizedWeights, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    m = q.module
    if isinstance(m, nn.Linear):
        return F.linear(x.double(), eps)
    conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
    return conv(x.double(), eps, None, m.stride, m.padding, m.dilation, m.groups)


def _set_bias(q: QuantizedWeights, shift: torch.Tensor) -> None:
    m = q.module
    with torch.no_grad():
        if m.bias is None:
            m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], dtype=m.weight.dtype))
        m.bias.copy_((m.bias.detach().double() - shift).to(m.bias.dtype))


def _layers(gm: GraphModule) -> list[Node]:
    return [n for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), QuantizedWeights)]


def _empirical(gm: GraphModule, ctx: PassContext) -> dict[str, float]:
    data = torch.cat(ctx.calib)[:EMPIRICAL_SAMPLES]
    out: dict[str, float] = {}
    with torch.no_grad():
        for node in _layers(gm):
            q = gm.get_submodule(node.target)
            seen: list[torch.Tensor] = []
            h = q.register_forward_hook(lambda mod, inp, res: seen.append(inp[0].detach()))
            try:
                gm(data)
            finally:
                h.remove()
            if node.target in out:
                continue
            y = _apply_error(q, seen[0], _weight_error(q))
            dims = [0] + list(range(2, y.dim()))
            shift = y.mean(dim=dims)
            _set_bias(q, shift)
            out[node.target] = float(shift.abs().max())
    return out


def _input_mean(gm: GraphModule, node: Node) -> tuple[torch.Tensor, int] | None:
    """Analytic ``E[x]`` per input channel of ``node`` and the columns per channel, or None."""
    cur, lo, hi = node.args[0], -math.inf, math.inf
    while isinstance(cur, Node):
        kind = info(cur).kind
        if kind is Kind.CLAMP:
            clo, chi = clamp_range(cur, gm)
            lo, hi = max(lo, clo), min(hi, chi)
        elif kind in (Kind.CONV, Kind.LINEAR) and cur.op == "call_module":
            mod = gm.get_submodule(cur.target)
            mod = mod.module if isinstance(mod, QuantizedWeights) else mod
            stats = getattr(mod, "qc_preact_stats", None)
            if stats is None:
                return None
            return clipped_normal_mean(stats[0], stats[1], lo, hi), info(cur).shape[1]
        elif kind not in _THROUGH:
            return None
        cur = cur.args[0]
    return None


def _analytic(gm: GraphModule) -> dict[str, float]:
    out: dict[str, float] = {}
    for node in _layers(gm):
        q = gm.get_submodule(node.target)
        found = _input_mean(gm, node)
        if found is None or node.target in out:
            continue
        ex, channels = found
        eps = _weight_error(q)
        m = q.module
        if isinstance(m, nn.Linear):
            cols = m.in_features // channels
            shift = eps @ ex.repeat_interleave(cols)
        else:
            groups, cig = m.groups, eps.shape[1]
            cog = eps.shape[0] // groups
            esum = eps.reshape(eps.shape[0], cig, -1).sum(dim=2)
            shift = (esum * ex.reshape(groups, cig).repeat_interleave(cog, dim=0)).sum(dim=1)
        _set_bias(q, shift)
        out[node.target] = float(shift.abs().max())
    return out


@graph_pass("weight rounding shifts each channel's mean output; put the mean back")
def correct_bias(gm: GraphModule, ctx: PassContext) -> PassResult:
    mode = ctx.config.bias_correction
    if mode == "auto":
        mode = "empirical" if ctx.calib else "analytic"
    if mode == "none":
        ctx.records["correct_bias"] = {"mode": "none"}
        return PassResult(gm, False)
    shifts = _empirical(gm, ctx) if mode == "empirical" else _analytic(gm)
    ctx.records["correct_bias"] = {"mode": mode, "layers": len(shifts),
                                   "max_shift": {k: round(v, 6) for k, v in shifts.items()}}
    return PassResult(gm, False)
