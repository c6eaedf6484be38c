"""Generated documentation: the supported-operator table (from :mod:`qcompile.ops`), the pass list
(from :func:`qcompile.default_pipeline` and each pass module's docstring) and the benchmark tables
(from ``benchmarks/results/*.json``, with the commands recorded there).

``python -m qcompile.docs_gen`` rewrites ``docs/ops.md``, ``docs/passes.md`` and
``docs/benchmarks.md``; ``--check`` exits 1 if a committed file differs from what the code gives.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["supported_ops", "ops_table_markdown", "passes_markdown", "benchmarks_markdown", "generate", "main"]

# One line per Kind on what the lowering accepts (the detailed checks are in
# qcompile.frontend.check_supported); the kinds and spellings come from qcompile.ops itself, so a new
# Kind appears in the table by itself, with an empty note until one is added here.
KIND_NOTES: dict[str, str] = {
    "conv": "stride, padding (incl. 'same'), dilation, groups (incl. depthwise); padding_mode='zeros'; 2..8-bit weights",
    "linear": "input (N, features): flatten first; 2..8-bit weights",
    "batchnorm": "folded into the producing conv/linear; otherwise a depthwise 1x1 conv (needs running stats)",
    "clamp": "relu/relu6/hardtanh/clamp with number bounds; fused into the producer's requantization",
    "lut": "element-wise function or `x * c`/`x + c` with a number: one 256-entry int8 table",
    "prelu": "module form, 1 or C slopes",
    "maxpool": "no dilation or return_indices; ceil_mode as in PyTorch",
    "avgpool": "ceil_mode, count_include_pad and divisor_override as in PyTorch (padding given by keyword)",
    "global_avgpool": "adaptive pooling to sizes dividing the input, or mean over all spatial dims",
    "global_maxpool": "adaptive max pooling to sizes dividing the input (no return_indices), or amax over all spatial dims",
    "add": "two tensors (or a tensor and a parameter/buffer) with PyTorch broadcasting over non-batch dims; no alpha",
    "sub": "as add",
    "mul": "as add; per-channel (N, C, 1, 1) operands (squeeze-excite) stay native",
    "minmax": "torch.maximum/minimum (torch.max/min of two tensors) with broadcasting; both inputs rescaled to the output grid",
    "const": "a parameter or buffer read in forward() (e.g. `self.scale`), used by add/sub/mul/maximum/minimum",
    "cat": "cat/stack along any dim but the batch dim",
    "reshape": "re-views only (no data movement); batch dim unchanged",
    "move": "any strided view of the input (permute, transpose, slicing, select, narrow): one int8 copy",
    "split": "split/chunk/unbind along any dim but the batch dim",
    "pad": "zero padding of spatial dims",
    "resize": "bilinear/linear interpolation with PyTorch's source coordinates (nearest is a strided copy: move)",
    "identity": "removed (eval mode)",
    "softmax": "over any non-batch dim (the kernel runs over the last; strided copies move other dims there)",
    "shape": "shape arithmetic (x.size(), x.shape[0]) only, no tensor values",
}
_INTERNAL_KINDS = {"input", "output", "quant", "packed"}  # graph plumbing, not operators a model writes


def _spelling(obj: Any) -> str:
    import builtins
    import operator

    import torch
    import torch.nn.functional as F

    if isinstance(obj, str):
        return f"`x.{obj}()`"
    if isinstance(obj, type):
        return f"`nn.{obj.__name__}`" if obj.__module__.startswith("torch.nn") else f"`{obj.__name__}`"
    name = getattr(obj, "__name__", str(obj))
    for prefix, namespace in (("F.", F), ("torch.", torch), ("operator.", operator), ("", builtins)):
        if getattr(namespace, name, None) is obj:
            return f"`{prefix}{name}`"
    return f"`{getattr(obj, '__module__', '')}.{name}`"


def _special_spellings(ops: Any, rows: dict[str, dict[str, list[str]]]) -> None:
    """Spellings ``classify`` recognizes outside its three tables: interpolation (nearest -> move,
    bilinear/linear -> resize), tensor indexing, parameters read in forward, and ConvTranspose
    (rewritten into zero insertion + conv before classification, ``qcompile/conv_transpose.py``)."""
    import importlib.util

    import torch.nn as nn

    def add(kind: str, col: str, spelling: str) -> None:
        if kind in rows:
            rows[kind][col].append(spelling)

    for m in getattr(ops, "_INTERP_MODULES", ()):
        for t in [m, *m.__subclasses__()]:
            kinds = ("move",) if "Nearest" in t.__name__ else ("resize",) if "linear" in t.__name__ else ("move", "resize")
            for kind in kinds:
                add(kind, "modules", _spelling(t))
    for fn, default in getattr(ops, "_INTERP_FUNCTIONS", {}).items():
        name = getattr(fn, "__name__", "")
        kinds = ("move", "resize") if name in ("interpolate", "upsample") else (
            ("move",) if default == "nearest" else ("resize",))
        for kind in kinds:
            add(kind, "functions", _spelling(fn))
    if hasattr(ops, "_indexes_tensor"):
        add("move", "methods", "`x[...]` (slicing, indexing)")
    add("const", "methods", "`self.<parameter or buffer>`")
    if importlib.util.find_spec("qcompile.conv_transpose") is not None:
        add("conv", "modules", _spelling(nn.ConvTranspose1d) + " (rewritten)")
        add("conv", "modules", _spelling(nn.ConvTranspose2d) + " (rewritten)")


def supported_ops() -> list[dict[str, Any]]:
    """One row per :class:`qcompile.ops.Kind` users can write: its module, function and method
    spellings as the op catalogue classifies them, and what the lowering accepts."""
    from qcompile import ops

    rows: dict[str, dict[str, list[str]]] = {}
    for kind in ops.Kind:
        if kind.value not in _INTERNAL_KINDS:
            rows[kind.value] = {"modules": [], "functions": [], "methods": []}
    for types, kind in ops._MODULE_KINDS:
        for t in types if isinstance(types, tuple) else (types,):
            if kind.value in rows:
                rows[kind.value]["modules"].append(_spelling(t))
    for fn, kind in ops._FUNCTION_KINDS.items():
        if kind.value in rows:  # internal kinds (graph input/output, observers) get no row
            rows[kind.value]["functions"].append(_spelling(fn))
    for name, kind in ops._METHOD_KINDS.items():
        if kind.value in rows:
            rows[kind.value]["methods"].append(_spelling(name))
    _special_spellings(ops, rows)
    out = []
    for kind, r in rows.items():
        out.append({"kind": kind, "modules": sorted(set(r["modules"])), "functions": sorted(set(r["functions"])),
                    "methods": sorted(set(r["methods"])), "accepts": KIND_NOTES.get(kind, "")})
    return out


def ops_table_markdown(rows: list[dict[str, Any]] | None = None) -> str:
    rows = rows if rows is not None else supported_ops()
    lines = ["| kind | nn modules | functions | tensor methods | what the lowering accepts |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {', '.join(r['modules']) or '-'} | {', '.join(r['functions']) or '-'} | "
                     f"{', '.join(r['methods']) or '-'} | {r['accepts']} |")
    return "\n".join(lines) + "\n"


def _ops_doc() -> str:
    return ("# Supported operators\n\n"
            "<!-- generated by `python -m qcompile.docs_gen` from qcompile/ops.py; do not edit -->\n\n"
            "Each torch.fx node is classified into one *kind* by `qcompile.ops.classify`; every spelling below\n"
            "(module, function, tensor method) of a kind lowers the same way. Anything else is reported by\n"
            "`UnsupportedOpError` with every offending node and its source line, before any work is done.\n"
            "`qcompile ops` prints the same table. ONNX models pass through onnx2torch and are rewritten\n"
            "into these forms first (`qcompile/onnx_input.py`).\n\n" + ops_table_markdown())


def _doc_sections(doc: str) -> tuple[str, str]:
    """``(summary paragraph, preserves line)`` of a pass module docstring."""
    paras = [p.strip() for p in doc.strip().split("\n\n") if p.strip()]
    summary = " ".join(paras[0].split()) if paras else ""
    preserves = next((" ".join(p.split())[len("Preserves:"):].strip() for p in paras if p.startswith("Preserves:")), "")
    return summary, preserves


def passes_markdown() -> str:
    import qcompile
    from qcompile.pass_manager import pass_name

    lines = ["# The default pass pipeline", "",
             "<!-- generated by `python -m qcompile.docs_gen` from qcompile/pipeline.py and passes/*.py; do not edit -->",
             "", "`qcompile.default_pipeline()` runs these FX -> FX passes in order (after tracing, shape",
             "propagation and the support check; before lowering to the integer IR). *Preserves* is each pass",
             "module's own statement of what stays invariant. See `docs/custom_pass.md` to add one.", "",
             "| # | pass | why | what it does | preserves |", "|---|---|---|---|---|"]
    for i, p in enumerate(qcompile.default_pipeline()):
        module = sys.modules[p.__module__]
        summary, preserves = _doc_sections(module.__doc__ or "")
        cell = lambda s: s.replace("|", "\\|")  # noqa: E731
        lines.append(f"| {i} | `{pass_name(p)}` | {cell(getattr(p, 'why', ''))} | {cell(summary)} | "
                     f"{cell(preserves) or '(not stated)'} |")
    return "\n".join(lines) + "\n"


# Result files written before the scripts recorded their command line: the command from the
# commit that added the file.
_KNOWN_COMMANDS = {
    "mcu.json": "python benchmarks/mcu.py --profile --json benchmarks/results/mcu.json",
    "mcu_lowbit.json": "python benchmarks/mcu.py --models dscnn resnet8 --weight-bits 4 "
                       "--weight-quantizer uniform pwlq --json benchmarks/results/mcu_lowbit.json",
}

_FLAT_COLUMNS = {
    "accuracy.json": ["model", "observer", "float_top1", "int8_top1", "drop_points", "agreement", "arena_bytes"],
    "mcu.json": ["model", "origin", "config", "macs", "instr_O2", "instr_per_mac", "instr_Os", "flash_O2",
                 "arena", "arena_vs_lower_bound", "bit_exact_O2", "within_1lsb"],
    "mcu_lowbit.json": ["model", "config", "macs", "weight_bytes", "instr_O2", "instr_per_mac", "flash_O2",
                        "bit_exact_O2"],
    "pareto.json": ["source", "model", "method", "flash", "top1", "float_top1"],
    "lowbit_qat_lr_factor_heldout.json": ["model", "row", "samples", "epochs", "quantizer_lr_factor",
                                          "heldout_top1", "heldout_float_top1", "bit_exact_c_host"],
}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v).replace("|", "\\|")


def _md(headers: list[str], rows: list[list[Any]]) -> list[str]:
    return (["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            + ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows])


def _pivot(results: list[dict[str, Any]]) -> list[str]:
    """model x method tables of top-1 (results with a "row"), one per "setting" if they have one."""
    lines: list[str] = []
    for setting in dict.fromkeys(r.get("setting") for r in results):
        part = [r for r in results if r.get("setting") == setting]
        cols = list(dict.fromkeys(r["row"] for r in part))
        models = list(dict.fromkeys(r["model"] for r in part))
        cell = {(r["model"], r["row"]): r.get("top1") for r in part}
        if setting is not None:
            lines += [f"Setting `{setting}`:", ""]
        lines += _md(["model", *cols], [[m, *(cell.get((m, c)) for c in cols)] for m in models]) + [""]
    return lines[:-1]


def _command(name: str, data: dict[str, Any]) -> str:
    cmd = data.get("command") or (data.get("meta") or {}).get("command") or _KNOWN_COMMANDS.get(name)
    if isinstance(cmd, list):
        cmd = "; ".join(cmd)
    return cmd or "(not recorded)"


def benchmarks_markdown(results_dir: Path) -> str:
    lines = ["# Benchmark results", "",
             "<!-- generated by `python -m qcompile.docs_gen` from benchmarks/results/*.json; do not edit -->", "",
             "Every table below is read from the JSON a benchmark script wrote; the command is the one",
             "recorded in that file. Top-1 is measured through the integer interpreter unless noted;",
             "instruction counts are QEMU TCG instructions (exact, not cycles). Re-run a command and",
             "`python -m qcompile.docs_gen` to refresh this page. The accuracy-vs-flash Pareto plots come",
             "from `python benchmarks/pareto.py` (`benchmarks/results/pareto_*.png`).", ""]
    for path in sorted(results_dir.glob("*.json")):
        data = json.loads(path.read_text())
        lines += [f"## {path.name}", "", f"Command: `{_command(path.name, data)}`", ""]
        date = data.get("date") or (data.get("meta") or {}).get("date")
        if date:
            lines += [f"Measured: {date}" + (f", torch {data['torch']}" if data.get("torch") else ""), ""]
        results = data.get("results")
        if path.name in _FLAT_COLUMNS and isinstance(results, list):
            cols = _FLAT_COLUMNS[path.name]
            lines += _md(cols, [[r.get(c) for c in cols] for r in results])
        elif isinstance(results, list) and results and {"model", "row", "top1"} <= set(results[0]):
            lines += ["Top-1 (%) by model and method:", ""] + _pivot(results)
        elif "host" in data and "qemu_cortex_m4" in data:  # fuzz.json
            rows = [[k, data[k]["examples_run"], data[k]["failure"] or "none", data[k]["seconds"]]
                    for k in ("host", "qemu_cortex_m4")]
            lines += _md(["where", "random models run", "first failure", "seconds"], rows)
        else:
            lines += ["(no table layout known for this file; see the JSON)"]
        for plot in data.get("plots", []):
            lines += ["", f"![{Path(plot).name}](../{plot})"]
        for key in ("note", "targets"):
            if data.get(key):
                text = data[key] if isinstance(data[key], str) else "; ".join(f"{k}: {v}" for k, v in data[key].items())
                lines += ["", f"{key.capitalize()}: {text}"]
        lines.append("")
    return "\n".join(lines)


def _root(given: str | None) -> Path:
    if given:
        return Path(given)
    here = Path(__file__).resolve().parents[1]
    return here if (here / "benchmarks" / "results").is_dir() else Path.cwd()


def generate(root: Path) -> dict[Path, str]:
    """``{path: text}`` of every generated doc under ``root/docs``."""
    docs = root / "docs"
    return {docs / "ops.md": _ops_doc(), docs / "passes.md": passes_markdown(),
            docs / "benchmarks.md": benchmarks_markdown(root / "benchmarks" / "results")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qcompile.docs_gen", description=__doc__.splitlines()[0])
    p.add_argument("--root", help="the qcompile checkout (default: the one this module is in)")
    p.add_argument("--check", action="store_true", help="exit 1 if a committed doc is out of date")
    args = p.parse_args(argv)
    stale = []
    for path, text in generate(_root(args.root)).items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run python -m qcompile.docs_gen): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
