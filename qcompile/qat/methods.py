"""The training-method interface of :func:`qcompile.qat.train` and the LSQ baseline.

A method owns the objective and any state that is not a parameter of the graph:

* ``parameter_groups()`` -> ``(base, quantizer)`` parameter lists (weights/biases get ``lr``,
  quantizer parameters ``10 * lr``);
* ``loss(x, y)`` -> ``(loss, logits of the quantized model, stats)``; ``stats`` (detached tensors)
  are averaged over the processes before ``after_step(step, stats)`` sees them;
* ``state_dict()`` / ``load_state_dict()`` for checkpoints; ``finish()`` -> extra record entries,
  run before the quantizers are frozen (e.g. ``dual_variables``).

``lsq`` (Esser et al. 2020): the quantized graph (LSQ weights and activations, learned steps, STE,
gradient scale ``1/sqrt(N Q_P)``, eq. 1-3 and sec. 2.2) trained on the task loss alone: the
baseline the other methods are measured against.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.fx import GraphModule

from qcompile.qat.lsq import LsqActQuant, LsqWeights
from qcompile.qat.prepared import QATConfig

__all__ = ["LsqMethod", "make_method", "trainable_parameters"]


def trainable_parameters(gm: GraphModule) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """``(weights and biases of the LSQ layers, the quantizers' own parameters)``, all set trainable."""
    base, quant = [], []
    for m in gm.modules():
        if isinstance(m, LsqWeights):
            for p in (m.module.weight, m.module.bias):
                if p is not None:
                    p.requires_grad_(True)
                    base.append(p)
            quant += [p for p in m.parameters(recurse=False)]
        elif isinstance(m, LsqActQuant):
            quant += list(m.parameters(recurse=False))
    for p in quant:
        p.requires_grad_(True)
    return base, quant


class LsqMethod:
    """LSQ: the task loss of the quantized graph."""

    def __init__(self, cfg: QATConfig, gm: GraphModule, x_init: torch.Tensor,
                 task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], total_steps: int):
        self.cfg, self.gm, self.task_loss, self.total_steps = cfg, gm, task_loss, total_steps

    def parameter_groups(self):
        return trainable_parameters(self.gm)

    def loss(self, x: torch.Tensor, y: torch.Tensor):
        logits = self.gm(x)
        return self.task_loss(logits, y), logits, {}

    def after_step(self, step: int, stats: dict[str, torch.Tensor]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def finish(self) -> dict[str, Any]:
        return {}


def make_method(cfg: QATConfig, gm: GraphModule, x_init: torch.Tensor, task_loss, total_steps: int):
    from qcompile.qat.block_replace import BlockReplaceMethod
    from qcompile.qat.constrained import ConstrainedMethod
    from qcompile.qat.ddq import DdqMethod

    cls = {"lsq": LsqMethod, "constrained": ConstrainedMethod, "ddq": DdqMethod,
           "block_replace": BlockReplaceMethod}[cfg.method]
    return cls(cfg, gm, x_init, task_loss, total_steps)
