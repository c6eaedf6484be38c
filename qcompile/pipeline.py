"""The default pass pipeline, one line of *why* per stage. Edit the returned list freely."""
from __future__ import annotations

from qcompile.pass_manager import Pipeline
from qcompile.passes import (
    absorb_high_bias,
    allocate_weight_bits,
    calibrate,
    correct_bias,
    equalize_cross_layer,
    fold_batchnorm,
    fuse_activations,
    insert_observers,
    optimize_weight_rounding,
    quantize_weights,
    quantize_weights_piecewise,
    record_batchnorm_statistics,
    record_float_outputs,
    remove_identities,
    split_outlier_channels,
    train_quantization_aware,
)

__all__ = ["default_pipeline"]


def default_pipeline() -> Pipeline:
    """A fresh, editable pipeline: read top to bottom.

    Runs after :func:`qcompile.frontend.trace` (tracing, shape propagation, support check)
    and before :func:`qcompile.backends.lower.lower`. The float-graph rewrites (CLE, bias
    absorption, outlier splitting) run after BN folding, so they see the weights that get
    quantized, and before the observers, so ranges are measured on the rewritten graph. Each
    is switched in :class:`qcompile.QuantConfig` and records what it did in ``art.records``.
    """
    return Pipeline([
        remove_identities,            # dropout / Identity / contiguous vanish in eval mode
        record_batchnorm_statistics,  # BN mean/std of pre-activations, for the data-free passes below
        fold_batchnorm,               # BN is affine: fold into the producer's weights
        record_float_outputs,         # QAT only: the (BN-folded, same function) float model's outputs, the distillation teacher
        equalize_cross_layer,         # even out per-channel weight ranges across conv pairs (float-exact)
        absorb_high_bias,             # move always-positive pre-activation floors into the next bias
        split_outlier_channels,       # halve outlier weights by duplicating their channel (off by default)
        fuse_activations,             # ReLU/ReLU6/clamp become requantization bounds
        insert_observers,             # one observer per independently quantized tensor
        calibrate,                    # ranges from calibration data, then frozen
        allocate_weight_bits,         # weight_bits='auto': per-layer widths within flash_budget (no-op otherwise)
        quantize_weights,             # 2..8-bit per-channel/per-tensor weights; graph simulates the integer program
        quantize_weights_piecewise,   # weight_quantizer="pwlq": center + tail grids per channel (no-op otherwise)
        optimize_weight_rounding,     # rounding='adaround'/'attention_round': levels by layer-wise reconstruction (no-op for 'nearest')
        correct_bias,                 # cancel the mean output shift the weight rounding introduced
        train_quantization_aware,     # activation_quantizer='lsq'/'n2uq': QAT by distillation, last so nothing re-calibrates it
    ])
