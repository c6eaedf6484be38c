"""Record the float model's outputs on the calibration data, the teacher of
:func:`~qcompile.passes.train_quantization_aware` (label-free distillation, Hinton et al. 2015).

Runs right after BN folding (which keeps the float function), before every pass that changes it
slightly (bias correction shifts float biases to cancel the weight
rounding error, which is large at 2-4 bits). Only when ``QuantConfig.activation_quantizer``
asks for QAT; stores the outputs in ``ctx.records["record_float_outputs"]["outputs"]`` (not
part of the report), which the QAT pass consumes and removes.

Preserves: the graph (read only).
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule

from qcompile.pass_manager import PassContext, PassResult, graph_pass

__all__ = ["record_float_outputs", "QAT_TEACHER_RECORD"]

QAT_TEACHER_RECORD = "record_float_outputs"


@graph_pass("QAT distills the float model: keep its outputs on the calibration data")
def record_float_outputs(gm: GraphModule, ctx: PassContext) -> PassResult:
    if ctx.config.activation_quantizer == "uniform":
        return PassResult(gm, False)
    with torch.no_grad():
        outputs = torch.cat([gm(b).detach() for b in ctx.calib])
    ctx.records[QAT_TEACHER_RECORD] = {"outputs": outputs}
    return PassResult(gm, False)
