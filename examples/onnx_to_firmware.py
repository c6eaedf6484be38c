"""ONNX in, firmware folder out.

Exports a small PyTorch CNN to ``model.onnx``, saves calibration samples to ``calib.npy``, then
runs what a user of another framework would run on those two files:

    qcompile compile model.onnx --calib calib.npy -o OUT/build --verify host
    qcompile init-example OUT/fw model.onnx --calib calib.npy

and builds the example folder on the host (``make -C OUT/fw``: exit 0 = bit-exact).

Run: python examples/onnx_to_firmware.py [OUT]   (default OUT: build/onnx_example; needs
``pip install onnx && pip install --no-deps onnx2torch``)
"""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from qcompile.cli import main as qcompile_cli


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path("build/onnx_example")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 10)).eval()
    onnx_path, calib_path = out / "model.onnx", out / "calib.npy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 1, 16, 16),), str(onnx_path), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    np.save(calib_path, np.random.default_rng(0).standard_normal((128, 1, 16, 16)).astype(np.float32))
    print(f"wrote {onnx_path} and {calib_path}")

    code = qcompile_cli(["compile", str(onnx_path), "--calib", str(calib_path), "-o", str(out / "build"),
                         "--verify", "host", "--name", "net"])
    if code:
        return code
    code = qcompile_cli(["init-example", str(out / "fw"), str(onnx_path), "--calib", str(calib_path),
                         "--name", "net"])
    if code:
        return code
    r = subprocess.run(["make", "-s", "-C", str(out / "fw")], capture_output=True, text=True, check=False)
    print(r.stdout + r.stderr, end="")
    print(f"open {(out / 'build' / 'report.html').resolve().as_uri()} for the figures")
    return r.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
