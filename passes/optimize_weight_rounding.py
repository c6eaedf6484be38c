"""Re-round quantized conv/linear weights by layer-wise output reconstruction when
``QuantConfig.rounding`` asks for it (per layer, like ``weight_bits``):

* ``"adaround"``: AdaRound (Nagel et al. 2020), the rectified sigmoid ``h(V) = clip(sigmoid(V)
  (zeta - gamma) + gamma, 0, 1)`` of eq. 23 with the annealed regularizer ``1 - |2h - 1|^beta`` of
  eq. 24, on the asymmetric reconstruction objective of eq. 25 (:mod:`qcompile.adaround`);
* ``"attention_round"``: Attention Round (Diao et al. 2022): every weight may take any level,
  with a probability decaying as a Gaussian of its distance to the level, annealed to a hard
  choice (:mod:`qcompile.attention_round`, which states where the paper is silent);
* ``"nearest"``: left as :func:`~qcompile.passes.quantize_weights` rounded it.

Runs after ``quantize_weights`` (which fixed each layer's bits, per-channel scales, clipping and
bias headroom) and before ``correct_bias``. Layers are processed in graph order; each one's
input is recorded from the network quantized so far (activations fake-quantized, earlier layers
already re-rounded) and its target from the float network (:mod:`qcompile.reconstruction`), on
the first ``rounding_samples`` calibration samples (1,024 by default, the paper's figure) less
the 128 the choice below compares on. The
per-channel mean error is left to empirical bias correction when it follows. A layer keeps nearest
rounding (recorded as ``kept_nearest``) unless its optimized levels give the lower error at the
*network output* (:func:`qcompile.layer_choice.choose_by_network_output`: float-network
reference, compared on the second half of the first 256 calibration samples, bias-correction
shift fitted on the first half). The layer-wise reconstruction error is not the arbiter: it
almost always drops, yet measured on fashion_mobilenet W4A8 AdaRound on every layer lost 0.4
points to nearest. The compared samples are left out of the reconstruction
(:func:`reconstruction_samples`), so the choice is a held-out test rather than a second look at
the data the levels were fitted to. (It does not catch everything: each layer is compared with
the later layers still at nearest, and on mnist1d_plain W3A8 Attention Round's levels passed it on
all 4 layers both with and without the held-out split, 97.45% / 97.75% on 4,000 training samples
outside the calibration set against AdaRound's 99.3-99.5%.)

Block-wise (``QuantConfig.rounding_blocks``, on by default; Attention Round only, AdaRound stays
the paper's layer-wise method): a depthwise conv and the layer its output feeds
(:func:`depthwise_blocks`) are decided together. Five level sets compete in
:func:`~qcompile.layer_choice.choose_jointly_by_network_output`: nearest; the depthwise conv
optimized alone; its consumer alone; each alone in turn (together, every outcome the layer-wise
path can reach); and the pair optimized jointly on the consumer's output
(:class:`~qcompile.reconstruction.BlockData`, Li et al. 2021 "BRECQ" sec. 3.2). A depthwise conv
has 3-9 weights per channel, too few to reconstruct its own output; the pointwise conv after it
can absorb part of that error. Measured (network logit MSE vs float, and top-1, on training
samples outside the 1,024 calibration samples: 2,048..7,047 on Fashion-MNIST, 1,024..3,999 on
MNIST-1D; the test split never used):

=========================  ==============  ==============  ==============  ==============  ==============
model, weights             layer-wise      pair jointly    3-way choice    5-way choice    AdaRound
=========================  ==============  ==============  ==============  ==============  ==============
fashion_dscnn W3           0.437, 88.78%   0.320, 89.50%   0.284, 88.94%   0.344, 89.34%   0.378, 88.94%
fashion_mobilenet W3       0.722, 87.06%   0.860, 85.86%   0.710, 86.44%   0.694, 86.70%   0.988, 85.60%
mnist1d_dscnn W3           0.974, 99.97%   0.954, 99.93%   0.876, 99.97%   0.827, 100.0%   0.814, 100.0%
mnist1d_mobilenet W3       2.17, 99.66%    2.46, 99.60%    2.27, 99.43%    2.18, 99.60%    1.87
fashion_dscnn LCL 3.0b     3.28, 85.48%    --              4.62, 78.60%    2.26, 84.68%    --
=========================  ==============  ==============  ==============  ==============  ==============

(``3-way``: nearest, each alone, jointly; ``LCL 3.0b``: the lossy-coding-length allocation at
3 bits per weight, 2 and 4 bits mixed.) The joint optimization alone is worse on the two
mobilenets; the 3-way choice lost 6.9 points on the 2/4-bit mix, where the layer-wise path's
usual winner (depthwise nearest, consumer optimized) was not a candidate. The 5-way choice
has the lower MSE on 4 of 5 and ties on mnist1d_mobilenet (geometric mean 0.85x of layer-wise);
its held-out top-1 against layer-wise is +0.56 / -0.36 / +0.03 / -0.06 / -0.80 points: the choice
minimizes logit MSE, and on these samples that does not always move top-1 the same way. Cost: four optimizations per
depthwise pair instead of two.

Preserves: graph structure, every scale, zero point and clipping; weights stay integers in
``[-qmax, qmax]``, so the layers lower to the same integer kernels. Records per layer the method,
the normalized reconstruction error before (nearest) and after, and the seconds spent; a
depthwise pair's two layers also record the pair (``block``), the level set taken (``choice``)
and the pair's error for each.
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg

from qcompile.adaround import adaround
from qcompile.analysis import float_mode
from qcompile.attention_round import attention_round, attention_round_block
from qcompile.layer_choice import choose_by_network_output, choose_jointly_by_network_output, compared_samples, set_module
from qcompile.nn import QuantizedWeights
from qcompile.ops import info
from qcompile.pass_manager import PassContext, PassResult, graph_pass
from qcompile.passes.quantize_weights import layer_inputs
from qcompile.piecewise import PiecewiseQuantizedWeights
from qcompile.reconstruction import (BlockData, LayerData, LayerGrid, activate, block_reconstruction_loss,
                                     layer_forward, reconstruction_loss)

__all__ = ["optimize_weight_rounding", "reconstruction_samples", "depthwise_blocks", "METHODS"]

METHODS = {"adaround": adaround, "attention_round": attention_round}


def reconstruction_samples(n: int) -> torch.Tensor:
    """Indices of the first ``n`` calibration samples that the reconstruction optimizes on: all
    but the ones the network-output choice compares on (:func:`qcompile.layer_choice.compared_samples`;
    at most half of them; a single sample is used for both)."""
    keep = torch.ones(n, dtype=torch.bool)
    compared = compared_samples(n)
    if compared.start > 0:
        keep[compared] = False
    return keep.nonzero().flatten()


def _inputs(gm: GraphModule, ctx: PassContext, node: Node) -> torch.Tensor:
    """``node``'s inputs on the reconstruction samples from ``gm`` as it runs (quantized so far,
    or float inside :func:`float_mode`)."""
    x = layer_inputs(gm, ctx, ctx.config.rounding_samples, only={node.target})[node.target].float()
    return x[reconstruction_samples(len(x))]


def _reconstruction_inputs(gm: GraphModule, ctx: PassContext, node: Node) -> tuple[torch.Tensor, torch.Tensor]:
    """``node``'s inputs on the reconstruction samples: from the network quantized so far, and
    from the float network."""
    x_q = _inputs(gm, ctx, node)
    with float_mode(gm):
        return x_q, _inputs(gm, ctx, node)


def _layer_data(gm: GraphModule, ctx: PassContext, node, q: QuantizedWeights, centered: bool,
                inputs: tuple[torch.Tensor, torch.Tensor] | None = None) -> LayerData:
    """``node``'s reconstruction problem; ``inputs`` (from :func:`_reconstruction_inputs`) when the
    caller already has them for ``gm`` as it stands."""
    x_q, x_f = inputs if inputs is not None else _reconstruction_inputs(gm, ctx, node)
    m = q.module
    clamp = info(node).fused_act
    with torch.no_grad():
        y = activate(layer_forward(m, m.weight.detach().float(), x_f), clamp)
    return LayerData(module=m, x=x_q, target=y, scale=q.weight_scale.float(), qmax=(1 << (q.bits - 1)) - 1,
                     clamp=clamp, centered=centered)


def _is_depthwise(conv: nn.Module) -> bool:
    return isinstance(conv, nn.modules.conv._ConvNd) and conv.groups > 1 \
        and conv.groups == conv.in_channels == conv.out_channels


def depthwise_blocks(gm: GraphModule, layers: list[Node]) -> dict[str, tuple[Node, list[Node], Node]]:
    """``{depthwise target: (depthwise node, nodes between, consumer node)}`` for every depthwise
    conv of ``layers`` whose output reaches another layer of ``layers`` through a chain of
    single-input, single-user nodes (activation, activation quantizer): the pairs Attention Round
    reconstructs jointly. A layer belongs to at most one pair."""
    wanted = {n.target for n in layers}
    blocks: dict[str, tuple[Node, list[Node], Node]] = {}
    taken: set[str] = set()
    for node in layers:
        if node.target in taken or not _is_depthwise(gm.get_submodule(node.target).module):
            continue
        between, cur = [], node
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            if nxt.all_input_nodes != [cur] or nxt.op not in ("call_module", "call_function", "call_method"):
                break
            if nxt.op == "call_module" and isinstance(gm.get_submodule(nxt.target), QuantizedWeights):
                if nxt.target in wanted and nxt.target not in taken:
                    blocks[node.target] = (node, between, nxt)
                    taken.update((node.target, nxt.target))
                break
            between.append(nxt)
            cur = nxt
    return blocks


def _run_node(gm: GraphModule, node: Node, y: torch.Tensor) -> torch.Tensor:
    """``node`` of ``gm`` computed on ``y`` in place of its one input node."""
    args, kwargs = map_arg(node.args, lambda _: y), map_arg(node.kwargs, lambda _: y)
    if node.op == "call_module":
        return gm.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def _block_data(gm: GraphModule, block: tuple[Node, list[Node], Node], inputs: tuple[torch.Tensor, torch.Tensor],
                centered: bool) -> BlockData:
    """The pair's joint reconstruction problem on its first layer's ``inputs`` (quantized-so-far, float)."""
    first, between, last = block
    x_q, x_f = inputs
    grids = []
    for node in (first, last):
        q = gm.get_submodule(node.target)
        grids.append(LayerGrid(module=q.module, scale=q.weight_scale.float(), qmax=(1 << (q.bits - 1)) - 1))
    clamp = info(last).fused_act

    def run(weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        y = layer_forward(grids[0].module, weights[0], x)
        for node in between:
            y = _run_node(gm, node, y)
        return activate(layer_forward(grids[1].module, weights[1], y), clamp)

    with float_mode(gm), torch.no_grad():
        target = run([g.module.weight.detach().float() for g in grids], x_f)
    return BlockData(layers=grids, run=run, x=x_q, target=target, centered=centered)


def _optimized(q: QuantizedWeights, levels: torch.Tensor) -> QuantizedWeights:
    out = copy.deepcopy(q)
    out.weight_int.copy_(levels.to(torch.int8))
    return out


def _layer_wise(gm: GraphModule, ctx: PassContext, node: Node, seed: int, centered: bool,
                inputs: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Attention Round levels of ``node``'s layer alone, on its inputs from ``gm`` as it stands."""
    data = _layer_data(gm, ctx, node, gm.get_submodule(node.target), centered, inputs)
    return attention_round(data, ctx.config.rounding_iters, seed=seed, progress=ctx.progress,
                           desc=f"attention_round {node.target}")[0]


