"""Data movement (issue 10): permute/transpose that reorder memory, .contiguous(), flatten after a
permute, channel shuffle, chunk/split/slicing on channel and spatial axes, cat/stack on any axis,
flip and expand (negative and zero strides).
C == interpreter bit for bit on random shapes (host; QEMU Cortex-M4 for a fixed sample)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qcompile
from qcompile.backends import ir
from ops_check import compile_and_check


class Movement(nn.Module):
    """conv -> a randomly chosen data movement -> conv/linear, so the moved tensor is an intermediate."""

    def __init__(self, c, h, w, how, p):
        super().__init__()
        self.how, self.p = how, p
        size = (c, h, w)[p.get("dim", 1) - 1] if how == "chunk" else 1
        self.count = -(-size // -(-size // p.get("n", 1)))  # torch.chunk may return fewer than n parts
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        with torch.no_grad():
            y = self.move(torch.zeros(1, c, h, w))
        self.fc = nn.Linear(y[0].numel(), 5)

    def move(self, x):
        how, p = self.how, self.p
        if how == "permute":
            return x.permute(0, *p["perm"]).contiguous()
        if how == "transpose":
            return torch.transpose(x, p["a"], p["b"])
        if how == "shuffle":
            n, c, h, w = x.size()
            g = p["groups"]
            return x.view(n, g, c // g, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        if how == "chunk":
            parts = torch.chunk(x, p["n"], dim=p["dim"])
            return torch.cat([parts[i] for i in reversed(range(self.count))], dim=p["dim"])
        if how == "split":
            a, b = x.split([p["k"], p["size"] - p["k"]], dim=p["dim"])
            return torch.cat([b, a * 0.5], dim=p["dim"])
        if how == "slice":
            return x[:, p["c0"]:, p["h0"]::p["step"], :p["w1"]]
        if how == "stack":
            return torch.stack([x, torch.relu(x)], dim=p["dim"])
        if how == "flip":
            return torch.flip(x, p["dims"]) + x[:, :1].expand(-1, x.shape[1], -1, -1)
        raise AssertionError(how)

    def forward(self, x):
        x = self.conv(x)
        return self.fc(torch.flatten(self.move(x), 1))


@st.composite
def movements(draw):
    c, h, w = draw(st.integers(2, 6)), draw(st.integers(2, 6)), draw(st.integers(2, 6))
    how = draw(st.sampled_from(["permute", "transpose", "shuffle", "chunk", "split", "slice", "stack", "flip"]))
    p = {}
    if how == "permute":
        p["perm"] = draw(st.permutations([1, 2, 3]))
    elif how == "transpose":
        p["a"], p["b"] = draw(st.sampled_from([(1, 2), (1, 3), (2, 3), (-1, -3)]))
    elif how == "shuffle":
        c = 2 * draw(st.integers(1, 3))
        p["groups"] = 2
    elif how in ("chunk", "split"):
        p["dim"] = draw(st.integers(1, 3))
        size = (c, h, w)[p["dim"] - 1]
        p["n"] = draw(st.integers(1, 3))
        p["k"] = draw(st.integers(1, max(1, size - 1)))
        p["size"] = size
        if size < 2:
            how = "chunk"
    elif how == "slice":
        p["c0"], p["h0"] = draw(st.integers(0, c - 1)), draw(st.integers(0, h - 1))
        p["step"], p["w1"] = draw(st.integers(1, 3)), draw(st.integers(1, w))
    elif how == "stack":
        p["dim"] = draw(st.integers(1, 4))
    elif how == "flip":
        p["dims"] = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3, unique=True))
    return c, h, w, how, p, draw(st.integers(0, 1000))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(movements())
def test_random_movement_c_equals_interpreter(spec):
    c, h, w, how, p, seed = spec
    torch.manual_seed(seed)
    compile_and_check(Movement(c, h, w, how, p), (c, h, w), seed=seed, qemu_once="movement")


@pytest.mark.qemu
def test_movements_on_cortex_m4():
    """Every movement kind in one model on QEMU (one build)."""

    class All(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.head = nn.Linear(336, 4)

        def forward(self, x):
            x = F.relu(self.conv(x))
            n, c, h, w = x.size()
            s = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
            a, b = torch.chunk(s, 2, dim=1)
            t = torch.cat([b, a[:, :, 1:, :]], dim=2)         # (4, 11, 6): cat along H
            u = torch.stack([t, t * 0.5], dim=3)               # (4, 11, 2, 6)
            v = u.permute(0, 2, 3, 4, 1).contiguous()          # channels last, then flatten
            return self.head(torch.flatten(v[:, 4:], 1))      # (7, 2, 6, 4) -> 336

    art = compile_and_check(All(), (3, 6, 6), qemu=True)
    kinds = {type(op).__name__ for op in art.program.ops}
    assert {"StridedCopy", "Concat"} <= kinds


def test_reviewing_permute_is_free():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 1)

        def forward(self, x):
            return self.conv(x).mean((2, 3)).unsqueeze(2).permute(0, 2, 1).flatten(1)

    art = compile_and_check(M(), (2, 5, 5))
    assert not any(isinstance(op, ir.StridedCopy) for op in art.program.ops)


def test_batch_moving_permute_is_unsupported_with_every_node():
    class M(nn.Module):
        def forward(self, x):
            return x.permute(1, 0, 2, 3) + x[1:]

    with pytest.raises(qcompile.UnsupportedOpError) as e:
        qcompile.compile(M(), (torch.randn(2, 2, 3, 3),), calib=torch.randn(4, 2, 3, 3), progress=False)
    assert "permute" in str(e.value) and "getitem" in str(e.value) and "test_ops_movement.py" in str(e.value)
