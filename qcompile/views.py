"""Strided views: the affine index map of a data-movement node (permute, slicing, split items...).

Every PyTorch view (``permute``, ``transpose``, ``narrow``, ``select``, basic slicing ``x[:, 1:5:2]``,
the items of ``chunk``/``split``/``unbind``) reads its input at positions that are an affine
function of the output position: ``in_index[k] = start[k] + sum_d steps[d][k] * out_index[d]``.
:func:`view_map` finds that map *by running the node itself* on coordinate tensors (tensor ``k``
holds each element's index along input dim ``k``), so no spelling needs its own rule; it then
checks that the map is affine at every element (a node that is not a view is rejected).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.fx import Node
from torch.fx.node import map_arg

from qcompile.ops import Kind, info

__all__ = ["ViewMap", "view_map", "view_source", "compose_map"]


@dataclass(frozen=True)
class ViewMap:
    """``in[start + sum_d steps[d] * i_d] -> out[i]``, shapes without the batch dimension."""

    start: tuple[int, ...]                # one entry per input dim
    steps: tuple[tuple[int, ...], ...]    # one row per output dim, one column per input dim
    out_shape: tuple[int, ...]

    def is_reshape(self, in_shape: tuple[int, ...]) -> bool:
        """Whether output elements are the input's in the same row-major order (a re-view)."""
        flat = _flat_index(self, in_shape)
        return bool(np.array_equal(flat.ravel(), np.arange(int(np.prod(in_shape, dtype=np.int64)))))


def _flat_index(m: ViewMap, in_shape: tuple[int, ...]) -> np.ndarray:
    grid = np.indices(m.out_shape, dtype=np.int64) if m.out_shape else np.zeros((0,), np.int64)
    idx = []
    for k in range(len(in_shape)):
        v = np.full(m.out_shape, m.start[k], dtype=np.int64)
        for d in range(len(m.out_shape)):
            v = v + m.steps[d][k] * grid[d]
        idx.append(v)
    return np.ravel_multi_index(idx, in_shape) if in_shape else np.zeros(m.out_shape, np.int64)


def view_source(node: Node) -> Node:
    """The tensor node a MOVE node reads (through the SPLIT node for a split item)."""
    src = node.args[0]
    while isinstance(src, Node) and info(src).kind is Kind.SPLIT:
        src = src.args[0]
    return src


def _value(n: Node, source: Node, sub: torch.Tensor):
    if n is source:
        return sub
    qi = info(n)
    if qi.kind is Kind.SPLIT:
        return _apply(n, source, sub)
    if "value" in qi.notes:
        return qi.notes["value"]
    raise ValueError(f"argument '{n.name}' of a view is a tensor computed at run time, not a constant")


def _apply(node: Node, source: Node, sub: torch.Tensor, gm=None):
    args = map_arg(node.args, lambda n: _value(n, source, sub))
    kwargs = map_arg(node.kwargs, lambda n: _value(n, source, sub))
    if node.op == "call_module":
        return gm.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def compose_map(fn, in_shape: tuple[int, ...]) -> ViewMap:
    """The affine map of ``fn`` (a function of one tensor with a batch dim) on inputs ``(N, *in_shape)``.

    Raises ``ValueError`` if ``fn`` moves the batch dimension or is not affine (not a view).
    """
    full = (1, *in_shape)
    coords = []
    for k in range(len(full)):
        shape = [1] * len(full)
        shape[k] = full[k]
        coords.append(torch.arange(full[k], dtype=torch.int64).reshape(shape).expand(full))
    outs = [fn(c) for c in coords]
    if not all(isinstance(o, torch.Tensor) for o in outs):
        raise ValueError("the node does not produce a tensor")
    if outs[0].dim() == 0 or outs[0].shape[0] != 1 or bool((outs[0] != 0).any()):
        raise ValueError("it moves or indexes the batch dimension (dim 0)")
    out_shape = tuple(int(d) for d in outs[0].shape[1:])
    cs = [o[0].numpy().astype(np.int64) for o in outs[1:]]
    zero = (0,) * len(out_shape)
    start = tuple(int(c[zero]) if c.size else 0 for c in cs)
    steps = []
    for d, n in enumerate(out_shape):
        if n > 1:
            e = list(zero)
            e[d] = 1
            steps.append(tuple(int(c[tuple(e)]) - s for c, s in zip(cs, start)))
        else:
            steps.append((0,) * len(cs))
    m = ViewMap(start, tuple(steps), out_shape)
    grid = np.indices(out_shape, dtype=np.int64) if out_shape else None
    for k, c in enumerate(cs):
        expect = np.full(out_shape, start[k], dtype=np.int64)
        for d in range(len(out_shape)):
            expect = expect + steps[d][k] * grid[d]
        if c.shape != expect.shape or not np.array_equal(c, expect):
            raise ValueError("its output is not a strided view of its input (not affine in the output index)")
    return m


def _factored_fn(node: Node, gm):
    """For a MOVE that is a strided view only with its output dims factored (pixel shuffle, nearest
    upsampling by integer factors), the view to that factored shape; ``None`` for plain views."""
    from qcompile.ops import interpolation, pixel_shuffle_factor  # the catalogue reads the node's arguments

    shuffle = pixel_shuffle_factor(node, gm)
    if shuffle is not None:
        r, unshuffle = shuffle
        if unshuffle:  # (C, H*r, W*r) -> (C, r, r, H, W), then read as (C*r*r, H, W)
            def fn(t):
                n, c, h, w = t.shape
                return t.reshape(n, c, h // r, r, w // r, r).permute(0, 1, 3, 5, 2, 4)
        else:  # (C*r*r, H, W) -> (C, H, r, W, r), then read as (C, H*r, W*r)
            def fn(t):
                n, c, h, w = t.shape
                return t.reshape(n, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3)
        return fn
    interp = interpolation(node, gm)
    if interp is not None and interp.mode == "nearest":
        in_sp = tuple(info(view_source(node)).shape[2:])
        factors = [o // i for o, i in zip(info(node).shape[2:], in_sp)]

        def fn(t):  # (C, H, W) -> (C, H, fh, W, fw) with zero steps over the repeats
            index = (slice(None), slice(None)) + sum(((slice(None), None) for _ in factors), ())
            v = t[index]
            shape = [t.shape[0], t.shape[1]] + [d for i, f in zip(in_sp, factors) for d in (i, f)]
            return v.expand(*shape)
        return fn
    return None


def view_map(node: Node, gm=None) -> ViewMap:
    """The affine map of the MOVE node ``node`` (batch dimension excluded). Its ``out_shape`` is the
    node's traced shape, or for pixel shuffle / nearest upsampling a factored shape with the same
    elements in the same row-major order (the lowering reads it back with a reshape)."""
    source = view_source(node)
    in_shape = tuple(info(source).shape[1:])
    traced = tuple(info(node).shape[1:])
    fn = _factored_fn(node, gm) if gm is not None else None
    if fn is not None:
        m = compose_map(fn, in_shape)
        probe = torch.arange(int(np.prod(in_shape)), dtype=torch.float64).reshape(1, *in_shape)
        want = _apply(node, source, probe, gm)
        if tuple(want.shape[1:]) != traced or not torch.equal(fn(probe).reshape(want.shape), want):
            raise ValueError(f"it is not a row-major reading of the strided view {m.out_shape} "
                             "(nearest upsampling needs integer scale factors)")
        return m
    m = compose_map(lambda sub: _apply(node, source, sub), in_shape)
    if m.out_shape != traced:
        raise ValueError(f"re-running the view gave shape {m.out_shape}, traced {traced}")
    return m
