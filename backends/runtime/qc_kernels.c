/*
 * qc_kernels.c - element-wise, pooling, data-movement and softmax kernels (see qc_kernels.h for the conventions).
 *
 * Each kernel mirrors one rule of the reference interpreter (backends/interpreter.py) and
 * must stay bit-exact with it. Loop invariants are hoisted; window bounds are found once per
 * output row/column so the inner multiply-accumulate loops carry no bounds checks.
 */
#include "qc_kernels.h"

#include <string.h>

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

static int8_t qc_to_int8(int32_t v, int32_t act_min, int32_t act_max)
{
    return (int8_t)qc_clamp(v, act_min, act_max);
}

void qc_add_s8(const qc_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output)
{
    int32_t i;

    if (p->fast) {
        /* proved exact by the emitter: no saturation, right shifts >= 1 (see qc_add_params) */
        const int32_t o1 = p->input1_offset, o2 = p->input2_offset;
        const int32_t m1 = p->input1_multiplier, m2 = p->input2_multiplier, mo = p->output_multiplier;
        const int32_t s1 = p->in1_shift, s2 = p->in2_shift, so = p->out_shift;
        const int32_t r1 = p->in1_right, r2 = p->in2_right, ro = p->out_right;
        const int32_t h1 = p->in1_round, h2 = p->in2_round, ho = p->out_round;
        const int32_t lo = p->act_min, hi = p->act_max;
        const int32_t g1 = r1 > 0 ? -1 : 0, g2 = r2 > 0 ? -1 : 0;  /* no rounding term for a zero shift */
        for (i = 0; i < p->size; ++i) {
            const int32_t va = qc_mulhi_round((int32_t)((uint32_t)(input1[i] + o1) << s1), m1);
            const int32_t vb = qc_mulhi_round((int32_t)((uint32_t)(input2[i] + o2) << s2), m2);
            const int32_t a = (va + h1 + ((va >> 31) & g1)) >> r1;
            const int32_t b = (vb + h2 + ((vb >> 31) & g2)) >> r2;
            const int32_t v = qc_mulhi_round((int32_t)((uint32_t)(a + b) << so), mo);
            output[i] = qc_to_int8((v + ho + (v >> 31)) >> ro, lo, hi);
        }
        return;
    }
    {
        const int64_t scale = (int64_t)1 << p->left_shift;
        for (i = 0; i < p->size; ++i) {
            const int32_t a = qc_requantize64((int64_t)(input1[i] + p->input1_offset) * scale,
                                              p->input1_multiplier, p->input1_shift);
            const int32_t b = qc_requantize64((int64_t)(input2[i] + p->input2_offset) * scale,
                                              p->input2_multiplier, p->input2_shift);
            const int32_t sum = qc_requantize64((int64_t)a + (int64_t)b, p->output_multiplier, p->output_shift);
            output[i] = qc_to_int8(sum + p->output_offset, p->act_min, p->act_max);
        }
    }
}

