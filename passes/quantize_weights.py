"""Quantize conv/linear weights symmetric per output channel (Krishnamoorthi 2018, sec. 3.1).

``w_int[c] = clamp(round(w[c] / s[c]), -qmax, qmax)`` with ``s[c] = max|w[c]| / qmax`` and
``qmax = 2**(bits-1) - 1``. Each conv/linear module becomes a
:class:`~qcompile.nn.QuantizedWeights` that computes with the dequantized weights, so the
graph simulates the integer program.

The int32 bias is ``round(b[c] / (s_in * s[c]))``. When a tiny input scale (a nearly dead
activation) would push it beyond ``BIAS_LIMIT``, the channel's weight scale is widened to
``|b[c]| / (s_in * BIAS_LIMIT)`` so the bias, and with it every int32 partial sum, keeps
headroom; the channel's weights then use fewer levels.

Preserves: graph structure; changes weights by at most half a step per element.
"""
from __future__ import annotations

from torch.fx import GraphModule

from qcompile.nn import QuantizedWeights
from qcompile.ops import Kind, info
from qcompile.pass_manager import PassContext, PassResult, graph_pass
from qcompile.quantization import tensor_qparams

__all__ = ["quantize_weights", "BIAS_LIMIT"]

BIAS_LIMIT = 2**29


@graph_pass("weights become int8 per-channel; the graph then simulates the integer program")
def quantize_weights(gm: GraphModule, ctx: PassContext) -> PassResult:
    done = {}
    for node in gm.graph.nodes:
        if info(node).kind not in (Kind.CONV, Kind.LINEAR) or node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if isinstance(mod, QuantizedWeights) or node.target in done:
            continue
        min_scale = None
        if mod.bias is not None:
            s_in, _ = tensor_qparams(node.args[0], gm)
            min_scale = mod.bias.detach().double().abs() / (s_in * BIAS_LIMIT)
        parent, _, leaf = node.target.rpartition(".")
        qmod = QuantizedWeights(mod, ctx.config.weight_bits, min_scale)
        setattr(gm.get_submodule(parent) if parent else gm, leaf, qmod)
        done[node.target] = ctx.config.weight_bits
    ctx.records["quantize_weights"] = done
    return PassResult(gm, bool(done))
