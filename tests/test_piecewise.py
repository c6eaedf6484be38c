"""Piecewise-linear weight quantization (PWLQ): level construction derived by hand, the
breakpoint search never loses to uniform quantization, the int8 realization and its codebook
are exact, and a PWLQ-compiled model stays bit-exact between the interpreter and C."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompile
from qcompile.backends import ir
from qcompile.backends.host_build import run_c_host
from qcompile.config import QuantConfig
from qcompile.errors import ConfigError, IRVerificationError
from qcompile.nn import quantize_weight_per_channel
from qcompile.piecewise import pwlq_levels, quantize_piecewise, search_breakpoints, uniform_ratio

from zoo_models import build


def test_levels_by_hand():
    # 4 bits: Lc = 3 center levels per side (step p/3), Lt = 4 tail levels per side (step (m-p)/4).
    levels = pwlq_levels(np.array([1.0]), np.array([0.3]), 4)[0]
    expected = [-1.0, -0.825, -0.65, -0.475, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.475, 0.65, 0.825, 1.0, 0.0]
    np.testing.assert_allclose(levels, expected, atol=1e-12)
    # at p/m = 3/7 both steps are m/7: exactly the 15 levels of uniform 4-bit quantization
    assert uniform_ratio(4) == pytest.approx(3 / 7)
    uni = pwlq_levels(np.array([7.0]), np.array([3.0]), 4)[0][:-1]
    np.testing.assert_allclose(uni, np.arange(-7, 8), atol=1e-12)
    # 3 bits: center {0, +-p}, tail p + k (m - p) / 2, k = 1, 2
    np.testing.assert_allclose(pwlq_levels(np.array([1.0]), np.array([0.5]), 3)[0][:-1],
                               [-1.0, -0.75, -0.5, 0.0, 0.5, 0.75, 1.0], atol=1e-12)


def _uniform_error(w: np.ndarray, bits: int) -> np.ndarray:
    q, s = quantize_weight_per_channel(torch.from_numpy(w), bits)
    return ((w - q.double().numpy() * s.numpy()[:, None]) ** 2).sum(axis=1)


def _pwlq_error(w: np.ndarray, bits: int) -> np.ndarray:
    m, p = search_breakpoints(w, bits)
    levels = pwlq_levels(m, p, bits)[:, :-1]
    q = levels[np.arange(w.shape[0])[:, None], np.abs(w[:, :, None] - levels[:, None, :]).argmin(axis=2)]
    return ((w - q) ** 2).sum(axis=1)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.sampled_from([3, 4, 5, 6]), heavy=st.booleans())
def test_breakpoint_search_never_worse_than_uniform(seed, bits, heavy):
    rng = np.random.default_rng(seed)
    w = rng.standard_t(2, size=(6, 40)) if heavy else rng.normal(size=(6, 40))
    assert np.all(_pwlq_error(w, bits) <= _uniform_error(w, bits) * (1 + 1e-9) + 1e-15)


def test_pwlq_beats_uniform_on_bell_shaped_weights():
    """The paper's premise: long-tailed (Laplacian-like) weights at 4 bits."""
    w = np.random.default_rng(0).laplace(size=(16, 288))
    assert _pwlq_error(w, 4).sum() < 0.8 * _uniform_error(w, 4).sum()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.sampled_from([3, 4, 6]))
def test_int8_realization_is_an_exact_codebook(seed, bits):
    w = torch.from_numpy(np.random.default_rng(seed).laplace(size=(5, 3, 3, 3)))
    q = quantize_piecewise(w, bits)
    cb = ir.Codebook(q["codes"], q["levels"], bits)
    np.testing.assert_array_equal(cb.decode(), q["weight_int"])
    assert q["codes"].max() < (1 << bits) - 1  # the spare code is never used
    assert np.abs(q["weight_int"].astype(int)).max() <= 127
    # every weight sits on its nearest realized level: error at most half the local gap + grid rounding
    real = q["weight_int"].astype(np.float64) * q["scale"][:, None, None, None]
    m = np.abs(w.numpy()).reshape(5, -1).max(axis=1)
    assert np.all(np.abs(real - w.numpy()).reshape(5, -1).max(axis=1) <= m * 0.5 + 1e-12)


