"""``.onnx`` files in: onnx2torch converts them, this module rewrites its ONNX-specific modules into
the torch forms qcompile's operator catalogue (:mod:`qcompile.ops`) already knows.

onnx2torch (the optional ``onnx`` extra, ``pip install "qcompile[onnx]"``) turns each ONNX node
into a ``call_module`` of a torch.nn module (Conv, Gemm -> Linear, Relu, MaxPool, ...) or of its
own ``Onnx*`` module (binary math, Concat, Reshape, Pad, ReduceMean, ...), with shape arithmetic
(``Shape -> Gather -> Concat -> Reshape``) spelled out as nodes. :func:`load_onnx` runs the
converted graph on the example input at batch sizes 1 and 2, folds everything that does not
depend on the input into constants, and rewrites the ``Onnx*`` modules that compute on the
input into ``operator.add``/``torch.cat``/``torch.reshape``/``torch.mean``/``F.pad``/... so the
usual frontend checks and passes apply. An ONNX op with no torch counterpart here stays a
module and :func:`qcompile.frontend.check_supported` names it (its ONNX node name) as unsupported.
"""
from __future__ import annotations

import contextlib
import importlib.util
import operator
import re
import sys
import types
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx import Graph, GraphModule, Interpreter, Node

from qcompile.errors import ConfigError, TraceError

__all__ = ["load_onnx", "onnx_example_input", "normalize_onnx_graph"]

_INSTALL_HINT = 'pip install "qcompile[onnx]"  (or: pip install --no-deps onnx2torch)'


@contextlib.contextmanager
def _torchvision_stub():
    """onnx2torch imports torchvision at import time for its NMS and RoiAlign converters only.
    torchvision pulls a different (CUDA) torch build, so when it is absent a stub stands in
    during the import; a model that uses those two ops fails in onnx2torch with a clear
    AttributeError naming torchvision, and qcompile could not lower them anyway."""
    if importlib.util.find_spec("torchvision") is not None:
        yield
        return
    tv = types.ModuleType("torchvision")
    tv.ops = types.ModuleType("torchvision.ops")
    tv.ops.roi_align = None
    saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.ops")}
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, tv.ops
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _onnx2torch():
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"reading .onnx files needs the 'onnx' package: {_INSTALL_HINT}") from exc
    if importlib.util.find_spec("onnx2torch") is None:
        raise ConfigError(f"reading .onnx files needs onnx2torch: {_INSTALL_HINT}")
    with _torchvision_stub():
        import onnx2torch
    return onnx2torch


def onnx_example_input(path: str | Path) -> torch.Tensor:
    """A zero tensor of the ONNX model's (single) input shape; symbolic dims (the batch) become 1."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ConfigError(f"{path}: the ONNX graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                          "qcompile compiles models with exactly one input")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
            for d in inputs[0].type.tensor_type.shape.dim]
    if not dims:
        raise ConfigError(f"{path}: input '{inputs[0].name}' has no shape; pass example_inputs explicitly")
    return torch.zeros(dims)


def load_onnx(path: str | Path, example_input: torch.Tensor | None = None) -> tuple[GraphModule, torch.Tensor]:
    """Convert ``path`` with onnx2torch and normalize it; returns ``(graph_module, example_input)``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such ONNX file: {path}")
    converter = _onnx2torch()
    x = example_input if example_input is not None else onnx_example_input(path)
    try:
        gm = converter.convert(str(path))
    except Exception as exc:  # noqa: BLE001 - every conversion failure names the file
        raise TraceError(f"{path}: onnx2torch could not convert the model: {type(exc).__name__}: {exc}") from exc
    return normalize_onnx_graph(gm, x, source=str(path)), x


