"""Run calibration batches through the observed graph and freeze every activation range.

Preserves: the graph structure; afterwards every ``ActQuant`` fake-quantizes with its
frozen ``(scale, zero_point)``.
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule
from tqdm.auto import tqdm

from qcompile.errors import CalibrationError
from qcompile.nn import ActQuant, QuantMode
from qcompile.pass_manager import PassContext, PassResult, graph_pass

__all__ = ["calibrate"]


@graph_pass("activation ranges come from representative data")
def calibrate(gm: GraphModule, ctx: PassContext) -> PassResult:
    observers = [m for m in gm.modules() if isinstance(m, ActQuant)]
    if not ctx.calib:
        raise CalibrationError("no calibration data: pass calib= a tensor of samples or an iterable of batches")
    for aq in observers:
        aq.mode = QuantMode.OBSERVE
    n = 0
    with torch.no_grad():
        for batch in tqdm(ctx.calib, desc="calibrate", unit="batch", disable=not ctx.progress, leave=False):
            out = gm(batch)
            outs = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else (out,)
            if not all(torch.isfinite(o).all() for o in outs):
                raise CalibrationError(f"the model produced NaN/Inf on calibration batch {n}")
            n += 1
    ranges = {}
    for name, aq in gm.named_modules():
        if isinstance(aq, ActQuant):
            ranges[name] = aq.freeze()
    ctx.records["calibrate"] = {"batches": n, "samples": sum(len(b) for b in ctx.calib), "qparams": ranges}
    return PassResult(gm, False)
