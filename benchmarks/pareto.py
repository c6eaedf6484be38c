"""Accuracy vs weight flash across quantization methods, from the results other benchmarks wrote.

Reads ``benchmarks/results/lowbit_ptq.json`` (int8, mixed, uniform and PWLQ W4/W3) and
``ptq_seeds.json`` (nearest / AdaRound / Attention Round at W4/W3 and the flash-budget bit
allocations); every row with ``weight_flash_bytes`` (conv/linear weights as stored, packed) and a
top-1 is a point. For each model it marks the Pareto front (no other method is both smaller and
more accurate), draws ``benchmarks/results/pareto_<source>.png`` (one panel per model, the float
top-1 dashed) and prints and saves the fronts in ``benchmarks/results/pareto.json``.

    python benchmarks/pareto.py [--sources lowbit_ptq ptq_seeds] [--json benchmarks/results/pareto.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from bench_common import print_and_save
from tabulate import tabulate

RESULTS = Path(__file__).resolve().parent / "results"


def points(results: list[dict]) -> dict[str, list[dict]]:
    """``{model: [{"method", "flash", "top1"}, ...]}`` of every row with a flash size and a top-1."""
    out: dict[str, list[dict]] = {}
    for r in results:
        if isinstance(r.get("weight_flash_bytes"), (int, float)) and isinstance(r.get("top1"), (int, float)):
            out.setdefault(r["model"], []).append({"method": r["row"], "flash": int(r["weight_flash_bytes"]),
                                                   "top1": float(r["top1"])})
    return out


def pareto_front(pts: list[dict]) -> list[dict]:
    """Points no other point dominates (smaller-or-equal flash and higher-or-equal top-1, one strictly),
    by increasing flash."""
    front = [p for p in pts if not any(q["flash"] <= p["flash"] and q["top1"] >= p["top1"]
                                       and (q["flash"] < p["flash"] or q["top1"] > p["top1"]) for q in pts)]
    return sorted(front, key=lambda p: (p["flash"], -p["top1"], p["method"]))


def plot(source: str, by_model: dict[str, list[dict]], floats: dict[str, float], path: Path) -> None:
    from matplotlib.figure import Figure

    n = len(by_model)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5 * cols, 3.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    methods = sorted({p["method"] for pts in by_model.values() for p in pts})
    markers = "osD^v<>PXh*"
    for ax, (model, pts) in zip(axes, by_model.items()):
        for i, m in enumerate(methods):
            sel = [p for p in pts if p["method"] == m]
            if sel:
                ax.scatter([p["flash"] for p in sel], [p["top1"] for p in sel], marker=markers[i % len(markers)],
                           label=m, s=30, zorder=3)
        front = pareto_front(pts)
        ax.step([p["flash"] for p in front], [p["top1"] for p in front], where="post", color="#333",
                linewidth=1, zorder=2, label="Pareto front")
        if model in floats:
            ax.axhline(floats[model], color="#888", linestyle="--", linewidth=0.8, label="float")
            floor = floats[model] - 8.0  # keep the interesting band readable; say what falls below it
            below = [p for p in pts if p["top1"] < floor]
            if below:
                top = max(max(p["top1"] for p in pts), floats[model]) + 0.5
                ax.set_ylim(floor, top)
                ax.text(0.02, 0.03, "below the axis: " + ", ".join(f"{p['method']} {p['top1']:.1f}" for p in below),
                        transform=ax.transAxes, fontsize=7, color="#a00")
        ax.set_title(model)
        ax.set_xlabel("conv/linear weight flash as stored (bytes)")
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.suptitle(f"Accuracy vs weight flash ({source}.json)")
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) // 6), 1, 0.97))
    fig.savefig(path, dpi=110, metadata={"Software": None})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", nargs="+", default=["lowbit_ptq", "ptq_seeds"],
                    help="result files (without .json) in benchmarks/results")
    ap.add_argument("--json", type=Path, help="write the Pareto fronts here")
    args = ap.parse_args(argv)
    fronts: list[dict] = []
    for source in args.sources:
        path = RESULTS / f"{source}.json"
        if not path.is_file():
            sys.exit(f"{path}: no such results file; run the benchmark that writes it first")
        results = json.loads(path.read_text())["results"]
        by_model = points(results)
        if not by_model:
            sys.exit(f"{path}: no rows with weight_flash_bytes and top1")
        floats = {r["model"]: r["top1"] for r in results if r.get("row") == "float"}
        png = RESULTS / f"pareto_{source}.png"
        plot(source, by_model, floats, png)
        print(f"wrote {png}")
        for model, pts in by_model.items():
            for p in pareto_front(pts):
                fronts.append({"source": source, "model": model, **p, "float_top1": floats.get(model)})

    def table(rows: list[dict]) -> str:
        return tabulate([[r["source"], r["model"], r["method"], f"{r['flash']:,}", f"{r['top1']:.2f}",
                          "-" if r["float_top1"] is None else f"{r['float_top1'] - r['top1']:.2f}"] for r in rows],
                        headers=["source", "model", "method on the front", "weight flash B", "top-1", "drop"])

    def targets(rows: list[dict]) -> dict[str, str]:
        models = sorted({(r["source"], r["model"]) for r in rows})
        return {"models": str(len(models)), "front points": str(len(rows))}

    print_and_save("pareto.py", argv, fronts, table, targets, args.json,
                   sources=[f"benchmarks/results/{s}.json" for s in args.sources],
                   plots=[f"benchmarks/results/pareto_{s}.png" for s in args.sources])


if __name__ == "__main__":
    main()
