/* Few-row float32 products for x86 CPUs with AVX2 and FMA: y[M, N] = x[M, K] @ w[N, K]^T.
 *
 * A verifier step multiplies each weight matrix by a handful of rows (the last token and a draft
 * tree). The cost is streaming the weights from memory; this loop reads each weight row once,
 * while it is in L1, for up to 8 rows of x at a time (their running sums stay in registers), and
 * splits the weight rows between OpenMP threads. Built and loaded by kernels/cpu_gemm.py.
 */
#include <immintrin.h>

#define TILE_ROWS 8

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* y[m * N] = dot(x[m * K ...], w_row) for m < ROWS: one weight row against ROWS rows of x */
#define TILE(ROWS)                                                                                 \
    static void tile_##ROWS(const float *x, const float *w_row, float *y, long N, long K) {      \
        __m256 sum[ROWS];                                                                          \
        float tail[ROWS];                                                                          \
        for (int m = 0; m < ROWS; m++) sum[m] = _mm256_setzero_ps(), tail[m] = 0.0f;               \
        long k = 0;                                                                                \
        for (; k + 8 <= K; k += 8) {                                                               \
            __m256 w = _mm256_loadu_ps(w_row + k);                                                 \
            for (int m = 0; m < ROWS; m++)                                                         \
                sum[m] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + m * K + k), sum[m]);               \
        }                                                                                          \
        for (; k < K; k++)                                                                         \
            for (int m = 0; m < ROWS; m++) tail[m] += w_row[k] * x[m * K + k];                     \
        for (int m = 0; m < ROWS; m++) y[m * N] = hsum(sum[m]) + tail[m];                          \
    }
TILE(1) TILE(2) TILE(3) TILE(4) TILE(5) TILE(6) TILE(7) TILE(8)

typedef void (*tile_fn)(const float *, const float *, float *, long, long);
static const tile_fn TILES[TILE_ROWS + 1] = {0, tile_1, tile_2, tile_3, tile_4,
                                             tile_5, tile_6, tile_7, tile_8};

/* x, w and y contiguous, row-major. */
void few_rows_gemm(const float *x, const float *w, float *y, long M, long N, long K) {
#pragma omp parallel for schedule(static)
    for (long n = 0; n < N; n++) {
        for (long m = 0; m < M; m += TILE_ROWS) {
            long rows = M - m < TILE_ROWS ? M - m : TILE_ROWS;
            TILES[rows](x + m * K, w + n * K, y + m * N + n, N, K);
        }
    }
}
