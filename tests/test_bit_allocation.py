"""Automatic mixed precision under a flash budget: byte counts as the backend stores them,
the lossy coding length and both allocators derived by hand, budgets respected exactly, clear
errors, and a compiled mixed-width model that is bit-exact in C."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import qcompile
from qcompile.backends import ir
from qcompile.backends.host_build import run_c_host
from qcompile.bit_allocation import (FlashBudgetError, LayerCost, allocate_bits, allocate_greedy, allocate_uniform,
                                     coding_length, coding_length_score, layer_cost, total_bytes, weight_bytes)
from qcompile.config import QuantConfig
from qcompile.errors import ConfigError
from qcompile.nn import QuantizedWeights

from zoo_models import build


def test_weight_bytes_by_hand():
    # (Co=3, K=5): 2-bit 3 * ceil(10/8) = 6; 3- and 4-bit 3 * ceil(20/8) = 9; 5..8-bit 3 * 5 = 15
    assert [weight_bytes((3, 5), b) for b in (2, 3, 4, 5, 6, 8)] == [6, 9, 9, 15, 15, 15]
    assert weight_bytes((3, 1, 1, 5), 4) == 9                       # conv shapes flatten per channel
    assert weight_bytes((3, 5), 4, codebook=True) == 9 + 3 * 16     # PWLQ: + int8 table per channel


def test_coding_length_by_hand():
    # m = 2 vectors, n = 2 dims, eps = 1: L = (2+2)/2 log2 det(I + (2/2) diag(9, 16)) = 2 log2(170)
    assert coding_length(np.diag([3.0, 4.0]), 1.0) == pytest.approx(2 * math.log2(170))
    # m = 2 vectors in n = 3 dims: c = n / (eps^2 m) = 1.5; det = (1 + 1.5)(1 + 6) = 17.5; (m+n)/2 = 2.5
    v = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert coding_length(v, 1.0) == pytest.approx(2.5 * math.log2(17.5))
    # m = 3 vectors in n = 2 dims (the other Gram matrix): c = 2/3; det = (1 + 2/3)(1 + 8/3) = 55/9
    assert coding_length(v.T, 1.0) == pytest.approx(2.5 * math.log2(55 / 9))
    assert coding_length(np.zeros((4, 3)), 1.0) == 0.0


def test_coding_length_ranks_information():
    """A full-rank layer carries more information per weight than a rank-1 layer of the same
    shape and energy: at a budget for only one 4-bit layer, it gets the wider width."""
    g = torch.Generator().manual_seed(0)
    full = torch.randn(16, 32, generator=g)
    rank1 = torch.randn(16, 1, generator=g) @ torch.randn(1, 32, generator=g)
    rank1 = rank1 * full.norm() / rank1.norm()
    score, lengths = coding_length_score({"full": full.numpy(), "rank1": rank1.numpy()})
    assert lengths["full"] > 3 * lengths["rank1"]
    costs = [layer_cost("full", (16, 32), (2, 4)), layer_cost("rank1", (16, 32), (2, 4))]
    budget = costs[0].bytes[4] + costs[1].bytes[2]
    assert allocate_greedy(costs, budget, score) == {"full": 4, "rank1": 2}


def _ab() -> list[LayerCost]:
    # A (Co=2, K=8): 2/4/8 bits -> 4/8/16 B; B (Co=4, K=3): 4/8/12 B
    return [layer_cost("A", (2, 8), (2, 4, 8)), layer_cost("B", (4, 3), (2, 4, 8))]


def test_uniform_allocation_by_hand():
    assert [lc.bytes for lc in _ab()] == [{2: 4, 4: 8, 8: 16}, {2: 4, 4: 8, 8: 12}]
    assert allocate_uniform(_ab(), 16) == {"A": 4, "B": 4}     # 16 B fits 4 bits exactly
    assert allocate_uniform(_ab(), 15) == {"A": 2, "B": 2}
    assert allocate_uniform(_ab(), 28) == {"A": 8, "B": 8}
    assert allocate_bits(_ab(), 16) == {"A": 4, "B": 4}


def test_greedy_allocation_by_hand_reaches_the_budget():
    s = {"A": {2: 10.0, 4: 1.0, 8: 0.0}, "B": {2: 5.0, 4: 4.9, 8: 0.0}}
    score = lambda name, bits: s[name][bits]  # noqa: E731
    # from (2, 2) = 8 B: A 2->4 gains 9 per 4 B (best); then at 12 B, B 2->8 gains 5 per 8 B
    # (A 4->8: 1 per 8 B; B 2->4: 0.1 per 4 B) and fills 20 B exactly; nothing else fits.
    bits = allocate_greedy(_ab(), 20, score)
    assert bits == {"A": 4, "B": 8} and total_bytes(_ab(), bits) == 20
    bits = allocate_greedy(_ab(), 16, score)  # A -> 4, then only B 2->4 fits
    assert bits == {"A": 4, "B": 4} and total_bytes(_ab(), bits) == 16
    assert allocate_greedy(_ab(), 8, score) == {"A": 2, "B": 2}
    for budget in range(8, 30):
        assert total_bytes(_ab(), allocate_greedy(_ab(), budget, score)) <= budget


def test_bad_budgets_and_configs():
    with pytest.raises(FlashBudgetError, match=r"flash_budget=7 B .* minimum .* 8 B"):
        allocate_greedy(_ab(), 7, lambda n, b: 0.0)
    with pytest.raises(FlashBudgetError, match="minimum"):
        allocate_uniform(_ab(), 3)
    with pytest.raises(FlashBudgetError, match="flash_budget"):
        QuantConfig(weight_bits="auto")
    with pytest.raises(FlashBudgetError, match="flash_budget"):
        QuantConfig(weight_bits="auto", flash_budget=0)
    assert issubclass(FlashBudgetError, ConfigError)
    with pytest.raises(ConfigError, match="needs weight_bits='auto'"):
        QuantConfig(weight_bits=4, flash_budget=1000)
    with pytest.raises(ConfigError, match="bit_allocation"):
        QuantConfig(weight_bits="auto", flash_budget=1000, bit_allocation="hessian")
    with pytest.raises(ConfigError, match="bits_candidates"):
        QuantConfig(weight_bits="auto", flash_budget=1000, bits_candidates=(1, 4))
    with pytest.raises(ConfigError, match="allocate_weight_bits"):
        QuantConfig(weight_bits="auto", flash_budget=1000).bits_for("conv0")
    m, shape = build("residual")
    x = torch.randn(16, *shape)
    with pytest.raises(FlashBudgetError, match="flash_budget=10 B"):
        qcompile.compile(m, (x[:1],), calib=x, config=QuantConfig(weight_bits="auto", flash_budget=10), progress=False)


def _layer_bytes(art, bits: int) -> int:
    return sum(weight_bytes(tuple(q.module.weight.shape), bits)
               for q in art.graph.modules() if isinstance(q, QuantizedWeights))


@pytest.mark.parametrize("method", ["lossy_coding_length", "sqnr_greedy", "uniform"])
def test_compiled_auto_bits_fit_the_budget_and_are_bit_exact(method, tmp_path):
    m, shape = build("residual")
    torch.manual_seed(5)
    x = torch.randn(48, *shape)
    ref = qcompile.compile(m, (x[:1],), calib=x, config=QuantConfig(weight_bits=4), progress=False)
    b2, b4 = _layer_bytes(ref, 2), _layer_bytes(ref, 4)
    budget = (b2 + b4) // 2
    art = qcompile.compile(m, (x[:1],), calib=x, progress=False,
                           config=QuantConfig(weight_bits="auto", flash_budget=budget, bit_allocation=method))
    rec = art.records["allocate_weight_bits"]
    achieved = sum(ir.weight_storage_bytes(op) for op in art.program.ops)
    assert achieved == rec["allocated_bytes"] <= budget          # counted exactly as stored
    widths = {op.w_bits for op in art.program.ops if isinstance(op, (ir.Conv2D, ir.Dense))}
    assert widths == set(rec["bits"].values())
    if method == "uniform":
        assert widths == {2} and achieved == b2                    # 4 bits everywhere does not fit
    else:
        assert widths >= {2, 4} and achieved > b2                  # mixed, using the budget
    text = art.report()
    assert f"budget {budget:,} B" in text and f"{achieved:,} B conv/linear weights" in text
    assert art.report_data()["passes"]["allocate_weight_bits"]["flash_budget"] == budget
    xq = art.quantize_input(x[:4])
    np.testing.assert_array_equal(run_c_host(art.program, art.plan, xq, workdir=tmp_path), art.run_int(xq))
