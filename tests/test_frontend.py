"""Frontend errors: untraceable models, unsupported ops (all listed at once), bad inputs and config."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import qcompile
from qcompile.errors import CalibrationError, ConfigError, TraceError, UnsupportedOpError


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return x
        return -x


class TwoUnsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.up = nn.Upsample(scale_factor=2, mode="bicubic")

    def forward(self, x):
        x = self.up(self.conv(x))
        x = x[:, [0, 2, 1]]
        return x.flatten(1)


def test_untraceable_model_raises_trace_error_with_source_line():
    with pytest.raises(TraceError) as e:
        qcompile.compile(DataDependent(), (torch.randn(1, 3),), calib=torch.randn(4, 3))
    assert "test_frontend.py" in str(e.value) and "x.sum() > 0" in str(e.value)


def test_every_unsupported_node_is_listed_with_source():
    with pytest.raises(UnsupportedOpError) as e:
        qcompile.compile(TwoUnsupported(), (torch.randn(1, 3, 8, 8),), calib=torch.randn(4, 3, 8, 8))
    names = [n for n, _, _ in e.value.nodes]
    assert names == ["up", "getitem"]
    msg = str(e.value)
    assert "Upsample" in msg and "x = x[:, [0, 2, 1]]" in msg and "test_frontend.py" in msg


def test_unsupported_broadcast_and_cat_dim():
    class M(nn.Module):
        def forward(self, x):
            y = torch.cat([x, x], dim=0)
            return torch.cumsum(y + y.mean(1, keepdim=True), 1)

    with pytest.raises(UnsupportedOpError) as e:
        qcompile.compile(M(), (torch.randn(1, 2, 4, 4),), calib=torch.randn(2, 2, 4, 4))
    assert {n for n, _, _ in e.value.nodes} == {"cat", "mean", "cumsum"}


@pytest.mark.parametrize("calib, match", [
    (torch.randn(0, 3, 8, 8), "empty"),
    (torch.full((2, 3, 8, 8), float("nan")), "NaN"),
    (torch.randn(4, 3, 9, 9), "shape"),
    ([(torch.randn(2, 3, 8, 8), 0), "oops"], "str"),
    (None, "required"),
])
def test_calibration_errors(calib, match):
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    with pytest.raises(CalibrationError, match=match):
        qcompile.compile(model, (torch.randn(1, 3, 8, 8),), calib=calib, progress=False)


def test_calibration_accepts_dataloader_tuples():
    ds = torch.utils.data.TensorDataset(torch.randn(20, 3, 8, 8), torch.zeros(20))
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()).eval()
    art = qcompile.compile(model, (torch.randn(1, 3, 8, 8),), calib=loader, progress=False)
    assert art.records["calibrate"]["samples"] == 20


@pytest.mark.parametrize("kwargs, match", [
    ({"target": "x86"}, "target"),
    ({"name": "my-model"}, "identifier"),
])
def test_config_errors(kwargs, match):
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=match):
        qcompile.compile(model, (torch.randn(1, 4),), calib=torch.randn(4, 4), **kwargs)


def test_quant_config_validates():
    with pytest.raises(ConfigError, match="activation_observer"):
        qcompile.QuantConfig(activation_observer="histogramm")
    with pytest.raises(ConfigError, match="weight_bits"):
        qcompile.QuantConfig(weight_bits=9)


def test_nan_inside_model_is_calibration_error():
    class Bad(nn.Module):
        def forward(self, x):
            return F.relu(x) * float("inf") - float("inf")

    with pytest.raises(CalibrationError, match="NaN"):
        qcompile.compile(Bad(), (torch.randn(1, 4),), calib=torch.randn(4, 4), progress=False)


def test_multiple_inputs_need_calibration_for_each():
    class Two(nn.Module):
        def forward(self, a, b):
            return a + b

    with pytest.raises(CalibrationError, match="2 inputs"):  # several inputs are supported (test_multi_io.py)
        qcompile.compile(Two(), (torch.randn(1, 4), torch.randn(1, 4)), calib=torch.randn(4, 4))