void qc_add_table_s8(const qc_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output,
                     int32_t *scratch)
{
    /* p->fast must be 1: the input stages of the fast path depend on one int8 value each, so they
       are tabulated once (2 x 256 entries), and each element costs two loads, an add and the
       output stage. */
    const int32_t o1 = p->input1_offset, o2 = p->input2_offset;
    const int32_t m1 = p->input1_multiplier, m2 = p->input2_multiplier, mo = p->output_multiplier;
    const int32_t s1 = p->in1_shift, s2 = p->in2_shift, so = p->out_shift;
    const int32_t r1 = p->in1_right, r2 = p->in2_right, ro = p->out_right;
    const int32_t h1 = p->in1_round, h2 = p->in2_round, ho = p->out_round;
    const int32_t lo = p->act_min, hi = p->act_max;
    const int32_t g1 = r1 > 0 ? -1 : 0, g2 = r2 > 0 ? -1 : 0;
    const int32_t *const ta = scratch + 128;
    const int32_t *const tb = scratch + 384;
    const int32_t n = p->size;
    int32_t i;

    for (i = -128; i < 128; ++i) {
        const int32_t va = qc_mulhi_round((int32_t)((uint32_t)(i + o1) << s1), m1);
        const int32_t vb = qc_mulhi_round((int32_t)((uint32_t)(i + o2) << s2), m2);
        scratch[128 + i] = (va + h1 + ((va >> 31) & g1)) >> r1;
        scratch[384 + i] = (vb + h2 + ((vb >> 31) & g2)) >> r2;
    }
    if (lo == -128 && hi == 127) {
        for (i = 0; i < n; ++i) {
            const int32_t v = qc_mulhi_round((int32_t)((uint32_t)(ta[input1[i]] + tb[input2[i]]) << so), mo);
            const int32_t r = (v + ho + (v >> 31)) >> ro;
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
            int32_t q;
            __asm__("ssat %0, #8, %1" : "=r"(q) : "r"(r));
            output[i] = (int8_t)q;
#else
            output[i] = qc_to_int8(r, -128, 127);
#endif
        }
        return;
    }
    for (i = 0; i < n; ++i) {
        const int32_t v = qc_mulhi_round((int32_t)((uint32_t)(ta[input1[i]] + tb[input2[i]]) << so), mo);
        output[i] = qc_to_int8((v + ho + (v >> 31)) >> ro, lo, hi);
    }
}

void qc_mul_s8(const qc_mul_params *p, const int8_t *input1, const int8_t *input2, int8_t *output)
{
    int32_t c;

    for (c = 0; c < p->channels; ++c) {
        const int32_t b = input2[c] + p->input2_offset;
        const int8_t *x = input1 + c * p->c_stride;
        int8_t *y = output + c * p->c_stride;
        int32_t i;
        for (i = 0; i < p->inner; ++i) {
            const int32_t prod = (x[i * p->i_stride] + p->input1_offset) * b;
            y[i * p->i_stride] = qc_to_int8(qc_requantize(prod, p->multiplier, p->shift) + p->output_offset,
                              p->act_min, p->act_max);
        }
    }
}

void qc_maxpool_s8(const qc_maxpool_params *p, const int8_t *input, int8_t *output)
{
    const int32_t ps = p->in_ps;
    int32_t c;

    for (c = 0; c < p->channels; ++c) {
        const int8_t *in_ch = input + c * p->in_cs;
        int8_t *out_ch = output + c * p->out_cs;
        int32_t oy;
        for (oy = 0; oy < p->out_h; ++oy) {
            const int32_t iy0 = oy * p->stride_h - p->pad_top;
            int32_t ky_lo, ky_hi, ox;
            qc_window(iy0, 1, p->kernel_h, p->in_h, &ky_lo, &ky_hi);
            for (ox = 0; ox < p->out_w; ++ox) {
                const int32_t ix0 = ox * p->stride_w - p->pad_left;
                int32_t kx_lo, kx_hi, ky;
                int32_t best = INT32_MIN; /* a window entirely in padding clamps to act_min */
                qc_window(ix0, 1, p->kernel_w, p->in_w, &kx_lo, &kx_hi);
                for (ky = ky_lo; ky < ky_hi; ++ky) {
                    const int8_t *in_row = in_ch + (iy0 + ky) * p->in_w * ps;
                    int32_t kx;
                    for (kx = kx_lo; kx < kx_hi; ++kx) {
                        const int32_t v = in_row[(ix0 + kx) * ps];
                        best = v > best ? v : best;
                    }
                }
                out_ch[(oy * p->out_w + ox) * p->out_ps] = qc_to_int8(best, p->act_min, p->act_max);
            }
        }
    }
}

