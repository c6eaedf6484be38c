"""Below 8 bits: PTQ weights (uniform vs PWLQ) and QAT (N2UQ vs LSQ) on the PTQ benchmark's models.

Run from the repository root::

    python benchmarks/lowbit.py --json benchmarks/results/lowbit.json

Models: the Fashion-MNIST and MNIST-1D models of ``benchmarks/ptq.py`` (``RECIPES_PTQ``), loaded
from the cache (``--models``; a model that is not cached is skipped, never trained here, unless
``--train``). Rows:

* ``float``: the float model;
* ``uniform W4A8`` / ``pwlq W4A8`` / ``uniform W3A8`` / ``pwlq W3A8``: post-training,
  ``QuantConfig(weight_bits=b, weight_quantizer=...)``, everything else default;
* ``n2uq WkAk`` / ``lsq WkAk`` for k = 4, 3, 2: QAT (``activation_quantizer="n2uq"|"lsq"``) with
  the same data, epochs, learning rate and seed (first and last layer keep 8-bit weights, see
  :mod:`qcompile.passes.train_quantization_aware`);
* ``n2uq/ch WkAk``: N2UQ with one set of learned thresholds per output channel
  (``QuantConfig(n2uq_thresholds="per_channel")``, beyond the paper; the integer program is the
  same size and speed, its threshold tables being per channel anyway).

Data: PTQ calibration and QAT both use the first ``--samples`` training images (no labels: QAT
distills the float model); top-1 is measured on the test split (``--eval`` samples, default
all) **through the integer interpreter** (``Artifact.run``), never used to choose anything.
Settings are chosen with ``--eval-on heldout``, which measures on the training samples after
the first ``--samples`` instead (e.g. ``--quantizer-lr-factor``, the quantizer parameters'
learning rate relative to ``--lr``).
Columns: top-1 and its drop vs float, the mean squared difference of the interpreter's logits
from the float model's on the test split (``logit_mse_vs_float``: the error top-1 only sees where
it flips a decision; when PWLQ and uniform run in the same invocation the PWLQ row also counts
the test samples only one of the two gets right), weight flash bytes (``ir.weight_storage_bytes`` summed:
packed codes or values plus codebook tables), threshold table bytes as the C stores them
(``c_lowbit.threshold_bytes``: rows padded like the kernel's channels, int16 where the clipped
values fit, else int32; N2UQ/low-bit output stages), agreement of the interpreter with the fake-quant graph ``art.graph``,
bit-exact interpreter vs C on the host (``art.verify(on="host")`` on ``--verify`` samples) and
on an emulated Cortex-M4 (``art.measure``: the DSP build at -O2 runs on QEMU's MPS2-AN386,
bit-exactness is checked and the exact instruction count per inference is recorded, with the
MACs and instructions per MAC; ``--no-qemu`` skips it).

``mixed W4A8`` keeps the first and the last conv/linear (in execution order) at 8 bits and
quantizes every other layer's weights to 4 bits (the usual mixed-precision recipe); ``int8`` is
the all-int8 default for comparison.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qcompile  # noqa: E402
from qcompile.backends import ir  # noqa: E402
from qcompile.backends.c_lowbit import threshold_bytes  # noqa: E402
from qcompile.config import QuantConfig  # noqa: E402
from qcompile.zoo import predict  # noqa: E402

from bench_common import (bit_exact_host, evaluated_on, load_model, merge_results, print_and_save,  # noqa: E402
                          run_cached_models, top1)
from ptq import RECIPES_PTQ  # noqa: E402

__all__ = ["ROWS", "row_config", "parser", "main"]

ROWS: dict[str, dict] = {
    "int8": dict(),
    "mixed W4A8": dict(weight_bits="ends8"),  # resolved per model by _weight_bits_keeping_ends
    "uniform W4A8": dict(weight_bits=4, weight_quantizer="uniform"),
    "pwlq W4A8": dict(weight_bits=4, weight_quantizer="pwlq"),
    "uniform W3A8": dict(weight_bits=3, weight_quantizer="uniform"),
    "pwlq W3A8": dict(weight_bits=3, weight_quantizer="pwlq"),
    **{f"{q} W{b}A{b}": dict(weight_bits=b, activation_bits=b, activation_quantizer=q)
       for b in (4, 3, 2) for q in ("n2uq", "lsq")},
    **{f"n2uq/ch W{b}A{b}": dict(weight_bits=b, activation_bits=b, activation_quantizer="n2uq",
                                 n2uq_thresholds="per_channel") for b in (4, 3, 2)},
}
DEFAULT_MODELS = [name for name in RECIPES_PTQ]


def _weight_layers_in_order(model: torch.nn.Module) -> list[str]:
    """Module paths of the conv/linear layers in the order the traced graph calls them."""
    gm = torch.fx.symbolic_trace(model)
    mods = dict(model.named_modules())
    return [n.target for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(mods[n.target], (torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear))]


def _weight_bits_keeping_ends(model: torch.nn.Module, bits: int = 4) -> dict[str, int]:
    layers = _weight_layers_in_order(model)
    return {layers[0]: 8, layers[-1]: 8, "*": bits}


def _on_cortex_m4(art, xs: torch.Tensor) -> dict:
    """Bit-exactness on QEMU Cortex-M4 and the exact instruction count (``Artifact.measure``)."""
    try:
        mcu = art.measure(xs, cpu="cortex-m4", opt="-O2")
    except qcompile.VerificationError:
        return {"bit_exact_qemu_m4": "NO"}
    except Exception as exc:  # noqa: BLE001
        return {"bit_exact_qemu_m4": f"error: {type(exc).__name__}: {str(exc)[:120]}"}
    macs = art.report_data()["summary"]["macs"]
    return {"bit_exact_qemu_m4": "yes", "m4_instructions": mcu["instructions_per_inference"],
            "m4_flash_bytes": mcu["flash_bytes"], "macs": macs,
            "m4_instructions_per_mac": round(mcu["instructions_per_inference"] / max(macs, 1), 2)}


def row_config(row: str, model: torch.nn.Module, args) -> QuantConfig:
    """Row ``row``'s compile configuration for ``model`` (the mixed row's widths depend on it) on
    the run's calibration size and QAT epochs / learning rate."""
    kw = dict(ROWS[row])
    if kw.get("weight_bits") == "ends8":
        kw["weight_bits"] = _weight_bits_keeping_ends(model)
    return QuantConfig(**kw, max_calib_samples=args.samples, qat_epochs=args.epochs, qat_lr=args.lr,
                       qat_quantizer_lr_factor=args.quantizer_lr_factor)


