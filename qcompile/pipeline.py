"""The default pass pipeline, one line of *why* per stage. Edit the returned list freely."""
from __future__ import annotations

from qcompile.pass_manager import Pipeline
from qcompile.passes import (
    calibrate,
    fold_batchnorm,
    fuse_activations,
    insert_observers,
    quantize_weights,
    remove_identities,
)

__all__ = ["default_pipeline"]


def default_pipeline() -> Pipeline:
    """A fresh, editable pipeline: read top to bottom.

    Runs after :func:`qcompile.frontend.trace` (tracing, shape propagation, support check)
    and before :func:`qcompile.backends.lower.lower`.
    """
    return Pipeline([
        remove_identities,   # dropout / Identity / contiguous vanish in eval mode
        fold_batchnorm,      # BN is affine: fold into the producer's weights
        fuse_activations,    # ReLU/ReLU6/clamp become requantization bounds
        insert_observers,    # one observer per independently quantized tensor
        calibrate,           # ranges from calibration data, then frozen
        quantize_weights,    # int8 per-channel weights; graph now simulates the integer program
    ])
