"""Remember what each BatchNorm says about its producer's output before BN is folded away.

After ``conv -> BN`` the pre-activation of channel ``c`` has mean ``beta[c]`` and standard
deviation ``|gamma[c]|`` on the training distribution (Nagel et al. 2019, sec. 4.2, eq. 17-18:
"we can use the batch normalization statistics"). This pass stores ``(mean, std)`` as
``qc_preact_stats`` on the producer module; :func:`fold_batchnorm` deep-copies the module, so
the attribute survives folding. Later passes that rescale or shift channels (CLE, bias
absorption, outlier splitting) keep it up to date; high-bias absorption and analytic bias
correction read it.

Preserves: the graph and its float function (annotation only).
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from qcompile.ops import Kind, info
from qcompile.pass_manager import PassContext, PassResult, graph_pass

__all__ = ["record_batchnorm_statistics"]


@graph_pass("BN statistics describe the pre-activations; keep them for data-free passes")
def record_batchnorm_statistics(gm: GraphModule, ctx: PassContext) -> PassResult:
    done = []
    for node in gm.graph.nodes:
        if info(node).kind is not Kind.BATCHNORM:
            continue
        src = node.args[0]
        if not (isinstance(src, Node) and src.op == "call_module" and info(src).kind in (Kind.CONV, Kind.LINEAR)
                and len(src.users) == 1):
            continue
        bn = gm.get_submodule(node.target)
        c = bn.running_var.numel()
        gamma = bn.weight.detach().double() if bn.affine else torch.ones(c, dtype=torch.float64)
        beta = bn.bias.detach().double() if bn.affine else torch.zeros(c, dtype=torch.float64)
        gm.get_submodule(src.target).qc_preact_stats = (beta.clone(), gamma.abs().clone())
        done.append(src.name)
    ctx.records["record_batchnorm_statistics"] = done
    return PassResult(gm, False)
