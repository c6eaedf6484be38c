"""More ways in: .onnx files (onnx2torch), already-traced GraphModules, and leaf_modules= for
modules torch.fx cannot trace into. Every compiled program is checked bit for bit in C (host)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx import Tracer, GraphModule

import qcompile

torch.set_num_threads(1)


class _Residual(nn.Module):
    """Conv/BN/ReLU, a residual add, concat, scalar mul, zero pad, pools, squeeze-excite mul,
    a reshape via x.shape[0] (ONNX Shape/Gather/Concat/Reshape) and a final Linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(8, 4, 1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        a = self.c1(x)
        b = F.relu(self.c2(a)) + a
        c = self.c3(torch.cat([a, b], 1)) * 0.5
        d = F.max_pool2d(self.pool(F.pad(c, (1, 1, 1, 1))), 2, stride=2)
        d = d * torch.sigmoid(d.mean((2, 3), keepdim=True))
        return self.fc(d.reshape(d.shape[0], -1))


def _export(model: nn.Module, x: torch.Tensor, path) -> None:
    pytest.importorskip("onnx", reason="the onnx package is not installed (pip install 'qcompile[onnx]')")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})


@pytest.fixture(scope="module")
def onnx2torch_available():
    import importlib.util

    if importlib.util.find_spec("onnx2torch") is None:
        pytest.skip("onnx2torch is not installed (pip install --no-deps onnx2torch, see pyproject's onnx extra)")


def test_onnx_file_compiles_bit_exact_and_tracks_the_model(tmp_path, onnx2torch_available):
    torch.manual_seed(0)
    model = _Residual().eval()
    path = tmp_path / "residual.onnx"
    _export(model, torch.randn(1, 1, 16, 16), path)
    calib = torch.randn(64, 1, 16, 16)
    art = qcompile.compile(str(path), calib=calib, progress=False)  # example_inputs from the ONNX shape
    ops = {type(op).__name__ for op in art.program.ops}
    assert {"Conv2D", "Add", "Concat", "Dense", "Mul"} <= ops, ops
    xs = torch.randn(16, 1, 16, 16)
    art.verify(xs, on="host")
    with torch.no_grad():
        ref = model(xs)
    err = (art.run(xs) - ref).pow(2).mean() / ref.pow(2).mean()
    assert err < 0.01, f"relative output error {err:.4f} against the torch model the ONNX file came from"


def test_onnx_unsupported_op_is_named(tmp_path, onnx2torch_available):
    class Floor(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return torch.floor(self.conv(x))

    path = tmp_path / "floor.onnx"
    _export(Floor().eval(), torch.randn(1, 1, 6, 6), path)
    with pytest.raises(qcompile.UnsupportedOpError, match="Floor"):
        qcompile.compile(path, calib=torch.randn(8, 1, 6, 6), progress=False)


def test_onnx_errors_name_the_file(tmp_path):
    with pytest.raises(qcompile.ConfigError, match="no such ONNX file: .*missing.onnx"):
        qcompile.compile(tmp_path / "missing.onnx", calib=torch.randn(4, 1, 4, 4), progress=False)
    with pytest.raises(qcompile.ConfigError, match="must name an .onnx file"):
        qcompile.compile(str(tmp_path / "model.pt"), calib=torch.randn(4, 1, 4, 4), progress=False)


class _CheckedConv(nn.Conv2d):
    """A supported layer whose forward has Python torch.fx cannot trace (a data-dependent check)."""

    def forward(self, x):
        if not torch.isfinite(x).all():
            raise ValueError("non-finite input")
        return super().forward(x)


def _checked_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(_CheckedConv(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def test_leaf_modules_make_untraceable_subclasses_compile():
    model, calib = _checked_model(), torch.randn(32, 1, 8, 8)
    with pytest.raises(qcompile.TraceError, match="leaf module"):
        qcompile.compile(model, calib[:1], calib=calib, progress=False)
    for leaf in (_CheckedConv, "0"):
        art = qcompile.compile(model, calib[:1], calib=calib, progress=False, leaf_modules=(leaf,))
        assert type(art.program.ops[0]).__name__ == "Conv2D"
        art.verify(calib[:4], on="host")
    with pytest.raises(qcompile.ConfigError, match="leaf_modules entry 3"):
        qcompile.compile(model, calib[:1], calib=calib, progress=False, leaf_modules=(3,))


def test_graph_module_input_keeps_the_users_tracing():
    """A GraphModule traced with the user's own tracer compiles as traced (not re-traced into)."""

    class KeepChecked(Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, _CheckedConv) or super().is_leaf_module(m, qualname)

    model, calib = _checked_model(), torch.randn(32, 1, 8, 8)
    gm = GraphModule(model, KeepChecked().trace(model))
    art = qcompile.compile(gm, (calib[:1],), calib=calib, progress=False)
    art.verify(calib[:4], on="host")
    with torch.no_grad():
        assert torch.allclose(art.run(calib[:4]), model(calib[:4]), atol=0.15)
