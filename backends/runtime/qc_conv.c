/*
 * qc_conv.c - convolution, depthwise convolution and fully connected kernels
 * (see qc_kernels.h for the conventions and the weight layouts).
 *
 * Standard / grouped convolution: partial im2col of 2 output pixels into an int16 scratch
 * (input offset added, padded taps 0) then a GEMM that keeps a 2 output channels x 2 pixels
 * block of accumulators in registers: per 4 reduction indices it reads 4 weight words and 4
 * activation words and issues 8 SMLAD (16 MACs). Channels-last input with cin_group % 4 == 0
 * is expanded a word (4 channels) at a time with SXTAB16; any other layout is gathered
 * element by element. The pairing (k0,k2)(k1,k3) of each 4-block is what SXTAB16 produces
 * from 4 consecutive int8 values; the emitter stores the weights in the same order.
 *
 * Weights are stored one byte each (the "w8" channel-pair layout of qc_kernels.h: one SXTB16
 * per weight word serves both channels of a pair) unless the emitter could not prove that layout
 * exact for a layer, which then keeps int16 pairs. On DSP cores, layers with fast requantization
 * run a whole pixel pair (every channel pair: MACs, channel split, requantization, stores) in one
 * assembly routine, qc_w8_pair_full / qc_w8_pair_clamp. Inputs that are not channels-last with
 * whole 4-channel words (e.g. the PyTorch-order graph input) are gathered element by element in
 * plain k order (k_seq = 1: the emitter pairs those layers' weights (k0,k1)(k2,k3)).
 *
 * Without the DSP extension the same loops run on the same data with plain multiplies.
 */
#include "qc_kernels.h"

#include <string.h>

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#define QC_DSP 1
#else
#define QC_DSP 0
#endif

/* ------------------------------------------------------------------ small helpers */

/* Helpers shared by the int8 kernels and the low-bit ones stay inlined into each caller (as they were
   with a single caller), so the int8 kernels' code does not depend on the low-bit ones. */
#if defined(__GNUC__)
#define QC_INLINE __attribute__((always_inline)) inline
#else
#define QC_INLINE inline
#endif

static inline uint32_t qc_pack16(int32_t lo, int32_t hi)
{
    return (uint32_t)(uint16_t)lo | ((uint32_t)(uint16_t)hi << 16);
}

static inline int32_t qc_lo16(uint32_t w)
{
    return (int32_t)(int16_t)(uint16_t)(w & 0xFFFFu);
}

static inline int32_t qc_hi16(uint32_t w)
{
    return (int32_t)(int16_t)(uint16_t)(w >> 16);
}

#if QC_DSP
static inline uint32_t qc_load32(const int8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint32_t qc_ror8(uint32_t v)
{
    return (v >> 8) | (v << 24);
}

/* (off + sext(byte 0), off + sext(byte 2)) and the same for bytes 1, 3 (one SXTAB16 each). */
static inline uint32_t qc_ext02(uint32_t off2, uint32_t v)
{
    return (uint32_t)__sxtab16((int16x2_t)off2, (int8x4_t)v);
}

static inline uint32_t qc_ext13(uint32_t off2, uint32_t v)
{
#if defined(__GNUC__)
    uint32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(off2), "r"(v));
    return r;
#else
    return (uint32_t)__sxtab16((int16x2_t)off2, (int8x4_t)qc_ror8(v));
#endif
}
#endif

/** sum += lo(a) * lo(b) + hi(a) * hi(b) (SMLAD). */
static inline int32_t qc_dot2(uint32_t a, uint32_t b, int32_t sum)
{
#if QC_DSP
    return __smlad((int16x2_t)a, (int16x2_t)b, sum);
#else
    return sum + qc_lo16(a) * qc_lo16(b) + qc_hi16(a) * qc_hi16(b);
#endif
}

static inline int8_t qc_out8(int32_t v, int32_t lo, int32_t hi)
{
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}

/* ------------------------------------------------------------------ im2col */

/*
 * One output pixel's receptive field of group g into dst: word 2*b + {0, 1} of every block b
 * (dst advances by 4 words per block, so two pixels interleave). Values are x + input_offset,
 * padded taps 0, and indices k >= K are 0.
 */
static void qc_im2col(const qc_conv_params *p, const int8_t *input, int32_t g, int32_t oy, int32_t ox,
                      uint32_t *dst, int16_t *tmp)
{
    const int32_t iy0 = oy * p->stride_h - p->pad_top;
    const int32_t ix0 = ox * p->stride_w - p->pad_left;
    const int32_t cig = p->cin_group;
    const int32_t off = p->input_offset;
    const int8_t *in_g = input + g * cig * p->in_cs;
    int32_t ky, kx;

#if QC_DSP
    if (p->in_cs == 1 && (cig & 3) == 0 && p->dilation_w == 1 && p->in_ps == cig) {
        /* channels-last, one group: the valid taps of a kernel row are one contiguous run of
           bytes; expand it a word (4 channels) at a time, zero the taps in the padding */
        const uint32_t off2 = qc_pack16(off, off);
        const int32_t row_words = p->kernel_w * cig / 4;
        int32_t kx_lo, kx_hi;
        qc_window(ix0, 1, p->kernel_w, p->in_w, &kx_lo, &kx_hi);
        for (ky = 0; ky < p->kernel_h; ++ky) {
            const int32_t iy = iy0 + ky * p->dilation_h;
            uint32_t *const row_end = dst + 4 * row_words;
            if (iy >= 0 && iy < p->in_h && kx_hi > kx_lo) {
                const int8_t *src = in_g + (iy * p->in_w + ix0 + kx_lo) * cig;
                uint32_t *const run_end = dst + 4 * (kx_hi * cig / 4);
                for (; dst < row_end - 4 * ((p->kernel_w - kx_lo) * cig / 4); dst += 4) {
                    dst[0] = 0;
                    dst[1] = 0;
                }
                for (; dst < run_end; dst += 4) {
                    const uint32_t v = qc_load32(src);
                    src += 4;
                    dst[0] = qc_ext02(off2, v);
                    dst[1] = qc_ext13(off2, v);
                }
            }
            for (; dst < row_end; dst += 4) {
                dst[0] = 0;
                dst[1] = 0;
            }
        }
        return;
    }
    if (p->in_cs == 1 && (cig & 3) == 0) {
        /* channels-last, whole blocks per tap: 4 channels per word, 2 SXTAB16 */
        const uint32_t off2 = qc_pack16(off, off);
        for (ky = 0; ky < p->kernel_h; ++ky) {
            const int32_t iy = iy0 + ky * p->dilation_h;
            for (kx = 0; kx < p->kernel_w; ++kx) {
                const int32_t ix = ix0 + kx * p->dilation_w;
                int32_t c;
                if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                    for (c = 0; c < cig; c += 4) {
                        dst[0] = 0;
                        dst[1] = 0;
                        dst += 4;
                    }
                } else {
                    const int8_t *src = in_g + (iy * p->in_w + ix) * p->in_ps;
                    for (c = 0; c < cig; c += 4) {
                        const uint32_t v = qc_load32(src + c);
                        dst[0] = qc_ext02(off2, v);
                        dst[1] = qc_ext13(off2, v);
                        dst += 4;
                    }
                }
            }
        }
        return;
    }
    if (!p->k_seq && p->dilation_w == 1 && p->in_ps == cig && (p->in_cs == 1 || cig == 1) && ix0 >= 0
        && ix0 + p->kernel_w <= p->in_w) {
        /* each window row is one contiguous run of whole words (k_seq = 0 proved it: e.g. one input
           channel, kernel_w % 4 == 0) and the pixel is clear of the left/right padding */
        const uint32_t off2 = qc_pack16(off, off);
        const int32_t row_words = p->kernel_w * cig / 4;
        for (ky = 0; ky < p->kernel_h; ++ky) {
            const int32_t iy = iy0 + ky * p->dilation_h;
            uint32_t *const row_end = dst + 4 * row_words;
            if (iy >= 0 && iy < p->in_h) {
                const int8_t *src = in_g + (iy * p->in_w + ix0) * cig;
                for (; dst < row_end; dst += 4) {
                    const uint32_t v = qc_load32(src);
                    src += 4;
                    dst[0] = qc_ext02(off2, v);
                    dst[1] = qc_ext13(off2, v);
                }
            } else {
                for (; dst < row_end; dst += 4) {
                    dst[0] = 0;
                    dst[1] = 0;
                }
            }
        }
        return;
    }
#endif
    {
        /* general layout: element by element into the int16 halves of the block words; the
           pairing is (k0,k2)(k1,k3) or, when the emitter chose it for this layer, (k0,k1)(k2,k3) */
        static const uint8_t pos_ext[4] = {0, 2, 1, 3};
        static const uint8_t pos_seq[4] = {0, 1, 2, 3};
        const uint8_t *const pos = p->k_seq ? pos_seq : pos_ext;
        unsigned char *d = (unsigned char *)dst;
        int32_t n = 0;
        if (p->k_seq) {
            /* plain k order into a compact int16 row (tmp), then 8 bytes per block into this
               pixel's half of the interleaved blocks */
            int16_t *t = tmp;
            int32_t b;
            for (ky = 0; ky < p->kernel_h; ++ky) {
                const int32_t iy = iy0 + ky * p->dilation_h;
                if (iy < 0 || iy >= p->in_h) {
                    memset(t, 0, (size_t)(p->kernel_w * cig) * sizeof(int16_t));
                    t += p->kernel_w * cig;
                    continue;
                }
                for (kx = 0; kx < p->kernel_w; ++kx) {
                    const int32_t ix = ix0 + kx * p->dilation_w;
                    int32_t c;
                    if (ix < 0 || ix >= p->in_w) {
                        for (c = 0; c < cig; ++c) {
                            *t++ = 0;
                        }
                    } else {
                        const int8_t *src = in_g + (iy * p->in_w + ix) * p->in_ps;
                        for (c = 0; c < cig; ++c) {
                            *t++ = (int16_t)(*src + off);
                            src += p->in_cs;
                        }
                    }
                }
            }
            while (t < tmp + p->k_pad) {
                *t++ = 0;
            }
            for (b = 0; b < p->k_pad / 4; ++b) {
                memcpy(dst + 4 * b, tmp + 4 * b, 8);
            }
            return;
        }
        for (ky = 0; ky < p->kernel_h; ++ky) {
            const int32_t iy = iy0 + ky * p->dilation_h;
            const int row_ok = iy >= 0 && iy < p->in_h;
            for (kx = 0; kx < p->kernel_w; ++kx) {
                const int32_t ix = ix0 + kx * p->dilation_w;
                int32_t c;
                if (row_ok && ix >= 0 && ix < p->in_w) {
                    const int8_t *src = in_g + (iy * p->in_w + ix) * p->in_ps;
                    for (c = 0; c < cig; ++c, ++n) {
                        const int16_t v = (int16_t)(src[c * p->in_cs] + off);
                        memcpy(d + 2 * ((n >> 2) * 8 + pos[n & 3]), &v, 2);
                    }
                } else {
                    for (c = 0; c < cig; ++c, ++n) {
                        memset(d + 2 * ((n >> 2) * 8 + pos[n & 3]), 0, 2);
                    }
                }
            }
        }
        for (; (n & 3) != 0; ++n) {
            memset(d + 2 * ((n >> 2) * 8 + pos[n & 3]), 0, 2);
        }
    }
}

/* ------------------------------------------------------------------ GEMM blocks */