def bench(model_name: str, rows: list[str], args) -> list[dict]:
    model, calib, x_test, y_test, float_top1, float_row = load_model(model_name, RECIPES_PTQ[model_name],
                                                                      args.samples, args.eval, args.eval_on)
    out = [float_row]
    with torch.no_grad():
        float_logits = predict(model, x_test)
    correct = {}  # row -> per-test-sample correctness, for the paired PWLQ/uniform counts
    for row in rows:
        cfg = row_config(row, model, args)
        t0 = time.perf_counter()
        art = qcompile.compile(model, (x_test[:1],), calib=calib, config=cfg, name="m", progress=args.progress)
        secs = time.perf_counter() - t0
        logits = art.run(x_test)
        with torch.no_grad():
            graph_logits = predict(art.graph, x_test)
        acc = top1(logits, y_test)
        correct[row] = logits.argmax(1) == y_test
        ops = art.program.ops
        rec = {
            "model": model_name, "row": row, "top1": round(acc, 2), "drop": round(float_top1 - acc, 2),
            "weight_flash_bytes": sum(ir.weight_storage_bytes(op) for op in ops),
            "threshold_bytes": sum(threshold_bytes(op) for op in ops if isinstance(op, (ir.Conv2D, ir.Dense))),
            "logit_mse_vs_float": float(f"{float((logits.double() - float_logits.double()).pow(2).mean()):.4g}"),
            "graph_top1": round(top1(graph_logits, y_test), 2),
            "interp_vs_graph_agreement": round(100.0 * float((logits.argmax(1) == graph_logits.argmax(1)).float().mean()), 2),
            "bit_exact_c_host": bit_exact_host(art, x_test[:args.verify]),
            "compile_seconds": round(secs, 1),
        }
        if args.qemu:
            rec.update(_on_cortex_m4(art, x_test[:args.verify]))
        qat = art.records.get("train_quantization_aware")
        if qat:
            rec["qat_loss_per_epoch"] = qat["loss_per_epoch"]
        for b in (4, 3):
            if row == f"pwlq W{b}A8" and f"uniform W{b}A8" in correct:
                rec["test_samples_only_this_right_vs_uniform"] = int((correct[row] & ~correct[f"uniform W{b}A8"]).sum())
                rec["test_samples_only_uniform_right"] = int((~correct[row] & correct[f"uniform W{b}A8"]).sum())
        out.append(rec)
        print(f"  {row:14s} top1 {acc:6.2f} (drop {rec['drop']:5.2f})  flash {rec['weight_flash_bytes']:7d} B"
              f"  thr {rec['threshold_bytes']:6d} B  agree {rec['interp_vs_graph_agreement']:6.2f}"
              f"  C {rec['bit_exact_c_host']}  M4 {rec.get('bit_exact_qemu_m4', '-')} "
              f"{rec.get('m4_instructions', '-')} instr  {secs:.0f}s", flush=True)
    return out


