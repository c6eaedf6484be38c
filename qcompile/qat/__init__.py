"""Quantization-aware training. The LSQ quantizers (:mod:`qcompile.qat.lsq`) keep their old import
path (``from qcompile.qat import LsqWeights, ...``)."""
from qcompile.qat.lsq import *  # noqa: F401,F403
from qcompile.qat.lsq import __all__ as _lsq_all

__all__ = list(_lsq_all)
