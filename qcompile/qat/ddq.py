"""``method="ddq"``: learn each layer's weight precision, dynamic range and step size
differentiably under a flash budget (after Zhang et al. 2021, "Differentiable Dynamic
Quantization with Mixed Precision and Adaptive Resolution").

DDQ makes precision (bit width), dynamic range and step size of every layer trainable and adds a
resource regularizer so the learned mixed precision meets a memory target. Our quantizer
(:class:`DdqWeights`), per conv/linear, symmetric per output channel:

* a learnable dynamic range ``alpha_c`` (relative to its initial value, LSQ gradient scale);
* a learnable continuous precision ``b`` whose forward value is the nearest candidate width
  ``b_q`` (straight-through, as DDQ's gates are binarized with an STE);
* ``b_q`` is projected onto the flash budget at every step (below), so training only ever runs
  at widths the budget allows;
* the step follows from both: ``s_c = alpha_c / (2**(b_q - 1) - 1)``, and
  ``w_hat = s * round(clip(w / s, -Q_P, Q_P))`` with ``Q_P = 2**(b_q - 1) - 1`` (STE on round).
  ``dL/db`` flows through ``s`` (finer steps when ``b`` grows), ``dL/dalpha`` through ``s`` and
  the clipping, as in LSQ.

Regularizer (the paper's memory constraint as a penalty): ``ddq_reg * relu(S / B - 1)`` with
``S = sum_l n_l * b_l`` the weight bits at the continuous widths and ``B`` the flash budget in
bits (``QATConfig.flash_budget``, default the flash of the uniform model ``lsq`` produces at
the same ``bits``): free below the budget, a pull towards it above.

Where the paper is silent for a microcontroller target: before every step the learned widths
are projected onto the budget *as the backend stores them* (3-bit codes in 4-bit slots, 5..7
bits in bytes; :func:`qcompile.bit_allocation.weight_bytes`) by the allocator's greedy with the
score ``max(0, b_l - b)**2`` (each layer as close above its learned width as the budget allows);
after ``ddq_fix_at`` of the steps the projection is fixed and the remaining steps fine-tune
weights and ranges at those widths. The fixed
widths are the per-layer ``weight_bits`` of the compiled program.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from qcompile.bit_allocation import allocate_greedy, layer_cost, total_bytes, weight_bytes
from qcompile.qat.lsq import LsqWeights, grad_scale, round_ste
from qcompile.qat.methods import LsqMethod

__all__ = ["DdqWeights", "DdqMethod"]


def _set(gm, target, mod) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, mod)


class DdqWeights(LsqWeights):
    """LSQ weights whose precision is learned too (see the module doc). ``bits`` is the current
    (fixed or nearest-candidate) width; :meth:`fix` pins it, :meth:`freeze` stores the integers."""

    def __init__(self, q: LsqWeights, candidates: tuple[int, ...]):
        super().__init__(q)
        self.input_scale = q.input_scale  # keeps training with the program's bias rounding
        self.candidates = tuple(sorted(candidates))
        self.register_buffer("cands", torch.tensor(self.candidates, dtype=torch.float32))
        qp0 = (1 << (q.bits - 1)) - 1
        self.register_buffer("range0", q.step0 * qp0)  # alpha at initialization
        self.bits_param = nn.Parameter(torch.tensor(float(q.bits)))
        self.fixed_bits: int | None = None
        self.projected: int | None = None  # the width the budget projection gives the current b

    def width(self) -> torch.Tensor:
        """The forward width: the fixed one, else the budget-projected one (or, without a
        projection, the candidate nearest the learned ``b``), with ``b``'s gradient (STE)."""
        if self.fixed_bits is not None:
            return torch.tensor(float(self.fixed_bits))
        b = torch.clamp(self.bits_param, self.candidates[0], self.candidates[-1])
        if self.projected is not None:
            near = torch.tensor(float(self.projected))
        else:
            near = self.cands[torch.argmin((self.cands - b.detach()).abs())]
        return (near - b).detach() + b

    def fix(self, bits: int) -> None:
        self.fixed_bits = int(bits)
        self.bits = int(bits)
        self.bits_param.requires_grad_(False)

    def step(self) -> torch.Tensor:
        b = self.width()
        qp = torch.pow(2.0, b - 1) - 1
        alpha = self.range0 * grad_scale(self.step_rel, self.grad_g)
        if not self.per_channel:
            alpha = alpha.mean().expand_as(alpha)
        s = alpha / qp
        if self.min_scale is not None:
            s = torch.maximum(s, self.min_scale.to(s.dtype))
        return s

    def fake_weight(self) -> torch.Tensor:
        w = self.module.weight
        shape = (-1,) + (1,) * (w.dim() - 1)
        b = self.width()
        if self.fixed_bits is None:
            self.bits = int(round(float(b.detach())))
        qp = float((1 << (self.bits - 1)) - 1)
        s = self.step().reshape(shape)
        return round_ste(torch.clamp(w / s, -qp, qp)) * s

    def extra_repr(self) -> str:
        return f"bits={self.bits} (DDQ, learned {float(self.bits_param):.2f}), frozen={self.frozen}"


