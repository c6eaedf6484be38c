"""Optimized weight rounding (AdaRound, Attention Round): the pieces of each method derived by
hand, both lower the layer reconstruction error of nearest rounding on a random layer, and a
compiled model keeps the nearest grid (scales, clipping, integer range), stays bit-exact in C
and is deterministic."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import qcompile
from qcompile.adaround import adaround, beta_at, init_v, rectified_sigmoid, round_regularizer
from qcompile.attention_round import attention_level, attention_round, attention_round_block, sample_level, sigma_at
from qcompile.backends.host_build import run_c_host
from qcompile.config import QuantConfig
from qcompile.errors import ConfigError
from qcompile.nn import QuantizedWeights, quantize_weight_per_channel
from qcompile.reconstruction import BlockData, LayerData, LayerGrid, block_reconstruction_loss, layer_forward, reconstruction_loss

from zoo_models import build


def test_rectified_sigmoid_and_regularizer_by_hand():
    # h(V) = clip(sigmoid(V) * 1.2 - 0.1, 0, 1): V = 0 -> 0.5; saturates at both ends
    v = torch.tensor([0.0, -10.0, 10.0])
    torch.testing.assert_close(rectified_sigmoid(v), torch.tensor([0.5, 0.0, 1.0]))
    rest = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(rectified_sigmoid(init_v(rest)), rest)
    # 1 - |2h - 1|^beta: 0 at h in {0, 1}, 1 at h = 0.5; beta = 2 at h = 0.75 -> 0.75
    assert float(round_regularizer(torch.tensor([0.0, 1.0]), 2.0)) == 0.0
    assert float(round_regularizer(torch.tensor([0.5]), 20.0)) == 1.0
    assert float(round_regularizer(torch.tensor([0.75]), 2.0)) == pytest.approx(0.75)
    # warm-up (20%) without regularizer, then beta linear from 20 to 2
    assert beta_at(0, 100) is None and beta_at(19, 100) is None
    assert beta_at(20, 100) == pytest.approx(20.0) and beta_at(100, 100) == pytest.approx(2.0)


def test_attention_weights_by_hand():
    # u = 0.25, sigma = 0.5: p(q) ~ exp(-(0.25 - q)^2 / 0.5) over q in {-1, 0, 1} (qmax = 1)
    u, sigma = torch.tensor([0.25]), 0.5
    q = torch.tensor([-1.0, 0.0, 1.0])
    p = torch.exp(-(0.25 - q) ** 2 / (2 * sigma**2))
    expected = float((p * q).sum() / p.sum())
    assert float(attention_level(u, sigma, 1, 2)) == pytest.approx(expected, rel=1e-6)
    # levels beyond qmax never get weight: u = 0.9 at qmax = 1 stays <= 1
    assert float(attention_level(torch.tensor([0.9]), 2.0, 1, 4)) <= 1.0
    # a sharp Gaussian samples the nearest level; schedule goes 0.5 -> 0.05
    gen = torch.Generator().manual_seed(0)
    u = torch.tensor([0.3, -1.6, 2.49, 7.2])
    assert sample_level(u, 0.01, 7, 2, gen).tolist() == [0.0, -2.0, 2.0, 7.0]
    assert sigma_at(0, 10) == pytest.approx(0.5) and sigma_at(9, 10) == pytest.approx(0.05)


def _random_layer(bits: int = 3, seed: int = 0) -> LayerData:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(24, 8)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(8, 24, generator=g) * 0.3)
        lin.bias.copy_(torch.randn(8, generator=g) * 0.1)
    # correlated inputs (low-rank mixing), as activations are: rounding errors can cancel
    x = torch.randn(512, 6, generator=g) @ torch.randn(6, 24, generator=g) + 0.1 * torch.randn(512, 24, generator=g)
    _, scale = quantize_weight_per_channel(lin.weight, bits)
    with torch.no_grad():
        target = lin(x)
    return LayerData(module=lin, x=x, target=target, scale=scale.float(), qmax=(1 << (bits - 1)) - 1)


@pytest.mark.parametrize("method", [adaround, attention_round])
def test_optimized_rounding_beats_nearest_on_a_random_layer(method):
    data = _random_layer()
    nearest = torch.clamp(torch.round(data.w_grid), -data.qmax, data.qmax)
    before = float(reconstruction_loss(data, data.dequantize(nearest)))
    levels, history = method(data, 300, seed=0)
    after = float(reconstruction_loss(data, data.dequantize(levels)))
    assert after < 0.7 * before, (method.__name__, before, after)
    # hard integer levels in range
    assert torch.equal(levels, torch.round(levels)) and float(levels.abs().max()) <= data.qmax
    assert len(history) == 11


def test_attention_round_prior_anchors_the_levels_at_the_float_weights(monkeypatch):
    """The Gaussian prior term pulls ``u`` towards ``W/s``: overwhelmingly weighted, every weight
    ends at its nearest level; unweighted, the reconstruction moves some of them."""
    import qcompile.attention_round as ar

    data = _random_layer()
    nearest = torch.clamp(torch.round(data.w_grid), -data.qmax, data.qmax)
    monkeypatch.setattr(ar, "PRIOR_WEIGHT", 1e4)
    assert torch.equal(ar.attention_round(data, 100, seed=0)[0], nearest)
    monkeypatch.setattr(ar, "PRIOR_WEIGHT", 0.0)
    assert int((ar.attention_round(data, 100, seed=0)[0] != nearest).sum()) > 0


def _compile(model, x, **cfg):
    return qcompile.compile(model, (x[:1],), calib=x, config=QuantConfig(**cfg), progress=False)


def _weights(art) -> dict[str, QuantizedWeights]:
    return {n: m for n, m in art.graph.named_modules() if isinstance(m, QuantizedWeights)}


@pytest.mark.parametrize("method", ["adaround", "attention_round"])
def test_compiled_levels_stay_on_the_nearest_grid_and_are_bit_exact(method, tmp_path):
    m, shape = build("residual")
    torch.manual_seed(3)
    x = torch.randn(64, *shape)
    near = _compile(m, x, weight_bits=3)
    opt = _compile(m, x, weight_bits=3, rounding=method, rounding_iters=40)
    rec = opt.records["optimize_weight_rounding"]
    # 64 calibration samples: the 32 the network-output choice compares on are left out
    assert set(rec["layers"]) == set(_weights(near)) and rec["samples"] == 32
    changed = 0
    for name, q in _weights(opt).items():
        ref = _weights(near)[name]
        torch.testing.assert_close(q.weight_scale, ref.weight_scale, rtol=0, atol=0)  # same grid and clipping
        assert q.bits == 3 and int(q.weight_int.abs().max()) <= 3
        changed += int((q.weight_int != ref.weight_int).sum())
    assert changed == sum(r["changed_weights"] for r in rec["layers"].values()) > 0
    xq = opt.quantize_input(x[:4])
    np.testing.assert_array_equal(run_c_host(opt.program, opt.plan, xq, workdir=tmp_path), opt.run_int(xq))
    assert "optimize_weight_rounding" in opt.report()


def test_reconstruction_leaves_out_the_samples_the_choice_compares_on():
    from qcompile.layer_choice import compared_samples
    from qcompile.passes.optimize_weight_rounding import reconstruction_samples

    assert compared_samples(1024) == slice(128, 256) and compared_samples(100) == slice(50, 100)
    keep = reconstruction_samples(1024).tolist()
    assert keep == list(range(128)) + list(range(256, 1024))
    assert reconstruction_samples(64).tolist() == list(range(32))
    assert reconstruction_samples(1).tolist() == [0]  # too few to hold any out: all are used


def test_rounding_per_layer_and_deterministic():
    m, shape = build("mlp")
    torch.manual_seed(4)
    x = torch.randn(64, *shape)
    cfg = dict(weight_bits=4, rounding={"l2": "adaround", "l*": "attention_round"}, rounding_iters=30)
    a, b = _compile(m, x, **cfg), _compile(m, x, **cfg)
    layers = a.records["optimize_weight_rounding"]["layers"]
    names = set(_weights(a))
    assert {n: r["method"] for n, r in layers.items()} == {n: ("adaround" if n == "l2" else "attention_round")
                                                           for n in names if n.startswith("l")}
    for n in names:
        assert torch.equal(_weights(a)[n].weight_int, _weights(b)[n].weight_int)


def test_rounding_config_errors():
    cfg = QuantConfig(rounding={"conv0": "adaround", "blocks.*": "attention_round"})
    assert (cfg.rounding_for("conv0"), cfg.rounding_for("blocks.1"), cfg.rounding_for("fc")) == \
        ("adaround", "attention_round", "nearest")
    with pytest.raises(ConfigError, match="rounding"):
        QuantConfig(rounding="stochastic")
    with pytest.raises(ConfigError, match="rounding"):
        QuantConfig(rounding={"fc": "up"})
    with pytest.raises(ConfigError, match="pwlq"):
        QuantConfig(weight_bits=4, weight_quantizer="pwlq", rounding="attention_round")
    with pytest.raises(ConfigError, match="post-training"):
        QuantConfig(weight_bits=4, activation_bits=4, activation_quantizer="lsq", rounding="adaround")
    with pytest.raises(ConfigError, match="rounding_blocks"):
        QuantConfig(rounding="attention_round", rounding_blocks="depthwise")
    with pytest.raises(ConfigError, match="rounding_iters"):
        QuantConfig(rounding="adaround", rounding_iters=0)
    QuantConfig(weight_bits=4, weight_quantizer="pwlq", rounding="nearest")  # fine


def _random_block(bits: int = 3, seed: int = 0) -> BlockData:
    """A depthwise-like first layer (few weights per channel) feeding a second one through a ReLU."""
    g = torch.Generator().manual_seed(seed)
    first, second = nn.Conv1d(8, 8, 3, padding=1, groups=8), nn.Conv1d(8, 6, 1)
    with torch.no_grad():
        for layer in (first, second):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.4)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.1)
    x = torch.randn(256, 2, 16, generator=g).repeat(1, 4, 1) + 0.1 * torch.randn(256, 8, 16, generator=g)
    grids = [LayerGrid(module=m, scale=quantize_weight_per_channel(m.weight, bits)[1].float(), qmax=(1 << (bits - 1)) - 1)
             for m in (first, second)]

    def run(weights, inp):
        return layer_forward(second, weights[1], torch.relu(layer_forward(first, weights[0], inp)))

    with torch.no_grad():
        target = run([first.weight, second.weight], x)
    return BlockData(layers=grids, run=run, x=x, target=target)


def test_attention_round_block_lowers_the_block_error_and_keeps_hard_levels():
    block = _random_block()
    nearest = [torch.clamp(torch.round(g.w_grid), -g.qmax, g.qmax) for g in block.layers]
    before = float(block_reconstruction_loss(block, [g.dequantize(q) for g, q in zip(block.layers, nearest)]))
    levels, history = attention_round_block(block, 300, seed=0)
    after = float(block_reconstruction_loss(block, [g.dequantize(q) for g, q in zip(block.layers, levels)]))
    assert after < 0.9 * before, (before, after)  # measured 0.81x (1,000 steps: 0.68x)
    for g, q in zip(block.layers, levels):
        assert torch.equal(q, torch.round(q)) and float(q.abs().max()) <= g.qmax
    assert len(history) == 11


def test_depthwise_pairs_are_rounded_jointly_and_stay_bit_exact(tmp_path):
    from qcompile.layer_choice import _Shifted  # noqa: PLC0415 (trial wrapper must not survive)

    m, shape = build("depthwise_separable")
    torch.manual_seed(5)
    x = torch.randn(64, *shape)
    art = _compile(m, x, weight_bits=3, rounding="attention_round", rounding_iters=40)
    layers = art.records["optimize_weight_rounding"]["layers"]
    pairs = {name: r["block"] for name, r in layers.items() if "block" in r}
    # dw (groups = channels) with the pointwise conv after its ReLU6 and fake-quantizer; dw2 has a
    # channel multiplier of 2, so it is not depthwise in this sense and stays layer-wise
    assert pairs == {"dw.0": ["dw.0", "pw.0"], "pw.0": ["dw.0", "pw.0"]}, pairs
    assert layers["dw.0"]["choice"] == layers["pw.0"]["choice"] in ("nearest", "depthwise alone", "consumer alone",
                                                                     "each alone", "block-wise")
    assert layers["dw.0"]["kept_nearest"] == (layers["dw.0"]["choice"] == "nearest")
    # the joint optimization targets the pair's output, so it reconstructs it better than each layer alone
    assert layers["dw.0"]["error_block_wise"] < layers["dw.0"]["error_each_alone"] < layers["dw.0"]["error_nearest"]
    assert not any(isinstance(mod, _Shifted) for mod in art.graph.modules())
    xq = art.quantize_input(x[:4])
    np.testing.assert_array_equal(run_c_host(art.program, art.plan, xq, workdir=tmp_path), art.run_int(xq))
    assert "1 depthwise pair block-wise" in art.report()
    layerwise = _compile(m, x, weight_bits=3, rounding="attention_round", rounding_iters=40, rounding_blocks=False)
    assert not any("block" in r for r in layerwise.records["optimize_weight_rounding"]["layers"].values())