def _optimize_block(gm: GraphModule, ctx: PassContext, block: tuple[Node, list[Node], Node], seed: int,
                    centered: bool) -> dict[str, dict]:
    """A depthwise pair takes one of five level sets, both layers together: nearest; Attention
    Round of the depthwise conv alone, of its consumer alone (on the inputs nearest depthwise
    levels give it), or of each alone in turn (the consumer's inputs from the optimized depthwise
    levels): every outcome of the layer-wise path; or Attention Round of the pair jointly on the
    consumer's output (block-wise). The lowest network-output error on the held-out calibration
    samples decides (:func:`~qcompile.layer_choice.choose_jointly_by_network_output`). The
    records of both layers carry the pair's reconstruction errors."""
    t0 = time.perf_counter()
    first, _, last = block
    first_inputs = _reconstruction_inputs(gm, ctx, first)
    data = _block_data(gm, block, first_inputs, centered)
    qs = [gm.get_submodule(node.target) for node in (first, last)]
    nearest = [q.weight_int.float() for q in qs]
    joint, history = attention_round_block(data, ctx.config.rounding_iters, seed=seed, progress=ctx.progress,
                                           desc=f"attention_round {first.target}+{last.target}")
    first_alone = _layer_wise(gm, ctx, first, seed, centered, first_inputs)
    last_inputs = _reconstruction_inputs(gm, ctx, last)
    second_alone = _layer_wise(gm, ctx, last, seed + 1, centered, last_inputs)
    set_module(gm, first.target, _optimized(qs[0], first_alone))
    try:  # the consumer's float inputs do not depend on the depthwise levels
        second_after_first = _layer_wise(gm, ctx, last, seed + 1, centered, (_inputs(gm, ctx, last), last_inputs[1]))
    finally:
        set_module(gm, first.target, qs[0])
    levels = {"nearest": nearest, "depthwise alone": [first_alone, nearest[1]],
              "consumer alone": [nearest[0], second_alone], "each alone": [first_alone, second_after_first],
              "block-wise": joint}
    with torch.no_grad():
        errors = {name: float(block_reconstruction_loss(data, [g.dequantize(v) for g, v in zip(data.layers, lv)]))
                  for name, lv in levels.items()}
    candidates = {name: qs if name == "nearest" else [_optimized(q, v) for q, v in zip(qs, lv)]
                  for name, lv in levels.items()}
    choice = choose_jointly_by_network_output(gm, ctx, [first, last], candidates, centered)
    seconds = round(time.perf_counter() - t0, 2)
    return {node.target: {"method": "attention_round", "block": [first.target, last.target], "choice": choice,
                          "bits": q.bits, "error_nearest": round(errors["nearest"], 6),
                          "error_optimized": round(min(v for k, v in errors.items() if k != "nearest"), 6),
                          "error_each_alone": round(errors["each alone"], 6),
                          "error_block_wise": round(errors["block-wise"], 6),
                          "kept_nearest": choice == "nearest",
                          "changed_weights": int((levels[choice][k] != nearest[k]).sum()), "seconds": seconds,
                          "loss_history": [round(h, 6) for h in history]}
            for k, (node, q) in enumerate(zip((first, last), qs))}


