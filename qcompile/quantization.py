"""Where a tensor's quantization lives in a prepared graph."""
from __future__ import annotations

from torch.fx import GraphModule, Node

from qcompile.errors import UnsupportedOpError
from qcompile.ops import SHARES_INPUT_QUANT, Kind, info

__all__ = ["tensor_qparams", "quantizer_node"]


def quantizer_node(node: Node) -> Node:
    """The ``ActQuant`` node that fixes the quantization of the value ``node`` produces.

    Max pool, reshape and pad share their input's quantization, so the search follows them.
    """
    kind = info(node).kind
    if kind is Kind.QUANT:
        return node
    if kind in SHARES_INPUT_QUANT:
        return quantizer_node(node.args[0])
    quants = [u for u in node.users if info(u).kind is Kind.QUANT]
    if quants:
        return quants[0]
    raise UnsupportedOpError(f"value of node '{node.name}' has no quantizer")


def tensor_qparams(node: Node, gm: GraphModule) -> tuple[float, int]:
    """``(scale, zero_point)`` of the value ``node`` produces, as its consumers see it."""
    return gm.get_submodule(quantizer_node(node).target).qparams
