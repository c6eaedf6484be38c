"""Choose per-layer weight bits under a flash budget when ``QuantConfig(weight_bits="auto")``.

Every conv/linear gets a width from ``bits_candidates`` so that the weight flash, counted exactly
as the backend stores it (:func:`qcompile.bit_allocation.weight_bytes`, the sum of
:func:`qcompile.backends.ir.weight_storage_bytes` over the lowered program), stays within
``flash_budget``. ``bit_allocation`` picks the method (:mod:`qcompile.bit_allocation`):

* ``"lossy_coding_length"``: the seed paper's measure (Diao et al. 2022, sec. on mixed
  precision): the lossy coding length of each layer's weights (Ma et al. 2007, eq. 6),
  ``L = (m+n)/2 log2 det(I + n/(eps^2 m) W W^T)``, weighted by the ``4**-bits`` distortion of
  each width, allocated greedily per byte; data-free;
* ``"sqnr_greedy"``: the same greedy on the measured noise-to-signal ratio of the network output
  (float activations, every other layer float) with only that layer quantized at that width
  (nearest rounding, weight-MSE clipping), on up to 256 calibration samples;
* ``"dual_variables"``: the same greedy on ``lambda_l * 4**-bits``
  (:func:`qcompile.bit_allocation.dual_variable_score`) with ``lambda_l`` from
  ``QuantConfig.dual_variables``, e.g. the dual variables of a ``method="constrained"``
  :func:`qcompile.qat.train` run (Hounie et al. 2022: a layer's dual is the rate at which the loss
  grows per unit of distortion allowed there), so the layers with the largest duals keep the
  wider widths; the names must be exactly the graph's conv/linear layers (a ``ConfigError``
  names the unknown and the missing ones);
* ``"uniform"``: the largest single width that fits.

The pass resolves ``"auto"`` into an explicit ``{layer: bits}`` mapping in ``ctx.config``, which
the later passes (``quantize_weights`` first) read as usual. It runs after ``calibrate`` so the
measured score sees the final graph. Records: method, budget, bytes allocated, the bits per layer,
the per-layer scores (coding lengths in bits, noise-to-signal per width, or the dual variables).

Preserves: the graph (decision only).
"""
from __future__ import annotations

import dataclasses
import time

import torch
from torch.fx import GraphModule

from qcompile.analysis import float_mode
from qcompile.bit_allocation import allocate_bits, coding_length_score, dual_variable_score, layer_cost, total_bytes
from qcompile.errors import ConfigError
from qcompile.nn import QuantizedWeights, mse_clip_factors
from qcompile.ops import Kind, info
from qcompile.pass_manager import PassContext, PassResult, graph_pass

__all__ = ["allocate_weight_bits", "SQNR_SAMPLES"]

SQNR_SAMPLES = 256


def _set(gm: GraphModule, target: str, mod: torch.nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, mod)


def _flat(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.detach().double().reshape(len(out), -1)
    return torch.cat([o.detach().double().reshape(len(o), -1) for o in out], dim=1)


def measured_noise_score(gm: GraphModule, ctx: PassContext, names: list[str], candidates: list[int]):
    """``score(layer, bits)``: network-output noise power over signal power with only ``layer``
    quantized at ``bits`` (everything else float), on the first calibration samples."""
    data = torch.cat(ctx.calib)[:SQNR_SAMPLES]
    table: dict[str, dict[int, float]] = {}
    with torch.no_grad(), float_mode(gm):
        ref = _flat(gm(data))
        power = float(ref.pow(2).mean()) or 1.0
        for name in names:
            mod = gm.get_submodule(name)
            table[name] = {}
            for b in candidates:
                clip = mse_clip_factors(mod.weight, b, ctx.config.per_channel)
                _set(gm, name, QuantizedWeights(mod, b, None, ctx.config.per_channel, clip))
                try:
                    table[name][b] = float((_flat(gm(data)) - ref).pow(2).mean()) / power
                finally:
                    _set(gm, name, mod)
    return (lambda name, bits: table[name][bits]), table


def checked_duals(duals: dict[str, float], names: list[str]) -> dict[str, float]:
    """``duals`` in graph order, after checking its names are exactly the conv/linear ``names``."""
    unknown = [n for n in duals if n not in names]
    missing = [n for n in names if n not in duals]
    if unknown or missing:
        parts = ([f"unknown layers {unknown}"] if unknown else []) + ([f"missing layers {missing}"] if missing else [])
        raise ConfigError(f"QuantConfig.dual_variables: {'; '.join(parts)}: give one dual variable per conv/linear "
                          f"of this model, by module path: {names}")
    return {n: duals[n] for n in names}


@graph_pass("weight_bits='auto': per-layer widths that fit flash_budget, by the chosen allocation method")
def allocate_weight_bits(gm: GraphModule, ctx: PassContext) -> PassResult:
    cfg = ctx.config
    if cfg.weight_bits != "auto":
        return PassResult(gm, False)
    start = time.perf_counter()
    codebook = cfg.weight_quantizer == "pwlq"
    candidates = sorted({b for b in cfg.bits_candidates if not codebook or b >= 3})
    names: list[str] = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and info(node).kind in (Kind.CONV, Kind.LINEAR) and node.target not in names:
            names.append(node.target)
    weights = {n: gm.get_submodule(n).weight.detach() for n in names}
    costs = [layer_cost(n, tuple(weights[n].shape), candidates, codebook) for n in names]
    scores = None
    if cfg.bit_allocation == "lossy_coding_length":
        score, lengths = coding_length_score({n: w.numpy() for n, w in weights.items()})
        scores = {n: round(v, 2) for n, v in lengths.items()}
    elif cfg.bit_allocation == "sqnr_greedy":
        score, table = measured_noise_score(gm, ctx, names, candidates)
        scores = {n: {b: float(f"{v:.4g}") for b, v in t.items()} for n, t in table.items()}
    elif cfg.bit_allocation == "dual_variables":
        duals = checked_duals(dict(cfg.dual_variables), names)
        score = dual_variable_score(duals)
        scores = duals
    else:
        score = None
    bits = allocate_bits(costs, cfg.flash_budget, score)
    ctx.records["allocate_weight_bits"] = {
        "method": cfg.bit_allocation, "flash_budget": cfg.flash_budget, "allocated_bytes": total_bytes(costs, bits),
        "candidates": candidates, "bits": bits, "scores": scores,
        "seconds": round(time.perf_counter() - start, 2)}
    ctx.config = dataclasses.replace(cfg, weight_bits=bits, flash_budget=None, dual_variables=None)
    return PassResult(gm, False)
