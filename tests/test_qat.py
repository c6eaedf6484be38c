"""QAT (LSQ, N2UQ): integer thresholds derived by hand, the threshold rule reproduces the float
quantizer's decisions on random accumulators, the GSTE gradient is the paper's, and a short QAT
run lowers to an integer program that agrees with its fake-quant graph."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompile
from qcompile.backends import ir
from qcompile.backends.interpreter import interpret
from qcompile.backends.lower import accumulator_thresholds, lower
from qcompile.config import QuantConfig
from qcompile.errors import ConfigError, UnsupportedQuantizationError
from qcompile.fixedpoint import INT32_MAX, INT32_MIN
from qcompile.n2uq import GeneralizedSTE, N2UQActQuant, n2uq_weight_codes
from qcompile.qat import LsqActQuant

from zoo_models import build

MIN, MAX = INT32_MIN, INT32_MAX


def test_thresholds_by_hand():
    # channel 0: unit s_in * s_w = 0.125, bias 0.375 -> bias_int 3; channel 1: unit 0.0625, bias -0.25 -> -4
    s_in, s_w, b = 0.5, np.array([0.25, 0.125]), np.array([0.375, -0.25])
    bias_int = np.rint(b / (s_in * s_w)).astype(np.int32)
    assert bias_int.tolist() == [3, -4]
    t = accumulator_thresholds(np.array([0.0, 0.3, 0.5, 1.0]), b, s_in, s_w, bias_int, act_range=(0.0, math.inf))
    # T = 0 <= ReLU's floor: always reached. T = 0.3: 3 + ceil(-0.6) = 3; ch1: -4 + ceil(8.8) = 5.
    # T = 0.5: 3 + ceil(1) = 4 (a tie is reached: y(4) = 0.125 + 0.375 = 0.5); ch1: -4 + 12 = 8.
    # T = 1.0: 3 + 5 = 8; ch1: -4 + 20 = 16.
    assert t.dtype == np.int32
    assert t.tolist() == [[MIN, 3, 4, 8], [MIN, 5, 8, 16]]
    # a ReLU6-like ceiling below T: never reached
    t6 = accumulator_thresholds(np.array([0.5, 1.0]), b, s_in, s_w, bias_int, act_range=(0.0, 0.75),
                                acc_bound=np.array([100, 100]))
    assert t6.tolist() == [[4, MAX], [8, MAX]]
    # no fused activation: a negative threshold is an ordinary one
    assert accumulator_thresholds(np.array([-0.5]), b, s_in, s_w, bias_int).tolist() == [[3 - 7], [-4 - 4]]
    # one row per channel (per-channel N2UQ): channel 0 takes T = 0.3, channel 1 T = 0.5 (values above)
    assert accumulator_thresholds(np.array([[0.3], [0.5]]), b, s_in, s_w, bias_int).tolist() == [[3], [8]]
    with pytest.raises(UnsupportedQuantizationError, match="3 rows of thresholds for 2 channels"):
        accumulator_thresholds(np.zeros((3, 1)), b, s_in, s_w, bias_int)


def test_unreachable_threshold_needs_accumulator_headroom():
    with pytest.raises(UnsupportedQuantizationError, match="'conv'"):
        accumulator_thresholds(np.array([2.0]), np.zeros(1), 1.0, np.ones(1), np.zeros(1, np.int32),
                               act_range=(0.0, 1.0), acc_bound=np.array([MAX]), name="conv")


floats = st.floats(min_value=-4.0, max_value=4.0, allow_nan=False, allow_subnormal=False)


@settings(max_examples=60, deadline=None)
@given(th=st.lists(floats, min_size=1, max_size=7), s_in=st.floats(1e-3, 1.0), s_w=st.floats(1e-4, 0.5),
       b=floats, relu=st.booleans(), accs=st.lists(st.integers(-20000, 20000), min_size=1, max_size=40))
def test_integer_thresholds_reproduce_the_float_decisions(th, s_in, s_w, b, relu, accs):
    """For any accumulator, #{k : acc >= t[k]} equals the quantizer's count #{k : clamp(y) >= T[k]}
    with y = s_in * s_w * (acc - bias_int) + b computed exactly."""
    thresholds = np.sort(np.array(th))
    bias_int = np.array([int(np.clip(np.rint(b / (s_in * s_w)), MIN, MAX))], dtype=np.int32)
    lo = 0.0 if relu else -math.inf
    t = accumulator_thresholds(thresholds, np.array([b]), s_in, np.array([s_w]), bias_int, act_range=(lo, math.inf))
    assert np.all(np.diff(t.astype(np.int64), axis=1) >= 0)
    unit, fb = Fraction(s_in) * Fraction(s_w), Fraction(b)
    for acc in accs + [int(v) for v in t[0] if MIN < v < MAX] + [int(v) - 1 for v in t[0] if MIN < v < MAX]:
        y = unit * (acc - int(bias_int[0])) + fb
        if relu:
            y = max(y, Fraction(0))
        expected = sum(y >= Fraction(float(T)) for T in thresholds)
        assert int((acc >= t[0].astype(np.int64)).sum()) == expected


def test_gste_gradient_is_level_step_over_interval():
    torch.manual_seed(0)
    q = N2UQActQuant(bits=2, scale=0.5, zero_point=-128)  # 3 thresholds, intervals of s0 = 0.5
    with torch.no_grad():
        q.a.copy_(torch.tensor([1.0, 2.0, 0.5]))  # boundaries 0, 0.5, 1.5, 1.75 (real units)
    x = torch.tensor([0.2, 1.0, 1.6, 3.0, -1.0], requires_grad=True)
    y = q(x)
    # forward: thresholds at interval midpoints 0.25, 1.0, 1.625 -> counts 0, 2, 2, 3, 0; levels s * count
    assert y.detach().tolist() == pytest.approx([0.0, 1.0, 1.0, 1.5, 0.0])
    y.sum().backward()
    # backward: s / (a_j * s0) inside interval j, 0 outside [B_0, B_L]
    assert x.grad.tolist() == pytest.approx([1.0, 0.5, 2.0, 0.0, 0.0])
    assert q.a.grad is not None and q.start.grad is not None and q.out_rel.grad is not None
    q.freeze()
    np.testing.assert_allclose(q.thresholds.numpy(), [0.25, 1.0, 1.625])
    assert q(x.detach()).tolist() == pytest.approx([0.0, 1.0, 1.0, 1.5, 0.0])


@pytest.mark.parametrize("channels", [None, 3])
def test_gste_backward_is_the_gradient_of_the_piecewise_linear_ramp(channels):
    """GeneralizedSTE's hand-written backward equals autograd through the paper's
    ``F(x) = sum_j clamp((x - B_{j-1}) / a_j, 0, 1)`` for x, B and a; its forward is the count."""
    torch.manual_seed(0)
    lead = () if channels is None else (3,)
    a = (torch.rand(lead + (7,), dtype=torch.float64) + 0.1).requires_grad_(True)
    start = (torch.randn(lead, dtype=torch.float64) - 2).requires_grad_(True)
    x = (torch.randn(5, 3, 4, 4, dtype=torch.float64) * 3).requires_grad_(True)
    weights = torch.randn_like(x)

    def bounds():
        return torch.cat([start.unsqueeze(-1), start.unsqueeze(-1) + torch.cumsum(a, -1)], -1)

    b = bounds()
    y = GeneralizedSTE.apply(x, b, a)
    (y * weights).sum().backward()
    got = [t.grad.clone() for t in (x, a, start)]
    for t in (x, a, start):
        t.grad = None
    b = bounds()
    view = (lambda t: t) if channels is None else (lambda t: t.reshape(1, 3, 1, 1))
    ramp = sum(torch.clamp((x - view(b[..., j])) / view(a[..., j]), 0, 1) for j in range(7))
    (ramp * weights).sum().backward()
    for mine, reference in zip(got, (x.grad, a.grad, start.grad)):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-12)
    t = (b[..., :-1] + a / 2).detach()
    count = (x.detach().unsqueeze(-1) >= (t if channels is None else t.reshape(1, 3, 1, 1, 7))).sum(-1)
    assert torch.equal(y.detach(), count.to(y.dtype))


def test_per_channel_thresholds():
    """One row of boundaries per channel: equal rows give the per-tensor quantizer exactly (values and
    gradients); different rows count each channel against its own row, in training and frozen."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) * 2
    weights = torch.randn(4, 3, 5, 5)
    per_tensor, per_channel = N2UQActQuant(2, 0.5, -128), N2UQActQuant(2, 0.5, -128, channels=3)
    with torch.no_grad():
        per_tensor.a.copy_(torch.tensor([1.0, 2.0, 0.5]))
        per_channel.a.copy_(torch.tensor([1.0, 2.0, 0.5]).expand(3, 3))
    grads = []
    for q in (per_tensor, per_channel):
        xg = x.clone().requires_grad_(True)
        (q(xg) * weights).sum().backward()
        grads.append((xg.grad, q.a.grad.reshape(-1, 3).sum(0), q.start.grad.sum()))
    assert all(torch.allclose(u, v) for u, v in zip(*grads))
    assert torch.equal(per_tensor(x), per_channel(x))
    with torch.no_grad():  # channel 1: boundaries shifted up by 2 s0 = 1.0 (thresholds 1.25, 2.0, 2.625)
        per_channel.start[1] = 2.0
    y = per_channel(x)
    assert torch.equal(y[:, [0, 2]], per_tensor(x)[:, [0, 2]])
    expected = 0.5 * ((x[:, 1:2, ..., None] >= torch.tensor([1.25, 2.0, 2.625])).sum(-1)).to(x.dtype)
    assert torch.equal(y[:, 1:2], expected)
    per_channel.freeze()
    assert per_channel.thresholds.shape == (3, 3)
    np.testing.assert_allclose(per_channel.thresholds[1].numpy(), [1.25, 2.0, 2.625])
    assert torch.allclose(per_channel(x), y, atol=1e-6)


