"""``method="block_replace"``: QAT guided by the full-precision network through block-by-block
replacement (Yu et al. 2024, "Improving Quantization-aware Training of Low-Precision Network via
Block Replacement on Full-Precision Counterpart").

The weighted layers, in graph order, are split into ``B = QATConfig.blocks`` contiguous blocks;
every quantizer belongs to the block of the last conv/linear at or before it (quantizers before
the first layer, e.g. the input's, to the first block). Besides the low-precision backbone
``M_B`` (every block quantized), each step runs the mixed-precision intermediate models
``M_k``, ``k = 1 .. B-1``: blocks ``1..k`` low-precision, blocks ``k+1..B`` the full-precision
counterpart (the float model as it was before training, frozen: reference weights, no
quantization). A quantized block inside ``M_k`` therefore has to produce what the float blocks
after it expect (forward), and receives its gradient through float blocks instead of through the
remaining quantizers' straight-through estimates (backward).

Loss (our reading of the paper's joint training): ``l(M_B) + mean_k l(M_k)`` with ``l`` the task
loss; the float counterpart is never updated; what is compiled is the backbone ``M_B``, whose
parameters are the only trainable ones (shared with every ``M_k``).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from qcompile.nn import ActQuant, QuantizedWeights, QuantMode
from qcompile.qat.lsq import LsqWeights
from qcompile.qat.methods import LsqMethod

__all__ = ["BlockReplaceMethod", "assign_blocks"]


def assign_blocks(gm, layers: list[str], blocks: int) -> tuple[dict[str, int], int]:
    """``{quantizer module path: block}`` and the number of blocks actually used."""
    b = min(blocks, len(layers))
    of_layer = {}
    for k, part in enumerate(np.array_split(np.arange(len(layers)), b)):
        for i in part:
            of_layer[layers[i]] = k
    out, current = {}, 0
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if node.target in of_layer:
            current = of_layer[node.target]
        if isinstance(mod, (ActQuant, QuantizedWeights)):
            out[node.target] = current
    return out, b


class BlockReplaceMethod(LsqMethod):
    def __init__(self, cfg, gm, x_init, task_loss, total_steps):
        super().__init__(cfg, gm, x_init, task_loss, total_steps)
        from qcompile.qat.trainer import weight_layers

        layers = weight_layers(gm)
        for n in layers:
            mod = gm.get_submodule(n)
            if isinstance(mod, LsqWeights):
                mod.keep_reference()
        self.block_of, self.blocks = assign_blocks(gm, layers, cfg.blocks)

    @contextmanager
    def mixed(self, k: int):
        """Blocks ``>= k`` (0-based) run as the frozen full-precision counterpart."""
        saved = []
        try:
            for name, blk in self.block_of.items():
                if blk < k:
                    continue
                mod = self.gm.get_submodule(name)
                if isinstance(mod, QuantizedWeights):
                    saved.append((mod, "simulate", mod.simulate))
                    mod.simulate = False
                else:
                    saved.append((mod, "mode", mod.mode))
                    mod.mode = QuantMode.FLOAT
            yield
        finally:
            for mod, attr, value in saved:
                setattr(mod, attr, value)

    def loss(self, x, y):
        logits = self.gm(x)
        total = self.task_loss(logits, y)
        mixed = 0.0
        for k in range(1, self.blocks):
            with self.mixed(k):
                mixed = mixed + self.task_loss(self.gm(x), y)
        return total + mixed / max(self.blocks - 1, 1), logits, {}

    def finish(self):
        return {"blocks": self.blocks, "block_of": dict(self.block_of)}
