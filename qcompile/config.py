"""User-facing quantization settings."""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass

from qcompile.errors import ConfigError

__all__ = ["QuantConfig", "OBSERVERS", "TARGETS", "BIAS_CORRECTIONS", "CLE_RELU6", "WEIGHT_OBSERVERS",
           "WEIGHT_QUANTIZERS", "ACTIVATION_QUANTIZERS", "ROUNDINGS", "BIT_ALLOCATIONS", "per_layer_value"]

OBSERVERS = ("minmax", "moving_average", "percentile", "mse", "kl", "best")
WEIGHT_OBSERVERS = ("auto", "minmax", "mse", "output_mse", "per_layer")
BIAS_CORRECTIONS = ("auto", "empirical", "analytic", "none")
CLE_RELU6 = ("skip", "replace", "auto")
WEIGHT_QUANTIZERS = ("uniform", "pwlq")
ACTIVATION_QUANTIZERS = ("uniform", "lsq", "n2uq")  # uniform: PTQ observers; lsq/n2uq: QAT
N2UQ_THRESHOLDS = ("per_tensor", "per_channel")
TARGETS = ("cortex-m", "generic")
ROUNDINGS = ("nearest", "adaround", "attention_round")
BIT_ALLOCATIONS = ("lossy_coding_length", "uniform", "sqnr_greedy", "dual_variables")