#if QC_DSP && defined(__GNUC__)
#define QC_ASM_GEMM 1
#if !QC_THR_PAIRS
#error "qc_kernels.h declares no threshold pair routines for an assembly GEMM build"
#endif
/*
 * The DSP inner loops in assembly: one LDM of the 4 weight words of a block (both channels),
 * the activation words 2 at a time, 8 SMLAD; two blocks per iteration. GCC cannot be made to
 * emit LDM for this register set, and spills with LDR (21 instructions per block instead of 12).
 */
__attribute__((noinline)) static void qc_dot_2x2(const uint32_t *w, const uint32_t *x, int32_t blocks, int32_t *acc)
{
    int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
    const uint32_t *const x_end = x + 4 * blocks;

    if (blocks & 1) {
        __asm__ volatile(
            "ldmia %[w]!, {r4, r5, r6, r7}\n\t"
            "ldmia %[x]!, {r8, r9}\n\t"
            "smlad %[a00], r4, r8, %[a00]\n\t"
            "smlad %[a00], r5, r9, %[a00]\n\t"
            "smlad %[a10], r6, r8, %[a10]\n\t"
            "smlad %[a10], r7, r9, %[a10]\n\t"
            "ldmia %[x]!, {r8, r9}\n\t"
            "smlad %[a01], r4, r8, %[a01]\n\t"
            "smlad %[a01], r5, r9, %[a01]\n\t"
            "smlad %[a11], r6, r8, %[a11]\n\t"
            "smlad %[a11], r7, r9, %[a11]\n\t"
            : [w] "+r"(w), [x] "+r"(x), [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11)
            :
            : "r4", "r5", "r6", "r7", "r8", "r9", "memory");
    }
    if (x != x_end) {
        __asm__ volatile(
            "1:\n\t"
            "ldmia %[w]!, {r4, r5, r6, r7}\n\t"
            "ldmia %[x]!, {r8, r9}\n\t"
            "smlad %[a00], r4, r8, %[a00]\n\t"
            "smlad %[a00], r5, r9, %[a00]\n\t"
            "smlad %[a10], r6, r8, %[a10]\n\t"
            "smlad %[a10], r7, r9, %[a10]\n\t"
            "ldmia %[x]!, {r8, r9}\n\t"
            "smlad %[a01], r4, r8, %[a01]\n\t"
            "smlad %[a01], r5, r9, %[a01]\n\t"
            "smlad %[a11], r6, r8, %[a11]\n\t"
            "smlad %[a11], r7, r9, %[a11]\n\t"
            "ldmia %[w]!, {r4, r5, r6, r7}\n\t"
            "ldmia %[x]!, {r8, r9}\n\t"
            "smlad %[a00], r4, r8, %[a00]\n\t"
            "smlad %[a00], r5, r9, %[a00]\n\t"
            "smlad %[a10], r6, r8, %[a10]\n\t"
            "smlad %[a10], r7, r9, %[a10]\n\t"
            "ldmia %[x]!, {r8, r9}\n\t"
            "smlad %[a01], r4, r8, %[a01]\n\t"
            "smlad %[a01], r5, r9, %[a01]\n\t"
            "smlad %[a11], r6, r8, %[a11]\n\t"
            "smlad %[a11], r7, r9, %[a11]\n\t"
            "cmp %[x], %[end]\n\t"
            "bne 1b\n\t"
            : [w] "+r"(w), [x] "+r"(x), [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11)
            : [end] "r"(x_end)
            : "r4", "r5", "r6", "r7", "r8", "r9", "cc", "memory");
    }
    acc[0] = a00;
    acc[1] = a01;
    acc[2] = a10;
    acc[3] = a11;
}

/*
 * int8 weights (see "w8" in qc_kernels.h): per block one LDM of the 2 raw weight words of the
 * channel pair, 2 SXTB16, 8 SMLAD; acc = {S(p0), S(p1), R(p0), R(p1)}.
 */
#define QC_W8_BLOCK_2X2 \
    "ldmia %[w]!, {r4, r5}\n\t" \
    "sxtb16 r6, r4\n\t" \
    "sxtb16 r7, r5\n\t" \
    "ldmia %[x]!, {r8, r9}\n\t" \
    "smlad %[a00], r6, r8, %[a00]\n\t" \
    "smlad %[a00], r7, r9, %[a00]\n\t" \
    "smlad %[a10], r4, r8, %[a10]\n\t" \
    "smlad %[a10], r5, r9, %[a10]\n\t" \
    "ldmia %[x]!, {r8, r9}\n\t" \
    "smlad %[a01], r6, r8, %[a01]\n\t" \
    "smlad %[a01], r7, r9, %[a01]\n\t" \
    "smlad %[a11], r4, r8, %[a11]\n\t" \
    "smlad %[a11], r5, r9, %[a11]\n\t"

__attribute__((noinline)) static void qc_dot_2x2_w8(const uint32_t *w, const uint32_t *x, int32_t blocks,
                                                    int32_t *acc)
{
    int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
    const uint32_t *const x_end = x + 4 * blocks;

    if (blocks & 1) {
        __asm__ volatile(QC_W8_BLOCK_2X2
            : [w] "+r"(w), [x] "+r"(x), [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11)
            :
            : "r4", "r5", "r6", "r7", "r8", "r9", "memory");
    }
    if (x != x_end) {
        __asm__ volatile(
            "1:\n\t"
            QC_W8_BLOCK_2X2
            QC_W8_BLOCK_2X2
            "cmp %[x], %[end]\n\t"
            "bne 1b\n\t"
            : [w] "+r"(w), [x] "+r"(x), [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11)
            : [end] "r"(x_end)
            : "r4", "r5", "r6", "r7", "r8", "r9", "cc", "memory");
    }
    acc[0] = a00;
    acc[1] = a01;
    acc[2] = a10;
    acc[3] = a11;
}

/*
 * Fused int8-weight pixel pair (conv with rq_fast, w8_shift 1, multipliers >= 0, channels-last
 * output, even channel count): for every channel pair, the whole reduction (2 x 2 block, 13
 * instructions per 16 MACs), the channel split with the pre-scaled bias, the fast requantization
 * and the stores, in registers. Requantization per output: SMMLAR (multiply-high + round term),
 * the sign correction from the accumulator's sign (equivalent to the product's: see
 * qc_rq_fast; for a zero product both give the output offset), a shift and SSAT.
 */
typedef struct {
    const uint32_t *w;          /*  0: first channel pair's weights */
    const uint32_t *x;          /*  4: im2col of the 2 pixels */
    const uint32_t *x_end;      /*  8 */
    const int32_t *bias;        /* 12: pre-scaled by 2 */
    const qc_rq *rq;            /* 16 */
    int8_t *out0, *out1;        /* 20, 24 */
    const uint32_t *w_end;      /* 28 */
    int32_t rem;                /* 32: (blocks - 1) % 4 (W4: blocks % 2) */
    int32_t lo, hi;             /* 36, 40 */
    const void *thr;            /* 44: threshold routines: the first channel's row, advanced by them */
    int32_t thr_offset;         /* 48: their output offset */
} qc_w8_job;

#define QC_W8F_BLOCK \
    "ldmia r0!, {r4, r5}\n\t" \
    "sxtb16 r6, r4\n\t" \
    "sxtb16 r7, r5\n\t" \
    "ldmia r1!, {r8, r9}\n\t" \
    "smlad r3, r6, r8, r3\n\t" \
    "smlad r3, r7, r9, r3\n\t" \
    "smlad r11, r4, r8, r11\n\t" \
    "smlad r11, r5, r9, r11\n\t" \
    "ldmia r1!, {r8, r9}\n\t" \
    "smlad r10, r6, r8, r10\n\t" \
    "smlad r10, r7, r9, r10\n\t" \
    "smlad r12, r4, r8, r12\n\t" \
    "smlad r12, r5, r9, r12\n\t"

#define QC_W8F_RQ(acc, m, sh, rnd) \
    "smmlar r1, " acc ", " m ", " rnd "\n\t" \
    "add r1, r1, " acc ", asr #31\n\t" \
    "asr r1, r1, " sh "\n\t" \
    "ssat " acc ", #8, r1\n\t"

#define QC_W8F_CLAMP(acc) \
    "cmp " acc ", r4\n\t" \
    "it lt\n\t" \
    "movlt " acc ", r4\n\t" \
    "cmp " acc ", r5\n\t" \
    "it gt\n\t" \
    "movgt " acc ", r5\n\t"

/* The first block of a pair: SMUAD starts the accumulators (no zeroing). */
#define QC_W8F_BLOCK_FIRST \
    "ldmia r0!, {r4, r5}\n\t" \
    "sxtb16 r6, r4\n\t" \
    "sxtb16 r7, r5\n\t" \
    "ldmia r1!, {r8, r9}\n\t" \
    "smuad r3, r6, r8\n\t" \
    "smlad r3, r7, r9, r3\n\t" \
    "smuad r11, r4, r8\n\t" \
    "smlad r11, r5, r9, r11\n\t" \
    "ldmia r1!, {r8, r9}\n\t" \
    "smuad r10, r6, r8\n\t" \
    "smlad r10, r7, r9, r10\n\t" \
    "smuad r12, r4, r8\n\t" \
    "smlad r12, r5, r9, r12\n\t"

/*
 * blocks = 1 + rem + 4 q (rem = job->rem): the first block, then TBB jumps into a chain of 3
 * blocks so that rem of them run, then q iterations of 4 blocks. Leaves S(p0), S(p1), R(p0),
 * R(p1) in r3, r10, r11, r12 and the job in lr.
 */
#define QC_W8F_MACS \
    "push {r0, r4, r5, r6, r7, r8, r9, r10, r11, lr}\n\t" \
    "ldr r0, [r0, #0]\n\t" \
    "1:\n\t" \
    "ldr lr, [sp]\n\t" \
    "ldrd r1, r2, [lr, #4]\n\t" \
    "ldr lr, [lr, #32]\n\t" \
    QC_W8F_BLOCK_FIRST \
    "tbb [pc, lr]\n\t" \
    "9:\n\t" \
    ".byte ((2f - 9b) / 2), ((61f - 9b) / 2), ((62f - 9b) / 2), ((63f - 9b) / 2)\n\t" \
    "63:\n\t" \
    QC_W8F_BLOCK \
    "62:\n\t" \
    QC_W8F_BLOCK \
    "61:\n\t" \
    QC_W8F_BLOCK \
    "2:\n\t" \
    "cmp r1, r2\n\t" \
    "beq 4f\n\t" \
    "3:\n\t" \
    QC_W8F_BLOCK \
    QC_W8F_BLOCK \
    QC_W8F_BLOCK \
    QC_W8F_BLOCK \
    "cmp r1, r2\n\t" \
    "bne 3b\n\t" \
    "4:\n\t" \
    "ldr lr, [sp]\n\t"

/* The channel split with the bias: channel e = S * 2^sh + bias_e, channel o = ((R - S) >> (8 - sh))
   + bias_o (qc_w8_split); SH_O is "asr #(8 - sh)", SH_E "lsl #sh". */
#define QC_W8F_SPLIT(SH_O, SH_E) \
    "ldr r1, [lr, #12]\n\t" \
    "ldmia r1!, {r4, r5}\n\t" \
    "str r1, [lr, #12]\n\t" \
    "sub r11, r11, r3\n\t" \
    "sub r12, r12, r10\n\t" \
    "add r11, r5, r11, " SH_O "\n\t" \
    "add r12, r5, r12, " SH_O "\n\t" \
    "add r3, r4, r3, " SH_E "\n\t" \
    "add r10, r4, r10, " SH_E "\n\t"

