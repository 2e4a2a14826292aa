/* Attention over packed BERT tokens on CPU: every sequence attends within itself, straight from the fused
 * query/key/value matrix, with no padding, gathering or scattering (see model_server/backend/native_attention.py).
 *
 * Layout: qkv is [tokens, 3 * heads * head_dim] (row-major, contiguous: queries, then keys, then values, each
 * heads * head_dim wide); out is [tokens, heads * head_dim]. Sequence i holds rows starts[i] .. starts[i] +
 * lengths[i] - 1. One task is one (sequence, head); OpenMP threads (torch's own runtime, already loaded) take
 * tasks dynamically. Each task transposes its keys once (scaled by `scale`), then for every tile of R query rows
 * computes the scores (R x 32 key tiles held in registers), an exact softmax over the whole row, and the
 * weighted sum of values (R x head_dim in registers).
 *
 * Why: PyTorch's CPU flash attention runs each (sequence, head, query block) through small MKL calls, and the
 * packed engine had to gather similar-length sequences into padded blocks for it and scatter the result back.
 * Measured with `python -m bench engine` (docs/benchmarks.md): MiniLM +8 % fp32, +15 % int8 with this kernel.
 *
 * Written with GCC vector extensions (portable C, no intrinsics); the task function is cloned for AVX-512, AVX2
 * and baseline x86-64 and the loader picks the best the processor has.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

#define LANES 16

static inline v16 load(const float *p) { return *(const v16u *)p; }
static inline void store(float *p, v16 v) { *(v16u *)p = v; }

static inline v16 splat(float x) {
    v16 v = {0};
    return v + x;
}

/* Lane-wise select without C++'s vector ?: (mask lanes are all ones or zero). */
static inline v16 pick(vi16 mask, v16 yes, v16 no) { return (v16)(((vi16)yes & mask) | ((vi16)no & ~mask)); }

/* e^x for x <= 0 (scores minus their row's maximum), Cephes' single-precision polynomial (about 1 ulp); x
 * below -87 gives e^-87 (no denormals). */
static inline v16 vexp(v16 x) {
    x = pick(x < splat(-87.0f), splat(-87.0f), x);
    const v16 magic = splat(12582912.0f); /* 1.5 * 2^23: adding and subtracting it rounds to an integer */
    v16 n = (x * 1.44269504088896341f + magic) - magic;
    v16 r = x - n * 0.693359375f + n * 2.12194440e-4f;
    v16 p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vi16 bits = (__builtin_convertvector(n, vi16) + 127) << 23;
    return p * (v16)bits;
}

/* Horizontal max and sum by halving (four shuffles), not sixteen scalar steps. */
static inline v16 swap(v16 v, int width) {
    const vi16 lanes = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    return __builtin_shuffle(v, lanes ^ width);
}

static inline float hmax(v16 v) {
    for (int width = 8; width > 0; width /= 2) v = pick(swap(v, width) > v, swap(v, width), v);
    return v[0];
}

static inline float hsum(v16 v) {
    for (int width = 8; width > 0; width /= 2) v += swap(v, width);
    return v[0];
}

