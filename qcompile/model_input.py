"""The ways a model reaches :func:`qcompile.compile`: an ``nn.Module`` (traced by torch.fx), an
already-traced ``torch.fx.GraphModule`` (kept as traced), or a path to an ``.onnx`` file
(converted by onnx2torch, :mod:`qcompile.onnx_input`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.fx import GraphModule

from qcompile.errors import ConfigError

__all__ = ["resolve_model"]


def _graph_module_leaves(gm: GraphModule) -> tuple[str, ...]:
    """Every module a GraphModule calls, so re-tracing it keeps its node structure as traced
    (a user's custom tracer may have kept modules opaque that torch.fx would trace into)."""
    return tuple(dict.fromkeys(str(n.target) for n in gm.graph.nodes if n.op == "call_module"))


def resolve_model(model: Any, example_inputs: Any, leaf_modules: tuple = ()
                  ) -> tuple[nn.Module, tuple[torch.Tensor, ...], tuple]:
    """``(module, example_inputs, leaf_modules)`` for :func:`qcompile.frontend.trace`.

    ``.onnx`` paths need no ``example_inputs`` (a zero tensor of the ONNX input shape, batch 1);
    other models do.
    """
    leaf_modules = tuple(leaf_modules or ())
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.suffix.lower() != ".onnx":
            raise ConfigError(f"model={str(model)!r}: a path must name an .onnx file; pass nn.Module objects directly")
        from qcompile.onnx_input import load_onnx

        given = example_inputs[0] if example_inputs else None
        gm, x = load_onnx(path, given)
        return gm, (x,), (*_graph_module_leaves(gm), *leaf_modules)
    if example_inputs is None:
        raise ConfigError("example_inputs is required for an nn.Module, e.g. (torch.randn(1, 3, 32, 32),)")
    if isinstance(model, GraphModule):
        return model, tuple(example_inputs), (*_graph_module_leaves(model), *leaf_modules)
    return model, tuple(example_inputs), leaf_modules
