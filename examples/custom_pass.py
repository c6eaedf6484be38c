"""A user-written pass in a few lines: clamp every ReLU6 in the graph to ReLU4 before quantization.

Run: python examples/custom_pass.py
"""
import torch
import torch.nn as nn

import qcompile
from qcompile.passes import fuse_activations


@qcompile.graph_pass("narrower activation range -> finer int8 steps")
def relu6_to_relu4(gm, ctx):
    changed = False
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.ReLU6):
            gm.get_submodule(node.target).max_val = 4.0
            changed = True
    return qcompile.PassResult(gm, changed)


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU6(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    pipeline = qcompile.default_pipeline().insert_before(fuse_activations, relu6_to_relu4)
    print(pipeline)
    art = qcompile.compile(model, (torch.randn(1, 1, 8, 8),), calib=torch.randn(64, 1, 8, 8) * 3, pipeline=pipeline)
    print(art.report())
    return art


if __name__ == "__main__":
    main()
