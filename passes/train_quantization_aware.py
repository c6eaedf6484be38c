"""Quantization-aware training (QAT) with learnable quantizers, by label-free distillation from
the float model, when ``QuantConfig.activation_quantizer`` is ``"lsq"`` or ``"n2uq"``.

Quantizers (:mod:`qcompile.qat`, :mod:`qcompile.n2uq`):

* ``"lsq"``: LSQ (Esser et al. 2020, eq. 1-3, gradient scale ``g = 1/sqrt(N * Q_P)``, sec. 2.2)
  for the weights (per-channel learnable step, ``weight_bits``) and for the activations
  (learnable step, ``activation_bits``).
* ``"n2uq"``: N2UQ (Liu et al. 2022): the weight quantizer of their sec. 3.3 (``2**b`` levels
  scaled by ``gamma * mean|w|``) and, for every tensor produced by a conv/linear, learnable
  nonuniform input thresholds with uniform output levels trained with the generalized
  straight-through estimator (eq. 4 forward, eq. 6-8 backward). Tensors produced by add/sub/mul
  get LSQ at ``activation_bits``: their integer ops have no threshold stage (uniform levels only
  need a clamp).

Which weights go below ``weight_bits``: every conv/linear except, with
``QuantConfig.qat_keep_ends_8bit`` (default), the first and the last one, which keep 8-bit
(LSQ-trained) weights, as in both papers (LSQ sec. 3, N2UQ sec. 4.1 keep them at full or 8-bit
precision); the benchmark's flash bytes count them as stored. Per-layer ``weight_bits`` (a
mapping, or ``"auto"`` resolved by :func:`~qcompile.passes.allocate_weight_bits`) give each layer
its own width; under ``"n2uq"`` a layer at 8 bits gets LSQ weights, since the paper's ``2**b``
odd levels fit int8 only up to 7 bits.

Which tensors go below 8 bits: outputs of conv/linear (after their fused activation) and of
add/sub/mul. The graph input and every tensor that reaches the graph output or a softmax stay
at their calibrated 8-bit quantization (first layer input / last layer output in 8 bits, the
usual QAT convention); pools, LUT nonlinearities and concat keep 8 bits as well.

Training signal (our choice): label-free knowledge distillation. The teacher is the user's
float model: its outputs on the calibration data ``compile`` was given, recorded right after
BN folding by :func:`~qcompile.passes.record_float_outputs`; the loss is the KL divergence
``KL(softmax(teacher) || softmax(student))`` for 2-D logits, the MSE otherwise (or when the
model ends in a softmax). Labels in the loader are ignored: ``calib`` may be unlabeled, and
agreement with the float model is what the compiler promises. Adam (``qat_lr`` for weights and
biases, ``10 * qat_lr`` for the quantizer parameters, which are learned relative to their
initial values), cosine learning-rate decay, ``qat_epochs`` passes over the data in batches of
``qat_batch_size``, a seeded data order (``qat_seed``): the same inputs give the same result.

Runs last: what it learns (weights, biases, steps, thresholds) is frozen into the modules and
lowered as is (nothing after it re-calibrates). Preserves: graph structure; changes parameter
values and the quantizers' ranges.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.fx import GraphModule, Node
from tqdm.auto import tqdm

from qcompile.errors import PassError
from qcompile.n2uq import MAX_N2UQ_WEIGHT_BITS, N2UQActQuant, N2UQWeights
from qcompile.nn import ActQuant, QuantizedWeights
from qcompile.ops import SHARES_INPUT_QUANT, Kind, info
from qcompile.pass_manager import PassContext, PassResult, graph_pass
from qcompile.passes.record_float_outputs import QAT_TEACHER_RECORD
from qcompile.qat.lsq import LsqActQuant, LsqWeights, init_activation_range
from qcompile.quantization import tensor_qparams

__all__ = ["train_quantization_aware", "prepare_quantizers", "freeze_quantizers", "low_bit_producer", "QAT_QUANTIZERS",
           "quantization_aware_optimizer"]

QAT_QUANTIZERS = ("lsq", "n2uq")
INIT_SAMPLES = 256
_WEIGHTED = (Kind.CONV, Kind.LINEAR)
_UNIFORM_ONLY = (Kind.ADD, Kind.SUB, Kind.MUL)


def _producer(value: Node) -> Node:
    """The op computing ``value`` (the conv/add a fused activation belongs to)."""
    if info(value).fused_into is not None:
        return value.args[0]
    return value


def _reaches_output(node: Node) -> bool:
    """Whether ``node``'s value reaches the graph output or a softmax through shared-quantization ops."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        for u in n.users:
            kind = info(u).kind
            if kind in (Kind.OUTPUT, Kind.SOFTMAX):
                return True
            if kind in SHARES_INPUT_QUANT and u not in seen:
                seen.add(u)
                todo.append(u)
    return False


