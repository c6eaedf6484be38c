"""Command line: ``qcompile compile MODEL -o build/``, ``qcompile report build/``,
``qcompile init-example DIR`` and ``qcompile ops``.

MODEL is ``FILE.py:FACTORY`` (a function returning ``(model, example_inputs, calib)``) or an
``.onnx`` file (with ``--calib calib.npy``). Exit codes: see :data:`EXIT_CODES`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from qcompile.config import TARGETS, QuantConfig
from qcompile.errors import (
    BuildError,
    CalibrationError,
    ConfigError,
    IRVerificationError,
    MemoryBudgetError,
    PassError,
    QCompileError,
    TraceError,
    UnsupportedOpError,
    UnsupportedQuantizationError,
    VerificationError,
)
from qcompile.target import PRESETS

__all__ = ["main", "build_parser", "EXIT_CODES", "exit_code"]

# Exit status by error class (first match in order). 2 is also argparse's usage error.
EXIT_CODES: list[tuple[type[BaseException], int, str]] = [
    (ConfigError, 2, "bad command line, file or option"),
    (CalibrationError, 2, "bad calibration data"),
    (TraceError, 3, "the model cannot be traced"),
    (UnsupportedOpError, 3, "the model uses operators qcompile cannot lower"),
    (UnsupportedQuantizationError, 3, "the quantization asked for cannot be expressed in the integer IR"),
    (MemoryBudgetError, 4, "the model does not fit the target's flash or RAM"),
    (VerificationError, 5, "the generated C disagrees with the interpreter"),
    (BuildError, 6, "a C compiler or QEMU failed (missing toolchain?)"),
    (PassError, 7, "a compiler pass failed (a qcompile bug: please report it)"),
    (IRVerificationError, 7, "the lowered program is invalid (a qcompile bug: please report it)"),
    (QCompileError, 1, "other qcompile error"),
]
INTERNAL_ERROR = 70  # an unexpected Python exception (not a QCompileError)


def exit_code(exc: BaseException) -> int:
    for cls, code, _ in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return INTERNAL_ERROR


def _load_factory(spec: str):
    path, sep, func = spec.rpartition(":")
    if not sep or not path or not func:
        raise ConfigError(f"expected FILE.py:FACTORY or MODEL.onnx, got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"no such file: {file}")
    module_spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(file.parent.resolve()))
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    if not hasattr(module, func):
        raise ConfigError(f"{file} has no function {func!r}")
    return getattr(module, func)


def load_calib(path: str | Path):
    """A float tensor of samples from ``.npy`` (one array), ``.npz`` (its only or first array) or
    ``.pt`` (a tensor, loaded with ``weights_only=True``)."""
    import numpy as np
    import torch

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--calib {file}: no such file")
    try:
        if file.suffix == ".npy":
            arr = np.load(file, allow_pickle=False)
        elif file.suffix == ".npz":
            with np.load(file, allow_pickle=False) as z:
                if not z.files:
                    raise ConfigError(f"--calib {file}: the archive holds no arrays")
                arr = z[z.files[0]]
        elif file.suffix == ".pt":
            arr = torch.load(file, weights_only=True)
            if not isinstance(arr, torch.Tensor):
                raise ConfigError(f"--calib {file}: holds a {type(arr).__name__}, expected one tensor")
            arr = arr.detach().cpu().numpy()
        else:
            raise ConfigError(f"--calib {file}: use a .npy, .npz or .pt file of samples (N, *input_shape)")
    except (ValueError, OSError, RuntimeError) as exc:
        raise ConfigError(f"--calib {file}: cannot be read: {exc}") from exc
    if arr.dtype.kind not in "fiu":
        raise ConfigError(f"--calib {file}: dtype {arr.dtype} is not numeric")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _model_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """``(model, example_inputs, calib)`` from MODEL and ``--calib``."""
    calib = load_calib(args.calib) if args.calib else None
    if args.model.lower().endswith(".onnx"):
        if calib is None:
            raise ConfigError(f"{args.model}: an ONNX model needs calibration samples: --calib calib.npy "
                              "(float array of shape (N, *input_shape))")
        return args.model, (calib[:1],), calib
    factory = _load_factory(args.model)
    result = factory()
    if not (isinstance(result, tuple) and len(result) == 3):
        raise ConfigError(f"{args.model} must return (model, example_inputs, calib)")
    model, example_inputs, factory_calib = result
    return model, example_inputs, calib if calib is not None else factory_calib


def _log(args: argparse.Namespace, msg: str) -> None:
    if args.verbose:
        print(msg, file=sys.stderr, flush=True)


def _compile(args: argparse.Namespace, name: str):
    import qcompile
    from qcompile.pass_timing import timed

    model, example_inputs, calib = _model_inputs(args)
    config = QuantConfig(weight_bits=args.bits, activation_observer=args.observer)
    timings: list[tuple[str, float]] = []

    def sink(pass_name: str, seconds: float) -> None:
        timings.append((pass_name, seconds))
        _log(args, f"  pass {pass_name:42s} {seconds * 1000:9.1f} ms")

    _log(args, f"compiling {args.model} (target {args.target}, {args.bits}-bit weights, name {name})")
    art = qcompile.compile(model, example_inputs, calib=calib, target=args.target, config=config, name=name,
                           pipeline=timed(qcompile.default_pipeline(), sink), progress=False,
                           leaf_modules=tuple(args.leaf_module))
    rest = art.compile_seconds - sum(s for _, s in timings)
    _log(args, f"  {'outside passes (load, trace, lower, plan, SQNR)':47s} {rest * 1000:9.1f} ms")
    _log(args, f"  {'total':47s} {art.compile_seconds * 1000:9.1f} ms")
    return art, timings


def _cmd_compile(args: argparse.Namespace) -> dict[str, Any]:
    art, timings = _compile(args, args.name)
    verified = None
    if args.verify:
        start = time.perf_counter()
        xs = art.sample_input
        art.verify(xs, on=args.verify, cpu=args.cpu)
        verified = {"on": args.verify, "cpu": args.cpu if args.verify == "qemu" else None, "samples": len(xs)}
        _log(args, f"  verify on {args.verify}: bit-exact ({time.perf_counter() - start:.1f} s)")
    out = art.save(args.output, harness=args.harness, cpu=args.cpu)
    files = sorted(p.name for p in Path(out).iterdir() if not p.name.startswith("."))
    data = art.report_data()
    if not args.json:
        print(art.report())
        print(f"\nwrote {', '.join(files)} to {out}/")
        if verified:
            print(f"generated C is bit-exact with the interpreter on {verified['on']}")
    return {"ok": True, "command": "compile", "model": args.model, "output": str(out), "files": files,
            "summary": data["summary"], "layers": data["layers"], "budget": data.get("budget"),
            "verified": verified, "compile_seconds": round(art.compile_seconds, 3),
            "pass_seconds": [{"pass": n, "seconds": round(s, 4)} for n, s in timings]}


def _cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    directory = Path(args.directory)
    md, js = directory / "report.md", directory / "report.json"
    if not md.is_file() or not js.is_file():
        raise ConfigError(f"{directory} holds no report.md/report.json; run 'qcompile compile ... -o {directory}' first")
    try:
        data = json.loads(js.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{js}: not valid JSON ({exc})") from exc
    if not args.json:
        print(md.read_text(), end="")
        html = directory / "report.html"
        if html.is_file():
            print(f"\nfigures: {html.resolve().as_uri()}")
    return {"ok": True, "command": "report", "directory": str(directory), "report": data}


def _cmd_init_example(args: argparse.Namespace) -> dict[str, Any]:
    from qcompile.integration import demo_model, write_example

    if args.model:
        art, _ = _compile(args, args.name)
    else:
        import qcompile

        model, example_inputs, calib = demo_model()
        _log(args, "no MODEL given: compiling the built-in untrained demo CNN (1x8x8 input, 10 outputs)")
        art = qcompile.compile(model, example_inputs, calib=calib, name=args.name, progress=False)
    out = write_example(art, args.directory, cpu=args.cpu)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not args.json:
        print(f"wrote an example project for '{art.name}' to {out}/:\n  " + "\n  ".join(files))
        print(f"\nbuild and check on the host:  make -C {out}\nbuild for {args.cpu}:        make -C {out} arm")
    return {"ok": True, "command": "init-example", "directory": str(out), "files": files, "model": args.model}


def _cmd_ops(args: argparse.Namespace) -> dict[str, Any]:
    from qcompile.docs_gen import ops_table_markdown, supported_ops

    rows = supported_ops()
    if not args.json:
        print(ops_table_markdown(rows), end="")
    return {"ok": True, "command": "ops", "ops": rows}


def _add_compile_options(c: argparse.ArgumentParser, model_required: bool) -> None:
    c.add_argument("model", nargs=None if model_required else "?",
                   help="FILE.py:FACTORY returning (model, example_inputs, calib), or MODEL.onnx")
    c.add_argument("--calib", help="calibration samples (.npy/.npz/.pt, shape (N, *input_shape)); "
                                   "required for .onnx, overrides the factory's calib")
    c.add_argument("--target", default="cortex-m", choices=[*TARGETS, *sorted(PRESETS)],
                   help="cortex-m/generic (no budget) or a part whose flash/RAM the model must fit")
    c.add_argument("--bits", type=int, default=8, help="weight bits (default 8)")
    c.add_argument("--observer", default=QuantConfig.activation_observer, help="activation observer")
    c.add_argument("--name", default="model", help="C symbol prefix (default: model)")
    c.add_argument("--leaf-module", action="append", default=[], metavar="QUALNAME",
                   help="a submodule torch.fx must not trace into (repeatable), e.g. backbone.block1")
    c.add_argument("--cpu", default="cortex-m4", help="Cortex-M core for --harness/--verify qemu/init-example")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qcompile", description=__doc__.splitlines()[0],
        epilog="exit codes: 0 ok; " + "; ".join(f"{code} {why}" for _, code, why in EXIT_CODES[:-1])
               + f"; 1 other qcompile error; {INTERNAL_ERROR} unexpected internal error")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout (errors too)")
    common.add_argument("-v", "--verbose", action="store_true", help="per-pass timing and progress on stderr")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", parents=[common], help="quantize a model and write C, reports and build snippets")
    _add_compile_options(c, model_required=True)
    c.add_argument("-o", "--output", default="build", help="output directory (default: build)")
    c.add_argument("--harness", action="store_true", help="also write the QEMU harness and a Makefile")
    c.add_argument("--verify", choices=["host", "qemu"], help="build the C and check it bit for bit first")
    c.set_defaults(func=_cmd_compile)
    r = sub.add_parser("report", parents=[common], help="print the report of a build directory")
    r.add_argument("directory")
    r.set_defaults(func=_cmd_report)
    e = sub.add_parser("init-example", parents=[common],
                       help="write a ready-to-build firmware example folder (main.c, Makefile, CMake)")
    e.add_argument("directory")
    _add_compile_options(e, model_required=False)
    e.set_defaults(func=_cmd_init_example)
    o = sub.add_parser("ops", parents=[common], help="print the supported-operator table")
    o.set_defaults(func=_cmd_ops)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except Exception as exc:  # noqa: BLE001 - every failure becomes an exit code and a message
        code = exit_code(exc)
        if isinstance(exc, QCompileError):
            message = f"qcompile: error: {type(exc).__name__}: {exc}"
        else:
            message = (f"qcompile: internal error: {type(exc).__name__}: {exc}\n"
                       + "".join(traceback.format_exception(exc)[-6:]))
        print(message, file=sys.stderr)
        if args.json:
            err = {"type": type(exc).__name__, "message": str(exc)}
            if isinstance(exc, UnsupportedOpError):
                err["nodes"] = [{"node": n, "target": t, "source": s} for n, t, s in exc.nodes]
            print(json.dumps({"ok": False, "command": args.command, "exit_code": code, "error": err}, indent=2))
        return code
    if args.json:
        from qcompile.artifact import _jsonable

        print(json.dumps(_jsonable(result), indent=2, sort_keys=True))
    return 0
