"""C emitter: an integer :class:`~qcompile.backends.ir.Program` plus its memory plan -> C99 sources.

The generated code is data plus calls into the hand-written kernel library
(``backends/runtime/qc_kernels.{h,c}``), in the style of emlearn and TVM's AOT executor:

* ``<name>.h``: ``int <name>_run(const int8_t *input, int8_t *output);`` and macros for the
  I/O sizes (elements), arena size (bytes) and I/O quantization (for the user; nothing reads
  them at run time).
* ``<name>.c``: weights, biases, requantization multipliers/shifts and tables as
  ``static const`` arrays (flash), one ``static const`` parameter block per op, one static
  8-byte-aligned arena sized by the memory plan, and ``<name>_run``: one commented kernel call
  per op. The graph input/output tensors are the caller's ``input``/``output`` buffers; every
  other tensor lives at ``arena + plan.offsets[tid]``. In-place reshapes (``plan.aliases``)
  emit no code, other reshapes a ``memmove``.
* ``qc_kernels.{h,c}``: the runtime, copied verbatim.
* ``<name>.mk``: a Makefile fragment (``QC_<NAME>_SRCS``, ``QC_<NAME>_INC``, ``QC_<NAME>_CFLAGS``).

Each op kind has one small emitter registered on :func:`emit_op` (``functools.singledispatch``
on the IR dataclass). Modules: ``c_format`` (C literals and arrays), ``c_context`` (EmitContext,
Emitted, the dispatcher), ``c_weights`` (weight layouts and requantization plans), ``c_ops_gemm``
(Conv2D, Dense), ``c_ops`` (every other op), ``c_layout`` (layouts, pad fusion, scratch); this
module writes the files. Output is deterministic: it depends only on the program and the plan
(no timestamps, no ``id()``, no set or dict-order dependence), so the same model gives
byte-identical files.
"""
from __future__ import annotations

import re
from pathlib import Path

from qcompile.backends import c_ops, c_ops_gemm  # noqa: F401 - register the per-op rules on emit_op
from qcompile.backends import ir
from qcompile.backends.c_context import EmitContext, Emitted, emit_op
from qcompile.backends.c_format import c_float, c_macro_int, comment_text, shape_text
from qcompile.backends.c_layout import Layout, analyze, scratch_bytes
from qcompile.backends.c_ops import add_fast_fields
from qcompile.backends.memory_plan import MemoryPlan
from qcompile.errors import ConfigError, IRVerificationError

__all__ = ["add_fast_fields", "emit_c", "emit_op", "profile_regions", "runtime_sources", "Emitted", "EmitContext", "RUNTIME_DIR",
           "RUNTIME_FILES"]

RUNTIME_DIR = Path(__file__).parent / "runtime"
RUNTIME_FILES = ("qc_kernels.h", "qc_inline.h", "qc_kernels.c", "qc_conv.c", "qc_wide.c")

_C_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def runtime_sources() -> dict[str, str]:
    """The kernel library files, ``{file name: text}``."""
    return {f: (RUNTIME_DIR / f).read_text(encoding="utf-8") for f in RUNTIME_FILES}


def _check_inputs(program: ir.Program, plan: MemoryPlan, name: str) -> None:
    if not _C_IDENT.match(name) or name == "qc_kernels":
        raise ConfigError(f"model name {name!r} must be a C identifier other than 'qc_kernels'")
    if not program.inputs or not program.outputs:
        raise IRVerificationError(
            f"the C backend needs graph inputs and outputs, program '{program.name}' "
            f"has {len(program.inputs)} and {len(program.outputs)}")
    io = {*program.inputs, *program.outputs}
    missing = [op.name for op in program.ops if op.output not in io and op.output not in plan.offsets]
    if missing:
        raise IRVerificationError(f"memory plan does not place the outputs of ops {missing}; was it planned "
                                  f"for this program?")


