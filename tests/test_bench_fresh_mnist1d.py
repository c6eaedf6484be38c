"""``benchmarks/fresh_mnist1d.py``: fresh samples come from generator seeds other than the published
set's, and each row compiles with the configuration of the benchmark it names."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("mnist1d")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import fresh_mnist1d  # noqa: E402
from qcompile.zoo.datasets import load_mnist1d  # noqa: E402


def test_fresh_samples_are_seeds_1_2_not_the_published_set():
    x, y = fresh_mnist1d.fresh_samples(6000)
    seed1, seed2 = load_mnist1d(seed=1), load_mnist1d(seed=2)
    assert x.shape == (6000, 1, 40) and y.shape == (6000,)
    torch.testing.assert_close(x[:4000], seed1[0])   # seed 1: its 4,000 training samples, then its 1,000 test ones
    torch.testing.assert_close(x[4000:5000], seed1[2])
    torch.testing.assert_close(x[5000:], seed2[0][:1000])
    published = load_mnist1d()
    assert not (x[:200, None] == published[2][None]).flatten(2).all(-1).any()  # no fresh sample is a test sample


def test_rows_take_their_benchmarks_configuration():
    cfg, samples, committed = fresh_mnist1d.row_config("ptq_seeds:W3A8 attention_round")
    assert (cfg.weight_bits, cfg.rounding, cfg.rounding_iters, samples) == (3, "attention_round", 1000, 1024)
    assert committed.name == "ptq_seeds.json"
    cfg, samples, committed = fresh_mnist1d.row_config("lowbit:pwlq W4A8")
    assert (cfg.weight_bits, cfg.weight_quantizer, samples, committed.name) == (4, "pwlq", 2048, "lowbit_ptq.json")
    with pytest.raises(SystemExit, match="unknown row"):
        fresh_mnist1d.row_config("lowbit:n2uq W2A2")  # QAT rows are not re-run here
