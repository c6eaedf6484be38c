"""``qcompile.qat.train``: quantization-aware training on labelled data, as an optional,
data-driven stage before lowering.

What it does, in order:

1. traces the model and runs the default pipeline *without* :func:`train_quantization_aware`
   (BN folding, CLE, 8-bit calibration of the tensors QAT keeps at 8 bits, weight quantization at
   each layer's width) on the first ``calib_samples`` training inputs;
2. swaps in trainable LSQ quantizers
   (:func:`qcompile.passes.train_quantization_aware.prepare_quantizers`; ``ddq`` then replaces the
   weight quantizers by its own);
3. trains with the chosen method (:mod:`qcompile.qat.lsq_method`, :mod:`~qcompile.qat.constrained`,
   :mod:`~qcompile.qat.ddq`, :mod:`~qcompile.qat.block_replace`): Adam, cosine decay, seeded
   data order; tqdm shows loss and accuracy; a checkpoint is written after every epoch and
   resumed from when present;
4. freezes every quantizer (:func:`~qcompile.passes.train_quantization_aware.freeze_quantizers`)
   and returns a :class:`~qcompile.qat.prepared.PreparedModel`, which
   :func:`qcompile.compile` lowers without running any pass again.

Scale-out: under ``torchrun`` (``torch.distributed`` initialized, e.g. gloo on CPU) the training
objective is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`; every rank prepares
the same graph from the same data, takes the ``rank``-th share of each (seeded, identical)
global batch of ``batch_size`` samples, DDP averages the gradients, and method state that is not
a parameter (the dual variables) is updated from all-reduced statistics, so every rank ends with
identical parameters. Only rank 0 writes the checkpoint.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.fx import GraphModule
from tqdm.auto import tqdm

from qcompile.data import calibration_batches
from qcompile.errors import CalibrationError, ConfigError
from qcompile.frontend import check_supported, trace
from qcompile.nn import QuantizedWeights
from qcompile.pass_manager import PassContext
from qcompile.passes.record_float_outputs import QAT_TEACHER_RECORD
from qcompile.passes.train_quantization_aware import (
    freeze_quantizers,
    prepare_quantizers,
    quantization_aware_optimizer,
    train_quantization_aware,
)
from qcompile.pipeline import default_pipeline
from qcompile.qat.lsq import LsqActQuant, LsqWeights
from qcompile.qat.prepared import PreparedModel, QATConfig
from qcompile.quantization import quantizer_node

__all__ = ["train", "prepare_graph", "labelled_tensors", "weight_layers"]


def labelled_tensors(data: Any, what: str = "train_data") -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` from a ``(inputs, labels)`` pair of tensors or an iterable of such batches
    (a DataLoader)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    else:
        xs, ys = [], []
        try:
            for batch in data:
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise CalibrationError(f"{what}: each batch must be (inputs, labels), got {type(batch).__name__}")
                xs.append(batch[0])
                ys.append(batch[1])
        except TypeError as exc:
            raise CalibrationError(f"{what}: give (inputs, labels) tensors or an iterable of such batches") from exc
        if not xs:
            raise CalibrationError(f"{what} is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    if len(x) != len(y) or len(x) == 0:
        raise CalibrationError(f"{what}: {len(x)} inputs but {len(y)} labels")
    return x.float(), y


def weight_layers(gm: GraphModule) -> list[str]:
    """Module paths of the quantized conv/linear layers in graph order."""
    out: list[str] = []
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), QuantizedWeights) and n.target not in out:
            out.append(n.target)
    return out


def prepare_graph(model: nn.Module, example_inputs, x: torch.Tensor, cfg: QATConfig,
                  leaf_modules: tuple = ()) -> tuple[GraphModule, dict]:
    """The graph :func:`train` starts from, and its pass records: ``model`` traced, the default
    passes run (BN folded, activations fused), LSQ quantizers placed and their steps initialized on
    ``x[:cfg.calib_samples]``; weights as given, untrained. E.g. per-layer sensitivity of the
    pretrained model (:func:`qcompile.qat.layer_sensitivity`) before any training."""
    qcfg = cfg.quant_config()
    gm = check_supported(trace(model, tuple(example_inputs), leaf_modules=leaf_modules))
    batches = calibration_batches(x[:cfg.calib_samples], example_inputs[0], max_samples=cfg.calib_samples,
                                  batch_size=qcfg.calib_batch_size)
    ctx = PassContext(config=qcfg, example_inputs=tuple(example_inputs), calib=batches, progress=False)
    gm = default_pipeline().remove(train_quantization_aware).run(gm, ctx)
    ctx.records.pop(QAT_TEACHER_RECORD, None)
    kinds, weights = prepare_quantizers(gm, ctx.config, torch.cat(batches))
    _attach_bias_grids(gm)
    ctx.records["qat_quantizers"] = {"activations": kinds, "weights": weights}
    return gm, ctx.records


def _attach_bias_grids(gm: GraphModule) -> None:
    """Give every LSQ layer its input quantizer's step, so it trains with the bias rounded onto the
    grid the lowering uses (:meth:`LsqWeights.fake_bias`) and the final snap changes nothing."""
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), LsqWeights):
            continue
        aq = gm.get_submodule(quantizer_node(node.args[0]).target)
        if isinstance(aq, LsqActQuant):
            gm.get_submodule(node.target).input_scale = aq.step
        else:
            fixed = torch.tensor(float(aq.qparams[0]))
            gm.get_submodule(node.target).input_scale = lambda fixed=fixed: fixed


class _Objective(nn.Module):
    """The training objective as a module (what DDP wraps): ``forward(x, y) -> (loss, logits, stats)``."""

    def __init__(self, gm: GraphModule, method):
        super().__init__()
        self.gm = gm
        self.method = method

    def forward(self, x, y):
        return self.method.loss(x, y)


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _accuracy(gm: GraphModule, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        logits = torch.cat([gm(b) for b in x.split(512)])
    return 100.0 * float((logits.argmax(1) == y).float().mean())


def _save(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(model: nn.Module, example_inputs, train_data, method: str | None = None, bits: int | None = None,
          epochs: int | None = None, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
          val_data: Any = None, config: QATConfig | None = None, leaf_modules: tuple[type | str, ...] = (),
          **options: Any) -> PreparedModel:
    """Train ``model`` quantization-aware on ``train_data`` and return the frozen, prepared model.

    ``method``/``bits``/``epochs`` and any other :class:`QATConfig` field given as a keyword
    override ``config``. ``loss(logits, labels)`` is the task loss (default cross-entropy);
    ``val_data`` (``(x, y)`` or batches) is evaluated after every epoch (fake-quant graph) and
    shown in the progress bar and ``history``. ``leaf_modules``: as in :func:`qcompile.compile`.
    ``qcompile.compile(result, example_inputs, calib)`` lowers the result exactly as trained;
    ``qcompile.compile(model, example_inputs, qat=config, train_data=train_data)`` does both steps.
    Single-input models only."""
    from qcompile.qat.methods import make_method

    over = {k: v for k, v in (("method", method), ("bits", bits), ("epochs", epochs)) if v is not None}
    over.update(options)
    try:
        cfg = dataclasses.replace(config or QATConfig(), **over)
    except TypeError as exc:
        raise ConfigError(f"qcompile.qat.train: {exc}; see qcompile.qat.QATConfig for the options") from exc
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if example_inputs is None or len(example_inputs) != 1:
        n_in = "no" if example_inputs is None else len(example_inputs)
        raise ConfigError(f"qcompile.qat.train: {n_in} example inputs; QAT supports single-input models "
                          "(give example_inputs=(x,) with one tensor)")
    x, y = labelled_tensors(train_data)
    val = labelled_tensors(val_data, "val_data") if val_data is not None else None
    if loss is None and (y.dim() != 1 or y.is_floating_point()):
        raise CalibrationError(f"train_data labels have shape {tuple(y.shape)} and dtype {y.dtype}: the default "
                               "cross-entropy needs integer class indices of shape (N,); pass loss= for other targets")
    task_loss = loss or F.cross_entropy
    rank, world = _distributed()
    if cfg.batch_size % world:
        raise ConfigError(f"QATConfig.batch_size={cfg.batch_size} must be a multiple of the {world} processes")

    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        float_model = copy.deepcopy(model).eval()
        gm, records = prepare_graph(float_model, example_inputs, x, cfg, tuple(leaf_modules or ()))
        n = len(x)
        bs = min(cfg.batch_size, n - n % world or n)
        steps_per_epoch = n // bs if n >= bs else 1
        total = steps_per_epoch * cfg.epochs
        meth = make_method(cfg, gm, x[:cfg.calib_samples], task_loss, total)
        objective = _Objective(gm, meth)
        base, quant = meth.parameter_groups()
        opt, sched = quantization_aware_optimizer(base, quant, cfg.lr, cfg.quantizer_lr_factor, total)
        gen = torch.Generator().manual_seed(cfg.seed)
        history: list[dict[str, float]] = []
        start_epoch = 0
        ckpt = Path(cfg.checkpoint) if cfg.checkpoint is not None else None
        if ckpt is not None and ckpt.exists():
            state = torch.load(ckpt, weights_only=False)
            if state.get("config") != dataclasses.asdict(cfg) | {"checkpoint": None, "progress": None}:
                raise ConfigError(f"checkpoint {ckpt} was written by a different QATConfig: delete it or "
                                  "train with the same settings")
            meth.load_state_dict(state["method"])  # may restructure quantizers (ddq widths) first
            gm.load_state_dict(state["graph"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            history, start_epoch = state["history"], state["epoch"]
        runner = objective
        if world > 1:
            runner = nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True)
        bar = tqdm(total=total, initial=start_epoch * steps_per_epoch, unit="step", leave=False,
                   desc=f"qat {cfg.method} W{cfg.bits}A{cfg.bits}", disable=not cfg.progress or rank != 0)
        with torch.enable_grad():
            for epoch in range(start_epoch, cfg.epochs):
                perm = torch.randperm(n, generator=gen)
                run_loss, run_correct, seen = 0.0, 0, 0
                for i in range(steps_per_epoch):
                    idx = perm[i * bs:(i + 1) * bs][rank::world]
                    xb, yb = x[idx], y[idx]
                    step_loss, logits, stats = runner(xb, yb)
                    if not torch.isfinite(step_loss):
                        raise FloatingPointError(f"QAT ({cfg.method}) loss became {step_loss.item()} at epoch {epoch}")
                    opt.zero_grad(set_to_none=True)
                    step_loss.backward()
                    opt.step()
                    sched.step()
                    if world > 1 and stats:
                        for v in stats.values():
                            dist.all_reduce(v)
                            v /= world
                    meth.after_step(epoch * steps_per_epoch + i, stats)
                    run_loss += float(step_loss.detach()) * len(idx)
                    run_correct += int((logits.argmax(1) == yb).sum())
                    seen += len(idx)
                    bar.update(1)
                    bar.set_postfix(loss=f"{run_loss / seen:.4f}", acc=f"{100.0 * run_correct / seen:.1f}")
                entry = {"epoch": epoch + 1, "loss": round(run_loss / seen, 5),
                         "train_acc": round(100.0 * run_correct / seen, 2)}
                if val is not None:
                    entry["val_acc"] = round(_accuracy(gm, *val), 2)
                    bar.set_postfix(loss=f"{entry['loss']:.4f}", acc=f"{entry['train_acc']:.1f}",
                                    val=f"{entry['val_acc']:.1f}")
                history.append(entry)
                if ckpt is not None and rank == 0:
                    _save(ckpt, {"epoch": epoch + 1, "graph": gm.state_dict(), "optimizer": opt.state_dict(),
                                 "scheduler": sched.state_dict(), "method": meth.state_dict(),
                                 "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                                 "history": history,
                                 "config": dataclasses.asdict(cfg) | {"checkpoint": None, "progress": None}})
        bar.close()
    extras = meth.finish()
    freeze_quantizers(gm)
    for m in gm.modules():
        if isinstance(m, LsqWeights):
            m.input_scale = None
    bits = {name: int(gm.get_submodule(name).bits) for name in weight_layers(gm)}
    qcfg = cfg.quant_config(weight_bits=bits)
    records["qat_train"] = {"method": cfg.method, "bits": cfg.bits, "epochs": cfg.epochs, "steps": total,
                            "samples": n, "processes": world, "history": history, "weight_bits": bits, **extras}
    gm.eval()
    return PreparedModel(graph=gm, config=qcfg, method=cfg.method, weight_bits=bits,
                         dual_variables=extras.get("dual_variables"), history=history, records=records)
