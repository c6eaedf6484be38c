"""PTQ passes: CLE, high-bias absorption and outlier splitting preserve the float function on
random graphs (hypothesis); bias correction, observers, per-tensor / low-bit weights and the
report records behave."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompile
from qcompile.config import QuantConfig
from qcompile.errors import ConfigError
from qcompile.frontend import trace
from qcompile.nn import QuantizedWeights, quantize_weight_per_channel
from qcompile.observers import BestObserver, KLObserver, make_observer
from qcompile.pass_manager import PassContext
from qcompile.passes import (
    absorb_high_bias,
    equalize_cross_layer,
    fold_batchnorm,
    record_batchnorm_statistics,
    split_outlier_channels,
)
from qcompile.passes.equalize_cross_layer import find_pairs, output_channel_ranges

from zoo_models import randomize_batchnorm


class _Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x) + x


def random_net(draw_spec: dict, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """A random conv chain: 1-D or 2-D, optional depthwise, BN, ReLU/ReLU6/none, pooling,
    a residual branch, a flatten + linear head, and per-channel weight scales spread over
    orders of magnitude (what CLE and OCS are for)."""
    torch.manual_seed(seed)
    one_d = draw_spec["one_d"]
    conv, bn, pool = (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d) if one_d else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)
    acts = {"relu": nn.ReLU, "relu6": nn.ReLU6, "none": nn.Identity}
    c = draw_spec["cin"]
    size = draw_spec["size"]
    layers: list[nn.Module] = []
    for i, (width, dw, act, use_bn, use_pool, residual) in enumerate(draw_spec["layers"]):
        k = 3
        if dw:
            block = [conv(c, c, k, padding=1, groups=c, bias=not use_bn)]
            cout = c
        else:
            cout = width
            block = [conv(c, cout, k, padding=1, bias=not use_bn)]
        if use_bn:
            block.append(bn(cout))
        block.append(acts[act]())
        if residual and cout == c:
            layers.append(_Residual(nn.Sequential(*block)))
        else:
            layers.extend(block)
        if use_pool and size >= 2:
            layers.append(pool(2))
            size //= 2
        c = cout
    size = draw_spec["size"]
    x = torch.randn(8, draw_spec["cin"], *((size,) if one_d else (size, size)))
    body = nn.Sequential(*layers).eval()
    with torch.no_grad():
        feat = body(x[:1])
    model = nn.Sequential(body, nn.Flatten(), nn.Linear(feat[0].numel(), 5))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                spread = torch.exp(2.0 * torch.randn(m.weight.shape[0], generator=g))
                m.weight.mul_(spread.reshape(-1, *([1] * (m.weight.dim() - 1))))
    return randomize_batchnorm(model, seed), x


layer_st = st.tuples(st.integers(1, 6), st.booleans(), st.sampled_from(["relu", "relu6", "none"]),
                     st.booleans(), st.booleans(), st.booleans())
spec_st = st.fixed_dictionaries({
    "one_d": st.booleans(), "cin": st.integers(1, 4), "size": st.integers(4, 9),
    "layers": st.lists(layer_st, min_size=1, max_size=4),
})


def _apply(passes, model, x, **cfg):
    gm = trace(model, (x[:1],))
    ctx = PassContext(config=QuantConfig(**cfg), example_inputs=(x[:1],), calib=[x], progress=False)
    return qcompile.Pipeline(passes).run(gm, ctx), ctx


def _close(gm, model, x):
    ref = model(x)
    tol = 1e-4 * max(1.0, float(ref.detach().abs().max()))
    torch.testing.assert_close(gm(x), ref, rtol=1e-4, atol=tol)


@settings(max_examples=25, deadline=None)
@given(spec=spec_st, seed=st.integers(0, 10_000))
def test_cle_preserves_function_on_random_graphs(spec, seed):
    model, x = random_net(spec, seed)
    gm, ctx = _apply([record_batchnorm_statistics, fold_batchnorm, equalize_cross_layer], model, x,
                     equalize_relu6="skip")
    _close(gm, model, x)
    assert all(d["action"] == "pair skipped" for d in ctx.records["equalize_cross_layer"]["relu6"])


@settings(max_examples=25, deadline=None)
@given(spec=spec_st, seed=st.integers(0, 10_000))
def test_absorption_preserves_function_on_calibration_data(spec, seed):
    # without BN statistics the floor c comes from the calibration data: exact on that data
    model, x = random_net(spec, seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.bias is not None:
            with torch.no_grad():
                m.bias.add_(3.0)  # make positive floors common
    gm, _ = _apply([equalize_cross_layer, absorb_high_bias], model, x, equalize_relu6="skip")
    _close(gm, model, x)


@settings(max_examples=25, deadline=None)
@given(spec=spec_st, seed=st.integers(0, 10_000), ratio=st.sampled_from([0.02, 0.1, 0.5, 1.0]))
def test_outlier_splitting_preserves_function_on_random_graphs(spec, seed, ratio):
    model, x = random_net(spec, seed)
    gm, ctx = _apply([record_batchnorm_statistics, fold_batchnorm, split_outlier_channels], model, x,
                     split_outliers=ratio)
    _close(gm, model, x)
    rec = ctx.records["split_outlier_channels"]
    assert rec["extra_macs"] >= 0 and rec["extra_bytes"] >= 0
    assert all(p["split"] >= 1 for p in rec["pairs"])


def test_cle_evens_out_ranges_and_stops_at_branches():
    spec = {"one_d": False, "cin": 3, "size": 8,
            "layers": [(8, False, "relu", True, False, False), (0, True, "relu", True, False, True),
                       (6, False, "relu", True, True, False)]}
    model, x = random_net(spec, 1)
    gm, ctx = _apply([record_batchnorm_statistics, fold_batchnorm], model, x)
    pairs = {(p.first.name, p.second.name) for p in find_pairs(gm)}
    names = [n.name for n in gm.graph.nodes if n.op == "call_module" and "body" in n.target]
    # the depthwise conv sits inside a residual block: the conv before it feeds an add too -> no pair
    assert not any("body_1_body_0" in a or "body_1_body_0" in b for a, b in pairs), (pairs, names)
    rec_gm, rec_ctx = _apply([record_batchnorm_statistics, fold_batchnorm, equalize_cross_layer], model, x)
    r = rec_ctx.records["equalize_cross_layer"]
    assert r["pairs"] and all(a <= b + 1e-6 for a, b in zip(r["range_ratio_after"], r["range_ratio_before"]))
    _close(rec_gm, model, x)


def test_relu6_policy_replace_changes_graph_and_records():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU6(), nn.Conv2d(4, 3, 1)).eval()
    x = torch.randn(4, 2, 6, 6) * 0.01  # tiny: the clamp at 6 is never reached
    gm, ctx = _apply([equalize_cross_layer], model, x, equalize_relu6="auto")
    (d,) = ctx.records["equalize_cross_layer"]["relu6"]
    assert d["action"] == "replaced by ReLU" and ctx.records["equalize_cross_layer"]["pairs"]
    _close(gm, model, x)
    gm, ctx = _apply([equalize_cross_layer], model, x * 1e4, equalize_relu6="auto")
    assert ctx.records["equalize_cross_layer"]["relu6"][0]["action"] == "pair skipped"
    assert not ctx.records["equalize_cross_layer"]["pairs"]


def test_config_weight_bits_per_channel_and_switches():
    for bits in range(2, 9):
        QuantConfig(weight_bits=bits)
    for bad in (1, 9):
        with pytest.raises(ConfigError, match="weight_bits"):
            QuantConfig(weight_bits=bad)
    with pytest.raises(ConfigError, match="bias_correction"):
        QuantConfig(bias_correction="magic")
    with pytest.raises(ConfigError, match="split_outliers"):
        QuantConfig(split_outliers=2.0)
    w = torch.randn(5, 3, 3, 3) * torch.arange(1, 6).reshape(-1, 1, 1, 1)
    w_int, s = quantize_weight_per_channel(w, 4, per_channel=False)
    assert torch.all(s == s[0]) and int(w_int.abs().max()) == 7
    w_int, s = quantize_weight_per_channel(w, 6)
    assert len(set(s.tolist())) == 5 and int(w_int.abs().max()) == 31


def _small_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
                          nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4))
    return randomize_batchnorm(model, 3), torch.randn(64, 1, 8, 8)


@pytest.mark.parametrize("cfg", [dict(weight_bits=4), dict(weight_bits=6, per_channel=False),
                                 dict(split_outliers=0.25, activation_observer="best"),
                                 dict(bias_correction="analytic", activation_observer="kl")])
def test_compile_runs_records_and_verifies_in_c(cfg, tmp_path):
    model, x = _small_model()
    art = qcompile.compile(model, (x[:1],), calib=x, config=QuantConfig(**cfg), progress=False)
    assert {op.w_bits for op in art.program.ops if hasattr(op, "w_bits")} == {cfg.get("weight_bits", 8)}
    w = [op.weight for op in art.program.ops if hasattr(op, "w_bits")]
    qmax = (1 << (cfg.get("weight_bits", 8) - 1)) - 1
    assert max(int(np.abs(a).max()) for a in w) <= qmax
    text = art.report()
    assert "passes:" in text and "correct_bias" in text and "equalize_cross_layer" in text
    art.save(tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert "equalize_cross_layer" in data["passes"]
    if cfg.get("split_outliers"):
        assert data["passes"]["split_outlier_channels"]["extra_macs"] > 0
    if cfg.get("bias_correction") == "analytic":
        assert art.records["correct_bias"]["mode"] == "analytic" and art.records["correct_bias"]["layers"] >= 2
    else:
        assert art.records["correct_bias"]["mode"] == "empirical"
    art.verify(x[:4], on="host")  # same C kernels, bit-exact with the interpreter


def test_empirical_bias_correction_removes_mean_shift():
    model, x = _small_model()
    base = dict(weight_bits=3, activation_observer="minmax", equalize=False, absorb_bias=False)
    outs = {}
    for mode in ("none", "empirical"):
        art = qcompile.compile(model, (x[:1],), calib=x, config=QuantConfig(bias_correction=mode, **base),
                               progress=False)
        with torch.no_grad():
            for m in art.graph.modules():  # float activations: isolate the weight error
                if isinstance(m, QuantizedWeights):
                    pass
            outs[mode] = (art.graph(x) - model(x)).mean(dim=0).abs().mean().item()
    assert outs["empirical"] < outs["none"]


def test_kl_and_best_observers():
    x = torch.relu(torch.randn(50_000))
    x[0] = 40.0  # one outlier
    kl = KLObserver()
    kl.observe(x)
    lo, hi = kl.range()
    assert lo == 0.0 and 2.0 < hi < 10.0
    best = make_observer("best")
    best.observe(x)
    assert isinstance(best, BestObserver) and best.range()[1] <= 40.0 and best.chosen in ("minmax", "percentile",
                                                                                          "mse", "kl")


def test_kl_threshold_ignores_the_zeros_of_a_relu():
    """Exact zeros are quantized exactly whatever the clipping: adding them (as a ReLU does, here
    80% of the values) must not pull the entropy threshold down (it used to fall to the smallest
    candidate, 0.75 of a 6.0 range)."""
    g = torch.Generator().manual_seed(0)
    v = torch.empty(200_000, dtype=torch.float64).exponential_(1.0, generator=g).clamp(max=6.0)
    thresholds = []
    for zeros in (0.0, 0.8):
        x = v.clone()
        x[torch.rand(len(x), generator=g) < zeros] = 0.0
        kl = KLObserver()
        kl.observe(x)
        thresholds.append(kl.range()[1])
    assert thresholds[0] > 5.0 and abs(thresholds[1] - thresholds[0]) < 0.1 * thresholds[0], thresholds


def test_cle_rescues_per_tensor_depthwise():
    """The MobileNet failure mode: a depthwise conv with per-channel ranges 1000x apart."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.ReLU(), nn.Conv2d(8, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 4)).eval()
    with torch.no_grad():
        model[2].weight.mul_(torch.logspace(-3, 0, 8).reshape(-1, 1, 1, 1))
        model[4].weight.div_(torch.logspace(-3, 0, 8).reshape(1, -1, 1, 1))
    x = torch.randn(128, 1, 8, 8)
    err = {}
    for eq in (False, True):
        art = qcompile.compile(model, (x[:1],), calib=x, progress=False,
                               config=QuantConfig(per_channel=False, equalize=eq, bias_correction="none"))
        err[eq] = (art.run(x) - model(x)).pow(2).mean().item()
    assert err[True] < 0.5 * err[False]
    assert max(output_channel_ranges(model[2]).tolist()) > 0  # model untouched (compile copies it)