def test_n2uq_weights_use_two_to_the_b_odd_levels():
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    codes, scale = n2uq_weight_codes(w, 2)
    assert set(codes.unique().tolist()) <= {0, 1, 2, 3}
    gamma = 3 / 2
    np.testing.assert_allclose(scale.numpy() * 3, gamma * w.abs().reshape(4, -1).mean(1).numpy(), rtol=1e-12)


def test_config():
    assert QuantConfig().activation_quantizer == "uniform" and QuantConfig().activation_bits == 8
    with pytest.raises(ConfigError, match="needs QAT"):
        QuantConfig(activation_bits=4)
    with pytest.raises(ConfigError, match="2..7"):
        QuantConfig(activation_bits=4, activation_quantizer="n2uq")
    with pytest.raises(ConfigError, match="post-training only"):
        QuantConfig(weight_bits=4, activation_quantizer="lsq", weight_quantizer="pwlq")
    with pytest.raises(ConfigError, match="activation_quantizer"):
        QuantConfig(activation_quantizer="pact")
    with pytest.raises(ConfigError, match="n2uq_thresholds"):
        QuantConfig(n2uq_thresholds="per_pixel")
    with pytest.raises(ConfigError, match="needs activation_quantizer='n2uq'"):
        QuantConfig(activation_bits=4, activation_quantizer="lsq", n2uq_thresholds="per_channel")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = self.conv3(x) + x  # signed conv output into a residual add
        return self.fc(torch.relu(x).flatten(1))


