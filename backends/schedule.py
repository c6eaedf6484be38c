"""Operator order for branching graphs that lowers the peak of simultaneously live memory.

Any topological order of the ops computes the same result; the order decides which tensors are
alive together. :func:`min_peak_order` searches the orders exactly: dynamic programming over the
sets of already-run ops (the down-sets of the op dependency graph, built with networkx), keeping
for each set the order with the smallest peak so far. The live bytes of a set do not depend on
how it was reached, so this is exact; the number of sets grows with the graph's branching
width, and past ``max_states`` per step the search falls back to a greedy list scheduler.
:func:`schedule_for_memory` keeps the new order only if the memory planner then needs a smaller
arena than for the traced order.
"""
from __future__ import annotations

import networkx as nx

from qcompile.backends import ir
from qcompile.backends.memory_plan import in_place_input, plan_memory

__all__ = ["op_graph", "min_peak_order", "greedy_memory_order", "schedule_for_memory"]


def op_graph(program: ir.Program) -> nx.DiGraph:
    """Op indices as nodes; an edge ``i -> j`` when op ``j`` reads the output of op ``i``."""
    producer = {op.output: i for i, op in enumerate(program.ops)}
    g = nx.DiGraph()
    g.add_nodes_from(range(len(program.ops)))
    for j, op in enumerate(program.ops):
        for tid in op.inputs:
            if tid in producer:
                g.add_edge(producer[tid], j)
    return g


class _Cost:
    """Live-byte accounting of partial schedules (graph inputs/outputs live outside the arena)."""

    def __init__(self, program: ir.Program):
        self.program = program
        io = set(program.inputs) | set(program.outputs)
        self.size = {op.output: (0 if op.output in io else program.tensors[op.output].size) for op in program.ops}
        self.readers: dict[int, frozenset[int]] = {}
        for j, op in enumerate(program.ops):
            for tid in op.inputs:
                self.readers[tid] = self.readers.get(tid, frozenset()) | {j}

    def dying(self, j: int, done: frozenset[int]) -> list[int]:
        """Tensors whose last reader is op ``j`` once ``done`` ran."""
        return [t for t in set(self.program.ops[j].inputs) if t in self.size and self.readers[t] - done == {j}]

    def step(self, live: int, j: int, done: frozenset[int]) -> tuple[int, int]:
        """``(bytes while op j runs, live bytes after it)`` starting from ``live`` with ``done`` run."""
        op = self.program.ops[j]
        out = self.size[op.output]
        dying = self.dying(j, done)
        shared = in_place_input(self.program, op, dying)
        during = live + (0 if shared is not None and self.size[shared] == out else out)
        after = live + out - sum(self.size[t] for t in dying)
        return during, after


def min_peak_order(program: ir.Program, max_states: int = 4096) -> list[int] | None:
    """The op order with the smallest peak of live bytes, or ``None`` if the search is too wide."""
    g = op_graph(program)
    cost = _Cost(program)
    preds = {j: frozenset(g.predecessors(j)) for j in g}
    # state: done set -> (peak so far, live now, order)
    layer: dict[frozenset[int], tuple[int, int, tuple[int, ...]]] = {frozenset(): (0, 0, ())}
    for _ in range(len(program.ops)):
        nxt: dict[frozenset[int], tuple[int, int, tuple[int, ...]]] = {}
        for done, (peak, live, order) in layer.items():
            for j in g:
                if j in done or not preds[j] <= done:
                    continue
                during, after = cost.step(live, j, done)
                key = done | {j}
                cand = (max(peak, during), after, order + (j,))
                if key not in nxt or cand[0] < nxt[key][0]:
                    nxt[key] = cand
        if len(nxt) > max_states:
            return None
        layer = nxt
    ((_, (_, _, order)),) = layer.items()
    return list(order)


def greedy_memory_order(program: ir.Program) -> list[int]:
    """A topological order that runs, among ready ops, the one growing live memory least."""
    g = op_graph(program)
    cost = _Cost(program)
    indegree = {n: g.in_degree(n) for n in g}
    ready = {n for n, d in indegree.items() if d == 0}
    done: frozenset[int] = frozenset()
    order: list[int] = []
    live = 0
    while ready:
        j = min(ready, key=lambda n: (cost.step(live, n, done)[1], n))
        live = cost.step(live, j, done)[1]
        ready.remove(j)
        done = done | {j}
        order.append(j)
        for k in g.successors(j):
            indegree[k] -= 1
            if indegree[k] == 0:
                ready.add(k)
    return order


def schedule_for_memory(program: ir.Program) -> ir.Program:
    """``program`` with its ops in the order (traced or searched) that plans the smaller arena."""
    order = min_peak_order(program) or greedy_memory_order(program)
    if order == list(range(len(program.ops))):
        return program
    candidate = ir.Program(program.name, program.tensors, [program.ops[i] for i in order], program.inputs,
                           program.outputs, program.source, program.output_structure)
    if plan_memory(candidate).arena_size < plan_memory(program).arena_size:
        return ir.verify(candidate)
    return program
