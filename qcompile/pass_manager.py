"""Passes, the pipeline that runs them, and the checks between them.

A pass is any callable ``(GraphModule, PassContext) -> PassResult``. The :func:`graph_pass`
decorator only attaches a name and a one-line *why*; nothing is registered globally. A
:class:`Pipeline` is an editable list: users anchor edits on pass objects
(``pipeline.insert_after(fold_batchnorm, my_pass)``).

After every pass the manager lints the graph, re-runs shape propagation when the pass says
it modified the graph, and checks qcompile's invariants; any exception is re-raised as
:class:`~qcompile.errors.PassError` naming the pass and the passes that ran before it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol

import torch
from torch.fx import GraphModule

from qcompile.config import QuantConfig
from qcompile.errors import PassError, QCompileError

__all__ = ["PassResult", "PassContext", "Pass", "graph_pass", "Pipeline", "pass_name"]


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) graph module and whether anything changed."""

    gm: GraphModule
    modified: bool


@dataclass
class PassContext:
    """Everything a pass may read besides the graph. Passes record what they did in ``records``."""

    config: QuantConfig
    example_inputs: tuple[torch.Tensor, ...]
    calib: list[torch.Tensor] = field(default_factory=list)
    records: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


class Pass(Protocol):
    def __call__(self, gm: GraphModule, ctx: PassContext) -> PassResult: ...


def graph_pass(why: str, name: str | None = None) -> Callable[[Callable], Callable]:
    """Attach a name and a one-line reason to a pass function (metadata only)."""

    def wrap(fn: Callable) -> Callable:
        fn.pass_name = name or fn.__name__
        fn.why = why
        return fn

    return wrap


def pass_name(p: Callable) -> str:
    return getattr(p, "pass_name", getattr(p, "__name__", type(p).__name__))


class Pipeline:
    """An ordered, editable list of passes."""

    def __init__(self, passes: Iterable[Callable]):
        self._passes: list[Callable] = list(passes)

    def __iter__(self) -> Iterator[Callable]:
        return iter(self._passes)

    def __len__(self) -> int:
        return len(self._passes)

    def __getitem__(self, i: int) -> Callable:
        return self._passes[i]

    def __repr__(self) -> str:
        lines = [f"  {i:2d}. {pass_name(p):28s} {getattr(p, 'why', '')}" for i, p in enumerate(self._passes)]
        return "Pipeline(\n" + "\n".join(lines) + "\n)"

    def _index(self, anchor: Callable) -> int:
        for i, p in enumerate(self._passes):
            if p is anchor:
                return i
        raise QCompileError(f"pass {pass_name(anchor)!r} is not in this pipeline: {[pass_name(p) for p in self]}")

    def insert_after(self, anchor: Callable, new: Callable) -> "Pipeline":
        self._passes.insert(self._index(anchor) + 1, new)
        return self

    def insert_before(self, anchor: Callable, new: Callable) -> "Pipeline":
        self._passes.insert(self._index(anchor), new)
        return self

    def replace(self, anchor: Callable, new: Callable) -> "Pipeline":
        self._passes[self._index(anchor)] = new
        return self

    def remove(self, anchor: Callable) -> "Pipeline":
        del self._passes[self._index(anchor)]
        return self

    def names(self) -> list[str]:
        return [pass_name(p) for p in self._passes]

    def run(self, gm: GraphModule, ctx: PassContext) -> GraphModule:
        """Run every pass in order, checking the graph after each."""
        from qcompile.frontend import check_invariants, propagate_shapes

        done: list[str] = []
        for p in self._passes:
            name = pass_name(p)
            try:
                result = p(gm, ctx)
                if not isinstance(result, PassResult):
                    raise TypeError(f"a pass must return PassResult, got {type(result).__name__}")
                gm = result.gm
                gm.graph.lint()
                if result.modified:
                    gm.recompile()
                    propagate_shapes(gm, ctx.example_inputs)
                check_invariants(gm)
            except PassError:
                raise
            except QCompileError as exc:  # keep the error's type, add where it happened
                raise type(exc)(f"in pass '{name}' (after passes: {', '.join(done) or 'none'}): {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - re-raised with the pass named
                before = ", ".join(done) or "none"
                raise PassError(f"in pass '{name}' (after passes: {before}): {type(exc).__name__}: {exc}") from exc
            done.append(name)
        return gm