def table(results: list[dict]) -> str:
    lines = ["| model | row | top-1 (interpreter) | drop | weight flash B | threshold B | interp=graph % "
             "| bit-exact C host | bit-exact QEMU M4 | M4 instr | instr/MAC |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['row']} | {r['top1']:.2f} | {r['drop']:.2f} | {r.get('weight_flash_bytes', '')} "
                     f"| {r.get('threshold_bytes', '')} | {r.get('interp_vs_graph_agreement', '')} "
                     f"| {r.get('bit_exact_c_host', '')} | {r.get('bit_exact_qemu_m4', '')} "
                     f"| {r.get('m4_instructions', '')} | {r.get('m4_instructions_per_mac', '')} |")
    return "\n".join(lines)


def targets(results: list[dict]) -> dict[str, str]:
    by = {(r["model"], r["row"]): r for r in results}
    out = {}
    for m in sorted({r["model"] for r in results}):
        u, p = by.get((m, "uniform W4A8")), by.get((m, "pwlq W4A8"))
        if u and p:
            paired = ""
            if "test_samples_only_uniform_right" in p:
                paired = (f"; test samples only PWLQ / only uniform gets right: {p['test_samples_only_this_right_vs_uniform']}"
                          f" / {p['test_samples_only_uniform_right']}")
            if "logit_mse_vs_float" in p and "logit_mse_vs_float" in u:
                paired += f"; logit MSE vs float {p['logit_mse_vs_float']:.4g} vs {u['logit_mse_vs_float']:.4g}"
            out[f"pwlq W4 > uniform W4 on {m}"] = (f"{'met' if p['top1'] > u['top1'] else 'MISSED'} ({p['top1']:.2f} vs "
                                                   f"{u['top1']:.2f}{paired})")
        i8 = by.get((m, "int8"))
        if u and i8:
            ratio = u["weight_flash_bytes"] / i8["weight_flash_bytes"]
            out[f"W4A8 weight flash <= 0.55x int8 on {m}"] = f"{'met' if ratio <= 0.55 else 'MISSED'} ({ratio:.3f})"
            if u.get("m4_instructions_per_mac") and i8.get("m4_instructions_per_mac"):
                r = u["m4_instructions_per_mac"] / i8["m4_instructions_per_mac"]
                out[f"W4 instr/MAC <= 1.3x int8 on {m}"] = f"{'met' if r <= 1.3 else 'MISSED'} ({r:.2f})"
        f = by.get((m, "float"))
        for row in ("n2uq W2A2", "n2uq/ch W2A2"):
            n = by.get((m, row))
            if m.startswith("fashion") and f and n:
                drop = f["top1"] - n["top1"]
                out[f"{row} within 3 pts of float on {m}"] = f"{'met' if drop <= 3 else 'MISSED'} (drop {drop:.2f})"
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(RECIPES_PTQ))
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--samples", type=int, default=2048, help="training samples for calibration and QAT")
    ap.add_argument("--epochs", type=int, default=3, help="QAT epochs (N2UQ and LSQ alike)")
    ap.add_argument("--lr", type=float, default=1e-3, help="QAT learning rate of the weights")
    ap.add_argument("--quantizer-lr-factor", type=float, default=QuantConfig.qat_quantizer_lr_factor,
                    help="the quantizer parameters' learning rate is --lr times this")
    ap.add_argument("--eval", type=int, default=0, help="evaluation samples (0: all)")
    ap.add_argument("--eval-on", choices=("test", "heldout"), default="test",
                    help="heldout: evaluate on the training samples after the first --samples (to choose "
                         "settings without the test split)")
    ap.add_argument("--verify", type=int, default=8, help="samples for the host C check")
    ap.add_argument("--train", action="store_true", help="train models that are not cached")
    ap.add_argument("--no-qemu", dest="qemu", action="store_false",
                    help="skip the Cortex-M4 QEMU run (bit-exactness and instruction counts)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 when other jobs share the cores)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--merge", action="store_true", help="keep the (model, row) results already in --json that were not re-run")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    results, skipped = run_cached_models(args.models, RECIPES_PTQ, lambda name: bench(name, args.rows, args), args.train)
    if args.merge:
        results = merge_results(args.json, results)
    print_and_save("lowbit.py", argv, results, table, targets, args.json,
                   samples=args.samples, epochs=args.epochs, lr=args.lr,
                   quantizer_lr_factor=args.quantizer_lr_factor, eval_on=args.eval_on, skipped=skipped,
                   top1_on=evaluated_on(args.eval_on, args.samples))


if __name__ == "__main__":
    main()