#define QC_W8F_HEAD \
    QC_W8F_MACS \
    QC_W8F_SPLIT("asr #7", "lsl #1") \
    "ldr r1, [lr, #16]\n\t" \
    "ldmia r1!, {r4, r5, r6, r7, r8, r9}\n\t" \
    "str r1, [lr, #16]\n\t" \
    QC_W8F_RQ("r3", "r4", "r5", "r6") \
    QC_W8F_RQ("r10", "r4", "r5", "r6") \
    QC_W8F_RQ("r11", "r7", "r8", "r9") \
    QC_W8F_RQ("r12", "r7", "r8", "r9")

#define QC_W8F_TAIL \
    "ldrd r1, r2, [lr, #20]\n\t" \
    "strb r3, [r1], #1\n\t" \
    "strb r11, [r1], #1\n\t" \
    "strb r10, [r2], #1\n\t" \
    "strb r12, [r2], #1\n\t" \
    "strd r1, r2, [lr, #20]\n\t" \
    "ldr r1, [lr, #28]\n\t" \
    "cmp r0, r1\n\t" \
    "bne 1b\n\t" \
    "pop {r0, r4, r5, r6, r7, r8, r9, r10, r11, pc}\n\t"

/* Outputs in the full int8 range (act_min = -128, act_max = 127). */
__attribute__((naked, noinline)) static void qc_w8_pair_full(const void *job)
{
    (void)job;
    __asm__ volatile(QC_W8F_HEAD QC_W8F_TAIL);
}

/* Outputs clamped to [lo, hi]. */
__attribute__((naked, noinline)) static void qc_w8_pair_clamp(const void *job)
{
    (void)job;
    __asm__ volatile(QC_W8F_HEAD
                     "ldrd r4, r5, [lr, #36]\n\t"
                     QC_W8F_CLAMP("r3") QC_W8F_CLAMP("r10") QC_W8F_CLAMP("r11") QC_W8F_CLAMP("r12")
                     QC_W8F_TAIL);
}
#else
#define QC_ASM_GEMM 0
#endif

/* SXTB16: (sext byte 0, sext byte 2) as two int16 halves. */
static inline uint32_t qc_sxtb16(uint32_t v)
{
#if QC_DSP
    return (uint32_t)__sxtb16((int8x4_t)v);
#else
    return qc_pack16((int8_t)(uint8_t)(v & 0xFFu), (int8_t)(uint8_t)((v >> 16) & 0xFFu));
#endif
}

/* R-accumulator step of the int8 layout: wraps modulo 2^32 like SMLAD (no signed overflow in C). */
static inline int32_t qc_dot2_wrap(uint32_t a, uint32_t b, int32_t sum)
{
#if QC_DSP
    return __smlad((int16x2_t)a, (int16x2_t)b, sum);
#else
    return (int32_t)((uint32_t)sum + (uint32_t)(qc_lo16(a) * qc_lo16(b)) + (uint32_t)(qc_hi16(a) * qc_hi16(b)));
#endif
}

/*
 * Recover the two channels of every pair of an int8-weight GEMM (started from 0): acc[2i] = S
 * (channel e), acc[2i + 1] = R; afterwards both hold the accumulators scaled by 2^shift plus
 * the bias (pre-scaled by 2^shift, like the int16 layout's).
 */
static void qc_w8_split(int32_t *acc, const int32_t *bias, int32_t n, int32_t shift)
{
    int32_t i;
    for (i = 0; i < n; i += 2) {
        const int32_t s = acc[i];
        const uint32_t d = (uint32_t)acc[i + 1] - (uint32_t)s;  /* 256 * sum w_o x, exactly */
        acc[i] = (int32_t)((uint32_t)s << shift) + bias[i];
        acc[i + 1] = ((int32_t)d >> (8 - shift)) + bias[i + 1];
    }
}

#define QC_CHUNK 32  /* output channels accumulated before one requantization pass */

/*
 * Requantize, clamp and store n accumulators to out[i * stride]. Kept out of line: the MAC
 * loops then keep their registers, and this loop keeps its own.
 */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void qc_requant_store(const int32_t *acc, int32_t n, const qc_rq *rq, int8_t *out, int32_t stride,
                             int32_t lo, int32_t hi, int fast)
{
    int32_t i;
#if QC_DSP && defined(__GNUC__)
    if (fast && stride == 1 && n > 0) {
        /* 13-15 instructions per output: LDM of the {multiplier, shift, round} record */
        const int32_t *const end = acc + n;
        int32_t a;
        if (hi == 127 && lo == -128) {
            /* 9 instructions per output: SMMLAR adds the round term; the sign correction comes
               from the accumulator (the emitter's fast form has multipliers >= 0, so the
               product has the accumulator's sign or is 0, where both give the same result) */
            __asm__ volatile(
                "1:\n\t"
                "ldr %[a], [%[acc]], #4\n\t"
                "ldmia %[q]!, {r4, r5, r6}\n\t"
                "smmlar r6, %[a], r4, r6\n\t"
                "add r6, r6, %[a], asr #31\n\t"
                "asr r6, r6, r5\n\t"
                "ssat r6, #8, r6\n\t"
                "strb r6, [%[out]], #1\n\t"
                "cmp %[acc], %[end]\n\t"
                "bne 1b\n\t"
                : [a] "=&r"(a), [acc] "+r"(acc), [q] "+r"(rq), [out] "+r"(out)
                : [end] "r"(end)
                : "r4", "r5", "r6", "cc", "memory");
        } else if (hi == 127) {
            __asm__ volatile(
                "1:\n\t"
                "ldr %[a], [%[acc]], #4\n\t"
                "ldmia %[q]!, {r4, r5, r6}\n\t"
                "smmulr %[a], %[a], r4\n\t"
                "add r6, r6, %[a], asr #31\n\t"
                "add %[a], %[a], r6\n\t"
                "asr %[a], %[a], r5\n\t"
                "ssat %[a], #8, %[a]\n\t"
                "cmp %[a], %[lo]\n\t"
                "it lt\n\t"
                "movlt %[a], %[lo]\n\t"
                "strb %[a], [%[out]], #1\n\t"
                "cmp %[acc], %[end]\n\t"
                "bne 1b\n\t"
                : [a] "=&r"(a), [acc] "+r"(acc), [q] "+r"(rq), [out] "+r"(out)
                : [lo] "r"(lo), [end] "r"(end)
                : "r4", "r5", "r6", "cc", "memory");
        } else {
            __asm__ volatile(
                "1:\n\t"
                "ldr %[a], [%[acc]], #4\n\t"
                "ldmia %[q]!, {r4, r5, r6}\n\t"
                "smmulr %[a], %[a], r4\n\t"
                "add r6, r6, %[a], asr #31\n\t"
                "add %[a], %[a], r6\n\t"
                "asr %[a], %[a], r5\n\t"
                "cmp %[a], %[lo]\n\t"
                "it lt\n\t"
                "movlt %[a], %[lo]\n\t"
                "cmp %[a], %[hi]\n\t"
                "it gt\n\t"
                "movgt %[a], %[hi]\n\t"
                "strb %[a], [%[out]], #1\n\t"
                "cmp %[acc], %[end]\n\t"
                "bne 1b\n\t"
                : [a] "=&r"(a), [acc] "+r"(acc), [q] "+r"(rq), [out] "+r"(out)
                : [lo] "r"(lo), [hi] "r"(hi), [end] "r"(end)
                : "r4", "r5", "r6", "cc", "memory");
        }
        return;
    }
#endif
    if (fast) {
        for (i = 0; i < n; ++i) {
            out[i * stride] = qc_out8(qc_rq_fast(acc[i], &rq[i]), lo, hi);
        }
    } else {
        for (i = 0; i < n; ++i) {
            out[i * stride] = qc_out8(qc_rq_exact(acc[i], &rq[i]), lo, hi);
        }
    }
}

/*
 * The low-bit kernels' requantize-and-store (plain loops; a call site of their own keeps the int8
 * kernels' qc_requant_store compiled exactly as without them).
 */
static void qc_lb_requant_store(const int32_t *acc, int32_t n, const qc_rq *rq, int8_t *out, int32_t stride,
                                int32_t lo, int32_t hi, int fast)
{
    int32_t i;
    if (fast) {
        for (i = 0; i < n; ++i) {
            out[i * stride] = qc_out8(qc_rq_fast(acc[i], &rq[i]), lo, hi);
        }
    } else {
        for (i = 0; i < n; ++i) {
            out[i * stride] = qc_out8(qc_rq_exact(acc[i], &rq[i]), lo, hi);
        }
    }
}

/* acc0[0..1] += channels (0, 1) x pixel slot 0, acc1[0..1] the same for slot 1. */
static QC_INLINE void qc_mac_2x2(const uint32_t *w, const uint32_t *x, int32_t blocks, int32_t *acc0, int32_t *acc1, int w8)
{
#if QC_ASM_GEMM
    int32_t acc[4];
    acc[0] = acc0[0];
    acc[1] = acc1[0];
    acc[2] = acc0[1];
    acc[3] = acc1[1];
    if (w8) {
        qc_dot_2x2_w8(w, x, blocks, acc);
    } else {
        qc_dot_2x2(w, x, blocks, acc);
    }
    acc0[0] = acc[0];
    acc1[0] = acc[1];
    acc0[1] = acc[2];
    acc1[1] = acc[3];
#else
    int32_t a00 = acc0[0], a01 = acc1[0], a10 = acc0[1], a11 = acc1[1];
    int32_t b;
    if (w8) {
        for (b = 0; b < blocks; ++b) {
            const uint32_t e0 = qc_sxtb16(w[0]), e1 = qc_sxtb16(w[1]);
            a00 = qc_dot2(e0, x[0], a00);
            a00 = qc_dot2(e1, x[1], a00);
            a01 = qc_dot2(e0, x[2], a01);
            a01 = qc_dot2(e1, x[3], a01);
            a10 = qc_dot2_wrap(w[0], x[0], a10);
            a10 = qc_dot2_wrap(w[1], x[1], a10);
            a11 = qc_dot2_wrap(w[0], x[2], a11);
            a11 = qc_dot2_wrap(w[1], x[3], a11);
            w += 2;
            x += 4;
        }
        acc0[0] = a00;
        acc1[0] = a01;
        acc0[1] = a10;
        acc1[1] = a11;
        return;
    }
    for (b = 0; b < blocks; ++b) {
        a00 = qc_dot2(w[0], x[0], a00);
        a00 = qc_dot2(w[1], x[1], a00);
        a01 = qc_dot2(w[0], x[2], a01);
        a01 = qc_dot2(w[1], x[3], a01);
        a10 = qc_dot2(w[2], x[0], a10);
        a10 = qc_dot2(w[3], x[1], a10);
        a11 = qc_dot2(w[2], x[2], a11);
        a11 = qc_dot2(w[3], x[3], a11);
        w += 4;
        x += 4;
    }
    acc0[0] = a00;
    acc1[0] = a01;
    acc0[1] = a10;
    acc1[1] = a11;
#endif
}

/* acc[0..1] += channels (0, 1) x one pixel whose words are x[0], x[1] of every x_step words. */
static QC_INLINE void qc_mac_2x1(const uint32_t *w, const uint32_t *x, int32_t blocks, int32_t x_step, int32_t *acc, int w8)
{
    if (w8) {
        int32_t a0 = acc[0], a1 = acc[1];
        int32_t b;
        for (b = 0; b < blocks; ++b) {
            a0 = qc_dot2(qc_sxtb16(w[0]), x[0], a0);
            a0 = qc_dot2(qc_sxtb16(w[1]), x[1], a0);
            a1 = qc_dot2_wrap(w[0], x[0], a1);
            a1 = qc_dot2_wrap(w[1], x[1], a1);
            w += 2;
            x += x_step;
        }
        acc[0] = a0;
        acc[1] = a1;
        return;
    }
    {
        int32_t a0 = acc[0], a1 = acc[1];
        int32_t b;
        for (b = 0; b < blocks; ++b) {
            a0 = qc_dot2(w[0], x[0], a0);
            a0 = qc_dot2(w[1], x[1], a0);
            a1 = qc_dot2(w[2], x[0], a1);
            a1 = qc_dot2(w[3], x[1], a1);
            w += 4;
            x += x_step;
        }
        acc[0] = a0;
        acc[1] = a1;
    }
}

