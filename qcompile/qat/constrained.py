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
  tolerance fits layers of any scale. As in their code, every layer gets the same bound:
  ``eps = epsilon_rel * mean_l d_l`` measured at initialization (their absolute ``1/255`` on an
  unnormalized distance has no meaning across our layers' scales); the output bound is
  ``epsilon_out`` (their default 0.1); ``lambda_out`` starts at 1, ``lambda_l`` at 0 as in their code.
* The duals are updated after every step from the mini-batch slacks (stochastic dual ascent;
  their code does one update per epoch from the epoch's mean slack, too few updates for the
  handful of epochs a microcontroller model gets). The soft target ``softmax(f_theta)`` is detached.
* What is compiled is ``f_q``: its weights are the shared latent weights, quantized by the
  learned LSQ steps.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from qcompile.analysis import float_mode
from qcompile.qat.lsq import LsqWeights
from qcompile.qat.methods import LsqMethod

__all__ = ["ConstrainedMethod", "EPS_FLOOR"]

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
            d0 = self._distances(x_init[:INIT_SAMPLES])[1].double()
        self.eps = torch.full_like(d0, max(cfg.epsilon_rel * float(d0.mean()), EPS_FLOOR))

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

    def state_dict(self) -> dict[str, Any]:
        return {"lambdas": self.lambdas.clone(), "lambda_out": self.lambda_out.clone(), "eps": self.eps.clone()}

    def load_state_dict(self, state):
        self.lambdas, self.lambda_out, self.eps = state["lambdas"], state["lambda_out"], state["eps"]

    def finish(self):
        return {"dual_variables": {n: float(v) for n, v in zip(self.layers, self.lambdas)},
                "dual_output": float(self.lambda_out),
                "epsilon": {n: float(f"{v:.4g}") for n, v in zip(self.layers, self.eps)}}
