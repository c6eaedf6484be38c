/*
 * qc_kernels.h - portable C99 integer kernels for qcompile-generated models.
 *
 * One function per integer IR op kind (backends/ir.py). Every kernel reads int8 tensors
 * laid out contiguously in PyTorch logical order without the batch dimension ((C, H, W),
 * (C, L) seen as H = 1, or (F,)), accumulates in int32 and requantizes with exactly the
 * arithmetic of qcompile.fixedpoint.requantize (TFLite / CMSIS-NN rounding). The reference
 * interpreter (backends/interpreter.py) is the specification; generated code is tested
 * against it bit for bit.
 *
 * Conventions (shared with the IR):
 *   - "*_offset" fields are added to raw int8 values: input_offset = -zero_point_in,
 *     output_offset = +zero_point_out.
 *   - (multiplier, shift) pairs: real ~= multiplier * 2^(shift - 31), |multiplier| in
 *     [2^30, 2^31) or 0, shift in [-31, 30].
 *   - Output buffers must not overlap input buffers.
 *   - Accumulators are int32: a layer must keep every partial sum in int32 range (the
 *     interpreter checks the final sums; partial sums of realistic layers are far smaller).
 *
 * Every kernel takes a constant parameter block (generated into flash next to the weights)
 * followed by its input and output pointers, so optimised variants (e.g. Arm DSP/MVE) can
 * share the signatures. No dynamic memory, no I/O, no floating point.
 */
#ifndef QC_KERNELS_H
#define QC_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ fixed-point helpers */

/** Saturate a 64-bit value to int32. */
static inline int32_t qc_saturate_int32(int64_t v)
{
    if (v > INT32_MAX) {
        return INT32_MAX;
    }
    if (v < INT32_MIN) {
        return INT32_MIN;
    }
    return (int32_t)v;
}