/* ------------------------------------------------------------------ kernels */

void qc_conv_s8(const qc_conv_params *p, const int8_t *input, int8_t *output, uint32_t *scratch)
{
    const int32_t n_pix = p->out_h * p->out_w;
    const int32_t blocks = p->k_pad / 4;
    const int fast = p->rq_fast != 0;
    const int32_t cs = p->out_cs;
    int32_t acc0[QC_CHUNK], acc1[QC_CHUNK];
    int16_t *const tmp = (int16_t *)(void *)(scratch + p->k_pad);  /* k_seq layers: k_pad int16 more */
    int32_t g;

    const int w8 = p->w8 != 0;
    const int32_t wpc = w8 ? blocks : 2 * blocks;  /* weight words per output channel */

    for (g = 0; g < p->groups; ++g) {
        const uint32_t *w_g = p->weight + g * p->cout_pad * wpc;
        const int32_t *bias_g = p->bias + g * p->cout_pad;
        const qc_rq *rq_g = p->rq + g * p->cout_pad;
        int8_t *out_g = output + g * p->cout_group * cs;
        int32_t pix = 0;
        int32_t oy = 0, ox = 0;

        while (pix < n_pix) {
            const int two = pix + 1 < n_pix;
            int8_t *o0 = out_g + pix * p->out_ps;
            int8_t *o1 = o0 + p->out_ps;
            int32_t c0;
#if QC_ASM_GEMM
            if (two && p->fused && cs == 1) {
                qc_w8_job job;
                qc_im2col(p, input, g, oy, ox, scratch, tmp);
                if (++ox == p->out_w) {
                    ox = 0;
                    ++oy;
                }
                qc_im2col(p, input, g, oy, ox, scratch + 2, tmp);
                if (++ox == p->out_w) {
                    ox = 0;
                    ++oy;
                }
                job.w = w_g;
                job.x = scratch;
                job.x_end = scratch + 4 * blocks;
                job.bias = bias_g;
                job.rq = rq_g;
                job.out0 = o0;
                job.out1 = o1;
                job.w_end = w_g + p->cout_pad * blocks;
                job.rem = (blocks - 1) & 3;
                job.lo = p->act_min;
                job.hi = p->act_max;
                if (p->act_min == -128 && p->act_max == 127) {
                    qc_w8_pair_full(&job);
                } else {
                    qc_w8_pair_clamp(&job);
                }
                pix += 2;
                continue;
            }
#endif
            qc_im2col(p, input, g, oy, ox, scratch, tmp);
            if (++ox == p->out_w) {
                ox = 0;
                ++oy;
            }
            if (two) {
                qc_im2col(p, input, g, oy, ox, scratch + 2, tmp);
                if (++ox == p->out_w) {
                    ox = 0;
                    ++oy;
                }
            }
            for (c0 = 0; c0 < p->cout_group; c0 += QC_CHUNK) {
                const int32_t n = p->cout_group - c0 < QC_CHUNK ? p->cout_group - c0 : QC_CHUNK;
                int32_t j;
                if (w8) {
                    memset(acc0, 0, (size_t)(n + (n & 1)) * sizeof(int32_t));
                } else {
                    memcpy(acc0, bias_g + c0, (size_t)(n + (n & 1)) * sizeof(int32_t));
                }
                if (two) {
                    memcpy(acc1, acc0, (size_t)(n + (n & 1)) * sizeof(int32_t));
                    for (j = 0; j < n; j += 2) {
                        qc_mac_2x2(w_g + (c0 + j) * wpc, scratch, blocks, acc0 + j, acc1 + j, w8);
                    }
                    if (w8) {
                        qc_w8_split(acc1, bias_g + c0, n, p->w8_shift);
                    }
                    qc_requant_store(acc1, n, rq_g + c0, o1 + c0 * cs, cs, p->act_min, p->act_max, fast);
                } else {
                    for (j = 0; j < n; j += 2) {
                        qc_mac_2x1(w_g + (c0 + j) * wpc, scratch, blocks, 4, acc0 + j, w8);
                    }
                }
                if (w8) {
                    qc_w8_split(acc0, bias_g + c0, n, p->w8_shift);
                }
                qc_requant_store(acc0, n, rq_g + c0, o0 + c0 * cs, cs, p->act_min, p->act_max, fast);
            }
            pix += two ? 2 : 1;
        }
    }
}

#if QC_ASM_GEMM
/*
 * int8 weights, one channel pair over `blocks` whole 4-blocks of the int8 input vector, read
 * directly: per block one load of 4 inputs, 2 SXTAB16 (offset added), one LDM of the 2 weight
 * words, 2 SXTB16 and 4 SMLAD; acc = {S, R} (see "w8" in qc_kernels.h).
 */
__attribute__((noinline)) static void qc_fc_pair_w8(const uint32_t *w, const int8_t *x, int32_t blocks, uint32_t off2,
                                                    int32_t *acc)
{
    int32_t a0 = acc[0], a1 = acc[1];
    const int8_t *const x_end = x + 4 * blocks;

    if (x != x_end) {
        __asm__ volatile(
            "1:\n\t"
            "ldr r8, [%[x]], #4\n\t"
            "ldmia %[w]!, {r4, r5}\n\t"
            "sxtab16 r9, %[off2], r8, ror #8\n\t"
            "sxtab16 r8, %[off2], r8\n\t"
            "sxtb16 r6, r4\n\t"
            "sxtb16 r7, r5\n\t"
            "smlad %[a0], r6, r8, %[a0]\n\t"
            "smlad %[a0], r7, r9, %[a0]\n\t"
            "smlad %[a1], r4, r8, %[a1]\n\t"
            "smlad %[a1], r5, r9, %[a1]\n\t"
            "cmp %[x], %[end]\n\t"
            "bne 1b\n\t"
            : [w] "+r"(w), [x] "+r"(x), [a0] "+r"(a0), [a1] "+r"(a1)
            : [end] "r"(x_end), [off2] "r"(off2)
            : "r4", "r5", "r6", "r7", "r8", "r9", "cc", "memory");
    }
    acc[0] = a0;
    acc[1] = a1;
}
#endif

/* The 2 activation words (k0,k2) (k1,k3) of input block b (x + offset; indices >= n are 0). */
static inline void qc_fc_words(const int8_t *input, int32_t n, int32_t b, int32_t off, uint32_t *x02, uint32_t *x13)
{
    int32_t v[4] = {0, 0, 0, 0};
    int32_t k;
    for (k = 0; k < 4 && 4 * b + k < n; ++k) {
        v[k] = input[4 * b + k] + off;
    }
    *x02 = qc_pack16(v[0], v[2]);
    *x13 = qc_pack16(v[1], v[3]);
}

/*
 * Fully connected, reading the int8 input directly (no scratch, like CMSIS-NN
 * arm_fully_connected_s8): every channel pair runs over the input blocks, sign-extending 4
 * inputs per word on the fly; a last partial block is expanded once.
 */
void qc_fc_s8(const qc_fc_params *p, const int8_t *input, int8_t *output)
{
    const int32_t n = p->in_features;
    const int32_t full = n / 4;
    const int32_t off = p->input_offset;
    const int fast = p->rq_fast != 0;
    const int w8 = p->w8 != 0;
    const int32_t wpc = w8 ? p->k_pad / 4 : p->k_pad / 2;  /* weight words per output channel */
    uint32_t t02 = 0, t13 = 0;
    int32_t acc[QC_CHUNK];
    int32_t c0;

    if (full * 4 < n) {
        qc_fc_words(input, n, full, off, &t02, &t13);
    }
    for (c0 = 0; c0 < p->out_features; c0 += QC_CHUNK) {
        const int32_t m = p->out_features - c0 < QC_CHUNK ? p->out_features - c0 : QC_CHUNK;
        int32_t j;
        if (w8) {
            memset(acc, 0, (size_t)(m + (m & 1)) * sizeof(int32_t));
        } else {
            memcpy(acc, p->bias + c0, (size_t)(m + (m & 1)) * sizeof(int32_t));
        }
        for (j = 0; j < m; j += 2) {
            const uint32_t *w = p->weight + (c0 + j) * wpc;
            int32_t a0, a1, b;
#if QC_ASM_GEMM
            if (w8) {
                qc_fc_pair_w8(w, input, full, qc_pack16(off, off), acc + j);
                w += 2 * full;
                b = full;
            } else
#endif
            {
                b = 0;
            }
            a0 = acc[j];
            a1 = acc[j + 1];
            for (; b < full + (full * 4 < n); ++b) {
                uint32_t x02, x13;
                if (b < full) {
                    qc_fc_words(input, n, b, off, &x02, &x13);
                } else {
                    x02 = t02;
                    x13 = t13;
                }
                if (w8) {
                    a0 = qc_dot2(qc_sxtb16(w[0]), x02, a0);
                    a0 = qc_dot2(qc_sxtb16(w[1]), x13, a0);
                    a1 = qc_dot2_wrap(w[0], x02, a1);
                    a1 = qc_dot2_wrap(w[1], x13, a1);
                    w += 2;
                } else {
                    a0 = qc_dot2(w[0], x02, a0);
                    a0 = qc_dot2(w[1], x13, a0);
                    a1 = qc_dot2(w[2], x02, a1);
                    a1 = qc_dot2(w[3], x13, a1);
                    w += 4;
                }
            }
            acc[j] = a0;
            acc[j + 1] = a1;
        }
        if (w8) {
            qc_w8_split(acc, p->bias + c0, m, p->w8_shift);
        }
        qc_requant_store(acc, m, p->rq + c0, output + c0, 1, p->act_min, p->act_max, fast);
    }
}

