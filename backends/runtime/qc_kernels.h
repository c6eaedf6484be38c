/*
 * qc_kernels.h - C99 integer kernels for qcompile-generated models.
 *
 * One kernel (or a few variants the emitter chooses between at compile time) per integer IR
 * op kind (backends/ir.py). Kernels accumulate in int32 and requantize with exactly the
 * arithmetic of qcompile.fixedpoint.requantize (TFLite / CMSIS-NN rounding). The reference
 * interpreter (backends/interpreter.py) is the specification; generated code is tested
 * against it bit for bit on the host and on Cortex-M0+/M3 (plain C), M4, M7 and M33 (DSP).
 *
 * Files: qc_kernels.c (element-wise, pooling, data movement, softmax), qc_conv.c
 * (convolution, depthwise convolution, fully connected). On cores with the DSP extension
 * (__ARM_FEATURE_DSP: Cortex-M4/M7/M33) the hot loops use SMLAD/SXTAB16 (ACLE <arm_acle.h>);
 * elsewhere the same kernels run plain C on the same data layout.
 *
 * Memory layout. A (C, H, W) tensor (or (C, L) seen as H = 1) is addressed through two strides:
 * element (c, y, x) lives at c * c_stride + (y * W + x) * p_stride. PyTorch order ("CHW") is
 * c_stride = H*W, p_stride = 1; channels-last ("HWC", what the emitter uses inside the arena so
 * that the reduction dimension of a convolution is contiguous) is c_stride = 1, p_stride = C.
 * The graph input and output always hold PyTorch order. Element-wise kernels (Add, Lut, Mul of
 * equal shapes) need every operand in the same layout; the emitter guarantees it.
 *
 * Conventions (shared with the IR):
 *   - "*_offset" fields are added to raw int8 values: input_offset = -zero_point_in,
 *     output_offset = +zero_point_out.
 *   - (multiplier, shift) pairs: real ~= multiplier * 2^(shift - 31), |multiplier| in
 *     [2^30, 2^31) or 0, shift in [-31, 30].
 *   - Outputs must not overlap inputs, except for the element-wise kernels (Add, Mul, Lut,
 *     PRelu), which also accept output == input (in-place; the memory planner uses it).
 *   - Accumulators are int32; the IR verifier proves no partial sum can overflow.
 *
 * Every kernel takes a constant parameter block (generated into flash next to the weights)
 * followed by its input and output pointers (and, for kernels that need one, a scratch
 * buffer inside the arena whose size the emitter computes). No dynamic memory, no I/O, no
 * floating point.
 */
#ifndef QC_KERNELS_H
#define QC_KERNELS_H

#include <stdint.h>

/* The kernels shift negative int32 values right and need that shift to be arithmetic, as
 * CMSIS-NN does: implementation-defined in C99, arithmetic on GCC, Clang, Arm Compiler and IAR. */
#if (-1 >> 1) != -1
#error "qcompile kernels need an arithmetic right shift of negative integers"
#endif

/*
 * Window taps k in [0, count) read position start + k * step; return in [*lo, *hi) the taps
 * that fall inside [0, limit). Positions grow with k, so the valid taps are contiguous.
 */
static inline void qc_window(int32_t start, int32_t step, int32_t count, int32_t limit, int32_t *lo, int32_t *hi)
{
    int32_t a = 0;
    int32_t b = count;
    while (a < count && start + a * step < 0) {
        ++a;
    }
    while (b > a && start + (b - 1) * step >= limit) {
        --b;
    }
    *lo = a;
    *hi = b;
}

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

/**
 * Rounding high multiply (a * b + 2^31) >> 32 (the SMMULR instruction).
 * qc_mulhi_round(2 * x, m) == qc_doubling_high_mult(x, m) for |2 * x| < 2^31.
 */
static inline int32_t qc_mulhi_round(int32_t a, int32_t b)
{
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
    int32_t r;
    __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
#else
    return (int32_t)(((int64_t)a * (int64_t)b + ((int64_t)1 << 31)) >> 32);
#endif
}