/** Clamp to [lo, hi] (lo <= hi). */
static inline int32_t qc_clamp(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/**
 * Rounding doubling high multiply, CMSIS-NN arm_nn_doubling_high_mult_no_sat:
 * (a * b + 2^30) >> 31. Exact and in int32 range for |b| < 2^31.
 */
static inline int32_t qc_doubling_high_mult(int32_t a, int32_t b)
{
    return (int32_t)(((int64_t)a * (int64_t)b + ((int64_t)1 << 30)) >> 31);
}

/**
 * Divide by 2^exponent (0 <= exponent <= 31) rounding to nearest, ties away from zero
 * (gemmlowp RoundingDivideByPOT / CMSIS-NN arm_nn_divide_by_power_of_two).
 * Relies on arithmetic right shift of negative values, as gcc/clang/armcc do.
 */
static inline int32_t qc_divide_by_pot(int32_t x, int32_t exponent)
{
    const int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
    const int32_t remainder = x & mask;
    const int32_t result = x >> exponent;
    const int32_t threshold = (mask >> 1) + (result < 0 ? 1 : 0);
    return result + (remainder > threshold ? 1 : 0);
}

/**
 * qcompile.fixedpoint.requantize on a 64-bit value: saturate acc * 2^max(shift, 0) to int32,
 * rounding-doubling-high-multiply by multiplier, rounding-divide by 2^max(-shift, 0).
 * Requires |acc| * 2^max(shift, 0) < 2^63 (true for every |acc| < 2^32).
 */
static inline int32_t qc_requantize64(int64_t acc, int32_t multiplier, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0;
    const int32_t right = shift > 0 ? 0 : -shift;
    const int32_t x = qc_saturate_int32(acc * ((int64_t)1 << left));
    return qc_divide_by_pot(qc_doubling_high_mult(x, multiplier), right);
}

/** qcompile.fixedpoint.requantize on an int32 accumulator. */
static inline int32_t qc_requantize(int32_t acc, int32_t multiplier, int32_t shift)
{
    return qc_requantize64((int64_t)acc, multiplier, shift);
}

/* ------------------------------------------------------------------ parameter blocks */

/** Conv2D: grouped / depthwise 2-D convolution; 1-D convolutions use in_h = out_h = 1. */
typedef struct {
    int32_t in_c, in_h, in_w;
    int32_t out_c, out_h, out_w;
    int32_t kernel_h, kernel_w;
    int32_t stride_h, stride_w;
    int32_t dilation_h, dilation_w;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
    int32_t groups;
    int32_t input_offset, output_offset;
    int32_t act_min, act_max;
    const int8_t *weight;       /* (out_c, in_c / groups, kernel_h, kernel_w) */
    const int32_t *bias;        /* (out_c,) at scale s_in * s_w[c] */
    const int32_t *multiplier;  /* (out_c,) */
    const int32_t *shift;       /* (out_c,) */
} qc_conv2d_params;

/** Dense (fully connected). */
typedef struct {
    int32_t in_features, out_features;
    int32_t input_offset, output_offset;
    int32_t act_min, act_max;
    const int8_t *weight;       /* (out_features, in_features) */
    const int32_t *bias;        /* (out_features,) */
    const int32_t *multiplier;  /* (out_features,) */
    const int32_t *shift;       /* (out_features,) */
} qc_dense_params;

/** Add (TFLite int8 ADD): both inputs and the output have `size` elements. */
typedef struct {
    int32_t size;
    int32_t input1_offset, input2_offset;
    int32_t input1_multiplier, input1_shift;
    int32_t input2_multiplier, input2_shift;
    int32_t output_multiplier, output_shift;
    int32_t output_offset;
    int32_t left_shift;
    int32_t act_min, act_max;
} qc_add_params;

/**
 * Mul (TFLite int8 MUL): input1 and the output are (channels, inner); input2 holds one value
 * per channel. An element-wise product of equal shapes is channels = size, inner = 1.
 */
typedef struct {
    int32_t channels, inner;
    int32_t input1_offset, input2_offset;
    int32_t output_offset;
    int32_t multiplier, shift;
    int32_t act_min, act_max;
} qc_mul_params;

/** MaxPool on raw int8 values; padded positions are ignored. */
typedef struct {
    int32_t channels, in_h, in_w, out_h, out_w;
    int32_t kernel_h, kernel_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
    int32_t act_min, act_max;
} qc_maxpool_params;

/** AvgPool with a fixed divisor folded into (multiplier, shift); padded positions add 0. */
typedef struct {
    int32_t channels, in_h, in_w, out_h, out_w;
    int32_t kernel_h, kernel_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
    int32_t input_offset, output_offset;
    int32_t multiplier, shift;
    int32_t act_min, act_max;
} qc_avgpool_params;

/** GlobalAvgPool: (channels, inner) -> (channels,). */
typedef struct {
    int32_t channels, inner;
    int32_t input_offset, output_offset;
    int32_t multiplier, shift;
} qc_global_avgpool_params;

/** Lut: out = table[x + 128]. */
typedef struct {
    int32_t size;
    const int8_t *table;        /* 256 entries */
} qc_lut_params;

/** PRelu on (channels, inner), one negative slope per channel. */
typedef struct {
    int32_t channels, inner;
    int32_t input_offset, output_offset;
    int32_t pos_multiplier, pos_shift;
    const int32_t *neg_multiplier;  /* (channels,) */
    const int32_t *neg_shift;       /* (channels,) */
} qc_prelu_params;

/** One input block of a channel Concat: `size` elements rescaled to the output quantization. */
typedef struct {
    int32_t size;
    int32_t input_offset, output_offset;
    int32_t multiplier, shift;
} qc_concat_params;

/** Pad: constant padding of the two last dims of (channels, in_h, in_w). */
typedef struct {
    int32_t channels, in_h, in_w;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
    int32_t value;
} qc_pad_params;

/** Softmax over rows of row_size elements; output scale 1/256. */
typedef struct {
    int32_t rows, row_size;
    int32_t output_offset;
    const uint32_t *exp_table;  /* 256 entries, exp_table[d] ~ 2^exp_bits * exp(-d * s_in) */
} qc_softmax_params;

/* ------------------------------------------------------------------ kernels */

void qc_conv2d_s8(const qc_conv2d_params *p, const int8_t *input, int8_t *output);
void qc_dense_s8(const qc_dense_params *p, const int8_t *input, int8_t *output);
void qc_add_s8(const qc_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output);
void qc_mul_s8(const qc_mul_params *p, const int8_t *input1, const int8_t *input2, int8_t *output);
void qc_maxpool_s8(const qc_maxpool_params *p, const int8_t *input, int8_t *output);
void qc_avgpool_s8(const qc_avgpool_params *p, const int8_t *input, int8_t *output);
void qc_global_avgpool_s8(const qc_global_avgpool_params *p, const int8_t *input, int8_t *output);
void qc_lut_s8(const qc_lut_params *p, const int8_t *input, int8_t *output);
void qc_prelu_s8(const qc_prelu_params *p, const int8_t *input, int8_t *output);
/* Writes one block; the caller passes the output pointer advanced to the block's start. */
void qc_concat_s8(const qc_concat_params *p, const int8_t *input, int8_t *output);
void qc_pad_s8(const qc_pad_params *p, const int8_t *input, int8_t *output);
void qc_softmax_s8(const qc_softmax_params *p, const int8_t *input, int8_t *output);

#ifdef __cplusplus
}
#endif

#endif /* QC_KERNELS_H */