/* acc[0..3] += one 4-channel block over the taps of a window (see qc_dwconv_s8). */
#if QC_DSP
static QC_INLINE void qc_dw_block(const int8_t *src_row, const uint32_t *w_blk, int32_t rows, int32_t n_x,
                               int32_t step_x, int32_t step_y, int32_t w_row, uint32_t off2, int32_t *acc)
{
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    int32_t ky, kx;
    if (n_x == 2 && w_row == 6) {  /* a 3-wide window clipped at the left or right edge */
        for (ky = 0; ky < rows; ++ky) {
            const uint32_t v0 = qc_load32(src_row);
            const uint32_t v1 = qc_load32(src_row + step_x);
            uint32_t x02 = qc_ext02(off2, v0), x13 = qc_ext13(off2, v0);
            a0 = __smlabb((int32_t)x02, (int32_t)w_blk[0], a0);
            a2 = __smlatt((int32_t)x02, (int32_t)w_blk[0], a2);
            a1 = __smlabb((int32_t)x13, (int32_t)w_blk[1], a1);
            a3 = __smlatt((int32_t)x13, (int32_t)w_blk[1], a3);
            x02 = qc_ext02(off2, v1);
            x13 = qc_ext13(off2, v1);
            a0 = __smlabb((int32_t)x02, (int32_t)w_blk[2], a0);
            a2 = __smlatt((int32_t)x02, (int32_t)w_blk[2], a2);
            a1 = __smlabb((int32_t)x13, (int32_t)w_blk[3], a1);
            a3 = __smlatt((int32_t)x13, (int32_t)w_blk[3], a3);
            src_row += step_y;
            w_blk += 6;
        }
    } else if (n_x == 3 && w_row == 6) {
        for (ky = 0; ky < rows; ++ky) {
            const uint32_t v0 = qc_load32(src_row);
            const uint32_t v1 = qc_load32(src_row + step_x);
            const uint32_t v2 = qc_load32(src_row + 2 * step_x);
            uint32_t x02 = qc_ext02(off2, v0), x13 = qc_ext13(off2, v0);
            a0 = __smlabb((int32_t)x02, (int32_t)w_blk[0], a0);
            a2 = __smlatt((int32_t)x02, (int32_t)w_blk[0], a2);
            a1 = __smlabb((int32_t)x13, (int32_t)w_blk[1], a1);
            a3 = __smlatt((int32_t)x13, (int32_t)w_blk[1], a3);
            x02 = qc_ext02(off2, v1);
            x13 = qc_ext13(off2, v1);
            a0 = __smlabb((int32_t)x02, (int32_t)w_blk[2], a0);
            a2 = __smlatt((int32_t)x02, (int32_t)w_blk[2], a2);
            a1 = __smlabb((int32_t)x13, (int32_t)w_blk[3], a1);
            a3 = __smlatt((int32_t)x13, (int32_t)w_blk[3], a3);
            x02 = qc_ext02(off2, v2);
            x13 = qc_ext13(off2, v2);
            a0 = __smlabb((int32_t)x02, (int32_t)w_blk[4], a0);
            a2 = __smlatt((int32_t)x02, (int32_t)w_blk[4], a2);
            a1 = __smlabb((int32_t)x13, (int32_t)w_blk[5], a1);
            a3 = __smlatt((int32_t)x13, (int32_t)w_blk[5], a3);
            src_row += step_y;
            w_blk += 6;
        }
    } else {
        for (ky = 0; ky < rows; ++ky) {
            const int8_t *src = src_row;
            const uint32_t *w = w_blk;
            for (kx = 0; kx < n_x; ++kx) {
                const uint32_t v = qc_load32(src);
                const uint32_t x02 = qc_ext02(off2, v);
                const uint32_t x13 = qc_ext13(off2, v);
                a0 = __smlabb((int32_t)x02, (int32_t)w[0], a0);
                a2 = __smlatt((int32_t)x02, (int32_t)w[0], a2);
                a1 = __smlabb((int32_t)x13, (int32_t)w[1], a1);
                a3 = __smlatt((int32_t)x13, (int32_t)w[1], a3);
                src += step_x;
                w += 2;
            }
            src_row += step_y;
            w_blk += w_row;
        }
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}
#endif

/*
 * Depthwise: for every output pixel and block of 4 channels, the valid taps of the window.
 * Weights: per 4-channel block, per tap, 2 words (c0,c2) (c1,c3) (taps contiguous).
 * Channels-last input: one word load + 2 SXTAB16 + 4 SMLAxy per tap (a 3x3 window unrolled);
 * otherwise (and for the channels after the last whole block) one channel at a time.
 * Accumulators of up to QC_CHUNK channels are requantized together.
 */
void qc_dwconv_s8(const qc_dwconv_params *p, const int8_t *input, int8_t *output)
{
    const int32_t off = p->input_offset;
    const int32_t taps = p->kernel_h * p->kernel_w;
    const int fast = p->rq_fast != 0;
    const int32_t in_row = p->in_w * p->in_ps;
    const int32_t step_y = p->dilation_h * in_row;
    const int32_t step_x = p->dilation_w * p->in_ps;
    int32_t acc[QC_CHUNK];
    int32_t oy, ox;

    for (oy = 0; oy < p->out_h; ++oy) {
        const int32_t iy0 = oy * p->stride_h - p->pad_top;
        int32_t ky_lo, ky_hi;
        qc_window(iy0, p->dilation_h, p->kernel_h, p->in_h, &ky_lo, &ky_hi);
        for (ox = 0; ox < p->out_w; ++ox) {
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            int8_t *out_px = output + (oy * p->out_w + ox) * p->out_ps;
            int32_t kx_lo, kx_hi, n_x, first, tap0, c0;
            qc_window(ix0, p->dilation_w, p->kernel_w, p->in_w, &kx_lo, &kx_hi);
            n_x = kx_hi - kx_lo;
            /* element index of the first valid tap (channel 0) and its tap index */
            first = (iy0 + ky_lo * p->dilation_h) * in_row + (ix0 + kx_lo * p->dilation_w) * p->in_ps;
            tap0 = ky_lo * p->kernel_w + kx_lo;
            for (c0 = 0; c0 < p->channels; c0 += QC_CHUNK) {
                const int32_t n = p->channels - c0 < QC_CHUNK ? p->channels - c0 : QC_CHUNK;
                int32_t c = 0;
                memcpy(acc, p->bias + c0, (size_t)n * sizeof(int32_t));
#if QC_DSP
                if (p->in_cs == 1) {
                    const uint32_t off2 = qc_pack16(off, off);
                    for (; c + 4 <= n; c += 4) {
                        qc_dw_block(input + (first + c0 + c), p->weight + ((c0 + c) / 4 * taps + tap0) * 2,
                                    ky_hi - ky_lo, n_x, step_x, step_y, 2 * p->kernel_w, off2, acc + c);
                    }
                }
#endif
                for (; c < n; ++c) {
                    /* channel ch: word (ch & 1), half (ch >> 1) & 1 of each tap of block ch / 4 */
                    const int32_t ch = c0 + c;
                    const uint32_t *w_blk = p->weight + ((ch / 4) * taps + tap0) * 2 + (ch & 1);
                    const int hi = (ch >> 1) & 1;
                    int32_t a = acc[c];
                    int32_t at = first + ch * p->in_cs;
                    int32_t ky;
                    for (ky = ky_lo; ky < ky_hi; ++ky) {
                        int32_t kx;
                        for (kx = 0; kx < n_x; ++kx) {
                            const uint32_t ww = w_blk[2 * kx];
                            a += (hi ? qc_hi16(ww) : qc_lo16(ww)) * (input[at + kx * step_x] + off);
                        }
                        at += step_y;
                        w_blk += 2 * p->kernel_w;
                    }
                    acc[c] = a;
                }
                qc_requant_store(acc, n, p->rq + c0, out_px + c0 * p->out_cs, p->out_cs, p->act_min, p->act_max,
                                 fast);
            }
        }
    }
}

/* ------------------------------------------------------------------ low-bit weights (see qc_kernels.h) */

static inline uint32_t qc_rot8(uint32_t v)
{
    return (v >> 8) | (v << 24);
}

#if QC_ASM_GEMM
/* One 4-block of a 4-bit channel pair (r0 weights, r1 activations, r3 = 0xF0F0F0F0):
   1 load + AND + 4 SXTB16 unpack the word for both pixels, 8 SMLAD. */
#define QC_W4_BLOCK \
    "ldr r8, [r0], #4\n\t" \
    "and r9, r3, r8, lsl #4\n\t" \
    "sxtb16 r10, r8\n\t" \
    "sxtb16 r11, r8, ror #8\n\t" \
    "sxtb16 r8, r9\n\t" \
    "sxtb16 r9, r9, ror #8\n\t" \
    "ldmia r1!, {r12, lr}\n\t" \
    "smlad r4, r8, r12, r4\n\t" \
    "smlad r4, r9, lr, r4\n\t" \
    "smlad r6, r10, r12, r6\n\t" \
    "smlad r6, r11, lr, r6\n\t" \
    "ldmia r1!, {r12, lr}\n\t" \
    "smlad r5, r8, r12, r5\n\t" \
    "smlad r5, r9, lr, r5\n\t" \
    "smlad r7, r10, r12, r7\n\t" \
    "smlad r7, r11, lr, r7\n\t"

/* acc = {A(p0), A(p1), T(p0), T(p1)} += one 4-bit channel pair over `blocks` blocks of 2 pixels. */
__attribute__((naked, noinline)) static void qc_dot_2x2_w4(const uint32_t *w, const uint32_t *x, int32_t blocks,
                                                           int32_t *acc)
{
    (void)w;
    (void)x;
    (void)blocks;
    (void)acc;
    __asm__ volatile(
        "push {r3, r4, r5, r6, r7, r8, r9, r10, r11, lr}\n\t"
        "ldmia r3, {r4, r5, r6, r7}\n\t"
        "mov r3, #0xF0F0F0F0\n\t"
        "tst r2, #1\n\t"
        "add r2, r1, r2, lsl #4\n\t"
        "beq 1f\n\t"
        QC_W4_BLOCK
        "1:\n\t"
        "cmp r1, r2\n\t"
        "beq 2f\n\t"
        "3:\n\t"
        QC_W4_BLOCK
        QC_W4_BLOCK
        "cmp r1, r2\n\t"
        "bne 3b\n\t"
        "2:\n\t"
        "pop {r3}\n\t"
        "stmia r3, {r4, r5, r6, r7}\n\t"
        "pop {r4, r5, r6, r7, r8, r9, r10, r11, pc}\n\t");
}
/*
 * Fused 4-bit pixel pair (rq_fast, pre-scale 2, multipliers >= 0, even cout_group, channels-last
 * output; the emitter sets conv->fused): per channel pair the W4 MACs, the split
 * S = A / 16, O = (T - S) / 16 with the bias (acc = 2 S + bias: A >> 3), the fast requantization
 * and the 4 stores, as qc_w8_pair_full does for int8 weights. Job: qc_w8_job with rem = blocks & 1.
 */
#define QC_W4F_MACS \
    "push {r0, r4, r5, r6, r7, r8, r9, r10, r11, lr}\n\t" \
    "ldr r0, [r0, #0]\n\t" \
    "1:\n\t" \
    "ldr lr, [sp]\n\t" \
    "ldrd r1, r2, [lr, #4]\n\t" \
    "ldr r12, [lr, #32]\n\t" \
    "mov r3, #0xF0F0F0F0\n\t" \
    "movs r4, #0\n\t" \
    "movs r5, #0\n\t" \
    "movs r6, #0\n\t" \
    "movs r7, #0\n\t" \
    "cmp r12, #0\n\t" \
    "beq 5f\n\t" \
    QC_W4_BLOCK \
    "5:\n\t" \
    "cmp r1, r2\n\t" \
    "beq 4f\n\t" \
    "3:\n\t" \
    QC_W4_BLOCK \
    QC_W4_BLOCK \
    "cmp r1, r2\n\t" \
    "bne 3b\n\t" \
    "4:\n\t" \
    "ldr lr, [sp]\n\t"

/* The split with the bias: channel e = (A >> 4) * 2^sh + bias_e, channel o = ((T - (A >> 4)) >> 4)
   * 2^sh + bias_o (qc_w4_split; A and T - (A >> 4) are multiples of 16); SH is "#(4 - sh)". */
#define QC_W4F_SPLIT(SH) \
    "ldr r1, [lr, #12]\n\t" \
    "ldmia r1!, {r8, r9}\n\t" \
    "str r1, [lr, #12]\n\t" \
    "sub r6, r6, r4, asr #4\n\t" \
    "sub r7, r7, r5, asr #4\n\t" \
    "add r4, r8, r4, asr " SH "\n\t" \
    "add r5, r8, r5, asr " SH "\n\t" \
    "add r6, r9, r6, asr " SH "\n\t" \
    "add r7, r9, r7, asr " SH "\n\t"

#define QC_W4F_HEAD \
    QC_W4F_MACS \
    QC_W4F_SPLIT("#3") \
    "ldr r1, [lr, #16]\n\t" \
    "ldmia r1!, {r3, r8, r9, r10, r11, r12}\n\t" \
    "str r1, [lr, #16]\n\t" \
    QC_W8F_RQ("r4", "r3", "r8", "r9") \
    QC_W8F_RQ("r5", "r3", "r8", "r9") \
    QC_W8F_RQ("r6", "r10", "r11", "r12") \
    QC_W8F_RQ("r7", "r10", "r11", "r12")

#define QC_W4F_TAIL \
    "ldrd r1, r2, [lr, #20]\n\t" \
    "strb r4, [r1], #1\n\t" \
    "strb r6, [r1], #1\n\t" \
    "strb r5, [r2], #1\n\t" \
    "strb r7, [r2], #1\n\t" \
    "strd r1, r2, [lr, #20]\n\t" \
    "ldr r1, [lr, #28]\n\t" \
    "cmp r0, r1\n\t" \
    "bne 1b\n\t" \
    "pop {r0, r4, r5, r6, r7, r8, r9, r10, r11, pc}\n\t"

/* Clamp to [r8, r9] = [lo, hi]. */
#define QC_W4F_CLAMP(acc) \
    "cmp " acc ", r8\n\t" \
    "it lt\n\t" \
    "movlt " acc ", r8\n\t" \
    "cmp " acc ", r9\n\t" \
    "it gt\n\t" \
    "movgt " acc ", r9\n\t"

__attribute__((naked, noinline)) static void qc_w4_pair_full(const void *job)
{
    (void)job;
    __asm__ volatile(QC_W4F_HEAD QC_W4F_TAIL);
}

__attribute__((naked, noinline)) static void qc_w4_pair_clamp(const void *job)
{
    (void)job;
    __asm__ volatile(QC_W4F_HEAD
                     "ldrd r8, r9, [lr, #36]\n\t"
                     QC_W4F_CLAMP("r4") QC_W4F_CLAMP("r5") QC_W4F_CLAMP("r6") QC_W4F_CLAMP("r7")
                     QC_W4F_TAIL);
}

/*
 * Fused pixel pairs of threshold layers (exact form: unscaled accumulators and bias; the channel
 * pair's levels inside [act_min, act_max], so no clamp; even channel count): the MACs and the
 * split of qc_w4_pair_full / qc_w8_pair_full, then per output the count of qc_threshold_count in
 * registers, out = thr_offset + #{k : acc >= row[k]}, and the stores. One routine per weight form
 * (w4: 4-bit pairs, w8: int8 channel pairs), row width (int16 / int32) and row length (1, 3, 7,
 * 15: 1..4-bit outputs); the emitter names a layer's routine in qc_conv_lb_params.pair
 * (QC_THR_PAIR of qc_kernels.h), so a firmware links only the ones its layers use.
 *
 * A count is the halving steps of qc_threshold_count on a pointer P = BASE + idx: the step of
 * width w loads P[w - 1] at an immediate offset, compares, and advances P by w when reached
 * (4 instructions); then ACC = OFF + (P - BASE) / SZ.
 */
#define QC_THR_STEP(ACC, P, TMP, LD, OFF, INC) \
    LD " " TMP ", [" P ", #(" OFF ")]\n\t" \
    "cmp " ACC ", " TMP "\n\t" \
    "it ge\n\t" \
    "addge " P ", " P ", #(" INC ")\n\t"
#define QC_THR_STEPS_1(ACC, P, TMP, LD, SZ) QC_THR_STEP(ACC, P, TMP, LD, "0", SZ)
#define QC_THR_STEPS_3(ACC, P, TMP, LD, SZ) \
    QC_THR_STEP(ACC, P, TMP, LD, SZ, "2*" SZ) QC_THR_STEPS_1(ACC, P, TMP, LD, SZ)
#define QC_THR_STEPS_7(ACC, P, TMP, LD, SZ) \
    QC_THR_STEP(ACC, P, TMP, LD, "3*" SZ, "4*" SZ) QC_THR_STEPS_3(ACC, P, TMP, LD, SZ)
#define QC_THR_STEPS_15(ACC, P, TMP, LD, SZ) \
    QC_THR_STEP(ACC, P, TMP, LD, "7*" SZ, "8*" SZ) QC_THR_STEPS_7(ACC, P, TMP, LD, SZ)
#define QC_THR_COUNT(LEN, ACC, BASE, OFFR, P, TMP, LD, SZ, SH) \
    "mov " P ", " BASE "\n\t" \
    QC_THR_STEPS_##LEN(ACC, P, TMP, LD, SZ) \
    "sub " P ", " P ", " BASE "\n\t" \
    "add " ACC ", " OFFR ", " P ", asr #" SH "\n\t"

/* Rows of channel e and o: job->thr and job->thr + LEN entries; job->thr advances by 2 rows. */
#define QC_THR_ROWS(BASE_E, BASE_O, OFFR, LEN, SZ) \
    "ldrd " BASE_E ", " OFFR ", [lr, #44]\n\t" \
    "add " BASE_O ", " BASE_E ", #(" #LEN "*" SZ ")\n\t" \
    "add r1, " BASE_O ", #(" #LEN "*" SZ ")\n\t" \
    "str r1, [lr, #44]\n\t"

/* W4: accumulators r4, r5 (channel e, pixels 0, 1), r6, r7 (channel o). */
#define QC_W4F_THR(LEN, LD, SZ, SH) \
    QC_W4F_SPLIT("#4") \
    QC_THR_ROWS("r8", "r9", "r10", LEN, SZ) \
    QC_THR_COUNT(LEN, "r4", "r8", "r10", "r11", "r12", LD, SZ, SH) \
    QC_THR_COUNT(LEN, "r5", "r8", "r10", "r11", "r12", LD, SZ, SH) \
    QC_THR_COUNT(LEN, "r6", "r9", "r10", "r11", "r12", LD, SZ, SH) \
    QC_THR_COUNT(LEN, "r7", "r9", "r10", "r11", "r12", LD, SZ, SH)

/* W8: accumulators r3, r10 (channel e, pixels 0, 1), r11, r12 (channel o). */
#define QC_W8F_THR(LEN, LD, SZ, SH) \
    QC_W8F_SPLIT("asr #8", "lsl #0") \
    QC_THR_ROWS("r4", "r5", "r6", LEN, SZ) \
    QC_THR_COUNT(LEN, "r3", "r4", "r6", "r7", "r8", LD, SZ, SH) \
    QC_THR_COUNT(LEN, "r10", "r4", "r6", "r7", "r8", LD, SZ, SH) \
    QC_THR_COUNT(LEN, "r11", "r5", "r6", "r7", "r8", LD, SZ, SH) \
    QC_THR_COUNT(LEN, "r12", "r5", "r6", "r7", "r8", LD, SZ, SH)

#define QC_THR_PAIR_ROUTINES(BITS, LD, SZ, SH, LEN) \
    __attribute__((naked, noinline)) void qc_w4_pair_thr##BITS##_##LEN(const void *job) \
    { \
        (void)job; \
        __asm__ volatile(QC_W4F_MACS QC_W4F_THR(LEN, LD, SZ, SH) QC_W4F_TAIL); \
    } \
    __attribute__((naked, noinline)) void qc_w8_pair_thr##BITS##_##LEN(const void *job) \
    { \
        (void)job; \
        __asm__ volatile(QC_W8F_MACS QC_W8F_THR(LEN, LD, SZ, SH) QC_W8F_TAIL); \
    }

QC_THR_PAIR_ROUTINES(16, "ldrsh", "2", "1", 1)
QC_THR_PAIR_ROUTINES(16, "ldrsh", "2", "1", 3)
QC_THR_PAIR_ROUTINES(16, "ldrsh", "2", "1", 7)
QC_THR_PAIR_ROUTINES(16, "ldrsh", "2", "1", 15)
QC_THR_PAIR_ROUTINES(32, "ldr", "4", "2", 1)
QC_THR_PAIR_ROUTINES(32, "ldr", "4", "2", 3)
QC_THR_PAIR_ROUTINES(32, "ldr", "4", "2", 7)
QC_THR_PAIR_ROUTINES(32, "ldr", "4", "2", 15)

/*
 * Every channel pair of a chunk for 2 pixels in one routine (no per-pair call): for pair j,
 * acc0[2j], acc0[2j + 1] = A, T of pixel slot 0 and acc1 the same for slot 1 (from 0).
 */
typedef struct {
    const uint32_t *w;          /*  0: first pair's words (blocks per pair) */
    const uint32_t *x;          /*  4: im2col of the 2 pixels */
    const uint32_t *x_end;      /*  8 */
    int32_t odd;                /* 12: blocks & 1 */
    int32_t *acc0, *acc1;       /* 16, 20: advanced by the routine */
    int32_t pairs;              /* 24: >= 1, counted down by the routine */
} qc_w4_job;

__attribute__((naked, noinline)) static void qc_w4_pairs(qc_w4_job *job)
{
    (void)job;
    __asm__ volatile(
        "push {r0, r4, r5, r6, r7, r8, r9, r10, r11, lr}\n\t"
        "ldr r0, [r0, #0]\n\t"
        "mov r3, #0xF0F0F0F0\n\t"
        "1:\n\t"
        "ldr lr, [sp]\n\t"
        "ldrd r1, r2, [lr, #4]\n\t"
        "ldr r12, [lr, #12]\n\t"
        "movs r4, #0\n\t"
        "movs r5, #0\n\t"
        "movs r6, #0\n\t"
        "movs r7, #0\n\t"
        "cmp r12, #0\n\t"
        "beq 4f\n\t"
        QC_W4_BLOCK
        "4:\n\t"
        "cmp r1, r2\n\t"
        "beq 2f\n\t"
        "3:\n\t"
        QC_W4_BLOCK
        QC_W4_BLOCK
        "cmp r1, r2\n\t"
        "bne 3b\n\t"
        "2:\n\t"
        "ldr lr, [sp]\n\t"
        "ldrd r8, r9, [lr, #16]\n\t"
        "strd r4, r6, [r8], #8\n\t"
        "strd r5, r7, [r9], #8\n\t"
        "strd r8, r9, [lr, #16]\n\t"
        "ldr r8, [lr, #24]\n\t"
        "subs r8, r8, #1\n\t"
        "str r8, [lr, #24]\n\t"
        "bne 1b\n\t"
        "pop {r0, r4, r5, r6, r7, r8, r9, r10, r11, pc}\n\t");
}

#endif

/* The int16 pair words of a 4-bit word: 16 w_e for (k0,k2) (k1,k3), and B = w_e + 16 w_o likewise. */
static inline void qc_w4_unpack(uint32_t wd, uint32_t *e02, uint32_t *e13, uint32_t *t02, uint32_t *t13)
{
    const uint32_t e = (wd << 4) & 0xF0F0F0F0u;
    *e02 = qc_sxtb16(e);
    *e13 = qc_sxtb16(qc_rot8(e));
    *t02 = qc_sxtb16(wd);
    *t13 = qc_sxtb16(qc_rot8(wd));
}

/* acc = {A, T} += one 4-bit channel pair x one pixel (words x[0], x[1] of every x_step). */
static void qc_mac_w4_2x1(const uint32_t *w, const uint32_t *x, int32_t blocks, int32_t x_step, int32_t *acc)
{
    int32_t a = acc[0], t = acc[1];
    int32_t b;
    for (b = 0; b < blocks; ++b) {
        uint32_t e02, e13, t02, t13;
        qc_w4_unpack(w[b], &e02, &e13, &t02, &t13);
        a = qc_dot2(e02, x[0], a);
        a = qc_dot2(e13, x[1], a);
        t = qc_dot2(t02, x[0], t);
        t = qc_dot2(t13, x[1], t);
        x += x_step;
    }
    acc[0] = a;
    acc[1] = t;
}

/* acc0 = {A, T} of pixel slot 0, acc1 of slot 1, for one 4-bit channel pair. */
static void qc_mac_w4_2x2(const uint32_t *w, const uint32_t *x, int32_t blocks, int32_t *acc0, int32_t *acc1)
{
#if QC_ASM_GEMM
    int32_t acc[4];
    acc[0] = acc0[0];
    acc[1] = acc1[0];
    acc[2] = acc0[1];
    acc[3] = acc1[1];
    qc_dot_2x2_w4(w, x, blocks, acc);
    acc0[0] = acc[0];
    acc1[0] = acc[1];
    acc0[1] = acc[2];
    acc1[1] = acc[3];
#else
    qc_mac_w4_2x1(w, x, blocks, 4, acc0);
    qc_mac_w4_2x1(w, x + 2, blocks, 4, acc1);
#endif
}

/* {A, T} per channel pair -> accumulators scaled by 2^shift plus the (pre-scaled) bias. */
static void qc_w4_split(int32_t *acc, const int32_t *bias, int32_t n, int32_t shift)
{
    int32_t i;
    for (i = 0; i < n; i += 2) {
        const int32_t s = acc[i] >> 4;            /* A = 16 sum w_e x exactly */
        const int32_t d = (acc[i + 1] - s) >> 4;  /* T - S = 16 sum w_o x exactly */
        acc[i] = (int32_t)((uint32_t)s << shift) + bias[i];
        acc[i + 1] = (int32_t)((uint32_t)d << shift) + bias[i + 1];
    }
}

/*
 * The threshold layers' output stores (qc_threshold_store_fn of qc_kernels.h): out[i * stride] =
 * offset + #{k : acc[i] >= t[i * len + k]} over rows of int16 or int32 thresholds. The emitter
 * names one per layer, so a model links only the ones its layers use (none without a threshold
 * layer): qc_threshold_store<BITS>_<LEN> for the usual lengths when the levels lie inside
 * [lo, hi] (no clamp; the count unrolled), qc_threshold_store<BITS> otherwise (any length, clamped).
 */
#define QC_DEFINE_THRESHOLD_STORE(BITS, LEN)                                                             \
    void qc_threshold_store##BITS##_##LEN(const int32_t *acc, int32_t n, const void *t, int32_t len,   \
                                          int32_t offset, int8_t *out, int32_t stride, int32_t lo,     \
                                          int32_t hi)                                                  \
    {                                                                                                \
        const int##BITS##_t *row = (const int##BITS##_t *)t;                                         \
        int32_t i;                                                                                   \
        (void)len;                                                                                   \
        (void)lo;                                                                                    \
        (void)hi;                                                                                    \
        for (i = 0; i < n; ++i) {                                                                    \
            out[i * stride] = (int8_t)(offset + QC_THRESHOLD_COUNT##BITS(acc[i], row + i * (LEN), (LEN))); \
        }                                                                                            \
    }
#define QC_THRESHOLD_COUNT16 qc_threshold_count16
#define QC_THRESHOLD_COUNT32 qc_threshold_count
QC_DEFINE_THRESHOLD_STORE(16, 1)
QC_DEFINE_THRESHOLD_STORE(16, 3)
QC_DEFINE_THRESHOLD_STORE(16, 7)
QC_DEFINE_THRESHOLD_STORE(16, 15)
QC_DEFINE_THRESHOLD_STORE(32, 1)
QC_DEFINE_THRESHOLD_STORE(32, 3)
QC_DEFINE_THRESHOLD_STORE(32, 7)
QC_DEFINE_THRESHOLD_STORE(32, 15)
#undef QC_DEFINE_THRESHOLD_STORE

void qc_threshold_store16(const int32_t *acc, int32_t n, const void *t, int32_t len, int32_t offset, int8_t *out,
                          int32_t stride, int32_t lo, int32_t hi)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        out[i * stride] = qc_out8(offset + qc_threshold_count16(acc[i], (const int16_t *)t + i * len, len), lo, hi);
    }
}

