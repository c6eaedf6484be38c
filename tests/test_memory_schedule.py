"""Memory planning: in-place element-wise ops, memory-aware op order, plan invariants; bias headroom."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import qcompile
from qcompile.backends import ir
from qcompile.backends.memory_plan import plan_memory
from qcompile.backends.schedule import greedy_memory_order, schedule_for_memory
from qcompile.passes.quantize_weights import BIAS_LIMIT
from zoo_models import ZOO, build


def _assert_plan_valid(program: ir.Program, plan) -> None:
    """Tensors alive at the same op never overlap unless one is computed in place over the other."""
    tids = list(plan.offsets)
    for i, a in enumerate(tids):
        for b in tids[i + 1:]:
            (a0, a1), (b0, b1) = plan.lifetimes[a], plan.lifetimes[b]
            if a0 > b1 or b0 > a1:
                continue
            oa, ob = plan.offsets[a], plan.offsets[b]
            sa, sb = program.tensors[a].size, program.tensors[b].size
            if oa < ob + sb and ob < oa + sa:
                # allowed only for an in-place pair: b written by the op where a dies (or vice versa)
                assert (b in plan.aliases and b0 == a1) or (a in plan.aliases and a0 == b1), (a, b)
    assert plan.arena_size >= plan.lower_bound


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_plans_are_valid(name):
    model, shape = build(name)
    calib = torch.randn(16, *shape)
    art = qcompile.compile(model, (calib[:1],), calib=calib, progress=False)
    _assert_plan_valid(art.program, art.plan)


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        y = torch.sigmoid(y)       # LUT: in place over the conv output
        y = y + y * 0.5            # scalar mul -> LUT (y still alive), then add over both
        return y.flatten(1)


def test_elementwise_ops_run_in_place():
    calib = torch.randn(16, 4, 6, 6)
    art = qcompile.compile(Chain().eval(), (calib[:1],), calib=calib, progress=False)
    by_name = {op.name: op for op in art.program.ops}
    sig, add = by_name["sigmoid"], by_name["add"]
    assert art.plan.offsets[sig.output] == art.plan.offsets[sig.input]
    assert add.output in art.plan.aliases
    assert art.arena_size == 2 * 4 * 6 * 6  # conv output + one live temporary, never three
    _assert_plan_valid(art.program, art.plan)
    art.verify(torch.randn(8, 4, 6, 6), on="host")


class Branchy(nn.Module):
    """A small branch and a big branch; running the big one first lowers the peak."""

    def __init__(self):
        super().__init__()
        self.small = nn.Conv2d(2, 1, 1)
        self.big1 = nn.Conv2d(2, 16, 3, padding=1)
        self.big2 = nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x):
        s = self.small(x)
        b = self.big2(F.relu(self.big1(x)))
        return (s + b).flatten(1)


def test_memory_aware_order_beats_traced_order():
    calib = torch.randn(16, 2, 8, 8)
    art = qcompile.compile(Branchy().eval(), (calib[:1],), calib=calib, progress=False)
    names = [op.name for op in art.program.ops]
    assert names.index("big1") < names.index("small")
    traced = ir.Program("t", art.program.tensors, sorted(art.program.ops, key=lambda op: ["small", "big1", "big2",
                                                                                           "add", "flatten"].index(op.name)),
                        art.program.inputs, art.program.outputs)
    assert art.plan.arena_size < plan_memory(traced).arena_size
    assert schedule_for_memory(traced).ops[0].name == "big1"
    assert sorted(greedy_memory_order(traced)) == list(range(len(traced.ops)))
    art.verify(torch.randn(4, 2, 8, 8), on="host")


def test_bias_keeps_headroom_when_input_scale_is_tiny():
    class DeadInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 3)

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    model = DeadInput().eval()
    with torch.no_grad():
        model.a.bias.fill_(-100.0)   # ReLU output is always 0: a degenerate activation range
        model.b.bias.copy_(torch.tensor([5.0, -7.0, 0.0]))
    calib = torch.randn(32, 4)
    art = qcompile.compile(model, (calib[:1],), calib=calib, progress=False)
    dense = art.program.ops[-1]
    assert np.abs(dense.bias.astype(np.int64)).max() <= BIAS_LIMIT
    y = art.run(calib)
    torch.testing.assert_close(y, model(calib).detach(), atol=2 * art.program.output.scale, rtol=0)
    art.verify(calib[:8], on="host")
