"""The result of ``qcompile.compile``: the integer program plus everything to run, check and ship it."""
from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.fx import GraphModule

from qcompile.backends import ir
from qcompile.backends.interpreter import interpret
from qcompile.backends.memory_plan import MemoryPlan
from qcompile.config import QuantConfig
from qcompile.errors import ConfigError, VerificationError
from qcompile.report import format_passes, format_report, layer_rows, pass_summary, summary
from qcompile.target import Target

__all__ = ["Artifact", "BUILD_MARKER"]

# Written into every build folder; save() only replaces folders that hold it (or are empty).
BUILD_MARKER = ".qcompile-build"
_MARKER_TEXT = "This folder was written by qcompile's Artifact.save(); the next save() replaces it as a whole.\n"


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _fresh_sibling(out: Path, tag: str, create: bool = True) -> Path:
    """A new hidden path next to ``out`` (same file system, so renames are atomic)."""
    while True:
        p = out.parent / f".{out.name}.{tag}-{secrets.token_hex(4)}"
        if create:
            try:
                p.mkdir()  # honours the umask, unlike tempfile.mkdtemp's 0700
            except FileExistsError:
                continue
        elif p.exists():
            continue
        return p


def _check_replaceable(out: Path) -> None:
    """``out`` may be created or replaced by save(): absent, an empty folder, or a qcompile build."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"save({str(out)!r}): it exists and is not a folder; choose another path")
    if (out / BUILD_MARKER).is_file() or not any(out.iterdir()):
        return
    if (out / "report.json").is_file() and (out / "qc_kernels.h").is_file():
        return  # a build written before the marker existed
    raise ConfigError(f"save({str(out)!r}): the folder exists and is not a qcompile build (no {BUILD_MARKER} file); "
                      "save() replaces the whole folder, so choose a new or empty folder, or delete this one")


def _flatten(value: Any, several: bool) -> tuple[list, Any]:
    """``(leaves, rebuild)`` of one output value or a tuple/list/dict of them."""
    if not several:
        return [value], lambda xs: xs[0]
    if isinstance(value, dict):
        keys = list(value)
        return [value[k] for k in keys], lambda xs: dict(zip(keys, xs))
    kind = type(value)
    return list(value), lambda xs: kind(xs)


@dataclass
class Artifact:
    """A compiled model.

    ``graph`` is the quantized torch.fx GraphModule (fake-quant simulation), ``program`` the
    lowered integer IR, ``plan`` its static memory plan.
    """

    name: str
    target: str | Target
    config: QuantConfig
    graph: GraphModule
    program: ir.Program
    plan: MemoryPlan
    sqnr: dict[int, float] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    compile_seconds: float = 0.0
    last_qemu_run: Any = None  # QemuRun of the latest verify(on="qemu"): instruction counts, sizes
    sample_input: np.ndarray | None = None  # one quantized calibration sample (default for measure())
    mcu: dict[str, Any] | None = None  # on-target measurements from measure(), shown in the report
    build: dict[str, Any] | None = None  # package versions and input hashes (qcompile.provenance.build_info)
    budget: dict[str, Any] | None = None  # flash/RAM estimate vs the Target's budget (qcompile.target.check_fits)

    # -- quantization of the model boundary -------------------------------------------------
    def quantize_input(self, x: Any) -> np.ndarray:
        """Float input (batch or single sample) -> int8 numpy, with the input tensor's scale/zero point.

        A model with several inputs takes a tuple/list of them (or the packed float buffer) and returns
        the one int8 input buffer ``(N, input_size)``: each input quantized with its own scale, flattened,
        back to back in argument order."""
        if len(self.program.inputs) > 1:
            return self._quantize_packed(x)
        t = self.program.input
        xf = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
        return np.clip(np.rint(xf / t.scale) + t.zero_point, -128, 127).astype(np.int8)

    def _quantize_packed(self, x: Any) -> np.ndarray:
        tensors = [self.program.tensors[t] for t in self.program.inputs]
        as_np = (lambda v: v.detach().cpu().double().numpy() if isinstance(v, torch.Tensor)
                 else np.asarray(v, dtype=np.float64))
        if isinstance(x, (tuple, list)):
            parts = [as_np(v) for v in x]
            if len(parts) != len(tensors):
                raise ConfigError(f"the model takes {len(tensors)} inputs, got {len(parts)}")
            single = parts[0].shape == tensors[0].shape
            parts = [p[None] if single else p for p in parts]
            flat = [p.reshape(len(p), -1) for p in parts]
        else:
            packed = as_np(x)
            single = packed.ndim == 1
            packed = packed[None] if single else packed
            flat = [packed[:, o:o + t.size] for o, t in zip(self.program.input_offsets(), tensors)]
        q = np.concatenate([np.clip(np.rint(f / t.scale) + t.zero_point, -128, 127) for f, t in zip(flat, tensors)],
                           axis=1).astype(np.int8)
        return q[0] if single else q

    def dequantize_output(self, yq: Any) -> Any:
        """int8 output(s) -> float, keeping the structure: one array, or what :meth:`run_int` returns for a
        model with several outputs (or the flat ``(N, output_size)`` buffer the C code writes)."""
        tensors = [self.program.tensors[t] for t in self.program.outputs]
        if len(tensors) > 1 and isinstance(yq, np.ndarray):
            yq = self._structure(yq)
        leaves, rebuild = _flatten(yq, len(tensors) > 1)
        return rebuild([torch.from_numpy((np.asarray(y).astype(np.float32) - t.zero_point) * np.float32(t.scale))
                        for y, t in zip(leaves, tensors)])

    def _structure(self, flat: np.ndarray) -> Any:
        """The flat output buffer ``(N, output_size)`` (or one sample) as forward()'s return structure."""
        single = flat.ndim == 1
        flat = flat[None] if single else flat
        parts = []
        for tid, offset in zip(self.program.outputs, self.program.output_offsets()):
            t = self.program.tensors[tid]
            y = flat[:, offset:offset + t.size].reshape(len(flat), *t.shape)
            parts.append(y[0] if single else y)
        kind = self.program.output_structure
        if kind is None:
            return parts[0]
        if kind[0] == "dict":
            return dict(zip(kind[1], parts))
        return tuple(parts) if kind[0] == "tuple" else list(parts)

    def _int8_batch(self, xs: torch.Tensor | np.ndarray) -> np.ndarray:
        """int8 samples as given, float samples quantized; a single sample gets a batch dim."""
        if len(self.program.inputs) > 1 and isinstance(xs, (tuple, list)) and \
                all(isinstance(v, np.ndarray) and v.dtype == np.int8 for v in xs):
            single = xs[0].shape == self.program.tensors[self.program.inputs[0]].shape
            xs = np.concatenate([(v[None] if single else v).reshape(1 if single else len(v), -1) for v in xs], axis=1)
        xq = np.asarray(xs) if isinstance(xs, np.ndarray) and xs.dtype == np.int8 else self.quantize_input(xs)
        return xq[None] if xq.shape == self.program.input_shape else xq

    # -- running ----------------------------------------------------------------------------
    def run_int(self, xq: Any) -> Any:
        """int8 input ``(N, *in_shape)`` or ``in_shape`` -> int8 output, through the reference interpreter.

        A model returning a tuple, list or dict of tensors gets the same structure of int8 arrays; one
        taking several inputs takes a tuple of int8 arrays or the packed int8 input buffer."""
        if len(self.program.inputs) > 1 and isinstance(xq, (tuple, list)):
            single = np.asarray(xq[0]).shape == self.program.tensors[self.program.inputs[0]].shape
            xq = self._int8_batch([np.asarray(v, dtype=np.int8) for v in xq])
            y = interpret(self.program, xq)
            y = y[0] if single else y
        else:
            y = interpret(self.program, np.asarray(xq))
        return y if len(self.program.outputs) == 1 else self._structure(y)

    def run(self, x: torch.Tensor, batch_size: int = 256) -> Any:
        """Float tensor in -> float tensor(s) out (the structure forward() returns), computed by the
        integer interpreter."""
        if len(self.program.inputs) > 1:  # several inputs: run on their packed float buffer
            if not isinstance(x, (tuple, list)):
                raise ConfigError(f"the model takes {len(self.program.inputs)} inputs; pass a tuple of tensors")
            first = self.program.tensors[self.program.inputs[0]]
            batched = [v if v.dim() == len(self.program.tensors[t].shape) + 1 else v.unsqueeze(0)
                       for v, t in zip(x, self.program.inputs)]
            packed = torch.cat([v.reshape(len(v), -1) for v in batched], dim=1)
            x = packed if x[0].dim() == len(first.shape) + 1 else packed[0]
        xs = x if x.dim() == len(self.program.input_shape) + 1 else x.unsqueeze(0)
        outs = [self.dequantize_output(self.run_int(self.quantize_input(b))) for b in xs.split(batch_size)]
        leaves = [_flatten(o, len(self.program.outputs) > 1)[0] for o in outs]
        _, rebuild = _flatten(outs[0], len(self.program.outputs) > 1)
        ys = [torch.cat(parts) for parts in zip(*leaves)]
        return rebuild(ys if xs is x else [y[0] for y in ys])

    @property
    def arena_size(self) -> int:
        return self.plan.arena_size

    # -- on-target measurement ---------------------------------------------------------------
    def measure(self, xs: torch.Tensor | np.ndarray | None = None, cpu: str = "cortex-m4",
                opt: str = "-O2") -> dict[str, Any]:
        """Build for ``cpu``, run on QEMU, and record exact instruction counts and footprint.

        Runs the normal firmware (bit-exactness is checked, instructions per inference) and a
        profiling build (instructions per operator). Flash is ``text + data`` of the linked
        firmware (harness included), static RAM ``data + bss`` (the arena included). The result
        is stored in ``self.mcu`` and shown by :meth:`report` and ``report.json``.
        """
        from qcompile.backends.qemu import run_c_qemu

        if xs is None:
            xs = self.sample_input if self.sample_input is not None else np.zeros((1, *self.program.input_shape),
                                                                                  np.int8)
        self.verify(xs, on="qemu", cpu=cpu, opt=opt)
        run = self.last_qemu_run
        xq = self._int8_batch(xs)
        prof = run_c_qemu(self.program, self.plan, xq[:1], name=self.name, cpu=cpu, opt=opt, profile=True)
        per_op: dict[str, int] = {}
        for region, count in prof.op_instructions[0]:
            op_name = region.split("[", 1)[0]
            per_op[op_name] = per_op.get(op_name, 0) + count
        self.mcu = {
            "cpu": cpu, "opt": opt,
            "instructions_per_inference": int(max(run.instructions)),
            "instructions_per_op": per_op,
            "flash_bytes": run.text_bytes + run.data_bytes,
            "static_ram_bytes": run.data_bytes + run.bss_bytes,
            "text_bytes": run.text_bytes, "data_bytes": run.data_bytes, "bss_bytes": run.bss_bytes,
            "note": "QEMU TCG instruction counts (exact, deterministic; not cycles); sizes include the harness",
        }
        return self.mcu

    # -- reporting --------------------------------------------------------------------------
    def report_data(self) -> dict[str, Any]:
        layers = layer_rows(self.program, self.plan, self.sqnr)
        if self.mcu is not None:
            for row in layers:
                row["instructions"] = self.mcu["instructions_per_op"].get(row["name"])
        target = self.target.as_dict() if isinstance(self.target, Target) else self.target
        data = {"summary": summary(self.program, self.plan), "layers": layers, "mcu": self.mcu,
                "target": target, "compile_seconds": round(self.compile_seconds, 3),
                "passes": pass_summary(self.records)}
        data["overflow"] = {b.name: b.as_dict() for b in self.overflow_bounds()}
        if self.build is not None:
            data["build"] = self.build
        if self.budget is not None:
            data["budget"] = self.budget
        return data

    def overflow_bounds(self) -> list:
        """Exact int32 bounds of every op's intermediates (:func:`qcompile.backends.overflow.prove_no_overflow`)."""
        from qcompile.backends.overflow import prove_no_overflow

        return prove_no_overflow(self.program)

    def _overflow_lines(self) -> str:
        lines = ["overflow (exact int32 bounds over all int8 inputs):"]
        for b in self.overflow_bounds():
            if b.op in ("Reshape", "MaxPool", "Lut", "Pad"):
                lines.append(f"  {b.name} ({b.op}): {b.status()} (no arithmetic)")
                continue
            c = f"; C {b.c_requant} requantization" if b.c_requant else ""
            extra = "".join(f"; {n}" for n in b.notes)
            lines.append(f"  {b.name} ({b.op}): {b.status()}, intermediates in [{b.acc_min:,}, {b.acc_max:,}] "
                         f"({b.headroom_bits:.1f} bits headroom; {b.detail}{c}{extra})")
        return "\n".join(lines)

    def _build_lines(self) -> str:
        """Versions, input hashes and the memory budget, for report.md."""
        lines = []
        if self.budget is not None:
            t, f, r = self.budget["target"], self.budget["flash"], self.budget["ram"]
            part = t["part"] or t["cpu"]
            lines.append(f"memory budget ({part}): flash {f['total']:,} B estimated"
                         + (f" of {t['flash']:,} B" if t["flash"] else "")
                         + f", RAM {r['total']:,} B" + (f" of {t['ram']:,} B" if t["ram"] else ""))
        if self.build is not None:
            v = self.build["versions"]
            lines.append("built with " + ", ".join(f"{k} {v[k]}" for k in sorted(v)))
            lines.append("inputs sha256: " + ", ".join(f"{k} {h[:16]}" for k, h in sorted(self.build["inputs_sha256"].items())))
        return "\n".join(lines)

    def report(self, fmt: str = "simple") -> str:
        data = self.report_data()
        passes = format_passes(self.records)
        return (format_report(data["layers"], data["summary"], fmt, data["mcu"]) + ("\n" + passes if passes else "")
                + "\n" + self._overflow_lines())

    # -- emitting ---------------------------------------------------------------------------
    def c_sources(self) -> dict[str, str]:
        from qcompile.backends.c_emitter import emit_c

        return emit_c(self.program, self.plan, self.name)

    def save(self, directory: str | Path, harness: bool = False, cpu: str = "cortex-m4") -> Path:
        """Write ``<name>.c/.h``, the runtime kernels, a Makefile fragment, report.md and report.json.

        ``harness=True`` adds a bare-metal harness for QEMU's MPS2 board of ``cpu`` (startup,
        linker script, semihosting I/O, a main that runs every input of a file) and a Makefile
        (``make run IN=in.bin OUT=out.bin``, ``make icount``).

        The folder is written atomically: everything goes to a temporary folder next to it, which
        then replaces ``directory`` by rename, so an interrupted save never leaves a half-written
        build. ``directory`` may be new, empty, or a previous qcompile build (it holds the
        :data:`BUILD_MARKER` file); anything else raises :class:`ConfigError` and is left alone.
        The same artifact gives byte-identical files (the compile time is not written).
        """
        given = Path(directory)
        out = given.resolve()
        if out == Path.cwd().resolve() or out in Path.cwd().resolve().parents:
            raise ConfigError(f"save({str(given)!r}): save() replaces the whole folder, so it cannot be the current "
                              "directory or one above it; choose a subfolder such as 'build'")
        _check_replaceable(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = _fresh_sibling(out, "tmp")
        try:
            self._write_files(tmp, harness, cpu)
            if out.exists():
                old = _fresh_sibling(out, "old", create=False)
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return given

    def _write_files(self, out: Path, harness: bool, cpu: str) -> None:
        sources = self.c_sources()
        for fname, text in sources.items():
            (out / fname).write_text(text)
        if harness:
            from qcompile.backends.qemu import write_harness_project

            write_harness_project(out, self.name, list(sources), cpu)
        build = self._build_lines()
        (out / "report.md").write_text(f"# qcompile report: {self.name}\n\n" + self.report(fmt="github") + "\n"
                                       + (f"\n{build}\n" if build else ""))
        data = self.report_data()
        data.pop("compile_seconds")  # measured, so it would make two identical builds differ
        (out / "report.json").write_text(json.dumps(_jsonable(data), indent=2, sort_keys=True) + "\n")
        from qcompile.integration import CMAKE_FILE, cmake_snippet
        from qcompile.report_html import memory_timeline, render_html

        (out / CMAKE_FILE).write_text(cmake_snippet(self.name, list(sources)))

        qemu = self.last_qemu_run.instructions if self.last_qemu_run is not None else None
        (out / "report.html").write_text(render_html(self.name, _jsonable(data), memory_timeline(self.program, self.plan),
                                                     self.report(), qemu_instructions=qemu))
        (out / BUILD_MARKER).write_text(_MARKER_TEXT)

    def verify(self, xs: torch.Tensor | np.ndarray, on: str = "host", cpu: str = "cortex-m4", **kwargs: Any) -> np.ndarray:
        """Build the emitted C, run it on ``xs`` and compare bit for bit with :meth:`run_int`.

        ``on="host"`` builds with the host C compiler; ``on="qemu"`` builds with
        arm-none-eabi-gcc for ``cpu`` (cortex-m0plus/m3, m4, m7, m33) and runs on QEMU's MPS2
        board for it. ``xs``: float samples (quantized with the input scale) or int8 samples.
        Returns the outputs of the C code; raises :class:`VerificationError` on any mismatch.
        """
        xq = self._int8_batch(xs)
        expected = interpret(self.program, xq)  # the C output buffer (several outputs: flat, back to back)
        if on == "host":
            from qcompile.backends.host_build import run_c_host

            got = run_c_host(self.program, self.plan, xq, name=self.name, **kwargs)
        elif on == "qemu":
            from qcompile.backends.qemu import run_c_qemu

            run = run_c_qemu(self.program, self.plan, xq, name=self.name, cpu=cpu, sources=self.c_sources(), **kwargs)
            self.last_qemu_run = run
            got = run.outputs
        else:
            raise ConfigError(f"verify(on={on!r}): choose 'host' or 'qemu'")
        if got.shape != expected.shape or not np.array_equal(got, expected):
            bad = np.argwhere(got.reshape(len(xq), -1) != expected.reshape(len(xq), -1))
            raise VerificationError(
                f"generated C ({on}{'/' + cpu if on == 'qemu' else ''}) disagrees with the interpreter on "
                f"{len(np.unique(bad[:, 0]))} of {len(xq)} inputs "
                f"({len(bad)} elements; first at sample {bad[0][0]}, element {bad[0][1]})"
            )
        return got