/**
 * Per-channel requantization record.
 *
 * "Fast" form (chosen by the emitter when it has proved, from the weights, biases and
 * shifts, that nothing below can overflow, that right >= 1 and multiplier >= 0): the accumulator arrives
 * pre-scaled by 2^(left + 1) (the emitter scales the weights and the bias), and
 *   out = (mulhi_round(acc, multiplier) + round + sign) >> right,
 * with sign = -1 for a negative product and round = 2^(right - 1) + output_offset * 2^right,
 * which equals requantize(acc, multiplier, shift) + output_offset bit for bit.
 * "Exact" form: {multiplier, shift, output_offset}, the portable qc_requantize.
 */
typedef struct {
    int32_t multiplier;
    int32_t shift;      /* fast: right shift (>= 1); exact: the IR shift */
    int32_t round;      /* fast: rounding + output offset term; exact: output_offset */
} qc_rq;

/** Fast requantization of a pre-scaled accumulator (see qc_rq); the result includes the offset. */
static inline int32_t qc_rq_fast(int32_t acc, const qc_rq *q)
{
    const int32_t v = qc_mulhi_round(acc, q->multiplier);
    return (v + q->round + (v >> 31)) >> q->shift;
}

/** Exact requantization (see qc_rq); the result includes the output offset. */
static inline int32_t qc_rq_exact(int32_t acc, const qc_rq *q)
{
    return qc_requantize(acc, q->multiplier, q->shift) + q->round;
}

/**
 * Threshold output stage: #{k : a >= row[k]} over a non-decreasing row of len thresholds, stored
 * as int32 (qc_threshold_count) or int16 (qc_threshold_count16; the emitter stores a layer's
 * rows as int16 when they fit after clipping to the reachable accumulator range).
 * len = 2^b - 1 with b <= 4 (the stages of 1..4-bit outputs): b branch-free halving steps on a
 * pointer p = row + idx, the step of width s testing p[s - 1] (the count lies in
 * [idx, idx + 2s - 1] before the step and in [idx, idx + s - 1] after it, so b steps pin it down,
 * reading only row[0 .. len - 1]); a step is a load at an immediate offset, a compare and a
 * conditional add.
 * Other lengths: binary search. With a constant len (an inlined call) the switch folds away.
 */
#define QC_DEFINE_THRESHOLD_COUNT(NAME, T)                    \
    static inline int32_t NAME(int32_t a, const T *row, int32_t len) \
    {                                                         \
        const T *p = row;                                     \
        int32_t idx = 0, rest = len;                          \
        switch (len) {                                        \
        case 15:                                              \
            if (p[7] <= a) p += 8;                            \
            /* fall through */                                \
        case 7:                                               \
            if (p[3] <= a) p += 4;                            \
            /* fall through */                                \
        case 3:                                               \
            if (p[1] <= a) p += 2;                            \
            /* fall through */                                \
        case 1:                                               \
            if (p[0] <= a) p += 1;                            \
            return (int32_t)(p - row);                        \
        default:                                              \
            break;                                            \
        }                                                     \
        while (rest > 0) {                                    \
            const int32_t half = rest >> 1;                   \
            if (row[idx + half] <= a) {                       \
                idx += half + 1;                              \
                rest -= half + 1;                             \
            } else {                                          \
                rest = half;                                  \
            }                                                 \
        }                                                     \
        return idx;                                           \
    }
QC_DEFINE_THRESHOLD_COUNT(qc_threshold_count, int32_t)
QC_DEFINE_THRESHOLD_COUNT(qc_threshold_count16, int16_t)
#undef QC_DEFINE_THRESHOLD_COUNT

/* Row `row` of a threshold table of int16 (bits 16) or int32 (bits 32) rows of len entries. */
static inline const void *qc_threshold_row(const void *table, int32_t bits, int32_t row, int32_t len)
{
    return (const uint8_t *)table + row * len * (bits >> 3);
}

/* ------------------------------------------------------------------ parameter blocks */

