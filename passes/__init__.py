"""Graph passes: each a small FX -> FX function ``(GraphModule, PassContext) -> PassResult``."""
from qcompile.passes.absorb_high_bias import absorb_high_bias
from qcompile.passes.allocate_weight_bits import allocate_weight_bits
from qcompile.passes.calibrate import calibrate
from qcompile.passes.correct_bias import correct_bias
from qcompile.passes.equalize_cross_layer import equalize_cross_layer
from qcompile.passes.fold_batchnorm import fold_batchnorm
from qcompile.passes.fuse_activations import fuse_activations
from qcompile.passes.insert_observers import insert_observers
from qcompile.passes.optimize_weight_rounding import optimize_weight_rounding
from qcompile.passes.quantize_weights import quantize_weights
from qcompile.passes.quantize_weights_piecewise import quantize_weights_piecewise
from qcompile.passes.record_float_outputs import record_float_outputs
from qcompile.passes.record_batchnorm_statistics import record_batchnorm_statistics
from qcompile.passes.remove_identities import remove_identities
from qcompile.passes.split_outlier_channels import split_outlier_channels
from qcompile.passes.train_quantization_aware import train_quantization_aware

__all__ = [
    "record_float_outputs",
    "remove_identities",
    "record_batchnorm_statistics",
    "fold_batchnorm",
    "equalize_cross_layer",
    "absorb_high_bias",
    "split_outlier_channels",
    "fuse_activations",
    "insert_observers",
    "calibrate",
    "allocate_weight_bits",
    "quantize_weights",
    "quantize_weights_piecewise",
    "optimize_weight_rounding",
    "correct_bias",
    "train_quantization_aware",
]
