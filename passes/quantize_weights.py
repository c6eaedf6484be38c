"""Quantize conv/linear weights symmetric per output channel (Krishnamoorthi 2018, sec. 3.1).

``w_int[c] = clamp(round(w[c] / s[c]), -qmax, qmax)`` with ``s[c] = max|w[c]| / qmax`` and
``qmax = 2**(bits-1) - 1``. Each conv/linear module becomes a
:class:`~qcompile.nn.QuantizedWeights` that computes with the dequantized weights, so the
graph simulates the integer program.

Preserves: graph structure; changes weights by at most half a step per element.
"""
from __future__ import annotations

from torch.fx import GraphModule

from qcompile.nn import QuantizedWeights
from qcompile.ops import Kind, info
from qcompile.pass_manager import PassContext, PassResult, graph_pass

__all__ = ["quantize_weights"]


@graph_pass("weights become int8 per-channel; the graph then simulates the integer program")
def quantize_weights(gm: GraphModule, ctx: PassContext) -> PassResult:
    done = {}
    for node in gm.graph.nodes:
        if info(node).kind not in (Kind.CONV, Kind.LINEAR) or node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if isinstance(mod, QuantizedWeights) or node.target in done:
            continue
        parent, _, leaf = node.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, QuantizedWeights(mod, ctx.config.weight_bits))
        done[node.target] = ctx.config.weight_bits
    ctx.records["quantize_weights"] = done
    return PassResult(gm, bool(done))
