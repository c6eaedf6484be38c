"""What every per-op emitter sees and returns: :class:`EmitContext` (program, plan, layout, unique C
identifiers, tensor pointers and strides), :class:`Emitted`, and the :func:`emit_op` dispatcher
(``functools.singledispatch`` on the IR dataclass; the rules live in ``c_ops`` and ``c_ops_gemm``)."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from qcompile.backends import ir
from qcompile.backends.c_format import comment_text, shape_text
from qcompile.backends.c_layout import Layout, strides
from qcompile.backends.memory_plan import MemoryPlan
from qcompile.errors import IRVerificationError

__all__ = ["EmitContext", "Emitted", "emit_op", "kernel_call"]

_MAX_IDENT_BASE = 40


@dataclass(frozen=True)
class Emitted:
    """What one op contributes: definitions at file scope and statements inside ``<name>_run``."""

    definitions: tuple[str, ...] = ()
    statements: tuple[str, ...] = ()


@dataclass
class EmitContext:
    """Read-only view of the program, plan and layout decisions, plus the allocator of unique C identifiers."""

    program: ir.Program
    plan: MemoryPlan
    model: str
    layout: "Layout" = None  # type: ignore[assignment]
    _used: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        # names of the run function's scope and the model's own file-scope symbols
        self._used.update({"arena", "input", "output", f"{self.model}_arena", f"{self.model}_run"})

    def ident(self, op_name: str, suffix: str) -> str:
        """A fresh file-scope identifier ``<op name>_<suffix>`` (sanitized, deduplicated)."""
        base = re.sub(r"[^A-Za-z0-9_]", "_", op_name)[:_MAX_IDENT_BASE] or "op"
        if base[0].isdigit() or base[0] == "_" or base.lower().startswith("qc_"):
            base = "op_" + base  # no leading digit, no reserved leading underscore, no clash with qc_* names
        candidate = f"{base}_{suffix}"
        n = 2
        while candidate in self._used:
            candidate = f"{base}_{suffix}_{n}"
            n += 1
        self._used.add(candidate)
        return candidate

    def ptr(self, tid: int, element_offset: int = 0) -> str:
        """The C pointer expression of tensor ``tid`` (advanced by ``element_offset`` elements)."""
        if tid in self.program.inputs:  # first: a graph input that is also the output is read here
            base, offset = "input", self.program.input_offsets()[self.program.inputs.index(tid)]
        elif tid in self.program.outputs:  # several outputs share the one buffer, in return order
            base, offset = "output", self.program.output_offsets()[self.program.outputs.index(tid)]
        elif tid in self.plan.offsets:
            base, offset = "arena", self.plan.offsets[tid]
        else:
            raise IRVerificationError(f"tensor {tid} ('{self.program.tensors[tid].name}') has no memory")
        offset += element_offset
        return f"{base} + {offset}" if base == "arena" or offset else base

    def shape(self, tid: int) -> tuple[int, ...]:
        return self.program.tensors[tid].shape

    def strides(self, tid: int) -> tuple[int, int]:
        """``(c_stride, p_stride)`` of tensor ``tid`` viewed as ``(C, H*W)`` in its chosen layout."""
        return strides(self.shape(tid), self.layout.hwc(tid))

    def scratch_ptr(self, op: ir.Op) -> str:
        return f"(uint32_t *)(void *)(arena + {self.layout.scratch[op.name]})"

    def size(self, tid: int) -> int:
        return self.program.tensors[tid].size

    def header_comment(self, op: ir.Op, note: str = "") -> str:
        """``/* name: Kind (in shapes) -> (out shape); source: node[ -- note] */``."""
        ins = ", ".join(shape_text(self.shape(t)) for t in op.inputs)
        text = f"{op.name}: {type(op).__name__} {ins} -> {shape_text(self.shape(op.output))}"
        source = self.program.source.get(op.output)
        if source:
            text += f"; source: {source}"
        if note:
            text += f" -- {note}"
        return f"/* {comment_text(text)} */"


def kernel_call(ctx: EmitContext, op: ir.Op, kernel: str, params: str, *pointers: str) -> str:
    args = ", ".join((f"&{params}", *pointers))
    return f"{ctx.header_comment(op)}\n{kernel}({args});"


@functools.singledispatch
def emit_op(op: object, ctx: EmitContext) -> Emitted:
    """Emit the C for one op. One registered function per IR op kind."""
    raise IRVerificationError(f"C emitter has no rule for {type(op).__name__}")
