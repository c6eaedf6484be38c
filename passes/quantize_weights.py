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
``"output_mse"`` picks, per output channel, among shared shrink factors and the weight-MSE
ones the clipping with the lowest *layer output* MSE on calibration inputs (as the quantized
graph feeds them; per channel choices are independent because each output channel depends only
on its own weights). When empirical bias correction follows, the error compared is the
centered one (the mean shift it removes does not count). ``"per_layer"`` (the default below 8
bits, :func:`choose_clippings_by_network_output`) picks per layer, greedily in graph order,
whichever of min/max, ``mse`` and ``output_mse`` gives the lowest *network output* MSE on
held-out calibration samples: a lower local error does not always mean a lower error where it
counts (measured: per-channel ``output_mse`` everywhere lost 2 points W4 on mnist1d_mobilenet
against min/max).

Preserves: graph structure; changes weights by at most half a step per element.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.fx import GraphModule

from qcompile.layer_choice import choose_by_network_output, set_module
from qcompile.nn import QuantizedWeights, mse_clip_factors
from qcompile.ops import Kind, info
from qcompile.pass_manager import PassContext, PassResult, graph_pass
from qcompile.quantization import tensor_qparams

__all__ = ["quantize_weights", "layer_inputs", "BIAS_LIMIT"]

BIAS_LIMIT = 2**29


OUTPUT_MSE_SAMPLES = 256
AUTO_BELOW_8 = "per_layer"  # weight_observer="auto" below 8 bits
_SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5)