def _arena_comment(program: ir.Program, plan: MemoryPlan, layout: Layout) -> str:
    lines = [f" * Arena: {layout.arena_size} bytes: planned tensors {plan.arena_size} (lower bound for this op "
             f"order: {plan.lower_bound}) + {layout.arena_size - plan.arena_size} grown for kernel scratch.",
             " * Tensors marked HWC are stored channels-last; the others in PyTorch order.",
             " *   offset     size  live ops    tensor"]
    for tid in sorted(plan.offsets, key=lambda t: (plan.offsets[t], t)):
        first, last = plan.lifetimes[tid]
        alias = " (in-place reshape)" if tid in plan.aliases else ""
        t = program.tensors[tid]
        hwc = " HWC" if layout.hwc(tid) else ""
        lines.append(f" * {plan.offsets[tid]:8d} {t.size:8d}  [{first:3d},{last:3d}]  "
                     f"{comment_text(t.name)} {shape_text(t.shape)}{hwc}{alias}")
    for op_name in sorted(layout.scratch, key=lambda n: (layout.scratch[n], n)):
        size = scratch_bytes(next(op for op in program.ops if op.name == op_name), program, layout.hwc_tensors,
                             layout.fused_pads)
        lines.append(f" * {layout.scratch[op_name]:8d} {size:8d}  scratch of {comment_text(op_name)}")
    return "/*\n" + "\n".join(lines) + "\n */"


def _io_macros(program: ir.Program, macro: str, side: str) -> str:
    """One input (output): today's ``_INPUT_SIZE/_SCALE/_ZERO_POINT``. Several: ``_INPUT_SIZE`` is the whole
    buffer, and each input ``k`` (argument order; outputs: return order) gets ``_INPUT<k>_OFFSET/_SIZE/
    _SCALE/_ZERO_POINT`` (``_OUTPUT<k>_...``)."""
    tids = program.inputs if side == "input" else program.outputs
    up, title = side.upper(), side.capitalize()
    if len(tids) == 1:
        t = program.tensors[tids[0]]
        order = " in PyTorch order without batch" if side == "input" else ""
        return (f"/* {title}: int8 {shape_text(t.shape)}{order}; real = scale * (q - zero_point). */\n"
                f"#define {macro}_{up}_SIZE {t.size}\n"
                f"#define {macro}_{up}_SCALE {c_float(t.scale)}\n"
                f"#define {macro}_{up}_ZERO_POINT {c_macro_int(t.zero_point)}\n")
    order = "forward()'s argument order" if side == "input" else "forward()'s return order"
    total = program.input_size if side == "input" else program.output_size
    offsets = program.input_offsets() if side == "input" else program.output_offsets()
    lines = [f"/* {title}s: {len(tids)} int8 tensors, in {order}, back to back in the one\n"
             f"   {side} buffer of {macro}_{up}_SIZE elements; real = scale * (q - zero_point). */",
             f"#define {macro}_{up}_COUNT {len(tids)}",
             f"#define {macro}_{up}_SIZE {total}"]
    keys = program.output_structure[1] if side == "output" and program.output_structure \
        and program.output_structure[0] == "dict" else None
    for k, (tid, offset) in enumerate(zip(tids, offsets)):
        t = program.tensors[tid]
        what = f"'{comment_text(keys[k])}' " if keys else (f"'{comment_text(t.name)}' " if side == "input" else "")
        lines += [f"/* {side} {k}: {what}{shape_text(t.shape)} */",
                  f"#define {macro}_{up}{k}_OFFSET {offset}",
                  f"#define {macro}_{up}{k}_SIZE {t.size}",
                  f"#define {macro}_{up}{k}_SCALE {c_float(t.scale)}",
                  f"#define {macro}_{up}{k}_ZERO_POINT {c_macro_int(t.zero_point)}"]
    return "\n".join(lines) + "\n"


