"""Re-quantize conv/linear weights piecewise-linearly (PWLQ, Fang et al. 2020, eq. 3-4 with the
error-minimizing breakpoint of sec. 3.3) when ``QuantConfig.weight_quantizer == "pwlq"``.

Runs right after :func:`~qcompile.passes.quantize_weights`, on the same layers, with the same
bias headroom (``min_scale``) and bit width; see :mod:`qcompile.piecewise` for the level
budget and the exact int8 realization. Layers keep lowering to the ordinary int8 kernels; only
their flash storage becomes ``bits``-bit codes plus a per-channel level table.

Preserves: graph structure; every weight moves to its nearest realized PWLQ level.
"""
from __future__ import annotations

from torch.fx import GraphModule

from qcompile.errors import ConfigError
from qcompile.nn import QuantizedWeights
from qcompile.pass_manager import PassContext, PassResult, graph_pass
from qcompile.piecewise import PiecewiseQuantizedWeights

__all__ = ["quantize_weights_piecewise"]


@graph_pass("below 8 bits, weights take a dense center grid and a sparse tail grid per channel (PWLQ)")
def quantize_weights_piecewise(gm: GraphModule, ctx: PassContext) -> PassResult:
    cfg = ctx.config
    if cfg.weight_quantizer != "pwlq":
        return PassResult(gm, False)
    breakpoints: dict[str, float] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        qmod = gm.get_submodule(node.target)
        if not isinstance(qmod, QuantizedWeights) or isinstance(qmod, PiecewiseQuantizedWeights):
            continue
        if qmod.bits < 3:
            raise ConfigError(f"QuantConfig(weight_quantizer='pwlq') needs weight_bits >= 3; layer "
                              f"'{node.target}' has {qmod.bits}")
        pw = PiecewiseQuantizedWeights(qmod.module, qmod.bits, qmod.min_scale, qmod.per_channel)
        parent, _, leaf = node.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, pw)
        breakpoints[node.target] = round(float(pw.breakpoint.mean()), 3)
    bits = cfg.uniform_weight_bits
    ctx.records["quantize_weights_piecewise"] = {"bits": bits if bits is not None else "per layer",
                                                 "mean_breakpoint": breakpoints}
    return PassResult(gm, bool(breakpoints))
