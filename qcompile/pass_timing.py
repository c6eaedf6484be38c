"""Per-pass wall time: :func:`timed` wraps every pass of a pipeline so a caller (the CLI's
``--verbose``) sees how long each took, in run order, as it finishes."""
from __future__ import annotations

import functools
import time
from typing import Callable

from torch.fx import GraphModule

from qcompile.pass_manager import PassContext, PassResult, Pipeline, pass_name

__all__ = ["timed"]


def timed(pipeline: Pipeline, sink: Callable[[str, float], None]) -> Pipeline:
    """A copy of ``pipeline`` whose passes call ``sink(pass_name, seconds)`` after each run.

    The wrappers keep each pass's name and *why*, so errors and ``print(pipeline)`` read the same.
    Anchor edits (``insert_after``) must be made on the original pipeline, before wrapping.
    """

    def wrap(p: Callable) -> Callable:
        @functools.wraps(p)
        def run(gm: GraphModule, ctx: PassContext) -> PassResult:
            start = time.perf_counter()
            try:
                return p(gm, ctx)
            finally:
                sink(pass_name(p), time.perf_counter() - start)

        run.pass_name = pass_name(p)
        run.why = getattr(p, "why", "")
        return run

    return Pipeline(wrap(p) for p in pipeline)
