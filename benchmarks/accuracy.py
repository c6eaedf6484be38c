"""Accuracy of int8 compilation on the zoo CNNs: float vs int8 top-1, compile time, arena.

Run from the repository root (after ``pip install -e .``)::

    python benchmarks/accuracy.py --json benchmarks/results/accuracy.json

Options: ``--models fashion_cnn mnist1d_cnn`` (the default), ``--observers minmax mse ...``
(default: every ``QuantConfig.activation_observer`` the installed qcompile accepts, else
only the compiler's default configuration), ``--calib 512`` calibration samples (the first
training samples), ``--retrain`` to ignore cached weights, ``--max-drop 0.3`` to exit 1
when the *default* configuration (``QuantConfig()``'s observer) of any model loses more
top-1 points than that.

For every model x observer it reports: parameters, float top-1 and int8 top-1 (through
``Artifact.run`` over the whole test split, batched), the drop in points, top-1 agreement
between float and int8 predictions, compile seconds and ``Artifact.arena_size`` bytes.
The first run trains the models (about 3 min for Fashion-MNIST and 15 s for MNIST-1D on
2 cores); later runs load the cached weights. Target: drop <= 0.3 points.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import inspect
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:
    import qcompile
    from qcompile.zoo import RECIPES, count_params, load_or_train, predict
except ImportError as exc:  # pragma: no cover - only without an install
    sys.exit(f"cannot import qcompile ({exc}); run `pip install -e .` in the repository root first")

DEFAULT_MODELS = ("fashion_cnn", "mnist1d_cnn")
CANDIDATE_OBSERVERS = ("minmax", "moving_average", "percentile", "mse")
DEFAULT = "default"
CONFIG_KWARGS = ("config", "quant_config", "qconfig")


def _config_kwarg() -> str | None:
    """Name of the ``qcompile.compile`` keyword that takes a ``QuantConfig``, if any."""
    try:
        params = inspect.signature(qcompile.compile).parameters
    except (TypeError, ValueError):
        return None
    return next((k for k in CONFIG_KWARGS if k in params), None)


def supported_observers() -> list[str]:
    """Observers the installed qcompile accepts via ``QuantConfig(activation_observer=...)``."""
    config_cls = getattr(qcompile, "QuantConfig", None)
    if config_cls is None or _config_kwarg() is None:
        return []
    ok = []
    for name in CANDIDATE_OBSERVERS:
        try:
            config_cls(activation_observer=name)
        except Exception:
            continue
        ok.append(name)
    return ok


def default_observer() -> str:
    """The observer ``QuantConfig()`` uses, or ``"default"`` if it cannot be told."""
    config_cls = getattr(qcompile, "QuantConfig", None)
    try:
        return str(config_cls().activation_observer) if config_cls is not None else DEFAULT
    except Exception:
        return DEFAULT


def compile_kwargs(observer: str) -> dict[str, Any]:
    """Extra ``qcompile.compile`` arguments selecting ``observer`` (none for the default)."""
    try:
        params = inspect.signature(qcompile.compile).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs: dict[str, Any] = {"progress": False} if "progress" in params else {}
    if observer not in (DEFAULT, default_observer()):
        kwargs[_config_kwarg()] = qcompile.QuantConfig(activation_observer=observer)
    return kwargs  # the default observer: let compile() use its own default config


def int8_logits(art: Any, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of the integer program for a float batch, via ``Artifact.run``, batched."""
    return torch.cat([torch.as_tensor(art.run(x[i:i + batch_size])) for i in range(0, x.shape[0], batch_size)])


def arena_bytes(art: Any) -> int | None:
    """``Artifact.arena_size``, falling back to a memory plan's ``arena_size``."""
    for obj in (art, getattr(art, "memory_plan", None), getattr(art, "plan", None)):
        size = getattr(obj, "arena_size", None)
        if size is not None:
            return int(size)
    return None


