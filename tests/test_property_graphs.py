"""Property test: random small torch graphs -> compile -> C on host == interpreter, bit for bit."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qcompile
from zoo_models import randomize_batchnorm


class RandomNet(nn.Module):
    """A chain of randomly chosen blocks; ``plan`` is a list of (block, params) tuples."""

    def __init__(self, plan, in_ch):
        super().__init__()
        self.plan = plan
        self.layers = nn.ModuleList()
        c = in_ch
        for kind, p in plan:
            if kind == "conv":
                groups = c if p["depthwise"] else 1
                cout = c * p["mult"] if p["depthwise"] else p["cout"]
                self.layers.append(nn.Sequential(
                    nn.Conv2d(c, cout, p["k"], stride=p["stride"], padding=p["pad"], groups=groups),
                    nn.BatchNorm2d(cout)))
                c = cout
            elif kind in ("residual", "sub"):
                self.layers.append(nn.Conv2d(c, c, 3, padding=1))
            elif kind == "cat":
                self.layers.append(nn.Conv2d(c, p["cout"], 1))
                c = c + p["cout"]
            elif kind == "se":
                self.layers.append(nn.Conv2d(c, c, 1))
            else:
                self.layers.append(nn.Identity())
        self.out_channels = c

    def forward(self, x):
        for (kind, p), layer in zip(self.plan, self.layers):
            if kind == "conv":
                x = layer(x)
                x = {"relu": F.relu, "relu6": F.relu6, "none": lambda v: v, "tanh": torch.tanh}[p["act"]](x)
            elif kind == "residual":
                x = F.relu(x + layer(x))
            elif kind == "sub":
                x = x - layer(x)
            elif kind == "cat":
                x = torch.cat([x, layer(x)], dim=1)
            elif kind == "se":
                x = x * torch.sigmoid(layer(F.adaptive_avg_pool2d(x, 1)))
            elif kind == "maxpool":
                x = F.max_pool2d(x, p["k"], stride=p["stride"])
            elif kind == "avgpool":
                x = F.avg_pool2d(x, p["k"], stride=p["stride"])
        return x.mean([2, 3])


@st.composite
def random_net(draw):
    c = draw(st.integers(1, 5))
    size0 = size = draw(st.integers(5, 12))
    plan = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "residual", "sub", "cat", "se", "maxpool", "avgpool"]))
        if kind == "conv":
            k = draw(st.integers(1, min(4, size)))
            p = dict(k=k, stride=draw(st.integers(1, 3)), pad=draw(st.integers(0, k // 2)),
                     depthwise=draw(st.booleans()), mult=draw(st.integers(1, 2)), cout=draw(st.integers(1, 9)),
                     act=draw(st.sampled_from(["relu", "relu6", "none", "tanh"])))
            size = (size + 2 * p["pad"] - k) // p["stride"] + 1  # >= 1 because k <= size
        elif kind in ("maxpool", "avgpool"):
            k = draw(st.integers(1, min(3, size)))
            p = dict(k=k, stride=draw(st.integers(1, 3)))
            size = (size - k) // p["stride"] + 1
        elif kind == "cat":
            p = dict(cout=draw(st.integers(1, 6)))
        else:
            p = {}
        plan.append((kind, p))
    seed = draw(st.integers(0, 10_000))
    return plan, c, size0, seed


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(random_net())
def test_random_graph_c_equals_interpreter(spec):
    plan, c, h, seed = spec
    torch.manual_seed(seed)
    model = randomize_batchnorm(RandomNet(plan, c), seed)
    x = torch.randn(16, c, h, h)
    art = qcompile.compile(model, (x[:1],), calib=x, progress=False)
    xs = np.concatenate([art.quantize_input(torch.randn(6, c, h, h) * 2),
                         np.random.default_rng(seed).integers(-128, 128, (2, c, h, h), dtype=np.int8)])
    art.verify(xs, on="host")
