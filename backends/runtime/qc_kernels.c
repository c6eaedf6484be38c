/*
 * qc_kernels.c - portable C99 reference kernels (see qc_kernels.h for the conventions).
 *
 * Each kernel mirrors one rule of the reference interpreter (backends/interpreter.py) and
 * must stay bit-exact with it. Loop invariants are hoisted; window bounds are found once per
 * output row/column so the inner multiply-accumulate loops carry no bounds checks.
 */
#include "qc_kernels.h"

#include <string.h>

/*
 * Window taps k in [0, count) read position start + k * step; return in [*lo, *hi) the taps
 * that fall inside [0, limit). Positions grow with k, so the valid taps are contiguous.
 */
static void qc_window(int32_t start, int32_t step, int32_t count, int32_t limit, int32_t *lo, int32_t *hi)
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

static int8_t qc_to_int8(int32_t v, int32_t act_min, int32_t act_max)
{
    return (int8_t)qc_clamp(v, act_min, act_max);
}

void qc_conv2d_s8(const qc_conv2d_params *p, const int8_t *input, int8_t *output)
{
    const int32_t in_plane = p->in_h * p->in_w;
    const int32_t out_plane = p->out_h * p->out_w;
    const int32_t cin_group = p->in_c / p->groups;
    const int32_t cout_group = p->out_c / p->groups;
    const int32_t taps = p->kernel_h * p->kernel_w;
    const int32_t input_offset = p->input_offset;
    int32_t co;

    for (co = 0; co < p->out_c; ++co) {
        const int8_t *in_group = input + (co / cout_group) * cin_group * in_plane;
        const int8_t *w_co = p->weight + co * cin_group * taps;
        const int32_t bias = p->bias[co];
        const int32_t multiplier = p->multiplier[co];
        const int32_t shift = p->shift[co];
        int8_t *out_co = output + co * out_plane;
        int32_t oy;

        for (oy = 0; oy < p->out_h; ++oy) {
            const int32_t iy0 = oy * p->stride_h - p->pad_top;
            int32_t ky_lo, ky_hi, ox;
            qc_window(iy0, p->dilation_h, p->kernel_h, p->in_h, &ky_lo, &ky_hi);

            for (ox = 0; ox < p->out_w; ++ox) {
                const int32_t ix0 = ox * p->stride_w - p->pad_left;
                int32_t kx_lo, kx_hi, ci;
                int32_t acc = bias;
                qc_window(ix0, p->dilation_w, p->kernel_w, p->in_w, &kx_lo, &kx_hi);

                for (ci = 0; ci < cin_group; ++ci) {
                    const int8_t *in_ch = in_group + ci * in_plane;
                    const int8_t *w_ch = w_co + ci * taps;
                    int32_t ky;
                    for (ky = ky_lo; ky < ky_hi; ++ky) {
                        const int8_t *in_row = in_ch + (iy0 + ky * p->dilation_h) * p->in_w;
                        const int8_t *w_row = w_ch + ky * p->kernel_w;
                        int32_t kx;
                        for (kx = kx_lo; kx < kx_hi; ++kx) {
                            acc += w_row[kx] * (in_row[ix0 + kx * p->dilation_w] + input_offset);
                        }
                    }
                }
                out_co[oy * p->out_w + ox] =
                    qc_to_int8(qc_requantize(acc, multiplier, shift) + p->output_offset, p->act_min, p->act_max);
            }
        }
    }
}

void qc_dense_s8(const qc_dense_params *p, const int8_t *input, int8_t *output)
{
    const int32_t input_offset = p->input_offset;
    int32_t o;

    for (o = 0; o < p->out_features; ++o) {
        const int8_t *w_row = p->weight + o * p->in_features;
        int32_t acc = p->bias[o];
        int32_t i;
        for (i = 0; i < p->in_features; ++i) {
            acc += w_row[i] * (input[i] + input_offset);
        }
        output[o] = qc_to_int8(qc_requantize(acc, p->multiplier[o], p->shift[o]) + p->output_offset,
                               p->act_min, p->act_max);
    }
}

void qc_add_s8(const qc_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output)
{
    const int64_t scale = (int64_t)1 << p->left_shift;
    int32_t i;

    for (i = 0; i < p->size; ++i) {
        const int32_t a = qc_requantize64((int64_t)(input1[i] + p->input1_offset) * scale,
                                          p->input1_multiplier, p->input1_shift);
        const int32_t b = qc_requantize64((int64_t)(input2[i] + p->input2_offset) * scale,
                                          p->input2_multiplier, p->input2_shift);
        const int32_t sum = qc_requantize64((int64_t)a + (int64_t)b, p->output_multiplier, p->output_shift);
        output[i] = qc_to_int8(sum + p->output_offset, p->act_min, p->act_max);
    }
}