def per_layer_value(setting, layer: str, default):
    """Resolve a per-layer setting for the conv/linear at module path ``layer``: a plain value
    applies everywhere; a mapping is looked up by exact name first, then by the first glob
    pattern (``fnmatch``, e.g. ``"blocks.*"``, ``"*"``) in the mapping's order that matches;
    layers no rule names get ``default``."""
    if not isinstance(setting, Mapping):
        return setting
    if layer in setting:
        return setting[layer]
    return next((v for pattern, v in setting.items() if fnmatch.fnmatchcase(layer, pattern)), default)


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize.

    * ``weight_bits``: bits of the symmetric weights, 2..8: one integer for every layer, or a
      mapping from conv/linear module paths or glob patterns to bits, e.g.
      ``{"features.0": 8, "features.*": 4, "classifier": 8}`` (exact names first, then the first
      matching pattern; unnamed layers keep 8, see :meth:`bits_for`). Flash stores 2- and 4-bit
      weights packed, 3-bit ones in 4-bit slots, 5..7-bit ones in bytes
      (:func:`qcompile.backends.ir.storage_bits`).
    * ``per_channel``: one weight scale per output channel (default) or, when ``False``, one
      scale for the whole tensor (per-tensor, as older integer runtimes require).
    * ``weight_observer``: ``"minmax"`` (scale from ``max|w|``), ``"mse"`` (per-channel clipping
      minimizing the weight quantization MSE), ``"output_mse"`` (per-channel clipping minimizing
      the layer's output MSE on calibration data), ``"per_layer"`` (per layer, whichever of
      min/max, ``mse`` and ``output_mse`` gives the lowest network-output MSE on held-out
      calibration samples, see :mod:`qcompile.passes.quantize_weights`) or ``"auto"``:
      ``"per_layer"`` below 8 bits, else min/max.
    * ``weight_quantizer``: ``"uniform"`` (symmetric uniform levels) or ``"pwlq"``
      (piecewise-linear: a dense center and a sparse tail grid per channel, Fang et al. 2020;
      3..8 bits, stored as codes plus a per-channel level table, see :mod:`qcompile.piecewise`).
    * ``pwlq_layers``: with ``weight_quantizer="pwlq"``, ``"auto"`` keeps PWLQ levels on a layer
      only where they beat its uniform quantization at the network output on held-out
      calibration samples (the others stay uniform, with no level table in flash); ``"all"``
      uses PWLQ on every layer, the paper's setting.
    * ``activation_bits``: 2..8 (asymmetric per tensor, int8 tensors; below 8 bits a tensor uses
      ``2**bits`` int8 values and needs QAT, ``activation_quantizer`` ``"lsq"`` or ``"n2uq"``).
    * ``activation_quantizer``: ``"uniform"`` (PTQ: ranges from the observers, no training),
      ``"lsq"`` (QAT with learned step sizes for weights and activations, Esser et al. 2020) or
      ``"n2uq"`` (QAT with N2UQ, Liu et al. 2022: learnable nonuniform thresholds, uniform
      output levels, the paper's weight quantizer; one ``weight_bits`` of 2..7, or per layer,
      where a layer at 8 bits gets LSQ weights). See
      :mod:`qcompile.passes.train_quantization_aware`.
    * ``qat_epochs``, ``qat_lr``, ``qat_batch_size``, ``qat_seed``: the QAT run (Adam, cosine
      decay, label-free distillation from the float model on the ``calib`` data).
      ``qat_quantizer_lr_factor``: the quantizer parameters (steps, N2UQ thresholds) train at
      ``qat_lr`` times this factor (10: best of 1 / 3 / 10 on held-out samples for 768-step
      runs; an 18-epoch run did better with 3, see ``benchmarks/lowbit.py``).
      ``qat_keep_ends_8bit``: the first and last conv/linear keep 8-bit weights during QAT.
    * ``n2uq_thresholds``: ``"per_tensor"`` (the paper: one set of learned thresholds per
      activation tensor) or ``"per_channel"`` (one set per output channel, same uniform output
      levels; free in the integer program, whose threshold tables are per channel anyway).
    * ``activation_observer``: how activation ranges are chosen from calibration data:
      ``"minmax"``, ``"moving_average"`` (EMA of per-batch min/max, ``averaging_constant``),
      ``"percentile"`` (``percentile`` of |values| on each side), ``"mse"`` (the clipping
      range minimizing the quantization MSE of the observed values), ``"kl"`` (TensorRT's
      entropy calibration: the clipping minimizing the KL divergence of the histograms) or
      ``"best"`` (per tensor, whichever of min/max, percentile, MSE and KL gives the lowest
      quantization MSE on the calibration data).
    * ``equalize``: cross-layer equalization (Nagel et al. 2019 sec. 4.1) of conv/linear pairs.
    * ``equalize_relu6``: what CLE does with pairs joined by a ReLU6, whose clamp does not
      commute with per-channel scaling: ``"skip"`` them (exact), ``"replace"`` ReLU6 by ReLU
      as the paper does (changes the float function where the clamp was active) or ``"auto"``:
      replace only where the calibration data never reaches the clamp (``relu6_tolerance``
      fraction of values above 6 at most), skip the rest.
    * ``absorb_bias``: high-bias absorption (Nagel et al. 2019 sec. 4.1.1) after CLE.
    * ``bias_correction``: ``"auto"`` (empirical when calibration data is there, which it
      always is in ``compile``), ``"empirical"``, ``"analytic"`` (from folded BN statistics,
      Nagel et al. 2019 sec. 4.2) or ``"none"``.
    * ``split_outliers``: outlier channel splitting (Zhao et al. 2019) expansion ratio, the
      fraction of extra channels per layer (``0`` switches it off).
    * ``max_calib_samples``: cap on calibration samples read from ``calib``.

    Why the defaults (``python benchmarks/ptq.py``, top-1 on the full test splits, calibration
    on 512 training samples; results in ``benchmarks/results/ptq.json``; the W4 figures are
    per-channel W4A8, "bc" = empirical bias correction):

    * ``weight_observer="auto"`` (``per_layer`` below 8 bits): W4 fashion_plain 88.03 vs 86.13
      (min/max + bc) and 87.68 (the former default, per-channel ``output_mse``); mnist1d_plain
      97.1 vs 96.7; mnist1d_dscnn 98.3 vs 98.3; it loses on mnist1d_resnet (98.6 vs 99.1) and
      mnist1d_mobilenet (96.4 vs 96.9) although it lowers the logit MSE there too (0.96 vs
      1.10, 1.19 vs 1.91 on the test split): 5 of 1000 test samples. Min/max at 8 bits, where
      clipping buys nothing (W8 drop <= 0.2 points everywhere without it).
    * ``bias_correction="auto"`` (empirical): W4 alone on top of naive: fashion_plain 86.13
      vs 84.18, mnist1d_resnet 99.1 vs 98.7; never worse by more than one test sample.
    * ``equalize=True``: with the other defaults, W4 with vs without CLE: fashion_plain 88.03
      vs 87.19, mnist1d_plain 97.1 vs 96.8, mnist1d_resnet 98.6 vs 98.4, mnist1d_mobilenet
      96.4 vs 96.4, mnist1d_dscnn 98.3 vs 98.5.
    * ``activation_observer="mse"``: with the other defaults, W4 vs ``minmax``: fashion_plain
      88.03 vs 87.86, mnist1d_resnet 98.6 vs 98.5, mnist1d_plain 97.1 vs 97.3,
      mnist1d_mobilenet 96.4 vs 96.5, mnist1d_dscnn 98.3 vs 98.4 (a wash on MNIST-1D, a gain on
      the 10k-sample Fashion-MNIST test split).
    * ``split_outliers=0``: OCS alone lost W4 accuracy on every model measured (fashion_plain
      81.6 vs 84.2 naive).
    * ``calib_batch_size``: batch size used when ``calib`` is a single tensor.
    * ``rounding``: how weights are rounded onto the grid ``quantize_weights`` chose (same
      scales, same clipping): ``"nearest"`` (default), ``"adaround"`` (AdaRound, Nagel et al.
      2020) or ``"attention_round"`` (Diao et al. 2022), both by layer-wise output reconstruction
      on ``rounding_samples`` calibration samples for ``rounding_iters`` Adam steps with seed
      ``rounding_seed``; one string, or per layer like ``weight_bits`` (unnamed layers:
      ``"nearest"``). See :mod:`qcompile.passes.optimize_weight_rounding`.
    * ``rounding_blocks``: Attention Round reconstructs each depthwise conv *jointly* with the
      layer its output feeds (block-wise, the seed's "layer-wise and block-wise"), so the
      pointwise conv's levels can absorb what the depthwise conv's few weights per channel
      cannot; ``False``: every layer alone. AdaRound stays layer-wise (the paper's method).
    * ``weight_bits="auto"`` with ``flash_budget`` (bytes of conv/linear weights as stored, the
      sum of :func:`qcompile.backends.ir.weight_storage_bytes`): per-layer widths from
      ``bits_candidates`` chosen by ``bit_allocation``: ``"lossy_coding_length"`` (Ma et al.
      2007 coding length of each layer's weights, the seed paper's measure), ``"uniform"`` (the
      largest single width that fits) or ``"sqnr_greedy"`` (greedy on the measured network
      output error of each layer alone) or ``"dual_variables"`` (greedy on
      ``lambda_l * 4**-bits`` from ``dual_variables``, one finite ``lambda_l >= 0`` per conv/linear
      by module path, e.g. ``prepared.dual_variables`` of a ``method="constrained"``
      :func:`qcompile.qat.train` run, see :meth:`qcompile.qat.PreparedModel.allocation_config`:
      the layers with the largest duals keep the wider widths). The allocation pass checks that
      the names are exactly the model's conv/linear layers. See :mod:`qcompile.bit_allocation`.
    """

    weight_bits: int | str | Mapping[str, int] = 8
    activation_bits: int = 8
    activation_observer: str = "mse"
    per_channel: bool = True
    weight_observer: str = "auto"
    weight_quantizer: str = "uniform"
    pwlq_layers: str = "auto"
    equalize: bool = True
    equalize_relu6: str = "auto"
    relu6_tolerance: float = 1e-4
    absorb_bias: bool = True
    bias_correction: str = "auto"
    split_outliers: float = 0.0
    percentile: float = 99.99
    averaging_constant: float = 0.01
    max_calib_samples: int = 1024
    calib_batch_size: int = 64
    activation_quantizer: str = "uniform"
    qat_epochs: int = 3
    qat_lr: float = 1e-4
    qat_quantizer_lr_factor: float = 10.0
    qat_batch_size: int = 64
    qat_seed: int = 0
    qat_keep_ends_8bit: bool = True
    n2uq_thresholds: str = "per_tensor"
    rounding: str | Mapping[str, str] = "nearest"
    rounding_iters: int = 1000
    rounding_samples: int = 1024
    rounding_seed: int = 0
    rounding_blocks: bool = True
    flash_budget: int | None = None
    bits_candidates: tuple[int, ...] = (2, 3, 4, 6, 8)
    bit_allocation: str = "lossy_coding_length"
    dual_variables: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        self._check_weight_bits()
        self._check_rounding()
        if not isinstance(self.activation_bits, int) or not 2 <= self.activation_bits <= 8:
            raise ConfigError(f"QuantConfig.activation_bits={self.activation_bits}: choose an integer in 2..8")
        self._check_qat()
        if self.activation_observer not in OBSERVERS:
            raise ConfigError(
                f"QuantConfig.activation_observer={self.activation_observer!r}: choose one of {', '.join(OBSERVERS)}"
            )
        if self.weight_observer not in WEIGHT_OBSERVERS:
            raise ConfigError(f"QuantConfig.weight_observer={self.weight_observer!r}: "
                              f"choose one of {', '.join(WEIGHT_OBSERVERS)}")
        if self.weight_quantizer not in WEIGHT_QUANTIZERS:
            raise ConfigError(f"QuantConfig.weight_quantizer={self.weight_quantizer!r}: "
                              f"choose one of {', '.join(WEIGHT_QUANTIZERS)}")
        if self.pwlq_layers not in ("auto", "all"):
            raise ConfigError(f"QuantConfig.pwlq_layers={self.pwlq_layers!r}: choose 'auto' or 'all'")
        if self.bias_correction not in BIAS_CORRECTIONS:
            raise ConfigError(f"QuantConfig.bias_correction={self.bias_correction!r}: "
                              f"choose one of {', '.join(BIAS_CORRECTIONS)}")
        if self.equalize_relu6 not in CLE_RELU6:
            raise ConfigError(f"QuantConfig.equalize_relu6={self.equalize_relu6!r}: choose one of {', '.join(CLE_RELU6)}")
        if not 0.0 <= self.split_outliers <= 1.0:
            raise ConfigError(f"QuantConfig.split_outliers={self.split_outliers}: an expansion ratio in [0, 1]")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"QuantConfig.percentile={self.percentile}: must be in (50, 100]")
        if not 0.0 < self.averaging_constant <= 1.0:
            raise ConfigError(f"QuantConfig.averaging_constant={self.averaging_constant}: must be in (0, 1]")
        if self.max_calib_samples < 1 or self.calib_batch_size < 1:
            raise ConfigError("QuantConfig.max_calib_samples and calib_batch_size must be positive")

    def _check_weight_bits(self) -> None:
        if self.dual_variables is not None and (self.weight_bits != "auto" or self.bit_allocation != "dual_variables"):
            raise ConfigError(f"QuantConfig.dual_variables is read only by weight_bits='auto' with "
                              f"bit_allocation='dual_variables' (got weight_bits={self.weight_bits!r}, "
                              f"bit_allocation={self.bit_allocation!r})")
        if self.weight_bits == "auto":
            self._check_allocation()
            return
        if self.flash_budget is not None:
            raise ConfigError(f"QuantConfig.flash_budget={self.flash_budget} needs weight_bits='auto' "
                              f"(got weight_bits={self.weight_bits!r})")
        rules = self.weight_bits.items() if isinstance(self.weight_bits, Mapping) else [("*", self.weight_bits)]
        for pattern, bits in rules:
            if not isinstance(pattern, str) or isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
                raise ConfigError(f"QuantConfig.weight_bits: {pattern!r}: {bits!r}: map layer names or glob "
                                  "patterns to integers in 2..8 (or give one integer)")

    def _check_allocation(self) -> None:
        from qcompile.bit_allocation import FlashBudgetError

        if self.flash_budget is None or isinstance(self.flash_budget, bool) or not isinstance(self.flash_budget, int) \
                or self.flash_budget <= 0:
            raise FlashBudgetError(f"QuantConfig(weight_bits='auto') needs flash_budget=<bytes>, a positive integer "
                                   f"(got {self.flash_budget!r})")
        cands = self.bits_candidates
        if not cands or any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8 for b in cands):
            raise ConfigError(f"QuantConfig.bits_candidates={cands!r}: a non-empty tuple of integers in 2..8")
        if self.bit_allocation not in BIT_ALLOCATIONS:
            raise ConfigError(f"QuantConfig.bit_allocation={self.bit_allocation!r}: "
                              f"choose one of {', '.join(BIT_ALLOCATIONS)}")
        if self.weight_quantizer == "pwlq" and not any(b >= 3 for b in cands):
            raise ConfigError("QuantConfig(weight_quantizer='pwlq') needs a bits_candidates entry >= 3")
        if self.bit_allocation == "dual_variables":
            self._check_dual_variables()

    def _check_dual_variables(self) -> None:
        """``dual_variables``: a non-empty mapping from layer names to finite reals >= 0, stored as
        a plain ``{str: float}`` dict. Whether the names are the model's conv/linear layers is
        checked by :func:`qcompile.passes.allocate_weight_bits`, which sees the graph."""
        duals = self.dual_variables
        if not isinstance(duals, Mapping) or not duals:
            raise ConfigError("QuantConfig(bit_allocation='dual_variables') needs dual_variables={layer: lambda, ...} "
                              "with one dual per conv/linear (e.g. prepared.dual_variables from "
                              f"qcompile.qat.train(method='constrained')); got dual_variables={duals!r}")
        bad_names = [k for k in duals if not isinstance(k, str)]
        if bad_names:
            raise ConfigError(f"QuantConfig.dual_variables: keys {bad_names!r} must be conv/linear module paths (str)")
        from qcompile.bit_allocation import checked_dual_values

        object.__setattr__(self, "dual_variables", checked_dual_values(duals, "QuantConfig.dual_variables"))

    def _check_rounding(self) -> None:
        rules = self.rounding.items() if isinstance(self.rounding, Mapping) else [("*", self.rounding)]
        for pattern, how in rules:
            if not isinstance(pattern, str) or how not in ROUNDINGS:
                raise ConfigError(f"QuantConfig.rounding: {pattern!r}: {how!r}: choose one of {', '.join(ROUNDINGS)} "
                                  "(one string, or a mapping from layer names or glob patterns)")
        if self.rounding_iters < 1 or self.rounding_samples < 1:
            raise ConfigError("QuantConfig.rounding_iters and rounding_samples must be positive")
        if not isinstance(self.rounding_blocks, bool):
            raise ConfigError(f"QuantConfig.rounding_blocks must be True or False, not {self.rounding_blocks!r}")
        optimized = any(how != "nearest" for _, how in rules)
        if optimized and self.weight_quantizer != "uniform":
            raise ConfigError(
                f"QuantConfig(rounding={self.rounding!r}) optimizes the rounding of uniform weights; "
                f"weight_quantizer={self.weight_quantizer!r} has its own codebook levels: use rounding='nearest' "
                "with it, or weight_quantizer='uniform'")
        if optimized and self.activation_quantizer != "uniform":
            raise ConfigError(f"QuantConfig(rounding={self.rounding!r}) is post-training; "
                              f"activation_quantizer={self.activation_quantizer!r} trains the weights itself")

    def bits_for(self, layer: str) -> int:
        """Weight bits of the conv/linear at module path ``layer``: an integer ``weight_bits``
        applies everywhere; a mapping is resolved by :func:`per_layer_value` (exact name, then the
        first matching glob pattern); layers no rule names keep 8 bits. ``weight_bits="auto"``
        is resolved into a mapping by :func:`qcompile.passes.allocate_weight_bits` first."""
        if self.weight_bits == "auto":
            raise ConfigError("QuantConfig(weight_bits='auto') is resolved by the allocate_weight_bits pass, "
                              "which must run before the weights are quantized")
        return per_layer_value(self.weight_bits, layer, 8)

    def rounding_for(self, layer: str) -> str:
        """Rounding method of the conv/linear at ``layer`` (resolved like :meth:`bits_for`;
        unnamed layers round to nearest)."""
        return per_layer_value(self.rounding, layer, "nearest")

    @property
    def uniform_weight_bits(self) -> int | None:
        """The single weight width when ``weight_bits`` is an integer, else ``None``."""
        return None if isinstance(self.weight_bits, (Mapping, str)) else self.weight_bits

    def _check_qat(self) -> None:
        if self.activation_quantizer not in ACTIVATION_QUANTIZERS:
            raise ConfigError(f"QuantConfig.activation_quantizer={self.activation_quantizer!r}: "
                              f"choose one of {', '.join(ACTIVATION_QUANTIZERS)}")
        if self.n2uq_thresholds not in N2UQ_THRESHOLDS:
            raise ConfigError(f"QuantConfig.n2uq_thresholds={self.n2uq_thresholds!r}: choose one of "
                              f"{', '.join(N2UQ_THRESHOLDS)}")
        if self.n2uq_thresholds != "per_tensor" and self.activation_quantizer != "n2uq":
            raise ConfigError(f"QuantConfig.n2uq_thresholds={self.n2uq_thresholds!r} needs activation_quantizer='n2uq' "
                              f"(got {self.activation_quantizer!r})")
        if self.activation_quantizer == "uniform":
            if self.activation_bits != 8:
                raise ConfigError(f"QuantConfig.activation_bits={self.activation_bits} needs QAT: "
                                  "set activation_quantizer='lsq' or 'n2uq' (PTQ activations are 8-bit)")
            return
        if self.weight_quantizer != "uniform":
            raise ConfigError(f"QuantConfig.weight_quantizer={self.weight_quantizer!r} is post-training only; "
                              f"activation_quantizer={self.activation_quantizer!r} learns its own weights")
        if self.activation_quantizer == "n2uq" and self.uniform_weight_bits is not None and self.weight_bits > 7:
            raise ConfigError(f"QuantConfig.weight_bits={self.weight_bits} with activation_quantizer='n2uq': "
                              "its 2**b weight levels fit int8 for 2..7 bits")
        if (self.qat_epochs < 1 or self.qat_batch_size < 1 or not self.qat_lr > 0
                or not self.qat_quantizer_lr_factor > 0):
            raise ConfigError("QuantConfig.qat_epochs, qat_batch_size, qat_lr and qat_quantizer_lr_factor "
                              "must be positive")
