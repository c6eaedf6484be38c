"""How much of a gap on the MNIST-1D test split is sampling noise: PTQ rows of ``ptq_seeds.py`` and
``lowbit.py`` re-compiled exactly as those benchmarks compile them, scored on the 1,000-sample
test split *and* on freshly generated MNIST-1D samples.

Run from the repository root::

    python benchmarks/fresh_mnist1d.py --rows "ptq_seeds:W3A8 adaround" "ptq_seeds:W3A8 attention_round" \\
        --models mnist1d_dscnn --json benchmarks/results/fresh_mnist1d.json

MNIST-1D (Greydanus 2020) is procedural: the published set is the generator's output at seed 42
(4,000 training / 1,000 test samples, what every benchmark here trains and scores on). The
generator at seeds 1, 2, ... gives further samples of the same distribution, 5,000 per seed (its
train and test parts alike; ``--fresh`` of them, default 20,000); no model, calibration or choice
ever sees them. With 1,000 test samples one sample is 0.1 point and the standard error of a
98 % top-1 is about 0.44 points; on 20,000 it is about 0.1.

Rows are ``<benchmark>:<row>`` with the row's configuration taken from that benchmark
(``ptq_seeds.ROUNDING_ROWS`` on the first 1,024 training samples with 1,000 rounding steps;
``lowbit.ROWS``' PTQ rows on the first 2,048), so the test-split top-1 reproduces the committed
figure (``test_committed``, read from ``benchmarks/results/<benchmark>.json`` /
``lowbit_ptq.json``). Per model, every pair of rows gets the number of fresh samples only the first
/ only the second gets right (a paired comparison: what a difference in top-1 is made of).
Top-1 always through the integer interpreter (``Artifact.run``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qcompile  # noqa: E402
from qcompile.config import QuantConfig  # noqa: E402
from qcompile.zoo import predict  # noqa: E402
from qcompile.zoo.datasets import load_mnist1d  # noqa: E402

import lowbit  # noqa: E402
import ptq_seeds  # noqa: E402
from bench_common import load_model, print_and_save, top1  # noqa: E402
from ptq import RECIPES_PTQ  # noqa: E402

__all__ = ["fresh_samples", "row_config", "main"]

RESULTS = Path(__file__).resolve().parent / "results"
MNIST1D_MODELS = [m for m in RECIPES_PTQ if m.startswith("mnist1d")]
PTQ_LOWBIT_ROWS = [r for r in lowbit.ROWS if r.endswith("A8")]


def fresh_samples(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples of the MNIST-1D generator at seeds 1, 2, ... (5,000 per seed: its
    training then its test part); never the published seed-42 set."""
    xs, ys, seed = [], [], 1
    while sum(len(x) for x in xs) < n:
        x_tr, y_tr, x_te, y_te = load_mnist1d(seed=seed)
        xs += [x_tr, x_te]
        ys += [y_tr, y_te]
        seed += 1
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def row_config(spec: str) -> tuple[QuantConfig, int, Path]:
    """``(config, calibration samples, committed results JSON)`` of ``<benchmark>:<row>``, as that
    benchmark compiles the row with its default arguments (its own ``row_config`` and ``parser``)."""
    bench, _, row = spec.partition(":")
    if bench == "ptq_seeds" and row in ptq_seeds.ROUNDING_ROWS:
        args = ptq_seeds.parser().parse_args([])
        return ptq_seeds.row_config(ptq_seeds.ROUNDING_ROWS[row], args), args.samples, RESULTS / "ptq_seeds.json"
    if bench == "lowbit" and row in PTQ_LOWBIT_ROWS:
        if lowbit.ROWS[row].get("weight_bits") == "ends8":
            raise SystemExit(f"{spec}: the mixed row's bits depend on the model; not supported here")
        args = lowbit.parser().parse_args([])
        return lowbit.row_config(row, None, args), args.samples, RESULTS / "lowbit_ptq.json"
    choices = [f"ptq_seeds:{r}" for r in ptq_seeds.ROUNDING_ROWS] + [f"lowbit:{r}" for r in PTQ_LOWBIT_ROWS]
    raise SystemExit(f"unknown row {spec!r}; choose from: {', '.join(choices)}")


