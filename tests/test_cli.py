"""The command line: compile from a factory file and from .onnx + --calib, --json output (also for
errors), exit codes by error class, --verbose per-pass timing, report, ops."""
from __future__ import annotations

import importlib.util
import json
import textwrap
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import qcompile
from qcompile.cli import EXIT_CODES, exit_code, main

torch.set_num_threads(1)

_FACTORY = """
import torch, torch.nn as nn
def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    calib = torch.randn(32, 1, 8, 8)
    return model, (calib[:1],), calib
def floor():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
        def forward(self, x):
            return torch.round(torch.floor(self.conv(x)))
    return M(), (torch.randn(1, 1, 8, 8),), torch.randn(8, 1, 8, 8)
def too_big():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    calib = torch.randn(4, 3, 96, 96)
    return model, (calib[:1],), calib
"""


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "my_model.py"
    path.write_text(_FACTORY)
    return path


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_compile_factory_json_verbose(factory, tmp_path, capsys):
    code, out, err = _run(capsys, ["compile", f"{factory}:make", "-o", str(tmp_path / "b"), "--json", "--verbose",
                                   "--verify", "host", "--name", "net"])
    assert code == 0, err
    data = json.loads(out)  # stdout is exactly one JSON object
    assert data["ok"] and data["verified"] == {"on": "host", "cpu": None, "samples": 1}
    assert {"net.c", "net.h", "net.mk", "qcompile_model.cmake", "report.html", "report.json"} <= set(data["files"])
    assert [p["pass"] for p in data["pass_seconds"]] == qcompile.default_pipeline().names()
    for name in qcompile.default_pipeline().names():  # --verbose: one timing line per pass on stderr
        assert f"pass {name} " in err
    assert "total" in err
    code, out, _ = _run(capsys, ["report", str(tmp_path / "b"), "--json"])
    assert code == 0 and json.loads(out)["report"]["summary"]["name"] == "net"


def test_exit_codes_and_json_errors(factory, tmp_path, capsys):
    code, out, err = _run(capsys, ["compile", f"{factory}:floor", "-o", str(tmp_path / "f"), "--json"])
    assert code == 3, err
    e = json.loads(out)
    assert e["ok"] is False and e["exit_code"] == 3 and e["error"]["type"] == "UnsupportedOpError"
    assert sorted(n["target"] for n in e["error"]["nodes"]) == ["floor", "round"]
    assert all("my_model.py" in n["source"] for n in e["error"]["nodes"])  # the file and line of each node
    assert "UnsupportedOpError" in err

    code, out, err = _run(capsys, ["compile", f"{factory}:too_big", "--target", "atsamd21g18", "-o",
                                   str(tmp_path / "t")])
    assert code == 4 and "MemoryBudgetError" in err and "RAM" in err

    code, _, err = _run(capsys, ["compile", f"{factory}:missing", "-o", str(tmp_path / "m")])
    assert code == 2 and "has no function 'missing'" in err and "my_model.py" in err
    code, _, err = _run(capsys, ["compile", str(tmp_path / "nope.py:make")])
    assert code == 2 and "nope.py" in err
    bad = tmp_path / "calib.txt"
    bad.write_text("1 2 3")
    code, _, err = _run(capsys, ["compile", f"{factory}:make", "--calib", str(bad), "-o", str(tmp_path / "c")])
    assert code == 2 and "calib.txt" in err
    code, out, err = _run(capsys, ["report", str(tmp_path / "empty"), "--json"])
    assert code == 2 and json.loads(out)["error"]["type"] == "ConfigError"
    assert sorted({c for _, c, _ in EXIT_CODES}) == [1, 2, 3, 4, 5, 6, 7]
    assert exit_code(qcompile.VerificationError("x")) == 5 and exit_code(RuntimeError("x")) == 70


def test_compile_onnx_with_calib_npy(tmp_path, capsys):
    if importlib.util.find_spec("onnx2torch") is None or importlib.util.find_spec("onnx") is None:
        pytest.skip("onnx/onnx2torch not installed (see pyproject's onnx extra)")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 5)).eval()
    onnx_path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 1, 8, 8),), str(onnx_path), dynamo=False, opset_version=17)
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32))
    code, out, err = _run(capsys, ["compile", str(onnx_path), "--calib", str(calib), "-o", str(tmp_path / "b"),
                                   "--verify", "host"])
    assert code == 0, err
    assert "bit-exact with the interpreter on host" in out and (tmp_path / "b" / "report.html").is_file()
    code, _, err = _run(capsys, ["compile", str(onnx_path), "-o", str(tmp_path / "c")])
    assert code == 2 and "--calib" in err and "net.onnx" in err


def test_ops_command_lists_the_catalogue(capsys):
    code, out, _ = _run(capsys, ["ops", "--json"])
    rows = {r["kind"]: r for r in json.loads(out)["ops"]}
    assert code == 0 and "`nn.Conv2d`" in rows["conv"]["modules"] and "`F.relu`" in rows["clamp"]["functions"]
    code, out, _ = _run(capsys, ["ops"])
    assert out.startswith("| kind |") and textwrap.dedent(out).count("\n") == len(rows) + 2
