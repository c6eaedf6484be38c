"""Static memory plan: one arena, an offset per intermediate tensor, sized from tensor lifetimes.

The graph input and output live in the caller's buffers (``<name>_run(input, output)``), so only
intermediate tensors take arena space. Lifetimes come from the op order; the dependency graph
(networkx) gives, for each tensor, the last op that reads it. Offsets are assigned greedily,
largest tensor first, at the lowest aligned address that does not overlap any already-placed
tensor whose lifetime intersects (the "greedy by size" strategy of TFLite Micro's planner).

A ``Reshape`` whose input dies at that op is placed *at its input's offset* (in place, no copy):
the C backend then emits nothing for it.

The lower bound reported next to the arena size is the largest total size of tensors live at
the same time; no offset assignment for this op order can be smaller.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from qcompile.backends import ir

__all__ = ["MemoryPlan", "plan_memory", "dependency_graph"]

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
    aliases: frozenset[int]  # Reshape outputs sharing their input's memory

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


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def plan_memory(program: ir.Program) -> MemoryPlan:
    """Assign arena offsets to every intermediate tensor of ``program``."""
    life = _lifetimes(program)
    sizes = {tid: program.tensors[tid].size for tid in life}

    # In-place reshapes: the output takes over its input's memory when the input dies there.
    alias_of: dict[int, int] = {}
    for i, op in enumerate(program.ops):
        if isinstance(op, ir.Reshape) and op.input in life and op.output in life and life[op.input][1] == i:
            alias_of[op.output] = op.input
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

    placed: list[tuple[int, int, tuple[int, int]]] = []  # (offset, size, lifetime)
    offsets: dict[int, int] = {}
    for r in sorted(merged, key=lambda t: (-sizes[t], merged[t][0], t)):
        size = _align(sizes[r])
        conflicts = sorted((o, s) for o, s, lt in placed if _overlap(lt, merged[r]))
        offset = 0
        for o, s in conflicts:
            if offset + size <= o:
                break
            offset = max(offset, o + s)
        placed.append((offset, size, merged[r]))
        offsets[r] = offset
    for tid in life:
        offsets[tid] = offsets[root[tid]]

    arena = max((o + s for o, s, _ in placed), default=0)
    n_ops = len(program.ops)
    lower = 0
    for step in range(n_ops):
        live = sum(_align(sizes[r]) for r, lt in merged.items() if lt[0] <= step <= lt[1])
        lower = max(lower, live)
    return MemoryPlan(offsets, life, arena, lower, frozenset(alias_of))