void qc_mul_s8(const qc_mul_params *p, const int8_t *input1, const int8_t *input2, int8_t *output)
{
    int32_t c;

    for (c = 0; c < p->channels; ++c) {
        const int32_t b = input2[c] + p->input2_offset;
        const int8_t *x = input1 + c * p->inner;
        int8_t *y = output + c * p->inner;
        int32_t i;
        for (i = 0; i < p->inner; ++i) {
            const int32_t prod = (x[i] + p->input1_offset) * b;
            y[i] = qc_to_int8(qc_requantize(prod, p->multiplier, p->shift) + p->output_offset,
                              p->act_min, p->act_max);
        }
    }
}

void qc_maxpool_s8(const qc_maxpool_params *p, const int8_t *input, int8_t *output)
{
    const int32_t in_plane = p->in_h * p->in_w;
    int32_t c;

    for (c = 0; c < p->channels; ++c) {
        const int8_t *in_ch = input + c * in_plane;
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
                    const int8_t *in_row = in_ch + (iy0 + ky) * p->in_w;
                    int32_t kx;
                    for (kx = kx_lo; kx < kx_hi; ++kx) {
                        if (in_row[ix0 + kx] > best) {
                            best = in_row[ix0 + kx];
                        }
                    }
                }
                *output++ = qc_to_int8(best, p->act_min, p->act_max);
            }
        }
    }
}

void qc_avgpool_s8(const qc_avgpool_params *p, const int8_t *input, int8_t *output)
{
    const int32_t in_plane = p->in_h * p->in_w;
    int32_t c;

    for (c = 0; c < p->channels; ++c) {
        const int8_t *in_ch = input + c * in_plane;
        int32_t oy;
        for (oy = 0; oy < p->out_h; ++oy) {
            const int32_t iy0 = oy * p->stride_h - p->pad_top;
            int32_t ky_lo, ky_hi, ox;
            qc_window(iy0, 1, p->kernel_h, p->in_h, &ky_lo, &ky_hi);
            for (ox = 0; ox < p->out_w; ++ox) {
                const int32_t ix0 = ox * p->stride_w - p->pad_left;
                int32_t kx_lo, kx_hi, ky;
                int32_t acc = 0;
                qc_window(ix0, 1, p->kernel_w, p->in_w, &kx_lo, &kx_hi);
                for (ky = ky_lo; ky < ky_hi; ++ky) {
                    const int8_t *in_row = in_ch + (iy0 + ky) * p->in_w;
                    int32_t kx;
                    for (kx = kx_lo; kx < kx_hi; ++kx) {
                        acc += in_row[ix0 + kx];
                    }
                }
                acc += (ky_hi - ky_lo) * (kx_hi - kx_lo) * p->input_offset;
                *output++ = qc_to_int8(qc_requantize(acc, p->multiplier, p->shift) + p->output_offset,
                                       p->act_min, p->act_max);
            }
        }
    }
}

void qc_global_avgpool_s8(const qc_global_avgpool_params *p, const int8_t *input, int8_t *output)
{
    int32_t c;

    for (c = 0; c < p->channels; ++c) {
        const int8_t *x = input + c * p->inner;
        int32_t acc = p->inner * p->input_offset;
        int32_t i;
        for (i = 0; i < p->inner; ++i) {
            acc += x[i];
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
        const int8_t *x = input + c * p->inner;
        int8_t *y = output + c * p->inner;
        const int32_t neg_multiplier = p->neg_multiplier[c];
        const int32_t neg_shift = p->neg_shift[c];
        int32_t i;
        for (i = 0; i < p->inner; ++i) {
            const int32_t v = x[i] + p->input_offset;
            const int32_t r = v >= 0 ? qc_requantize(v, p->pos_multiplier, p->pos_shift)
                                     : qc_requantize(v, neg_multiplier, neg_shift);
            y[i] = qc_to_int8(r + p->output_offset, -128, 127);
        }
    }
}

void qc_concat_s8(const qc_concat_params *p, const int8_t *input, int8_t *output)
{
    int32_t i;

    /* Same quantization on both sides: requantize((x - zp) * 1.0) + zp == x, a plain copy. */
    if (p->multiplier == (INT32_C(1) << 30) && p->shift == 1 && p->input_offset + p->output_offset == 0) {
        memcpy(output, input, (size_t)p->size);
        return;
    }
    for (i = 0; i < p->size; ++i) {
        output[i] = qc_to_int8(qc_requantize(input[i] + p->input_offset, p->multiplier, p->shift) + p->output_offset,
                               -128, 127);
    }
}

void qc_pad_s8(const qc_pad_params *p, const int8_t *input, int8_t *output)
{
    const int32_t out_w = p->pad_left + p->in_w + p->pad_right;
    const int value = (int)p->value;
    int32_t c;

    for (c = 0; c < p->channels; ++c) {
        int32_t y;
        memset(output, value, (size_t)(p->pad_top * out_w));
        output += p->pad_top * out_w;
        for (y = 0; y < p->in_h; ++y) {
            memset(output, value, (size_t)p->pad_left);
            memcpy(output + p->pad_left, input, (size_t)p->in_w);
            memset(output + p->pad_left + p->in_w, value, (size_t)p->pad_right);
            output += out_w;
            input += p->in_w;
        }
        memset(output, value, (size_t)(p->pad_bottom * out_w));
        output += p->pad_bottom * out_w;
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
