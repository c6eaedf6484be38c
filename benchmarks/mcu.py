"""Cortex-M4 cost of the generated C: instructions per inference, flash, arena, accuracy, bit-exactness.

Run from the repository root (after ``pip install -e .``, with ``gcc-arm-none-eabi
libnewlib-arm-none-eabi qemu-system-arm`` installed)::

    python benchmarks/mcu.py --json benchmarks/results/mcu.json

For every model: MACs (convolutions and Dense), instructions of one inference on QEMU
``mps2-an386`` (Cortex-M4, exact counts, see ``backends/qemu.py``) built at ``-O2`` and ``-Os``,
instructions per MAC, flash (``arm-none-eabi-size`` text + data of the whole firmware) and the
bytes of the model's constant arrays (weights are stored one byte each where the int8 GEMM layout
is proved exact, see ``qc_kernels.h``), the arena (bytes, with the kernel scratch) next to the
memory plan's lower bound and their ratio (target <= 1.05), whether the outputs equal the
interpreter's bit for bit (on 4 inputs), and for the MLPerf and Fashion models the share of int8 output
elements within 1 LSB of the float model's output quantized with the output scale / zero point
(64 synthetic inputs; target >= 95 %) and the same share for the vendor's int8 ``.tflite`` run in
TFLite Micro on the same inputs (its dequantized outputs quantized with our output scale and zero
point). Next to them the TFLite Micro + CMSIS-NN anchors of
``shared/ANCHORS.md`` (same emulator, same counting method, the vendor's int8 models) and the
published MLPerf Tiny latencies on a 120 MHz Cortex-M4 converted to cycles (cycles are not
instructions: orientation only).

Models: the 8 test-zoo models (``tests/zoo_models.py``, random weights), the 4 MLPerf Tiny
models with their real pretrained weights (``qcompile.zoo.mlperf_tiny``, fetched once and cached),
calibrated on 256 synthetic inputs, and the Fashion-MNIST models of ``benchmarks/ptq.py``
(plain CNN, ResNet- and MobileNet-style; loaded from its cache, trained otherwise), calibrated on
256 training images, the within-1-LSB share measured on 64 test images.
``--weight-bits 4 [--weight-quantizer uniform pwlq]`` also compiles every model with
``QuantConfig(weight_bits=4, weight_quantizer=...)`` (packed 4-bit weights, or PWLQ codebooks, in
the generated C) and prints weight flash and instructions per MAC against the int8 build, with the
issue 5 targets (W4 weight flash <= 0.55 x int8, instructions per MAC <= 1.3 x int8).
``--profile`` adds per-operator instruction counts (one QEMU region per kernel call) to the JSON
and prints them for the MLPerf models. ``--baseline REV`` also measures the portable kernels of
git revision REV (e.g. the commit before the fast kernels) for a before/after column.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tabulate import tabulate

try:
    import qcompile
    from qcompile.backends import ir
    from qcompile.backends.c_emitter import emit_c
    from qcompile.backends.c_layout import analyze
    from qcompile.backends.qemu import run_c_qemu, toolchain_available
except ImportError as exc:  # pragma: no cover - only without an install
    sys.exit(f"cannot import qcompile ({exc}); run `pip install -e .` in the repository root first")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # ptq.py's Fashion-MNIST recipes

# shared/ANCHORS.md: TFLM + CMSIS-NN on the same QEMU board, arm-none-eabi-gcc 12.2, Cortex-M4.
ANCHORS = {
    "resnet8": {"macs": 12_501_632, "tflm_cmsis_O2": 29_869_657, "tflm_cmsis_Os": 41_075_287,
                "tflm_ref_O2": 107_543_765, "tflm_arena": 54_996, "tflm_code": 85_380},
    "dscnn": {"macs": 2_656_768, "tflm_cmsis_O2": 7_715_614, "tflm_cmsis_Os": 9_251_920,
              "tflm_ref_O2": 43_232_643, "tflm_arena": 22_944, "tflm_code": 93_016},
    "mobilenetv1_025": {"macs": 7_489_664, "tflm_cmsis_O2": 24_987_053, "tflm_cmsis_Os": 29_912_120,
                        "tflm_ref_O2": 101_362_709, "tflm_arena": 165_344, "tflm_code": 93_016},
    "fc_autoencoder": {"macs": 264_192, "tflm_cmsis_O2": 675_732, "tflm_cmsis_Os": 947_254,
                       "tflm_ref_O2": 2_043_218, "tflm_arena": 5_616, "tflm_code": 53_896},
}
TARGETS = {"resnet8": 15_000_000, "dscnn": 3_500_000}
# shared/ANCHORS.md: MLPerf Tiny v1.0/v1.1 closed division, NUCLEO-L4R5ZI (Cortex-M4 at 120 MHz), ms.
PUBLISHED_MS = {
    "resnet8": {"tflm_reference": 704.0, "tflm_microtvm_cmsis_nn": 390.0, "x_cube_ai": 214.0, "plumerai": 168.0},
    "dscnn": {"tflm_reference": 182.0, "tflm_microtvm_cmsis_nn": 99.8, "x_cube_ai": 62.9, "plumerai": 47.8},
}
CLOCK_HZ = 120_000_000
LSB_SAMPLES = 64
LSB_TARGET = 0.95
ARENA_TARGET = 1.05
_CTYPE_BYTES = {"int8_t": 1, "uint8_t": 1, "int32_t": 4, "uint32_t": 4, "qc_rq": 12}
W4_FLASH_TARGET = 0.55   # issue 5: W4A8 weight flash <= 0.55 x the int8 weight flash
W4_IPM_TARGET = 1.3      # issue 5: int4 kernels <= 1.3 x the int8 instructions per MAC


def count_macs(program: ir.Program) -> int:
    macs = 0
    for op in program.ops:
        if isinstance(op, ir.Conv2D):
            out = program.tensors[op.output]
            macs += out.size * int(np.prod(op.weight.shape[1:]))
        elif isinstance(op, ir.Dense):
            macs += int(op.weight.size)
    return macs


def const_bytes(source: str) -> int:
    """Bytes of the ``static const`` arrays of a generated model (weights, biases, tables)."""
    return sum(_CTYPE_BYTES[t] * int(n) for t, n in re.findall(r"static const (\w+) \w+\[(\d+)\]", source))


def weight_bytes(source: str) -> int:
    """Bytes of the weight arrays of a generated model as stored: packed values or codes
    (``*_weight``, ``*_packed``) and codebook level tables (``*_levels``, ``*_level_rows``); no bias,
    rq or thresholds."""
    return sum(_CTYPE_BYTES[t] * int(n) for t, n in
               re.findall(r"static const (\w+) \w+_(?:weight|packed|levels|level_rows)(?:_\d+)?\[(\d+)\]", source))


MLPERF = ("resnet8", "dscnn", "fc_autoencoder", "mobilenetv1_025")
FASHION = ("fashion_plain", "fashion_resnet", "fashion_mobilenet")  # benchmarks/ptq.py's trained models


def _fashion(name: str):
    """(recipe, data) of a Fashion-MNIST model of ``benchmarks/ptq.py``."""
    from ptq import RECIPES_PTQ

    recipe = RECIPES_PTQ[name]
    return recipe, _fashion_data(recipe.data_fn)


_DATA: dict[Any, Any] = {}


def _fashion_data(data_fn):
    if data_fn not in _DATA:
        _DATA[data_fn] = data_fn()
    return _DATA[data_fn]


def models(names: list[str] | None) -> list[tuple[str, torch.nn.Module, tuple[int, ...], str]]:
    """(name, model, input shape, origin) of the requested models (all when ``names`` is empty)."""
    from zoo_models import ZOO, build

    out = [(name, *build(name), "test zoo, random") for name in sorted(ZOO) if not names or name in names]
    wanted = [n for n in MLPERF if not names or n in names]
    if wanted:
        from qcompile.zoo import mlperf_tiny as mt  # real pretrained weights (fetched once, cached)

        for name in wanted:
            model, shape = mt.load_mlperf_tiny(name)
            out.append((name, model.eval(), shape, "MLPerf Tiny, pretrained"))
    for name in (n for n in FASHION if not names or n in names):
        from qcompile.zoo import load_or_train  # cached by benchmarks/ptq.py (trained here otherwise)

        recipe, data = _fashion(name)
        model, _ = load_or_train(recipe, data, progress=False)
        out.append((name, model.eval(), tuple(data[0].shape[1:]), "Fashion-MNIST, trained (benchmarks/ptq.py)"))
    return out


def calibration(name: str, shape: tuple[int, ...], n: int, seed: int = 1, split: str = "train") -> torch.Tensor:
    """MLPerf models: ``synthetic_inputs(name, n, seed)``; Fashion-MNIST models: the first ``n``
    images of the ``split`` (train or test); zoo models: normal samples."""
    if name in MLPERF:
        from qcompile.zoo import mlperf_tiny as mt

        return mt.synthetic_inputs(name, n, seed=seed).float()
    if name in FASHION:
        x_train, _, x_test, _ = _fashion(name)[1]
        return (x_test if split == "test" else x_train)[:n].float()
    torch.manual_seed(seed)
    return torch.randn(n, *shape)


def _float_reference(art, model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """The float model's outputs quantized with the compiled output scale and zero point (int64)."""
    out = art.program.output
    with torch.no_grad():
        y = model(x).reshape(len(x), -1).double().numpy()
    return np.clip(np.round(y / out.scale) + out.zero_point, -128, 127).astype(np.int64)


