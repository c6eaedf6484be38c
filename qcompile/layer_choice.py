"""Choose, layer by layer, among alternative weight quantizations by the error they cause at the
*network output* on held-out calibration samples.

A lower local error (weight MSE, or the layer's own output MSE) does not always mean a lower
error where it counts: measured on our models, per-channel output-MSE clipping everywhere lost
2 points W4 on mnist1d_mobilenet against plain min/max, and piecewise-linear levels with the
lower weight error lost 0.1-0.2 points W4 on fashion_resnet/fashion_mobilenet against uniform
levels. :func:`choose_by_network_output` is the one arbiter that the weight passes share.

Protocol (greedy in graph order, earlier layers keep their choice while later ones are tried):

* the first ``samples`` calibration samples (256 by default) are split in half; candidates are *fitted* on the
  first half (their per-channel choices, and the mean output shift that empirical bias
  correction will remove when ``centered``) and *compared* on the second half, so a
  candidate that only fits the samples it was tuned on does not win;
* the reference is the float network (activation quantizers pass through, weight-quantized
  layers use their float weights) on the held-out half; the score is the mean squared difference of the flattened outputs;
* ties keep the earlier candidate, so list the plainer one first.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn as nn
from torch.fx import GraphModule, Node

from qcompile.analysis import float_mode
from qcompile.pass_manager import PassContext

__all__ = ["choose_by_network_output", "choose_jointly_by_network_output", "compared_samples", "set_module", "Candidates", "CHOICE_SAMPLES"]

CHOICE_SAMPLES = 256

# (layer node, layer inputs on the fitting half) -> {candidate name: module computing the layer}
Candidates = Callable[[Node, torch.Tensor], Mapping[str, nn.Module]]


def compared_samples(n: int, samples: int = CHOICE_SAMPLES) -> slice:
    """The calibration samples (indices into the first ``n``) that :func:`choose_by_network_output`
    compares candidates on: the second half of its first ``samples``. A pass that *optimizes*
    on calibration data leaves these out, so the choice is a held-out test of the optimization."""
    m = min(n, samples)
    return slice(m // 2, m) if m >= 2 else slice(0, m)


def set_module(gm: GraphModule, target: str, mod: nn.Module) -> None:
    """Install ``mod`` as the submodule ``target`` of ``gm``."""
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, mod)


class _Shifted(nn.Module):
    """``layer(x) - shift`` per output channel: a candidate with its empirical bias correction
    applied, installed only while candidates are compared."""

    def __init__(self, layer: nn.Module, shift: torch.Tensor) -> None:
        super().__init__()
        self.layer, self.shift = layer, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        return y - self.shift.reshape(1, -1, *([1] * (y.dim() - 2))).to(y.dtype)


def _outputs(gm: GraphModule, x: torch.Tensor) -> torch.Tensor:
    out = gm(x)
    flat = out if isinstance(out, torch.Tensor) else torch.cat([o.reshape(len(x), -1) for o in out], dim=1)
    return flat.detach().double().reshape(len(x), -1)


def _fit_and_held(ctx: PassContext, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``samples`` calibration samples split into the half candidates are fitted on and
    the half they are compared on (:func:`compared_samples`; one sample serves as both)."""
    data = torch.cat(ctx.calib)[:samples]
    compared = compared_samples(len(data), samples)
    return (data[:compared.start] if compared.start > 0 else data), data[compared]


