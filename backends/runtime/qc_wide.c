/*
 * qcompile runtime: the int64 accumulation path for Conv2D / Dense layers whose partial sums can
 * exceed int32 (see qc_conv_wide_params in qc_kernels.h). Portable C, no SIMD: the compiler turns
 * the multiply-accumulate into SMLAL on Cortex-M3/M4/M7. These layers are rare (fan-in beyond
 * ~66k at 8 bits); correctness, not speed, is the point.
 */
#include <stddef.h>

#include "qc_kernels.h"

void qc_conv_wide_s8(const qc_conv_wide_params *p, const int8_t *input, int8_t *output)
{
    const int32_t k = p->kernel_h * p->kernel_w * p->cin_group;
    for (int32_t co = 0; co < p->out_c; ++co) {
        const int32_t g = co / p->cout_group;
        const int8_t *w_row = p->weight + (size_t)co * (size_t)k;
        const int8_t *in_g = input + (size_t)(g * p->cin_group) * (size_t)p->in_cs;
        for (int32_t oy = 0; oy < p->out_h; ++oy) {
            for (int32_t ox = 0; ox < p->out_w; ++ox) {
                int64_t acc = p->bias[co];
                const int8_t *w = w_row;
                for (int32_t ky = 0; ky < p->kernel_h; ++ky) {
                    const int32_t iy = oy * p->stride_h - p->pad_top + ky * p->dilation_h;
                    for (int32_t kx = 0; kx < p->kernel_w; ++kx, w += p->cin_group) {
                        const int32_t ix = ox * p->stride_w - p->pad_left + kx * p->dilation_w;
                        if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                            continue; /* padding: x + input_offset == 0 */
                        }
                        const int8_t *x = in_g + (size_t)(iy * p->in_w + ix) * (size_t)p->in_ps;
                        for (int32_t ci = 0; ci < p->cin_group; ++ci) {
                            acc += (int64_t)((int32_t)w[ci] * ((int32_t)x[(size_t)ci * (size_t)p->in_cs] + p->input_offset));
                        }
                    }
                }
                int32_t y = qc_requantize64(acc, p->multiplier[co], p->shift[co]) + p->output_offset;
                y = y < p->act_min ? p->act_min : (y > p->act_max ? p->act_max : y);
                output[(size_t)co * (size_t)p->out_cs + (size_t)(oy * p->out_w + ox) * (size_t)p->out_ps] = (int8_t)y;
            }
        }
    }
}