def test_pwlq_needs_three_bits():
    m, shape = build("plain_cnn")
    x = torch.randn(8, *shape)
    with pytest.raises(ConfigError, match="needs weight_bits >= 3"):
        qcompile.compile(m, (x[:1],), calib=x, config=QuantConfig(weight_bits=2, weight_quantizer="pwlq", pwlq_layers="all"),
                         progress=False)
    with pytest.raises(ConfigError, match="weight_quantizer"):
        QuantConfig(weight_quantizer="lloyd")


def test_verifier_rejects_a_codebook_that_does_not_decode_to_the_weights():
    m, shape = build("plain_cnn")
    x = torch.randn(16, *shape)
    art = qcompile.compile(m, (x[:1],), calib=x, config=QuantConfig(weight_bits=4, weight_quantizer="pwlq", pwlq_layers="all"),
                           progress=False)
    op = next(o for o in art.program.ops if isinstance(o, ir.Conv2D))
    assert op.codebook is not None and op.codebook.bits == 4
    bad = op.codebook.levels.copy()
    bad[0, op.codebook.codes.reshape(op.weight.shape[0], -1)[0, 0]] += 1
    object.__setattr__(op, "codebook", ir.Codebook(op.codebook.codes, bad, 4))
    with pytest.raises(IRVerificationError, match="decoded codebook"):
        ir.verify(art.program)


