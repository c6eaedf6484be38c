"""Issue 10 architectures on Cortex-M4: the public-style models of qcompile/zoo/public_style.py (MTCNN
PNet/RNet, a ShuffleNetV2 stage, a small U-Net) compiled unchanged, with random weights (BatchNorm
statistics randomized), int8 PTQ with the default config.

Per model: bit-exact in C on the host and on QEMU Cortex-M4 (mps2-an386), exact instructions per
inference (QEMU icount plugin), flash and static RAM of the linked firmware, arena bytes, the number
of data-movement ops (StridedCopy/Concat/Resize) and their share of the instructions, and the SQNR of
every output against the float model on held-out inputs.

    python benchmarks/architectures.py --json benchmarks/results/architectures.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import bit_exact_host, print_and_save  # noqa: E402

import qcompile  # noqa: E402
from qcompile.analysis import sqnr_db  # noqa: E402
from qcompile.zoo.public_style import ARCHITECTURES, randomize_batchnorm  # noqa: E402

MOVEMENT = ("StridedCopy", "Concat", "Resize", "Reshape", "Pad")


def run(name: str, calib_n: int, seed: int) -> dict:
    cls, shape = ARCHITECTURES[name]
    torch.manual_seed(seed)
    model = randomize_batchnorm(cls(), seed)
    calib = torch.rand(calib_n, *shape) * 2 - 1
    held_out = torch.rand(16, *shape) * 2 - 1
    art = qcompile.compile(model, (calib[:1],), calib=calib, name=name, progress=False)
    host = bit_exact_host(art, held_out)
    mcu = art.measure(held_out[:2], cpu="cortex-m4")  # raises VerificationError unless bit-exact on QEMU
    with torch.no_grad():
        ref = model(held_out)
    got = art.run(held_out)
    refs, gots = (ref, got) if isinstance(ref, tuple) else ((ref,), (got,))
    kinds = [type(op).__name__ for op in art.program.ops]
    movement_ops = {op.name for op in art.program.ops if type(op).__name__ in MOVEMENT}
    move_instr = sum(v for k, v in mcu["instructions_per_op"].items() if k in movement_ops)
    return {
        "model": name, "row": "int8", "input": list(shape), "outputs": len(refs),
        "bit_exact_host": host, "bit_exact_qemu_m4": "yes",
        "instructions": mcu["instructions_per_inference"], "flash_bytes": mcu["flash_bytes"],
        "static_ram_bytes": mcu["static_ram_bytes"], "arena_bytes": art.arena_size,
        "ops": len(kinds), "movement_ops": len(movement_ops),
        "movement_instr_pct": round(100.0 * move_instr / mcu["instructions_per_inference"], 1),
        "sqnr_db": [round(sqnr_db(r.numpy(), g.numpy()), 1) for r, g in zip(refs, gots)],
    }


def table(results: list[dict]) -> str:
    head = (f"{'model':<11} {'C==interp':>10} {'instr (M4)':>12} {'flash':>8} {'RAM':>7} {'arena':>7} "
            f"{'ops':>4} {'move':>5} {'move %':>7}  SQNR dB per output")
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(f"{r['model']:<11} {r['bit_exact_host'] + '/' + r['bit_exact_qemu_m4']:>10} "
                    f"{r['instructions']:>12,} {r['flash_bytes']:>8,} {r['static_ram_bytes']:>7,} "
                    f"{r['arena_bytes']:>7,} {r['ops']:>4} {r['movement_ops']:>5} {r['movement_instr_pct']:>7}  "
                    f"{', '.join(str(s) for s in r['sqnr_db'])}")
    return "\n".join(rows)


def targets(results: list[dict]) -> dict[str, str]:
    ok = all(r["bit_exact_host"] == "yes" and r["bit_exact_qemu_m4"] == "yes" for r in results)
    return {"compile unchanged, bit-exact on host and QEMU Cortex-M4":
            f"{'met' if ok else 'MISSED'} ({len(results)} architectures)"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=sorted(ARCHITECTURES), choices=sorted(ARCHITECTURES))
    ap.add_argument("--calib", type=int, default=256, help="calibration samples")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for name in args.models:
        results.append(run(name, args.calib, args.seed))
        print(f"{name}: done", flush=True)
    print_and_save("architectures.py", argv, results, table, targets, args.json,
                   weights="random (untrained), BatchNorm statistics randomized", seed=args.seed)


if __name__ == "__main__":
    main()
