"""Resampling (issue 10): nearest upsampling by integer factors and pixel (un)shuffle (strided copies),
bilinear/linear interpolation in exact integer arithmetic (ir.Resize), ConvTranspose1d/2d (zero
insertion + the ordinary conv kernels). C == interpreter bit for bit on random shapes (host; QEMU
Cortex-M4 for a fixed sample), close to float."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qcompile.backends import ir
from qcompile.backends.lower import linear_taps
from ops_check import compile_and_check


class Resample(nn.Module):
    def __init__(self, c, p):
        super().__init__()
        self.p = p
        self.conv = nn.Conv2d(c, 4, 3, padding=1)
        self.tconv = nn.ConvTranspose2d(4, p["cout"], p["k"], stride=p["stride"], padding=p["pad"],
                                        output_padding=p["opad"], groups=p["groups"], dilation=p["dil"])
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x):
        x = F.relu(self.conv(x))
        p = self.p
        near = F.interpolate(x, scale_factor=p["near"], mode="nearest")
        bil = F.interpolate(x, size=p["size"], mode="bilinear", align_corners=p["align"])
        return torch.cat([near.flatten(1), bil.flatten(1), self.tconv(x).flatten(1),
                          self.shuffle(x).flatten(1), F.pixel_unshuffle(near, 2).flatten(1)], 1)


@st.composite
def resamples(draw):
    k = draw(st.integers(1, 4))
    dil = draw(st.integers(1, 2))
    stride = draw(st.integers(1, 3))
    p = dict(k=k, dil=dil, stride=stride, pad=draw(st.integers(0, dil * (k - 1))),
             opad=draw(st.integers(0, max(0, max(stride, dil) - 1))), groups=draw(st.sampled_from([1, 2])),
             cout=2 * draw(st.integers(1, 2)), near=(2, draw(st.integers(1, 3))),
             size=(draw(st.integers(1, 9)), draw(st.integers(1, 9))), align=draw(st.booleans()))
    return draw(st.integers(1, 3)), 2 * draw(st.integers(1, 3)), 2 * draw(st.integers(1, 3)), p, draw(st.integers(0, 99))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resamples())
def test_random_resampling_c_equals_interpreter(spec):
    c, h, w, p, seed = spec
    # the transposed conv's output, (n - 1) stride - 2 pad + dil (k - 1) + opad + 1, must not be empty
    assume(all((n - 1) * p["stride"] - 2 * p["pad"] + p["dil"] * (p["k"] - 1) + p["opad"] + 1 >= 1 for n in (h, w)))
    torch.manual_seed(seed)
    compile_and_check(Resample(c, p), (c, h, w), seed=seed, qemu_once="resample")


@pytest.mark.parametrize("n_in, n_out, align", [(5, 10, False), (5, 7, False), (4, 12, True), (6, 3, False), (1, 4, True)])
def test_linear_taps_are_pytorchs_weights_exactly(n_in, n_out, align):
    x = torch.randn(1, 1, n_in, dtype=torch.float64)
    want = F.interpolate(x, size=n_out, mode="linear", align_corners=align)[0, 0].numpy()
    t = linear_taps(n_in, n_out, align).astype(np.float64)
    v = x[0, 0].numpy()
    got = (v[t[:, 0].astype(int)] * t[:, 2] + v[t[:, 1].astype(int)] * t[:, 3]) / (t[0, 2] + t[0, 3])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.qemu
def test_resampling_on_cortex_m4():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.up = nn.Upsample(scale_factor=2)
            self.bil = nn.UpsamplingBilinear2d(scale_factor=2)
            self.t2 = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
            self.t1 = nn.ConvTranspose1d(8, 2, 4, stride=2, padding=1)
            self.ps = nn.PixelShuffle(2)

        def forward(self, x):
            x = F.relu(self.conv(x))
            ys = [self.up(x), self.bil(x), F.interpolate(x, size=(7, 5), mode="bilinear"), self.t2(x), self.ps(x),
                  self.t1(x.flatten(2)[:, :, :9]),
                  F.interpolate(x.flatten(2)[:, :, :9], scale_factor=3, mode="linear")]
            return torch.cat([y.flatten(1) for y in ys], 1)

    art = compile_and_check(M(), (3, 4, 6), qemu=True)
    kinds = [type(op).__name__ for op in art.program.ops]
    assert kinds.count("Resize") == 3 and any(isinstance(op, ir.Pad) and op.interior != (0, 0)
                                                for op in art.program.ops)