/**
 * Weight storage of the GEMM kernels (conv, dense): w8 = 1 is one byte per weight, w8 = 0 int16.
 *
 * int8 ("w8"): a pair of output channels (e, o) and a pair of reduction indices (ka, kb) share
 * one uint32 word, bytes (low first) [w_e(ka), w_o'(ka), w_e(kb), w_o'(kb)], where
 * w_o' = w_o - (w_e < 0 ? 1 : 0) (the emitter proves it fits int8). Read as two int16 halves, the
 * word is then exactly (w_e(ka) + 256 w_o(ka), w_e(kb) + 256 w_o(kb)), and SXTB16 of it is
 * (w_e(ka), w_e(kb)). One SMLAD of each against an activation pair gives
 *   S = sum w_e x    and    R = sum (w_e + 256 w_o) x = S + 256 sum w_o x   (mod 2^32),
 * so both channels cost one weight load and ONE sign extension per 2 x 2 weights, and
 * sum w_o x = (R - S) / 256 exactly (the emitter proves |sum w_o x| < 2^23).
 * S and R start from 0; afterwards acc_e = S * 2^w8_shift + bias_e and
 * acc_o = (R - S) / 256 * 2^w8_shift + bias_o, where w8_shift is the fast-requantization
 * pre-scale (left + 1, the same for every channel) or 0 and the bias is pre-scaled by it.
 * fused = 1 (the emitter proved: w8, rq_fast, w8_shift = 1, multipliers >= 0, even cout_group):
 * on DSP cores, channels-last outputs go through one assembly routine per pixel pair that keeps
 * the accumulators in registers from the first MAC to the int8 store.
 */

/**
 * Conv2D through im2col + a register-blocked GEMM (2 output channels x 2 pixels).
 *
 * Weights: int16 values packed two per uint32 word (low half first). For each group, each
 * pair of output channels (an odd count gets a zero channel) and each block of 4 reduction
 * indices k (k = (ky * kernel_w + kx) * cin_group + ci, zero-padded to k_pad), 4 words:
 * [ch0: (k0,k2) (k1,k3)] [ch1: (k0,k2) (k1,k3)]. With k_seq = 1 (layers whose im2col goes
 * element by element: input not channels-last or cin_group % 4 != 0) the pairs are (k0,k1)
 * (k2,k3) instead, in the weights and in the scratch, so the im2col stores plain k order. bias and rq are indexed by the padded channel
 * g * cout_pad + j (cout_pad = cout_group rounded up to even).
 * Scratch: 4 * k_pad int16 (2 pixels, the same (k0,k2)(k1,k3) order, interleaved by block).
 */
typedef struct {
    int32_t in_c, in_h, in_w, in_cs, in_ps;
    int32_t out_c, out_h, out_w, out_cs, out_ps;
    int32_t kernel_h, kernel_w;
    int32_t stride_h, stride_w;
    int32_t dilation_h, dilation_w;
    int32_t pad_top, pad_left;
    int32_t groups, cin_group, cout_group, cout_pad;
    int32_t k, k_pad;
    int32_t input_offset;
    int32_t act_min, act_max;
    int32_t rq_fast;            /* 1: weights/bias pre-scaled, rq in fast form */
    int32_t w8, w8_shift;       /* int8 weights (see above); int16 pairs when w8 = 0 */
    int32_t fused;              /* see above */
    int32_t k_seq;              /* 1: each 4-block pairs (k0,k1)(k2,k3) instead of (k0,k2)(k1,k3) */
    const uint32_t *weight;
    const int32_t *bias;
    const qc_rq *rq;
} qc_conv_params;

/**
 * Depthwise Conv2D (groups == in_c == out_c); fastest with a channels-last input. Weights:
 * int16 pairs in uint32 words, for each block of 4 channels (zero-padded to c_pad) and each tap
 * (ky * kernel_w + kx): (c0,c2) (c1,c3). bias and rq have c_pad entries.
 */
