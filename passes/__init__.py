"""Graph passes: each a small FX -> FX function ``(GraphModule, PassContext) -> PassResult``."""
from qcompile.passes.calibrate import calibrate
from qcompile.passes.fold_batchnorm import fold_batchnorm
from qcompile.passes.fuse_activations import fuse_activations
from qcompile.passes.insert_observers import insert_observers
from qcompile.passes.quantize_weights import quantize_weights
from qcompile.passes.remove_identities import remove_identities

__all__ = [
    "remove_identities",
    "fold_batchnorm",
    "fuse_activations",
    "insert_observers",
    "calibrate",
    "quantize_weights",
]
