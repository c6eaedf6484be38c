"""Quantize conv/linear weights symmetric per output channel (Krishnamoorthi 2018, sec. 3.1),
or per tensor (one scale for all channels) when ``QuantConfig.per_channel`` is off.

``w_int[c] = clamp(round(w[c] / s[c]), -qmax, qmax)`` with ``s[c] = max|w[c]| / qmax`` and
``qmax = 2**(bits-1) - 1``. Each conv/linear module becomes a
:class:`~qcompile.nn.QuantizedWeights` that computes with the dequantized weights, so the
graph simulates the integer program.

The int32 bias is ``round(b[c] / (s_in * s[c]))``. When a tiny input scale (a nearly dead
activation) would push it beyond ``BIAS_LIMIT``, the channel's weight scale is widened to
``|b[c]| / (s_in * BIAS_LIMIT)`` so the bias, and with it every int32 partial sum, keeps
headroom; the channel's weights then use fewer levels.

``QuantConfig.weight_observer`` picks each channel's clipping: ``"mse"`` shrinks the range to
the factor minimizing the weight quantization MSE (:func:`qcompile.nn.mse_clip_factors`);
``"output_mse"`` (default below 8 bits) picks, per output channel, among shared shrink
factors and the weight-MSE ones the clipping with the lowest *layer output* MSE on calibration
inputs (as the quantized graph feeds them). Per channel choices are independent because each
output channel depends only on its own weights.

Preserves: graph structure; changes weights by at most half a step per element.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.fx import GraphModule

from qcompile.nn import QuantizedWeights, mse_clip_factors
from qcompile.ops import Kind, info
from qcompile.pass_manager import PassContext, PassResult, graph_pass
from qcompile.quantization import tensor_qparams

__all__ = ["quantize_weights", "BIAS_LIMIT"]

BIAS_LIMIT = 2**29


OUTPUT_MSE_SAMPLES = 256
_SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5)


def _layer_inputs(gm: GraphModule, ctx: PassContext) -> dict[str, torch.Tensor]:
    """Input of every conv/linear on the first calibration samples, as the quantized graph feeds it."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for node in gm.graph.nodes:
        if info(node).kind in (Kind.CONV, Kind.LINEAR) and node.op == "call_module":
            mod = gm.get_submodule(node.target)
            hooks.append(mod.register_forward_pre_hook(
                lambda m, args, t=node.target: seen.setdefault(t, args[0].detach())))
    try:
        with torch.no_grad():
            gm(torch.cat(ctx.calib)[:OUTPUT_MSE_SAMPLES])
    finally:
        for h in hooks:
            h.remove()
    return seen


def _best_clip_by_output(mod: nn.Module, x: torch.Tensor, bits: int, per_channel: bool,
                         min_scale: torch.Tensor | None) -> torch.Tensor:
    """The clipping (shared shrink factors, or the per-channel weight-MSE ones) whose quantized
    layer output is closest to the float output on calibration inputs, per output channel."""
    ref = mod(x).detach().double()
    cands = [torch.full((mod.weight.shape[0],), a, dtype=torch.float64) for a in _SHRINK]
    cands.append(mse_clip_factors(mod.weight, bits, per_channel))
    best, best_err = cands[0], None
    dims = [0] + list(range(2, ref.dim()))
    for clip in cands:
        qmod = QuantizedWeights(mod, bits, min_scale, per_channel, clip)
        err = (qmod(x).detach().double() - ref).pow(2).mean(dim=dims)  # per output channel
        if best_err is None:
            best, best_err = clip.clone(), err
            continue
        if per_channel:
            better = err < best_err
            best = torch.where(better, clip, best)
            best_err = torch.where(better, err, best_err)
        elif err.sum() < best_err.sum():
            best, best_err = clip.clone(), err
    return best


@graph_pass("weights become 2..8-bit per-channel (or per-tensor); the graph then simulates the integer program")
def quantize_weights(gm: GraphModule, ctx: PassContext) -> PassResult:
    done: dict[str, int] = {}
    clipped: dict[str, float] = {}
    cfg = ctx.config
    wants_data = cfg.weight_observer == "output_mse" or (cfg.weight_observer == "auto" and cfg.weight_bits < 8)
    inputs = _layer_inputs(gm, ctx) if wants_data and ctx.calib else {}
    for node in gm.graph.nodes:
        if info(node).kind not in (Kind.CONV, Kind.LINEAR) or node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if isinstance(mod, QuantizedWeights) or node.target in done:
            continue
        min_scale = None
        if mod.bias is not None:
            s_in, _ = tensor_qparams(node.args[0], gm)
            min_scale = mod.bias.detach().double().abs() / (s_in * BIAS_LIMIT)
        parent, _, leaf = node.target.rpartition(".")
        clip = None
        mode = cfg.weight_observer
        if mode == "auto":  # below 8 bits: output-MSE clipping (benchmarks/ptq.py: +3.5 points W4 on fashion_plain)
            mode = ("output_mse" if inputs else "mse") if cfg.weight_bits < 8 else "minmax"
        if mode == "mse":
            clip = mse_clip_factors(mod.weight, cfg.weight_bits, cfg.per_channel)
        elif mode == "output_mse" and node.target in inputs:
            clip = _best_clip_by_output(mod, inputs[node.target], cfg.weight_bits, cfg.per_channel, min_scale)
        if clip is not None:
            clipped[node.target] = round(float(clip.min()), 3)
        qmod = QuantizedWeights(mod, cfg.weight_bits, min_scale, cfg.per_channel, clip)
        setattr(gm.get_submodule(parent) if parent else gm, leaf, qmod)
        done[node.target] = ctx.config.weight_bits
    ctx.records["quantize_weights"] = {"bits": ctx.config.weight_bits, "per_channel": ctx.config.per_channel,
                                       "layers": done, "mse_clip_min_alpha": clipped}
    return PassResult(gm, bool(done))
