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
 * Written with GCC vector extensions (portable C, no intrinsics); the task function is compiled for AVX-512, AVX2
 * and baseline x86-64, each with its own tile sizes, and bertmesh_attention_select picks the best the processor
 * has (or the best up to a cap, to measure the AVX2 code on an AVX-512 machine).
 */
#ifndef LANES
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The vector code below (after #else) is compiled once per instruction set, by including this file into itself,
 * with vectors as wide as that set's registers: LANES floats per vector, ROWS_32 / ROWS_64 query rows per tile
 * at head size 32 / 64. Wider vectors than the registers are no good: GCC lowers a 16-float vector on AVX2 to
 * pieces moved through the stack (measured, `python -m bench kernels`: 30x slower than AVX-512, 10-30x slower
 * than PyTorch's attention). AVX-512 (32 registers of 16 floats): 8 rows at 32 (8 x 2 score vectors + 2 key
 * vectors), 4 at 64. AVX2 (16 registers of 8 floats): 4 rows at 32 (8 score + 2 key registers), 2 at 64. */
#define CONCAT_(a, b) a##b
#define CONCAT(a, b) CONCAT_(a, b)
#define NAMED(name) CONCAT(name, LANES)

/* GCC's `#pragma GCC target("arch=...")`; other compilers (clang ignores the pragma) get the baseline code only. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PER_ISA_CODE 1
#endif

#ifdef PER_ISA_CODE
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define LANES 16
#define LANE_INDICES {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
#define ROWS_32 8
#define ROWS_64 4
#include __FILE__
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define LANES 8
#define LANE_INDICES {0, 1, 2, 3, 4, 5, 6, 7}
#define ROWS_32 4
#define ROWS_64 2
#include __FILE__
#pragma GCC pop_options
#endif

/* Baseline x86-64 (SSE2: 16 registers of 4 floats), and any other processor. */
#define LANES 4
#define LANE_INDICES {0, 1, 2, 3}
#define ROWS_32 4
#define ROWS_64 2
#include __FILE__

typedef void (*task_fn)(const float *, float *, int64_t, int64_t, int64_t, int64_t, int64_t, float, float *,
                        float *);

/* Instruction-set levels, in the order of preference: 2 AVX-512 (x86-64-v4), 1 AVX2 (x86-64-v3), 0 baseline. */
static task_fn chosen_task = task_4;
static int level = -1;

/* Selects the best code the processor runs, at most `cap` (2, 1 or 0; -1: no cap); returns the level chosen.
 * BERTMESH_KERNEL_ISA reaches here through model_server.backend.native_attention. */
int bertmesh_attention_select(int cap) {
    if (cap < 0) cap = 2;
#ifdef PER_ISA_CODE
    __builtin_cpu_init();
    if (cap >= 2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
        chosen_task = task_16;
        return level = 2;
    }
    if (cap >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        chosen_task = task_8;
        return level = 1;
    }
#endif
    chosen_task = task_4;
    return level = 0;
}

/* About 100-200 microseconds of one core's work: more than a passive thread's wake-up. */
#define MIN_WORK_PER_THREAD (8.0 * 1024 * 1024)

/* Head dimensions this kernel handles (others use PyTorch's attention). */
int bertmesh_attention_supports(int64_t head_dim) { return head_dim == 32 || head_dim == 64; }

/* Attention of every sequence in the batch on `threads` threads (torch's setting: the calling thread's own
 * OpenMP default may be every core of the node); 0 on success, -1 for an unsupported head_dim, -2 out of memory. */
int bertmesh_packed_attention(const float *qkv, float *out, const int64_t *starts, const int64_t *lengths,
                              int64_t sequences, int64_t heads, int64_t head_dim, float scale, int threads) {
    if (!bertmesh_attention_supports(head_dim)) return -1;
    if (level < 0) bertmesh_attention_select(-1);
    int64_t longest = 0;
    double work = 0.0; /* multiply-adds: scores and weighted values */
    for (int64_t i = 0; i < sequences; i++) {
        longest = lengths[i] > longest ? lengths[i] : longest;
        work += 2.0 * (double)lengths[i] * (double)lengths[i] * (double)(heads * head_dim);
    }
    const int64_t lp = (longest + 31) & ~(int64_t)31;
    /* Small batches (one short sentence) take fewer threads than offered: waking a thread that waits passively
     * (the server's OpenMP policy) costs more than its share of the work saves. */
    const double useful = 1.0 + work / MIN_WORK_PER_THREAD;
    const int team = threads < 1 ? 1 : (useful < (double)threads ? (int)useful : threads);
    int failed = 0;
#pragma omp parallel num_threads(team) if (team > 1)
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
            chosen_task(qkv, out, starts[i], lengths[i], t % heads, heads, head_dim, scale, kt, s);
        }
        free(kt);
        free(s);
    }
    return failed ? -2 : 0;
}