void qc_threshold_store32(const int32_t *acc, int32_t n, const void *t, int32_t len, int32_t offset, int8_t *out,
                          int32_t stride, int32_t lo, int32_t hi)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        out[i * stride] = qc_out8(offset + qc_threshold_count(acc[i], (const int32_t *)t + i * len, len), lo, hi);
    }
}
#undef QC_THRESHOLD_COUNT16
#undef QC_THRESHOLD_COUNT32

/* Field i of a stream of `bits`-bit fields (bits 1, 2, 4 or 8: a field never straddles a byte). */
static inline int32_t qc_lb_field(const uint8_t *data, int32_t bits, int32_t i)
{
    const int32_t bit = i * bits;
    return (data[bit >> 3] >> (bit & 7)) & ((1 << bits) - 1);
}

/* Level table of channel c of a codebook layer (row level_row[c] of the shared tables, or row c
 * when level_row is NULL); NULL for uniform values (code_bits 0). */
static inline const int8_t *qc_lb_table(const int8_t *levels, const uint8_t *level_row, int32_t code_bits, int32_t c)
{
    if (code_bits == 0) {
        return NULL;
    }
    return levels + (((level_row != NULL) ? (int32_t)level_row[c] : c) << code_bits);
}

/* Weight i (flat index): the field's level in the channel's table, or the sign-extended field. */
static inline int32_t qc_lb_value(const uint8_t *data, int32_t bits, const int8_t *table, int32_t i)
{
    const int32_t f = qc_lb_field(data, bits, i);
    if (table != NULL) {
        return table[f];
    }
    return (f ^ (1 << (bits - 1))) - (1 << (bits - 1));
}

