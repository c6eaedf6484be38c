"""Re-quantize conv/linear weights piecewise-linearly (PWLQ, Fang et al. 2020, eq. 3-4 with the
error-minimizing breakpoint of sec. 3.3) when ``QuantConfig.weight_quantizer == "pwlq"``.

Runs right after :func:`~qcompile.passes.quantize_weights`, on the same layers, with the same
bias headroom (``min_scale``) and bit width; see :mod:`qcompile.piecewise` for the level
budget and the exact int8 realization. With calibration data, each output channel keeps the
levels with the lowest *layer output* MSE on the calibration inputs among PWLQ at the paper's
weight-error breakpoint, PWLQ at every ratio of :data:`OUTPUT_BREAKPOINTS` with three level
splits, and the uniform levels ``quantize_weights`` chose (:func:`choose_levels_per_channel`).
The paper picks the breakpoint by weight error only, which cannot see that weights meeting loud
inputs matter more, and a channel whose few weights have no tail (e.g. a 1-input-channel first
conv) can lose to clipped uniform levels. Measured W4A8 on training samples 2,048..7,047 (outside
calibration), logit MSE vs float (top-1) for uniform / PWLQ at the weight-error breakpoint /
this choice:

=================  ====================  ====================  ====================
model              uniform               weight-error p        output-error choice
=================  ====================  ====================  ====================
fashion_mobilenet  0.128 (89.82 %)       0.148 (89.66 %)       0.116 (89.88 %)
fashion_resnet     0.121 (90.66 %)       0.110 (90.88 %)       0.102 (91.04 %)
fashion_plain      0.144 (89.84 %)       0.140 (89.96 %)       0.104 (90.26 %)
mnist1d_dscnn      0.426 (100 %)         0.320 (100 %)         0.190 (100 %)
=================  ====================  ====================  ====================

(Ratios with the default split only: fashion_mobilenet 0.106 (89.64 %), mnist1d_dscnn 0.218.)
All kinds live in the same per-channel codebook. Then, per layer, the mixed PWLQ codebook is
kept only if it beats the layer's uniform quantization on the *network
output* (:func:`qcompile.layer_choice.choose_by_network_output`, held-out calibration half);
otherwise the layer stays uniform and is stored as plain packed codes without a table
(measured before this choice: PWLQ everywhere lost 0.14 / 0.23 points W4 to uniform on
fashion_resnet / fashion_mobilenet). The choice uses the first :data:`CHOICE_SAMPLES`
calibration samples (see there why more than the clipping choice). Layers keep lowering to the ordinary int8 kernels; only
their flash storage becomes ``bits``-bit codes plus a per-channel level table.

Preserves: graph structure; every weight moves to its nearest realized PWLQ level.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.fx import GraphModule

from qcompile.errors import ConfigError
from qcompile.layer_choice import choose_by_network_output, set_module
from qcompile.nn import QuantizedWeights
from qcompile.pass_manager import PassContext, PassResult, graph_pass
from qcompile.passes.quantize_weights import layer_inputs
from qcompile.piecewise import PiecewiseQuantizedWeights, center_splits

__all__ = ["quantize_weights_piecewise", "choose_levels_per_channel", "CHOICE_SAMPLES", "OUTPUT_BREAKPOINTS"]

# calibration samples for the per-layer PWLQ/uniform choice (half fit, half compared). PWLQ and
# uniform levels differ little at the network output, so the comparison needs more samples than
# layer_choice's default 256: measured on fashion_mobilenet W4A8 (test top-1, 10,000 images):
# uniform 87.44, PWLQ on every layer 87.34, per-layer choice on 128 held-out samples 87.18 (noise
# picks), on 512 held-out samples 87.47.
CHOICE_SAMPLES = 1024

# breakpoint ratios p / m tried per channel against the layer output, besides the weight-error one
OUTPUT_BREAKPOINTS = np.linspace(0.1, 0.9, 17)


def _output_errors(reference: nn.Module, quantized: list[nn.Module], x: torch.Tensor,
                   centered: bool) -> torch.Tensor:
    """``(len(quantized), C)``: each quantized layer's output MSE per output channel against the
    float ``reference`` on inputs ``x``. ``centered`` drops the mean error per channel, which bias
    correction removes afterwards (as :mod:`qcompile.passes.quantize_weights` does)."""
    with torch.no_grad():
        ref = reference(x).double()
        errs = []
        for q in quantized:
            d = q(x).double() - ref
            dims = [0] + list(range(2, d.dim()))
            if centered:
                d = d - d.mean(dim=dims, keepdim=True)
            errs.append(d.pow(2).mean(dim=dims))
    return torch.stack(errs)


def choose_levels_per_channel(uniform: QuantizedWeights, x: torch.Tensor, centered: bool) -> PiecewiseQuantizedWeights:
    """Per output channel, the levels with the lowest layer output MSE on calibration inputs ``x``
    among: ``uniform``'s levels (with the clipping :func:`~qcompile.passes.quantize_weights`
    chose), PWLQ at the paper's weight-error breakpoint (:func:`qcompile.piecewise.search_breakpoints`),
    and PWLQ at each ratio ``p / m`` of :data:`OUTPUT_BREAKPOINTS` with the default level split
    and with each split of :func:`qcompile.piecewise.center_splits` (one level per side moved
    between center and tail). The paper minimizes the weight error (sec. 3.3); the output error
    weighs each weight by its input's energy, which the weight error cannot see. A layer
    quantized per tensor keeps the searched breakpoint and takes the uniform levels only as a
    whole."""
    args = (uniform.module, uniform.bits, uniform.min_scale, uniform.per_channel)
    searched = PiecewiseQuantizedWeights(*args)
    if not uniform.per_channel:
        if bool(_output_errors(uniform.module, [uniform, searched], x, centered).sum(dim=1).argmin() == 0):
            searched.take_channels(uniform, torch.ones(len(searched.weight_scale), dtype=torch.bool))
        return searched
    tried = [uniform, searched] + [PiecewiseQuantizedWeights(*args, ratios=r, center=c)
                                   for c in (None, *center_splits(uniform.bits)) for r in OUTPUT_BREAKPOINTS]
    best = _output_errors(uniform.module, tried, x, centered).argmin(dim=0)  # ties keep the earlier
    for k, candidate in enumerate(tried):
        if k != 1:
            searched.take_channels(candidate, best == k)
    return searched


@graph_pass("below 8 bits, weights take a dense center grid and a sparse tail grid per channel (PWLQ)")
def quantize_weights_piecewise(gm: GraphModule, ctx: PassContext) -> PassResult:
    cfg = ctx.config
    if cfg.weight_quantizer != "pwlq":
        return PassResult(gm, False)
    layers = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        qmod = gm.get_submodule(node.target)
        if not isinstance(qmod, QuantizedWeights) or isinstance(qmod, PiecewiseQuantizedWeights):
            continue
        if qmod.bits < 3:
            raise ConfigError(f"QuantConfig(weight_quantizer='pwlq') needs weight_bits >= 3; layer "
                              f"'{node.target}' has {qmod.bits}")
        layers.append(node)
    centered = bool(ctx.calib) and cfg.bias_correction in ("auto", "empirical")

    def candidates(node, fit):
        uniform = gm.get_submodule(node.target)
        return {"uniform": uniform, "pwlq": choose_levels_per_channel(uniform, fit, centered)}

    inputs = layer_inputs(gm, ctx, CHOICE_SAMPLES, only={n.target for n in layers}) if ctx.calib else {}
    if cfg.pwlq_layers == "auto" and inputs:
        searched = [n for n in layers if n.target in inputs]
        chosen = {t: mod for t, (_, mod) in choose_by_network_output(gm, ctx, searched, inputs, candidates,
                                                                    centered, CHOICE_SAMPLES).items()}
    else:  # pwlq_layers="all" (the paper's setting)
        chosen = {}
    for node in layers:
        if node.target in chosen:
            continue
        uniform = gm.get_submodule(node.target)
        if node.target in inputs:  # per-channel choice of levels only
            chosen[node.target] = candidates(node, inputs[node.target])["pwlq"]
        else:
            chosen[node.target] = PiecewiseQuantizedWeights(uniform.module, uniform.bits, uniform.min_scale,
                                                            uniform.per_channel)
        set_module(gm, node.target, chosen[node.target])
    breakpoints: dict[str, float | None] = {}
    uniform_channels: dict[str, int] = {}
    for target, mod in chosen.items():
        if not isinstance(mod, PiecewiseQuantizedWeights):
            continue
        piecewise = mod.breakpoint[~np.isnan(mod.breakpoint)]
        breakpoints[target] = round(float(piecewise.mean()), 3) if piecewise.size else None
        uniform_channels[target] = int(np.isnan(mod.breakpoint).sum())
    bits = cfg.uniform_weight_bits
    ctx.records["quantize_weights_piecewise"] = {
        "bits": bits if bits is not None else "per layer", "mean_breakpoint": breakpoints,
        "uniform_channels": uniform_channels,
        "uniform_layers": sorted(t for t, m in chosen.items() if not isinstance(m, PiecewiseQuantizedWeights))}
    return PassResult(gm, bool(breakpoints))