class _Recorder(Interpreter):
    def __init__(self, gm: GraphModule):
        super().__init__(gm)
        self.values: dict[Node, Any] = {}

    def run_node(self, n: Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def _record(gm: GraphModule, x: torch.Tensor, source: str) -> dict[Node, Any]:
    rec = _Recorder(gm)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # onnx2torch's own deprecation warnings, not the user's business
            rec.run(x)
    except Exception as exc:  # noqa: BLE001
        raise TraceError(f"{source}: the converted model fails on an input of shape {tuple(x.shape)}: "
                         f"{type(exc).__name__}: {exc}") from exc
    return rec.values


def _ident(name: str) -> str:
    s = re.sub(r"\W", "_", name).strip("_") or "node"
    return s if not s[0].isdigit() else "n_" + s


class _Rewriter:
    """Builds the normalized graph; one method per onnx2torch module family (dispatch on class)."""

    def __init__(self, gm: GraphModule, v1: dict[Node, Any], v2: dict[Node, Any]):
        self.gm, self.v1, self.v2 = gm, v1, v2
        self.graph = Graph()
        self.root = nn.Module()
        self.env: dict[Node, Node] = {}
        self.dynamic: set[Node] = set()
        self._consts: list[str] = []

    # -- helpers ------------------------------------------------------------------------------
    def arg(self, a: Any) -> Any:
        """A new-graph node for an input-dependent value, the constant tensor otherwise."""
        if isinstance(a, Node):
            return self.env[a] if a in self.dynamic else self.v1[a]
        return a

    def scalar(self, a: Any) -> float | None:
        c = self.arg(a)
        if isinstance(c, torch.Tensor) and c.numel() == 1:
            return float(c.reshape(()))
        if isinstance(c, (int, float)):
            return float(c)
        return None

    def batch_view_shape(self, node: Node) -> tuple[int, ...] | None:
        a, b = self.v1[node], self.v2[node]
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return None
        if a.dim() == 0 or a.shape[0] != 1 or b.shape[0] != 2 or a.shape[1:] != b.shape[1:]:
            return None
        return (-1, *a.shape[1:])

    def module(self, node: Node, mod: nn.Module) -> Node:
        name = _ident(str(node.target))
        while hasattr(self.root, name):
            name += "_"
        for attr in ("kernel_size", "stride", "padding", "dilation", "output_size"):
            if isinstance(getattr(mod, attr, None), list):  # onnx2torch keeps ONNX's lists; torch.nn uses tuples
                setattr(mod, attr, tuple(getattr(mod, attr)))
        self.root.add_module(name, mod)
        args = tuple(self.materialize(a) for a in node.args)
        return self.graph.call_module(name, args)

    def materialize(self, a: Any) -> Any:
        """Like :meth:`arg`, but a constant tensor becomes a buffer read (``get_attr``)."""
        c = self.arg(a)
        if not isinstance(c, torch.Tensor):
            return c
        name = f"_const{len(self._consts)}"
        self._consts.append(name)
        self.root.register_buffer(name, c.detach().clone())
        return self.graph.get_attr(name)

    def fn(self, f: Callable, *args: Any, **kwargs: Any) -> Node:
        return self.graph.call_function(f, tuple(args), kwargs)

    # -- rewrites -----------------------------------------------------------------------------
    def rewrite(self, node: Node, mod: nn.Module) -> Node | None:
        """The torch form of one onnx2torch module node, or None to keep the module as it is."""
        cls = type(mod).__name__
        data = [a for a in node.args if isinstance(a, Node) and a in self.dynamic]
        if cls == "OnnxBinaryMathOperation":
            return self.binary(node, mod)
        if cls == "OnnxConcat" and len(data) == len(node.args):
            return self.fn(torch.cat, [self.arg(a) for a in node.args], dim=mod.axis)
        if cls.startswith(("OnnxReshape", "OnnxFlatten", "OnnxUnsqueeze", "OnnxSqueeze")) and len(data) == 1:
            shape = self.batch_view_shape(node)
            return None if shape is None else self.fn(torch.reshape, self.arg(data[0]), shape)
        if cls == "OnnxTranspose" and len(data) == 1:
            return self.fn(torch.permute, self.arg(data[0]), tuple(mod.perm))
        if cls == "OnnxReduceStaticAxes" and mod.operation_type == "ReduceMean" and mod.axes is not None:
            return self.fn(torch.mean, self.arg(data[0]), dim=tuple(mod.axes), keepdim=bool(mod.keepdims))
        if cls.startswith("OnnxGlobalAveragePool"):
            rank = self.v1[node].dim()
            return self.fn(torch.mean, self.arg(data[0]), dim=tuple(range(2, rank)), keepdim=True)
        if cls in ("OnnxPadStatic", "OnnxPadDynamic") and mod.mode == "constant" and len(data) == 1:
            return self.pad(node, mod)
        if cls == "OnnxClip" and len(data) == 1:
            lo, hi = (self.scalar(a) for a in (list(node.args[1:3]) + [None, None])[:2])
            return self.fn(torch.clamp, self.arg(data[0]), lo, hi)
        if cls in ("OnnxCast", "OnnxCopyIdentity") and len(data) == 1 and self.v1[node].is_floating_point():
            return self.env[data[0]]
        return None

    def binary(self, node: Node, mod: nn.Module) -> Node | None:
        ops = {torch.add: operator.add, torch.sub: operator.sub, torch.mul: operator.mul}
        fn = mod.math_op_function
        a, b = node.args[:2]
        da, db = (isinstance(t, Node) and t in self.dynamic for t in (a, b))
        if fn is torch.div:
            c = self.scalar(b) if da and not db else None
            return None if c is None or c == 0 else self.fn(operator.mul, self.arg(a), 1.0 / c)
        if fn not in ops:
            return None
        op = ops[fn]
        if da and db:
            return self.fn(op, self.arg(a), self.arg(b))
        c = self.scalar(b if da else a)
        if c is None:
            return None
        return self.fn(op, self.arg(a), c) if da else self.fn(op, c, self.arg(b))

    def pad(self, node: Node, mod: nn.Module) -> Node | None:
        if type(mod).__name__ == "OnnxPadStatic":
            pads, value = list(mod.pads), float(mod.constant_value or 0.0)
            torch_pads = pads  # onnx2torch stored them in F.pad order already
        else:
            onnx_pads = self.arg(node.args[1]).tolist()
            value = self.scalar(node.args[2]) if len(node.args) > 2 and node.args[2] is not None else 0.0
            half = len(onnx_pads) // 2
            torch_pads = []
            for begin, end in zip(reversed(onnx_pads[:half]), reversed(onnx_pads[half:])):
                torch_pads += [int(begin), int(end)]
        while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
            torch_pads = torch_pads[:-2]
        return self.fn(F.pad, self.arg(node.args[0]), tuple(int(p) for p in torch_pads), value=value)

    # -- driver -------------------------------------------------------------------------------
    def run(self) -> GraphModule:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.env[node] = self.graph.placeholder(_ident(node.name))
                self.dynamic.add(node)
                continue
            if node.op == "output":
                out = node.args[0]
                if not (isinstance(out, Node) and out in self.dynamic):
                    raise TraceError("the ONNX graph's output does not depend on its input (or is not one tensor)")
                self.graph.output(self.env[out])
                continue
            inputs = node.all_input_nodes
            value = self.v1[node]
            if not any(a in self.dynamic for a in inputs) or not (
                    isinstance(value, torch.Tensor) and value.is_floating_point()):
                continue  # a constant, or shape arithmetic (integer): folded into its users
            self.dynamic.add(node)
            if node.op == "call_module":
                mod = self.gm.get_submodule(node.target)
                new = self.rewrite(node, mod) if type(mod).__module__.startswith("onnx2torch") else None
                self.env[node] = new if new is not None else self.module(node, mod)
            else:
                self.env[node] = self.graph.node_copy(node, self.materialize)
        gm = GraphModule(self.root, self.graph, "OnnxModel")
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
        return gm


def normalize_onnx_graph(gm: GraphModule, x: torch.Tensor, source: str = "<onnx>") -> GraphModule:
    """Fold constants and shape arithmetic and rewrite onnx2torch's modules into torch forms.

    The result computes the same function as ``gm`` (checked on ``x``) for any batch size.
    """
    x2 = torch.cat([x, x + 0.5])
    v1, v2 = _record(gm, x, source), _record(gm, x2, source)
    out = _Rewriter(gm, v1, v2).run()
    with torch.no_grad():
        for inp in (x, x2):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                want = gm(inp)
            got = out(inp)
            if not (isinstance(got, torch.Tensor) and got.shape == want.shape
                    and torch.allclose(got, want, rtol=1e-4, atol=1e-5)):
                raise TraceError(f"{source}: normalizing the converted ONNX graph changed its output "
                                 f"(batch {len(inp)}); please report this model")
    return out
