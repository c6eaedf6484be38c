"""Static memory plan: one arena, an offset per intermediate tensor, sized from tensor lifetimes.

The graph input and output live in the caller's buffers (``<name>_run(input, output)``), so only
intermediate tensors take arena space. Lifetimes come from the op order; the dependency graph
(networkx) gives, for each tensor, the last op that reads it. Offsets are assigned greedily,
largest tensor first, at the lowest aligned address that does not overlap any already-placed
tensor whose lifetime intersects (the "greedy by size" strategy of TFLite Micro's planner).

An op that may run in place (``Reshape``, and the element-wise ``Lut``, ``Add``, ``Mul``,
``PRelu``, whose output element ``i`` depends only on input element ``i``) is placed *at the offset
of an input that dies at that op* and has the output's size: no extra memory, and for a
``Reshape`` no code at all. The C kernels of those ops therefore accept ``output == input``.

The lower bound reported next to the arena size is the largest total size of tensors live at
the same time; no offset assignment for this op order can be smaller.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from qcompile.backends import ir

__all__ = ["MemoryPlan", "plan_memory", "dependency_graph", "in_place_input"]

ALIGN = 8


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class MemoryPlan:
    """``offsets[tid]`` for every arena tensor; ``lifetimes[tid] = (first_op, last_op)`` (inclusive)."""

    offsets: dict[int, int]
    lifetimes: dict[int, tuple[int, int]]
    arena_size: int
    lower_bound: int
    aliases: frozenset[int]  # outputs computed in place, sharing an input's memory

    def in_arena(self, tid: int) -> bool:
        return tid in self.offsets


def dependency_graph(program: ir.Program) -> nx.DiGraph:
    """Tensors and ops as a bipartite DAG: tensor -> op (read), op -> tensor (write)."""
    g = nx.DiGraph()
    for i, op in enumerate(program.ops):
        g.add_node(("op", i))
        for tid in op.inputs:
            g.add_edge(("t", tid), ("op", i))
        g.add_edge(("op", i), ("t", op.output))
    return g


def _lifetimes(program: ir.Program) -> dict[int, tuple[int, int]]:
    g = dependency_graph(program)
    io = set(program.inputs) | set(program.outputs)
    life: dict[int, tuple[int, int]] = {}
    for i, op in enumerate(program.ops):
        tid = op.output
        if tid in io:
            continue
        readers = [n[1] for n in g.successors(("t", tid))]
        life[tid] = (i, max(readers, default=i))
    return life


def _in_place_inputs(program: ir.Program, op: ir.Op) -> tuple[int, ...]:
    """Inputs whose memory ``op`` may overwrite with its output (same element positions)."""
    out_shape = program.tensors[op.output].shape
    if isinstance(op, (ir.Reshape, ir.Lut, ir.PRelu)):
        return (op.input,)
    if isinstance(op, ir.Add):
        return (op.input1, op.input2)
    if isinstance(op, ir.Mul):  # input2 may be a per-channel vector: only same-shape inputs qualify
        return tuple(t for t in (op.input1, op.input2) if program.tensors[t].shape == out_shape)
    return ()


def in_place_input(program: ir.Program, op: ir.Op, dying) -> int | None:
    """The input among ``dying`` (tensors whose last reader is ``op``) that ``op`` may overwrite."""
    size = program.tensors[op.output].size
    for tid in _in_place_inputs(program, op):
        if tid in dying and program.tensors[tid].size == size:
            return tid
    return None


def _in_place(program: ir.Program, life: dict[int, tuple[int, int]]) -> dict[int, int]:
    """``{output: input}`` for every op that can overwrite an input dying at that op."""
    alias_of: dict[int, int] = {}
    for i, op in enumerate(program.ops):
        if op.output not in life:
            continue
        tid = in_place_input(program, op, {t for t in op.inputs if t in life and life[t][1] == i})
        if tid is not None:
            alias_of[op.output] = tid
    return alias_of


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _place(order: list[int], lifetimes: dict[int, tuple[int, int]], sizes: dict[int, int]) -> tuple[dict[int, int], int]:
    """Place tensors in ``order`` at the lowest offset free during their lifetime; returns (offsets, arena)."""
    placed: list[tuple[int, int, tuple[int, int]]] = []  # (offset, size, lifetime)
    offsets: dict[int, int] = {}
    for t in order:
        size = _align(sizes[t])
        offset = 0
        for o, sz in sorted((o, sz) for o, sz, lt in placed if _overlap(lt, lifetimes[t])):
            if offset + size <= o:
                break
            offset = max(offset, o + sz)
        placed.append((offset, size, lifetimes[t]))
        offsets[t] = offset
    return offsets, max((o + sz for o, sz, _ in placed), default=0)


def plan_memory(program: ir.Program) -> MemoryPlan:
    """Assign arena offsets to every intermediate tensor of ``program``."""
    life = _lifetimes(program)
    sizes = {tid: program.tensors[tid].size for tid in life}

    alias_of = _in_place(program, life)
    root: dict[int, int] = {}
    for tid in life:
        r = tid
        while r in alias_of:
            r = alias_of[r]
        root[tid] = r
    merged: dict[int, tuple[int, int]] = {}
    for tid, (a, b) in life.items():
        r = root[tid]
        lo, hi = merged.get(r, (a, b))
        merged[r] = (min(lo, a), max(hi, b))

    # Greedy placement is order-sensitive: try a few classic orders, keep the smallest arena.
    orders = [
        sorted(merged, key=lambda t: (-sizes[t], merged[t][0], t)),                       # largest first
        sorted(merged, key=lambda t: (merged[t][0] - merged[t][1], -sizes[t], t)),        # longest-lived first
        sorted(merged, key=lambda t: (-sizes[t] * (merged[t][1] - merged[t][0] + 1), t)),  # largest area first
        sorted(merged, key=lambda t: (merged[t][0], -sizes[t], t)),                       # by first use
    ]
    offsets, arena = min((_place(order, merged, sizes) for order in orders), key=lambda r: r[1])
    for tid in life:
        offsets[tid] = offsets[root[tid]]

    n_ops = len(program.ops)
    lower = 0
    for step in range(n_ops):
        live = sum(_align(sizes[r]) for r, lt in merged.items() if lt[0] <= step <= lt[1])
        lower = max(lower, live)
    return MemoryPlan(offsets, life, arena, lower, frozenset(alias_of))