def bench_model(name: str, observers: list[str], n_calib: int, batch_size: int, retrain: bool) -> list[dict]:
    recipe = RECIPES[name]
    data = recipe.data_fn()
    x_train, _, x_test, y_test = data
    model, info = load_or_train(recipe, data, retrain=retrain)
    float_logits = predict(model, x_test)
    float_pred = float_logits.argmax(dim=1)
    float_top1 = 100.0 * (float_pred == y_test).float().mean().item()
    rows = []
    for observer in observers:
        t0 = time.perf_counter()
        art = qcompile.compile(
            copy.deepcopy(model),
            example_inputs=(x_test[:1],),
            calib=x_train[:n_calib],
            target="cortex-m",
            name=name,
            **compile_kwargs(observer),
        )
        compile_s = time.perf_counter() - t0
        q_pred = int8_logits(art, x_test, batch_size).argmax(dim=1)
        int8_top1 = 100.0 * (q_pred == y_test).float().mean().item()
        rows.append({
            "model": name,
            "observer": observer,
            "default_config": observer in (DEFAULT, default_observer()),
            "params": count_params(model),
            "float_top1": round(float_top1, 2),
            "int8_top1": round(int8_top1, 2),
            "drop_points": round(float_top1 - int8_top1, 2),
            "agreement": round(100.0 * (q_pred == float_pred).float().mean().item(), 2),
            "compile_s": round(compile_s, 2),
            "arena_bytes": arena_bytes(art),
            "test_samples": int(x_test.shape[0]),
            "calib_samples": int(min(n_calib, x_train.shape[0])),
            "train_s": info.get("train_seconds"),
            "weights_cached": info.get("cached"),
        })
        r = rows[-1]
        print(f"  {name}/{observer}: float {r['float_top1']:.2f} int8 {r['int8_top1']:.2f} "
              f"drop {r['drop_points']:+.2f} agree {r['agreement']:.2f} compile {compile_s:.1f}s",
              file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=sorted(RECIPES))
    ap.add_argument("--observers", nargs="+", default=None,
                    help="activation observers to compare (default: all supported)")
    ap.add_argument("--calib", type=int, default=512, help="calibration samples (first training samples)")
    ap.add_argument("--batch-size", type=int, default=1000, help="batch size for Artifact.run")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/accuracy.json"))
    ap.add_argument("--retrain", action="store_true", help="ignore cached weights")
    ap.add_argument("--max-drop", type=float, default=None,
                    help="exit 1 if the default configuration drops more top-1 points than this")
    args = ap.parse_args(argv)

    supported = supported_observers()
    default = default_observer()
    if args.observers is None:
        observers = supported or [DEFAULT]
    else:
        unknown = [o for o in args.observers if o not in (DEFAULT, default) and o not in supported]
        if unknown:
            ap.error(f"observers {unknown} not supported by this qcompile (supported: {supported or 'none'})")
        observers = args.observers

    rows: list[dict] = []
    for name in args.models:
        rows += bench_model(name, observers, args.calib, args.batch_size, args.retrain)

    from tabulate import tabulate
    headers = ["model", "observer", "params", "float top-1", "int8 top-1", "drop (pts)",
               "agreement %", "compile s", "arena B"]
    keys = ["model", "observer", "params", "float_top1", "int8_top1", "drop_points",
            "agreement", "compile_s", "arena_bytes"]
    table = [[r[k] for k in keys] for r in rows]
    for line, r in zip(table, rows):
        if r["default_config"] and r["observer"] != DEFAULT:
            line[1] += " (default)"
    print(tabulate(table, headers=headers, floatfmt=".2f"))

    report = {
        "benchmark": "accuracy",
        "command": "python " + " ".join([sys.argv[0]] + (sys.argv[1:] if argv is None else argv)),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "default_observer": default,
        "target_drop_points": 0.3,
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")

    if args.max_drop is not None:
        checked = [r for r in rows if r["observer"] in (DEFAULT, default)] or rows
        bad = [r for r in checked if r["drop_points"] > args.max_drop]
        for r in bad:
            print(f"FAIL: {r['model']} ({r['observer']}) drops {r['drop_points']:.2f} > {args.max_drop} points",
                  file=sys.stderr)
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
