"""Accuracy of int8 compilation on the zoo CNNs: float vs int8 top-1, compile time, arena.

Run from the repository root (after ``pip install -e .``)::

    python benchmarks/accuracy.py --json benchmarks/results/accuracy.json

Options: ``--models fashion_cnn mnist1d_cnn`` (the default), ``--observers minmax mse ...``
(default: every ``QuantConfig.activation_observer``), ``--calib 512`` calibration samples (the first
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
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:
    import qcompile
    from qcompile.config import OBSERVERS, QuantConfig
    from qcompile.zoo import RECIPES, count_params, load_or_train, predict
except ImportError as exc:  # pragma: no cover - only without an install
    sys.exit(f"cannot import qcompile ({exc}); run `pip install -e .` in the repository root first")

DEFAULT_MODELS = ("fashion_cnn", "mnist1d_cnn")
DEFAULT_OBSERVER = QuantConfig().activation_observer


def int8_logits(art: Any, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of the integer program for a float batch, via ``Artifact.run``, batched."""
    return torch.cat([torch.as_tensor(art.run(x[i:i + batch_size])) for i in range(0, x.shape[0], batch_size)])


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
            config=QuantConfig(activation_observer=observer),
            progress=False,
        )
        compile_s = time.perf_counter() - t0
        q_pred = int8_logits(art, x_test, batch_size).argmax(dim=1)
        int8_top1 = 100.0 * (q_pred == y_test).float().mean().item()
        rows.append({
            "model": name,
            "observer": observer,
            "default_config": observer == DEFAULT_OBSERVER,
            "params": count_params(model),
            "float_top1": round(float_top1, 2),
            "int8_top1": round(int8_top1, 2),
            "drop_points": round(float_top1 - int8_top1, 2),
            "agreement": round(100.0 * (q_pred == float_pred).float().mean().item(), 2),
            "compile_s": round(compile_s, 2),
            "arena_bytes": art.arena_size,
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
    ap.add_argument("--observers", nargs="+", default=None, choices=OBSERVERS,
                    help="activation observers to compare (default: all)")
    ap.add_argument("--calib", type=int, default=512, help="calibration samples (first training samples)")
    ap.add_argument("--batch-size", type=int, default=1000, help="batch size for Artifact.run")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/accuracy.json"))
    ap.add_argument("--retrain", action="store_true", help="ignore cached weights")
    ap.add_argument("--max-drop", type=float, default=None,
                    help="exit 1 if the default configuration drops more top-1 points than this")
    args = ap.parse_args(argv)

    observers = args.observers or list(OBSERVERS)

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
        if r["default_config"]:
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
        "default_observer": DEFAULT_OBSERVER,
        "target_drop_points": 0.3,
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")

    if args.max_drop is not None:
        checked = [r for r in rows if r["default_config"]] or rows
        bad = [r for r in checked if r["drop_points"] > args.max_drop]
        for r in bad:
            print(f"FAIL: {r['model']} ({r['observer']}) drops {r['drop_points']:.2f} > {args.max_drop} points",
                  file=sys.stderr)
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