typedef struct {
    int32_t channels, c_pad, in_h, in_w, in_cs, in_ps;
    int32_t out_h, out_w, out_cs, out_ps;
    int32_t kernel_h, kernel_w;
    int32_t stride_h, stride_w;
    int32_t dilation_h, dilation_w;
    int32_t pad_top, pad_left;
    int32_t input_offset;
    int32_t act_min, act_max;
    int32_t rq_fast;
    const uint32_t *weight;
    const int32_t *bias;
    const qc_rq *rq;
} qc_dwconv_params;

/**
 * Dense (fully connected). Weights packed like qc_conv_params with one group and
 * k = in_features (columns permuted by the emitter when the input is stored channels-last).
 * The input is read directly (no scratch).
 */
typedef struct {
    int32_t in_features, k_pad, out_features, out_pad;
    int32_t input_offset;
    int32_t act_min, act_max;
    int32_t rq_fast;
    int32_t w8, w8_shift;       /* int8 weights, see qc_conv_params */
    const uint32_t *weight;
    const int32_t *bias;
    const qc_rq *rq;
} qc_fc_params;

/**
 * Conv2D / Dense on the int64 accumulation path (ir Conv2D/Dense with acc_bits == 64): layers whose
 * partial sums can exceed int32. Direct convolution, acc = bias + sum w * (x + input_offset) in
 * int64, then qc_requantize64 (which saturates acc * 2^max(shift, 0) to int32 before the multiply,
 * exactly like qcompile.fixedpoint.requantize) + output_offset, clamped to [act_min, act_max].
 * Weights: plain int8 in (out_c, kernel_h, kernel_w, cin_group) order. Element (c, y, x) of a
 * tensor is at c * cs + (y * w + x) * ps. A Dense is a 1x1 convolution of a single pixel.
 */
typedef struct {
    int32_t in_c, in_h, in_w, in_cs, in_ps;
    int32_t out_c, out_h, out_w, out_cs, out_ps;
    int32_t kernel_h, kernel_w;
    int32_t stride_h, stride_w;
    int32_t dilation_h, dilation_w;
    int32_t pad_top, pad_left;
    int32_t groups, cin_group, cout_group;
    int32_t input_offset, output_offset;
    int32_t act_min, act_max;
    const int8_t *weight;
    const int32_t *bias;
    const int32_t *multiplier;
    const int32_t *shift;
} qc_conv_wide_params;

/**
 * Add (TFLite int8 ADD): both inputs and the output have `size` elements in the same layout.
 * fast = 1: the emitter proved the shortcut below exact (no saturation; output right shift >= 1);
 * then in1_shift = left_shift + max(input1_shift, 0) + 1, in1_right = max(-input1_shift, 0)
 * and likewise for input 2 and the output (out_round includes the output offset, like qc_rq).
 */
typedef struct {
    int32_t size;
    int32_t input1_offset, input2_offset;
    int32_t input1_multiplier, input1_shift;
    int32_t input2_multiplier, input2_shift;
    int32_t output_multiplier, output_shift;
    int32_t output_offset;
    int32_t left_shift;
    int32_t act_min, act_max;
    int32_t fast;
    int32_t in1_shift, in1_right, in1_round;
    int32_t in2_shift, in2_right, in2_round;
    int32_t out_shift, out_right, out_round;
} qc_add_params;

/**
 * Mul (TFLite int8 MUL): input1 and the output are (channels, inner) elements, element (c, i)
 * at c * c_stride + i * i_stride; input2 holds one value per channel. An element-wise product
 * of equal shapes is channels = size, inner = 1, c_stride = 1.
 */
typedef struct {
    int32_t channels, inner, c_stride, i_stride;
    int32_t input1_offset, input2_offset;
    int32_t output_offset;
    int32_t multiplier, shift;
    int32_t act_min, act_max;
} qc_mul_params;

/** MaxPool on raw int8 values; padded positions are ignored. */
typedef struct {
    int32_t channels, in_h, in_w, out_h, out_w;
    int32_t in_cs, in_ps, out_cs, out_ps;
    int32_t kernel_h, kernel_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
    int32_t act_min, act_max;
} qc_maxpool_params;

