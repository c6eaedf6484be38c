"""Per-layer report of a compiled program: bits, scales, SQNR, bytes, MACs, arena offsets."""
from __future__ import annotations

import math
from typing import Any

from tabulate import tabulate

from qcompile.backends import ir
from qcompile.backends.memory_plan import MemoryPlan

__all__ = ["op_macs", "op_param_bytes", "layer_rows", "summary", "format_report", "pass_summary", "format_passes"]


def op_macs(program: ir.Program, op: ir.Op) -> int:
    """Multiply-accumulates of one inference of ``op`` (convolutions, dense, element-wise mul)."""
    out = program.tensors[op.output]
    if isinstance(op, ir.Conv2D):
        _, cig, kh, kw = op.weight.shape
        return out.size * cig * kh * kw
    if isinstance(op, ir.Dense):
        return int(op.weight.size)
    if isinstance(op, ir.Mul):
        return out.size
    return 0


def op_param_bytes(op: ir.Op) -> int:
    """Constant bytes ``op`` puts in flash, as the C backend stores them: Conv2D/Dense weights packed
    (4-/3-bit two per byte, 2-bit four per byte, codebook codes plus their int8 level tables) or in
    the int8/int16 kernel layouts, padded int32 bias and requantization records, thresholds; tables."""
    if isinstance(op, (ir.Conv2D, ir.Dense)):
        from qcompile.backends.c_lowbit import emitted_param_bytes

        return emitted_param_bytes(op)
    if isinstance(op, ir.Lut):
        return 256
    if isinstance(op, ir.Softmax):
        return 4 * 256
    if isinstance(op, ir.PRelu):
        return 8 * op.neg_multiplier.size
    return 0


def _fmt_db(v: float | None) -> str:
    if v is None:
        return "-"
    return "inf" if math.isinf(v) and v > 0 else f"{v:.1f}"


def layer_rows(program: ir.Program, plan: MemoryPlan, sqnr: dict[int, float]) -> list[dict[str, Any]]:
    """One dict per op, the data behind both the text table and report.json."""
    rows = []
    for i, op in enumerate(program.ops):
        out = program.tensors[op.output]
        if op.output in program.outputs:
            where = "output"
        elif plan.in_arena(op.output):
            where = plan.offsets[op.output]
        else:
            where = "-"
        rows.append({
            "index": i,
            "op": type(op).__name__,
            "name": op.name,
            "shape": list(out.shape),
            "w_bits": getattr(op, "w_bits", None),
            "a_bits": 8,
            "in_scale": program.tensors[op.inputs[0]].scale,
            "out_scale": out.scale,
            "out_zero_point": out.zero_point,
            "sqnr_db": sqnr.get(op.output),
            "param_bytes": op_param_bytes(op),
            "macs": op_macs(program, op),
            "arena_offset": where,
        })
    return rows


def summary(program: ir.Program, plan: MemoryPlan) -> dict[str, Any]:
    """Totals and the model boundary; ``outputs`` (every output, in return order) only when there
    are several (``output`` is then the first)."""
    extra: dict[str, Any] = {}
    if len(program.outputs) > 1:
        extra["outputs"] = [{"name": program.tensors[t].name, "shape": list(program.tensors[t].shape),
                             "scale": program.tensors[t].scale, "zero_point": program.tensors[t].zero_point}
                            for t in program.outputs]
    return extra | {
        "name": program.name,
        "ops": len(program.ops),
        "macs": sum(op_macs(program, op) for op in program.ops),
        "param_bytes": sum(op_param_bytes(op) for op in program.ops),
        "weight_storage_bytes": sum(ir.weight_storage_bytes(op) for op in program.ops),
        "arena_bytes": plan.arena_size,
        "arena_lower_bound": plan.lower_bound,
        "input": {"shape": list(program.input.shape), "scale": program.input.scale,
                  "zero_point": program.input.zero_point},
        "output": {"shape": list(program.output.shape), "scale": program.output.scale,
                   "zero_point": program.output.zero_point},
    }


def format_report(rows: list[dict[str, Any]], totals: dict[str, Any], fmt: str = "simple",
                  mcu: dict[str, Any] | None = None) -> str:
    headers = ["#", "op", "name", "shape", "w_bits", "a_bits", "s_in", "s_out", "zp_out", "SQNR dB",
               "params B", "MACs", "arena off"]
    body = [[r["index"], r["op"], r["name"], "x".join(map(str, r["shape"])), r["w_bits"] or "-", r["a_bits"],
             f"{r['in_scale']:.4g}", f"{r['out_scale']:.4g}", r["out_zero_point"], _fmt_db(r["sqnr_db"]),
             r["param_bytes"], r["macs"], r["arena_offset"]] for r in rows]
    if mcu is not None:
        headers.append(f"instr ({mcu['cpu']})")
        for line, r in zip(body, rows):
            line.append("-" if r.get("instructions") is None else r["instructions"])
    table = tabulate(body, headers=headers, tablefmt=fmt)
    lines = [
        f"model '{totals['name']}': {totals['ops']} ops, {totals['macs']:,} MACs, "
        f"{totals['param_bytes']:,} B constants (flash)"
        + (f", {totals['weight_storage_bytes']:,} B conv/linear weights as stored (packed)" if "weight_storage_bytes" in totals else ""),
        f"arena: {totals['arena_bytes']:,} B (lower bound for this op order: {totals['arena_lower_bound']:,} B)",
        f"input {totals['input']['shape']} scale={totals['input']['scale']:.6g} zp={totals['input']['zero_point']}; "
        f"output {totals['output']['shape']} scale={totals['output']['scale']:.6g} zp={totals['output']['zero_point']}",
    ]
    if "outputs" in totals:
        lines.append(f"{len(totals['outputs'])} outputs, in return order: " + "; ".join(
            f"{o['name']} {o['shape']} scale={o['scale']:.6g} zp={o['zero_point']}" for o in totals["outputs"]))
    if mcu is not None:
        per_mac = mcu["instructions_per_inference"] / max(totals["macs"], 1)
        lines.append(
            f"{mcu['cpu']} {mcu['opt']} (QEMU, instructions not cycles): {mcu['instructions_per_inference']:,} "
            f"instructions per inference ({per_mac:.2f} per MAC); flash {mcu['flash_bytes']:,} B (text+data, "
            f"harness included), static RAM {mcu['static_ram_bytes']:,} B (data+bss, arena included)"
        )
    return table + "\n\n" + "\n".join(lines)


