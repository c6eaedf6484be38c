"""QAT methods as compiler passes: LSQ vs the seed methods (constrained, DDQ, block replacement).

Run from the repository root::

    python benchmarks/qat.py --models mnist1d_plain --threads 1 --json benchmarks/results/qat_mnist1d.json

Models: the cached Fashion-MNIST / MNIST-1D models of ``benchmarks/ptq.py`` (``RECIPES_PTQ``;
``--models``; not cached: skipped unless ``--train``). Every method trains with :func:`qcompile.qat.train` on the
first ``--samples`` *labelled* training samples for the same ``--epochs`` (same lr, batch, seed;
first and last layer at 8-bit weights as in LSQ), then ``qcompile.compile(prepared)`` lowers the
frozen graph. Rows per width ``b`` in ``--bits``:

* ``float``: the float model;
* ``lsq WbAb``, ``constrained WbAb``, ``block_replace WbAb``: uniform ``b``-bit weights (ends 8);
* ``ddq WbAb``: learned per-layer widths (candidates 2..8) within the flash of the ``lsq WbAb``
  program (3-bit codes sit in 4-bit slots, so the 3-bit budget equals the 4-bit one).

Columns: top-1 on the test split (``--eval`` samples, 0 = all) *through the integer interpreter*
(``Artifact.run``), the drop vs float, the weight flash bytes of the program, the per-layer bits,
and bit-exactness of the generated C on an emulated Cortex-M4 (``art.verify(on="qemu")``,
``--verify`` samples; ``--no-qemu`` checks on the host instead).

``--study``: a ``constrained`` run at the smallest width with *every* layer at that width (ends
included, so each dual variable describes its layer at the width the selection decides on); for
that run, (1) each layer's dual
variable against its measured sensitivity (top-1 drop on the test samples when only that
layer's weights are quantized, everything else float), Spearman's rank correlation, with the
sensitivity measured twice: on the layers as QAT left them (``sensitivity_top1_drop``) and on the
pretrained layers with the quantizers as initialized before training
(``sensitivity_top1_drop_pretrained``, :func:`qcompile.qat.prepare_graph`; the per-layer
analysis of AIMET's QuantAnalyzer: quantize one layer of the given model at a time); (2)
layer-selective precision: widths {b, 8} per layer (ends included) within the flash budget halfway
between all-``b`` and all-8, chosen by the allocator's greedy on the dual variables
(:func:`qcompile.bit_allocation.dual_variable_score`) vs on ``--random`` random scores; each
allocation is trained with LSQ (same epochs) and compiled.

``--seed-mean A.json B.json ...``: no training; the runs in those files (the same command with
different ``--seed``) combined per (model, row): top-1 is the mean over the runs that have the
row (``seeds`` lists each run's value), and the targets are judged on the means. The study rows
are not averaged; a row counts as bit-exact only if it was in every run.

Development options (defaults unchanged): ``--methods`` with no names runs only ``--study``;
``--dual-bounds``/``--dual-lr`` set the constrained runs' ``QATConfig.dual_bounds``/``dual_lr``;
``--eval-on heldout`` measures every top-1, the sensitivities and the selections on the training
samples after the first ``--samples`` (e.g. ``--samples 3000``: MNIST-1D samples 3000..3999)
instead of the test split, to choose between variants without touching the test split (those
samples are outside the QAT subset but were seen by the float model's training: float top-1 is
near 100 there).
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qcompile  # noqa: E402
from qcompile.backends import ir  # noqa: E402
from qcompile.bit_allocation import allocate_greedy, dual_variable_score, layer_cost, total_bytes  # noqa: E402
from qcompile.qat import QATConfig, layer_output_divergence, layer_sensitivity, prepare_graph, spearman, train  # noqa: E402

from bench_common import bit_exact, evaluated_on, evaluation_split, print_and_save, run_cached_models, top1  # noqa: E402
from ptq import RECIPES_PTQ  # noqa: E402

__all__ = ["METHODS", "main"]

METHODS = ("lsq", "constrained", "ddq", "block_replace")


def _compile_row(model_name, row, prepared, x_test, y_test, float_top1, args, secs) -> tuple[dict, object]:
    art = qcompile.compile(prepared, (x_test[:1],), calib=x_test[:64], name="m", progress=False)
    acc = top1(art.run(x_test), y_test)
    rec = {"model": model_name, "row": row, "top1": round(acc, 2), "drop": round(float_top1 - acc, 2),
           "weight_flash_bytes": sum(ir.weight_storage_bytes(op) for op in art.program.ops),
           "weight_bits": prepared.weight_bits, "train_seconds": round(secs, 1),
           "history": prepared.history,
           ("bit_exact_qemu_m4" if args.qemu else "bit_exact_c_host"): bit_exact(art, x_test[:args.verify], "qemu" if args.qemu else "host")}
    extra = prepared.records.get("qat_train", {})
    for k in ("ddq_learned_bits", "flash_budget", "dual_output"):
        if k in extra:
            rec[k] = extra[k]
    if prepared.dual_variables is not None:
        rec["dual_variables"] = {k: float(f"{v:.4g}") for k, v in prepared.dual_variables.items()}
    print(f"  {row:22s} top1 {acc:6.2f} (drop {rec['drop']:5.2f})  flash {rec['weight_flash_bytes']:7d} B  "
          f"C {rec.get('bit_exact_qemu_m4', rec.get('bit_exact_c_host'))}  {secs:.0f}s  bits {prepared.weight_bits}",
          flush=True)
    return rec, art


def _config(x_train, args, **kw) -> QATConfig:
    """The training configuration of a run: the same data size, epochs, lr, batch and seed for
    every method; ``kw`` (method, bits, ...) on top."""
    if kw.get("method") == "constrained":
        if args.dual_lr is not None:
            kw["dual_lr"] = args.dual_lr
        if args.dual_bounds is not None:
            kw["dual_bounds"] = args.dual_bounds
    return QATConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch, seed=args.seed,
                     calib_samples=min(1024, len(x_train)), progress=args.progress, **kw)


def _train(model, x_train, y_train, x_test, args, **kw):
    t0 = time.perf_counter()
    p = train(model, (x_test[:1],), (x_train, y_train), config=_config(x_train, args, **kw))
    return p, time.perf_counter() - t0


def _initial_graph(model, x_train, x_test, bits, args):
    """The graph the study's constrained run starts from (the same configuration, prepared as
    :func:`qcompile.qat.train` prepares it): pretrained weights, every layer's LSQ quantizer at
    ``bits`` initialized on the same calibration samples, untrained."""
    cfg = _config(x_train, args, method="constrained", bits=bits, keep_ends_8bit=False)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        gm, _ = prepare_graph(copy.deepcopy(model).eval(), (x_test[:1],), x_train, cfg)
    return gm


def _study(model_name, model, prepared, x_train, y_train, x_test, y_test, float_top1, bits, args) -> list[dict]:
    layers = list(prepared.weight_bits)
    duals = prepared.dual_variables
    sens = layer_sensitivity(prepared.graph, layers, x_test, y_test)
    rho = spearman(duals, sens)
    initial = _initial_graph(model, x_train, x_test, bits, args)
    sens0 = layer_sensitivity(initial, layers, x_test, y_test)
    rho0 = spearman(duals, sens0)
    kl, kl0 = (layer_output_divergence(g, layers, x_test) for g in (prepared.graph, initial))
    rho_kl, rho_kl0 = spearman(duals, kl), spearman(duals, kl0)
    print(f"  duals vs sensitivity: Spearman {rho:.3f} (trained layers), {rho0:.3f} (pretrained layers); "
          f"vs output KL {rho_kl:.3f} / {rho_kl0:.3f}", flush=True)
    out = [{"model": model_name, "row": f"dual vs sensitivity W{bits}A{bits}", "spearman": round(rho, 3),
            "spearman_pretrained": round(rho0, 3), "spearman_kl": round(rho_kl, 3),
            "spearman_kl_pretrained": round(rho_kl0, 3),
            "dual_variables": {k: float(f"{v:.4g}") for k, v in duals.items()},
            "sensitivity_top1_drop": {k: round(v, 2) for k, v in sens.items()},
            "sensitivity_top1_drop_pretrained": {k: round(v, 2) for k, v in sens0.items()},
            "sensitivity_output_kl": {k: float(f"{v:.4g}") for k, v in kl.items()},
            "sensitivity_output_kl_pretrained": {k: float(f"{v:.4g}") for k, v in kl0.items()}}]
    shapes = {n: tuple(prepared.graph.get_submodule(n).module.weight.shape) for n in layers}
    costs = [layer_cost(n, shapes[n], (bits, 8)) for n in layers]
    lo, hi = (sum(c.bytes[b] for c in costs) for b in (bits, 8))
    budget = (lo + hi) // 2
    rng = np.random.default_rng(args.seed)
    choices = [("dual-variable selection", dual_variable_score(duals))]
    for r in range(args.random):
        scores = {n: float(v) for n, v in zip(layers, rng.random(len(layers)))}
        choices.append((f"random selection {r}", dual_variable_score(scores)))
    for label, score in choices:
        alloc = allocate_greedy(costs, budget, score)
        p, secs = _train(model, x_train, y_train, x_test, args, method="lsq", bits=bits, weight_bits=alloc,
                         keep_ends_8bit=False)
        rec, _ = _compile_row(model_name, f"{label} W{{{bits},8}}A{bits}", p, x_test, y_test, float_top1, args, secs)
        rec.update(flash_budget=budget, allocated_bytes=total_bytes(costs, alloc))
        out.append(rec)
    return out


def bench(model_name: str, args) -> list[dict]:
    from qcompile.zoo import load_or_train, predict

    recipe = RECIPES_PTQ[model_name]
    data = recipe.data_fn()
    x_train, y_train, x_test, y_test = evaluation_split(data, args.samples, args.eval_on, args.eval)
    model, _ = load_or_train(recipe, data, progress=False)
    model.eval()
    x_train, y_train = x_train[:args.samples], y_train[:args.samples]
    float_top1 = top1(predict(model, x_test), y_test)
    print(f"{model_name}: float {float_top1:.2f}", flush=True)
    out = [{"model": model_name, "row": "float", "top1": round(float_top1, 2), "drop": 0.0}]
    for bits in args.bits:
        for method in args.methods:
            p, secs = _train(model, x_train, y_train, x_test, args, method=method, bits=bits)
            rec, _ = _compile_row(model_name, f"{method} W{bits}A{bits}", p, x_test, y_test, float_top1, args, secs)
            rec["method"], rec["bits"] = method, bits
            out.append(rec)
    if args.study:
        bits = min(args.bits)
        p, secs = _train(model, x_train, y_train, x_test, args, method="constrained", bits=bits, keep_ends_8bit=False)
        rec, _ = _compile_row(model_name, f"constrained W{bits}A{bits} (every layer)", p, x_test, y_test, float_top1,
                              args, secs)
        out.append(rec)
        out += _study(model_name, model, p, x_train, y_train, x_test, y_test, float_top1, bits, args)
    return out


def seed_mean(paths: list[Path]) -> list[dict]:
    """Method rows of several runs (one JSON each) averaged per (model, row); see the module doc."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    rows: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        for r in run["results"]:
            if _is_method_row(r["row"]):
                rows.setdefault((r["model"], r["row"]), []).append({**r, "seed": _seed_of(run["command"])})
    out = []
    for (model, row), rs in rows.items():
        mean = float(np.mean([r["top1"] for r in rs]))
        base = {k: v for k, v in rs[0].items() if k not in ("top1", "drop", "seed", "train_seconds")}
        exact = [r.get("bit_exact_qemu_m4", r.get("bit_exact_c_host")) for r in rs if row != "float"]
        if exact:
            base["bit_exact_qemu_m4" if "bit_exact_qemu_m4" in rs[0] else "bit_exact_c_host"] = \
                "yes" if all(e == "yes" for e in exact) else "no"
        out.append({**base, "top1": round(mean, 2), "seeds": {str(r["seed"]): r["top1"] for r in rs}})
    floats = {r["model"]: r["top1"] for r in out if r["row"] == "float"}
    for r in out:
        r["drop"] = round(floats.get(r["model"], r["top1"]) - r["top1"], 2)
    return out