/**
 * AvgPool; padded positions add 0. The divisor is fixed and folded into (multiplier, shift), or,
 * with div_multiplier != NULL, counted per window: the window positions inside the input extended
 * by count_top/left/bottom/right, d = rows * cols, requantized with (div_multiplier[d], div_shift[d]).
 */
typedef struct {
    int32_t channels, in_h, in_w, out_h, out_w;
    int32_t in_cs, in_ps, out_cs, out_ps;
    int32_t kernel_h, kernel_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
    int32_t input_offset, output_offset;
    int32_t multiplier, shift;
    int32_t act_min, act_max;
    const int32_t *div_multiplier;  /* NULL: fixed divisor; else kernel_h * kernel_w + 1 entries */
    const int32_t *div_shift;
    int32_t count_top, count_left, count_bottom, count_right;
} qc_avgpool_params;

/** GlobalAvgPool: (channels, inner) -> (channels,); element (c, i) at c * c_stride + i * i_stride. */
typedef struct {
    int32_t channels, inner, c_stride, i_stride;
    int32_t input_offset, output_offset;
    int32_t multiplier, shift;
} qc_global_avgpool_params;

/** Lut: out = table[x + 128]. */
typedef struct {
    int32_t size;
    const int8_t *table;        /* 256 entries */
} qc_lut_params;

/** PRelu on (channels, inner), one negative slope per channel; element (c, i) at c * c_stride + i * i_stride. */
typedef struct {
    int32_t channels, inner, c_stride, i_stride;
    int32_t input_offset, output_offset;
    int32_t pos_multiplier, pos_shift;
    const int32_t *neg_multiplier;  /* (channels,) */
    const int32_t *neg_shift;       /* (channels,) */
} qc_prelu_params;

/**
 * One input block of a channel Concat: (channels, pixels) rescaled to the output quantization.
 * The caller passes the output pointer advanced to the block's first channel.
 */
typedef struct {
    int32_t channels, pixels;
    int32_t in_cs, in_ps, out_cs, out_ps;
    int32_t input_offset, output_offset;
    int32_t multiplier, shift;
} qc_concat_params;

/**
 * Pad: constant padding of the two last dims of (channels, in_h, in_w); input row y and column x
 * land at (pad_top + y * stride_h, pad_left + x * stride_w) (stride > 1: zero insertion).
 */
typedef struct {
    int32_t channels, in_h, in_w;
    int32_t in_cs, in_ps, out_cs, out_ps;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
    int32_t value;
    int32_t stride_h, stride_w;
} qc_pad_params;

/**
 * Strided copy (data movement: permute, slices, split items, nearest upsampling, concat blocks):
 * for every output index (i0..i5), out[sum i_d * out_strides[d]] = in[sum i_d * in_strides[d]],
 * strides in elements of the tensors' storage; unused leading dims have extent 1. With
 * requant = 1 each value is rescaled like a Concat block (TFLite requantization).
 */
#define QC_COPY_DIMS 6
typedef struct {
    int32_t dims[QC_COPY_DIMS];
    int32_t in_strides[QC_COPY_DIMS];
    int32_t out_strides[QC_COPY_DIMS];
    int32_t requant;
    int32_t input_offset, output_offset;
    int32_t multiplier, shift;
} qc_copy_params;

/**
 * Resize (bilinear): rows[4 * y .. 4 * y + 3] = (i0, i1, a0, a1), cols likewise; acc =
 * sum a_r * b_c * (x[i_r, j_c] + input_offset), out = requantize(acc) + output_offset.
 */
typedef struct {
    int32_t channels, in_h, in_w, out_h, out_w;
    int32_t in_cs, in_ps, out_cs, out_ps;
    const int32_t *rows;  /* out_h x 4 */
    const int32_t *cols;  /* out_w x 4 */
    int32_t input_offset, output_offset;
    int32_t multiplier, shift;
} qc_resize_params;