def test_cle_leaves_dead_channels_alone():
    """A channel with ~1e-30 weights and a large bias (weight decay leftovers, as in the MLPerf Tiny
    MobileNet) must not be 'equalized' into a 1e15 scale that wrecks the activation range."""
    import qcompile as _qc

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    with torch.no_grad():
        model[0].weight[2].fill_(1e-30)
        model[0].bias[2] = 3.0
    calib = torch.randn(64, 3, 6, 6)
    config = _qc.QuantConfig(absorb_bias=False)  # absorption would mask the blow-up in this small model
    art = _qc.compile(model, (calib[:1],), calib=calib, progress=False, config=config)
    assert art.sqnr[art.program.outputs[0]] > 30.0
    conv2 = [op for op in art.program.ops if type(op).__name__ == "Conv2D"][1]
    assert art.program.tensors[conv2.output].scale < 1.0


# ----------------------------------------------------------------------------- weight clipping choice

def _outlier_mlp(seed: int = 0):
    """Two linear layers whose first has one outlier weight per row: at 4 bits min/max spends
    the grid on the outliers, clipping them is far better at the network output."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5)).eval()
    with torch.no_grad():
        model[0].weight[:, 0] = 8.0 * model[0].weight.abs().amax()
    x = torch.randn(256, 16)
    x[:, 0] *= 0.01  # the outlier weights see a nearly silent input: clipping them costs little
    return model, x


def test_per_layer_clipping_beats_minmax_at_the_network_output():
    model, x = _outlier_mlp()
    base = dict(weight_bits=4, activation_observer="minmax", equalize=False, absorb_bias=False)
    err, arts = {}, {}
    for obs in ("minmax", "per_layer"):
        art = qcompile.compile(model, (x[:1],), calib=x, config=QuantConfig(weight_observer=obs, **base),
                               progress=False)
        with torch.no_grad():
            err[obs] = (art.graph(x) - model(x)).pow(2).mean().item()
        arts[obs] = art
    rec = arts["per_layer"].records["quantize_weights"]
    assert rec["weight_observer"] == "per_layer"
    assert set(rec["clipping"].values()) <= {"minmax", "mse", "output_mse"}
    assert rec["clipping"]["0"] != "minmax"  # the outlier layer gets clipped
    assert err["per_layer"] < 0.5 * err["minmax"]


def test_per_layer_choice_leaves_no_trial_state_behind():
    # the search temporarily swaps in shifted trial modules: afterwards every layer is a plain
    # QuantizedWeights whose float bias is the original one (bias correction is off here)
    model, x = _outlier_mlp(1)
    art = qcompile.compile(model, (x[:1],), calib=x, progress=False,
                           config=QuantConfig(weight_bits=4, weight_observer="per_layer", bias_correction="none",
                                              equalize=False, absorb_bias=False))
    qs = [m for m in art.graph.modules() if isinstance(m, QuantizedWeights)]
    assert len(qs) == 2 and not any(type(m).__name__ == "_Shifted" for m in art.graph.modules())
    torch.testing.assert_close(qs[0].module.bias, model[0].bias)
    torch.testing.assert_close(qs[1].module.bias, model[2].bias)


def test_weight_observer_auto_resolves_by_bits():
    model, x = _outlier_mlp(2)
    for bits, want in ((8, "minmax"), (6, "per_layer"), (4, "per_layer")):
        art = qcompile.compile(model, (x[:1],), calib=x, config=QuantConfig(weight_bits=bits), progress=False)
        assert art.records["quantize_weights"]["weight_observer"] == want
        assert art.records["correct_bias"]["mode"] == "empirical"
    with pytest.raises(ConfigError, match="weight_observer"):
        QuantConfig(weight_observer="per_layr")


@settings(max_examples=30, deadline=None)
@given(cin=st.integers(1, 5), cout=st.integers(1, 6), bits=st.integers(2, 6), shift=st.floats(-5, 5),
       seed=st.integers(0, 1000))
def test_centered_output_error_ignores_what_bias_correction_removes(cin, cout, bits, shift, seed):
    from qcompile.passes.quantize_weights import _output_error

    torch.manual_seed(seed)
    conv = nn.Conv1d(cin, cout, 3, padding=1)
    x = torch.randn(16, cin, 7)
    ref = conv(x).detach().double()
    plain = _output_error(conv, x, ref, bits, True, None, None, centered=False)
    centered = _output_error(conv, x, ref, bits, True, None, None, centered=True)
    assert torch.all(centered <= plain + 1e-12)  # a variance never exceeds the second moment
    # a constant per-channel offset of the reference is invisible to the centered error
    moved = _output_error(conv, x, ref + shift, bits, True, None, None, centered=True)
    torch.testing.assert_close(moved, centered, rtol=1e-6, atol=1e-9)
