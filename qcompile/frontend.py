"""Frontend: trace a model with torch.fx, propagate shapes, and reject what cannot be lowered.

``trace`` gives a :class:`~torch.fx.GraphModule` whose nodes carry their source line;
``propagate_shapes`` (re)computes the typed ``node.meta["qc"]`` record of every node;
``check_supported`` lists *every* unsupported node at once, before any work is done.
"""
from __future__ import annotations

import copy
import operator
import re
import traceback

import torch
import torch.nn as nn
from torch.fx import GraphModule, Interpreter, Node, Tracer

from qcompile.conv_transpose import conv_transpose_problem, rewrite_conv_transposes, zero_insert
from qcompile.errors import ConfigError, TraceError, UnsupportedOpError
from qcompile.packing import pack, pack_inputs
from qcompile.ops import Kind, NodeInfo, classify, info

__all__ = ["trace", "propagate_shapes", "output_structure", "check_supported", "check_invariants", "check_model_tensors",
           "source_location"]

MAX_DIMS = 6  # tensor rank without batch that the strided-copy kernel walks (QC_COPY_DIMS)

_INPLACE_FUNCTIONS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul}


def source_location(node: Node) -> str:
    """``file:line: code`` of the user's line that created ``node`` (best effort)."""
    stack = node.stack_trace or node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)', stack)
    user = [f for f in frames if "/torch/" not in f[0]]
    if not user:
        return "<unknown source>"
    file, line, func, code = user[-1]
    return f"{file}:{line} in {func}: {code.strip()}"


def _user_frame(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename
              and "/qcompile/" not in f.filename]
    if not frames:
        return "<unknown source>"
    f = frames[-1]
    return f"{f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()}"


