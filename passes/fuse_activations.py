"""Fuse clamp activations (ReLU, ReLU6, Hardtanh, clamp) into the op that produces their input.

In integer inference a clamp after a conv/linear/add is free: it becomes the bounds of the
requantized output (Jacob et al. 2018, sec. 2.4, "activation functions ... fused into the
preceding op by clamping"). The pass records the decision as data: the producer's
``NodeInfo.fused_act`` holds the real range and the activation's ``NodeInfo.fused_into``
names the producer. No observer is placed between the two, so the producer is quantized
directly with the activation's output range.

Preserves: the graph and its float function (annotation only).
"""
from __future__ import annotations

from torch.fx import GraphModule

from qcompile.ops import Kind, clamp_range, info
from qcompile.pass_manager import PassContext, PassResult, graph_pass

__all__ = ["fuse_activations", "FUSABLE_PRODUCERS"]

FUSABLE_PRODUCERS = frozenset({Kind.CONV, Kind.LINEAR, Kind.ADD, Kind.SUB, Kind.MUL})


@graph_pass("a clamp after conv/linear/add/mul is free in the requantization")
def fuse_activations(gm: GraphModule, ctx: PassContext) -> PassResult:
    fused = []
    for node in gm.graph.nodes:
        qi = info(node)
        if qi.kind is not Kind.CLAMP or qi.fused_into is not None:
            continue
        producer = node.args[0]
        pi = info(producer)
        if pi.kind in FUSABLE_PRODUCERS and pi.fused_act is None and len(producer.users) == 1:
            pi.fused_act = clamp_range(node, gm)
            qi.fused_into = producer.name
            fused.append((producer.name, node.name))
    ctx.records["fuse_activations"] = fused
    return PassResult(gm, False)
