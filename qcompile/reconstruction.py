"""Layer-wise output reconstruction: the problem AdaRound and Attention Round both solve.

For one conv/linear with float weights ``W`` (already given a per-channel grid ``s`` and clipping
``[-qmax, qmax]`` by :mod:`qcompile.passes.quantize_weights`), find integer levels ``Q`` so that
the layer output with weights ``s * Q`` on the input the *quantized* network feeds it is close to
the *float* layer output on the *float* network's input:

    min_Q  E || f(s Q x~ + b) - f(W x + b) ||^2

``x~`` comes from the network quantized so far (activations fake-quantized, earlier layers already
re-rounded), ``x`` from the float network: the asymmetric reconstruction of AdaRound (Nagel et al.
2020, sec. 4, eq. 25), which lets a layer compensate part of the error of the layers before it.
``f`` is the activation fused into the layer's requantization (ReLU/ReLU6/clamp bounds, or the
identity). When empirical bias correction follows, the per-channel mean error is removed before
squaring: bias correction cancels exactly that part afterwards.

The loss is normalized by the mean squared target, so one regularizer weight fits every layer.
:func:`optimize` is the shared Adam loop (minibatches drawn from a seeded generator, tqdm bar).

A :class:`BlockData` is the same problem for a short chain of layers optimized jointly (block-wise
reconstruction, Li et al. 2021 "BRECQ", sec. 3.2): the target is the float output of the chain's
*last* layer, the input is the quantized-so-far input of its *first*, and the nodes between them
(activations, the int8 activation fake-quantizer) run as the graph runs them, so a later layer's
levels can make up for what an earlier one's few weights cannot reconstruct alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = ["LayerGrid", "LayerData", "BlockData", "layer_forward", "reconstruction_loss", "block_reconstruction_loss",
           "optimize", "int_grid", "activate"]


@dataclass
class LayerGrid:
    """A conv/linear and the per-channel grid its weights are rounded onto."""

    module: nn.Module                       # the float conv/linear (hyper-parameters, float bias)
    scale: torch.Tensor                     # grid step per output channel (Co,)
    qmax: int                               # levels are -qmax .. qmax

    @property
    def w_grid(self) -> torch.Tensor:
        """The float weights in grid units ``W / s``."""
        return int_grid(self.module.weight.detach().float(), self.scale)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        return q * self.scale.reshape((-1,) + (1,) * (q.dim() - 1))


@dataclass(kw_only=True)
class LayerData(LayerGrid):
    """One layer's reconstruction problem (every tensor float32; ``scale`` per output channel)."""

    x: torch.Tensor                         # input from the quantized-so-far network (N, ...)
    target: torch.Tensor                    # f(W x + b) with the float network's input (N, ...)
    clamp: tuple[float, float] | None = None  # fused activation bounds, applied to both sides
    centered: bool = False                  # drop the per-channel mean error (bias correction follows)


@dataclass
class BlockData:
    """A chain of layers reconstructed jointly: ``run(weights, x)`` computes the chain's output
    (the last layer's, its fused activation applied) with ``weights[i]`` for ``layers[i]``."""

    layers: list[LayerGrid]
    run: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]
    x: torch.Tensor                         # input of the first layer, quantized-so-far network
    target: torch.Tensor                    # the chain's output in the float network
    centered: bool = False


def int_grid(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return weight / scale.reshape((-1,) + (1,) * (weight.dim() - 1)).to(weight.dtype)


def layer_forward(module: nn.Module, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The conv/linear ``module`` computed with ``weight`` instead of its own."""
    bias = None if module.bias is None else module.bias.detach().to(weight.dtype)
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)


def activate(y: torch.Tensor, clamp: tuple[float, float] | None) -> torch.Tensor:
    if clamp is None:
        return y
    lo, hi = clamp
    return y.clamp(min=None if lo == float("-inf") else lo, max=None if hi == float("inf") else hi)


def reconstruction_loss(data: LayerData, weight: torch.Tensor, idx: torch.Tensor | slice = slice(None)) -> torch.Tensor:
    """Normalized output error ``E||f(weight x~) - f(W x)||^2 / E||f(W x)||^2`` on samples ``idx``."""
    y = activate(layer_forward(data.module, weight, data.x[idx]), data.clamp)
    return _normalized_error(y, data.target[idx], data.centered)


def block_reconstruction_loss(block: BlockData, weights: list[torch.Tensor],
                              idx: torch.Tensor | slice = slice(None)) -> torch.Tensor:
    """:func:`reconstruction_loss` of a whole chain: its output with ``weights`` on ``x~`` against
    the float chain's output."""
    return _normalized_error(block.run(weights, block.x[idx]), block.target[idx], block.centered)


def _normalized_error(y: torch.Tensor, target: torch.Tensor, centered: bool) -> torch.Tensor:
    d = y - target
    if centered:
        dims = [0] + list(range(2, d.dim()))
        d = d - d.mean(dim=dims, keepdim=True)
    return d.pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)


def optimize(params: list[torch.Tensor], loss_fn: Callable[[int, torch.Tensor], torch.Tensor], n: int, iters: int,
             lr: float, batch_size: int, seed: int, desc: str, progress: bool) -> list[float]:
    """Adam on ``params`` for ``iters`` steps; step ``t`` minimizes ``loss_fn(t, idx)`` on a
    minibatch ``idx`` of ``batch_size`` of the ``n`` samples, drawn from ``torch.Generator`` seeded
    with ``seed`` (same seed, same data -> same result). Returns the loss every 10% of the run."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    history: list[float] = []
    every = max(iters // 10, 1)
    bar = tqdm(range(iters), desc=desc, unit="it", disable=not progress, leave=False)
    for t in bar:
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        loss = loss_fn(t, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if t % every == 0 or t == iters - 1:
            history.append(float(loss.detach()))
            bar.set_postfix(loss=f"{history[-1]:.4g}")
    return history