def trace(model: nn.Module, example_inputs: tuple[torch.Tensor, ...],
          leaf_modules: tuple[type | str, ...] = ()) -> GraphModule:
    """Symbolically trace a deep copy of ``model`` (in eval mode) and propagate shapes.

    ``leaf_modules``: module classes or qualified names (``"backbone.block1"``) torch.fx keeps
    as one ``call_module`` node instead of tracing into, besides torch.nn's own modules.

    In-place spellings (``x += y``, ``ReLU(inplace=True)``) are rewritten to their
    out-of-place equivalents so observers inserted later never see mutated tensors.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, (tuple, list)) or not all(isinstance(x, torch.Tensor) for x in example_inputs):
        raise ConfigError("example_inputs must be a tuple of tensors, e.g. (torch.randn(1, 3, 32, 32),)")
    if not example_inputs:
        raise ConfigError("example_inputs must hold at least one tensor")
    for x in example_inputs:
        check_model_tensors(model, x)
    if len({x.shape[0] for x in example_inputs}) != 1:
        raise ConfigError(f"example_inputs have different batch sizes {[x.shape[0] for x in example_inputs]}")
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if getattr(m, "inplace", False):
            m.inplace = False
    tracer = _LeafTracer(tuple(leaf_modules))
    tracer.record_stack_traces = True
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - every tracing failure becomes a TraceError
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__} at {_user_frame(exc)}: {type(exc).__name__}: {exc}. "
            "Data-dependent control flow and Python-side tensor inspection cannot be traced; "
            "move them out of forward() or wrap them in a leaf module."
        ) from exc
    gm = GraphModule(tracer.root, graph, type(model).__name__)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in _INPLACE_FUNCTIONS:
            node.target = _INPLACE_FUNCTIONS[node.target]
        if "inplace" in node.kwargs:
            node.kwargs = {**node.kwargs, "inplace": False}
    gm.recompile()
    rewrite_conv_transposes(gm)
    if len(example_inputs) > 1:
        pack_inputs(gm, example_inputs)
        example_inputs = (pack(example_inputs),)
    propagate_shapes(gm, example_inputs)
    return gm


class _LeafTracer(Tracer):
    """A Tracer that also keeps the user's ``leaf_modules`` (classes or qualified names) opaque."""

    def __init__(self, leaf_modules: tuple[type | str, ...]):
        super().__init__()
        for leaf in leaf_modules:
            if not (isinstance(leaf, str) or (isinstance(leaf, type) and issubclass(leaf, nn.Module))):
                raise ConfigError(f"leaf_modules entry {leaf!r} must be an nn.Module subclass or a qualified module "
                                  "name such as 'backbone.block1'")
        self._leaf_types = tuple(t for t in leaf_modules if isinstance(t, type))
        self._leaf_names = frozenset(n for n in leaf_modules if isinstance(n, str))

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self._leaf_names or (self._leaf_types and isinstance(m, self._leaf_types)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_model_tensors(model: nn.Module, example_input: torch.Tensor) -> None:
    """Reject what no quantizer can represent, naming the tensor and the fix.

    The example input must be a floating-point tensor with a batch dimension; every
    floating-point parameter and buffer must be finite, and parameters of the input's dtype.
    Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are ignored.
    """
    x = example_input
    if x.dtype not in _FLOAT_DTYPES:
        hint = (" Integer data (e.g. uint8 pixels) must be converted the way the model was trained, e.g. "
                "x.float() / 255, before compile(); the generated C then takes the quantized int8 input."
                if not x.dtype.is_floating_point and not x.dtype.is_complex else "")
        raise ConfigError(f"example_inputs[0] has dtype {x.dtype}; qcompile compiles floating-point models "
                          f"({', '.join(str(d) for d in _FLOAT_DTYPES)}).{hint}")
    if x.dim() < 2:
        raise ConfigError(f"example_inputs[0] has shape {tuple(x.shape)}; it needs a batch dimension first, "
                          f"e.g. x.unsqueeze(0) -> {(1, *x.shape)}")
    if not torch.isfinite(x).all():
        raise ConfigError("example_inputs[0] contains NaN or Inf")
    named = [("parameter", n, t) for n, t in model.named_parameters()] + \
            [("buffer", n, t) for n, t in model.named_buffers()]
    for what, pname, t in named:
        if t is None or not (t.dtype.is_floating_point or t.dtype.is_complex):
            continue
        if t.dtype not in _FLOAT_DTYPES:
            raise ConfigError(f"{what} '{pname}' has dtype {t.dtype}; convert the model with model.float()")
        bad = ~torch.isfinite(t.detach())
        if bool(bad.any()):
            first = tuple(int(i) for i in bad.nonzero()[0].tolist())
            raise ConfigError(
                f"{what} '{pname}' {tuple(t.shape)} holds {int(bad.sum())} NaN/Inf value(s), first at index {first}; "
                "fix the checkpoint (e.g. a diverged training run) before compiling")
        if what == "parameter" and t.dtype != x.dtype:  # buffers may legitimately keep another precision
            raise ConfigError(f"{what} '{pname}' is {t.dtype} but example_inputs[0] is {x.dtype}; use one dtype, "
                              f"e.g. model.to({x.dtype}) or x.to({t.dtype})")


class _ShapeRecorder(Interpreter):
    def run_node(self, n: Node):
        try:
            result = super().run_node(n)
        except Exception as exc:  # noqa: BLE001 - name the node that failed
            if n.op in ("placeholder", "output"):
                raise
            target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
            if n.op == "call_module":
                target = f"{target} ({type(self.module.get_submodule(n.target)).__name__})"
            args = [tuple(a.shape) for a in self.fetch_args_kwargs_from_env(n)[0] if isinstance(a, torch.Tensor)]
            raise TraceError(
                f"node '{n.name}' ({target}) at {source_location(n)} failed on input shape(s) {args}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0]}. Check that example_inputs[0] has the shape "
                "(batch first) and dtype the model expects"
            ) from exc
        old = n.meta.get("qc")
        kind = classify(n, self.module)
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else None
        if old is None:
            n.meta["qc"] = old = NodeInfo(kind=kind, shape=shape)
        else:
            old.kind, old.shape = kind, shape
        if _is_constant(result):  # x.size(1), c // 2: the views and reshapes that use them read the value
            old.notes["value"] = result
        return result


def _is_constant(v) -> bool:
    if isinstance(v, (tuple, list)):
        return all(_is_constant(x) for x in v)
    return isinstance(v, (int, float, bool)) or v is None


def propagate_shapes(gm: GraphModule, example_inputs: tuple[torch.Tensor, ...]) -> GraphModule:
    """Run ``gm`` on ``example_inputs`` and record each node's kind and shape in ``node.meta["qc"]``.

    Existing records keep their other fields (fusion decisions); only kind and shape refresh.
    """
    with torch.no_grad():
        try:
            _ShapeRecorder(gm).run(*example_inputs)
        except TraceError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise TraceError(f"running the traced graph on example_inputs failed: {type(exc).__name__}: {exc}") from exc
    return gm


def _broadcast_problem(node: Node, operands) -> str | None:
    """Why the operands of an element-wise ``node`` do not broadcast the way the IR lowers them, or None:
    PyTorch's right-aligned broadcasting, the batch dim only from activations (a constant has none or 1)."""
    out = info(node).shape
    try:
        full = tuple(torch.broadcast_shapes(*(info(x).shape for x in operands)))
    except RuntimeError as exc:
        return f"operands {[info(x).shape for x in operands]} do not broadcast: {exc}"
    if full != out:
        return f"broadcast shape {full} differs from the traced {out}"
    for x in operands:
        sx = info(x).shape
        if info(x).kind is Kind.CONST:
            stripped = list(sx)
            while len(stripped) > 1 and stripped[0] == 1:
                stripped.pop(0)
            if len(stripped) >= len(out):
                return f"constant operand '{x.name}' {tuple(sx)} spans the batch dim"
        elif len(sx) != len(out) or sx[0] != out[0]:
            return f"operand '{x.name}' {tuple(sx)} does not keep the batch dim of {tuple(out)}"
    if len(out) - 1 > MAX_DIMS:
        return f"a tensor of rank {len(out) - 1} without batch (at most {MAX_DIMS})"
    return None


def output_structure(out) -> tuple[tuple | None, list[Node]]:
    """``(structure, tensors)`` of what forward() returns: one tensor (structure ``None``), or a tuple,
    list or dict of tensors (``("tuple"|"list", n)`` / ``("dict", keys)``) with the tensors in return order."""
    if isinstance(out, Node):
        return None, [out]
    if isinstance(out, (tuple, list)) and out and all(isinstance(x, Node) for x in out):
        return (type(out).__name__, len(out)), list(out)
    if isinstance(out, dict) and out and all(isinstance(x, Node) for x in out.values()):
        return ("dict", tuple(out)), list(out.values())
    raise ValueError("the model must return a tensor, or a flat tuple, list or dict of tensors")


def _why_unsupported(node: Node, gm: GraphModule) -> str | None:  # noqa: C901 - one case per kind
    """Reason ``node`` cannot be lowered, or ``None``."""
    qi: NodeInfo = info(node)
    kind, shape = qi.kind, qi.shape
    if kind is None:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), (nn.ConvTranspose1d, nn.ConvTranspose2d)):
            return conv_transpose_problem(gm.get_submodule(node.target), len(node.args) + len(node.kwargs)) \
                or "ConvTranspose3d"
        return "no lowering for this operator"
    mod = gm.get_submodule(node.target) if node.op == "call_module" else None
    in_shape = info(node.args[0]).shape if node.args and isinstance(node.args[0], Node) else None
    if kind is Kind.SPLIT:
        if in_shape is None:
            return "split of a non-tensor"
        dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
        if node.target in ("unbind", torch.unbind):
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if not isinstance(dim, int) or dim % len(in_shape) == 0:
            return f"split along dim {dim}: not along the batch dim (0)"
        return None
    if kind is Kind.SHAPE:
        return "a tensor-valued indexing/slicing op is not supported" if shape is not None else None
    if kind is Kind.PACKED:
        return None
    if kind is Kind.INPUT:
        return None if shape is not None and len(shape) in (2, 3, 4) else f"input of rank {len(shape or ())}"
    if kind is Kind.OUTPUT:
        try:
            _, leaves = output_structure(node.args[0])
        except ValueError as exc:
            return str(exc)
        if any(info(x).shape is None for x in leaves):
            return "the model returns a value that is not a tensor"
        return None
    if shape is None:
        return "does not produce a tensor"
    if kind is Kind.CONV:
        if mod.padding_mode != "zeros":
            return f"padding_mode={mod.padding_mode!r} (only 'zeros')"
    elif kind is Kind.LINEAR:
        if in_shape is None or len(in_shape) != 2:
            return f"Linear on a rank-{len(in_shape or ())} input (flatten to (N, features) first)"
    elif kind is Kind.MAXPOOL:
        p = mod if mod is not None else None
        dil = p.dilation if p is not None else node.kwargs.get("dilation", 1)
        if dil not in (1, (1,), (1, 1)) or (p is not None and p.return_indices) or node.kwargs.get("return_indices"):
            return "max pooling with dilation or return_indices"
        if p is None and len(node.args) > 3:
            return "max pooling given padding/dilation positionally; use keywords"
    elif kind is Kind.AVGPOOL:
        if mod is None and len(node.args) > 3:
            return "average pooling given padding/ceil_mode positionally; use keywords"
    elif kind in (Kind.GLOBAL_AVGPOOL, Kind.GLOBAL_MAXPOOL):
        adaptive = node.op == "call_module" or node.target not in (torch.mean, "mean", torch.amax, "amax")
        if adaptive:
            if (mod is not None and getattr(mod, "return_indices", False)) or node.kwargs.get("return_indices"):
                return "adaptive max pooling with return_indices"
            if len(shape) != len(in_shape) or any(i % o for i, o in zip(in_shape[2:], shape[2:])):
                return f"adaptive pooling from {tuple(in_shape[2:])} to {tuple(shape[2:])}: only to sizes dividing the input"
        else:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
            rank = len(in_shape)
            if sorted(d % rank for d in dims) != list(range(2, rank)):
                return f"{node.target if isinstance(node.target, str) else node.target.__name__} over dims {dims}: " \
                       f"only over all spatial dims (2..{rank - 1})"
    elif kind in (Kind.ADD, Kind.SUB, Kind.MUL, Kind.MINMAX):
        a, b = (list(node.args) + [node.kwargs.get("other")])[:2]
        if not (isinstance(a, Node) and isinstance(b, Node)) or info(a).shape is None or info(b).shape is None:
            what = {Kind.MINMAX: "max/min over a dim (only of two tensors)"}.get(
                kind, "an operand computed at run time that is not a tensor (e.g. .item()); use a constant")
            return what
        if "alpha" in node.kwargs:
            return "add/sub with alpha="
        return _broadcast_problem(node, (a, b))
    elif kind is Kind.CONST:
        users = {info(u).kind for u in node.users}
        if shape is None:
            return "an attribute that is not a tensor"
        if not users <= {Kind.ADD, Kind.SUB, Kind.MUL, Kind.MINMAX}:
            return "a parameter/buffer used directly by an op other than add/sub/mul/maximum/minimum"
    elif kind is Kind.CAT:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(dim, int) or dim % len(shape) == 0:
            return f"{getattr(node.target, '__name__', node.target)} along dim {dim}: not along the batch dim (0)"
        if not all(isinstance(x, Node) and info(x).shape is not None for x in node.args[0]):
            return "cat/stack of values that are not tensors"
        if len(shape) - 1 > MAX_DIMS:
            return f"a tensor of rank {len(shape) - 1} without batch (at most {MAX_DIMS})"
    elif kind is Kind.MOVE:
        from qcompile.views import view_map  # views evaluates nodes through this module's records

        try:
            m = view_map(node, gm)
        except Exception as exc:  # noqa: BLE001 - the reason is the message
            return f"not a strided view of its input: {exc}"
        if len(m.out_shape) > MAX_DIMS or len(info(node.args[0]).shape or ()) - 1 > MAX_DIMS:
            return f"a view of rank above {MAX_DIMS} (without batch)"
    elif kind is Kind.RESHAPE:
        if shape[0] != in_shape[0]:
            return "reshape that changes the batch dimension"
    elif kind is Kind.PAD and node.target is zero_insert:
        pass  # a rewritten transposed convolution's zero insertion
    elif kind is Kind.PAD:
        if mod is not None:
            value = getattr(mod, "value", 0.0)
        else:
            value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0.0) or 0.0
            mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
            if mode != "constant":
                return f"padding mode {mode!r}"
            pad = node.kwargs.get("pad", node.args[1] if len(node.args) > 1 else ())
            pad = [info(p).notes.get("value") if isinstance(p, Node) else p for p in pad]
            if len(pad) > 4 or not all(isinstance(p, int) and p >= 0 for p in pad):
                return f"F.pad with {pad}: only non-negative padding of the two last dims"
        if value != 0.0 or len(shape) not in (3, 4):
            return "only zero padding of the spatial dims"
    elif kind is Kind.RESIZE:
        from qcompile.ops import interpolation

        it = interpolation(node, gm)
        linear = {4: "bilinear", 3: "linear"}.get(len(shape))
        if it.mode != linear or it.antialias:
            return f"interpolation mode {it.mode!r}{' with antialias' if it.antialias else ''} on a rank-{len(shape)} " \
                   f"tensor (nearest, or {linear or 'bilinear'} without antialias)"
        if it.size is None:
            factors = it.scale_factor if isinstance(it.scale_factor, (tuple, list)) else [it.scale_factor]
            if any(float(f) != int(f) for f in factors):
                return f"{it.mode} interpolation by scale_factor={it.scale_factor}: only integer factors (or size=)"
    elif kind is Kind.SOFTMAX:
        dim = mod.dim if mod is not None else node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        if not isinstance(dim, int) or dim % len(shape) == 0:
            return "softmax needs dim= (not the batch dim 0)"
    elif kind is Kind.CLAMP:
        if node.op != "call_module":
            extra = list(node.args[1:]) + [v for k, v in node.kwargs.items() if k != "inplace"]
            if any(isinstance(a, Node) for a in extra):
                return "clamp bounds must be numbers"
    elif kind is Kind.PRELU:
        weight = mod.weight if mod is not None else None
        if weight is None:
            return "functional prelu (use nn.PReLU)"
        if weight.numel() not in (1, shape[1]):
            return "PReLU slope count must be 1 or the channel count"
    elif kind is Kind.BATCHNORM:
        if not mod.track_running_stats or mod.running_mean is None:
            return "BatchNorm without running statistics"
    return None


