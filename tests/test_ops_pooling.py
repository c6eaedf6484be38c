"""Pooling variants (issue 10): ceil_mode, count_include_pad=False, divisor_override, global max
pooling (adaptive max to 1, amax), adaptive average/max pooling to sizes dividing the input.
C == interpreter bit for bit on random shapes (host; QEMU Cortex-M4 for a fixed sample); the
integer average uses PyTorch's divisor of every window."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompile.backends import ir
from ops_check import compile_and_check


class Pools(nn.Module):
    def __init__(self, c, k, s, p, ceil, include_pad, out_hw):
        super().__init__()
        self.conv = nn.Conv2d(c, 4, 3, padding=1)
        self.maxp = nn.MaxPool2d(k, s, padding=p, ceil_mode=ceil)
        self.avgp = nn.AvgPool2d(k, s, padding=p, ceil_mode=ceil, count_include_pad=include_pad)
        self.out_hw = out_hw

    def forward(self, x):
        x = self.conv(x)
        return torch.cat([self.maxp(x).flatten(1), self.avgp(x).flatten(1),
                          F.adaptive_avg_pool2d(x, self.out_hw).flatten(1),
                          F.adaptive_max_pool2d(x, self.out_hw).flatten(1), x.amax((2, 3))], 1)


@st.composite
def pools(draw):
    k = draw(st.integers(1, 4))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, k // 2))
    oh, ow = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = oh * draw(st.integers(max(1, -(-k // oh)), 4))
    w = ow * draw(st.integers(max(1, -(-k // ow)), 4))
    return (draw(st.integers(1, 3)), h, w, k, s, p, draw(st.booleans()), draw(st.booleans()), (oh, ow),
            draw(st.integers(0, 1000)))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pools())
def test_random_pooling_c_equals_interpreter(spec):
    c, h, w, k, s, p, ceil, include_pad, out_hw, seed = spec
    torch.manual_seed(seed)
    compile_and_check(Pools(c, k, s, p, ceil, include_pad, out_hw), (c, h, w), seed=seed,
                      qemu_once="pooling")


@pytest.mark.qemu
def test_pooling_variants_on_cortex_m4():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.conv1d = nn.Conv1d(8, 4, 3)

        def forward(self, x):
            x = self.conv(x)
            ys = [F.max_pool2d(x, 3, stride=2, ceil_mode=True),
                  F.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
                  F.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True),
                  F.avg_pool2d(x, 2, divisor_override=3), F.adaptive_avg_pool2d(x, (3, 2)),
                  nn.functional.adaptive_max_pool2d(x, 1), x.amax((2, 3))]
            z = self.conv1d(x.flatten(2)[:, :, :11])
            ys += [F.max_pool1d(z, 2, ceil_mode=True), F.avg_pool1d(z, 2, ceil_mode=True, count_include_pad=False)]
            return torch.cat([y.flatten(1) for y in ys], 1)

    art = compile_and_check(M(), (3, 6, 6), qemu=True)
    per_window = [op for op in art.program.ops if isinstance(op, ir.AvgPool) and op.count_padding is not None]
    assert len(per_window) == 3  # the two ceil-mode 2-D average pools with partial windows and the 1-D one
