"""Bad input gets correct handling or a clear QCompileError; save() is atomic and careful.

Each handled case checks the numbers (integer interpreter vs the float model, and the C on the
host vs the interpreter); each rejected case checks the error class, that the message names the
node/parameter, and that it says what to do.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import qcompile
from qcompile.artifact import BUILD_MARKER
from qcompile.errors import CalibrationError, ConfigError, QCompileError, TraceError, UnsupportedOpError

torch.set_num_threads(1)


def _net(c_in: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(c_in, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def _calib(n: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _compile(model, calib, example=None, **kw):
    example = calib[:1] if example is None else example
    return qcompile.compile(model, (example,), calib=calib, progress=False, **kw)


def _close_to_float(art, model, x, lsb: float = 3.0):
    with torch.no_grad():
        ref = model(x).float()
    got = art.run(x).float()
    err = (got - ref).abs().max().item()
    # a few output steps, plus the input's rounding that a parameter-free layer passes straight through
    assert err <= lsb * art.program.output.scale + art.program.input.scale + 1e-6, (err, art.program.output.scale)
    art.verify(x[:4], on="host")


# ---------------------------------------------------------------------------- handled correctly


def test_all_zero_channel_is_exact_zero():
    model = _net()
    with torch.no_grad():
        model[0].weight[1] = 0
        model[0].bias[1] = 0
    x = _calib()
    art = _compile(model, x)
    _close_to_float(art, model, x)
    conv = art.program.ops[0]
    assert not np.any(conv.weight[1]) and conv.bias[1] == 0


def test_all_zero_layer_gives_zero_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
    x = _calib()
    art = _compile(model, x)
    assert torch.count_nonzero(art.run(x)) == 0
    art.verify(x[:4], on="host")


@pytest.mark.parametrize("value", [0.0, 1.0, -2.5])
def test_constant_calibration_data(value):
    """min == max on the input and on every activation: a valid scale, exact on that constant."""
    model = _net()
    x = torch.full((16, 3, 8, 8), value)
    art = _compile(model, x)
    t = art.program.input
    assert 0 < t.scale < float("inf")
    _close_to_float(art, model, x)


def test_dead_relu_layer():
    """Every activation after the ReLU is 0 on the calibration data (min == max == 0)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
    x = _calib()
    art = _compile(model, x)
    _close_to_float(art, model, x)


def test_integer_calibration_data_is_converted_like_float():
    model = _net()
    xi = torch.randint(-3, 4, (16, 3, 8, 8))
    a = _compile(model, xi, example=xi[:1].float())
    b = _compile(model, xi.float())
    assert a.c_sources() == b.c_sources()


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.ReLU()),
    nn.Sequential(nn.MaxPool2d(2), nn.Flatten()),
    nn.Sequential(nn.AvgPool2d(2), nn.Hardtanh(-0.5, 0.5)),
], ids=["relu", "maxpool_flatten", "avgpool_hardtanh"])
def test_models_without_parameters(model):
    x = _calib()
    # minmax: the default MSE observer clips the input range, which is not what this test is about
    art = _compile(model.eval(), x, config=qcompile.QuantConfig(activation_observer="minmax"))
    _close_to_float(art, model, x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes(dtype):
    model = _net()
    x = _calib()
    art = _compile(_net().to(dtype), x.to(dtype))
    with torch.no_grad():
        ref = model(x)
    tol = {torch.float64: 3, torch.float16: 4, torch.bfloat16: 12}[dtype] * art.program.output.scale
    assert (art.run(x.to(dtype)).float() - ref).abs().max().item() <= tol


# ---------------------------------------------------------------------------- clear errors


def test_wrong_example_input_shape_names_the_node():
    with pytest.raises(TraceError) as e:
        _compile(_net(), torch.randn(8, 3, 9, 9))
    msg = str(e.value)
    assert "node '_3'" in msg and "Linear" in msg and "(1, 196)" in msg and "example_inputs[0]" in msg


def test_wrong_example_input_channels_names_the_node():
    with pytest.raises(TraceError, match=r"node '_0' \(0 \(Conv2d\)\).*\(1, 2, 8, 8\).*example_inputs"):
        _compile(_net(), torch.randn(8, 2, 8, 8))


def test_example_input_without_batch_dim():
    with pytest.raises(ConfigError, match=r"batch dimension.*unsqueeze\(0\)"):
        qcompile.compile(nn.Sequential(nn.Linear(5, 2)), (torch.randn(5),), calib=torch.randn(4, 5))


def test_python_scalar_from_tensor_is_unsupported_not_a_crash():
    class Item(nn.Module):
        def forward(self, x):
            return x * x.max().item()

    with pytest.raises(UnsupportedOpError) as e:
        _compile(Item(), _calib())
    assert "mul" in {n for n, _, _ in e.value.nodes} and ".item()" in str(e.value)


def test_non_traceable_control_flow():
    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            for _ in range(int(x.shape[0])):
                x = self.conv(x)
            return x

    with pytest.raises(TraceError, match=r"test_robustness.py:\d+ in forward.*range\(int\(x.shape\[0\]\)\).*leaf module"):
        _compile(Loop(), _calib())


@pytest.mark.parametrize("where, value, name", [
    ("conv_weight", float("nan"), "parameter '0.weight'"),
    ("linear_bias", float("inf"), "parameter '3.bias'"),
    ("bn_var", float("inf"), "buffer '1.running_var'"),
])
def test_non_finite_weights_name_the_parameter(where, value, name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    with torch.no_grad():
        {"conv_weight": lambda: model[0].weight.__setitem__((2, 1, 0, 0), value),
         "linear_bias": lambda: model[3].bias.__setitem__(4, value),
         "bn_var": lambda: model[1].running_var.__setitem__(3, value)}[where]()
    with pytest.raises(ConfigError) as e:
        _compile(model, _calib())
    assert name in str(e.value) and "NaN/Inf" in str(e.value) and "checkpoint" in str(e.value)


@pytest.mark.parametrize("calib, match", [
    ([], "empty"),
    ([torch.randn(0, 3, 8, 8)], "empty"),
    (iter(()), "empty"),
    ([torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 7)], r"batch 1 has samples of shape \(3, 8, 7\)"),
    ([{"x": torch.randn(4, 3, 8, 8)}], "dict"),
    (torch.randn(4, 8, 8, 3), r"\(8, 8, 3\).*\(3, 8, 8\)"),
    ([torch.randn(4, 3, 8, 8), torch.full((4, 3, 8, 8), float("inf"))], "batch 1 contains NaN or Inf"),
])
def test_bad_calibration_data(calib, match):
    with pytest.raises(CalibrationError, match=match):
        _compile(_net(), calib, example=torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int64, torch.bool])