/*
 * Expand output channels [c0, c0 + n_pad) of group g (n_pad even, channels >= cout_group are 0)
 * into the int8 channel-pair layout (or int16 pairs when conv->w8 = 0) at dst.
 */
static void qc_lb_expand(const qc_conv_lb_params *p, int32_t g, int32_t c0, int32_t n_pad, uint32_t *dst)
{
    static const uint8_t pos8_ext[4] = {0, 4, 2, 6}, pos8_seq[4] = {0, 2, 4, 6};
    static const uint8_t pos16_ext[4] = {0, 2, 1, 3}, pos16_seq[4] = {0, 1, 2, 3};
    const qc_conv_params *cp = p->conv;
    const int32_t k = cp->k;
    const int32_t blocks = cp->k_pad / 4;
    const int32_t cog = cp->cout_group;
    int32_t j, kk;
    for (j = 0; j < n_pad; j += 2) {
        const int32_t je = c0 + j, jo = je + 1;
        const int32_t ce = g * cog + je, co = g * cog + jo;
        const int8_t *te = je < cog ? qc_lb_table(p->levels, p->level_row, p->code_bits, ce) : NULL;
        const int8_t *to = jo < cog ? qc_lb_table(p->levels, p->level_row, p->code_bits, co) : NULL;
        if (cp->w8) {
            const uint8_t *pos = cp->k_seq ? pos8_seq : pos8_ext;
            uint8_t *d = (uint8_t *)(void *)(dst + j * blocks);
            memset(d, 0, (size_t)blocks * 8);
            kk = 0;
            if (p->bits == 4 && (k & 1) == 0 && te != NULL && to != NULL) {
                /* 4-bit codes of two whole channels, byte-aligned rows: two codes per byte and channel */
                const uint8_t *re = p->packed + ce * k / 2, *ro = p->packed + co * k / 2;
                for (; kk < k; kk += 2) {
                    const int32_t be = re[kk >> 1], bo = ro[kk >> 1];
                    const int32_t we0 = te[be & 15], we1 = te[be >> 4];
                    const int32_t wo0 = to[bo & 15], wo1 = to[bo >> 4];
                    uint8_t *b0 = d + (kk >> 2) * 8 + pos[kk & 3];
                    uint8_t *b1 = d + (kk >> 2) * 8 + pos[(kk + 1) & 3];
                    b0[0] = (uint8_t)we0;
                    /* cppcheck-suppress knownConditionTrueFalse ; level tables are int8, we0 can be negative */
                    b0[1] = (uint8_t)(wo0 - (we0 < 0 ? 1 : 0));
                    b1[0] = (uint8_t)we1;
                    /* cppcheck-suppress knownConditionTrueFalse ; level tables are int8, we1 can be negative */
                    b1[1] = (uint8_t)(wo1 - (we1 < 0 ? 1 : 0));
                }
            }
            for (; kk < k; ++kk) {
                const int32_t we = je < cog ? qc_lb_value(p->packed, p->bits, te, ce * k + kk) : 0;
                const int32_t wo = jo < cog ? qc_lb_value(p->packed, p->bits, to, co * k + kk) : 0;
                uint8_t *b = d + (kk >> 2) * 8 + pos[kk & 3];
                b[0] = (uint8_t)we;
                b[1] = (uint8_t)(wo - (we < 0 ? 1 : 0));
            }
        } else {
            const uint8_t *pos = cp->k_seq ? pos16_seq : pos16_ext;
            int16_t *d = (int16_t *)(void *)(dst + 2 * j * blocks);
            memset(d, 0, (size_t)blocks * 16);
            for (kk = 0; kk < k; ++kk) {
                int16_t *b = d + (kk >> 2) * 8 + pos[kk & 3];
                b[0] = (int16_t)(je < cog ? qc_lb_value(p->packed, p->bits, te, ce * k + kk) : 0);
                b[4] = (int16_t)(jo < cog ? qc_lb_value(p->packed, p->bits, to, co * k + kk) : 0);
            }
        }
    }
}

static void qc_lb_output(const qc_conv_lb_params *p, const int32_t *acc, int32_t n, int32_t ch, int8_t *out,
                         int32_t stride)
{
    const qc_conv_params *cp = p->conv;
    if (p->thresholds != NULL) {
        p->threshold_store(acc, n, qc_threshold_row(p->thresholds, p->threshold_bits, ch, p->n_thresholds),
                           p->n_thresholds, p->output_offset, out, stride, cp->act_min, cp->act_max);
    } else {
        qc_lb_requant_store(acc, n, cp->rq + ch, out, stride, cp->act_min, cp->act_max, cp->rq_fast != 0);
    }
}