def _error(gm: GraphModule, held: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean squared difference of ``gm``'s outputs on ``held`` from the reference outputs ``ref``."""
    return float((_outputs(gm, held) - ref).pow(2).mean())


def _float_reference(gm: GraphModule, x: torch.Tensor) -> torch.Tensor:
    """The float network's outputs: activation quantizers pass through and weight-quantized
    layers compute with their float weights (:func:`qcompile.analysis.float_mode`)."""
    with float_mode(gm):
        return _outputs(gm, x)


def choose_by_network_output(gm: GraphModule, ctx: PassContext, layers: list[Node],
                             inputs: Mapping[str, torch.Tensor], candidates: Candidates,
                             centered: bool, samples: int = CHOICE_SAMPLES) -> dict[str, tuple[str, nn.Module]]:
    """For each layer of ``layers`` (graph order), the candidate of ``candidates(node, fit)``
    with the lowest network-output MSE on the held-out calibration half; returns
    ``{target: (name, module)}`` and leaves each chosen module (without the comparison-only
    bias shift) installed in ``gm``. ``inputs[target]`` are the layer's inputs on the first
    ``samples`` calibration samples (:func:`qcompile.passes.quantize_weights.layer_inputs`).
    ``centered``: empirical bias correction follows, so each candidate is compared with its
    mean output shift (fitted on the first half) removed."""
    fit_data, held = _fit_and_held(ctx, samples)
    fit_n = len(fit_data)
    chosen: dict[str, tuple[str, nn.Module]] = {}
    with torch.no_grad():
        ref = _float_reference(gm, held)
        for node in layers:
            original = gm.get_submodule(node.target)
            fit = inputs[node.target][:fit_n]
            float_layer = getattr(original, "module", original)  # QuantizedWeights keeps the float layer
            y_fit = float_layer(fit).detach().double() if centered else None
            best = None
            for name, cand in candidates(node, fit).items():
                trial = _Shifted(cand, _mean_shift(cand, fit, y_fit))
                set_module(gm, node.target, trial)
                err = _error(gm, held, ref)
                if best is None or err < best[0]:
                    best = (err, name, cand, trial)
            if best is None:
                set_module(gm, node.target, original)
                continue
            set_module(gm, node.target, best[3])  # later layers are tried with this one in place
            chosen[node.target] = (best[1], best[2])
        for target, (_, mod) in chosen.items():  # the real bias correction runs later, on the final graph
            set_module(gm, target, mod)
    return chosen


def choose_jointly_by_network_output(gm: GraphModule, ctx: PassContext, layers: list[Node],
                                     candidates: Mapping[str, list[nn.Module]], centered: bool,
                                     samples: int = CHOICE_SAMPLES) -> str:
    """:func:`choose_by_network_output` for layers that only make sense together (levels optimized
    jointly): each candidate gives a module for every layer of ``layers`` (graph order), and they
    are installed and compared as one. Same protocol; when ``centered``, each layer's mean output
    shift is fitted on its input with the candidate's earlier layers already in place. Leaves the
    chosen modules installed and returns the candidate's name."""
    fit, held = _fit_and_held(ctx, samples)
    originals = [gm.get_submodule(node.target) for node in layers]
    best = None
    with torch.no_grad():
        ref = _float_reference(gm, held)
        for name, mods in candidates.items():
            for node, original, mod in zip(layers, originals, mods):
                shift = torch.zeros(1)
                if centered:
                    x = _layer_input(gm, node.target, fit)
                    shift = _mean_shift(mod, x, getattr(original, "module", original)(x).detach().double())
                set_module(gm, node.target, _Shifted(mod, shift))
            err = _error(gm, held, ref)
            if best is None or err < best[0]:
                best = (err, name, mods)
        for node, original in zip(layers, originals):
            set_module(gm, node.target, original)
        if best is None:
            raise ValueError("choose_jointly_by_network_output: no candidates")
        for node, mod in zip(layers, best[2]):
            set_module(gm, node.target, mod)
    return best[1]


def _layer_input(gm: GraphModule, target: str, x: torch.Tensor) -> torch.Tensor:
    """The input the module ``target`` of ``gm`` receives when ``gm`` runs on ``x``."""
    seen: list[torch.Tensor] = []
    hook = gm.get_submodule(target).register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        gm(x)
    finally:
        hook.remove()
    return seen[0]


def _mean_shift(cand: nn.Module, fit: torch.Tensor, y_fit: torch.Tensor | None) -> torch.Tensor:
    """Per output channel mean of ``cand(fit) - y_fit`` (zero when no bias correction follows)."""
    if y_fit is None:
        return torch.zeros(1)
    d = cand(fit).detach().double() - y_fit
    return d.mean(dim=[0] + list(range(2, d.dim())))
