"""Command line: ``qcompile compile FILE.py:FACTORY -o build/`` and ``qcompile report build/``.

The factory is a function in FILE.py returning ``(model, example_inputs, calib)``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from qcompile.config import TARGETS, QuantConfig
from qcompile.errors import ConfigError, QCompileError
from qcompile.target import PRESETS

__all__ = ["main"]


def _load_factory(spec: str):
    path, sep, func = spec.rpartition(":")
    if not sep or not path or not func:
        raise ConfigError(f"expected FILE.py:FACTORY, got {spec!r}")
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


def _cmd_compile(args: argparse.Namespace) -> int:
    import qcompile

    factory = _load_factory(args.factory)
    result = factory()
    if not (isinstance(result, tuple) and len(result) == 3):
        raise ConfigError(f"{args.factory} must return (model, example_inputs, calib)")
    model, example_inputs, calib = result
    config = QuantConfig(weight_bits=args.bits, activation_observer=args.observer)
    art = qcompile.compile(model, example_inputs, calib=calib, target=args.target, config=config, name=args.name)
    out = art.save(args.output)
    print(art.report())
    print(f"\nwrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}/")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    md = directory / "report.md"
    if not md.is_file():
        raise ConfigError(f"{directory} holds no report.md; run 'qcompile compile ... -o {directory}' first")
    if args.json:
        print(json.dumps(json.loads((directory / "report.json").read_text()), indent=2))
    else:
        print(md.read_text(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qcompile", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="quantize a model and write C, report and Makefile fragment")
    c.add_argument("factory", help="FILE.py:FACTORY returning (model, example_inputs, calib)")
    c.add_argument("-o", "--output", default="build", help="output directory (default: build)")
    c.add_argument("--target", default="cortex-m", choices=[*TARGETS, *sorted(PRESETS)],
                   help="cortex-m/generic (no budget) or a part whose flash/RAM the model must fit")
    c.add_argument("--bits", type=int, default=8, help="weight bits (default 8)")
    c.add_argument("--observer", default=QuantConfig.activation_observer, help="activation observer")
    c.add_argument("--name", default="model", help="C symbol prefix (default: model)")
    c.set_defaults(func=_cmd_compile)
    r = sub.add_parser("report", help="print the report of a build directory")
    r.add_argument("directory")
    r.add_argument("--json", action="store_true", help="print report.json instead")
    r.set_defaults(func=_cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except QCompileError as exc:
        print(f"qcompile: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