def within_one_lsb(art, model: torch.nn.Module, x: torch.Tensor) -> float:
    """Share of int8 output elements of ``art.run_int`` within 1 LSB of the float model's output
    quantized with the compiled output scale and zero point."""
    ref = _float_reference(art, model, x)
    got = np.asarray(art.run_int(art.quantize_input(x))).reshape(len(x), -1).astype(np.int64)
    return float(np.mean(np.abs(got - ref) <= 1))


def vendor_within_one_lsb(name: str, art, model: torch.nn.Module, x: torch.Tensor) -> float:
    """The same share for the vendor's int8 ``.tflite`` (TFLite Micro) on the same inputs: its
    dequantized outputs quantized with *our* output scale and zero point, exactly like the float
    model's."""
    from qcompile.zoo import mlperf_tiny as mt

    out = art.program.output
    y = np.asarray(mt.run_vendor_tflite(name, x), dtype=np.float64).reshape(len(x), -1)
    got = np.clip(np.round(y / out.scale) + out.zero_point, -128, 127).astype(np.int64)
    return float(np.mean(np.abs(got - _float_reference(art, model, x)) <= 1))


def baseline_emitter(rev: str, workdir: Path):
    """``emit_c`` of git revision ``rev`` (its emitter and runtime, today's IR and planner)."""
    tree = workdir / "baseline"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), rev],
                       check=True, capture_output=True)
    spec = importlib.util.spec_from_file_location("qc_baseline_emitter", tree / "backends" / "c_emitter.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module.emit_c, tree


def measure(name: str, model, shape, origin: str, args, base, weight_bits: int = 8,
            weight_quantizer: str = "uniform") -> dict[str, Any]:
    """One model under one weight configuration; low-bit configurations (``weight_bits < 8`` or a
    non-uniform quantizer) are measured at -O2 only, without the vendor and baseline columns."""
    lowbit = weight_bits != 8 or weight_quantizer != "uniform"
    calib = calibration(name, shape, 256 if name in MLPERF or name in FASHION else 32)
    config = qcompile.QuantConfig(weight_bits=weight_bits, weight_quantizer=weight_quantizer)
    art = qcompile.compile(model, (calib[:1],), calib=calib, name=name, progress=False, config=config)
    program, plan = art.program, art.plan
    xq = art.quantize_input(calibration(name, shape, 4, seed=2) * 1.3)
    expected = art.run_int(xq)
    row: dict[str, Any] = {"model": name, "origin": origin, "macs": count_macs(program),
                           "config": f"W{weight_bits} {weight_quantizer}"}
    sources = emit_c(program, plan, name)
    row["weight_bytes"] = weight_bytes(sources[f"{name}.c"])
    row["lowbit_layers"] = sum(1 for op in program.ops if isinstance(op, (ir.Conv2D, ir.Dense))
                               and (op.w_bits < 8 or op.codebook is not None))
    for opt in ("-O2",) if lowbit else ("-O2", "-Os"):
        run = run_c_qemu(program, plan, xq, name=name, cpu="cortex-m4", opt=opt, sources=sources)
        key = opt[1:]
        row[f"instr_{key}"] = run.instructions[0]
        row[f"bit_exact_{key}"] = bool(np.array_equal(run.outputs, expected))
        row[f"flash_{key}"] = run.text_bytes + run.data_bytes
    row["instr_per_mac"] = round(row["instr_O2"] / max(row["macs"], 1), 3)
    row["const_bytes"] = const_bytes(sources[f"{name}.c"])
    row["weights_int8_bytes"] = int(sum(op.weight.size for op in program.ops if hasattr(op, "weight")))
    layout = analyze(program, plan)
    row["arena"] = layout.arena_size
    row["arena_plan"] = plan.arena_size
    row["arena_lower_bound"] = plan.lower_bound
    row["arena_vs_lower_bound"] = round(layout.arena_size / max(plan.lower_bound, 1), 4)
    if name in MLPERF or name in FASHION:
        x_lsb = calibration(name, shape, LSB_SAMPLES, seed=3, split="test")
        row["within_1lsb"] = round(within_one_lsb(art, model, x_lsb), 5)
    if lowbit:
        return row
    if name in MLPERF:
        try:
            row["vendor_within_1lsb"] = round(vendor_within_one_lsb(name, art, model, x_lsb), 5)
        except Exception as exc:  # noqa: BLE001 - the vendor run needs tflite-micro; say why it is missing
            row["vendor_within_1lsb_error"] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"{name}: vendor tflite run failed: {row['vendor_within_1lsb_error']}", file=sys.stderr)
    if name in PUBLISHED_MS:
        row["published_cycles_120MHz"] = {k: round(ms * CLOCK_HZ / 1000) for k, ms in PUBLISHED_MS[name].items()}
    if args.profile:
        prof = run_c_qemu(program, plan, xq[:1], name=name, cpu="cortex-m4", profile=True)
        row["per_op_O2"] = [{"op": op, "instructions": c} for op, c in prof.op_instructions[0]]
    if base is not None:
        base_emit, _ = base
        run = run_c_qemu(program, plan, xq[:1], name=name, cpu="cortex-m4", sources=base_emit(program, plan, name))
        row["baseline_instr_O2"] = run.instructions[0]
    if name in ANCHORS:
        row.update({f"anchor_{k}": v for k, v in ANCHORS[name].items()})
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--models", nargs="*", help="only these models")
    ap.add_argument("--real", action="store_true", help="(default now) MLPerf Tiny models use their pretrained weights")
    ap.add_argument("--profile", action="store_true", help="per-operator instruction counts")
    ap.add_argument("--baseline", metavar="REV", help="also measure the kernels of git revision REV")
    ap.add_argument("--weight-bits", type=int, default=8,
                    help="also compile every model with QuantConfig(weight_bits=N) and compare weight flash and "
                         "instructions per MAC with the int8 build (issue 5 targets)")
    ap.add_argument("--weight-quantizer", nargs="+", default=["uniform"], choices=["uniform", "pwlq"],
                    help="weight quantizers of the low-bit builds (e.g. uniform pwlq)")
    args = ap.parse_args(argv)
    if not toolchain_available():
        sys.exit("needs arm-none-eabi-gcc, arm-none-eabi-size and qemu-system-arm")
    rows = []
    with tempfile.TemporaryDirectory(prefix="qc_mcu_") as tmp:
        base = baseline_emitter(args.baseline, Path(tmp)) if args.baseline else None
        try:
            for name, model, shape, origin in models(args.models):
                rows.append(measure(name, model, shape, origin, args, base))
                print(f"{name}: {rows[-1]['instr_O2']:,} instructions (-O2)", file=sys.stderr)
                for q in args.weight_quantizer if args.weight_bits != 8 or args.weight_quantizer != ["uniform"] else ():
                    low = measure(name, model, shape, origin, args, None, args.weight_bits, q)
                    ref = rows[-1]
                    low["weight_flash_vs_int8"] = round(low["weight_bytes"] / max(ref["weight_bytes"], 1), 4)
                    low["weight_flash_vs_1byte"] = round(low["weight_bytes"] / max(ref["weights_int8_bytes"], 1), 4)
                    low["instr_per_mac_vs_int8"] = round(low["instr_per_mac"] / ref["instr_per_mac"], 4)
                    ref.setdefault("lowbit", []).append(low)
                    print(f"{name} {low['config']}: {low['instr_O2']:,} instructions (-O2)", file=sys.stderr)
        finally:
            if base is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base[1])],
                               capture_output=True)
    table = []
    for r in rows:
        a = ANCHORS.get(r["model"], {})
        table.append([
            r["model"], r["macs"], r.get("baseline_instr_O2", ""), r["instr_O2"], r["instr_per_mac"], r["instr_Os"],
            a.get("tflm_cmsis_O2", ""), a.get("tflm_cmsis_Os", ""), a.get("tflm_ref_O2", ""),
            f"{a['tflm_cmsis_O2'] / r['instr_O2']:.2f}x" if a else "",
            r["flash_O2"], r["flash_Os"], r["const_bytes"], r["arena"], r["arena_lower_bound"],
            f"{r['arena_vs_lower_bound']:.3f}", a.get("tflm_arena", ""),
            f"{100 * r['within_1lsb']:.2f}%" if "within_1lsb" in r else "",
            f"{100 * r['vendor_within_1lsb']:.2f}%" if "vendor_within_1lsb" in r
            else ("failed" if "vendor_within_1lsb_error" in r else ""),
            "yes" if r["bit_exact_O2"] and r["bit_exact_Os"] else "NO",
        ])
    print(tabulate(table, headers=["model", "MACs", "before -O2", "instr -O2", "instr/MAC", "instr -Os",
                                   "TFLM+CMSIS -O2", "TFLM+CMSIS -Os", "TFLM ref -O2", "speedup vs TFLM",
                                   "flash -O2", "flash -Os", "const bytes", "arena", "lower bound",
                                   "arena/bound", "TFLM arena", "within 1 LSB", "vendor within 1 LSB", "bit-exact"],
                   intfmt=",", tablefmt="github"))
    lowbit = [(r, low) for r in rows for low in r.get("lowbit", [])]
    if lowbit:
        print("\nLow-bit weights vs int8 (Cortex-M4, -O2; weight bytes = the emitted weight / packed / codebook "
              "arrays; int8 depthwise weights are stored as int16 pairs):")
        print(tabulate([[r["model"], low["config"], low["lowbit_layers"], r["weight_bytes"], r["weights_int8_bytes"],
                         low["weight_bytes"], f"{low['weight_flash_vs_int8']:.3f}", f"{low['weight_flash_vs_1byte']:.3f}",
                         r["instr_O2"], low["instr_O2"], r["instr_per_mac"], low["instr_per_mac"],
                         f"{low['instr_per_mac_vs_int8']:.3f}", low["flash_O2"],
                         f"{100 * low['within_1lsb']:.2f}%" if "within_1lsb" in low else "",
                         "yes" if low["bit_exact_O2"] else "NO"] for r, low in lowbit],
                       headers=["model", "config", "low-bit layers", "int8 weight B", "weights (1 B each)",
                                "weight B", "vs int8", "vs 1 B/weight", "int8 instr", "instr -O2", "int8 instr/MAC",
                                "instr/MAC", "vs int8", "flash -O2", "within 1 LSB", "bit-exact"],
                       intfmt=",", tablefmt="github"))
    published = [r for r in rows if "published_cycles_120MHz" in r]
    if published:
        print("\nPublished MLPerf Tiny latencies (Cortex-M4 @ 120 MHz) as cycles, next to our instructions "
              "(instructions are not cycles):")
        names = list(next(iter(published))["published_cycles_120MHz"])
        print(tabulate([[r["model"], r["instr_O2"], *(r["published_cycles_120MHz"][k] for k in names)]
                        for r in published], headers=["model", "ours (instr -O2)", *names],
                       intfmt=",", tablefmt="github"))
    for r in rows:
        if args.profile and r["model"] in ANCHORS:
            print(f"\n{r['model']} per operator (-O2):")
            print(tabulate([[p["op"], p["instructions"]] for p in r["per_op_O2"]], headers=["op", "instructions"],
                           intfmt=","))
    misses = [f"{r['model']} {r['instr_O2']:,} > {TARGETS[r['model']]:,}" for r in rows
              if r["model"] in TARGETS and r["instr_O2"] > TARGETS[r["model"]]]
    misses += [f"{r['model']} within 1 LSB {100 * r['within_1lsb']:.2f}% < {100 * LSB_TARGET:.0f}%"
               + (f" (vendor int8 tflite: {100 * r['vendor_within_1lsb']:.2f}%)" if "vendor_within_1lsb" in r else "")
               for r in rows if r.get("within_1lsb", 1.0) < LSB_TARGET]
    misses += [f"{r['model']} arena {r['arena_vs_lower_bound']:.3f}x lower bound > {ARENA_TARGET}" for r in rows
               if (r["model"] in MLPERF or r["model"] in FASHION) and r["arena_vs_lower_bound"] > ARENA_TARGET]
    for r, low in lowbit:
        if low["config"].endswith("uniform") and low["config"].startswith("W4"):
            if low["weight_flash_vs_int8"] > W4_FLASH_TARGET:
                misses.append(f"{r['model']} {low['config']} weight flash {low['weight_flash_vs_int8']:.3f}x int8")
            if low["instr_per_mac_vs_int8"] > W4_IPM_TARGET:
                misses.append(f"{r['model']} {low['config']} instr/MAC {low['instr_per_mac_vs_int8']:.3f}x int8")
    if misses:
        print("\nabove target: " + "; ".join(misses))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
                "torch": torch.__version__, "cpu": "cortex-m4 (QEMU mps2-an386)",
                "gcc": subprocess.run(["arm-none-eabi-gcc", "-dumpversion"], capture_output=True,
                                      text=True).stdout.strip()}
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    ok = all(r["bit_exact_O2"] and r["bit_exact_Os"] for r in rows) and all(low["bit_exact_O2"] for _, low in lowbit)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
