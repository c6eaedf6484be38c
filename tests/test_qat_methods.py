"""qcompile.qat.train: every method's learned integers, widths and steps reach the compiled
program unchanged; determinism and checkpoint resume; DDQ stays within its flash budget; the
constrained method's dual variables feed the bit allocator; block replacement's mixed models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import qcompile
from qcompile.backends import ir
from qcompile.bit_allocation import allocate_greedy, dual_variable_score, layer_cost
from qcompile.errors import CalibrationError, ConfigError
from qcompile.qat import (LsqActQuant, PreparedModel, QATConfig, layer_output_divergence, layer_sensitivity, spearman,
                          train)
from qcompile.qat.block_replace import BlockReplaceMethod
from qcompile.qat.constrained import ConstrainedMethod, layer_bounds
from qcompile.qat.ddq import DdqWeights

from test_qat import tiny_task

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return tiny_task(384)


def _train(data, **kw):
    model, x, y = data
    kw.setdefault("epochs", 1)
    kw.setdefault("bits", 3)
    return train(model, (x[:1],), (x[:256], y[:256]), progress=False, lr=1e-3, **kw)


def _check_program_matches(prepared: PreparedModel, x: torch.Tensor, c_check: bool = False):
    art = qcompile.compile(prepared, (x[:1],), calib=x[:32], progress=False)
    assert art.records["qat_train"]["method"] == prepared.method
    ops = {op.name: op for op in art.program.ops}
    for name, bits in prepared.weight_bits.items():
        mod = prepared.graph.get_submodule(name)
        assert mod.frozen and mod.bits == bits
        assert ops[name].w_bits == bits
        assert np.array_equal(np.asarray(ops[name].weight).reshape(-1), mod.weight_int.numpy().reshape(-1))
    tensors = {t.name: t for t in art.program.tensors}
    checked = 0
    for node in prepared.graph.graph.nodes:
        if node.op == "call_module" and isinstance(prepared.graph.get_submodule(node.target), LsqActQuant):
            q = prepared.graph.get_submodule(node.target)
            t = tensors[node.args[0].name]
            assert t.scale == q.scale and t.zero_point == q.zero_point  # the learned step, not a re-calibrated one
            checked += 1
    assert checked > 0
    with torch.no_grad():
        graph_top = prepared.graph(x).argmax(1)
    assert float((art.run(x).argmax(1) == graph_top).float().mean()) >= 0.99
    if c_check:
        art.verify(x[:2], on="host")
    return art


@pytest.mark.parametrize("method", ["lsq", "constrained", "block_replace"])
def test_learned_values_reach_the_program(method, data):
    prepared = _train(data, method=method)
    assert len(prepared.history) == 1 and "loss" in prepared.history[0]
    _check_program_matches(prepared, data[1][256:])


def test_ddq_learns_widths_within_the_flash_budget(data):
    budget = 560  # below the uniform 3-bit model with 8-bit ends (624 B): some layer must go narrower
    prepared = _train(data, method="ddq", flash_budget=budget, ddq_fix_at=0.5)
    rec = prepared.records["qat_train"]
    art = _check_program_matches(prepared, data[1][256:], c_check=True)  # mixed widths, in C too
    flash = sum(ir.weight_storage_bytes(op) for op in art.program.ops)
    assert flash == rec["allocated_bytes"] <= budget
    assert min(prepared.weight_bits.values()) == 2 and set(rec["ddq_learned_bits"]) == set(prepared.weight_bits)
    assert all(isinstance(prepared.graph.get_submodule(n), DdqWeights) for n in prepared.weight_bits)
    assert prepared.config.weight_bits == prepared.weight_bits


def test_ddq_width_gradient_flows_and_is_straight_through():
    conv = nn.Conv2d(2, 3, 3)
    from qcompile.nn import QuantizedWeights
    from qcompile.qat.lsq import LsqWeights

    q = DdqWeights(LsqWeights(QuantizedWeights(conv, 4, None, True)), (2, 3, 4, 8))
    with torch.no_grad():
        q.bits_param.fill_(3.4)
    assert float(q.width().detach()) == 3.0
    q.fake_weight().pow(2).sum().backward()
    assert q.bits_param.grad is not None and float(q.bits_param.grad) != 0.0
    q.fix(4)
    assert float(q.width()) == 4.0 and q.bits == 4 and not q.bits_param.requires_grad


def test_constrained_dual_variables_drive_the_allocator(data):
    prepared = _train(data, method="constrained", bits=2, epochs=2, dual_lr=0.05)
    duals = prepared.dual_variables
    assert set(duals) == set(prepared.weight_bits) and all(v >= 0 for v in duals.values())
    assert max(duals.values()) > 0
    assert prepared.records["qat_train"]["dual_output"] >= 0
    costs = [layer_cost(n, tuple(prepared.graph.get_submodule(n).module.weight.shape), (2, 8)) for n in duals]
    one_upgrade = sum(c.bytes[2] for c in costs) + max(c.bytes[8] - c.bytes[2] for c in costs)
    alloc = allocate_greedy(costs, one_upgrade, dual_variable_score(duals))
    # the greedy buys the largest dual per byte first
    per_byte = {c.name: duals[c.name] * (4.0 ** -2 - 4.0 ** -8) / (c.bytes[8] - c.bytes[2]) for c in costs}
    assert alloc[max(per_byte, key=per_byte.get)] == 8
    with pytest.raises(ConfigError, match="dual variables"):
        dual_variable_score({"conv1": -1.0})


def test_layer_bounds_by_hand():
    d0 = torch.tensor([0.1, 0.4], dtype=torch.float64)
    assert layer_bounds(d0, 0.5, "per_layer").tolist() == pytest.approx([0.05, 0.2])
    assert layer_bounds(d0, 0.5, "shared").tolist() == pytest.approx([0.125, 0.125])
    with pytest.raises(ConfigError, match="dual_bounds"):
        QATConfig(method="constrained", dual_bounds="per-layer")


def test_constrained_per_layer_bounds_and_averaged_duals(data, monkeypatch):
    """Per-layer bounds: each layer's eps is epsilon_rel times its own initial distortion. The
    reported duals are the mean of the dual iterates over the last epoch (4 steps of 64 samples
    here), the last iterate is reported apart."""
    iterates = []
    orig = ConstrainedMethod.after_step

    def recording(self, step, stats):
        orig(self, step, stats)
        iterates.append((step, self.lambdas.clone()))

    monkeypatch.setattr(ConstrainedMethod, "after_step", recording)
    p = _train(data, method="constrained", bits=2, epochs=2, dual_lr=0.05, epsilon_rel=0.5, dual_bounds="per_layer")
    rec = p.records["qat_train"]
    d0, eps = rec["initial_distortion"], rec["epsilon"]
    assert len(set(d0.values())) > 1
    for n in d0:
        assert eps[n] == pytest.approx(0.5 * d0[n], rel=1e-12)
    assert [s for s, _ in iterates] == list(range(8)) and rec["dual_averaged_steps"] == 4
    mean = torch.stack([lam for s, lam in iterates if s >= 4]).mean(0)
    layers = list(p.dual_variables)
    assert [p.dual_variables[n] for n in layers] == pytest.approx(mean.tolist(), rel=1e-12)
    assert [rec["dual_variables_last"][n] for n in layers] == pytest.approx(iterates[-1][1].tolist(), rel=1e-12)
    assert all(v > 0 for v in p.dual_variables.values())  # every constraint starts active
    assert p.dual_variables != rec["dual_variables_last"]

    iterates.clear()
    shared = _train(data, method="constrained", bits=2, epochs=2, dual_lr=0.05, epsilon_rel=0.5)
    rec = shared.records["qat_train"]
    mean_d0 = float(np.mean(list(rec["initial_distortion"].values())))
    assert all(v == pytest.approx(0.5 * mean_d0, rel=1e-12) for v in rec["epsilon"].values())


def test_block_replacement_mixed_models(data):
    model, x, y = data
    from qcompile.qat.trainer import prepare_graph

    cfg = QATConfig(method="block_replace", bits=3, blocks=2)
    gm, _ = prepare_graph(model, (x[:1],), x[:256], cfg)
    meth = BlockReplaceMethod(cfg, gm, x[:256], nn.functional.cross_entropy, 10)
    assert meth.blocks == 2 and set(meth.block_of.values()) == {0, 1}
    with torch.no_grad():
        with meth.mixed(0):  # every block full precision: the float model
            fp = gm(x[:64])
        q = gm(x[:64])
        with meth.mixed(1):
            mixed = gm(x[:64])
        ref = model(x[:64])
    torch.testing.assert_close(fp, ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(mixed, fp) and not torch.allclose(mixed, q)
    with torch.no_grad():  # the context restores every quantizer
        torch.testing.assert_close(gm(x[:64]), q)


def test_deterministic_and_resumable(data, tmp_path):
    a = _train(data, method="lsq", epochs=2, seed=3)
    b = _train(data, method="lsq", epochs=2, seed=3)
    sa, sb = a.graph.state_dict(), b.graph.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

    ckpt = tmp_path / "qat.pt"
    calls = {"n": 0}

    def failing_loss(logits, y):
        calls["n"] += 1
        if calls["n"] > 5:  # 4 steps per epoch: dies inside the second epoch
            raise KeyboardInterrupt
        return nn.functional.cross_entropy(logits, y)

    with pytest.raises(KeyboardInterrupt):
        _train(data, method="lsq", epochs=2, seed=3, checkpoint=ckpt, loss=failing_loss)
    assert ckpt.exists()
    c = _train(data, method="lsq", epochs=2, seed=3, checkpoint=ckpt)
    sc = c.graph.state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    assert c.history == a.history
    with pytest.raises(ConfigError, match="different QATConfig"):
        _train(data, method="lsq", epochs=2, seed=4, checkpoint=ckpt)


def test_bad_input_is_named(data):
    model, x, y = data
    with pytest.raises(ConfigError, match="method"):
        train(model, (x[:1],), (x, y), method="pact")
    with pytest.raises(ConfigError, match="QATConfig"):
        train(model, (x[:1],), (x, y), no_such_option=1)
    with pytest.raises(CalibrationError, match="labels"):
        train(model, (x[:1],), [x[:8], x[8:16]])  # an (inputs, inputs) pair: no class labels
    with pytest.raises(CalibrationError, match="labels"):
        train(model, (x[:1],), x[:16])  # unlabelled samples
    with pytest.raises(ConfigError, match="ddq"):
        QATConfig(method="ddq", weight_bits={"conv1": 4})


def test_spearman():
    a = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    assert spearman(a, {"a": 10, "b": 20, "c": 30, "d": 40}) == pytest.approx(1.0)
    assert spearman(a, {"a": 4, "b": 3, "c": 2, "d": 1}) == pytest.approx(-1.0)
    assert spearman(a, {"a": 1, "b": 1, "c": 2, "d": 2}) == pytest.approx(np.corrcoef([0, 1, 2, 3], [0.5, 0.5, 2.5, 2.5])[0, 1])
    assert np.isnan(spearman({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0}))


def test_layer_sensitivity_measures_only_that_layer(data):
    """A layer whose float weights already lie on its quantization grid changes nothing when
    quantized alone: KL 0 and top-1 drop 0; a layer left off the grid has KL > 0; the graph is
    left as it was (same quantized outputs before and after)."""
    model, x, y = data
    prepared = _train(data, method="lsq", bits=2)
    gm, layers = prepared.graph, list(prepared.weight_bits)
    on_grid, off_grid = layers[0], layers[-1]
    with torch.no_grad():
        mod = gm.get_submodule(on_grid)
        mod.module.weight.copy_(mod.fake_weight())
        before = gm(x[:64])
    kl = layer_output_divergence(gm, layers, x[:256])
    drop = layer_sensitivity(gm, layers, x[:256], y[:256])
    assert kl[on_grid] == 0.0 and drop[on_grid] == 0.0
    assert kl[off_grid] > 0.0 and all(v >= 0.0 for v in kl.values())
    with torch.no_grad():
        assert torch.equal(gm(x[:64]), before)