def _emit_header(program: ir.Program, plan: MemoryPlan, name: str, layout: Layout, n_regions: int) -> str:
    macro = name.upper()
    profile = (f"\n/* Profiling build: every kernel call is one instruction-count region ({n_regions} per run). */\n"
               f"#define {macro}_PROFILE_REGIONS {n_regions}\n") if n_regions else ""
    return f"""\
/* {name}.h - generated by qcompile from program '{comment_text(program.name)}'. Do not edit. */
#ifndef {macro}_H
#define {macro}_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

{_io_macros(program, macro, "input")}
{_io_macros(program, macro, "output")}
/* Bytes of the static arena inside {name}.c: {plan.arena_size} planned for tensors
   + {layout.arena_size - plan.arena_size} grown for kernel scratch (im2col). */
#define {macro}_ARENA_SIZE {layout.arena_size}
{profile}
/*
 * Run the model on one sample: input holds {macro}_INPUT_SIZE int8 values, output receives
 * {macro}_OUTPUT_SIZE. The buffers must not overlap. Not reentrant (one static arena).
 * Returns 0 on success, -1 if a pointer is NULL.
 */
int {name}_run(const int8_t *input, int8_t *output);

#ifdef __cplusplus
}}
#endif

#endif /* {macro}_H */
"""


_PROFILE_MACROS = """\
/*
 * Instruction-count regions (QEMU icount plugin markers; no-ops elsewhere). Each marker sits in
 * its own 16-byte aligned two-instruction function: QEMU 7.2 was seen to drop the plugin callback
 * of a marker inside a translation block cut at a code page end, which an aligned function
 * ending in a branch never is. Each region therefore also counts the marker function's return
 * and the call of the END function: run_c_qemu subtracts these 2 (PROFILE_OVERHEAD).
 */
#if defined(__arm__) || defined(__thumb__)
__attribute__((naked, noinline, used, aligned(16))) static void qc_region_begin(void)
{
    __asm__ volatile("mov r11, r11\\n\\tbx lr");
}
__attribute__((naked, noinline, used, aligned(16))) static void qc_region_end(void)
{
    __asm__ volatile("mov r10, r10\\n\\tbx lr");
}
#define QC_REGION_BEGIN() __asm__ volatile("bl qc_region_begin" ::: "lr", "memory")
#define QC_REGION_END() __asm__ volatile("bl qc_region_end" ::: "lr", "memory")
#else
#define QC_REGION_BEGIN() ((void)0)
#define QC_REGION_END() ((void)0)
#endif
"""

_KERNEL_CALL = re.compile(r"^(qc_\w+_s8)\(", re.M)


def _profile(statement: str, op: ir.Op, regions: list[str]) -> str:
    """Wrap every kernel call of ``statement`` in region markers; record one region name per call."""
    lines = statement.splitlines()
    calls = [i for i, line in enumerate(lines) if _KERNEL_CALL.match(line)]
    for k, i in enumerate(reversed(calls)):
        lines[i:i + 1] = ["QC_REGION_BEGIN();", lines[i], "QC_REGION_END();"]
    for k in range(len(calls)):
        regions.append(op.name if len(calls) == 1 else f"{op.name}[{k}]")
    return "\n".join(lines)


