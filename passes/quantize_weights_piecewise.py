"""Re-quantize conv/linear weights piecewise-linearly (PWLQ, Fang et al. 2020, eq. 3-4 with the
error-minimizing breakpoint of sec. 3.3) when ``QuantConfig.weight_quantizer == "pwlq"``.

Runs right after :func:`~qcompile.passes.quantize_weights`, on the same layers, with the same
bias headroom (``min_scale``) and bit width; see :mod:`qcompile.piecewise` for the level
budget and the exact int8 realization. With calibration data, each output channel keeps
whichever of its PWLQ levels and the uniform levels ``quantize_weights`` chose gives the lower
layer output MSE on the calibration inputs (the paper picks the breakpoint by weight error
only; a channel whose few weights have no tail, e.g. a 1-input-channel first conv, can lose to
clipped uniform levels). Both kinds live in the same per-channel codebook. Layers keep lowering to the ordinary int8 kernels; only
their flash storage becomes ``bits``-bit codes plus a per-channel level table.

Preserves: graph structure; every weight moves to its nearest realized PWLQ level.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.fx import GraphModule

from qcompile.errors import ConfigError
from qcompile.nn import QuantizedWeights
from qcompile.pass_manager import PassContext, PassResult, graph_pass
from qcompile.passes.quantize_weights import layer_inputs
from qcompile.piecewise import PiecewiseQuantizedWeights

__all__ = ["quantize_weights_piecewise"]


def _uniform_is_better(uniform: QuantizedWeights, pw: PiecewiseQuantizedWeights, x: torch.Tensor,
                       centered: bool) -> torch.Tensor:
    """Per output channel: does the uniform quantization (with its chosen clipping) give a lower
    layer output MSE than PWLQ on calibration inputs ``x``? ``centered`` drops the mean error,
    which bias correction removes afterwards (as :mod:`qcompile.passes.quantize_weights` does)."""
    with torch.no_grad():
        ref = uniform.module(x).double()
        errs = []
        for q in (uniform, pw):
            d = q(x).double() - ref
            dims = [0] + list(range(2, d.dim()))
            if centered:
                d = d - d.mean(dim=dims, keepdim=True)
            errs.append(d.pow(2).mean(dim=dims))
    return errs[0] < errs[1]


@graph_pass("below 8 bits, weights take a dense center grid and a sparse tail grid per channel (PWLQ)")
def quantize_weights_piecewise(gm: GraphModule, ctx: PassContext) -> PassResult:
    cfg = ctx.config
    if cfg.weight_quantizer != "pwlq":
        return PassResult(gm, False)
    breakpoints: dict[str, float] = {}
    uniform_channels: dict[str, int] = {}
    inputs = layer_inputs(gm, ctx) if ctx.calib else {}
    centered = bool(ctx.calib) and cfg.bias_correction in ("auto", "empirical")
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        qmod = gm.get_submodule(node.target)
        if not isinstance(qmod, QuantizedWeights) or isinstance(qmod, PiecewiseQuantizedWeights):
            continue
        if qmod.bits < 3:
            raise ConfigError(f"QuantConfig(weight_quantizer='pwlq') needs weight_bits >= 3; layer "
                              f"'{node.target}' has {qmod.bits}")
        pw = PiecewiseQuantizedWeights(qmod.module, qmod.bits, qmod.min_scale, qmod.per_channel)
        if node.target in inputs:
            keep = _uniform_is_better(qmod, pw, inputs[node.target], centered)
            pw.take_uniform_channels(qmod, keep if qmod.per_channel else keep.all().expand_as(keep))
            uniform_channels[node.target] = int(keep.sum()) if qmod.per_channel else int(keep.all()) * len(keep)
        parent, _, leaf = node.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, pw)
        piecewise = pw.breakpoint[~np.isnan(pw.breakpoint)]
        breakpoints[node.target] = round(float(piecewise.mean()), 3) if piecewise.size else None
    bits = cfg.uniform_weight_bits
    ctx.records["quantize_weights_piecewise"] = {"bits": bits if bits is not None else "per layer",
                                                 "mean_breakpoint": breakpoints, "uniform_channels": uniform_channels}
    return PassResult(gm, bool(breakpoints))