/* The (multiplier, shift) of the window starting at (iy0, ix0): fixed, or by its divisor (see qc_avgpool_params). */
static void qc_avgpool_rq(const qc_avgpool_params *p, int32_t iy0, int32_t ix0, int32_t *m, int32_t *s)
{
    if (p->div_multiplier == NULL) {
        *m = p->multiplier;
        *s = p->shift;
    } else {
        const int32_t top = -p->count_top, bottom = p->in_h + p->count_bottom;
        const int32_t left = -p->count_left, right = p->in_w + p->count_right;
        const int32_t y_lo = iy0 > top ? iy0 : top;
        const int32_t y_hi = iy0 + p->kernel_h < bottom ? iy0 + p->kernel_h : bottom;
        const int32_t x_lo = ix0 > left ? ix0 : left;
        const int32_t x_hi = ix0 + p->kernel_w < right ? ix0 + p->kernel_w : right;
        const int32_t rows = y_hi > y_lo ? y_hi - y_lo : 0;
        const int32_t cols = x_hi > x_lo ? x_hi - x_lo : 0;
        *m = p->div_multiplier[rows * cols];
        *s = p->div_shift[rows * cols];
    }
}

#if defined(__ARM_FEATURE_DSP)
/*
 * AvgPool on a channels-last input with windows of at most 256 taps: the raw int8 values of 4
 * channels are summed in the 16-bit lanes of two words (SXTAB16; 256 values in [-128, 127] stay
 * inside int16), then each channel is finished like the general kernel.
 */
static void qc_avgpool_hwc_s8(const qc_avgpool_params *p, const int8_t *input, int8_t *output)
{
    const int32_t ps = p->in_ps;
    int32_t oy, ox;

    for (oy = 0; oy < p->out_h; ++oy) {
        const int32_t iy0 = oy * p->stride_h - p->pad_top;
        int32_t ky_lo, ky_hi;
        qc_window(iy0, 1, p->kernel_h, p->in_h, &ky_lo, &ky_hi);
        for (ox = 0; ox < p->out_w; ++ox) {
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            int8_t *out = output + (oy * p->out_w + ox) * p->out_ps;
            int32_t kx_lo, kx_hi, count, c, rq_m, rq_s;
            qc_window(ix0, 1, p->kernel_w, p->in_w, &kx_lo, &kx_hi);
            count = (ky_hi - ky_lo) * (kx_hi - kx_lo);
            qc_avgpool_rq(p, iy0, ix0, &rq_m, &rq_s);
            for (c = 0; c < p->channels; c += 4) {
                int32_t sums[4];
                int32_t j, ky;
                if (c + 4 <= p->channels) {
                    uint32_t s02 = 0, s13 = 0;
                    for (ky = ky_lo; ky < ky_hi; ++ky) {
                        const int8_t *x = input + ((iy0 + ky) * p->in_w + ix0 + kx_lo) * ps + c;
                        const int8_t *const end = x + (kx_hi - kx_lo) * ps;
                        for (; x < end; x += ps) {
                            uint32_t v;
                            memcpy(&v, x, 4);
                            s02 = (uint32_t)__sxtab16((int16x2_t)s02, (int8x4_t)v);
                            s13 = (uint32_t)__sxtab16((int16x2_t)s13, (int8x4_t)((v >> 8) | (v << 24)));
                        }
                    }
                    sums[0] = (int16_t)(uint16_t)(s02 & 0xFFFFu);
                    sums[1] = (int16_t)(uint16_t)(s13 & 0xFFFFu);
                    sums[2] = (int16_t)(uint16_t)(s02 >> 16);
                    sums[3] = (int16_t)(uint16_t)(s13 >> 16);
                } else {
                    for (j = 0; c + j < p->channels; ++j) {
                        int32_t acc = 0;
                        for (ky = ky_lo; ky < ky_hi; ++ky) {
                            const int8_t *x = input + ((iy0 + ky) * p->in_w + ix0) * ps + c + j;
                            int32_t kx;
                            for (kx = kx_lo; kx < kx_hi; ++kx) {
                                acc += x[kx * ps];
                            }
                        }
                        sums[j] = acc;
                    }
                }
                for (j = 0; j < 4 && c + j < p->channels; ++j) {
                    const int32_t acc = sums[j] + count * p->input_offset;
                    out[(c + j) * p->out_cs] = qc_to_int8(qc_requantize(acc, rq_m, rq_s) + p->output_offset,
                                                          p->act_min, p->act_max);
                }
            }
        }
    }
}
#endif

