"""The exceptions qcompile raises. Every message says *what* went wrong and *where*."""
from __future__ import annotations

__all__ = [
    "QCompileError",
    "TraceError",
    "UnsupportedOpError",
    "CalibrationError",
    "ConfigError",
    "PassError",
    "VerificationError",
    "IRVerificationError",
    "BuildError",
    "UnsupportedQuantizationError",
    "MemoryBudgetError",
]


class QCompileError(Exception):
    """Base class of every error raised by qcompile."""


class TraceError(QCompileError):
    """torch.fx could not trace the model (data-dependent control flow, unsupported Python)."""


class UnsupportedOpError(QCompileError):
    """The traced graph holds operators qcompile cannot lower.

    ``nodes`` lists ``(node_name, target, source_location)`` for every offending node, so a
    user sees all of them at once.
    """

    def __init__(self, message: str, nodes: list[tuple[str, str, str]] | None = None):
        super().__init__(message)
        self.nodes = list(nodes or [])


class CalibrationError(QCompileError):
    """Calibration data is empty, non-finite, or does not match ``example_inputs``."""


class ConfigError(QCompileError):
    """A ``QuantConfig`` / ``compile`` argument is invalid."""


class PassError(QCompileError):
    """A graph pass failed; the message names the pass and the passes that ran before it."""


class IRVerificationError(QCompileError):
    """The lowered integer program violates an IR invariant (dtype, shape, def-before-use...)."""


class VerificationError(QCompileError):
    """Generated code disagreed with the reference interpreter."""


class BuildError(QCompileError):
    """A C compiler or emulator invocation failed."""


class UnsupportedQuantizationError(QCompileError):
    """The graph holds a quantizer the integer IR cannot express yet, e.g. N2UQ thresholds after
    an op without a threshold output stage, or a sub-8-bit range on an op without a clamp.
    The message names the node."""


class MemoryBudgetError(QCompileError):
    """The compiled model does not fit the target's flash or RAM budget. The message gives the
    required vs available bytes and the largest layers/tensors; ``estimate`` holds the numbers."""

    def __init__(self, message: str, estimate: dict | None = None):
        super().__init__(message)
        self.estimate = dict(estimate or {})
