"""The settings of :func:`qcompile.qat.train` (:class:`QATConfig`) and what it returns
(:class:`PreparedModel`), the object :func:`qcompile.compile` lowers as is."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch.fx import GraphModule

from qcompile.config import QuantConfig
from qcompile.errors import ConfigError

__all__ = ["QATConfig", "PreparedModel", "METHODS"]

METHODS = ("lsq", "constrained", "ddq", "block_replace")


@dataclass(frozen=True)
class QATConfig:
    """How :func:`qcompile.qat.train` trains.

    * ``method``: ``"lsq"`` (LSQ, Esser et al. 2020, task loss only: the baseline),
      ``"constrained"`` (primal-dual QAT with per-layer output constraints, Hounie et al. 2022),
      ``"ddq"`` (learned per-layer weight precision under a flash budget, Zhang et al. 2021) or
      ``"block_replace"`` (mixed-precision block-replacement models trained with the low-precision
      backbone, Yu et al. 2024). Every method trains LSQ quantizers (learned steps) for weights and
      activations; see each method's module in :mod:`qcompile.qat`.
    * ``bits``: activation bits and the default weight bits (2..8); ``weight_bits`` overrides the
      weight bits per layer (a mapping as in :class:`~qcompile.QuantConfig`).
    * ``keep_ends_8bit``: the first and last conv/linear keep 8-bit weights (as the existing QAT
      pass does; ``ddq`` allocates every layer's width itself and ignores it).
    * ``epochs``, ``lr`` (weights; quantizer parameters get ``quantizer_lr_factor * lr``), ``batch_size``, ``seed``:
      Adam with cosine decay, seeded data order and initialization.
    * ``calib_samples``: training samples used to calibrate the 8-bit tensors and initialize the
      steps before training.
    * ``checkpoint``: a file; written after every epoch (atomically) and, when it exists at the
      start, training resumes from it.
    * ``constrained``: ``epsilon_rel`` (the bound on the layers' relative output distortion as a
      fraction of the distortion at initialization: of the mean over layers, one bound for all, with
      ``dual_bounds="shared"``, the default; of each layer's own with ``dual_bounds="per_layer"``),
      ``epsilon_out`` (bound on the cross-entropy between quantized and float outputs), ``dual_lr``.
    * ``ddq``: ``flash_budget`` (bytes of conv/linear weights as stored; default: the flash of the
      uniform ``bits``-bit model with the ends at 8 bits, what ``lsq`` produces), ``ddq_bits``
      (candidate widths), ``ddq_reg`` (weight of the size penalty), ``ddq_fix_at`` (fraction of
      the steps after which the learned widths are fixed and the rest fine-tunes).
    * ``block_replace``: ``blocks`` (number of contiguous blocks the weighted layers are split into).
    """

    method: str = "lsq"
    bits: int = 4
    weight_bits: Mapping[str, int] | None = None
    keep_ends_8bit: bool = True
    epochs: int = 3
    lr: float = 1e-3
    quantizer_lr_factor: float = 10.0
    batch_size: int = 64
    seed: int = 0
    calib_samples: int = 1024
    checkpoint: str | Path | None = None
    progress: bool = True
    epsilon_rel: float = 0.5
    epsilon_out: float = 0.1
    dual_lr: float = 0.01
    dual_bounds: str = "shared"
    flash_budget: int | None = None
    ddq_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    ddq_reg: float = 1.0
    ddq_fix_at: float = 0.6
    blocks: int = 4

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"QATConfig.method={self.method!r}: choose one of {', '.join(METHODS)}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"QATConfig.bits={self.bits!r}: an integer in 2..8")
        if (self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or not self.quantizer_lr_factor > 0
                or self.calib_samples < 1):
            raise ConfigError("QATConfig.epochs, batch_size, lr, quantizer_lr_factor and calib_samples must be positive")
        if self.method == "ddq":
            if not self.ddq_bits or any(not isinstance(b, int) or not 2 <= b <= 8 for b in self.ddq_bits):
                raise ConfigError(f"QATConfig.ddq_bits={self.ddq_bits!r}: integers in 2..8")
            if not 0.0 < self.ddq_fix_at < 1.0:
                raise ConfigError(f"QATConfig.ddq_fix_at={self.ddq_fix_at}: a fraction in (0, 1)")
            if self.weight_bits is not None:
                raise ConfigError("QATConfig(method='ddq') learns the weight bits: leave weight_bits unset")
        if self.method == "block_replace" and self.blocks < 2:
            raise ConfigError(f"QATConfig.blocks={self.blocks}: block replacement needs at least 2 blocks")
        if self.dual_bounds not in ("shared", "per_layer"):
            raise ConfigError(f"QATConfig.dual_bounds={self.dual_bounds!r}: 'shared' or 'per_layer'")
        if self.epsilon_rel <= 0 or self.epsilon_out <= 0 or self.dual_lr <= 0:
            raise ConfigError("QATConfig.epsilon_rel, epsilon_out and dual_lr must be positive")

    def quant_config(self, **overrides: Any) -> QuantConfig:
        """The :class:`~qcompile.QuantConfig` of the graph this training prepares: LSQ quantizers
        at ``bits`` (weights per ``weight_bits`` when given), ``calib_samples`` for the 8-bit ranges.
        No bias correction: training learns the biases, and the float weights the graph starts
        from stay the float model's function (block replacement's full-precision counterpart)."""
        kw = dict(weight_bits=dict(self.weight_bits) if self.weight_bits is not None else self.bits,
                  activation_bits=self.bits, activation_quantizer="lsq", qat_epochs=self.epochs, qat_lr=self.lr,
                  qat_quantizer_lr_factor=self.quantizer_lr_factor,
                  qat_batch_size=self.batch_size, qat_seed=self.seed, qat_keep_ends_8bit=self.keep_ends_8bit,
                  max_calib_samples=self.calib_samples, bias_correction="none")
        kw.update(overrides)
        return QuantConfig(**kw)

    def conflicts(self, config: QuantConfig) -> dict[str, tuple[Any, Any]]:
        """The fields ``config`` sets away from their :class:`~qcompile.QuantConfig` defaults to a
        value other than :meth:`quant_config` gives: ``{field: (config's value, QAT's value)}``.
        :func:`qcompile.compile` with ``qat=`` rejects a ``config`` with any (QAT owns its
        quantization settings; ``bits``/``weight_bits``/``calib_samples``/... set them)."""
        default, ours = QuantConfig(), self.quant_config()
        out = {}
        for f in fields(QuantConfig):
            given = getattr(config, f.name)
            if given != getattr(default, f.name) and given != getattr(ours, f.name):
                out[f.name] = (given, getattr(ours, f.name))
        return out


@dataclass
class PreparedModel:
    """A model trained by :func:`qcompile.qat.train`: the quantized graph with every quantizer
    frozen (integer weights, steps, zero points and biases on the integer grid) and the
    :class:`~qcompile.QuantConfig` describing it.

    ``qcompile.compile(prepared, example_inputs, calib)`` lowers ``graph`` directly: no pass runs
    again, so nothing learned is re-calibrated; ``calib`` only feeds the artifact's SQNR report.
    ``weight_bits`` are the per-layer widths of the program; ``dual_variables`` the constrained
    method's per-layer dual variables, averaged over the last epoch's iterates (``None`` for the
    other methods); ``history`` the per-epoch
    loss/accuracy; ``records`` what the passes and the training recorded (copied into
    ``art.records``)."""

    graph: GraphModule
    config: QuantConfig
    method: str
    weight_bits: dict[str, int]
    dual_variables: dict[str, float] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    records: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.graph(x)

    def allocation_config(self, flash_budget: int, **options: Any) -> QuantConfig:
        """The :class:`~qcompile.QuantConfig` that spends ``flash_budget`` bytes of conv/linear
        weights by these dual variables (``method="constrained"`` only): ``weight_bits="auto"``,
        ``bit_allocation="dual_variables"``, ``dual_variables=self.dual_variables``; ``options``
        are further ``QuantConfig`` fields (e.g. ``bits_candidates=(2, 4, 8)``). Compile the float
        model with it: ``qcompile.compile(model, example_inputs, calib, config=...)``; the chosen
        widths (``art.records["allocate_weight_bits"]["bits"]``) can also seed a second QAT run
        (``QATConfig(weight_bits=..., keep_ends_8bit=False)``)."""
        if self.dual_variables is None:
            raise ConfigError(f"PreparedModel.allocation_config: method {self.method!r} has no dual variables; "
                              "train with method='constrained'")
        return QuantConfig(weight_bits="auto", flash_budget=flash_budget, bit_allocation="dual_variables",
                           dual_variables=dict(self.dual_variables), **options)

    def state_dict(self) -> dict[str, Any]:
        """The graph's state (for :func:`qcompile.provenance.build_info`'s input digest)."""
        return self.graph.state_dict()
