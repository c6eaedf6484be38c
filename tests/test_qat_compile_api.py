"""``qcompile.compile(..., qat=QATConfig(...), train_data=...)`` is ``compile(qat.train(...))`` bit for
bit, bad combinations are named; ``QuantConfig(bit_allocation="dual_variables")`` allocates by the
duals (derived by hand from the greedy rule), validates them, and takes a constrained run's duals
end to end."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

import qcompile
from qcompile.backends import ir
from qcompile.backends.c_emitter import emit_c
from qcompile.bit_allocation import weight_bytes
from qcompile.config import QuantConfig
from qcompile.errors import ConfigError, QCompileError
from qcompile.qat import QATConfig, train

from test_qat import tiny_task

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return tiny_task(320)


def _assert_same_program(a, b):
    assert [type(op) for op in a.program.ops] == [type(op) for op in b.program.ops]
    for oa, ob in zip(a.program.ops, b.program.ops):
        fa, fb = ir.op_fields(oa), ir.op_fields(ob)
        assert fa.keys() == fb.keys()
        for k in fa:
            va, vb = fa[k], fb[k]
            if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
                assert np.array_equal(np.asarray(va), np.asarray(vb)), (oa.name, k)
            else:
                assert va == vb, (oa.name, k)
    assert [(t.name, t.scale, t.zero_point, t.shape) for t in a.program.tensors] == \
        [(t.name, t.scale, t.zero_point, t.shape) for t in b.program.tensors]
    assert emit_c(a.program, a.plan, "m") == emit_c(b.program, b.plan, "m")  # every emitted byte


def test_compile_with_qat_is_compile_of_train(data):
    model, x, y = data
    cfg = QATConfig(method="lsq", bits=3, epochs=1, seed=7, calib_samples=128, progress=False)
    train_data, calib = (x[:256], y[:256]), x[256:]
    art = qcompile.compile(model, (x[:1],), calib=calib, qat=cfg, train_data=train_data, progress=False)
    ref = qcompile.compile(train(model, (x[:1],), train_data, config=cfg), (x[:1],), calib=calib, progress=False)
    _assert_same_program(art, ref)
    assert art.records["qat_train"]["method"] == "lsq" and art.records["qat_train"]["samples"] == 256
    assert {op.w_bits for op in art.program.ops if isinstance(op, (ir.Conv2D, ir.Dense))} == {3, 8}
    xq = art.quantize_input(x[256:])
    np.testing.assert_array_equal(art.run_int(xq), ref.run_int(xq))
    # the default calib is the training inputs; a DataLoader-like iterable of batches trains the same
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    art2 = qcompile.compile(model, (x[:1],), qat=cfg, train_data=iter(batches), progress=False)
    ref2 = qcompile.compile(train(model, (x[:1],), batches, config=cfg), (x[:1],), calib=x[:256], progress=False)
    _assert_same_program(art2, ref2)
    _assert_same_program(art2, art)  # the calibration data only feeds the SQNR report
    # a config that only repeats what QAT sets is accepted
    same = QuantConfig(weight_bits=3, activation_bits=3, activation_quantizer="lsq")
    art3 = qcompile.compile(model, (x[:1],), calib=calib, qat=cfg, config=same, train_data=train_data, progress=False)
    _assert_same_program(art3, art)


def test_compile_qat_bad_combinations(data):
    model, x, y = data
    cfg = QATConfig(bits=4, epochs=1, progress=False)
    ex = (x[:1],)
    with pytest.raises(ConfigError, match=r"needs train_data="):
        qcompile.compile(model, ex, calib=x, qat=cfg, progress=False)
    with pytest.raises(ConfigError, match=r"train_data=, loss=\) is only read with qat="):
        qcompile.compile(model, ex, calib=x, train_data=(x, y), loss=nn.functional.cross_entropy, progress=False)
    with pytest.raises(ConfigError, match=r"val_data=\) is only read with qat="):
        qcompile.compile(model, ex, calib=x, val_data=(x, y), progress=False)
    with pytest.raises(ConfigError, match="takes a qcompile.QATConfig"):
        qcompile.compile(model, ex, calib=x, qat={"method": "lsq"}, train_data=(x, y), progress=False)
    with pytest.raises(ConfigError, match=r"conflicts with the QATConfig: weight_bits=6 \(QAT uses 4\)"):
        qcompile.compile(model, ex, qat=cfg, config=QuantConfig(weight_bits=6), train_data=(x, y), progress=False)
    with pytest.raises(ConfigError, match=r"activation_observer='minmax' \(QAT uses 'mse'\)"):
        qcompile.compile(model, ex, qat=cfg, config=QuantConfig(activation_observer="minmax"), train_data=(x, y),
                         progress=False)
    with pytest.raises(ConfigError, match=r"weight_bits='auto'.*flash_budget=2000"):
        qcompile.compile(model, ex, qat=cfg, config=QuantConfig(weight_bits="auto", flash_budget=2000),
                         train_data=(x, y), progress=False)
    with pytest.raises(ConfigError, match="pipeline="):
        qcompile.compile(model, ex, qat=cfg, pipeline=qcompile.default_pipeline(), train_data=(x, y), progress=False)
    with pytest.raises(ConfigError, match="single-input"):
        train(model, (x[:1], x[:1]), (x, y), epochs=1, progress=False)
    # all of the above are rejected before any training; this one needs a trained model
    prepared = train(model, ex, (x[:64], y[:64]), epochs=1, bits=4, progress=False, calib_samples=64)
    with pytest.raises(ConfigError, match="already a PreparedModel .*method='lsq'"):
        qcompile.compile(prepared, ex, calib=x, qat=cfg, train_data=(x, y), progress=False)
    assert issubclass(ConfigError, QCompileError)
    with pytest.raises(ConfigError, match="no dual variables"):
        prepared.allocation_config(1000)


# --- bit_allocation="dual_variables" -------------------------------------------------------------

class Three(nn.Module):
    """Three linear layers of one shape (16 x 16): the same bytes at every width, so only the
    duals decide."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.c = nn.Linear(16, 16)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def _three():
    torch.manual_seed(0)
    return Three().eval(), torch.randn(64, 16)


