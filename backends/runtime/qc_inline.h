/*
 * qc_inline.h - kernels specialized at compile time (see qc_kernels.h for the conventions).
 *
 * These kernels are static inline and always inlined into the generated model, where their
 * parameter block is a `static const` object with a known initializer: the compiler then folds
 * every shape, stride and offset into immediates (tap addresses become [base, #imm] loads) and
 * drops the branches that cannot happen (activation clamps, window clipping of a dimension
 * without padding). The emitter calls them only for layers whose preconditions it proved;
 * without the DSP extension they fall back to the general kernels of qc_conv.c.
 */
#ifndef QC_INLINE_H
#define QC_INLINE_H

#include <string.h>

#include "qc_kernels.h"

#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
#include <arm_acle.h>
#define QC_INLINE_DSP 1
#define QC_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define QC_INLINE_DSP 0
#define QC_ALWAYS_INLINE inline
#endif

#ifdef __cplusplus
extern "C" {
#endif

#if QC_INLINE_DSP
/* (a * b + 2^31 + (c << 32)) >> 32: SMMLAR, rounding high multiply plus c. */
static QC_ALWAYS_INLINE int32_t qc_i_smmlar(int32_t a, int32_t b, int32_t c)
{
    int32_t r;
    __asm__("smmlar %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

/* (off + sext(byte 1), off + sext(byte 3)): SXTAB16 with ROR #8. */
static QC_ALWAYS_INLINE uint32_t qc_i_ext13(uint32_t off2, uint32_t v)
{
    uint32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(off2), "r"(v));
    return r;
}

static QC_ALWAYS_INLINE uint32_t qc_i_load32(const int8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/*
 * Fast requantization (qc_rq, rq_fast = 1, multipliers >= 0) of one accumulator, as the
 * assembly of qc_conv.c: SMMLAR adds the round term; the sign correction is taken from the
 * accumulator (equal to the product's sign, or the product is 0, where both give the same
 * result because the right shift is >= 1).
 */
static QC_ALWAYS_INLINE int8_t qc_i_rq(int32_t acc, const qc_rq *q, int32_t lo, int32_t hi)
{
    int32_t v = (qc_i_smmlar(acc, q->multiplier, q->round) + (acc >> 31)) >> q->shift;
    __asm__("ssat %0, #8, %1" : "=r"(v) : "r"(v));
    if (lo > -128 && v < lo) {
        v = lo;
    }
    if (hi < 127 && v > hi) {
        v = hi;
    }
    return (int8_t)v;
}

/* One tap of a 4-channel block: a0..a3 += (x + offset) * w for channels 0..3 (weights (c0,c2) (c1,c3)). */
#define QC_DW_TAP(px, pw)                                                    \
    do {                                                                     \
        const uint32_t v_ = qc_i_load32(px);                                 \
        const uint32_t x13_ = qc_i_ext13(off2, v_);                          \
        const uint32_t x02_ = (uint32_t)__sxtab16((int16x2_t)off2, (int8x4_t)v_); \
        const uint32_t w0_ = (pw)[0], w1_ = (pw)[1];                         \
        a0 = __smlabb((int32_t)x02_, (int32_t)w0_, a0);                      \
        a2 = __smlatt((int32_t)x02_, (int32_t)w0_, a2);                      \
        a1 = __smlabb((int32_t)x13_, (int32_t)w1_, a1);                      \
        a3 = __smlatt((int32_t)x13_, (int32_t)w1_, a3);                      \
    } while (0)

/*
 * Assembly block of qc_dw3x3_s8: bias -> 4 accumulators, the taps, fast requantization (as
 * qc_i_rq) and 4 byte stores. src/w point at the first valid tap; tap (r, c) of the valid window
 * reads src + r * row + c * ps and weight words w + 2 * (3 r + c). Advances w (one block: 18
 * words), bias, rq and out.
 */
#define QC_DW_T(r, c)                                                        \
    "ldr r4, [%[src], #(" #r "*%c[row]+" #c "*%c[ps])]\n\t"                  \
    "ldrd r6, r7, [%[w], #(" #r "*24+" #c "*8)]\n\t"                         \
    "sxtab16 r5, %[off2], r4, ror #8\n\t"                                    \
    "sxtab16 r4, %[off2], r4\n\t"                                            \
    "smlabb %[a0], r4, r6, %[a0]\n\t"                                        \
    "smlatt %[a2], r4, r6, %[a2]\n\t"                                        \
    "smlabb %[a1], r5, r7, %[a1]\n\t"                                        \
    "smlatt %[a3], r5, r7, %[a3]\n\t"
#define QC_DW_ROW3(r) QC_DW_T(r, 0) QC_DW_T(r, 1) QC_DW_T(r, 2)
#define QC_DW_ROW2(r) QC_DW_T(r, 0) QC_DW_T(r, 1)
#define QC_DW_RQ(acc)                                                        \
    "ldmia %[rq]!, {r4, r5, r6}\n\t"                                         \
    "smmlar r7, %[" acc "], r4, r6\n\t"                                      \
    "add r7, r7, %[" acc "], asr #31\n\t"                                    \
    "asr r7, r7, r5\n\t"                                                     \
    "ssat r7, #8, r7\n\t"                                                    \
    "strb r7, [%[out]], #%c[ocs]\n\t"
/* Bias -> a0..a3, the taps; advances bias and w (the accumulating part of both blocks below). */
#define QC_DW_ACC_TEXT(TAPS)                                                 \
    "ldrd %[a0], %[a1], [%[bias]], #8\n\t"                                  \
    "ldrd %[a2], %[a3], [%[bias]], #8\n\t"                                  \
    TAPS                                                                     \
    "add %[w], %[w], #72\n\t"
/* The same taps, accumulators only (the threshold epilogue counts them in C). Advances w and bias. */
#define QC_DW_ASM_ACC(TAPS)                                                  \
    __asm__ volatile(QC_DW_ACC_TEXT(TAPS)                                    \
                     : [a0] "=&r"(a0), [a1] "=&r"(a1), [a2] "=&r"(a2), [a3] "=&r"(a3), \
                       [w] "+r"(w), [bias] "+r"(bias)                        \
                     : [src] "r"(src), [off2] "r"(off2), [ps] "i"(ps), [row] "i"(row) \
                     : "r4", "r5", "r6", "r7", "memory")
#define QC_DW_ASM(TAPS)                                                      \
    do {                                                                     \
        int32_t a0, a1, a2, a3;                                              \
        __asm__ volatile(QC_DW_ACC_TEXT(TAPS)                                \
                         QC_DW_RQ("a0") QC_DW_RQ("a1") QC_DW_RQ("a2") QC_DW_RQ("a3") \
                         : [a0] "=&r"(a0), [a1] "=&r"(a1), [a2] "=&r"(a2), [a3] "=&r"(a3), \
                           [w] "+r"(w), [bias] "+r"(bias), [rq] "+r"(rq), [out] "+r"(out) \
                         : [src] "r"(src), [off2] "r"(off2), [ps] "i"(ps), [row] "i"(row), \
                           [ocs] "i"(ocs)                                    \
                         : "r4", "r5", "r6", "r7", "memory");                \
    } while (0)
#endif

#if QC_INLINE_DSP
/* The count of accumulator a against row `row` of the int16 (bits 16) or int32 threshold rows at t. */
static QC_ALWAYS_INLINE int32_t qc_dw_count(int32_t a, const void *t, int32_t bits, int32_t n_thr, int32_t row)
{
    if (bits == 16) {
        return qc_threshold_count16(a, (const int16_t *)t + row * n_thr, n_thr);
    }
    return qc_threshold_count(a, (const int32_t *)t + row * n_thr, n_thr);
}

/* The 4 outputs of a channel block: requantized (thr == NULL) or counted against the block's
   threshold rows (n_thr per channel, levels from thr_offset); advances rq / thr and out. */
#define QC_DW_STORE4()                                                                             \
    do {                                                                                           \
        if (thr == NULL) {                                                                         \
            out[0] = qc_i_rq(a0, rq, lo, hi);                                                      \
            out[ocs] = qc_i_rq(a1, rq + 1, lo, hi);                                                \
            out[2 * ocs] = qc_i_rq(a2, rq + 2, lo, hi);                                            \
            out[3 * ocs] = qc_i_rq(a3, rq + 3, lo, hi);                                            \
            rq += 4;                                                                               \
        } else {                                                                                   \
            out[0] = (int8_t)(thr_offset + qc_dw_count(a0, t, thr_bits, n_thr, 0));                \
            out[ocs] = (int8_t)(thr_offset + qc_dw_count(a1, t, thr_bits, n_thr, 1));              \
            out[2 * ocs] = (int8_t)(thr_offset + qc_dw_count(a2, t, thr_bits, n_thr, 2));          \
            out[3 * ocs] = (int8_t)(thr_offset + qc_dw_count(a3, t, thr_bits, n_thr, 3));          \
            t = qc_threshold_row(t, thr_bits, 4, n_thr);                                           \
        }                                                                                          \
        out += 4 * ocs;                                                                            \
    } while (0)

/* One 4-channel block run by an assembly block (requantization inside it, or accumulators only). */
#define QC_DW_ASM_BLOCK(TAPS)                                                                      \
    do {                                                                                           \
        if (thr == NULL) {                                                                         \
            QC_DW_ASM(TAPS);                                                                       \
        } else {                                                                                   \
            int32_t a0, a1, a2, a3;                                                                \
            QC_DW_ASM_ACC(TAPS);                                                                   \
            QC_DW_STORE4();                                                                        \
        }                                                                                          \
        src += 4;                                                                                  \
    } while (0)

/*
 * The 3x3 kernel with its output stage as a parameter: thr == NULL requantizes (qc_dw3x3_s8),
 * else thr holds n_thr thresholds per channel (int16 when thr_bits is 16, else int32) and
 * out = thr_offset + #reached (qc_dw3x3_thr_s8;
 * the lowering puts those levels inside [act_min, act_max], the emitter checks it, so there is
 * no clamp). Both wrappers are inlined with constants, so the unused stage is compiled out.
 */
static QC_ALWAYS_INLINE void qc_dw3x3_core(const qc_dwconv_params *p, const void *thr, int32_t thr_bits,
                                           int32_t n_thr, int32_t thr_offset, const int8_t *input, int8_t *output)
{
    const int32_t ps = p->in_ps;
    const int32_t row = p->in_w * p->in_ps;
    const int32_t ocs = p->out_cs;
    const int32_t lo = p->act_min, hi = p->act_max;
    const uint32_t off2 = (uint32_t)(uint16_t)p->input_offset * 0x10001u;
    const int32_t blocks = p->channels / 4;
    int32_t oy, ox;

    for (oy = 0; oy < p->out_h; ++oy) {
        const int32_t iy0 = oy * p->stride_h - p->pad_top;
        int32_t ky_lo, ky_hi;
        qc_window(iy0, 1, 3, p->in_h, &ky_lo, &ky_hi);
        for (ox = 0; ox < p->out_w; ++ox) {
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            const int8_t *src;
            const uint32_t *w;
            const int32_t *bias = p->bias;
            const qc_rq *rq = p->rq;
            const void *t = thr;
            int8_t *out = output + (oy * p->out_w + ox) * p->out_ps;
            int32_t kx_lo, kx_hi, rows, cols, b;
            qc_window(ix0, 1, 3, p->in_w, &kx_lo, &kx_hi);
            rows = ky_hi - ky_lo;
            cols = kx_hi - kx_lo;
            src = input + (iy0 + ky_lo) * row + (ix0 + kx_lo) * ps;
            w = p->weight + 2 * (ky_lo * 3 + kx_lo);
#if defined(__OPTIMIZE__)
            if ((thr != NULL || (lo == -128 && hi == 127)) && ocs < 256 && 2 * row + 2 * ps + 3 < 4096 && rows >= 2
                && cols >= 2) {
                /* one assembly block per 4 channels; tap offsets and the output stride are
                   immediates (this function is inlined with a constant parameter block) */
                if (rows == 3 && cols == 3) {
                    for (b = 0; b < blocks; ++b) {
                        QC_DW_ASM_BLOCK(QC_DW_ROW3(0) QC_DW_ROW3(1) QC_DW_ROW3(2));
                    }
                } else if (rows == 3) {
                    for (b = 0; b < blocks; ++b) {
                        QC_DW_ASM_BLOCK(QC_DW_ROW2(0) QC_DW_ROW2(1) QC_DW_ROW2(2));
                    }
                } else if (cols == 3) {
                    for (b = 0; b < blocks; ++b) {
                        QC_DW_ASM_BLOCK(QC_DW_ROW3(0) QC_DW_ROW3(1));
                    }
                } else {
                    for (b = 0; b < blocks; ++b) {
                        QC_DW_ASM_BLOCK(QC_DW_ROW2(0) QC_DW_ROW2(1));
                    }
                }
                continue;
            }
#endif
            if (rows == 3 && cols == 3) {
                for (b = 0; b < blocks; ++b) {
                    int32_t a0 = bias[0], a1 = bias[1], a2 = bias[2], a3 = bias[3];
                    QC_DW_TAP(src, w);
                    QC_DW_TAP(src + ps, w + 2);
                    QC_DW_TAP(src + 2 * ps, w + 4);
                    QC_DW_TAP(src + row, w + 6);
                    QC_DW_TAP(src + row + ps, w + 8);
                    QC_DW_TAP(src + row + 2 * ps, w + 10);
                    QC_DW_TAP(src + 2 * row, w + 12);
                    QC_DW_TAP(src + 2 * row + ps, w + 14);
                    QC_DW_TAP(src + 2 * row + 2 * ps, w + 16);
                    QC_DW_STORE4();
                    src += 4;
                    w += 18;
                    bias += 4;
                }
                continue;
            }
            for (b = 0; b < blocks; ++b) {
                int32_t a0 = bias[0], a1 = bias[1], a2 = bias[2], a3 = bias[3];
                const int8_t *s = src;
                const uint32_t *ww = w;
                int32_t r, c;
                for (r = 0; r < rows; ++r) {
                    if (cols == 3) {
                        QC_DW_TAP(s, ww);
                        QC_DW_TAP(s + ps, ww + 2);
                        QC_DW_TAP(s + 2 * ps, ww + 4);
                    } else if (cols == 2) {
                        QC_DW_TAP(s, ww);
                        QC_DW_TAP(s + ps, ww + 2);
                    } else {
                        for (c = 0; c < cols; ++c) {
                            QC_DW_TAP(s + c * ps, ww + 2 * c);
                        }
                    }
                    s += row;
                    ww += 6;
                }
                QC_DW_STORE4();
                src += 4;
                w += 18;
                bias += 4;
            }
        }
    }
}
#endif

/*
 * Depthwise 3x3 (dilation 1) on a channels-last input, channels % 4 == 0, fast requantization
 * with multipliers >= 0 (the emitter checks all of it). Weights, bias and rq as qc_dwconv_params.
 * Per output pixel the valid window is found once; then every 4-channel block runs its taps
 * fully unrolled (the whole 3x3 window for interior pixels, 3- or 2-tap rows at the borders)
 * with one word load, two SXTAB16 and four SMLAxy per tap, and its 4 outputs are requantized
 * in registers.
 */
static QC_ALWAYS_INLINE void qc_dw3x3_s8(const qc_dwconv_params *p, const int8_t *input, int8_t *output)
{
#if QC_INLINE_DSP
    qc_dw3x3_core(p, NULL, 0, 0, 0, input, output);
#else
    qc_dwconv_s8(p, input, output);
#endif
}

/*
 * The same kernel with a threshold output stage (a low-bit depthwise layer with thresholds,
 * qc_dwconv_lb_params t, whose weights `spec` points at, expanded unscaled into scratch by
 * qc_dwconv_expand_s8; spec->bias unscaled): out = t->output_offset + #{k : acc >= T[c, k]}.
 * Without the DSP extension: qc_dwconv_lb_s8 (which expands the taps itself). The layer's store
 * (t->threshold_store) serves only that fallback: the emitter writes it as QC_DW3X3_THR_STORE(name),
 * NULL where the inline count replaces it, so DSP builds do not link it.
 */
#if QC_INLINE_DSP
#define QC_DW3X3_THR_STORE(NAME) NULL
#else
#define QC_DW3X3_THR_STORE(NAME) NAME
#endif
static QC_ALWAYS_INLINE void qc_dw3x3_thr_s8(const qc_dwconv_lb_params *t, const qc_dwconv_params *spec,
                                             const int8_t *input, int8_t *output, uint32_t *scratch)
{
#if QC_INLINE_DSP
    (void)scratch;
    qc_dw3x3_core(spec, t->thresholds, t->threshold_bits, t->n_thresholds, t->output_offset, input, output);
#else
    (void)spec;
    qc_dwconv_lb_s8(t, input, output, scratch);
#endif
}

#ifdef __cplusplus
}
#endif

#endif /* QC_INLINE_H */
