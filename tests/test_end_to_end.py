"""End to end: every zoo model compiles, its C (host gcc) equals the interpreter bit for bit, the
interpreter tracks the fake-quant graph and the float model, outputs are deterministic."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import qcompile
from zoo_models import ZOO, build

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=sorted(ZOO))
def compiled(request):
    model, shape = build(request.param)
    torch.manual_seed(1)
    calib = torch.randn(128, *shape)
    art = qcompile.compile(model, (calib[:1],), calib=calib, name=request.param, progress=False)
    return request.param, model, shape, art


def test_c_host_bit_exact(compiled):
    name, model, shape, art = compiled
    torch.manual_seed(2)
    xs = torch.cat([torch.randn(24, *shape), 4 * torch.randn(8, *shape)])  # 8 far outside calibration
    got = art.verify(xs, on="host")
    assert got.shape == (32, *art.program.output.shape)
    # int8 boundary inputs too
    extremes = np.stack([np.full(shape, -128, np.int8), np.full(shape, 127, np.int8),
                         np.random.default_rng(0).integers(-128, 128, shape, dtype=np.int8)])
    art.verify(extremes, on="host")


def test_interpreter_tracks_float_model(compiled):
    name, model, shape, art = compiled
    torch.manual_seed(3)
    x = torch.randn(64, *shape)
    with torch.no_grad():
        ref = model(x)
    y = art.run(x)
    assert y.shape == ref.shape
    if ref.shape[-1] > 1:
        agree = (y.argmax(-1) == ref.argmax(-1)).float().mean().item()
        assert agree >= 0.9, f"{name}: top-1 agreement {agree}"
    out_sqnr = art.sqnr[art.program.outputs[0]]
    assert out_sqnr > 25.0, f"{name}: output SQNR {out_sqnr:.1f} dB"


def test_interpreter_matches_fake_quant_graph(compiled):
    """The fx simulation and the integer program differ only by requantization rounding."""
    name, model, shape, art = compiled
    torch.manual_seed(4)
    x = torch.randn(32, *shape)
    with torch.no_grad():
        sim = art.graph(x)
    y = art.run(x)
    step = art.program.output.scale
    assert (sim - y).abs().max().item() <= 8 * step + 1e-6, name


def test_report_lists_every_op(compiled):
    name, _, _, art = compiled
    text = art.report()
    for op in art.program.ops:
        assert op.name in text
    assert f"arena: {art.arena_size:,} B" in text
    data = art.report_data()
    assert data["summary"]["arena_bytes"] >= data["summary"]["arena_lower_bound"] > 0
    assert sum(r["macs"] for r in data["layers"]) == data["summary"]["macs"] > 0


def test_save_is_deterministic(tmp_path):
    def build_once(d):
        model, shape = build("residual")
        torch.manual_seed(5)
        calib = torch.randn(64, *shape)
        art = qcompile.compile(model, (calib[:1],), calib=calib, name="res", progress=False)
        art.save(d)
        return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir())}

    a, b = build_once(tmp_path / "a"), build_once(tmp_path / "b")
    assert set(a) >= {"res.c", "res.h", "qc_kernels.c", "qc_kernels.h", "res.mk", "report.md", "report.json"}
    assert "compile_seconds" not in json.loads(a["report.json"])  # measured, so not written
    assert a == b


def test_run_accepts_single_sample_and_batch():
    model, shape = build("mlp")
    calib = torch.randn(32, *shape)
    art = qcompile.compile(model, (calib[:1],), calib=calib, progress=False)
    single = art.run(calib[0])
    batch = art.run(calib[:3])
    assert single.shape == batch.shape[1:]
    torch.testing.assert_close(single, batch[0])
    xq = art.quantize_input(calib[:3])
    assert xq.dtype == np.int8
    np.testing.assert_array_equal(art.run_int(xq[0]), art.run_int(xq)[0])


def test_cli_compile_and_report(tmp_path):
    factory = tmp_path / "factory.py"
    factory.write_text(
        "import torch, torch.nn as nn\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()\n"
        "    return m, (torch.randn(1, 1, 6, 6),), torch.randn(16, 1, 6, 6)\n"
    )
    out = tmp_path / "build"
    # cwd outside the checkout: `python -m` puts the cwd first on sys.path
    run = dict(capture_output=True, text=True, timeout=300, cwd=tmp_path)
    r = subprocess.run([sys.executable, "-m", "qcompile", "compile", f"{factory}:make", "-o", str(out), "--name", "tiny"],
                       **run)
    assert r.returncode == 0, r.stderr
    assert (out / "tiny.c").is_file() and (out / "tiny.h").is_file()
    r = subprocess.run([sys.executable, "-m", "qcompile", "report", str(out)], **run)
    assert r.returncode == 0 and "Conv2D" in r.stdout
    r = subprocess.run([sys.executable, "-m", "qcompile", "compile", f"{factory}:nope", "-o", str(out)], **run)
    assert r.returncode == 2 and "has no function 'nope'" in r.stderr