def tiny_task(n: int) -> tuple[Tiny, torch.Tensor, torch.Tensor]:
    """A seeded :class:`Tiny` and ``n`` random 8x8 inputs labelled by its own predictions."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(512, 1, 8, 8, generator=g)


@pytest.mark.parametrize("quantizer", ["n2uq", "lsq", "n2uq per_channel"])
def test_short_qat_lowers_and_agrees_with_the_fake_quant_graph(quantizer, data):
    torch.manual_seed(0)
    model = Tiny().eval()
    quantizer, _, granularity = quantizer.partition(" ")
    cfg = QuantConfig(weight_bits=3, activation_bits=3, activation_quantizer=quantizer, qat_epochs=2, qat_lr=1e-3,
                      n2uq_thresholds=granularity or "per_tensor")
    art = qcompile.compile(model, (data[:1],), calib=data[:384], config=cfg, progress=False)
    rec = art.records["train_quantization_aware"]
    assert rec["steps"] == 2 * 6 and len(rec["loss_per_epoch"]) == 2
    held = data[384:]
    with torch.no_grad():
        graph_top1 = art.graph(held).argmax(1)
    agree = float((art.run(held).argmax(1) == graph_top1).float().mean())
    assert agree >= 0.99
    ops = {op.name: op for op in art.program.ops}
    values = interpret(art.program, art.quantize_input(held), keep=True)
    for name, mod in art.graph.named_modules():
        if isinstance(mod, (N2UQActQuant, LsqActQuant)):  # 2**3 levels inside int8
            tid = next(t.id for t in art.program.tensors if t.name == next(
                n.args[0].name for n in art.graph.graph.nodes if n.target == name))
            v = values[tid]
            assert v.min() >= mod.qmin and v.max() <= mod.qmin + 7
    threshold_ops = [op for op in ops.values() if getattr(op, "thresholds", None) is not None]
    if quantizer == "n2uq":
        assert {op.name for op in threshold_ops} >= {"conv1", "conv2", "conv3"}
        # the learned thresholds (not the initial uniform midpoints) are what the program compares with
        q = art.graph.get_submodule("relu_1_aq")
        init = (torch.arange(1, 8, dtype=torch.float64) - 0.5 - q.k0) * float(q.step0)
        assert not torch.allclose(q.thresholds, init.expand_as(q.thresholds))
        if granularity:  # every channel learned its own row
            assert q.thresholds.shape == (8, 7) and len({tuple(r) for r in q.thresholds.tolist()}) == 8
            art.verify(held[:8], on="host")  # raises on any mismatch
        op = ops["conv2"]
        assert op.codebook is not None and op.codebook.bits == 3
        assert set(np.unique(op.weight).tolist()) <= {-7, -5, -3, -1, 1, 3, 5, 7}
    else:  # sub-8-bit uniform levels after conv/dense lower to thresholds too (exact rounding boundaries)
        assert {op.name for op in threshold_ops} >= {"conv1", "conv2", "conv3"}
        assert all(np.all(np.diff(op.thresholds.astype(np.int64), axis=1) >= 0) for op in threshold_ops)
    assert all(ir.weight_storage_bytes(op) > 0 for op in ops.values() if isinstance(op, (ir.Conv2D, ir.Dense)))


def test_n2uq_with_per_layer_weight_bits(data):
    # conv1 and fc keep 8-bit LSQ weights (qat_keep_ends_8bit); conv2 takes N2UQ's 2**2 odd levels;
    # conv3, asked for 8 bits, cannot (odd levels up to 2**8 - 1 overflow int8): LSQ 8-bit weights
    torch.manual_seed(0)
    cfg = QuantConfig(weight_bits={"conv2": 2, "conv3": 8, "*": 4}, activation_bits=3, activation_quantizer="n2uq",
                      qat_epochs=1, qat_lr=1e-3)
    art = qcompile.compile(Tiny().eval(), (data[:1],), calib=data[:256], config=cfg, progress=False)
    assert art.records["train_quantization_aware"]["weights"] == {"conv1": "lsq8", "conv2": "n2uq2", "conv3": "lsq8",
                                                                  "fc": "lsq8"}
    ops = {op.name: op for op in art.program.ops}
    assert ops["conv2"].codebook.bits == 2 and set(np.unique(ops["conv2"].weight).tolist()) <= {-3, -1, 1, 3}
    assert ops["conv3"].codebook is None and ops["conv3"].thresholds is not None
    art.verify(data[256:264], on="host")  # raises on any mismatch


def test_quantizer_lr_factor_sets_only_the_quantizer_parameters_rate(data):
    # a vanishing factor freezes the learned thresholds at their initial midpoints while the
    # weights still train (they differ from a run whose weights cannot move either: the graph's
    # weights differ from the model's anyway, after equalization); the default factor moves the
    # thresholds (the factor reaches the optimizer)
    learned, conv2 = {}, {}
    for lr, factor in ((1e-12, 1e-12), (1e-3, 1e-12), (1e-3, QuantConfig.qat_quantizer_lr_factor)):
        torch.manual_seed(0)
        cfg = QuantConfig(weight_bits=4, activation_bits=3, activation_quantizer="n2uq", qat_epochs=1, qat_lr=lr,
                          qat_quantizer_lr_factor=factor)
        art = qcompile.compile(Tiny().eval(), (data[:1],), calib=data[:256], config=cfg, progress=False)
        rec = art.records["train_quantization_aware"]
        assert rec["lr"] == lr and rec["quantizer_lr"] == pytest.approx(lr * factor)
        q = art.graph.get_submodule("relu_1_aq")
        init = (torch.arange(1, 8, dtype=torch.float64) - 0.5 - q.k0) * float(q.step0)
        learned[lr, factor] = torch.allclose(q.thresholds.double(), init.expand_as(q.thresholds), rtol=0, atol=1e-6)
        conv2[lr, factor] = art.graph.get_submodule("conv2").module.weight.detach().clone()
    assert learned == {(1e-12, 1e-12): True, (1e-3, 1e-12): True, (1e-3, QuantConfig.qat_quantizer_lr_factor): False}
    assert not torch.equal(conv2[1e-3, 1e-12], conv2[1e-12, 1e-12])
    with pytest.raises(ConfigError, match="qat_quantizer_lr_factor"):
        QuantConfig(activation_quantizer="lsq", activation_bits=4, weight_bits=4, qat_quantizer_lr_factor=0)


def test_qat_is_deterministic(data):
    cfg = QuantConfig(weight_bits=4, activation_bits=4, activation_quantizer="n2uq", qat_epochs=1)
    arts = []
    for _ in range(2):
        torch.manual_seed(0)
        arts.append(qcompile.compile(Tiny().eval(), (data[:1],), calib=data[:128], config=cfg, progress=False))
    a, b = ([op.thresholds for op in art.program.ops if getattr(op, "thresholds", None) is not None] for art in arts)
    assert len(a) == len(b) > 0 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_n2uq_after_an_add_is_rejected_naming_the_node(data):
    model, shape = build("residual")
    x = torch.randn(64, *shape)
    cfg = QuantConfig(weight_bits=4, activation_bits=4, activation_quantizer="lsq", qat_epochs=1)
    art = qcompile.compile(model, (x[:1],), calib=x, config=cfg, progress=False)
    gm = art.graph
    node = next(n for n in gm.graph.nodes
                if n.op == "call_module" and isinstance(gm.get_submodule(n.target), LsqActQuant)
                and "add" in n.args[0].name + str(getattr(n.args[0].args[0], "name", "")))
    bad = N2UQActQuant(4, 0.1, -128)
    bad.freeze()
    setattr(gm, node.target, bad)
    with pytest.raises(UnsupportedQuantizationError, match=node.name):
        lower(gm)