def _bits(bits: int | str) -> str:
    return f"{bits}-bit" if isinstance(bits, int) else f"{bits} bits"


def pass_summary(records: dict[str, Any]) -> dict[str, Any]:
    """What the quantization passes did, JSON-friendly (the "passes" section of report.json)."""
    out: dict[str, Any] = {}
    for name in ("equalize_cross_layer", "absorb_high_bias", "split_outlier_channels", "allocate_weight_bits",
                 "quantize_weights", "quantize_weights_piecewise", "optimize_weight_rounding", "correct_bias"):
        if name in records:
            out[name] = records[name]
    if "calibrate" in records:
        out["calibrate"] = {k: v for k, v in records["calibrate"].items() if k != "qparams"}
    return out


def format_passes(records: dict[str, Any], weight_bytes: int | None = None) -> str:
    """One line per quantization pass: what it changed. ``weight_bytes``: the program's weight
    flash as stored, shown next to the flash budget."""
    p = pass_summary(records)
    lines = ["passes:"]
    if "equalize_cross_layer" in p:
        r = p["equalize_cross_layer"]
        if not r.get("enabled"):
            lines.append("  equalize_cross_layer: off")
        else:
            r6 = ", ".join(f"{d['node']}: {d['action']}" for d in r["relu6"]) or "none"
            lines.append(f"  equalize_cross_layer: {len(r['pairs'])} pairs, {r['sweeps']} sweeps; ReLU6: {r6}")
    if "absorb_high_bias" in p:
        r = p["absorb_high_bias"]
        lines.append("  absorb_high_bias: off" if not r.get("enabled") else
                     f"  absorb_high_bias: {len(r['pairs'])} pairs, "
                     f"{sum(x['channels'] for x in r['pairs'])} channels")
    if "split_outlier_channels" in p:
        r = p["split_outlier_channels"]
        lines.append("  split_outlier_channels: off" if not r.get("enabled") else
                     f"  split_outlier_channels: ratio {r['ratio']}, {sum(x['split'] for x in r['pairs'])} channels "
                     f"split in {len(r['pairs'])} pairs, +{r['extra_macs']:,} MACs, +{r['extra_bytes']:,} B")
    if "allocate_weight_bits" in p:
        r = p["allocate_weight_bits"]
        widths = ", ".join(f"{k}: {v}" for k, v in r["bits"].items())
        achieved = f"{weight_bytes:,} B weight flash" if weight_bytes is not None else f"{r['allocated_bytes']:,} B"
        lines.append(f"  allocate_weight_bits: {r['method']}, budget {r['flash_budget']:,} B, {achieved}; bits {widths}")
        if r["method"] == "dual_variables" and r.get("scores"):
            lines.append("    dual variables: " + ", ".join(f"{k}: {v:.4g}" for k, v in r["scores"].items()))
    if "quantize_weights" in p and isinstance(p["quantize_weights"], dict) and "bits" in p["quantize_weights"]:
        r = p["quantize_weights"]
        lines.append(f"  quantize_weights: {len(r['layers'])} layers, {_bits(r['bits'])} "
                     f"{'per-channel' if r['per_channel'] else 'per-tensor'}")
    if "quantize_weights_piecewise" in p:
        r = p["quantize_weights_piecewise"]
        mean_p = sum(r["mean_breakpoint"].values()) / max(len(r["mean_breakpoint"]), 1)
        lines.append(f"  quantize_weights_piecewise: {len(r['mean_breakpoint'])} layers, {_bits(r['bits'])} codes, "
                     f"mean breakpoint p/m {mean_p:.3f}")
    if "optimize_weight_rounding" in p:
        r = p["optimize_weight_rounding"]
        by: dict[str, int] = {}
        for layer in r["layers"].values():
            by[layer["method"]] = by.get(layer["method"], 0) + 1
        kept = sum(layer["kept_nearest"] for layer in r["layers"].values())
        err = [(layer["error_nearest"], layer["error_optimized"]) for layer in r["layers"].values()]
        ratio = sum(a for _, a in err) / max(sum(b for b, _ in err), 1e-12)
        pairs = sum("block" in layer for layer in r["layers"].values()) // 2
        lines.append(f"  optimize_weight_rounding: {', '.join(f'{k} {v} layers' for k, v in by.items())}"
                     + (f" ({pairs} depthwise pair{'s' * (pairs != 1)} block-wise)" if pairs else "") + ", "
                     f"{r['iters']} iterations on {r['samples']} samples, seed {r['seed']}, {r['seconds']:.1f} s; "
                     f"layer output error x{ratio:.2f} of nearest; {kept} kept nearest")
    if "correct_bias" in p:
        r = p["correct_bias"]
        lines.append(f"  correct_bias: {r['mode']}" + (f", {r['layers']} layers" if "layers" in r else ""))
    return "\n".join(lines) if len(lines) > 1 else ""