/* One (sequence, head). kt: D x Lp scratch, s: R x Lp scratch (Lp = length rounded up to 32). */
static inline __attribute__((always_inline)) void attend(const float *qkv, float *out, int64_t start, int64_t len,
                                                         int64_t head, int64_t heads, float scale, float *kt,
                                                         float *s, const int D, const int R) {
    const int64_t row = 3 * heads * D, out_row = heads * D;
    const float *q = qkv + start * row + head * D, *k = q + heads * D, *v = q + 2 * heads * D;
    const int64_t lp = (len + 31) & ~(int64_t)31;
    /* Arrays are sized for the largest tile (R <= 8, D <= 64) so that, inlined with constant D and R, they are
     * fixed-size and live in registers; sizes from the parameters would make them variable-length arrays. */
    for (int64_t j = 0; j < len; j++) {
        /* This head's rows are 128-256 bytes out of every 4-5 KB of qkv: too sparse for the hardware
         * prefetchers, so fetch keys a few rows ahead and queries and values before they are needed. */
        for (int c = 0; c < D; c += LANES) {
            __builtin_prefetch(k + (j + 8) * row + c);
            __builtin_prefetch(q + j * row + c);
            __builtin_prefetch(v + j * row + c);
        }
        for (int c = 0; c < D / LANES; c++) {
            const v16 x = load(k + j * row + c * LANES) * scale;
            for (int l = 0; l < LANES; l++) kt[(c * LANES + l) * lp + j] = x[l];
        }
    }
    for (int d = 0; d < D; d++)
        for (int64_t j = len; j < lp; j++) kt[d * lp + j] = 0.0f;
    for (int64_t r0 = 0; r0 < len; r0 += R) {
        const int rows = len - r0 < R ? (int)(len - r0) : R;
        float qt[8][64];
        for (int r = 0; r < R; r++)
            for (int d = 0; d < D; d++) qt[r][d] = r < rows ? q[(r0 + r) * row + d] : 0.0f;
        /* Scores: R query rows x 32 keys at a time. */
        for (int64_t j = 0; j < lp; j += 2 * LANES) {
            v16 a[8], b[8];
            for (int r = 0; r < R; r++) a[r] = b[r] = splat(0.0f);
            for (int d = 0; d < D; d++) {
                const v16 ka = load(kt + d * lp + j), kb = load(kt + d * lp + j + LANES);
                for (int r = 0; r < R; r++) {
                    a[r] += qt[r][d] * ka;
                    b[r] += qt[r][d] * kb;
                }
            }
            for (int r = 0; r < R; r++) {
                store(s + r * lp + j, a[r]);
                store(s + r * lp + j + LANES, b[r]);
            }
        }
        /* Softmax of each row over its `len` real keys; padded keys get weight 0. */
        float inverse[8];
        for (int r = 0; r < R; r++) {
            float *sr = s + r * lp;
            for (int64_t j = len; j < lp; j++) sr[j] = -3.0e38f;
            v16 m = load(sr);
            for (int64_t j = LANES; j < lp; j += LANES) {
                const v16 x = load(sr + j);
                m = pick(x > m, x, m);
            }
            const v16 top = splat(hmax(m));
            v16 sum = splat(0.0f);
            for (int64_t j = 0; j < lp; j += LANES) {
                const v16 e = vexp(load(sr + j) - top);
                store(sr + j, e);
                sum += e;
            }
            for (int64_t j = len; j < lp; j++) sr[j] = 0.0f; /* padding's e^-87 (in `sum` too: negligible) */
            inverse[r] = 1.0f / hsum(sum);
        }
        /* Weighted sum of values: R rows x D in registers. */
        v16 o[8][4];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < D / LANES; c++) o[r][c] = splat(0.0f);
        for (int64_t j = 0; j < len; j++) {
            v16 vv[4];
            for (int c = 0; c < D / LANES; c++) vv[c] = load(v + j * row + c * LANES);
            for (int r = 0; r < R; r++) {
                const float p = s[r * lp + j];
                for (int c = 0; c < D / LANES; c++) o[r][c] += p * vv[c];
            }
        }
        for (int r = 0; r < R; r++)
            for (int c = 0; c < D / LANES && r < rows; c++)
                store(out + (start + r0 + r) * out_row + head * D + c * LANES, o[r][c] * inverse[r]);
    }
}

/* Register tiles: R query rows; R x 32 scores and R x head_dim outputs fit AVX-512's 32 registers. */
#if defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static void task(const float *qkv, float *out, int64_t start, int64_t len, int64_t head, int64_t heads, int64_t head_dim,
     float scale, float *kt, float *s) {
    if (head_dim == 32)
        attend(qkv, out, start, len, head, heads, scale, kt, s, 32, 8);
    else
        attend(qkv, out, start, len, head, heads, scale, kt, s, 64, 4);
}

/* Head dimensions this kernel handles (others use PyTorch's attention). */
int bertmesh_attention_supports(int64_t head_dim) { return head_dim == 32 || head_dim == 64; }

/* Attention of every sequence in the batch on `threads` threads (torch's setting: the calling thread's own
 * OpenMP default may be every core of the node); 0 on success, -1 for an unsupported head_dim, -2 out of memory. */
int bertmesh_packed_attention(const float *qkv, float *out, const int64_t *starts, const int64_t *lengths,
                              int64_t sequences, int64_t heads, int64_t head_dim, float scale, int threads) {
    if (!bertmesh_attention_supports(head_dim)) return -1;
    int64_t longest = 0;
    for (int64_t i = 0; i < sequences; i++) longest = lengths[i] > longest ? lengths[i] : longest;
    const int64_t lp = (longest + 31) & ~(int64_t)31;
    int failed = 0;
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
        /* Per-thread scratch: transposed keys (head_dim x lp) and scores (8 x lp). */
        float *kt = aligned_alloc(64, (size_t)(head_dim * lp * sizeof(float) + 64));
        float *s = aligned_alloc(64, (size_t)(8 * lp * sizeof(float) + 64));
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < sequences * heads; t++) {
            if (kt == NULL || s == NULL) {
#pragma omp atomic write
                failed = 1;
                continue;
            }
            const int64_t i = t / heads;
            task(qkv, out, starts[i], lengths[i], t % heads, heads, head_dim, scale, kt, s);
        }
        free(kt);
        free(s);
    }
    return failed ? -2 : 0;
}
