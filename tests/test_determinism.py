"""Same model, data and config => byte-identical build folders, across separate processes (other
hash seed, other thread count); the report's input hashes change exactly when an input does."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import qcompile
from zoo_models import build

torch.set_num_threads(1)

TESTS = Path(__file__).parent

_SCRIPT = r"""
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
sys.path.insert(0, sys.argv[3])
import qcompile
from zoo_models import build
out = sys.argv[1]
for zoo, cfg in (("residual", {}),
                 ("squeeze_excite", {"weight_bits": 4, "weight_quantizer": "pwlq"}),
                 ("depthwise_separable", {"weight_bits": {"stem.*": 8, "*": 3}, "split_outliers": 0.1})):
    model, shape = build(zoo, seed=3)
    calib = torch.randn(48, *shape, generator=torch.Generator().manual_seed(7))
    art = qcompile.compile(model, (calib[:1],), calib=calib, config=qcompile.QuantConfig(**cfg),
                           target="nrf52840", name=zoo, progress=False)
    art.save(f"{out}/{zoo}", harness=True)
"""


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_builds_are_byte_identical_across_processes(tmp_path):
    script = tmp_path / "make.py"
    script.write_text(_SCRIPT)
    for run, (seed, threads) in {"a": ("1", "1"), "b": ("2", "2")}.items():
        # cwd outside the checkout: `python script` puts the script's folder first on sys.path
        subprocess.run([sys.executable, str(script), str(tmp_path / run), threads, str(TESTS)], cwd=tmp_path,
                       env={**os.environ, "PYTHONHASHSEED": seed}, check=True, timeout=600)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) >= 3 * 9 and set(a) == set(b)
    differ = [name for name in a if a[name] != b[name]]
    assert not differ, f"files differ between the two processes: {differ}"


def test_input_hashes_track_each_input():
    def hashes(model, calib, cfg=None, example=None):
        art = qcompile.compile(model, (calib[:1] if example is None else example,), calib=calib,
                               config=cfg, progress=False)
        return art.build["inputs_sha256"]

    model, shape = build("mlp")
    calib = torch.randn(16, *shape, generator=torch.Generator().manual_seed(0))
    base = hashes(model, calib)
    assert base == hashes(build("mlp")[0], calib.clone())  # equal content, fresh objects
    changed_weight = build("mlp")[0]
    with torch.no_grad():
        next(changed_weight.parameters()).view(-1)[0] += 1e-3
    cases = {
        "model_state_dict": hashes(changed_weight, calib),
        "calibration_data": hashes(model, torch.cat([calib[:-1], calib[:1]])),
        "config": hashes(model, calib, qcompile.QuantConfig(activation_observer="minmax")),
        "example_inputs": hashes(model, calib, example=calib[1:2]),
    }
    for key, h in cases.items():
        assert {k for k in h if h[k] != base[k]} == {key, "all"}, key