def test_storage_bytes_count_packed_codes_and_tables():
    m, shape = build("plain_cnn")
    x = torch.randn(16, *shape)
    art = qcompile.compile(m, (x[:1],), calib=x, config=QuantConfig(weight_bits=4, weight_quantizer="pwlq", pwlq_layers="all"),
                           progress=False)
    shared = 0
    for op in art.program.ops:
        if isinstance(op, (ir.Conv2D, ir.Dense)):
            co, k = op.weight.shape[0], int(np.prod(op.weight.shape[1:]))
            rows = len(np.unique(op.codebook.levels, axis=0))  # distinct tables, stored once
            tables = rows * 16 + co if rows * 16 + co < co * 16 else co * 16  # + a uint8 row index
            shared += tables < co * 16
            assert ir.weight_storage_bytes(op) == co * ((k + 1) // 2) + tables
    assert shared, "no layer shares its level tables: the test would not cover the shared form"


@pytest.mark.parametrize("name", ["residual", "depthwise_separable", "mlp"])
def test_pwlq_model_is_bit_exact_in_c(name, tmp_path):
    m, shape = build(name)
    torch.manual_seed(1)
    x = torch.randn(32, *shape)
    art = qcompile.compile(m, (x[:1],), calib=x, config=QuantConfig(weight_bits=4, weight_quantizer="pwlq", pwlq_layers="all"),
                           progress=False)
    assert any(getattr(op, "codebook", None) is not None for op in art.program.ops)
    xq = art.quantize_input(x[:4])
    got = run_c_host(art.program, art.plan, xq, workdir=tmp_path)
    np.testing.assert_array_equal(got, art.run_int(xq))


def test_per_layer_weight_bits_by_name_and_pattern():
    """Mixed precision by rule: exact names beat patterns, the first matching pattern wins, the
    rest keeps 8 bits; the program carries each layer's width and the pipeline records it."""
    cfg = QuantConfig(weight_bits={"conv2": 3, "conv*": 4, "fc": 6})
    assert (cfg.bits_for("conv2"), cfg.bits_for("conv0"), cfg.bits_for("fc"), cfg.bits_for("head")) == (3, 4, 6, 8)
    assert cfg.uniform_weight_bits is None and QuantConfig(weight_bits=5).uniform_weight_bits == 5
    for bad in ({"conv0": 9}, {"conv0": 1}, {3: 4}, {"x": True}):
        with pytest.raises(ConfigError, match="weight_bits"):
            QuantConfig(weight_bits=bad)
    # QAT takes per-layer widths too (N2UQ: 8-bit layers get LSQ weights); one width of 8 is not N2UQ's
    assert QuantConfig(weight_bits={"*": 4}, activation_quantizer="n2uq", activation_bits=4).uniform_weight_bits is None
    with pytest.raises(ConfigError, match="2..7"):
        QuantConfig(weight_bits=8, activation_quantizer="n2uq", activation_bits=4)
    m, shape = build("residual")
    torch.manual_seed(2)
    x = torch.randn(32, *shape)
    art = qcompile.compile(m, (x[:1],), calib=x, config=QuantConfig(weight_bits={"conv0": 8, "*": 4}), progress=False)
    bits = {op.name: op.w_bits for op in art.program.ops if isinstance(op, (ir.Conv2D, ir.Dense))}
    assert bits["conv0"] == 8 and set(v for k, v in bits.items() if k != "conv0") == {4}
    assert art.records["quantize_weights"]["layers"]["conv0"] == 8
    assert "per layer bits" in art.report()
    with pytest.raises(ConfigError, match="layer 'conv0' has 2"):
        qcompile.compile(m, (x[:1],), calib=x, config=QuantConfig(weight_bits={"conv0": 2, "*": 4},
                                                                  weight_quantizer="pwlq", pwlq_layers="all"), progress=False)


def test_network_output_chooser_keeps_the_candidate_closer_to_float():
    """``choose_by_network_output`` on a two-layer net: per layer, a candidate computing the exact
    float layer must beat one with visibly perturbed weights, wherever it is listed, and the
    chosen modules (not the comparison wrappers) are left installed."""
    from torch.fx import symbolic_trace

    from qcompile.layer_choice import choose_by_network_output
    from qcompile.pass_manager import PassContext

    torch.manual_seed(0)
    net = symbolic_trace(torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval())
    x = torch.randn(64, 6)
    layers = [n for n in net.graph.nodes if n.op == "call_module" and n.target in ("0", "2")]
    inputs = {"0": x, "2": torch.relu(net.get_submodule("0")(x)).detach()}

    def noisy(layer):
        out = torch.nn.Linear(layer.in_features, layer.out_features)
        with torch.no_grad():
            out.weight.copy_(layer.weight + 0.3 * torch.randn_like(layer.weight))
            out.bias.copy_(layer.bias)
        return out

    order = {"0": ("noisy", "exact"), "2": ("exact", "noisy")}

    def candidates(node, fit):
        layer = net.get_submodule(node.target)
        made = {"exact": layer, "noisy": noisy(layer)}
        return {k: made[k] for k in order[node.target]}

    ctx = PassContext(config=QuantConfig(), example_inputs=(x[:1],), calib=[x[:32], x[32:]], progress=False)
    chosen = choose_by_network_output(net, ctx, layers, inputs, candidates, centered=False)
    assert {t: name for t, (name, _) in chosen.items()} == {"0": "exact", "2": "exact"}
    assert all(type(net.get_submodule(t)) is torch.nn.Linear for t in ("0", "2"))

    # the reference is the *float* network even when weight-quantized layers are installed
    from qcompile.nn import QuantizedWeights

    coarse = QuantizedWeights(net.get_submodule("2"), 2)
    net.add_submodule("2", coarse)
    chosen = choose_by_network_output(net, ctx, layers[1:], inputs,
                                      lambda node, fit: {"coarse": coarse, "float": coarse.module}, centered=False)
    assert chosen["2"][0] == "float"


def test_pwlq_auto_keeps_pwlq_only_where_it_helps_and_lowers_both_kinds(tmp_path):
    """``pwlq_layers="auto"``: every layer is recorded as PWLQ or uniform, the program carries a
    codebook exactly for the PWLQ ones, and the mixed program is bit-exact in C."""
    m, shape = build("residual")
    torch.manual_seed(3)
    x = torch.randn(64, *shape)
    art = qcompile.compile(m, (x[:1],), calib=x, config=QuantConfig(weight_bits=4, weight_quantizer="pwlq"),
                           progress=False)
    rec = art.records["quantize_weights_piecewise"]
    weighted = [op for op in art.program.ops if isinstance(op, (ir.Conv2D, ir.Dense))]
    assert rec["uniform_layers"] and rec["mean_breakpoint"], "this model/seed must mix both kinds"
    assert {op.name for op in weighted} == set(rec["uniform_layers"]) | set(rec["mean_breakpoint"])
    for op in weighted:
        assert (op.codebook is None) == (op.name in rec["uniform_layers"]), op.name
    with pytest.raises(ConfigError, match="pwlq_layers"):
        QuantConfig(weight_bits=4, weight_quantizer="pwlq", pwlq_layers="some")
    xq = art.quantize_input(x[:4])
    np.testing.assert_array_equal(run_c_host(art.program, art.plan, xq, workdir=tmp_path), art.run_int(xq))


def test_levels_per_channel_take_the_lowest_layer_output_error_of_the_candidates():
    """``choose_levels_per_channel``: each output channel ends with the smallest output MSE of
    uniform, the weight-error breakpoint and every (ratio of ``OUTPUT_BREAKPOINTS``, level split)
    (its own levels, not a neighbour's), and the inputs' energy moves the choice: with one input
    channel 100x louder than the rest, the chosen levels differ from the weight-error breakpoint's."""
    from qcompile.nn import QuantizedWeights
    from qcompile.passes.quantize_weights_piecewise import OUTPUT_BREAKPOINTS, _output_errors, choose_levels_per_channel
    from qcompile.piecewise import PiecewiseQuantizedWeights, center_splits

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 8, 3, bias=True).double()
    x = torch.randn(32, 6, 9, 9, dtype=torch.float64)
    x[:, 2] *= 100.0
    uniform = QuantizedWeights(conv, 4)
    chosen = choose_levels_per_channel(uniform, x, centered=True)
    assert center_splits(4) == (2, 4)  # default 3 center + 4 tail levels per side; one moved either way
    tried = [uniform, PiecewiseQuantizedWeights(conv, 4)] + [
        PiecewiseQuantizedWeights(conv, 4, ratios=r, center=c) for c in (None, 2, 4) for r in OUTPUT_BREAKPOINTS]
    errs = _output_errors(conv, tried + [chosen], x, centered=True)
    torch.testing.assert_close(errs[-1], errs[:-1].min(dim=0).values)
    searched = tried[1]
    assert not torch.equal(chosen.weight_int, searched.weight_int)
    assert float(errs[-1].sum()) < float(errs[1].sum())