def _is_method_row(row: str) -> bool:
    """``float`` or ``<method> WbAb`` (not the study's rows)."""
    method, _, width = row.partition(" ")
    return row == "float" or (method in METHODS and re.fullmatch(r"W\d+A\d+", width) is not None)


def _seed_of(command: str) -> int:
    words = command.split()
    return int(words[words.index("--seed") + 1]) if "--seed" in words else 0


def table(results: list[dict]) -> str:
    lines = ["| model | row | top-1 (interpreter) | drop | weight flash B | bit-exact C | train s |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if "spearman" in r:
            pre = f" (pretrained layers {r['spearman_pretrained']})" if "spearman_pretrained" in r else ""
            kl = (f"; vs output KL {r['spearman_kl']} ({r['spearman_kl_pretrained']})"
                  if "spearman_kl" in r else "")
            lines.append(f"| {r['model']} | {r['row']} | Spearman {r['spearman']}{pre}{kl} | | | | |")
            continue
        top = f"{r['top1']:.2f}" + (" (" + " / ".join(f"{v:.2f}" for v in r["seeds"].values()) + ")" if "seeds" in r else "")
        lines.append(f"| {r['model']} | {r['row']} | {top} | {r['drop']:.2f} | {r.get('weight_flash_bytes', '')} "
                     f"| {r.get('bit_exact_qemu_m4', r.get('bit_exact_c_host', ''))} | {r.get('train_seconds', '')} |")
    return "\n".join(lines)


def targets(results: list[dict]) -> dict[str, str]:
    by = {(r["model"], r["row"]): r for r in results}
    models = sorted({r["model"] for r in results})
    out = {}
    for method in ("constrained", "ddq", "block_replace"):
        ahead, worse, compared, at_w2 = [], [], 0, 0
        for m in models:
            for b in (4, 3, 2):
                s, l = by.get((m, f"{method} W{b}A{b}")), by.get((m, f"lsq W{b}A{b}"))
                if not (s and l):
                    continue
                compared += 1
                at_w2 += b == 2
                if b == 2 and s["top1"] > l["top1"]:
                    ahead.append(f"{m} {s['top1']:.2f} vs {l['top1']:.2f}")
                if s["top1"] < l["top1"] - 0.5:
                    worse.append(f"{m} W{b}A{b} {s['top1']:.2f} vs {l['top1']:.2f}")
        if not compared:  # e.g. --methods with no names: only the study ran
            continue
        if at_w2:  # a run without W2A2 rows (e.g. --bits 4 3) has no verdict on it
            out[f"{method} ahead of LSQ at W2A2 on >= 1 model"] = ("met: " + "; ".join(ahead)) if ahead else "MISSED"
        out[f"{method} within 0.5 of LSQ elsewhere"] = ("MISSED: " + "; ".join(worse)) if worse else "met"
    for m in models:
        f = by.get((m, "float"))
        l4 = by.get((m, "lsq W4A4"))
        if f and l4:
            out[f"lsq W4A4 within 1 point of float on {m}"] = (f"{'met' if f['top1'] - l4['top1'] <= 1 else 'MISSED'} "
                                                                f"(drop {f['top1'] - l4['top1']:.2f})")
        rho = [r for r in results if r["model"] == m and "spearman" in r]
        if rho:
            v = rho[0]["spearman"]
            out[f"dual variables Spearman >= 0.6 on {m}"] = f"{'met' if v >= 0.6 else 'MISSED'} ({v})"
            if "spearman_pretrained" in rho[0]:
                v = rho[0]["spearman_pretrained"]
                out[f"dual variables Spearman >= 0.6 on {m}, pretrained-layer sensitivity"] = \
                    f"{'met' if v >= 0.6 else 'MISSED'} ({v})"
        dual = [r for r in results if r["model"] == m and r["row"].startswith("dual-variable selection")]
        rand = [r for r in results if r["model"] == m and r["row"].startswith("random selection")]
        if dual and rand:
            mean = float(np.mean([r["top1"] for r in rand]))
            out[f"dual-variable selection ahead of random on {m}"] = (
                f"{'met' if dual[0]['top1'] > mean else 'MISSED'} ({dual[0]['top1']:.2f} vs random mean {mean:.2f}, "
                f"{[r['top1'] for r in rand]})")
    checked = [r for r in results if "bit_exact_qemu_m4" in r or "bit_exact_c_host" in r]
    bad = [f"{r['model']} {r['row']}" for r in checked if r.get("bit_exact_qemu_m4", r.get("bit_exact_c_host")) != "yes"]
    if checked:
        out["every row bit-exact in C"] = ("MISSED: " + "; ".join(bad)) if bad else f"met ({len(checked)} rows checked)"
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["mnist1d_plain", "mnist1d_mobilenet"], choices=list(RECIPES_PTQ))
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--bits", nargs="+", type=int, default=[4, 3, 2])
    ap.add_argument("--samples", type=int, default=4000, help="labelled training samples (same for every method)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs (same for every method)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval", type=int, default=0, help="test samples (0: all)")
    ap.add_argument("--eval-on", choices=("test", "heldout"), default="test",
                    help="heldout: evaluate (top-1, sensitivity, selections) on the training samples after the first "
                         "--samples instead of the test split, for choosing between variants")
    ap.add_argument("--verify", type=int, default=4, help="samples for the C check")
    ap.add_argument("--dual-lr", type=float, default=None,
                    help="dual step of the constrained runs (default: QATConfig's)")
    ap.add_argument("--dual-bounds", choices=("shared", "per_layer"), default=None,
                    help="bounds of the constrained runs' layer constraints (default: QATConfig's)")
    ap.add_argument("--study", action="store_true", help="dual variables vs sensitivity and selection vs random")
    ap.add_argument("--random", type=int, default=3, help="random selections in --study")
    ap.add_argument("--no-qemu", dest="qemu", action="store_false", help="check the C on the host instead of QEMU M4")
    ap.add_argument("--train", action="store_true", help="train (and cache) float models that are not cached")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--seed-mean", nargs="+", type=Path, metavar="JSON",
                    help="no training: average the runs in these result files (different --seed) per row")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.seed_mean:
        print_and_save("qat.py", argv, seed_mean(args.seed_mean), table, targets, args.json,
                       top1_on="mean over the runs in --seed-mean (see each row's seeds)")
        return
    torch.set_num_threads(args.threads)
    results, skipped = run_cached_models(args.models, RECIPES_PTQ, lambda name: bench(name, args), args.train)
    print_and_save("qat.py", argv, results, table, targets, args.json, samples=args.samples, epochs=args.epochs,
                   lr=args.lr, batch=args.batch, skipped=skipped, top1_on=evaluated_on(args.eval_on, args.samples))


if __name__ == "__main__":
    main()