#else /* the vector code, for LANES floats per vector */
#define vec NAMED(vec_)
#define veci NAMED(veci_)
#define vecu NAMED(vecu_)
#define load NAMED(load_)
#define store NAMED(store_)
#define splat NAMED(splat_)
#define pick NAMED(pick_)
#define vexp NAMED(vexp_)
#define swap NAMED(swap_)
#define hmax NAMED(hmax_)
#define hsum NAMED(hsum_)
#define attend NAMED(attend_)
#define task NAMED(task_)

typedef float vec __attribute__((vector_size(4 * LANES)));
typedef int32_t veci __attribute__((vector_size(4 * LANES)));
typedef float vecu __attribute__((vector_size(4 * LANES), aligned(4)));

static inline vec load(const float *p) { return *(const vecu *)p; }
static inline void store(float *p, vec v) { *(vecu *)p = v; }

static inline vec splat(float x) {
    vec v = {0};
    return v + x;
}

/* Lane-wise select without C++'s vector ?: (mask lanes are all ones or zero). */
static inline vec pick(veci mask, vec yes, vec no) { return (vec)(((veci)yes & mask) | ((veci)no & ~mask)); }

/* e^x for x <= 0 (scores minus their row's maximum), Cephes' single-precision polynomial (about 1 ulp); x
 * below -87 gives e^-87 (no denormals). */
static inline vec vexp(vec x) {
    x = pick(x < splat(-87.0f), splat(-87.0f), x);
    const vec magic = splat(12582912.0f); /* 1.5 * 2^23: adding and subtracting it rounds to an integer */
    vec n = (x * 1.44269504088896341f + magic) - magic;
    vec r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vec p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    veci bits = (__builtin_convertvector(n, veci) + 127) << 23;
    return p * (vec)bits;
}

/* Horizontal max and sum by halving (log2 LANES shuffles), not LANES scalar steps. */
static inline vec swap(vec v, int width) {
    const veci lanes = LANE_INDICES;
    return __builtin_shuffle(v, lanes ^ width);
}

static inline float hmax(vec v) {
    for (int width = LANES / 2; width > 0; width /= 2) v = pick(swap(v, width) > v, swap(v, width), v);
    return v[0];
}

static inline float hsum(vec v) {
    for (int width = LANES / 2; width > 0; width /= 2) v += swap(v, width);
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
            const vec x = load(k + j * row + c * LANES) * scale;
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
            vec a[8], b[8];
            for (int r = 0; r < R; r++) a[r] = b[r] = splat(0.0f);
            for (int d = 0; d < D; d++) {
                const vec ka = load(kt + d * lp + j), kb = load(kt + d * lp + j + LANES);
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
            vec m = load(sr);
            for (int64_t j = LANES; j < lp; j += LANES) {
                const vec x = load(sr + j);
                m = pick(x > m, x, m);
            }
            const vec top = splat(hmax(m));
            vec sum = splat(0.0f);
            for (int64_t j = 0; j < lp; j += LANES) {
                const vec e = vexp(load(sr + j) - top);
                store(sr + j, e);
                sum += e;
            }
            for (int64_t j = len; j < lp; j++) sr[j] = 0.0f; /* padding's e^-87 (in `sum` too: negligible) */
            inverse[r] = 1.0f / hsum(sum);
        }
        /* Weighted sum of values: R rows x D in registers. */
        vec o[8][64 / LANES];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < D / LANES; c++) o[r][c] = splat(0.0f);
        for (int64_t j = 0; j < len; j++) {
            vec vv[64 / LANES];
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

/* One (sequence, head) of head size 32 or 64 with this width's register tiles. */
static void task(const float *qkv, float *out, int64_t start, int64_t len, int64_t head, int64_t heads,
                 int64_t head_dim, float scale, float *kt, float *s) {
    if (head_dim == 32)
        attend(qkv, out, start, len, head, heads, scale, kt, s, 32, ROWS_32);
    else
        attend(qkv, out, start, len, head, heads, scale, kt, s, 64, ROWS_64);
}

#undef vec
#undef veci
#undef vecu
#undef load
#undef store
#undef splat
#undef pick
#undef vexp
#undef swap
#undef hmax
#undef hsum
#undef attend
#undef task
#undef LANES
#undef LANE_INDICES
#undef ROWS_32
#undef ROWS_64
#endif
