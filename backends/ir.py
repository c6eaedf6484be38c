"""The integer IR: a small, typed, verifiable program that every backend consumes.

A :class:`Program` is a list of tensors (int8, asymmetric per-tensor quantization, shapes in
PyTorch's logical order *without* the batch dimension, contiguous row-major) and a list of
ops in execution order. Each op is a frozen dataclass; its fields are all a backend needs.
Conventions shared by every op:

* ``*_offset`` fields are *added* to raw int8 values: ``input_offset = -zero_point_in``;
  ``output_offset = +zero_point_out``.
* ``(multiplier, shift)`` pairs are TFLite/CMSIS-NN fixed-point multipliers
  (:func:`qcompile.fixedpoint.requantize`); per-channel ones are int32 arrays.
* ``act_min``/``act_max`` clamp the int8 output (fused ReLU/ReLU6/hardtanh become these).
* Convolutions and pools accept rank-2 ``(C, L)`` tensors (1-D) as ``H = 1``.

Weights are stored as int8 arrays holding values of ``w_bits`` bits (symmetric, so in
``[-(2**(b-1) - 1), 2**(b-1) - 1]``); biases are int32 at scale ``s_in * s_w[c]``. A layer with a
:class:`Codebook` (piecewise-linear weights) instead stores ``w_bits``-bit *codes* that index a
per-channel table of int8 levels; ``weight`` then holds the decoded levels, so every backend
computes with ``weight`` and only the storage differs. :func:`storage_bits` gives the container
each width is stored in.

A layer with ``thresholds`` (nonuniform-to-uniform activation quantization) replaces the
fixed-point requantization by comparisons: ``out = output_offset + #{k : acc >= T[c, k]}``.

Conv2D/Dense accumulate in int32 (``acc_bits = 32``) when the verifier can prove no partial sum
overflows it. A layer whose bound exceeds int32 (huge fan-in, wide input range) is lowered with
``acc_bits = 64``: the sum is taken in int64 and requantized by the same
:func:`~qcompile.fixedpoint.requantize`, whose left shift saturates to int32 before the fixed-point
multiply (defined in C and numpy alike; :mod:`qcompile.backends.overflow` reports per layer whether
that saturation can change an output). Such layers store plain int8 weights (no packing, no
codebook) and have no threshold stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Iterator, Union

import numpy as np

from qcompile.errors import IRVerificationError
from qcompile.fixedpoint import INT32_MAX, INT32_MIN

__all__ = [
    "Tensor",
    "Conv2D",
    "Dense",
    "Add",
    "Mul",
    "MaxPool",
    "AvgPool",
    "GlobalAvgPool",
    "Lut",
    "PRelu",
    "Concat",
    "Pad",
    "Reshape",
    "StridedCopy",
    "Resize",
    "MinMax",
    "Constant",
    "Softmax",
    "Op",
    "Program",
    "Codebook",
    "storage_bits",
    "weight_storage_bytes",
    "accumulator_range",
    "accumulator_bound",
    "ACC_BITS",
    "verify",
]

STORAGE_BITS = {2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8}
ACC_BITS = (32, 64)  # Conv2D/Dense accumulator widths


def storage_bits(w_bits: int) -> int:
    """Bits per weight in flash: 2- and 4-bit values are packed (four / two per byte, low bits
    first, the CMSIS-NN s4 order), 3-bit values take a 4-bit slot, 5..7-bit values a byte."""
    return STORAGE_BITS[int(w_bits)]


@dataclass(frozen=True, eq=False)
class Codebook:
    """Per-output-channel table of int8 weight levels indexed by ``bits``-bit codes.

    ``levels[c, codes[c, ...]]`` are the layer's int8 weights. Produced by piecewise-linear
    quantization (:mod:`qcompile.passes.quantize_weights_piecewise`): a dense center grid and a
    sparse tail grid per channel, both realized exactly on the channel's int8 grid.
    """

    codes: np.ndarray   # uint8, the weight's shape, values < 2**bits
    levels: np.ndarray  # int8 (Co, 2**bits)
    bits: int

    def decode(self) -> np.ndarray:
        co = self.levels.shape[0]
        flat = self.codes.reshape(co, -1).astype(np.intp)
        return np.take_along_axis(self.levels, flat, axis=1).reshape(self.codes.shape).astype(np.int8)

    def shared_tables(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The level tables as stored: ``(rows, row_of_channel)``.

        Channels often share a table (PWLQ levels depend only on the breakpoint ratio chosen
        from a grid, uniform-fallback and N2UQ channels all use one table), so the distinct
        rows are stored once with a ``uint8`` row index per output channel. When sharing saves
        nothing (every channel distinct, or more than 256 distinct rows) the rows are the
        per-channel tables and the index is ``None``.
        """
        rows, inverse = np.unique(self.levels, axis=0, return_inverse=True)
        co = self.levels.shape[0]
        if len(rows) > 256 or len(rows) * rows.shape[1] + co >= self.levels.size:
            return self.levels, None
        return rows.astype(np.int8), inverse.reshape(-1).astype(np.uint8)

    @property
    def table_bytes(self) -> int:
        """Flash bytes of the level tables as stored (rows plus the per-channel row index)."""
        rows, index = self.shared_tables()
        return rows.size + (index.size if index is not None else 0)