def test_dual_variables_decide_the_wider_layers():
    model, x = _three()
    b2, b4, b8 = (weight_bytes((16, 16), b) for b in (2, 4, 8))
    assert (b2, b4, b8) == (64, 128, 256)
    duals = {"a": 0.5, "b": 3.0, "c": 1.0}
    # Greedy (bit_allocation.allocate_greedy): start all at 2 bits (192 B); take the upgrade with the
    # largest (lambda * (4**-cur - 4**-new)) / extra bytes. Per byte, 2 -> 4 buys lambda * (1/16 - 1/256)
    # / 64 = lambda * 9.16e-4 and 2 -> 8 buys lambda * (1/16 - 1/65536) / 192 = lambda * 3.25e-4: for
    # every layer the 4-bit step is best, so the order is by lambda: b (3.0), c (1.0), a (0.5).
    # Budget 192 + 64 + 64 = 320 B: b -> 4, c -> 4; a stays at 2 (b 4 -> 8 costs 128 B more, no room).
    budget = 3 * b2 + 2 * (b4 - b2)
    cfg = QuantConfig(weight_bits="auto", flash_budget=budget, bits_candidates=(2, 4, 8),
                      bit_allocation="dual_variables", dual_variables=duals)
    art = qcompile.compile(model, (x[:1],), calib=x, config=cfg, progress=False)
    rec = art.records["allocate_weight_bits"]
    assert rec["bits"] == {"a": 2, "b": 4, "c": 4}
    assert rec["method"] == "dual_variables" and rec["scores"] == duals and rec["allocated_bytes"] == budget
    widths = {op.name: op.w_bits for op in art.program.ops if isinstance(op, ir.Dense)}
    assert widths == {"a": 2, "b": 4, "c": 4}
    assert sum(ir.weight_storage_bytes(op) for op in art.program.ops) == budget
    assert "allocate_weight_bits: dual_variables" in art.report()
    assert "dual variables: " + ", ".join(f"{k}: {v:.4g}" for k, v in duals.items()) in art.report()
    assert art.report_data()["passes"]["allocate_weight_bits"]["scores"] == duals
    # 128 B more (448 B): after b, c -> 4 at
    # 320 B, the next step per byte is b 4 -> 8: 3.0 * (1/256 - 1/65536) / 128 = 9.1e-5 vs a 2 -> 4:
    # 0.5 * 9.16e-4 = 4.6e-4 -> a -> 4 (384 B); then b 4 -> 8 (+128) does not fit, c 4 -> 8 neither.
    cfg2 = dataclasses.replace(cfg, flash_budget=3 * b2 + 3 * (b4 - b2) + 64)
    art2 = qcompile.compile(model, (x[:1],), calib=x, config=cfg2, progress=False)
    assert art2.records["allocate_weight_bits"]["bits"] == {"a": 4, "b": 4, "c": 4}
    # and with the duals reordered the wider layers follow them
    cfg3 = dataclasses.replace(cfg, dual_variables={"a": 2.0, "b": 0.1, "c": 5.0})
    art3 = qcompile.compile(model, (x[:1],), calib=x, config=cfg3, progress=False)
    assert art3.records["allocate_weight_bits"]["bits"] == {"a": 4, "b": 2, "c": 4}


