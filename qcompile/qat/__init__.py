"""Quantization-aware training.

* :func:`train` (``qcompile.qat.train(model, example_inputs, train_data, method=..., bits=...,
  epochs=..., loss=None, val_data=None)``) returns a :class:`PreparedModel` that
  :func:`qcompile.compile` lowers as trained; methods ``lsq``, ``constrained``, ``ddq``,
  ``block_replace`` (:class:`QATConfig`). ``qcompile.compile(model, example_inputs, calib,
  qat=QATConfig(...), train_data=(x, y))`` trains and lowers in one call (same program).
* :func:`prepare_graph`: the graph ``train`` starts from (quantizers initialized, untrained).
* ``method="constrained"``: ``PreparedModel.dual_variables`` feed
  ``QuantConfig(weight_bits="auto", flash_budget=..., bit_allocation="dual_variables",
  dual_variables=...)`` (:meth:`PreparedModel.allocation_config`): layer-selective precision.
* The LSQ quantizers (:mod:`qcompile.qat.lsq`) keep their old import path
  (``from qcompile.qat import LsqWeights, ...``).
"""
from qcompile.qat.lsq import *  # noqa: F401,F403
from qcompile.qat.lsq import __all__ as _lsq_all
from qcompile.qat.prepared import METHODS, PreparedModel, QATConfig
from qcompile.qat.sensitivity import layer_output_divergence, layer_sensitivity, spearman

__all__ = list(_lsq_all) + ["train", "prepare_graph", "QATConfig", "PreparedModel", "METHODS", "layer_sensitivity",
                            "layer_output_divergence", "spearman"]


def __getattr__(name: str):
    # train imports the pass pipeline, which imports the quantizers above (and n2uq, which
    # imports this package): resolved on first use to keep the import graph acyclic
    if name in ("train", "prepare_graph"):
        from qcompile.qat import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'qcompile.qat' has no attribute {name!r}")
