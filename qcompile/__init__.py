"""qcompile: a quantizing compiler from trained PyTorch models to integer C for Cortex-M.

    art = qcompile.compile(model, example_inputs, calib=loader, target="cortex-m")
    art.save("build/")
    print(art.report())

    prepared = qcompile.qat.train(model, example_inputs, (x, y), method="constrained", bits=4)
    art = qcompile.compile(prepared, example_inputs, calib=x)   # lowered exactly as trained
"""
from qcompile.api import compile
from qcompile.artifact import Artifact
from qcompile.config import QuantConfig
from qcompile.errors import (
    BuildError,
    CalibrationError,
    ConfigError,
    IRVerificationError,
    MemoryBudgetError,
    PassError,
    QCompileError,
    TraceError,
    UnsupportedOpError,
    VerificationError,
)
from qcompile.pass_manager import PassContext, PassResult, Pipeline, graph_pass
from qcompile.pipeline import default_pipeline
from qcompile.qat import PreparedModel, QATConfig
from qcompile.target import Target

__version__ = "0.1.0"

__all__ = [
    "compile",
    "Artifact",
    "QuantConfig",
    "QATConfig",
    "PreparedModel",
    "Target",
    "default_pipeline",
    "Pipeline",
    "PassContext",
    "PassResult",
    "graph_pass",
    "QCompileError",
    "TraceError",
    "UnsupportedOpError",
    "CalibrationError",
    "ConfigError",
    "PassError",
    "IRVerificationError",
    "VerificationError",
    "BuildError",
    "MemoryBudgetError",
]