def test_dual_variables_validation():
    auto = dict(weight_bits="auto", flash_budget=1000, bit_allocation="dual_variables")
    with pytest.raises(ConfigError, match="needs dual_variables="):
        QuantConfig(**auto)
    with pytest.raises(ConfigError, match="needs dual_variables="):
        QuantConfig(**auto, dual_variables={})
    with pytest.raises(ConfigError, match=r"'b': -1.0.*finite real numbers >= 0"):
        QuantConfig(**auto, dual_variables={"a": 1.0, "b": -1.0})
    with pytest.raises(ConfigError, match=r"'a': nan"):
        QuantConfig(**auto, dual_variables={"a": float("nan")})
    with pytest.raises(ConfigError, match=r"'a': inf"):
        QuantConfig(**auto, dual_variables={"a": float("inf")})
    with pytest.raises(ConfigError, match="finite real numbers"):
        QuantConfig(**auto, dual_variables={"a": "1.0"})
    with pytest.raises(ConfigError, match="finite real numbers"):
        QuantConfig(**auto, dual_variables={"a": True})
    with pytest.raises(ConfigError, match="module paths"):
        QuantConfig(**auto, dual_variables={0: 1.0})
    with pytest.raises(ConfigError, match="read only by weight_bits='auto' with bit_allocation='dual_variables'"):
        QuantConfig(weight_bits="auto", flash_budget=1000, dual_variables={"a": 1.0})
    with pytest.raises(ConfigError, match="read only by"):
        QuantConfig(weight_bits=4, dual_variables={"a": 1.0})
    ok = QuantConfig(**auto, dual_variables={"a": np.float32(0.25), "b": 0, "c": 2})
    assert ok.dual_variables == {"a": 0.25, "b": 0.0, "c": 2.0}
    assert all(type(v) is float for v in ok.dual_variables.values())

    model, x = _three()
    wrong = QuantConfig(weight_bits="auto", flash_budget=1000, bit_allocation="dual_variables",
                        dual_variables={"a": 1.0, "b": 1.0, "fc": 1.0})
    with pytest.raises(ConfigError, match=r"in pass 'allocate_weight_bits'.*unknown layers \['fc'\]; "
                                          r"missing layers \['c'\].*\['a', 'b', 'c'\]"):
        qcompile.compile(model, (x[:1],), calib=x, config=wrong, progress=False)
    missing = dataclasses.replace(wrong, dual_variables={"a": 1.0, "b": 1.0})
    with pytest.raises(ConfigError, match=r"dual_variables: missing layers \['c'\]"):
        qcompile.compile(model, (x[:1],), calib=x, config=missing, progress=False)


def test_constrained_duals_allocate_bits_end_to_end(data):
    model, x, y = data
    prepared = train(model, (x[:1],), (x[:256], y[:256]), method="constrained", bits=2, epochs=2, dual_lr=0.05,
                     calib_samples=128, progress=False)
    duals = prepared.dual_variables
    assert set(duals) == {"conv1", "conv2", "conv3", "fc"} and max(duals.values()) > 0
    shapes = {n: tuple(getattr(model, n).weight.shape) for n in duals}
    b2 = sum(weight_bytes(s, 2) for s in shapes.values())
    # one 8-bit upgrade of the largest layer fits, not two of them
    budget = b2 + max(weight_bytes(s, 8) - weight_bytes(s, 2) for s in shapes.values())
    cfg = prepared.allocation_config(budget, bits_candidates=(2, 8))
    assert cfg.bit_allocation == "dual_variables" and cfg.dual_variables == duals
    art = qcompile.compile(model, (x[:1],), calib=x[:128], config=cfg, progress=False)
    rec = art.records["allocate_weight_bits"]
    assert rec["scores"] == duals and rec["allocated_bytes"] <= budget
    # the greedy's first pick is the largest dual per byte of the 2 -> 8 upgrade (if any dual > 0)
    per_byte = {n: duals[n] * (4.0 ** -2 - 4.0 ** -8) / (weight_bytes(s, 8) - weight_bytes(s, 2))
                for n, s in shapes.items()}
    assert rec["bits"][max(per_byte, key=per_byte.get)] == 8
    widths = {op.name: op.w_bits for op in art.program.ops if isinstance(op, (ir.Conv2D, ir.Dense))}
    assert widths == rec["bits"] and set(widths.values()) == {2, 8}
    assert sum(ir.weight_storage_bytes(op) for op in art.program.ops) == rec["allocated_bytes"]
    # the same through compile(qat=...): the constrained run's duals are in the artifact's records
    art_qat = qcompile.compile(model, (x[:1],), calib=x[:128], progress=False, train_data=(x[:256], y[:256]),
                               qat=QATConfig(method="constrained", bits=2, epochs=2, dual_lr=0.05, calib_samples=128,
                                             progress=False))
    assert art_qat.records["qat_train"]["dual_variables"] == duals
