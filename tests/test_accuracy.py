"""Benchmark-grade accuracy checks on trained models (trains and caches them on first use).

The integer interpreter must agree with the float model on >= 99% of the test split.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qcompile
from qcompile.zoo import load_fashion_mnist, pretrained

ROOT = Path(__file__).resolve().parents[1]


def _has_fashion() -> bool:
    try:
        load_fashion_mnist()
    except FileNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_cnn", "mnist1d_cnn",
                                  pytest.param("fashion_cnn", marks=pytest.mark.skipif(
                                      not _has_fashion(), reason="apt-get install dataset-fashion-mnist"))])
def test_int8_agrees_with_float_on_test_split(name):
    model, (x_train, y_train, x_test, y_test) = pretrained(name)
    art = qcompile.compile(model, (x_train[:1],), calib=x_train[:512], progress=False)
    with torch.no_grad():
        float_pred = model(x_test).argmax(1)
    int_pred = art.run(x_test).argmax(1)
    agreement = (float_pred == int_pred).float().mean().item()
    drop = (float_pred == y_test).float().mean().item() - (int_pred == y_test).float().mean().item()
    assert agreement >= 0.99, f"{name}: top-1 agreement {agreement:.4f}"
    assert drop <= 0.003 + 1e-9, f"{name}: int8 top-1 drop {100 * drop:.2f} points"
    art.verify(x_test[:32], on="host")


@pytest.mark.slow
def test_quickstart_runs(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), str(tmp_path / "build")],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "int8 top-1" in r.stdout
    assert (tmp_path / "build" / "digits.c").is_file()
