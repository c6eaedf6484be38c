"""``method="constrained"``: QAT as a constrained learning problem solved by primal-dual updates
(Hounie, Elenter, Ribeiro 2022, "Neural Networks with Quantization Constraints").

The problem (their eq. for layer-wise constraints, sec. 3)::

    min_theta  E[ l(f_theta(x), y) ]                                   (full-precision task loss)
    s.t.       E[ CE(f_q(x), softmax(f_theta(x))) ] <= eps_out          (output constraint)
               E[ d_l(x) ] <= eps_l   for every conv/linear l           (layer constraints)

with ``f_q`` the quantized network (LSQ weights and activations, sharing the latent weights
``theta`` with ``f_theta``) and ``d_l`` the distance between layer ``l``'s quantized output and its
full-precision output *on the same (quantized) input*. The Lagrangian
``L = l + lambda_out (CE - eps_out) + sum_l lambda_l (d_l - eps_l)`` is minimized over
``theta`` (and the quantizer steps) by Adam and maximized over ``lambda >= 0`` by projected
gradient ascent ``lambda <- [lambda + dual_lr * slack]_+`` (their Algorithm 1). By their
sensitivity result (sec. 4) ``lambda_l`` is the rate at which the optimal loss grows when layer
``l``'s bound is tightened: large duals mark the layers that need precision, which
:func:`qcompile.bit_allocation.dual_variable_score` turns into a bit-allocation score.

Our readings where the paper leaves room:

* ``d_l`` is the *relative* squared distance ``mean((z_fp - z_q)^2) / mean(z_fp^2)`` so one
  tolerance fits layers of any scale. The bounds (:func:`layer_bounds`, ``QATConfig.dual_bounds``):
  by default, as in their code, every layer gets the same bound
  ``eps = epsilon_rel * mean_l d_l`` measured at initialization (their absolute ``1/255`` on an
  unnormalized distance has no meaning across our layers' scales); ``dual_bounds="per_layer"``
  gives each layer ``eps_l = epsilon_rel * d_l(init)`` so that no constraint starts inactive (a
  layer below the shared bound has, by complementary slackness, a zero dual whatever the loss's
  dependence on it). The output bound is ``epsilon_out`` (their default 0.1); ``lambda_out``
  starts at 1, ``lambda_l`` at 0 as in their code.
* The duals are updated after every step from the mini-batch slacks (stochastic dual ascent;
  their code does one update per epoch from the epoch's mean slack, too few updates for the
  handful of epochs a microcontroller model gets). The soft target ``softmax(f_theta)`` is detached.
* The reported ``dual_variables`` are the mean of the dual iterates over the last epoch
  (:meth:`ConstrainedMethod.averaged_lambdas`), the standard estimate of the optimal duals from
  stochastic dual ascent, whose last iterate oscillates with the mini-batch slacks; the last
  iterate is recorded as ``dual_variables_last``, the bounds as ``epsilon`` and the initial
  distortions as ``initial_distortion`` (``records["qat_train"]``).
* What is compiled is ``f_q``: its weights are the shared latent weights, quantized by the
  learned LSQ steps.

How well the duals measure sensitivity here (``benchmarks/qat.py --study``, W2A2, every layer
at 2 bits, 4 epochs; Spearman of the duals against the top-1 drop with only that layer
quantized; "ahead" counts the dual-variable selection strictly above the mean of 3 random
selections). Chosen on held-out data: QAT on MNIST-1D training samples 0..2999, everything
measured on samples 3000..3999 (``--samples 3000 --eval-on heldout``), seeds 0, 1, 2:

================  ==========================  ==========================
Spearman          shared (default)            per_layer
================  ==========================  ==========================
mnist1d_plain     0.40 / 0.40 / 0.40          0.40 / 0.20 / -0.40
mnist1d_resnet    0.29 / 0.28 / 0.18          0.55 / 0.57 / 0.64
mnist1d_mobilenet -0.09 / 0.13 / -0.15        0.36 / 0.46 / -0.10
mnist1d_dscnn     0.02 / -0.19 / -0.03        -0.31 / -0.56 / -0.42
selection ahead   2 / 1 / 0 of 4              2 / 2 / 1 of 4
================  ==========================  ==========================

Against the sensitivity of the *pretrained* layers instead (one layer at 2 bits with its quantizer
as initialized, before training; ``--study`` reports both), the same shared-bound runs give
0.40 / 0.40 / 0.40, 0.34 / 0.42 / 0.33, 0.36 / 0.35 / 0.30 and 0.10 / 0.12 / 0.20 (mean 0.32 vs
0.14 against the trained layers): closer on three models, still below 0.6 on all four.
Neither reaches the Spearman >= 0.6 target; averaging the iterates changed no ranking much
(seed 0, shared bounds, last iterate: 0.40 / 0.32 / -0.09 / 0.02). With per-layer bounds, the scale-free
score ``lambda_l * eps_l`` (``= -dP*/d log eps_l``, the first-order gain of removing layer ``l``'s
distortion) did worse at seed 0 (0.20 / 0.14 / 0.03 / -0.12), so the score stays
``lambda_l``. What the duals price is the *float* objective's cost of keeping a layer's own
output distortion within its bound, not how far that distortion travels to the quantized
network's output: on mnist1d_dscnn the first conv (fan-in 5) is the most sensitive layer (7-8
points) and has the smallest or second-smallest dual under either bound. The default stays
``"shared"``: mean Spearman 0.14 (shared) vs 0.12 (per_layer), selection ahead 3 vs 5 of 12
(on mnist1d_plain every selection ends at the same widths), no clear held-out win.

On the test split after that choice (QAT on all 4000 training samples, seed 0;
``benchmarks/results/qat_duals_mnist1d.json`` and, with ``--dual-bounds per_layer``,
``qat_duals_per_layer_mnist1d.json``): shared 0.40 / 0.46 / 0.00 / 0.04 (plain / resnet /
mobilenet / dscnn; the same as the last-iterate duals), selection ahead of random on resnet and
mobilenet; per_layer 0.40 / 0.77 / 0.50 / -0.12, ahead on the same two (dscnn 92.4 vs random mean
92.5, shared 87.5). One seed, seen after the choice: not a reason to switch by itself.
Nor is the top-1 drop's sampling noise what hides a correlation: against the continuous output
KL with only that layer quantized (:func:`qcompile.qat.layer_output_divergence`) the shared-bound
duals give 0.20 / 0.08 / -0.09 / 0.04 on the same run.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from qcompile.analysis import float_mode
from qcompile.qat.lsq import LsqWeights
from qcompile.qat.methods import LsqMethod

__all__ = ["ConstrainedMethod", "EPS_FLOOR", "layer_bounds"]

EPS_FLOOR = 1e-8
INIT_SAMPLES = 256


class ConstrainedMethod(LsqMethod):
    def __init__(self, cfg, gm, x_init, task_loss, total_steps):
        super().__init__(cfg, gm, x_init, task_loss, total_steps)
        from qcompile.qat.trainer import weight_layers

        self.layers = [n for n in weight_layers(gm) if isinstance(gm.get_submodule(n), LsqWeights)]
        self._seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._capture = False
        for name in self.layers:
            gm.get_submodule(name).register_forward_hook(self._hook(name))
        self.lambdas = torch.zeros(len(self.layers), dtype=torch.float64)
        self.lambda_out = torch.ones((), dtype=torch.float64)
        with torch.no_grad():
            self.d0 = self._distances(x_init[:INIT_SAMPLES])[1].double()
        self.eps = layer_bounds(self.d0, cfg.epsilon_rel, cfg.dual_bounds)
        # the reported duals average the iterates of the last epoch (steps >= avg_from)
        self.avg_from = total_steps - max(total_steps // cfg.epochs, 1)
        self.lambda_sum = torch.zeros_like(self.lambdas)
        self.lambda_count = 0

    def _hook(self, name):
        def hook(mod, args, out):
            if self._capture:
                self._seen[name] = (args[0], out)
        return hook

    def _distances(self, x):
        """Quantized logits and the relative distance of every layer's quantized output from its
        full-precision output on the same input."""
        self._seen.clear()
        self._capture = True
        try:
            logits = self.gm(x)
        finally:
            self._capture = False
        d = []
        for name in self.layers:
            inp, z_q = self._seen[name]
            z_fp = self.gm.get_submodule(name).module(inp)  # the float conv/linear with the latent weights
            d.append((z_fp - z_q).pow(2).mean() / (z_fp.detach().pow(2).mean() + 1e-12))
        self._seen.clear()
        return logits, torch.stack(d)

    def loss(self, x, y):
        with float_mode(self.gm):
            out_fp = self.gm(x)
        task = self.task_loss(out_fp, y)
        logits, d = self._distances(x)
        ce_out = -(F.softmax(out_fp.detach(), 1) * F.log_softmax(logits, 1)).sum(1).mean()
        slack_l = d - self.eps.to(d.dtype)
        slack_out = ce_out - self.cfg.epsilon_out
        lagrangian = task + float(self.lambda_out) * slack_out + (self.lambdas.to(d.dtype) * slack_l).sum()
        stats = {"slack": torch.cat([slack_l.detach(), slack_out.detach().reshape(1)]).double()}
        return lagrangian, logits, stats

    def after_step(self, step, stats):
        s = stats["slack"]
        self.lambdas = torch.clamp(self.lambdas + self.cfg.dual_lr * s[:-1], min=0.0)
        self.lambda_out = torch.clamp(self.lambda_out + self.cfg.dual_lr * s[-1], min=0.0)
        if step >= self.avg_from:
            self.lambda_sum = self.lambda_sum + self.lambdas
            self.lambda_count += 1

    def averaged_lambdas(self) -> torch.Tensor:
        """The mean of the dual iterates over the last epoch's steps (the last iterate before any):
        the estimate of the optimal duals that stochastic dual ascent's oscillating final iterate
        is not (the ergodic average of the primal-dual method, cf. the paper's Algorithm 1)."""
        if self.lambda_count == 0:
            return self.lambdas.clone()
        return self.lambda_sum / self.lambda_count

    def state_dict(self) -> dict[str, Any]:
        return {"lambdas": self.lambdas.clone(), "lambda_out": self.lambda_out.clone(), "eps": self.eps.clone(),
                "lambda_sum": self.lambda_sum.clone(), "lambda_count": self.lambda_count}

    def load_state_dict(self, state):
        self.lambdas, self.lambda_out, self.eps = state["lambdas"], state["lambda_out"], state["eps"]
        self.lambda_sum = state.get("lambda_sum", torch.zeros_like(self.lambdas))
        self.lambda_count = state.get("lambda_count", 0)

    def finish(self):
        return {"dual_variables": {n: float(v) for n, v in zip(self.layers, self.averaged_lambdas())},
                "dual_variables_last": {n: float(v) for n, v in zip(self.layers, self.lambdas)},
                "dual_averaged_steps": self.lambda_count,
                "dual_output": float(self.lambda_out),
                "initial_distortion": {n: float(v) for n, v in zip(self.layers, self.d0)},
                "epsilon": {n: float(v) for n, v in zip(self.layers, self.eps)}}


def layer_bounds(d0: torch.Tensor, epsilon_rel: float, mode: str) -> torch.Tensor:
    """The bounds ``eps_l`` of the layer constraints ``E[d_l] <= eps_l`` from the layers' relative
    distortions ``d0`` at initialization:

    * ``"shared"``: ``eps_l = epsilon_rel * mean_k d0_k`` for every layer (one tolerance, as the
      paper's code gives every layer the same ``epsilonlw``). A layer whose own distortion sits
      below it has an inactive constraint and, by complementary slackness, a zero dual however
      much the loss depends on it;
    * ``"per_layer"``: ``eps_l = epsilon_rel * d0_l``: every layer must cut its own distortion by
      the same factor, so every constraint starts violated (active).

    Floored at :data:`EPS_FLOOR`."""
    if mode == "shared":
        return torch.full_like(d0, max(epsilon_rel * float(d0.mean()), EPS_FLOOR))
    if mode == "per_layer":
        return torch.clamp(epsilon_rel * d0, min=EPS_FLOOR)
    raise ValueError(f"dual_bounds={mode!r}: 'shared' or 'per_layer'")