def test_integer_example_inputs(dtype):
    x = torch.zeros(1, 3, 8, 8, dtype=dtype)
    with pytest.raises(ConfigError, match=rf"dtype {dtype}.*floating-point.*x.float\(\) / 255"):
        _compile(_net(), _calib(), example=x)


def test_unsupported_dtypes():
    with pytest.raises(ConfigError, match="complex64"):
        _compile(_net(), _calib(), example=torch.zeros(1, 3, 8, 8, dtype=torch.complex64))
    with pytest.raises(ConfigError, match=r"parameter '0.weight' is torch.float64 but example_inputs\[0\] is "
                                          r"torch.float32.*model.to\(torch.float32\)"):
        _compile(_net().double(), _calib())
    with pytest.raises(ConfigError, match="NaN or Inf"):
        _compile(_net(), _calib(), example=torch.full((1, 3, 8, 8), float("nan")))


def test_every_error_is_a_qcompile_error():
    for cls in (TraceError, UnsupportedOpError, CalibrationError, ConfigError, qcompile.MemoryBudgetError):
        assert issubclass(cls, QCompileError)


# ---------------------------------------------------------------------------- save()


@pytest.fixture(scope="module")
def art():
    return _compile(_net(), _calib())


def test_save_replaces_a_previous_build_as_a_whole(art, tmp_path):
    out = tmp_path / "build"
    art.save(out)
    assert (out / BUILD_MARKER).is_file()
    (out / "stale.c").write_text("old")
    art.save(out)
    assert not (out / "stale.c").exists() and (out / "model.c").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]  # no temp folders left


def test_save_refuses_a_foreign_folder(art, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=f"not a qcompile build.*{BUILD_MARKER}"):
        art.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        art.save(tmp_path / "file")


def test_save_refuses_the_current_directory(art, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="current directory"):
        art.save(".")
    assert (art.save("build") / "model.c").is_file()


def test_save_into_an_empty_or_nested_new_folder(art, tmp_path):
    assert (art.save(tmp_path) / "model.h").is_file()
    assert (art.save(tmp_path / "a" / "b") / "report.json").is_file()


def test_interrupted_save_leaves_the_old_build_untouched(art, tmp_path, monkeypatch):
    out = tmp_path / "build"
    art.save(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def half_write(self, directory, harness, cpu):
        (directory / "model.c").write_text("/* half */")
        raise KeyboardInterrupt

    monkeypatch.setattr(type(art), "_write_files", half_write)
    with pytest.raises(KeyboardInterrupt):
        art.save(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]
    with pytest.raises(KeyboardInterrupt):
        art.save(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_saved_report_records_versions_and_input_hashes(art, tmp_path):
    data = json.loads((art.save(tmp_path) / "report.json").read_text())
    build = data["build"]
    assert build["versions"]["torch"] == torch.__version__ and build["versions"]["qcompile"]
    assert set(build["inputs_sha256"]) == {"model_state_dict", "example_inputs", "calibration_data", "config", "all"}
    assert "inputs sha256" in (tmp_path / "report.md").read_text()