/** MinMax: element-wise max (is_max) or min of two inputs, each rescaled to the output quantization. */
typedef struct {
    int32_t size, is_max;
    int32_t input1_offset, input1_multiplier, input1_shift;
    int32_t input2_offset, input2_multiplier, input2_shift;
    int32_t output_offset;
} qc_minmax_params;

/** Softmax over rows of row_size elements (PyTorch order); output scale 1/256. */
typedef struct {
    int32_t rows, row_size;
    int32_t output_offset;
    const uint32_t *exp_table;  /* 256 entries, exp_table[d] ~ 2^exp_bits * exp(-d * s_in) */
} qc_softmax_params;

/*
 * Low-bit weights, codebooks and threshold output stages ("lb" kernels). Layers whose weights
 * are stored below 8 bits, with a codebook (piecewise-linear weights) or with a threshold
 * output stage run through qc_conv_lb_s8 (conv and dense) and qc_dwconv_lb_s8 (depthwise);
 * every other layer keeps qc_conv_s8 / qc_dwconv_s8 / qc_fc_s8.
 *
 * QC_LB_W4 (4- and 3-bit uniform weights, two per byte): per channel pair (e, o) and 4-block
 * of reduction indices, one uint32 word of 4 bytes, one per k in the order (k0, k1, k2, k3)
 * ((k0, k2, k1, k3) when k_seq = 1, matching the activation pairs), each byte the low nibble w_e and the high nibble
 * w_o' = w_o - (w_e < 0): as a signed byte it is exactly B = w_e + 16 w_o. SXTB16 of the word
 * (and of the word rotated by 8) gives int16 pairs of B; SXTB16 of (word << 4) & 0xF0F0F0F0
 * pairs of 16 w_e. Two SMLAD chains give A = 16 sum w_e x and T = sum w_e x + 16 sum w_o x,
 * so sum w_e x = A / 16 and sum w_o x = (T - A / 16) / 16, exactly (the emitter bounds both).
 * QC_LB_DECODE (2-bit uniform weights four per byte, codebook codes of 2, 4 or 8 bits): fields
 * of `bits` bits, row-major (out_c, k), low bits first; a pass expands `chunk` output channels
 * into the int8 "w8" layout (or int16 pairs when conv->w8 = 0) in scratch (uniform: sign
 * extension; codebook: levels[row(c) * 2^code_bits + code], row(c) = level_row[c] or c) and runs
 * the int8 GEMM on them.
 * QC_LB_W8: the qc_conv_params layout from flash (8-bit weights with a threshold stage).
 * Threshold stage (thresholds != NULL, (groups * cout_pad, n_thresholds) non-decreasing int16 or
 * int32 per channel (threshold_bits), accumulators unscaled, conv->rq NULL):
 * out = clamp(output_offset + #{k : acc >= T[c, k]}).
 */
#define QC_LB_W8 0
#define QC_LB_W4 1
#define QC_LB_DECODE 2

/*
 * A threshold layer's output store (qc_conv.c): out[i * stride] = offset + #{k : acc[i] >= row_i[k]}
 * for i < n, row_i = the i-th row of len int16 or int32 thresholds at t. The emitter names one per
 * layer (so only the ones a model uses are linked): qc_threshold_store<BITS>_<LEN> (BITS 16 / 32,
 * LEN 1, 3, 7, 15) when the levels offset + 0 .. len lie inside [lo, hi] (they are not clamped),
 * else qc_threshold_store<BITS> (any len, clamped to [lo, hi]).
 */
typedef void (*qc_threshold_store_fn)(const int32_t *acc, int32_t n, const void *t, int32_t len, int32_t offset,
                                      int8_t *out, int32_t stride, int32_t lo, int32_t hi);
#define QC_DECLARE_THRESHOLD_STORE(NAME)                                                                   \
    void NAME(const int32_t *acc, int32_t n, const void *t, int32_t len, int32_t offset, int8_t *out, \
              int32_t stride, int32_t lo, int32_t hi);
