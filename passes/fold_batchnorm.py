"""Fold BatchNorm into the preceding convolution / linear layer.

For ``y = BN(conv(x))`` with per-channel ``g = gamma / sqrt(var + eps)`` (Jacob et al. 2018,
sec. 3.2; Nagel et al. 2019 eq. 13): ``W'[c] = g[c] * W[c]`` and
``b'[c] = g[c] * (b[c] - mean[c]) + beta[c]``. A BatchNorm with no foldable producer (its
input has other users or is not a conv/linear) becomes an equivalent depthwise 1x1
convolution (rank-3/4 inputs) or a diagonal linear layer (rank-2 inputs), so it still lowers
to integer kernels.

Preserves: the float function in eval mode, up to float rounding.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.fx import GraphModule, Node

from qcompile.ops import Kind, info
from qcompile.pass_manager import PassContext, PassResult, graph_pass

__all__ = ["fold_batchnorm", "batchnorm_scale_shift"]


def batchnorm_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, h)`` with ``BN(x) = g * x + h`` per channel, in float64."""
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(var)
    g = gamma / torch.sqrt(var + bn.eps)
    return g, beta - g * mean


def _fold_into(producer: nn.Module, bn: nn.Module) -> nn.Module:
    g, h = batchnorm_scale_shift(bn)
    fused = copy.deepcopy(producer)
    w = producer.weight.detach().double()
    b = producer.bias.detach().double() if producer.bias is not None else torch.zeros_like(g)
    shape = (-1,) + (1,) * (w.dim() - 1)
    dtype = producer.weight.dtype
    fused.weight = nn.Parameter((w * g.reshape(shape)).to(dtype))
    fused.bias = nn.Parameter((g * b + h).to(dtype))
    return fused


def _standalone_replacement(bn: nn.Module, rank: int) -> nn.Module:
    g, h = batchnorm_scale_shift(bn)
    c = g.numel()
    if rank == 2:
        layer: nn.Module = nn.Linear(c, c)
        layer.weight = nn.Parameter(torch.diag(g).float())
    else:
        conv = nn.Conv1d if rank == 3 else nn.Conv2d
        layer = conv(c, c, 1, groups=c)
        layer.weight = nn.Parameter(g.reshape(c, 1, *([1] * (rank - 2))).float())
    layer.bias = nn.Parameter(h.float())
    return layer


def _set_module(gm: GraphModule, target: str, module: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


@graph_pass("BN is an affine map; folding it removes an op and a requantization")
def fold_batchnorm(gm: GraphModule, ctx: PassContext) -> PassResult:
    modified = False
    for node in list(gm.graph.nodes):
        if info(node).kind is not Kind.BATCHNORM:
            continue
        bn = gm.get_submodule(node.target)
        src: Node = node.args[0]
        foldable = (
            isinstance(src, Node) and info(src).kind in (Kind.CONV, Kind.LINEAR) and src.op == "call_module"
            and len(src.users) == 1
            and sum(n.op == "call_module" and n.target == src.target for n in gm.graph.nodes) == 1
        )
        if foldable:
            _set_module(gm, src.target, _fold_into(gm.get_submodule(src.target), bn))
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
        else:
            _set_module(gm, node.target, _standalone_replacement(bn, len(info(node).shape)))
        modified = True
    if modified:
        gm.delete_all_unused_submodules()
    return PassResult(gm, modified)