def _committed(path: Path, model: str, row: str) -> float | None:
    if not path.is_file():
        return None
    for r in json.loads(path.read_text())["results"]:
        if r["model"] == model and r["row"] == row:
            return r["top1"]
    return None


def bench(model_name: str, specs: list[str], x_fresh: torch.Tensor, y_fresh: torch.Tensor) -> list[dict]:
    out, right, loaded = [], {}, {}
    for spec in specs:
        cfg, samples, committed = row_config(spec)
        if samples not in loaded:  # the model and data once per calibration size
            loaded[samples] = load_model(model_name, RECIPES_PTQ[model_name], samples)
        model, calib, x_test, y_test, float_top1, _ = loaded[samples]
        if not out:
            out.append({"model": model_name, "row": "float", "test": round(float_top1, 2),
                        "fresh": round(top1(predict(model, x_fresh), y_fresh), 2)})
        art = qcompile.compile(model, (x_test[:1],), calib=calib, config=cfg, name="m", progress=False)
        correct = art.run(x_fresh).argmax(1) == y_fresh
        right[spec] = correct
        rec = {"model": model_name, "row": spec, "test": round(top1(art.run(x_test), y_test), 2),
               "test_committed": _committed(committed, model_name, spec.partition(":")[2]),
               "fresh": round(100.0 * float(correct.float().mean()), 2)}
        print(f"  {spec:34s} test {rec['test']:6.2f} (committed {rec['test_committed']})  fresh {rec['fresh']:6.2f}",
              flush=True)
        out.append(rec)
    for a, b in itertools.combinations(specs, 2):
        out.append({"model": model_name, "row": f"{a} vs {b}", "fresh_only_first": int((right[a] & ~right[b]).sum()),
                    "fresh_only_second": int((right[b] & ~right[a]).sum())})
    return out


def table(results: list[dict]) -> str:
    lines = ["| model | row | top-1 test split | committed | top-1 fresh samples |", "|---|---|---|---|---|"]
    for r in results:
        if "fresh_only_first" in r:
            lines.append(f"| {r['model']} | {r['row']} | | | only first / only second right: "
                         f"{r['fresh_only_first']} / {r['fresh_only_second']} |")
        else:
            lines.append(f"| {r['model']} | {r['row']} | {r['test']:.2f} | {r.get('test_committed') or ''} "
                         f"| {r['fresh']:.2f} |")
    return "\n".join(lines)


def targets(results: list[dict]) -> dict[str, str]:
    """No targets of its own: whether every test-split figure reproduced the committed one."""
    rows = [r for r in results if r.get("test_committed") is not None]
    same = sum(r["test"] == r["test_committed"] for r in rows)
    return {"test-split top-1 reproduces the committed figure": f"{same}/{len(rows)}"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=MNIST1D_MODELS, choices=MNIST1D_MODELS)
    ap.add_argument("--rows", nargs="+", required=True, help="<benchmark>:<row>, e.g. 'ptq_seeds:W3A8 adaround'")
    ap.add_argument("--fresh", type=int, default=20000, help="freshly generated samples to score on")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for spec in args.rows:
        row_config(spec)  # unknown rows fail before any work
    x_fresh, y_fresh = fresh_samples(args.fresh)
    results = []
    for name in args.models:
        results += bench(name, args.rows, x_fresh, y_fresh)
    print_and_save("fresh_mnist1d.py", argv, results, table, targets, args.json, fresh_samples=args.fresh,
                   top1_on="integer interpreter (Artifact.run), MNIST-1D test split and fresh generator samples")


if __name__ == "__main__":
    main()