@dataclass(frozen=True)
class Tensor:
    """An int8 activation tensor. ``real = scale * (q - zero_point)``."""

    id: int
    name: str
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def _spatial(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(C, H, W)`` of a rank-2 ``(C, L)`` or rank-3 ``(C, H, W)`` tensor."""
    if len(shape) == 2:
        return shape[0], 1, shape[1]
    if len(shape) == 3:
        return shape
    raise IRVerificationError(f"expected a (C, L) or (C, H, W) tensor, got shape {shape}")


# ---------------------------------------------------------------------------- ops
# eq=False: ops hold numpy arrays, so identity is the only meaningful equality.


@dataclass(frozen=True, eq=False)
class Conv2D:
    """Grouped 2-D (or 1-D) convolution, int32 accumulation, per-channel requantization.

    ``acc[co] = bias[co] + sum w[co, ci, ky, kx] * (x[g*Cig + ci, y*sh - pt + ky*dh, ...] + input_offset)``
    with out-of-range input positions contributing zero (padding with the input zero point).
    ``weight`` has shape ``(Co, Ci/groups, kh, kw)``; ``padding`` is ``(top, left, bottom, right)``.
    """

    name: str
    input: int
    output: int
    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int
    input_offset: int
    output_offset: int
    multiplier: np.ndarray
    shift: np.ndarray
    act_min: int
    act_max: int
    w_bits: int = 8
    codebook: Codebook | None = None
    thresholds: np.ndarray | None = None
    acc_bits: int = 32  # 64: the int64 accumulation path (see ACC_BITS)

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input,)

    @property
    def depthwise(self) -> bool:
        """One input and one output channel per group, ``groups > 1`` (read off the weight shape;
        :func:`verify` ties it to the input and output channel counts)."""
        return self.groups > 1 and self.weight.shape[1] == 1 and self.weight.shape[0] == self.groups


@dataclass(frozen=True, eq=False)
class Dense:
    """Fully connected: ``acc[o] = bias[o] + sum_i w[o, i] * (x[i] + input_offset)``; weight ``(Fo, Fi)``.

    The input tensor may have any shape; it is read as its ``Fi`` contiguous elements.
    """

    name: str
    input: int
    output: int
    weight: np.ndarray
    bias: np.ndarray
    input_offset: int
    output_offset: int
    multiplier: np.ndarray
    shift: np.ndarray
    act_min: int
    act_max: int
    w_bits: int = 8
    codebook: Codebook | None = None
    thresholds: np.ndarray | None = None
    acc_bits: int = 32  # 64: the int64 accumulation path (see ACC_BITS)

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input,)


@dataclass(frozen=True, eq=False)
class Add:
    """Element-wise add (TFLite int8 ADD). Subtraction uses a negative ``input2_multiplier``.

    ``a = requantize((x1 + input1_offset) << left_shift, m1, s1)``, likewise ``b``;
    ``out = clamp(requantize(a + b, output_multiplier, output_shift) + output_offset)``.
    Both inputs have the output's shape.
    """

    name: str
    input1: int
    input2: int
    output: int
    input1_offset: int
    input2_offset: int
    input1_multiplier: int
    input1_shift: int
    input2_multiplier: int
    input2_shift: int
    output_multiplier: int
    output_shift: int
    output_offset: int
    left_shift: int
    act_min: int
    act_max: int

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input1, self.input2)


@dataclass(frozen=True, eq=False)
class Mul:
    """Element-wise multiply (TFLite int8 MUL) with per-channel broadcasting.

    ``out = clamp(requantize((x1 + o1) * (x2 + o2), m, s) + output_offset)``. ``input2`` has
    the output's shape, or is broadcast along trailing dims: its shape is ``(C, 1, ..., 1)``
    or ``(C,)`` with the same ``C`` as the output's first dim (squeeze-excite); ``input1`` has
    the output's shape.
    """

    name: str
    input1: int
    input2: int
    output: int
    input1_offset: int
    input2_offset: int
    output_offset: int
    multiplier: int
    shift: int
    act_min: int
    act_max: int

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input1, self.input2)


@dataclass(frozen=True, eq=False)
class MaxPool:
    """Max pooling on raw int8 values (input and output share quantization).

    Padding positions are ignored (as -inf); ``padding`` is ``(top, left, bottom, right)``.
    """

    name: str
    input: int
    output: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    act_min: int = -128
    act_max: int = 127

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input,)


@dataclass(frozen=True, eq=False)
class AvgPool:
    """Average pooling, with a fixed divisor or one per window.

    ``acc = sum over the valid window positions of (x + input_offset)``;
    ``out = clamp(requantize(acc, multiplier, shift) + output_offset)``, where
    ``multiplier * 2**(shift-31) ~= s_in / (s_out * divisor)``. Fixed divisor (``count_padding`` is
    ``None``): ``multiplier``/``shift`` hold it (``kh * kw``, PyTorch's ``count_include_pad=True``
    without ceil mode, or ``divisor_override``). Per window (``ceil_mode``, ``count_include_pad=False``):
    the divisor ``d`` is the number of window positions inside the input extended by
    ``count_padding`` (top, left, bottom, right) -- PyTorch's rule, with the torch padding or with
    zeros -- and the pair is ``(div_multiplier[d], div_shift[d])``, tables of ``kh * kw + 1`` entries.
    """

    name: str
    input: int
    output: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    input_offset: int
    output_offset: int
    multiplier: int
    shift: int
    act_min: int = -128
    act_max: int = 127
    count_padding: tuple[int, int, int, int] | None = None
    div_multiplier: np.ndarray | None = None
    div_shift: np.ndarray | None = None

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input,)


@dataclass(frozen=True, eq=False)
class GlobalAvgPool:
    """Mean over every element of each channel: input ``(C, ...)`` -> output of ``C`` elements.

    ``out[c] = clamp(requantize(sum(x[c] + input_offset), multiplier, shift) + output_offset)``.
    """

    name: str
    input: int
    output: int
    input_offset: int
    output_offset: int
    multiplier: int
    shift: int

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input,)


@dataclass(frozen=True, eq=False)
class Lut:
    """Element-wise function through a 256-entry table: ``out = table[x + 128]`` (int8)."""

    name: str
    input: int
    output: int
    table: np.ndarray

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input,)


@dataclass(frozen=True, eq=False)
class PRelu:
    """Per-channel PReLU on a ``(C, ...)`` tensor.

    ``v = x + input_offset``; ``out = clamp(requantize(v, pos_multiplier, pos_shift) + output_offset)``
    for ``v >= 0`` and with ``neg_multiplier[c], neg_shift[c]`` (sign of the slope included) otherwise.
    """

    name: str
    input: int
    output: int
    input_offset: int
    output_offset: int
    pos_multiplier: int
    pos_shift: int
    neg_multiplier: np.ndarray
    neg_shift: np.ndarray

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input,)


@dataclass(frozen=True, eq=False)
class Concat:
    """Concatenate along dim ``axis`` (0, the channels, by default), rescaling each input to the output's
    quantization.

    For input ``k``: ``out_block = clamp(requantize(x + input_offsets[k], multipliers[k], shifts[k]) + output_offset)``.
    """

    name: str
    inputs_: tuple[int, ...]
    output: int
    input_offsets: tuple[int, ...]
    multipliers: tuple[int, ...]
    shifts: tuple[int, ...]
    output_offset: int
    axis: int = 0

    @property
    def inputs(self) -> tuple[int, ...]:
        return self.inputs_


@dataclass(frozen=True, eq=False)
class Pad:
    """Constant padding of the two last dims (``(C, H, W)``, or ``(C, L)`` with ``H = 1``) with ``value``.

    ``padding`` is ``(top, left, bottom, right)``; input and output share quantization and
    ``value`` is the zero point (real 0.0). ``interior = (ih, iw)`` also puts ``ih``/``iw`` values
    between neighbouring rows/columns (the zero insertion of a transposed convolution).
    """

    name: str
    input: int
    output: int
    padding: tuple[int, int, int, int]
    value: int
    interior: tuple[int, int] = (0, 0)

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input,)


@dataclass(frozen=True, eq=False)
class Reshape:
    """Same elements, new shape (flatten/view/reshape/permutes that only re-view)."""

    name: str
    input: int
    output: int

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input,)


MAX_COPY_DIMS = 6


@dataclass(frozen=True, eq=False)
class StridedCopy:
    """Data movement: ``out[i] = x[start + sum_d steps[d] * i_d]`` on logical (PyTorch-order) indices.

    ``start`` has one entry per input dim, ``steps`` one row per output dim and one column per input
    dim. Every view of PyTorch is such a map: permute/transpose (``steps`` a permutation matrix),
    slicing and split items (``start`` the first element, steps the slice steps), nearest upsampling
    and broadcasting (a zero step over a new dim). Raw int8 values are copied: input and output
    share quantization. At most :data:`MAX_COPY_DIMS` dims on either side.
    """

    name: str
    input: int
    output: int
    start: tuple[int, ...]
    steps: tuple[tuple[int, ...], ...]

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input,)


@dataclass(frozen=True, eq=False)
class Resize:
    """Bilinear (or, on ``(C, L)``, linear) interpolation in exact integer arithmetic.

    ``rows[y] = (i0, i1, a0, a1)``: output row ``y`` blends input rows ``i0`` and ``i1`` with integer
    weights ``a0, a1`` of sum ``Dy`` (the same for every row); ``cols[x]`` likewise with sum ``Dx``.
    ``acc = sum_{r, c} a_r * b_c * (x[i_r, j_c] + input_offset)`` (exact, int32);
    ``out = clamp(requantize(acc, multiplier, shift) + output_offset)`` with
    ``multiplier * 2**(shift-31) ~= s_in / (s_out * Dy * Dx)``. The weights are PyTorch's source
    coordinates written as fractions (``align_corners=False``: ``src = ((2y + 1) * H - Ho) / (2 Ho)``,
    clamped at 0, so ``Dy = 2 Ho``; ``align_corners=True``: ``src = y (H - 1) / (Ho - 1)``,
    ``Dy = Ho - 1``), so the only rounding is the one requantization (round half away from zero
    of the fixed-point product, :func:`qcompile.fixedpoint.requantize`).
    """

    name: str
    input: int
    output: int
    rows: np.ndarray   # int32 (Ho, 4)
    cols: np.ndarray   # int32 (Wo, 4)
    input_offset: int
    output_offset: int
    multiplier: int
    shift: int

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input,)


@dataclass(frozen=True, eq=False)
class MinMax:
    """Element-wise maximum (``is_max``) or minimum of two same-shape tensors, each first rescaled to
    the output's quantization like a Concat block:
    ``y_k = clamp(requantize(x_k + input_offsets[k], multipliers[k], shifts[k]) + output_offset)``,
    ``out = max(y_1, y_2)`` (or min). Requantization is monotone, so this is the max of the inputs
    on the output grid."""

    name: str
    input1: int
    input2: int
    output: int
    is_max: bool
    input_offsets: tuple[int, int]
    multipliers: tuple[int, int]
    shifts: tuple[int, int]
    output_offset: int

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input1, self.input2)


@dataclass(frozen=True, eq=False)
class Constant:
    """A constant tensor (a parameter or buffer the model reads in forward()): ``out = values``."""

    name: str
    output: int
    values: np.ndarray  # int8, the output's shape

    @property
    def inputs(self) -> tuple[int, ...]:
        return ()


@dataclass(frozen=True, eq=False)
class Softmax:
    """Softmax over the last dim, integer only.

    For each row: ``m = max(x)``; ``e_i = exp_table[m - x_i]`` (uint32, ``exp_table[d] =
    round(2**exp_bits * exp(-d * s_in))``); ``sum = sum_i e_i`` (64-bit);
    ``out_i = clamp(((e_i << 8) + sum // 2) // sum + output_offset)``. The output scale is
    1/256 and its zero point -128 (TFLite's convention), so ``output_offset == -128``.
    """

    name: str
    input: int
    output: int
    exp_table: np.ndarray
    output_offset: int = -128

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.input,)


Op = Union[Conv2D, Dense, Add, Mul, MaxPool, AvgPool, GlobalAvgPool, Lut, PRelu, Concat, Pad, Reshape, StridedCopy,
           Resize, MinMax, Constant, Softmax]


@dataclass
class Program:
    """A lowered model: tensors, ops in execution order, graph inputs/outputs.

    ``source`` maps tensor id to the name of the torch.fx node it came from (for reports).
    """

    name: str
    tensors: list[Tensor]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int]
    source: dict[int, str] = field(default_factory=dict)
    output_structure: tuple | None = None  # None: one tensor; ("tuple"|"list", n) or ("dict", keys): forward()'s return

    def tensor(self, tid: int) -> Tensor:
        return self.tensors[tid]

    def producers(self) -> dict[int, Op]:
        return {op.output: op for op in self.ops}

    def consumers(self, tid: int) -> Iterator[Op]:
        return (op for op in self.ops if tid in op.inputs)

    @property
    def input(self) -> Tensor:
        return self.tensors[self.inputs[0]]

    @property
    def output(self) -> Tensor:
        return self.tensors[self.outputs[0]]

    @property
    def input_size(self) -> int:
        """int8 elements of the one input buffer: every input, in argument order, back to back."""
        return sum(self.tensors[t].size for t in self.inputs)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample of the input buffer: the input's shape, or ``(input_size,)`` for several."""
        return self.input.shape if len(self.inputs) == 1 else (self.input_size,)

    def input_offsets(self) -> list[int]:
        """Element offset of each input in the input buffer."""
        return self._buffer_offsets(self.inputs)

    def _buffer_offsets(self, tids: list[int]) -> list[int]:
        """Element offsets of tensors ``tids`` laid out back to back in one buffer."""
        sizes = [self.tensors[t].size for t in tids]
        return [sum(sizes[:k]) for k in range(len(sizes))]

    @property
    def output_size(self) -> int:
        """int8 elements of the one output buffer: every output, in return order, back to back."""
        return sum(self.tensors[t].size for t in self.outputs)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one sample of the output buffer: the output's shape, or ``(output_size,)`` for several."""
        return self.output.shape if len(self.outputs) == 1 else (self.output_size,)

    def output_offsets(self) -> list[int]:
        """Element offset of each output in the output buffer."""
        return self._buffer_offsets(self.outputs)


# ---------------------------------------------------------------------------- verifier


def _check(cond: bool, op, msg: str) -> None:
    if not cond:
        raise IRVerificationError(f"{type(op).__name__} '{getattr(op, 'name', '?')}': {msg}")


def _check_int8(op, *values: int) -> None:
    for v in values:
        _check(-128 <= int(v) <= 127, op, f"value {v} outside int8")


def _check_geometry(op, **pairs) -> None:
    """Strides, kernels, dilations >= 1; paddings >= 0."""
    for name, values in pairs.items():
        low = 0 if name == "padding" else 1
        _check(all(int(v) >= low for v in values), op, f"{name} {tuple(values)} must be >= {low}")


def _max_abs_input(input_offset: int) -> int:
    """Largest ``|x + input_offset|`` over int8 ``x``."""
    return max(abs(-128 + input_offset), abs(127 + input_offset))


def accumulator_bound(weight: np.ndarray, bias: np.ndarray, input_offset: int) -> np.ndarray:
    """Per output channel, ``sum|w| * max|x + offset| + |bias|``: no partial sum, in any order,
    exceeds it in magnitude (exact integers; int64 is safe below 2**62, checked)."""
    w = np.abs(weight.astype(np.int64)).reshape(weight.shape[0], -1)
    if w.shape[1] * 128 * 256 >= 1 << 62:
        raise IRVerificationError(f"fan-in {w.shape[1]} too large to bound in int64")
    return w.sum(axis=1) * _max_abs_input(input_offset) + np.abs(bias.astype(np.int64))


def accumulator_range(weight: np.ndarray, bias: np.ndarray, input_offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel, the exact range ``[lo, hi]`` of the full accumulator ``sum w (x + offset)
    + bias`` over all int8 inputs ``x`` (padding contributes 0, inside the range since
    ``-128 + offset <= 0 <= 127 + offset``): ``lo = sum_{w>0} w (-128 + off) + sum_{w<0} w (127 + off)
    + bias``, ``hi`` symmetrically; each bound is attained by some input."""
    w = weight.astype(np.int64).reshape(weight.shape[0], -1)
    if w.shape[1] * 128 * 256 >= 1 << 62:
        raise IRVerificationError(f"fan-in {w.shape[1]} too large to bound in int64")
    x_lo, x_hi = -128 + int(input_offset), 127 + int(input_offset)
    pos, neg = np.clip(w, 0, None).sum(axis=1), np.clip(w, None, 0).sum(axis=1)
    b = bias.astype(np.int64)
    return pos * x_lo + neg * x_hi + b, pos * x_hi + neg * x_lo + b


def _check_accumulator_bound(op, weight: np.ndarray, bias: np.ndarray, input_offset: int) -> None:
    """Prove no partial sum can overflow the op's accumulator. int32: ``sum|w| * max|x + offset|
    + |bias| <= INT32_MAX``. int64 (:data:`ACC_BITS`): the requantization's ``acc * 2**max(shift, 0)``
    stays below ``2**62`` (so the int64 product in C and numpy is exact)."""
    bound = accumulator_bound(weight, bias, input_offset)
    if op.acc_bits == 64:
        left = np.maximum(np.asarray(op.shift, dtype=np.int64), 0)
        _check(op.thresholds is None, op, "the int64 accumulation path has no threshold output stage")
        _check(bool(np.all(bound < (np.int64(1) << (62 - left)))), op,
               f"int64 accumulator bound {int(bound.max()):,} shifted left by the requantization exceeds 2**62")
        return
    _check(bool(np.all(bound <= INT32_MAX)), op,
           f"int32 accumulator may overflow (bound {int(bound.max()):,} > {INT32_MAX:,}, fan-in "
           f"{int(np.prod(weight.shape[1:]))}); reduce the layer's fan-in (e.g. pool or narrow its input) "
           "or its weight range")


def _check_requant(op, multiplier, shift) -> None:
    m = np.asarray(multiplier, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    _check(m.shape == s.shape, op, "multiplier/shift shapes differ")
    _check(bool(np.all((m >= -INT32_MAX) & (m <= INT32_MAX))), op, "multiplier outside int32")
    nonzero = m != 0
    _check(bool(np.all(np.abs(m[nonzero]) >= (1 << 30))), op, "multiplier not normalized to [2^30, 2^31)")
    _check(bool(np.all((s >= -31) & (s <= 30))), op, "shift outside [-31, 30]")


def _check_weights(op, weight: np.ndarray, bias: np.ndarray, n_out: int, w_bits: int) -> None:
    _check(weight.dtype == np.int8, op, f"weight dtype {weight.dtype}, expected int8")
    _check(bias.dtype == np.int32, op, f"bias dtype {bias.dtype}, expected int32")
    _check(bias.shape == (n_out,), op, f"bias shape {bias.shape}, expected ({n_out},)")
    _check(2 <= w_bits <= 8, op, f"w_bits {w_bits} outside 2..8")
    qmax = (1 << (w_bits - 1)) - 1
    _check(bool(np.all(np.abs(weight.astype(np.int32)) <= qmax)), op, f"weights exceed {w_bits}-bit range")
    _check(bool(np.all((bias.astype(np.int64) >= INT32_MIN) & (bias.astype(np.int64) <= INT32_MAX))), op, "bias")


def _check_weighted(op, n_out: int) -> None:
    """Weights (or their codebook), bias, accumulator bound and the output stage of a conv/dense."""
    _check(op.acc_bits in ACC_BITS, op, f"acc_bits {op.acc_bits}, expected one of {ACC_BITS}")
    _check(op.acc_bits == 32 or op.codebook is None, op, "the int64 accumulation path stores plain int8 weights")
    cb = op.codebook
    if cb is None:
        _check_weights(op, op.weight, op.bias, n_out, op.w_bits)
    else:
        _check(cb.bits == op.w_bits, op, f"codebook has {cb.bits}-bit codes, layer says {op.w_bits}")
        _check(cb.codes.shape == op.weight.shape and cb.codes.dtype == np.uint8, op, "codes: uint8, weight's shape")
        _check(cb.levels.dtype == np.int8 and cb.levels.shape == (n_out, 1 << cb.bits), op,
               f"levels must be int8 ({n_out}, {1 << cb.bits})")
        _check(int(cb.codes.max(initial=0)) < (1 << cb.bits), op, "code outside the codebook")
        _check(bool(np.array_equal(cb.decode(), op.weight)), op, "weight differs from the decoded codebook")
        _check_weights(op, op.weight, op.bias, n_out, 8)
    _check_accumulator_bound(op, op.weight, op.bias, op.input_offset)
    _check_requant(op, op.multiplier, op.shift)
    _check(op.multiplier.shape == (n_out,), op, "per-channel multiplier shape")
    _check_int8(op, -op.input_offset, op.output_offset, op.act_min, op.act_max)
    _check(op.act_min <= op.act_max, op, "act_min > act_max")
    t = op.thresholds
    if t is not None:
        _check(t.dtype == np.int32 and t.ndim == 2 and t.shape[0] == n_out and t.shape[1] >= 1, op,
               f"thresholds must be int32 ({n_out}, L), L >= 1")
        _check(bool(np.all(np.diff(t.astype(np.int64), axis=1) >= 0)), op, "thresholds must not decrease")
        _check(op.output_offset + t.shape[1] <= 127, op, "output levels exceed int8")


def weight_storage_bytes(op: Op) -> int:
    """Flash bytes of a conv/dense layer's weights as stored: packed codes or values, plus the
    codebook's level tables as stored (:meth:`Codebook.table_bytes`; 0 for ops without weights)."""
    if not isinstance(op, (Conv2D, Dense)):
        return 0
    bits = 8 if op.acc_bits == 64 else storage_bits(op.w_bits)  # the int64 path reads int8 bytes
    per_row = -(-int(np.prod(op.weight.shape[1:])) * bits // 8)
    table = op.codebook.table_bytes if op.codebook is not None else 0
    return op.weight.shape[0] * per_row + table


def _verify_op(p: Program, op: Op) -> None:  # noqa: C901 - one readable case per op kind
    t = p.tensors
    out = t[op.output]
    if isinstance(op, Conv2D):
        c, h, w = _spatial(t[op.input].shape)
        co, ho, wo = _spatial(out.shape)
        _check(len(t[op.input].shape) == len(out.shape), op, "input/output rank differ")
        kco, kci, kh, kw = op.weight.shape
        _check_geometry(op, stride=op.stride, dilation=op.dilation, groups=(op.groups,), padding=op.padding,
                        kernel=(kh, kw))
        _check(kco == co, op, f"weight has {kco} output channels, output has {co}")
        _check(op.groups >= 1 and c % op.groups == 0 and co % op.groups == 0, op, "channels not divisible by groups")
        _check(kci == c // op.groups, op, f"weight expects {kci * op.groups} input channels, input has {c}")
        pt, pl, pb, pr = op.padding
        eh = (h + pt + pb - op.dilation[0] * (kh - 1) - 1) // op.stride[0] + 1
        ew = (w + pl + pr - op.dilation[1] * (kw - 1) - 1) // op.stride[1] + 1
        _check((ho, wo) == (eh, ew), op, f"output spatial {(ho, wo)}, expected {(eh, ew)}")
        _check_weighted(op, co)
    elif isinstance(op, Dense):
        fi = t[op.input].size
        _check(op.weight.shape == (out.size, fi), op, f"weight {op.weight.shape}, expected {(out.size, fi)}")
        _check_weighted(op, out.size)
    elif isinstance(op, Add):
        _check(t[op.input1].shape == out.shape == t[op.input2].shape, op, "shapes must match")
        for m, s in ((op.input1_multiplier, op.input1_shift), (op.input2_multiplier, op.input2_shift),
                     (op.output_multiplier, op.output_shift)):
            _check_requant(op, m, s)
        _check(0 <= op.left_shift <= 23, op, "left_shift must keep 255 << left_shift inside int32")
        _check_int8(op, -op.input1_offset, -op.input2_offset, op.output_offset, op.act_min, op.act_max)
    elif isinstance(op, Mul):
        s1, s2 = t[op.input1].shape, t[op.input2].shape
        _check(s1 == out.shape, op, "input1 must have the output shape")
        per_channel = len(s2) >= 1 and s2[0] == out.shape[0] and int(np.prod(s2)) == s2[0]
        _check(s2 == out.shape or per_channel, op, f"input2 shape {s2} does not broadcast to {out.shape}")
        _check_requant(op, op.multiplier, op.shift)
        _check_int8(op, -op.input1_offset, -op.input2_offset, op.output_offset, op.act_min, op.act_max)
    elif isinstance(op, (MaxPool, AvgPool)):
        c, h, w = _spatial(t[op.input].shape)
        co, ho, wo = _spatial(out.shape)
        _check(c == co, op, "pooling changes channel count")
        _check_geometry(op, kernel=op.kernel, stride=op.stride, padding=op.padding)
        _check_int8(op, op.act_min, op.act_max)
        _check(op.act_min <= op.act_max, op, "act_min > act_max")
        pt, pl, pb, pr = op.padding
        eh = (h + pt + pb - op.kernel[0]) // op.stride[0] + 1
        ew = (w + pl + pr - op.kernel[1]) // op.stride[1] + 1
        _check((ho, wo) == (eh, ew), op, f"output spatial {(ho, wo)}, expected {(eh, ew)}")
        if isinstance(op, AvgPool):
            _check_requant(op, op.multiplier, op.shift)
            if op.count_padding is not None:
                taps = op.kernel[0] * op.kernel[1] + 1
                _check(op.div_multiplier is not None and op.div_multiplier.shape == (taps,) and
                       op.div_multiplier.dtype == np.int32, op, f"div_multiplier must be int32 ({taps},)")
                _check_requant(op, op.div_multiplier, op.div_shift)
                _check_geometry(op, padding=op.count_padding)
            _check_int8(op, -op.input_offset, op.output_offset)
        else:
            _check(t[op.input].scale == out.scale and t[op.input].zero_point == out.zero_point, op,
                   "max pool must keep quantization")
    elif isinstance(op, GlobalAvgPool):
        _check(out.size == t[op.input].shape[0], op, "output must have one element per channel")
        _check_requant(op, op.multiplier, op.shift)
        _check_int8(op, -op.input_offset, op.output_offset)
    elif isinstance(op, Lut):
        _check(op.table.dtype == np.int8 and op.table.shape == (256,), op, "table must be int8[256]")
        _check(t[op.input].shape == out.shape, op, "shape changes")
    elif isinstance(op, PRelu):
        _check(t[op.input].shape == out.shape, op, "shape changes")
        _check(op.neg_multiplier.shape == (out.shape[0],), op, "one negative slope per channel")
        _check_requant(op, op.pos_multiplier, op.pos_shift)
        _check_requant(op, op.neg_multiplier, op.neg_shift)
        _check_int8(op, -op.input_offset, op.output_offset)
    elif isinstance(op, Concat):
        shapes = [t[i].shape for i in op.inputs]
        a = op.axis
        _check(0 <= a < len(out.shape) and all(len(s) == len(out.shape) for s in shapes), op, f"axis {a} / ranks")
        _check(all(s[:a] + s[a + 1:] == out.shape[:a] + out.shape[a + 1:] for s in shapes), op,
               f"dims other than the concatenation axis {a} differ")
        _check(sum(s[a] for s in shapes) == out.shape[a], op, f"sizes along axis {a} do not add up")
        _check(len(out.shape) <= MAX_COPY_DIMS, op, f"rank above {MAX_COPY_DIMS}")
        _check(len(op.input_offsets) == len(op.multipliers) == len(op.shifts) == len(shapes), op, "arity")
        for m, sh in zip(op.multipliers, op.shifts):
            _check_requant(op, m, sh)
        _check_int8(op, op.output_offset, *(-o for o in op.input_offsets))
    elif isinstance(op, Pad):
        c, h, w = _spatial(t[op.input].shape)
        co, ho, wo = _spatial(out.shape)
        pt, pl, pb, pr = op.padding
        _check_geometry(op, padding=op.padding)
        ih, iw = op.interior
        _check(ih >= 0 and iw >= 0, op, "interior padding must be >= 0")
        _check((co, ho, wo) == (c, h + (h - 1) * ih + pt + pb, w + (w - 1) * iw + pl + pr), op, "padded shape")
        _check_int8(op, op.value)
    elif isinstance(op, Reshape):
        _check(t[op.input].size == out.size, op, "reshape changes the element count")
    elif isinstance(op, StridedCopy):
        si, so = t[op.input].shape, out.shape
        _check(len(si) <= MAX_COPY_DIMS and len(so) <= MAX_COPY_DIMS, op, f"rank above {MAX_COPY_DIMS}")
        _check(len(op.start) == len(si) and len(op.steps) == len(so) and all(len(r) == len(si) for r in op.steps),
               op, "start/steps do not match the input and output ranks")
        _check(t[op.input].scale == out.scale and t[op.input].zero_point == out.zero_point, op,
               "a copy must keep quantization")
        for k, n in enumerate(si):  # affine: the extremes are at the corners of the output box
            lo = op.start[k] + sum(min(0, r[k] * (d - 1)) for r, d in zip(op.steps, so))
            hi = op.start[k] + sum(max(0, r[k] * (d - 1)) for r, d in zip(op.steps, so))
            _check(out.size == 0 or (0 <= lo and hi < n), op, f"reads outside input dim {k} ({lo}..{hi} of {n})")
    elif isinstance(op, MinMax):
        _check(t[op.input1].shape == out.shape == t[op.input2].shape, op, "shapes must match")
        for m, sh in zip(op.multipliers, op.shifts):
            _check_requant(op, m, sh)
        _check_int8(op, op.output_offset, *(-o for o in op.input_offsets))
    elif isinstance(op, Constant):
        _check(op.values.dtype == np.int8 and op.values.shape == out.shape, op, f"values must be int8 {out.shape}")
    elif isinstance(op, Resize):
        c, h, w = _spatial(t[op.input].shape)
        co, ho, wo = _spatial(out.shape)
        _check(c == co and len(t[op.input].shape) == len(out.shape), op, "resize changes channels or rank")
        for name, tab, n_in, n_out in (("rows", op.rows, h, ho), ("cols", op.cols, w, wo)):
            _check(tab.dtype == np.int32 and tab.shape == (n_out, 4), op, f"{name} must be int32 ({n_out}, 4)")
            _check(bool(np.all((tab[:, :2] >= 0) & (tab[:, :2] < n_in))), op, f"{name} index outside the input")
            _check(bool(np.all(tab[:, 2:] >= 0)) and len(set((tab[:, 2] + tab[:, 3]).tolist())) == 1, op,
                   f"{name} weights must be >= 0 with one sum")
        d = int(op.rows[0, 2] + op.rows[0, 3]) * int(op.cols[0, 2] + op.cols[0, 3])
        _check(d * _max_abs_input(op.input_offset) <= INT32_MAX, op, "int32 accumulator may overflow")
        _check_requant(op, op.multiplier, op.shift)
        _check_int8(op, -op.input_offset, op.output_offset)
    elif isinstance(op, Softmax):
        _check(t[op.input].shape[-1] == out.shape[-1] and t[op.input].size == out.size, op, "shape")
        _check(op.exp_table.dtype == np.uint32 and op.exp_table.shape == (256,), op, "exp table")
        _check(int(op.exp_table[0]) > 0, op, "exp_table[0] must be positive (it bounds every row sum below)")
        _check(bool(np.all(np.diff(op.exp_table.astype(np.int64)) <= 0)), op, "exp table must not increase")
        _check(op.output_offset == out.zero_point, op, "output offset must equal the output zero point")
    else:
        raise IRVerificationError(f"unknown op type {type(op).__name__}")


def verify(p: Program) -> Program:
    """Check dtypes, shapes, def-before-use, single definition and fixed-point ranges.

    Returns the program so it can be chained; raises :class:`IRVerificationError`.
    """
    defined = set(p.inputs)
    for tid, tensor in enumerate(p.tensors):
        if tensor.id != tid:
            raise IRVerificationError(f"tensor '{tensor.name}' has id {tensor.id} at position {tid}")
        if not 0 < tensor.scale < float("inf"):
            raise IRVerificationError(f"tensor '{tensor.name}' has scale {tensor.scale}")
        if not -128 <= tensor.zero_point <= 127:
            raise IRVerificationError(f"tensor '{tensor.name}' zero point {tensor.zero_point} outside int8")
    names = set()
    for op in p.ops:
        _check(op.name not in names, op, "duplicate op name")
        names.add(op.name)
        for tid in op.inputs:
            _check(0 <= tid < len(p.tensors), op, f"input tensor {tid} does not exist")
            _check(tid in defined, op, f"reads tensor '{p.tensors[tid].name}' before it is defined")
        _check(op.output not in defined, op, f"redefines tensor '{p.tensors[op.output].name}'")
        _check(op.output not in op.inputs, op, "writes its own input")
        _verify_op(p, op)
        defined.add(op.output)
    for tid in p.outputs:
        if tid not in defined:
            raise IRVerificationError(f"graph output '{p.tensors[tid].name}' is never computed")
    if len(set(p.outputs)) != len(p.outputs):
        raise IRVerificationError("a tensor is returned twice; the output buffer holds each output once")
    return p


def op_fields(op: Op) -> dict:
    """The op's fields as a dict (for reports and debugging dumps)."""
    return {f.name: getattr(op, f.name) for f in fields(op)}