def check_supported(gm: GraphModule) -> GraphModule:
    """Raise :class:`UnsupportedOpError` listing every node qcompile cannot lower."""
    bad: list[tuple[str, str, str, str]] = []
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node in gm.graph.nodes:
        try:
            reason = _why_unsupported(node, gm)
        except Exception as exc:  # noqa: BLE001 - an odd node must still be reported, not crash the check
            reason = f"cannot be analyzed ({type(exc).__name__}: {exc})"
        if reason is not None:
            target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
            if node.op == "call_module":
                target = f"{target} ({type(gm.get_submodule(node.target)).__name__})"
            bad.append((node.name, str(target), source_location(node), reason))
    if len(inputs) != 1:
        bad.append(("<graph>", "placeholder", "<forward signature>",
                    f"{len(inputs)} placeholders (several inputs are packed into one by trace())"))
    if bad:
        lines = [f"  - node '{n}' ({t}) at {loc}: {why}" for n, t, loc, why in bad]
        raise UnsupportedOpError(
            f"{len(bad)} unsupported node(s) in {type(gm).__name__}:\n" + "\n".join(lines),
            nodes=[(n, t, loc) for n, t, loc, _ in bad],
        )
    return gm


def check_invariants(gm: GraphModule) -> None:
    """qcompile's graph invariants, checked after every pass."""
    for node in gm.graph.nodes:
        qi = node.meta.get("qc")
        if qi is None:
            raise AssertionError(f"node '{node.name}' has no qc analysis record")
        if qi.kind is None:
            raise AssertionError(f"node '{node.name}' ({node.target}) has no supported kind")
        if qi.kind not in (Kind.SHAPE, Kind.OUTPUT, Kind.SPLIT) and qi.shape is None:
            raise AssertionError(f"node '{node.name}' produces no tensor")
