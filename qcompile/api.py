"""``qcompile.compile``: trace -> passes -> lower -> plan memory -> Artifact."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import torch
import torch.nn as nn

from qcompile.analysis import capture_float, tensor_sqnr
from qcompile.artifact import Artifact
from qcompile.backends.interpreter import interpret
from qcompile.backends.lower import lower
from qcompile.backends.memory_plan import plan_memory
from qcompile.backends.schedule import schedule_for_memory
from qcompile.config import QuantConfig
from qcompile.data import calibration_batches
from qcompile.packing import pack
from qcompile.errors import ConfigError
from qcompile.frontend import check_supported, trace
from qcompile.model_input import resolve_model
from qcompile.pass_manager import PassContext, Pipeline
from qcompile.pipeline import default_pipeline
from qcompile.provenance import build_info
from qcompile.qat.prepared import PreparedModel, QATConfig
from qcompile.target import Target, check_fits, resolve_target

__all__ = ["compile"]

_SQNR_SAMPLES = 64


def compile(  # noqa: A001 - the public name the product promises
    model: nn.Module | str,
    example_inputs: tuple[torch.Tensor, ...] | torch.Tensor | None = None,
    calib: Any = None,
    target: str | Target = "cortex-m",
    config: QuantConfig | None = None,
    pipeline: Pipeline | None = None,
    name: str = "model",
    progress: bool = True,
    leaf_modules: tuple[type | str, ...] = (),
    qat: QATConfig | None = None,
    train_data: Any = None,
    val_data: Any = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Artifact:
    """Quantize ``model`` with calibration data ``calib`` and lower it to an integer program.

    ``calib`` is a tensor of samples or any iterable of batches (tensors, or tuples whose first
    element is the input, e.g. a DataLoader). ``pipeline`` defaults to
    :func:`qcompile.default_pipeline`. ``target`` is ``"cortex-m"``/``"generic"`` (no memory budget), a
    :class:`qcompile.Target` with flash/RAM budgets, or a part preset name such as ``"stm32f446re"``;
    a model over budget raises :class:`qcompile.MemoryBudgetError`.

    ``model`` is the :class:`~qcompile.qat.PreparedModel` :func:`qcompile.qat.train` returns (its
    frozen graph is lowered as trained, no pass runs again, ``config``/``pipeline`` are ignored),
    an ``nn.Module`` (traced by torch.fx), an already-traced ``GraphModule`` (its
    module calls are kept as traced) or the path of an ``.onnx`` file (``example_inputs`` then
    defaults to the ONNX input shape with batch 1; needs the ``onnx`` extra). ``leaf_modules``:
    module classes or qualified names torch.fx must not trace into (see docs/tracing.md).

    ``qat``: a :class:`~qcompile.QATConfig` trains ``model`` quantization-aware first, on
    ``train_data`` (``(inputs, labels)`` tensors or batches of them, required) with ``loss`` and
    ``val_data`` as in :func:`qcompile.qat.train`, and lowers the result: exactly
    ``compile(qcompile.qat.train(model, example_inputs, train_data, config=qat, ...), ...)``, bit
    for bit. ``calib`` then defaults to the training inputs (it only feeds the SQNR report);
    ``progress=False`` also silences the training. QAT owns the quantization settings, so
    ``config`` may only repeat what ``qat.quant_config()`` gives (fields left at their defaults
    are fine), and ``pipeline`` must stay ``None``; ``qat`` with a ``PreparedModel`` (already
    trained), without ``train_data``, or ``train_data``/``val_data``/``loss`` without ``qat``
    raise :class:`qcompile.ConfigError` naming the problem.
    """
    start = time.perf_counter()
    target = resolve_target(target)
    if not name.isidentifier():
        raise ConfigError(f"name={name!r} must be a C identifier")
    if qat is not None:
        model, example_inputs, calib = _train_for_compile(model, example_inputs, calib, config, pipeline, progress,
                                                          leaf_modules, qat, train_data, val_data, loss)
        config = None
    else:
        given = [k for k, v in (("train_data", train_data), ("val_data", val_data), ("loss", loss)) if v is not None]
        if given:
            raise ConfigError(f"compile({'=, '.join(given)}=) is only read with qat=QATConfig(...): pass qat= to train "
                              "quantization-aware, or drop it (for PTQ, calib= is the data)")
    config = config or QuantConfig()
    prepared = model if isinstance(model, PreparedModel) else None
    if prepared is not None:  # qcompile.qat.train(...): lower its trained, frozen graph as is (no pass re-runs)
        config, gm, pipeline = prepared.config, prepared.graph, Pipeline([])
        example_inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    else:
        model, example_inputs, leaf_modules = resolve_model(model, example_inputs, leaf_modules)
        gm = check_supported(trace(model, tuple(example_inputs), leaf_modules=leaf_modules))
    several = prepared is None and len(example_inputs) > 1  # packed into one flat input by trace()
    batches = calibration_batches(calib, tuple(example_inputs) if several else example_inputs[0],
                                  max_samples=config.max_calib_samples, batch_size=config.calib_batch_size)
    if several:
        example_inputs = (pack(example_inputs),)
    ctx = PassContext(config=config, example_inputs=tuple(example_inputs), calib=batches, progress=progress,
                      records=dict(prepared.records) if prepared is not None else {})
    pipeline = pipeline if pipeline is not None else default_pipeline()
    build = build_info(model, tuple(example_inputs), batches, config, target, name, pipeline)
    gm = pipeline.run(gm, ctx)
    program = schedule_for_memory(lower(gm, name))
    plan = plan_memory(program)
    budget = check_fits(program, plan, target, name)  # raises MemoryBudgetError before anything is written

    sample = torch.cat(batches)[:_SQNR_SAMPLES]
    art = Artifact(name=name, target=target, config=config, graph=gm, program=program, plan=plan,
                   records=ctx.records, build=build, budget=budget)
    sample_q = art.quantize_input(sample)
    art.sample_input = sample_q[:1]
    int_values = interpret(program, sample_q, keep=True)
    art.sqnr = tensor_sqnr(program, int_values, capture_float(gm, sample))
    art.compile_seconds = time.perf_counter() - start
    return art


def _train_for_compile(model, example_inputs, calib, config, pipeline, progress, leaf_modules, qat, train_data,
                       val_data, loss) -> tuple[PreparedModel, Any, Any]:
    """``compile(..., qat=...)``: check the combination, run :func:`qcompile.qat.train` and return
    ``(prepared, example_inputs, calib)`` for the ``PreparedModel`` path of :func:`compile`."""
    from qcompile.qat.trainer import labelled_tensors, train

    if not isinstance(qat, QATConfig):
        raise ConfigError(f"compile(qat=...) takes a qcompile.QATConfig, got {type(qat).__name__}")
    if isinstance(model, PreparedModel):
        raise ConfigError(f"compile(qat=...) trains the model, but model is already a PreparedModel "
                          f"(trained with method={model.method!r}): drop qat= to lower it as trained, or pass the "
                          "float model")
    if train_data is None:
        raise ConfigError("compile(qat=QATConfig(...)) needs train_data=(inputs, labels) (tensors, or an iterable of "
                          "such batches, e.g. a DataLoader) to train on")
    if pipeline is not None:
        raise ConfigError("compile(qat=...) with pipeline=: QAT runs the default pipeline and lowers the trained graph "
                          "without re-running passes; drop pipeline= (or call qcompile.qat.train yourself)")
    if config is not None:
        if not isinstance(config, QuantConfig):
            raise ConfigError(f"config must be a qcompile.QuantConfig, got {type(config).__name__}")
        clash = qat.conflicts(config)
        if clash:
            detail = "; ".join(f"{k}={mine!r} (QAT uses {theirs!r})" for k, (mine, theirs) in clash.items())
            raise ConfigError(f"compile(config=..., qat=...): the QuantConfig conflicts with the QATConfig: {detail}. "
                              "QAT sets the quantization from QATConfig (bits, weight_bits, calib_samples, ...; see "
                              "QATConfig.quant_config()): drop config= or set it there")
    model, example_inputs, leaf_modules = resolve_model(model, example_inputs, leaf_modules)
    x, y = labelled_tensors(train_data)  # once, so an iterator is read once and calib can default to x
    cfg = dataclasses.replace(qat, progress=qat.progress and progress)
    prepared = train(model, example_inputs, (x, y), loss=loss, val_data=val_data, config=cfg,
                     leaf_modules=leaf_modules)
    return prepared, example_inputs, x if calib is None else calib