class DdqMethod(LsqMethod):
    def __init__(self, cfg, gm, x_init, task_loss, total_steps):
        super().__init__(cfg, gm, x_init, task_loss, total_steps)
        from qcompile.qat.trainer import weight_layers

        self.layers = [n for n in weight_layers(gm) if isinstance(gm.get_submodule(n), LsqWeights)]
        shapes = {n: tuple(gm.get_submodule(n).module.weight.shape) for n in self.layers}
        self.budget = cfg.flash_budget if cfg.flash_budget is not None else sum(
            weight_bytes(shapes[n], gm.get_submodule(n).bits) for n in self.layers)
        for n in self.layers:
            _set(gm, n, DdqWeights(gm.get_submodule(n), cfg.ddq_bits))
        self.numel = {n: math.prod(shapes[n]) for n in self.layers}
        self.costs = [layer_cost(n, shapes[n], cfg.ddq_bits) for n in self.layers]
        self.fix_step = max(1, int(cfg.ddq_fix_at * total_steps))
        self.learned: dict[str, float] | None = None
        self.fixed: dict[str, int] | None = None

    def _mods(self):
        return [self.gm.get_submodule(n) for n in self.layers]

    def project(self) -> dict[str, int]:
        """The widths within the flash budget (exact storage) closest above the learned ones."""
        learned = {n: float(m.bits_param.detach()) for n, m in zip(self.layers, self._mods())}
        return allocate_greedy(self.costs, self.budget, lambda n, b: max(0.0, learned[n] - b) ** 2)

    def loss(self, x, y):
        if self.fixed is None:  # train at widths the budget allows
            for m, (n, b) in zip(self._mods(), self.project().items()):
                m.projected = b
                m.bits = b
        logits = self.gm(x)
        task = self.task_loss(logits, y)
        if self.fixed is not None:
            return task, logits, {}
        size = sum(self.numel[n] * torch.clamp(m.bits_param, self.cfg.ddq_bits[0], self.cfg.ddq_bits[-1])
                   for n, m in zip(self.layers, self._mods()))
        reg = self.cfg.ddq_reg * torch.relu(size / (8.0 * self.budget) - 1.0)
        return task + reg, logits, {}

    def fix_widths(self) -> None:
        """Project the learned widths onto the flash budget (exact storage) and fix them."""
        learned = {n: float(m.bits_param.detach()) for n, m in zip(self.layers, self._mods())}
        self._apply(learned, self.project())

    def _apply(self, learned, bits) -> None:
        for n, m in zip(self.layers, self._mods()):
            m.fix(bits[n])
        self.learned, self.fixed = learned, dict(bits)

    def after_step(self, step, stats):
        if self.fixed is None and step + 1 >= self.fix_step:
            self.fix_widths()

    def state_dict(self) -> dict[str, Any]:
        return {"learned": self.learned, "fixed": self.fixed}

    def load_state_dict(self, state):
        if state["fixed"] is not None:
            self._apply(state["learned"], state["fixed"])

    def finish(self):
        if self.fixed is None:
            self.fix_widths()
        return {"ddq_learned_bits": {n: round(v, 3) for n, v in self.learned.items()},
                "flash_budget": self.budget, "allocated_bytes": total_bytes(self.costs, self.fixed)}