void qc_avgpool_s8(const qc_avgpool_params *p, const int8_t *input, int8_t *output)
{
    const int32_t ps = p->in_ps;
    int32_t c;

#if defined(__ARM_FEATURE_DSP)
    if (p->in_cs == 1 && p->kernel_h * p->kernel_w <= 256) {
        qc_avgpool_hwc_s8(p, input, output);
        return;
    }
#endif

    for (c = 0; c < p->channels; ++c) {
        const int8_t *in_ch = input + c * p->in_cs;
        int8_t *out_ch = output + c * p->out_cs;
        int32_t oy;
        for (oy = 0; oy < p->out_h; ++oy) {
            const int32_t iy0 = oy * p->stride_h - p->pad_top;
            int32_t ky_lo, ky_hi, ox;
            qc_window(iy0, 1, p->kernel_h, p->in_h, &ky_lo, &ky_hi);
            for (ox = 0; ox < p->out_w; ++ox) {
                const int32_t ix0 = ox * p->stride_w - p->pad_left;
                int32_t kx_lo, kx_hi, ky, rq_m, rq_s;
                int32_t acc = 0;
                qc_window(ix0, 1, p->kernel_w, p->in_w, &kx_lo, &kx_hi);
                qc_avgpool_rq(p, iy0, ix0, &rq_m, &rq_s);
                for (ky = ky_lo; ky < ky_hi; ++ky) {
                    const int8_t *in_row = in_ch + (iy0 + ky) * p->in_w * ps;
                    int32_t kx;
                    for (kx = kx_lo; kx < kx_hi; ++kx) {
                        acc += in_row[(ix0 + kx) * ps];
                    }
                }
                acc += (ky_hi - ky_lo) * (kx_hi - kx_lo) * p->input_offset;
                out_ch[(oy * p->out_w + ox) * p->out_ps] = qc_to_int8(qc_requantize(acc, rq_m, rq_s) + p->output_offset,
                                       p->act_min, p->act_max);
            }
        }
    }
}

void qc_global_avgpool_s8(const qc_global_avgpool_params *p, const int8_t *input, int8_t *output)
{
    int32_t c;

    for (c = 0; c < p->channels; ++c) {
        const int8_t *x = input + c * p->c_stride;
        int32_t acc = p->inner * p->input_offset;
        int32_t i;
        for (i = 0; i < p->inner; ++i) {
            acc += x[i * p->i_stride];
        }
        output[c] = qc_to_int8(qc_requantize(acc, p->multiplier, p->shift) + p->output_offset, -128, 127);
    }
}

void qc_lut_s8(const qc_lut_params *p, const int8_t *input, int8_t *output)
{
    const int8_t *table = p->table + 128;
    int32_t i;

    for (i = 0; i < p->size; ++i) {
        output[i] = table[input[i]];
    }
}

void qc_prelu_s8(const qc_prelu_params *p, const int8_t *input, int8_t *output)
{
    int32_t c;

    for (c = 0; c < p->channels; ++c) {
        const int8_t *x = input + c * p->c_stride;
        int8_t *y = output + c * p->c_stride;
        const int32_t neg_multiplier = p->neg_multiplier[c];
        const int32_t neg_shift = p->neg_shift[c];
        int32_t i;
        for (i = 0; i < p->inner; ++i) {
            const int32_t v = x[i * p->i_stride] + p->input_offset;
            const int32_t r = v >= 0 ? qc_requantize(v, p->pos_multiplier, p->pos_shift)
                                     : qc_requantize(v, neg_multiplier, neg_shift);
            y[i * p->i_stride] = qc_to_int8(r + p->output_offset, -128, 127);
        }
    }
}

