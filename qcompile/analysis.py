"""Compare the integer program with the float model, tensor by tensor."""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import numpy as np
import torch
from torch.fx import GraphModule, Interpreter

from qcompile.backends import ir
from qcompile.nn import ActQuant, QuantizedWeights, QuantMode

__all__ = ["float_mode", "capture_float", "sqnr_db", "tensor_sqnr"]


@contextlib.contextmanager
def float_mode(gm: GraphModule) -> Iterator[GraphModule]:
    """Run the quantized graph with float weights and pass-through quantizers, then restore it."""
    saved = [(m, m.mode) for m in gm.modules() if isinstance(m, ActQuant)]
    weights = [m for m in gm.modules() if isinstance(m, QuantizedWeights)]
    try:
        for m, _ in saved:
            m.mode = QuantMode.FLOAT
        for m in weights:
            m.simulate = False
        yield gm
    finally:
        for m, mode in saved:
            m.mode = mode
        for m in weights:
            m.simulate = True


class _Capture(Interpreter):
    def __init__(self, gm: GraphModule):
        super().__init__(gm)
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.values[n.name] = out.detach()
        return out


def capture_float(gm: GraphModule, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every tensor value of the float model on ``x``, by fx node name."""
    with float_mode(gm), torch.no_grad():
        cap = _Capture(gm)
        cap.run(x)
    return cap.values


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum r^2 / sum (r - a)^2)`` in dB."""
    r = np.asarray(reference, dtype=np.float64)
    noise = float(np.sum((r - np.asarray(approx, dtype=np.float64)) ** 2))
    signal = float(np.sum(r ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def tensor_sqnr(program: ir.Program, int_values: dict[int, np.ndarray], float_values: dict[str, torch.Tensor]) -> dict[int, float]:
    """SQNR of each program tensor (dequantized) against the float value of its source node."""
    out = {}
    for tid, name in program.source.items():
        if tid not in int_values or name not in float_values:
            continue
        t = program.tensors[tid]
        deq = (int_values[tid].astype(np.float64) - t.zero_point) * t.scale
        ref = float_values[name].double().numpy().reshape(deq.shape)
        out[tid] = sqnr_db(ref, deq)
    return out
