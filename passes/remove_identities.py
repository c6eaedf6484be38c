"""Remove nodes that compute the identity at inference: dropout, ``nn.Identity``.

(``.contiguous()`` stays: a later ``.view()`` of a permuted tensor needs it; it lowers to a free reshape.)

Preserves: the float function of the model in eval mode, exactly.
"""
from __future__ import annotations

from torch.fx import GraphModule

from qcompile.ops import Kind, info
from qcompile.pass_manager import PassContext, PassResult, graph_pass

__all__ = ["remove_identities"]


@graph_pass("dropout / Identity compute nothing in eval mode")
def remove_identities(gm: GraphModule, ctx: PassContext) -> PassResult:
    modified = False
    for node in list(gm.graph.nodes):
        if info(node).kind is Kind.IDENTITY:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            modified = True
    if modified:
        gm.delete_all_unused_submodules()
    return PassResult(gm, modified)
