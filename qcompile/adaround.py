"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Each weight rounds down or up onto the grid ``quantize_weights`` chose: ``W~ = s * clamp(floor(W/s)
+ h(V), -qmax, qmax)`` with the rectified sigmoid (eq. 23)

    h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),   zeta = 1.1, gamma = -0.1,

and ``V`` minimizes the layer's output reconstruction error (eq. 25, asymmetric: see
:mod:`qcompile.reconstruction`) plus the regularizer (eq. 24)

    lambda * f_reg(V),   f_reg(V) = sum_ij 1 - |2 h(V_ij) - 1|^beta,

whose exponent ``beta`` is annealed from 20 to 2 after a warm-up without regularization (20% of
the iterations), so ``h`` is pushed to 0 or 1 by the end (sec. 4.1; the linear decay and warm-up
follow the authors' reference setting). The result takes the hard value ``h >= 0.5``: an integer
level on the same grid as nearest rounding.

Our choices where the paper leaves room: ``V`` starts where ``h(V)`` equals the fractional part of
``W/s`` (so the soft weights start at the float weights); ``f_reg`` is averaged over the weights and
the reconstruction error is normalized by the target's power, so one ``lambda`` fits every layer
size: ``lambda = 1`` (0.01 left ``h`` fractional after 1,000 steps, so the hard result lost to
nearest on some layers; 1 vs 0.1 on held-out *training* samples: network logit MSE 0.20 vs 0.37
on fashion_plain W3, 2.09 vs 1.86 on mnist1d_plain); Adam with a learning rate of 1e-2 (short runs: ``rounding_iters`` steps, 1,000 by
default, where the paper uses 10,000 at 1e-3).
"""
from __future__ import annotations

import torch

from qcompile.reconstruction import LayerData, optimize, reconstruction_loss

__all__ = ["rectified_sigmoid", "init_v", "round_regularizer", "beta_at", "adaround", "ZETA", "GAMMA"]

ZETA, GAMMA = 1.1, -0.1
BETA_START, BETA_END, WARMUP = 20.0, 2.0, 0.2
REG_WEIGHT = 1.0
LR = 1e-2
BATCH = 32


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V)`` of eq. 23: a sigmoid stretched to ``(gamma, zeta)`` and clipped to ``[0, 1]``."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def init_v(rest: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) = rest`` (``rest`` in ``[0, 1)``, clamped away from the saturated ends)."""
    r = rest.clamp(0.01, 0.99)
    return -torch.log((ZETA - GAMMA) / (r - GAMMA) - 1.0)


def round_regularizer(h: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean over the weights of ``1 - |2h - 1|^beta`` (eq. 24): 0 when every ``h`` is 0 or 1."""
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).mean()


def beta_at(t: int, iters: int) -> float | None:
    """``beta`` at step ``t``: ``None`` during the warm-up, then linear from 20 down to 2."""
    start = int(WARMUP * iters)
    if t < start:
        return None
    rel = (t - start) / max(iters - start, 1)
    return BETA_END + (BETA_START - BETA_END) * max(0.0, 1.0 - rel)


def adaround(data: LayerData, iters: int, seed: int = 0, progress: bool = False, desc: str = "adaround",
             reg_weight: float | None = None) -> tuple[torch.Tensor, list[float]]:
    """Integer levels (float tensor of integers, the weight's shape) for ``data``'s layer, and the
    loss history."""
    reg_weight = REG_WEIGHT if reg_weight is None else reg_weight
    w = data.w_grid
    floor = torch.floor(w)
    v = init_v(w - floor).requires_grad_(True)

    def loss_fn(t: int, idx: torch.Tensor) -> torch.Tensor:
        h = rectified_sigmoid(v)
        q = torch.clamp(floor + h, -data.qmax, data.qmax)
        loss = reconstruction_loss(data, data.dequantize(q), idx)
        beta = beta_at(t, iters)
        if beta is not None:
            loss = loss + reg_weight * round_regularizer(h, beta)
        return loss

    history = optimize([v], loss_fn, len(data.x), iters, LR, BATCH, seed, desc, progress)
    with torch.no_grad():
        q = torch.clamp(floor + (rectified_sigmoid(v) >= 0.5).float(), -data.qmax, data.qmax)
    return q, history