void qc_conv_lb_s8(const qc_conv_lb_params *p, const int8_t *input, int8_t *output, uint32_t *scratch)
{
    const qc_conv_params *cp = p->conv;
    const int32_t n_pix = cp->out_h * cp->out_w;
    const int32_t blocks = cp->k_pad / 4;
    const int32_t cs = cp->out_cs;
    const int32_t cog = cp->cout_group;
    const int w4 = p->mode == QC_LB_W4;
    const int w8 = !w4 && cp->w8 != 0;
    const int starts_zero = w4 || w8;
    const int32_t wpc = w8 ? blocks : 2 * blocks;  /* words per channel (W8 and int16 pairs) */
    const int32_t chunk = p->mode == QC_LB_DECODE ? p->chunk : cp->cout_pad;
    int16_t *const tmp = (int16_t *)(void *)(scratch + cp->k_pad);
    uint32_t *const wbuf = scratch + cp->k_pad + (cp->k_seq ? cp->k_pad / 2 : 0);
    int32_t acc0[QC_CHUNK], acc1[QC_CHUNK];
    int32_t g, c0;
#if QC_ASM_GEMM
    /* one routine per pixel pair: the threshold layer's p->pair, or qc_w4_pair_* / qc_w8_pair_*
       for a requantized layer the emitter fused (conv->fused) */
    void (*pair)(const void *job) = p->pair;
    const int32_t rem = w4 ? blocks & 1 : (blocks - 1) & 3;
    if (pair == NULL && cp->fused && p->thresholds == NULL) {
        const int full = cp->act_min == -128 && cp->act_max == 127;
        pair = w4 ? (full ? qc_w4_pair_full : qc_w4_pair_clamp) : (full ? qc_w8_pair_full : qc_w8_pair_clamp);
    }
    if (cs != 1) {
        pair = NULL;
    }
#endif

    for (g = 0; g < cp->groups; ++g) {
        for (c0 = 0; c0 < cp->cout_pad; c0 += chunk) {
            const int32_t n_pad = cp->cout_pad - c0 < chunk ? cp->cout_pad - c0 : chunk;
            const int32_t ch0 = g * cp->cout_pad + c0;  /* padded channel index of bias / rq / thresholds */
            const uint32_t *w;
            int8_t *const out_c = output + (g * cog + c0) * cs;
            int32_t pix = 0, oy = 0, ox = 0;
#if QC_ASM_GEMM
            const qc_rq *const rq = p->thresholds == NULL ? cp->rq + ch0 : NULL;
            const void *const thr = p->thresholds == NULL ? NULL
                                  : qc_threshold_row(p->thresholds, p->threshold_bits, ch0, p->n_thresholds);
            const uint32_t *w_end;
#endif
            if (p->mode == QC_LB_DECODE) {
                qc_lb_expand(p, g, c0, n_pad, wbuf);
                w = wbuf;
            } else if (w4) {
                w = cp->weight + ch0 / 2 * blocks;
            } else {
                w = cp->weight + ch0 * wpc;
            }
#if QC_ASM_GEMM
            w_end = w + (w4 ? n_pad / 2 : n_pad) * blocks;
#endif
            while (pix < n_pix) {
                const int two = pix + 1 < n_pix;
                int8_t *o0 = out_c + pix * cp->out_ps;
                int8_t *o1 = o0 + cp->out_ps;
                int32_t j0;
#if QC_ASM_GEMM
                if (pair != NULL && two) {
                    qc_w8_job job;
                    qc_im2col(cp, input, g, oy, ox, scratch, tmp);
                    if (++ox == cp->out_w) {
                        ox = 0;
                        ++oy;
                    }
                    qc_im2col(cp, input, g, oy, ox, scratch + 2, tmp);
                    if (++ox == cp->out_w) {
                        ox = 0;
                        ++oy;
                    }
                    job.w = w;
                    job.x = scratch;
                    job.x_end = scratch + 4 * blocks;
                    job.bias = cp->bias + ch0;
                    job.rq = rq;
                    job.out0 = o0;
                    job.out1 = o1;
                    job.w_end = w_end;
                    job.rem = rem;
                    job.lo = cp->act_min;
                    job.hi = cp->act_max;
                    job.thr = thr;
                    job.thr_offset = p->output_offset;
                    pair(&job);
                    pix += 2;
                    continue;
                }
#endif
                qc_im2col(cp, input, g, oy, ox, scratch, tmp);
                if (++ox == cp->out_w) {
                    ox = 0;
                    ++oy;
                }
                if (two) {
                    qc_im2col(cp, input, g, oy, ox, scratch + 2, tmp);
                    if (++ox == cp->out_w) {
                        ox = 0;
                        ++oy;
                    }
                }
                for (j0 = 0; j0 < n_pad; j0 += QC_CHUNK) {
                    const int32_t m = n_pad - j0 < QC_CHUNK ? n_pad - j0 : QC_CHUNK;
                    const int32_t left = cog - c0 - j0;
                    const int32_t n_out = m < left ? m : left;
                    const int32_t *bias = cp->bias + ch0 + j0;
                    int32_t j;
                    if (starts_zero) {
                        memset(acc0, 0, (size_t)m * sizeof(int32_t));
                        memset(acc1, 0, (size_t)m * sizeof(int32_t));
                    } else {
                        memcpy(acc0, bias, (size_t)m * sizeof(int32_t));
                        memcpy(acc1, bias, (size_t)m * sizeof(int32_t));
                    }
#if QC_ASM_GEMM
                    if (w4 && two) {
                        qc_w4_job job;
                        job.w = w + j0 / 2 * blocks;
                        job.x = scratch;
                        job.x_end = scratch + 4 * blocks;
                        job.odd = blocks & 1;
                        job.acc0 = acc0;
                        job.acc1 = acc1;
                        job.pairs = m / 2;
                        qc_w4_pairs(&job);
                        j = m;
                    } else {
                        j = 0;
                    }
#else
                    j = 0;
#endif
                    for (; j < m; j += 2) {
                        if (w4) {
                            const uint32_t *wj = w + (j0 + j) / 2 * blocks;
                            if (two) {
                                qc_mac_w4_2x2(wj, scratch, blocks, acc0 + j, acc1 + j);
                            } else {
                                qc_mac_w4_2x1(wj, scratch, blocks, 4, acc0 + j);
                            }
                        } else if (two) {
                            qc_mac_2x2(w + (j0 + j) * wpc, scratch, blocks, acc0 + j, acc1 + j, w8);
                        } else {
                            qc_mac_2x1(w + (j0 + j) * wpc, scratch, blocks, 4, acc0 + j, w8);
                        }
                    }
                    if (n_out <= 0) {
                        continue;
                    }
                    if (w4) {
                        qc_w4_split(acc0, bias, m, cp->w8_shift);
                    } else if (w8) {
                        qc_w8_split(acc0, bias, m, cp->w8_shift);
                    }
                    qc_lb_output(p, acc0, n_out, ch0 + j0, o0 + j0 * cs, cs);
                    if (two) {
                        if (w4) {
                            qc_w4_split(acc1, bias, m, cp->w8_shift);
                        } else if (w8) {
                            qc_w8_split(acc1, bias, m, cp->w8_shift);
                        }
                        qc_lb_output(p, acc1, n_out, ch0 + j0, o1 + j0 * cs, cs);
                    }
                }
                pix += two ? 2 : 1;
            }
        }
    }
}

/* Channels [c0, c0 + n) of a low-bit depthwise layer -> the int16-pair layout of qc_dwconv_params at dst. */
static void qc_dw_expand(const qc_dwconv_lb_params *p, int32_t c0, int32_t n, uint32_t *dst)
{
    const int32_t taps = p->dw->kernel_h * p->dw->kernel_w;
    const int32_t scale = (int32_t)1 << p->w_shift;
    int32_t cb;
    for (cb = 0; cb < n; cb += 4) {
        uint32_t *blk = dst + cb / 4 * taps * 2;
        int32_t t;
        for (t = 0; t < taps; ++t) {
            int32_t v[4] = {0, 0, 0, 0};
            int32_t i;
            for (i = 0; i < 4 && cb + i < n; ++i) {
                const int32_t c = c0 + cb + i;
                v[i] = qc_lb_value(p->packed, p->bits, qc_lb_table(p->levels, p->level_row, p->code_bits, c), c * taps + t) * scale;
            }
            blk[2 * t] = qc_pack16(v[0], v[2]);
            blk[2 * t + 1] = qc_pack16(v[1], v[3]);
        }
    }
}

void qc_dwconv_expand_s8(const qc_dwconv_lb_params *p, uint32_t *scratch)
{
    qc_dw_expand(p, 0, p->dw->channels, scratch);
}

void qc_dwconv_lb_s8(const qc_dwconv_lb_params *p, const int8_t *input, int8_t *output, uint32_t *scratch)
{
    const qc_dwconv_params *d = p->dw;
    const int32_t off = d->input_offset;
    const int32_t taps = d->kernel_h * d->kernel_w;
    const int fast = d->rq_fast != 0;
    const int32_t in_row = d->in_w * d->in_ps;
    const int32_t step_y = d->dilation_h * in_row;
    const int32_t step_x = d->dilation_w * d->in_ps;
    const int32_t scale = (int32_t)1 << p->w_shift;
    int32_t cb;

    if (p->thresholds == NULL) {
        int32_t c0;
        for (c0 = 0; c0 < d->channels; c0 += p->chunk) {
            const int32_t n = d->channels - c0 < p->chunk ? d->channels - c0 : p->chunk;
            qc_dwconv_params q = *d;
            qc_dw_expand(p, c0, n, scratch);
            q.channels = n;
            q.c_pad = (n + 3) / 4 * 4;
            q.weight = scratch;
            q.bias = d->bias + c0;
            q.rq = d->rq + c0;
            qc_dwconv_s8(&q, input + c0 * d->in_cs, output + c0 * d->out_cs);
        }
        return;
    }
    for (cb = 0; cb < d->channels; cb += 4) {
        const int32_t n = d->channels - cb < 4 ? d->channels - cb : 4;
        int32_t t, oy;
        for (t = 0; t < taps; ++t) {
            int32_t v[4] = {0, 0, 0, 0};
            int32_t i;
            for (i = 0; i < n; ++i) {
                const int32_t c = cb + i;
                v[i] = qc_lb_value(p->packed, p->bits, qc_lb_table(p->levels, p->level_row, p->code_bits, c), c * taps + t) * scale;
            }
            scratch[2 * t] = qc_pack16(v[0], v[2]);
            scratch[2 * t + 1] = qc_pack16(v[1], v[3]);
        }
        for (oy = 0; oy < d->out_h; ++oy) {
            const int32_t iy0 = oy * d->stride_h - d->pad_top;
            int32_t ky_lo, ky_hi, ox;
            qc_window(iy0, d->dilation_h, d->kernel_h, d->in_h, &ky_lo, &ky_hi);
            for (ox = 0; ox < d->out_w; ++ox) {
                const int32_t ix0 = ox * d->stride_w - d->pad_left;
                int8_t *out_px = output + (oy * d->out_w + ox) * d->out_ps + cb * d->out_cs;
                int32_t kx_lo, kx_hi, n_x, first, tap0, i;
                int32_t acc[4];
                qc_window(ix0, d->dilation_w, d->kernel_w, d->in_w, &kx_lo, &kx_hi);
                n_x = kx_hi - kx_lo;
                first = (iy0 + ky_lo * d->dilation_h) * in_row + (ix0 + kx_lo * d->dilation_w) * d->in_ps;
                tap0 = ky_lo * d->kernel_w + kx_lo;
                memcpy(acc, d->bias + cb, 4 * sizeof(int32_t));
#if QC_DSP
                /* n is 4 in every channel block but the last (cppcheck's value flow misses that) */
                /* cppcheck-suppress knownConditionTrueFalse */
                if (d->in_cs == 1 && n == 4) {
                    qc_dw_block(input + (first + cb), scratch + 2 * tap0, ky_hi - ky_lo, n_x, step_x, step_y,
                                2 * d->kernel_w, qc_pack16(off, off), acc);
                } else
#endif
                {
                    for (i = 0; i < n; ++i) {
                        const uint32_t *w_blk = scratch + 2 * tap0 + (i & 1);
                        const int hi = (i >> 1) & 1;
                        int32_t a = acc[i];
                        int32_t at = first + (cb + i) * d->in_cs;
                        int32_t ky;
                        for (ky = ky_lo; ky < ky_hi; ++ky) {
                            int32_t kx;
                            for (kx = 0; kx < n_x; ++kx) {
                                const uint32_t ww = w_blk[2 * kx];
                                a += (hi ? qc_hi16(ww) : qc_lo16(ww)) * (input[at + kx * step_x] + off);
                            }
                            at += step_y;
                            w_blk += 2 * d->kernel_w;
                        }
                        acc[i] = a;
                    }
                }
                if (p->thresholds != NULL) {
                    p->threshold_store(acc, n, qc_threshold_row(p->thresholds, p->threshold_bits, cb, p->n_thresholds),
                                       p->n_thresholds, p->output_offset, out_px, d->out_cs, d->act_min, d->act_max);
                } else {
                    qc_lb_requant_store(acc, n, d->rq + cb, out_px, d->out_cs, d->act_min, d->act_max, fast);
                }
            }
        }
    }
}