def test_level_splits_by_hand():
    # 4 bits, center=4: 4 center levels per side (step p/4), 3 tail levels per side (step (m-p)/3)
    levels = pwlq_levels(np.array([1.0]), np.array([0.4]), 4, center=4)[0]
    np.testing.assert_allclose(levels[:-1], [-1.0, -0.8, -0.6, -0.4, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4,
                                             0.6, 0.8, 1.0])
    assert uniform_ratio(4, center=4) == 4 / 7
    with pytest.raises(ValueError, match="center"):
        pwlq_levels(np.array([1.0]), np.array([0.4]), 4, center=7)


def test_quantize_piecewise_realizes_the_given_breakpoint_and_level_split():
    """``ratios`` and ``center`` reach the levels: every channel's table is its real PWLQ levels
    at ``p = 0.4 m`` with 4 center levels per side, rounded to the int8 grid ``m / 127``."""
    torch.manual_seed(1)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    q = quantize_piecewise(w, 4, ratios=0.4, center=4)
    m = w.reshape(5, -1).abs().max(dim=1).values.numpy()
    expect = np.clip(np.rint(pwlq_levels(m, 0.4 * m, 4, center=4) / (m / 127)[:, None]), -127, 127)
    np.testing.assert_array_equal(q["levels"], expect.astype(np.int8))
    np.testing.assert_allclose(q["breakpoint"], 0.4)