QC_DECLARE_THRESHOLD_STORE(qc_threshold_store16)
QC_DECLARE_THRESHOLD_STORE(qc_threshold_store32)
QC_DECLARE_THRESHOLD_STORE(qc_threshold_store16_1)
QC_DECLARE_THRESHOLD_STORE(qc_threshold_store16_3)
QC_DECLARE_THRESHOLD_STORE(qc_threshold_store16_7)
QC_DECLARE_THRESHOLD_STORE(qc_threshold_store16_15)
QC_DECLARE_THRESHOLD_STORE(qc_threshold_store32_1)
QC_DECLARE_THRESHOLD_STORE(qc_threshold_store32_3)
QC_DECLARE_THRESHOLD_STORE(qc_threshold_store32_7)
QC_DECLARE_THRESHOLD_STORE(qc_threshold_store32_15)
#undef QC_DECLARE_THRESHOLD_STORE

typedef struct {
    const qc_conv_params *conv;  /* geometry, bias, rq, w8 / w8_shift / k_seq; conv->weight (W8, W4) */
    int32_t mode;                /* QC_LB_W8, QC_LB_W4, QC_LB_DECODE */
    int32_t bits;                /* QC_LB_DECODE: bits per stored field (2, 4 or 8) */
    int32_t code_bits;           /* codebook: 2^code_bits levels per channel; 0: uniform values */
    int32_t chunk;               /* QC_LB_DECODE: output channels expanded per pass (even) */
    const uint8_t *packed;       /* QC_LB_DECODE: the fields */
    const int8_t *levels;        /* codebook level tables (rows, 2^code_bits) */
    const uint8_t *level_row;    /* codebook table of each output channel; NULL: row c for channel c */
    const void *thresholds;      /* NULL: requantize with conv->rq */
    int32_t threshold_bits;      /* 16: int16_t rows, 32: int32_t rows */
    int32_t n_thresholds;
    int32_t output_offset;
    qc_threshold_store_fn threshold_store;  /* the threshold stage's store; NULL without one */
    void (*pair)(const void *job);  /* threshold stage's fused pixel-pair routine (QC_THR_PAIR) or NULL */
} qc_conv_lb_params;

/*
 * The fused pixel-pair routines of threshold layers on DSP cores (qc_conv.c): W = w4 (4-bit pairs)
 * or w8 (int8 channel pairs), BITS = 16 / 32 (row width), LEN = 1, 3, 7, 15 (row length). The
 * emitter names a layer's routine with QC_THR_PAIR (NULL without the DSP extension), so only the
 * routines a model uses are linked.
 */
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
#define QC_THR_PAIRS 1
#define QC_THR_PAIR(W, BITS, LEN) qc_##W##_pair_thr##BITS##_##LEN
#define QC_DECLARE_THR_PAIRS(BITS, LEN)                   \
    void qc_w4_pair_thr##BITS##_##LEN(const void *job); \
    void qc_w8_pair_thr##BITS##_##LEN(const void *job);
QC_DECLARE_THR_PAIRS(16, 1)
QC_DECLARE_THR_PAIRS(16, 3)
QC_DECLARE_THR_PAIRS(16, 7)
QC_DECLARE_THR_PAIRS(16, 15)
QC_DECLARE_THR_PAIRS(32, 1)
QC_DECLARE_THR_PAIRS(32, 3)
QC_DECLARE_THR_PAIRS(32, 7)
QC_DECLARE_THR_PAIRS(32, 15)
#undef QC_DECLARE_THR_PAIRS
#else
#define QC_THR_PAIRS 0
#define QC_THR_PAIR(W, BITS, LEN) NULL
#endif

/*
 * Depthwise with stored fields (bits 2, 4 or 8, row-major (channels, taps), low bits first;
 * uniform values sign-extended, or codebook codes). Requantized layers: `chunk` channels (a
 * multiple of 4) at a time are expanded into scratch in the int16-pair layout of
 * qc_dwconv_params (scaled by 2^w_shift, the fast requantization's pre-scale) and run through
 * qc_dwconv_s8 on that channel range. Threshold layers: per block of 4 channels the taps are
 * expanded, then every output pixel of the block is computed and counted against thresholds
 * (3x3 channels-last layers instead expand every channel once, qc_dwconv_expand_s8, and run
 * qc_dw3x3_thr_s8 of qc_inline.h).
 */
