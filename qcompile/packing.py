"""Several model inputs as one: the flat buffer the C code reads, and the float graph's view of it.

A model whose forward() takes several tensors is traced as usual, then :func:`pack_inputs` gives the
graph one placeholder holding every input flattened, back to back in argument order (``(N, sum of
sample sizes)``), and an :func:`unpack_input` node per original input that slices its segment out and
restores its shape. Every pass, calibration batch and float reference then sees a one-input model;
each ``unpack_input`` node is a graph input of its own (own observer, own int8 tensor), and the
lowering places input ``k`` at its offset in the one C input buffer.
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule

__all__ = ["pack", "unpack_input", "pack_inputs"]


def pack(xs) -> torch.Tensor:
    """Tensors ``(N, *shape_k)`` -> ``(N, sum_k size_k)``."""
    return torch.cat([x.reshape(x.shape[0], -1) for x in xs], dim=1)


def unpack_input(packed: torch.Tensor, offset: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Input ``(N, *shape)`` from its segment ``[offset, offset + prod(shape))`` of the packed batch."""
    size = 1
    for d in shape:
        size *= d
    return packed[:, offset:offset + size].reshape(packed.shape[0], *shape)


def pack_inputs(gm: GraphModule, example_inputs) -> GraphModule:
    """Replace the placeholders of ``gm`` by one packed placeholder and an unpack node per input."""
    olds = [n for n in gm.graph.nodes if n.op == "placeholder"]
    with gm.graph.inserting_before(olds[0]):
        packed = gm.graph.placeholder("inputs_packed")
    packed.meta["qc_packed"] = True
    offset, cursor = 0, packed
    for node, x in zip(olds, example_inputs):  # argument order: the order of the C input buffer
        shape = tuple(int(d) for d in x.shape[1:])
        with gm.graph.inserting_after(cursor):
            un = gm.graph.call_function(unpack_input, (packed, offset, shape))
        un.meta["stack_trace"] = f"input '{node.name}'"
        node.replace_all_uses_with(un)
        gm.graph.erase_node(node)
        cursor = un
        offset += int(x[0].numel())
    gm.recompile()
    return gm
