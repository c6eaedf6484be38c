"""qcompile quickstart: train a tiny CNN, compile it to int8 C for Cortex-M, check it.

Run from the repository root (after ``pip install -e .``)::

    python examples/quickstart.py            # writes the C sources to build/
    python examples/quickstart.py out/dir    # ... or to out/dir

Steps:

1. train (or load from the cache) :class:`qcompile.zoo.DigitsCNN` on scikit-learn's
   8x8 digits - a few seconds the first time, instant afterwards;
2. compile it with 256 training images as calibration data;
3. verify the generated code against the integer reference interpreter on the host;
4. print the compile report, save the artifact, and compare float vs int8 top-1
   accuracy on the 360-image test split.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

try:
    import qcompile
    from qcompile.zoo import evaluate, predict, pretrained_digits_cnn
except ImportError as exc:  # pragma: no cover - only without an install
    sys.exit(f"cannot import qcompile ({exc}); run `pip install -e .` in the repository root first")


def int8_logits(art, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of the compiled integer program on a float batch, via ``art.run``."""
    return torch.cat([art.run(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1]) if len(argv) > 1 else Path("build")

    t0 = time.perf_counter()
    model, (x_train, y_train, x_test, y_test) = pretrained_digits_cnn()
    print(f"model ready in {time.perf_counter() - t0:.1f} s (trained weights are cached)")

    t0 = time.perf_counter()
    art = qcompile.compile(
        model,
        example_inputs=(x_test[:1],),
        calib=x_train[:256],
        target="cortex-m",
        name="digits",
    )
    print(f"compiled in {time.perf_counter() - t0:.2f} s")

    art.verify(x_test[:32], on="host")  # raises qcompile.errors.VerificationError on mismatch
    print(art.report())
    art.save(str(out_dir))
    print(f"saved to {out_dir}/")

    float_pred = predict(model, x_test).argmax(dim=1)
    int8_pred = int8_logits(art, x_test).argmax(dim=1)
    float_top1 = 100.0 * evaluate(model, x_test, y_test)
    int8_top1 = 100.0 * (int8_pred == y_test).float().mean().item()
    agree = 100.0 * (int8_pred == float_pred).float().mean().item()
    print(f"digits test split ({x_test.shape[0]} images): "
          f"float top-1 {float_top1:.2f} %, int8 top-1 {int8_top1:.2f} % "
          f"(drop {float_top1 - int8_top1:+.2f} points), float/int8 agreement {agree:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
