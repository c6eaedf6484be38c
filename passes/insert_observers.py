"""Insert an :class:`~qcompile.nn.ActQuant` after every tensor that gets its own quantization.

Decisions are read from the analysis records, mechanically (annotate, then insert):

* graph input, conv/linear/add/sub/mul outputs (or, when an activation is fused, the
  activation's output), LUT nonlinearities, PReLU, pools that average, concat: own observer;
* max pool, reshape, pad: share their input's quantization (no observer);
* softmax: fixed quantization ``(1/256, -128)``, TFLite's convention.

Preserves: the float function (observers pass values through until frozen).
"""
from __future__ import annotations

from torch.fx import GraphModule, Node

from qcompile.nn import ActQuant
from qcompile.observers import make_observer
from qcompile.ops import SHARES_INPUT_QUANT, Kind, NodeInfo, info
from qcompile.pass_manager import PassContext, PassResult, graph_pass

__all__ = ["insert_observers", "needs_observer"]

SOFTMAX_QPARAMS = (1.0 / 256.0, -128)
_NO_OBSERVER = SHARES_INPUT_QUANT | {Kind.SHAPE, Kind.OUTPUT, Kind.QUANT, Kind.PACKED}


def needs_observer(node: Node) -> bool:
    qi = info(node)
    if qi.kind in _NO_OBSERVER:
        return False
    if qi.fused_act is not None:  # the fused activation carries the observer
        return False
    return not any(info(u).kind is Kind.QUANT for u in node.users)


@graph_pass("every quantized tensor needs a range from calibration data")
def insert_observers(gm: GraphModule, ctx: PassContext) -> PassResult:
    cfg = ctx.config
    modified = False
    for node in list(gm.graph.nodes):
        if not needs_observer(node):
            continue
        fixed = SOFTMAX_QPARAMS if info(node).kind is Kind.SOFTMAX else None
        observer = make_observer(cfg.activation_observer, percentile=cfg.percentile,
                                 averaging_constant=cfg.averaging_constant)
        name = f"{node.name}_aq"
        gm.add_submodule(name, ActQuant(observer, fixed))
        with gm.graph.inserting_after(node):
            aq = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(aq, delete_user_cb=lambda user: user is not aq)
        aq.meta["qc"] = NodeInfo(kind=Kind.QUANT, shape=info(node).shape)
        modified = True
    return PassResult(gm, modified)