typedef struct {
    const qc_dwconv_params *dw;  /* geometry, bias, rq (dw->weight unused) */
    int32_t bits, code_bits, w_shift, chunk;
    const uint8_t *packed;
    const int8_t *levels;        /* codebook level tables, as in qc_conv_lb_params */
    const uint8_t *level_row;
    const void *thresholds;      /* NULL: requantize; else (c_pad, n_thresholds), dw->rq NULL */
    int32_t threshold_bits;      /* 16: int16_t rows, 32: int32_t rows */
    int32_t n_thresholds;
    int32_t output_offset;
    qc_threshold_store_fn threshold_store;  /* the threshold stage's store; NULL without one */
} qc_dwconv_lb_params;

/* ------------------------------------------------------------------ kernels */

/* scratch: 4 * k_pad int16 for qc_conv_s8, 2 * k_pad more when k_seq = 1 (the emitter sizes it). */
void qc_conv_s8(const qc_conv_params *p, const int8_t *input, int8_t *output, uint32_t *scratch);
void qc_dwconv_s8(const qc_dwconv_params *p, const int8_t *input, int8_t *output);
/* scratch: qc_conv_s8's, + chunk * k_pad bytes (w8; twice that with int16 pairs) for QC_LB_DECODE. */
void qc_conv_lb_s8(const qc_conv_lb_params *p, const int8_t *input, int8_t *output, uint32_t *scratch);
/* scratch: chunk * kernel_h * kernel_w words (2 * kernel_h * kernel_w with thresholds). */
void qc_dwconv_lb_s8(const qc_dwconv_lb_params *p, const int8_t *input, int8_t *output, uint32_t *scratch);
/* Expand every channel of a low-bit depthwise layer into scratch (int16 pairs), for the specialized
   qc_dw3x3_s8 of qc_inline.h on a parameter block whose weight is that scratch. */
void qc_dwconv_expand_s8(const qc_dwconv_lb_params *p, uint32_t *scratch);
void qc_fc_s8(const qc_fc_params *p, const int8_t *input, int8_t *output);
void qc_conv_wide_s8(const qc_conv_wide_params *p, const int8_t *input, int8_t *output);
void qc_add_s8(const qc_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output);
/* Fast Add (p->fast = 1) through two 256-entry tables built in scratch (512 int32). */
void qc_add_table_s8(const qc_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output,
                     int32_t *scratch);
void qc_mul_s8(const qc_mul_params *p, const int8_t *input1, const int8_t *input2, int8_t *output);
void qc_maxpool_s8(const qc_maxpool_params *p, const int8_t *input, int8_t *output);
void qc_avgpool_s8(const qc_avgpool_params *p, const int8_t *input, int8_t *output);
void qc_global_avgpool_s8(const qc_global_avgpool_params *p, const int8_t *input, int8_t *output);
void qc_lut_s8(const qc_lut_params *p, const int8_t *input, int8_t *output);
void qc_prelu_s8(const qc_prelu_params *p, const int8_t *input, int8_t *output);
/* Writes one block; the caller passes the output pointer advanced to the block's start. */
void qc_concat_s8(const qc_concat_params *p, const int8_t *input, int8_t *output);
void qc_pad_s8(const qc_pad_params *p, const int8_t *input, int8_t *output);
/* The caller passes both pointers advanced to the first element read / written. */
void qc_copy_s8(const qc_copy_params *p, const int8_t *input, int8_t *output);
void qc_resize_s8(const qc_resize_params *p, const int8_t *input, int8_t *output);
void qc_minmax_s8(const qc_minmax_params *p, const int8_t *input1, const int8_t *input2, int8_t *output);
void qc_softmax_s8(const qc_softmax_params *p, const int8_t *input, int8_t *output);

#ifdef __cplusplus
}
#endif

#endif /* QC_KERNELS_H */