void qc_concat_s8(const qc_concat_params *p, const int8_t *input, int8_t *output)
{
    const int same = p->multiplier == (INT32_C(1) << 30) && p->shift == 1 && p->input_offset + p->output_offset == 0;
    int32_t c, i;

    if (same && p->in_cs == p->out_cs && p->in_ps == 1 && p->out_ps == 1) {
        /* same quantization, planes contiguous: requantize((x - zp) * 1.0) + zp == x, a plain copy */
        for (c = 0; c < p->channels; ++c) {
            memcpy(output + c * p->out_cs, input + c * p->in_cs, (size_t)p->pixels);
        }
        return;
    }
    for (i = 0; i < p->pixels; ++i) {
        const int8_t *x = input + i * p->in_ps;
        int8_t *y = output + i * p->out_ps;
        for (c = 0; c < p->channels; ++c) {
            const int32_t v = x[c * p->in_cs];
            y[c * p->out_cs] = same ? (int8_t)v
                                    : qc_to_int8(qc_requantize(v + p->input_offset, p->multiplier, p->shift)
                                                 + p->output_offset, -128, 127);
        }
    }
}

void qc_pad_s8(const qc_pad_params *p, const int8_t *input, int8_t *output)
{
    const int32_t sh = p->stride_h, sw = p->stride_w;
    const int32_t out_w = p->pad_left + (p->in_w - 1) * sw + 1 + p->pad_right;
    const int32_t out_h = p->pad_top + (p->in_h - 1) * sh + 1 + p->pad_bottom;
    const int8_t value = (int8_t)p->value;
    int32_t c, y, x;

    if (sh != 1 || sw != 1) { /* zero insertion: fill, then place the input samples */
        for (c = 0; c < p->channels; ++c) {
            const int8_t *in_ch = input + c * p->in_cs;
            int8_t *out_ch = output + c * p->out_cs;
            for (y = 0; y < out_h * out_w; ++y) {
                out_ch[y * p->out_ps] = value;
            }
            for (y = 0; y < p->in_h; ++y) {
                const int32_t oy = p->pad_top + y * sh;
                for (x = 0; x < p->in_w; ++x) {
                    out_ch[(oy * out_w + p->pad_left + x * sw) * p->out_ps] = in_ch[(y * p->in_w + x) * p->in_ps];
                }
            }
        }
        return;
    }
    for (c = 0; c < p->channels; ++c) {
        const int8_t *in_ch = input + c * p->in_cs;
        int8_t *out_ch = output + c * p->out_cs;
        for (y = 0; y < out_h; ++y) {
            const int32_t iy = y - p->pad_top;
            const int row_ok = iy >= 0 && iy < p->in_h;
            for (x = 0; x < out_w; ++x) {
                const int32_t ix = x - p->pad_left;
                out_ch[(y * out_w + x) * p->out_ps] =
                    row_ok && ix >= 0 && ix < p->in_w ? in_ch[(iy * p->in_w + ix) * p->in_ps] : value;
            }
        }
    }
}

