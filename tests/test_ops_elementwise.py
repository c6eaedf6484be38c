"""Element-wise ops (issue 10): broadcasting add/sub/mul between tensors and with parameters/buffers
(per-channel scale/shift tensors), torch.maximum/minimum, torch.abs, torch.clamp.
C == interpreter bit for bit on random shapes (host; QEMU Cortex-M4 for a fixed sample), close to float."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qcompile
from ops_check import compile_and_check


class Broadcast(nn.Module):
    """``op(conv(x), other)`` with ``other`` an activation or a constant of a broadcastable shape."""

    def __init__(self, c, other_shape, const, op, lo, hi):
        super().__init__()
        self.conv = nn.Conv2d(c, 4, 3, padding=1)
        self.side = nn.Conv2d(c, other_shape[0], 1)
        self.const, self.op, self.lo, self.hi = const, op, lo, hi
        self.other_shape = other_shape
        self.param = nn.Parameter(torch.randn(*other_shape) * 0.5 + (1.0 if op == "mul" else 0.0))

    def forward(self, x):
        y = self.conv(x)
        if self.const:
            other = self.param
        else:
            z = self.side(x)  # (N, c', H, W) reduced to the wanted broadcast shape
            other = z.amax((2, 3), keepdim=True) if self.other_shape[1:] == (1, 1) else z
        out = {"add": lambda a, b: a + b, "sub": lambda a, b: b - a, "mul": lambda a, b: a * b,
               "max": torch.maximum, "min": torch.minimum}[self.op](y, other)
        return torch.clamp(torch.abs(out), self.lo, self.hi).flatten(1)


@st.composite
def broadcasts(draw):
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(2, 5)), draw(st.integers(2, 5))
    const = draw(st.booleans())
    oc = draw(st.sampled_from([1, 4]))
    oh, ow = draw(st.sampled_from([1, h])), draw(st.sampled_from([1, w]))
    if not const and (oh, ow) not in ((1, 1), (h, w)):
        oh, ow = 1, 1
    op = draw(st.sampled_from(["add", "sub", "mul", "max", "min"]))
    lo = draw(st.sampled_from([None, 0.1]))
    return c, h, w, (oc, oh, ow), const, op, lo, draw(st.sampled_from([None, 1.5] if lo is not None else [1.5])), \
        draw(st.integers(0, 99))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broadcasts())
def test_random_elementwise_c_equals_interpreter(spec):
    c, h, w, other_shape, const, op, lo, hi, seed = spec
    torch.manual_seed(seed)
    compile_and_check(Broadcast(c, other_shape, const, op, lo, hi), (c, h, w), seed=seed,
                      qemu_once="elementwise")


@pytest.mark.qemu
def test_elementwise_on_cortex_m4():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.att = nn.Conv2d(3, 1, 1)
            self.scale = nn.Parameter(torch.rand(1, 4, 1, 1) + 0.5)
            self.register_buffer("shift", torch.randn(4, 1, 1) * 0.3)
            self.register_buffer("row", torch.randn(6) * 0.5)

        def forward(self, x):
            y = self.conv(x)
            a = y * self.scale + self.shift                 # per-channel scale/shift tensors
            b = a * torch.sigmoid(self.att(x))              # (N, 1, H, W) spatial attention
            c = torch.maximum(b, y) - torch.minimum(y, self.row)
            return (torch.clamp(torch.abs(c), max=2.0) + b.mean((2, 3), keepdim=True)).flatten(1)

    art = compile_and_check(M(), (3, 5, 6), qemu=True)
    kinds = [type(op).__name__ for op in art.program.ops]
    assert kinds.count("Constant") == 3 and kinds.count("MinMax") == 2


def test_max_over_a_dim_is_unsupported():
    class M(nn.Module):
        def forward(self, x):
            return torch.max(x, 1)[0]

    with pytest.raises(qcompile.UnsupportedOpError, match="max"):
        qcompile.compile(M(), (torch.randn(1, 3, 4),), calib=torch.randn(4, 3, 4), progress=False)