def low_bit_producer(aq_node: Node) -> Node | None:
    """The producer whose output the quantizer ``aq_node`` may take below 8 bits, else ``None``."""
    value = aq_node.args[0]
    if info(value).kind is Kind.INPUT or _reaches_output(aq_node):
        return None
    prod = _producer(value)
    return prod if info(prod).kind in _WEIGHTED + _UNIFORM_ONLY else None


def _set_module(gm: GraphModule, target: str, new: torch.nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, new)


def _collect_inputs(gm: GraphModule, targets: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = [gm.get_submodule(t).register_forward_pre_hook(
        lambda m, args, t=t: seen.setdefault(t, args[0].detach())) for t in targets]
    try:
        with torch.no_grad():
            gm(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _distillation_loss(student: torch.Tensor, teacher: torch.Tensor, logits: bool) -> torch.Tensor:
    if logits:
        return F.kl_div(F.log_softmax(student, dim=1), F.log_softmax(teacher, dim=1), log_target=True,
                        reduction="batchmean")
    return F.mse_loss(student, teacher)


def _output_is_logits(gm: GraphModule) -> bool:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    value = out.args[0]
    if not isinstance(value, Node):
        return False
    node = value
    while info(node).kind in SHARES_INPUT_QUANT | {Kind.QUANT}:
        node = node.args[0]
    return len(info(value).shape) == 2 and info(node).kind is not Kind.SOFTMAX


def _snap_biases(gm: GraphModule) -> None:
    """Put every trained float bias on the int32 grid ``s_in * s_w[c]`` the integer program uses,
    so the fake-quant graph adds exactly the bias the lowering emits. (At 2-4 bits the rounding
    of the bias is a sizeable fraction of an output step and would otherwise flip levels.)"""
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        q = gm.get_submodule(node.target)
        if isinstance(q, (LsqWeights, N2UQWeights)) and q.module.bias is not None:
            s_in, _ = tensor_qparams(node.args[0], gm)
            unit = s_in * q.weight_scale.to(torch.float64)
            b = q.module.bias.detach().to(torch.float64)
            snapped = torch.clamp(torch.round(b / unit), -(2**31), 2**31 - 1) * unit
            with torch.no_grad():
                q.module.bias.copy_(snapped.to(q.module.bias.dtype))


def prepare_quantizers(gm: GraphModule, cfg, x: torch.Tensor) -> tuple[dict[str, str], dict[str, str]]:
    """Replace the PTQ quantizers by trainable ones (activations first, initialized on the PTQ graph
    with ``x``, then weights); returns ``(activations, weights)``: module path -> quantizer kind."""
    chosen: dict[str, Node] = {}
    for node in gm.graph.nodes:
        if info(node).kind is Kind.QUANT and node.op == "call_module":
            aq = gm.get_submodule(node.target)
            if type(aq) is ActQuant and aq.fixed_qparams is None:
                prod = low_bit_producer(node)
                if prod is not None:
                    chosen[node.target] = prod
    samples = _collect_inputs(gm, list(chosen), x[:INIT_SAMPLES])
    kinds: dict[str, str] = {}
    for target, prod in chosen.items():
        if target not in samples:
            continue
        bits = cfg.activation_bits
        scale, zp = init_activation_range(samples[target], bits)
        if cfg.activation_quantizer == "n2uq" and info(prod).kind in _WEIGHTED:
            channels = samples[target].shape[1] if cfg.n2uq_thresholds == "per_channel" else None
            new = N2UQActQuant(bits, scale, zp, channels=channels)
        else:
            new = LsqActQuant(bits, scale, zp, numel=samples[target][0].numel())
        _set_module(gm, target, new)
        kinds[target] = f"{'n2uq' if isinstance(new, N2UQActQuant) else 'lsq'}{bits}"
    weights: dict[str, str] = {}
    layers = [n for n in gm.graph.nodes
              if n.op == "call_module" and type(gm.get_submodule(n.target)) is QuantizedWeights]
    ends = {layers[0], layers[-1]} if cfg.qat_keep_ends_8bit and layers else set()
    for node in layers:
        q = gm.get_submodule(node.target)
        if node in ends:  # the first and last layer keep 8-bit weights (LSQ-trained)
            if q.bits != 8:
                q = QuantizedWeights(q.module, 8, q.min_scale, q.per_channel)
            new = LsqWeights(q)
        elif cfg.activation_quantizer == "n2uq" and q.bits <= MAX_N2UQ_WEIGHT_BITS:
            new = N2UQWeights(q, q.bits)
        else:
            new = LsqWeights(q)
        _set_module(gm, node.target, new)
        weights[node.target] = f"{'n2uq' if isinstance(new, N2UQWeights) else 'lsq'}{new.bits}"
    return kinds, weights


def freeze_quantizers(gm: GraphModule) -> None:
    """Freeze every trainable quantizer (integer weights, steps, thresholds into buffers), stop
    their gradients and snap the biases onto the integer grid: from here the graph simulates
    exactly what the lowering emits."""
    for m in gm.modules():
        if isinstance(m, (LsqWeights, N2UQWeights)):
            for p in (m.module.weight, m.module.bias):
                if p is not None:
                    p.requires_grad_(False)
        if isinstance(m, (LsqWeights, N2UQWeights, LsqActQuant, N2UQActQuant)):
            m.freeze()
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
    _snap_biases(gm)


def quantization_aware_optimizer(base: list, quant: list, lr: float, quantizer_lr_factor: float,
                                 total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam over the weights and biases (``base``, at ``lr``) and the quantizer parameters
    (``quant``: steps, N2UQ thresholds, at ``lr * quantizer_lr_factor``), with a cosine decay to 0
    over ``total_steps`` (stepped once per batch)."""
    opt = torch.optim.Adam([{"params": base, "lr": lr}, {"params": quant, "lr": lr * quantizer_lr_factor}])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total_steps) / total_steps)))
    return opt, sched


@graph_pass("below 8 bits, learn weights, steps and (N2UQ) thresholds by distilling the float model")
def train_quantization_aware(gm: GraphModule, ctx: PassContext) -> PassResult:
    cfg = ctx.config
    if cfg.activation_quantizer not in QAT_QUANTIZERS:
        return PassResult(gm, False)
    x_all = torch.cat(ctx.calib)
    recorded = ctx.records.pop(QAT_TEACHER_RECORD, None)
    if recorded is None or recorded["outputs"].shape[0] != x_all.shape[0]:
        raise PassError("train_quantization_aware needs the float outputs that record_float_outputs stores: "
                        "keep that pass early in the pipeline (after fold_batchnorm)")
    teacher = recorded["outputs"]

    kinds, weights = prepare_quantizers(gm, cfg, x_all)

    # -- training ---------------------------------------------------------------------------
    base, quant = [], []
    for m in gm.modules():
        if isinstance(m, (LsqWeights, N2UQWeights)):
            for p in (m.module.weight, m.module.bias):
                if p is not None:
                    p.requires_grad_(True)
                    base.append(p)
            quant += [p for n, p in m.named_parameters(recurse=False)]
        elif isinstance(m, (LsqActQuant, N2UQActQuant)):
            quant += list(m.parameters(recurse=False))
    n = x_all.shape[0]
    bs = min(cfg.qat_batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    total = steps_per_epoch * cfg.qat_epochs
    opt, sched = quantization_aware_optimizer(base, quant, cfg.qat_lr, cfg.qat_quantizer_lr_factor, total)
    logits = _output_is_logits(gm)
    gen = torch.Generator().manual_seed(cfg.qat_seed)
    epoch_losses: list[float] = []
    with torch.random.fork_rng(), torch.enable_grad():
        torch.manual_seed(cfg.qat_seed)
        bar = tqdm(total=total, desc=f"qat {cfg.activation_quantizer} W{cfg.uniform_weight_bits or 'mixed'}A{cfg.activation_bits}",
                   unit="step", disable=not ctx.progress, leave=False)
        for _ in range(cfg.qat_epochs):
            perm = torch.randperm(n, generator=gen)
            running = 0.0
            for i in range(0, n, bs):
                idx = perm[i:i + bs]
                loss = _distillation_loss(gm(x_all[idx]), teacher[idx], logits)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"QAT loss became {loss.item()}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += loss.item() * len(idx)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
            epoch_losses.append(running / n)
        bar.close()
    freeze_quantizers(gm)
    with torch.no_grad():
        student = torch.cat([gm(b) for b in x_all.split(256)])
    record = {"quantizer": cfg.activation_quantizer, "weight_bits": cfg.weight_bits,
              "activation_bits": cfg.activation_bits, "epochs": cfg.qat_epochs, "steps": total,
              "samples": n, "lr": cfg.qat_lr, "quantizer_lr": cfg.qat_lr * cfg.qat_quantizer_lr_factor,
              "loss_per_epoch": [round(v, 5) for v in epoch_losses],
              "activations": kinds, "weights": weights}
    if logits:
        record["train_top1_agreement_with_float"] = round(
            100.0 * float((student.argmax(1) == teacher.argmax(1)).float().mean()), 2)
    ctx.records["train_quantization_aware"] = record
    return PassResult(gm, True)