void qc_copy_s8(const qc_copy_params *p, const int8_t *input, int8_t *output)
{
    const int32_t n = p->dims[QC_COPY_DIMS - 1];
    const int32_t is = p->in_strides[QC_COPY_DIMS - 1], os = p->out_strides[QC_COPY_DIMS - 1];
    int32_t idx[QC_COPY_DIMS - 1] = {0, 0, 0, 0, 0};
    int32_t d;

    for (d = 0; d < QC_COPY_DIMS; ++d) {
        if (p->dims[d] <= 0) {
            return;
        }
    }
    for (;;) {
        const int8_t *x = input;
        int8_t *y = output;
        int32_t i;
        for (d = 0; d < QC_COPY_DIMS - 1; ++d) {
            x += idx[d] * p->in_strides[d];
            y += idx[d] * p->out_strides[d];
        }
        if (p->requant) {
            for (i = 0; i < n; ++i) {
                y[i * os] = qc_to_int8(qc_requantize(x[i * is] + p->input_offset, p->multiplier, p->shift)
                                       + p->output_offset, -128, 127);
            }
        } else if (is == 1 && os == 1) {
            memcpy(y, x, (size_t)n);
        } else {
            for (i = 0; i < n; ++i) {
                y[i * os] = x[i * is];
            }
        }
        for (d = QC_COPY_DIMS - 2; d >= 0; --d) {  /* odometer over the outer dims */
            if (++idx[d] < p->dims[d]) {
                break;
            }
            idx[d] = 0;
        }
        if (d < 0) {
            return;
        }
    }
}

void qc_resize_s8(const qc_resize_params *p, const int8_t *input, int8_t *output)
{
    const int32_t ps = p->in_ps, off = p->input_offset;
    int32_t c, oy, ox;

    for (c = 0; c < p->channels; ++c) {
        const int8_t *in_ch = input + c * p->in_cs;
        int8_t *out_ch = output + c * p->out_cs;
        for (oy = 0; oy < p->out_h; ++oy) {
            const int32_t *r = p->rows + 4 * oy;
            const int8_t *row0 = in_ch + r[0] * p->in_w * ps;
            const int8_t *row1 = in_ch + r[1] * p->in_w * ps;
            for (ox = 0; ox < p->out_w; ++ox) {
                const int32_t *k = p->cols + 4 * ox;
                const int32_t top = r[2] * (row0[k[0] * ps] + off) + r[3] * (row1[k[0] * ps] + off);
                const int32_t bottom = r[2] * (row0[k[1] * ps] + off) + r[3] * (row1[k[1] * ps] + off);
                const int32_t acc = top * k[2] + bottom * k[3];
                out_ch[(oy * p->out_w + ox) * p->out_ps] =
                    qc_to_int8(qc_requantize(acc, p->multiplier, p->shift) + p->output_offset, -128, 127);
            }
        }
    }
}

void qc_minmax_s8(const qc_minmax_params *p, const int8_t *input1, const int8_t *input2, int8_t *output)
{
    int32_t i;

    for (i = 0; i < p->size; ++i) {
        const int32_t a = qc_clamp(qc_requantize(input1[i] + p->input1_offset, p->input1_multiplier, p->input1_shift)
                                   + p->output_offset, -128, 127);
        const int32_t b = qc_clamp(qc_requantize(input2[i] + p->input2_offset, p->input2_multiplier, p->input2_shift)
                                   + p->output_offset, -128, 127);
        output[i] = (int8_t)(p->is_max ? (a > b ? a : b) : (a < b ? a : b));
    }
}

void qc_softmax_s8(const qc_softmax_params *p, const int8_t *input, int8_t *output)
{
    const int32_t n = p->row_size;
    int32_t r;

    for (r = 0; r < p->rows; ++r) {
        const int8_t *x = input + r * n;
        int8_t *y = output + r * n;
        int32_t max = x[0];
        uint64_t sum = 0;
        int32_t i;
        for (i = 1; i < n; ++i) {
            if (x[i] > max) {
                max = x[i];
            }
        }
        for (i = 0; i < n; ++i) {
            sum += p->exp_table[max - x[i]];
        }
        for (i = 0; i < n; ++i) {
            /* out = ((e << 8) + sum / 2) / sum; the interpreter's numpy division by 0 gives 0. */
            const uint64_t q = sum == 0 ? 0 : (((uint64_t)p->exp_table[max - x[i]] << 8) + (sum >> 1)) / sum;
            y[i] = qc_to_int8((int32_t)q + p->output_offset, -128, 127);
        }
    }
}
