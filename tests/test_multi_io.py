"""Several outputs (issue 10): forward() returning a tuple, list or dict of tensors. The C writes
every output in return order into the one output buffer; the header adds per-output macros; art.run
and run_int return forward()'s structure; single-output models keep today's contract."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import qcompile


class Heads(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.body = nn.Conv2d(3, 6, 3, padding=1)
        self.box = nn.Conv2d(6, 4, 1)
        self.cls = nn.Linear(6, 3)

    def forward(self, x):
        y = F.relu(self.body(x))
        boxes = self.box(y).flatten(1)
        probs = F.softmax(self.cls(y.mean((2, 3))), dim=1)
        if self.kind == "tuple":
            return boxes, probs
        if self.kind == "list":
            return [probs, boxes, y]
        return {"probs": probs, "boxes": boxes}


def _compile(kind):
    torch.manual_seed(0)
    model = Heads(kind).eval()
    calib = torch.randn(32, 3, 5, 4)
    return model, calib, qcompile.compile(model, (calib[:1],), calib=calib, name="heads", progress=False)


@pytest.mark.parametrize("kind", ["tuple", "list", "dict"])
def test_structure_run_and_host_c(kind):
    model, calib, art = _compile(kind)
    xs = calib[:4]
    out, ref = art.run(xs), model(xs)
    assert type(out) is type(ref)
    pairs = zip(out.values(), ref.values()) if kind == "dict" else zip(out, ref)
    for got, want in pairs:
        assert got.shape == want.shape
        assert float((got - want.detach()).abs().max()) < 0.1 * float(want.detach().abs().max()) + 0.05
    q = art.run_int(art.quantize_input(xs))
    assert type(q) is type(ref) and all(v.dtype == np.int8 for v in (q.values() if kind == "dict" else q))
    c_out = art.verify(torch.cat([xs, 3 * torch.randn(2, 3, 5, 4)]), on="host")
    assert c_out.shape == (6, art.program.output_size)


def test_header_macros_per_output():
    _, calib, art = _compile("dict")
    header = art.c_sources()["heads.h"]
    macros = dict(re.findall(r"^#define (HEADS_\w+) (.+)$", header, re.M))
    assert macros["HEADS_OUTPUT_COUNT"] == "2"
    assert int(macros["HEADS_OUTPUT_SIZE"]) == 3 + 4 * 5 * 4
    assert macros["HEADS_OUTPUT0_OFFSET"] == "0" and macros["HEADS_OUTPUT1_OFFSET"] == "3"
    assert macros["HEADS_OUTPUT0_SIZE"] == "3" and macros["HEADS_OUTPUT1_SIZE"] == "80"
    assert macros["HEADS_OUTPUT0_ZERO_POINT"] == "(-128)" and "HEADS_OUTPUT_SCALE" not in macros
    assert "int heads_run(const int8_t *input, int8_t *output);" in header


def test_single_output_contract_unchanged():
    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x)

    calib = torch.randn(8, 3, 5, 5)
    art = qcompile.compile(One(), (calib[:1],), calib=calib, name="one", progress=False)
    header = art.c_sources()["one.h"]
    assert "ONE_OUTPUT_SCALE" in header and "ONE_OUTPUT0" not in header and "ONE_OUTPUT_COUNT" not in header
    assert isinstance(art.run(calib[:2]), torch.Tensor)


@pytest.mark.qemu
def test_several_outputs_on_cortex_m4():
    _, calib, art = _compile("list")
    art.verify(calib[:2], on="qemu", cpu="cortex-m4")


def test_returning_a_tensor_twice_or_nested_is_reported():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            y = self.conv(x)
            return y, (y, y)

    with pytest.raises(qcompile.UnsupportedOpError, match="flat tuple"):
        qcompile.compile(Twice(), (torch.randn(1, 3, 4, 4),), calib=torch.randn(4, 3, 4, 4), progress=False)


class TwoInputs(nn.Module):
    """An image and a side vector (e.g. audio features), returning (logits, map)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.side = nn.Linear(5, 4)
        self.head = nn.Linear(8, 3)

    def forward(self, image, features):
        y = F.relu(self.conv(image))
        s = torch.relu(self.side(features))
        return self.head(torch.cat([y.mean((2, 3)), s], 1)), y * s[:, :, None, None]


def _two_inputs():
    torch.manual_seed(1)
    model = TwoInputs().eval()
    images, feats = torch.randn(32, 3, 5, 4), 10 * torch.randn(32, 5)
    art = qcompile.compile(model, (images[:1], feats[:1]), calib=(images, feats), name="two", progress=False)
    return model, images, feats, art


def test_several_inputs_each_with_its_quantization():
    model, images, feats, art = _two_inputs()
    assert len(art.program.inputs) == 2
    s_img, s_feat = (art.program.tensors[t].scale for t in art.program.inputs)
    assert s_feat > 3 * s_img  # features are 10x wider: their own scale, not a shared one
    out, ref = art.run((images[:4], feats[:4])), model(images[:4], feats[:4])
    for got, want in zip(out, ref):
        assert float((got - want.detach()).abs().max()) < 0.1 * float(want.detach().abs().max()) + 0.05
    q = art.run_int((art.quantize_input((images[:2], feats[:2]))))
    assert isinstance(q, tuple) and q[0].shape == (2, 3)
    art.verify((images[:4], feats[:4]), on="host")
    header = art.c_sources()["two.h"]
    macros = dict(re.findall(r"^#define (TWO_\w+) (.+)$", header, re.M))
    assert macros["TWO_INPUT_COUNT"] == "2" and macros["TWO_INPUT_SIZE"] == str(3 * 5 * 4 + 5)
    assert macros["TWO_INPUT1_OFFSET"] == "60" and macros["TWO_INPUT1_SIZE"] == "5"
    assert "int two_run(const int8_t *input, int8_t *output);" in header


@pytest.mark.qemu
def test_several_inputs_on_cortex_m4():
    _, images, feats, art = _two_inputs()
    art.verify((images[:2], feats[:2]), on="qemu", cpu="cortex-m4")


def test_calibration_of_several_inputs_is_checked():
    with pytest.raises(qcompile.CalibrationError, match="input 1"):
        qcompile.compile(TwoInputs(), (torch.randn(1, 3, 5, 4), torch.randn(1, 5)),
                         calib=[(torch.randn(4, 3, 5, 4), torch.randn(4, 6))], progress=False)