def _emit_source(program: ir.Program, plan: MemoryPlan, name: str, layout: Layout,
                 profile: bool = False) -> tuple[str, list[str]]:
    ctx = EmitContext(program, plan, name, layout)
    definitions: list[str] = []
    statements: list[str] = []
    regions: list[str] = []
    for op in program.ops:
        emitted = emit_op(op, ctx)
        definitions.extend(emitted.definitions)
        statements.extend(_profile(s, op, regions) if profile else s for s in emitted.statements)
    if len(program.inputs) == len(program.outputs) == 1 and program.outputs[0] == program.inputs[0]:
        statements.append(f"/* the graph output is the graph input */\n"
                          f"memmove(output, input, {program.output.size});")

    macro = name.upper()
    parts = [
        f"/* {name}.c - generated by qcompile from program '{comment_text(program.name)}'. Do not edit. */\n"
        f"#include \"{name}.h\"\n\n#include <string.h>\n\n#include \"qc_kernels.h\"\n#include \"qc_inline.h\"\n",
        *((_PROFILE_MACROS,) if profile else ()),
        *definitions,
    ]
    run_prologue = ""
    if layout.arena_size > 0:
        parts.append(f"{_arena_comment(program, plan, layout)}\n"
                     f"static union {{\n    int64_t align; /* 8-byte alignment in plain C99 */\n"
                     f"    int8_t bytes[{macro}_ARENA_SIZE];\n}} {name}_arena;\n")
        run_prologue = f"    int8_t *const arena = {name}_arena.bytes;\n\n"
    body = "\n".join(_indent(s) for s in statements)
    parts.append(
        f"int {name}_run(const int8_t *input, int8_t *output)\n{{\n{run_prologue}"
        f"    if (input == NULL || output == NULL) {{\n        return -1;\n    }}\n"
        f"{body}\n    return 0;\n}}\n"
    )
    return "\n".join(parts), regions


def profile_regions(program: ir.Program, plan: MemoryPlan, name: str = "model") -> list[str]:
    """Op name of every instruction-count region of ``emit_c(..., profile=True)``, in run order
    (``op[k]`` for the k-th kernel call of an op with several, e.g. Concat)."""
    return _emit_source(program, plan, name, analyze(program, plan), profile=True)[1]


def _indent(statement: str) -> str:
    return "".join(f"    {line}\n" for line in statement.splitlines())


def _emit_makefile(name: str) -> str:
    v = f"QC_{name.upper()}"
    return f"""\
# {name}.mk - generated by qcompile. Makefile fragment for model '{name}'.
# Usage:
#   include path/to/{name}.mk
#   SRCS   += $({v}_SRCS)
#   CFLAGS += $({v}_INC) $({v}_CFLAGS)
{v}_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
{v}_SRCS := $({v}_DIR)/{name}.c {" ".join(f"$({v}_DIR)/{f}" for f in RUNTIME_FILES if f.endswith(".c"))}
{v}_INC := -I$({v}_DIR)
# Suggested flags (the sources are C99 and warning-free under -Wall -Wextra -pedantic).
{v}_CFLAGS := -std=c99 -O2 -Wall -Wextra -pedantic
# Cortex-M4F example: -mthumb -mcpu=cortex-m4 -mfloat-abi=hard -mfpu=fpv4-sp-d16
"""


def emit_c(program: ir.Program, plan: MemoryPlan, name: str, *, profile: bool = False) -> dict[str, str]:
    """Generate the C sources of ``program`` with memory ``plan``; returns ``{file name: text}``.

    Files: ``<name>.h``, ``<name>.c``, the runtime (:data:`RUNTIME_FILES`), ``<name>.mk``.
    ``profile=True`` wraps every kernel call in instruction-count region markers
    (:func:`profile_regions` names them) and defines ``<NAME>_PROFILE_REGIONS``.
    ``name`` must be a C identifier; it prefixes the public symbols (``<name>_run``) and
    upper-cased the macros (``<NAME>_INPUT_SIZE``...). Raises :class:`ConfigError` for a bad
    name and :class:`IRVerificationError` for programs the backend cannot express (more than
    one graph input or output, a plan that does not match the program).
    """
    ir.verify(program)
    _check_inputs(program, plan, name)
    layout = analyze(program, plan)
    source, regions = _emit_source(program, plan, name, layout, profile)
    files = {
        f"{name}.h": _emit_header(program, plan, name, layout, len(regions) if profile else 0),
        f"{name}.c": source,
    }
    files.update(runtime_sources())
    files[f"{name}.mk"] = _emit_makefile(name)
    return files