@graph_pass("rounding='adaround'/'attention_round': weights take the grid levels that best reconstruct each layer's output")
def optimize_weight_rounding(gm: GraphModule, ctx: PassContext) -> PassResult:
    cfg = ctx.config
    todo = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or cfg.rounding_for(node.target) == "nearest":
            continue
        q = gm.get_submodule(node.target)
        if isinstance(q, QuantizedWeights) and not isinstance(q, PiecewiseQuantizedWeights) \
                and node.target not in {n.target for n in todo}:
            todo.append(node)
    if not todo or not ctx.calib:
        return PassResult(gm, False)
    centered = cfg.bias_correction in ("auto", "empirical")
    blocks = depthwise_blocks(gm, [n for n in todo if cfg.rounding_for(n.target) == "attention_round"]) \
        if cfg.rounding_blocks else {}
    second = {block[2].target for block in blocks.values()}
    layers: dict[str, dict] = {}
    start = time.perf_counter()
    for i, node in enumerate(todo):
        if node.target in second:
            continue
        if node.target in blocks:
            layers.update(_optimize_block(gm, ctx, blocks[node.target], cfg.rounding_seed + i, centered))
            continue
        t0 = time.perf_counter()
        q = gm.get_submodule(node.target)
        method = cfg.rounding_for(node.target)
        data = _layer_data(gm, ctx, node, q, centered)
        nearest = q.weight_int.float()
        levels, history = METHODS[method](data, cfg.rounding_iters, seed=cfg.rounding_seed + i,
                                          progress=ctx.progress, desc=f"{method} {node.target}")
        with torch.no_grad():
            before = float(reconstruction_loss(data, data.dequantize(nearest)))
            after = float(reconstruction_loss(data, data.dequantize(levels)))
        optimized = copy.deepcopy(q)
        optimized.weight_int.copy_(levels.to(torch.int8))
        choice = choose_by_network_output(gm, ctx, [node], {node.target: data.x},
                                          lambda n, fit: {"nearest": q, method: optimized}, centered)
        kept = choice[node.target][0] == "nearest"
        layers[node.target] = {"method": method, "bits": q.bits, "error_nearest": round(before, 6),
                               "error_optimized": round(after, 6), "kept_nearest": kept,
                               "changed_weights": 0 if kept else int((levels != nearest).sum()),
                               "seconds": round(time.perf_counter() - t0, 2), "loss_history": [round(v, 6) for v in history]}
    ctx.records["optimize_weight_rounding"] = {
        "layers": layers, "iters": cfg.rounding_iters, "samples": len(reconstruction_samples(min(cfg.rounding_samples, sum(len(b) for b in ctx.calib)))),
        "seed": cfg.rounding_seed, "inputs": "quantized-so-far network; target: float network",
        "seconds": round(time.perf_counter() - start, 2)}
    return PassResult(gm, any(not r["kept_nearest"] for r in layers.values()))