def layer_inputs(gm: GraphModule, ctx: PassContext, samples: int = OUTPUT_MSE_SAMPLES,
                 only: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Input of every conv/linear (or those in ``only``) on the first ``samples`` calibration
    samples, as the graph feeds it (run it under :func:`qcompile.analysis.float_mode` for the
    float network's inputs)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for node in gm.graph.nodes:
        if info(node).kind in (Kind.CONV, Kind.LINEAR) and node.op == "call_module" and (only is None or node.target in only):
            mod = gm.get_submodule(node.target)
            hooks.append(mod.register_forward_pre_hook(
                lambda m, args, t=node.target: seen.setdefault(t, args[0].detach())))
    try:
        with torch.no_grad():
            gm(torch.cat(ctx.calib)[:samples])
    finally:
        for h in hooks:
            h.remove()
    return seen


def _output_error(mod: nn.Module, x: torch.Tensor, ref: torch.Tensor, bits: int, per_channel: bool,
                  min_scale: torch.Tensor | None, clip: torch.Tensor | None, centered: bool) -> torch.Tensor:
    """Per output channel: mean squared error of the weight-quantized layer's output against
    ``ref`` on inputs ``x``. ``centered``: the per-channel mean error is removed first, because
    bias correction (which runs after this pass) cancels exactly that part (Nagel et al. 2019,
    eq. 19); what is left is the error no bias can fix."""
    d = QuantizedWeights(mod, bits, min_scale, per_channel, clip)(x).detach().double() - ref
    dims = [0] + list(range(2, d.dim()))
    if centered:
        d = d - d.mean(dim=dims, keepdim=True)
    return d.pow(2).mean(dim=dims)


def _best_clip_by_output(mod: nn.Module, x: torch.Tensor, bits: int, per_channel: bool,
                         min_scale: torch.Tensor | None, centered: bool = False) -> torch.Tensor:
    """The clipping (shared shrink factors, or the per-channel weight-MSE ones) whose quantized
    layer output is closest to the float output on calibration inputs, per output channel."""
    ref = mod(x).detach().double()
    cands = [torch.full((mod.weight.shape[0],), a, dtype=torch.float64) for a in _SHRINK]
    cands.append(mse_clip_factors(mod.weight, bits, per_channel))
    best, best_err = cands[0], None
    for clip in cands:
        err = _output_error(mod, x, ref, bits, per_channel, min_scale, clip, centered)
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


def _layer_mode(mode: str, bits: int) -> str:
    """The weight observer of one layer: ``"auto"`` resolves by the layer's bit width."""
    if mode == "auto":
        return AUTO_BELOW_8 if bits < 8 else "minmax"
    return mode


def choose_clippings_by_network_output(gm: GraphModule, ctx: PassContext, layers: list, inputs: dict,
                                       min_scales: dict, centered: bool) -> dict[str, tuple[str, torch.Tensor | None]]:
    """Per layer, in graph order (greedy, earlier layers already quantized with their choice):
    the weight clipping, among ``minmax`` (none), ``mse`` (weight-MSE factors per channel) and
    ``output_mse`` (per channel, the factor minimizing that channel's output MSE, fitted on the
    first calibration half), that gives the lowest MSE of the *network output* against the float
    network on the held-out half (:func:`qcompile.layer_choice.choose_by_network_output`).
    The local output MSE alone is not the criterion because a smaller error of one layer can
    still cost more at the network output (measured: it lost 0.6 points W4 on mnist1d_resnet
    where min/max wins)."""
    cfg = ctx.config
    clips: dict[tuple[str, str], torch.Tensor | None] = {}

    def candidates(node, fit):
        mod = gm.get_submodule(node.target)
        bits, pc, ms = cfg.bits_for(node.target), cfg.per_channel, min_scales.get(node.target)
        options = {"minmax": None, "mse": mse_clip_factors(mod.weight, bits, pc),
                   "output_mse": _best_clip_by_output(mod, fit, bits, pc, ms, centered)}
        clips.update({(node.target, name): clip for name, clip in options.items()})
        return {name: QuantizedWeights(mod, bits, ms, pc, clip) for name, clip in options.items()}

    chosen = choose_by_network_output(gm, ctx, layers, inputs, candidates, centered)
    for node in layers:  # quantize_weights installs the final modules itself
        set_module(gm, node.target, chosen[node.target][1].module)
    return {t: (name, clips[(t, name)]) for t, (name, _) in chosen.items()}


@graph_pass("weights become 2..8-bit per-channel (or per-tensor); the graph then simulates the integer program")
def quantize_weights(gm: GraphModule, ctx: PassContext) -> PassResult:
    cfg = ctx.config
    mode = cfg.weight_observer
    layers: list = []
    min_scales: dict[str, torch.Tensor | None] = {}
    for node in gm.graph.nodes:
        if info(node).kind not in (Kind.CONV, Kind.LINEAR) or node.op != "call_module" or node.target in min_scales:
            continue
        mod = gm.get_submodule(node.target)
        if isinstance(mod, QuantizedWeights):
            continue
        layers.append(node)
        min_scales[node.target] = None
        if mod.bias is not None:
            s_in, _ = tensor_qparams(node.args[0], gm)
            min_scales[node.target] = mod.bias.detach().double().abs() / (s_in * BIAS_LIMIT)
    modes = {node.target: _layer_mode(mode, cfg.bits_for(node.target)) for node in layers}
    wants_data = any(m in ("output_mse", "per_layer") for m in modes.values())
    inputs = layer_inputs(gm, ctx) if wants_data and ctx.calib else {}
    # empirical bias correction runs after this pass and cancels the mean output error
    centered = bool(ctx.calib) and cfg.bias_correction in ("auto", "empirical")
    network: dict[str, tuple[str, torch.Tensor | None]] = {}
    searched = [n for n in layers if modes[n.target] == "per_layer" and n.target in inputs]
    if searched:
        network = choose_clippings_by_network_output(gm, ctx, searched, inputs,
                                                     min_scales, centered)
    done: dict[str, int] = {}
    chosen: dict[str, str] = {}
    clipped: dict[str, float] = {}
    for node in layers:
        mod, min_scale = gm.get_submodule(node.target), min_scales[node.target]
        bits = cfg.bits_for(node.target)
        how, clip = modes[node.target], None
        if how in ("output_mse", "per_layer") and node.target not in inputs:
            how = "mse"  # no calibration data (or it never reached this layer): weight-MSE clipping
        if how == "mse":
            clip = mse_clip_factors(mod.weight, bits, cfg.per_channel)
        elif how == "output_mse":
            clip = _best_clip_by_output(mod, inputs[node.target], bits, cfg.per_channel, min_scale,
                                        centered)
        elif how == "per_layer":
            how, clip = network[node.target]
        chosen[node.target] = how
        if clip is not None:
            clipped[node.target] = round(float(clip.min()), 3)
        set_module(gm, node.target, QuantizedWeights(mod, bits, min_scale, cfg.per_channel, clip))
        done[node.target] = bits
    uniform = cfg.uniform_weight_bits
    ctx.records["quantize_weights"] = {"bits": uniform if uniform is not None else "per layer",
                                       "per_channel": cfg.per_channel,
                                       "weight_observer": mode if uniform is None else _layer_mode(mode, uniform),
                                       "layers": done, "clipping": chosen,
                                       "mse_clip_min_alpha": clipped}
    return PassResult(gm, bool(done))
