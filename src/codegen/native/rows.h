// The M-row product both fp32 (kernels.cpp) and int8 (quant.cpp) weights use for batched decode steps:
//   Y (M, N) = X (M, K) . (s[n] W[n, k])^T (+ b), fp32 accumulation, s null for unscaled weights.
// Every block of R weight rows is loaded (widened) once and multiplied with all M rows of X, which stay
// in L1; the weights are prefetched PF bytes ahead into L2 so that loads and FMAs overlap. Rows are
// split across OpenMP threads.
#pragma once
#include "simd.h"

namespace codegen {

inline vf vload_w(const float* p, int64_t n) { return vload(p, n); }
inline vf vload_w(const int8_t* p, int64_t n) { return vload_i8(p, n); }

template <int M, int R, int PF, typename Tw>
void rows_mm(const Tw* Wt, const float* s, const float* X, const float* b, float* Y, int64_t N, int64_t K, int threads) {
    const int64_t blocks = (N + R - 1) / R;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t n0 = blk * R;
        const int rows = (int)(N - n0 < R ? N - n0 : R);
        const Tw* w[R];
        for (int r = 0; r < R; ++r) w[r] = Wt + (n0 + (r < rows ? r : 0)) * K;  // past N: re-read a valid row
        vf acc[R][M];
        for (int r = 0; r < R; ++r)
            for (int m = 0; m < M; ++m) acc[r][m] = vzero();
        for (int64_t k = 0; k < K; k += W) {
            const int64_t n = K - k;
            vf wv[R];
            for (int r = 0; r < R; ++r) {
                __builtin_prefetch((const char*)(w[r] + k) + PF, 0, 2);
                wv[r] = vload_w(w[r] + k, n);
            }
            for (int m = 0; m < M; ++m) {
                const vf xv = vload(X + m * K + k, n);
                for (int r = 0; r < R; ++r) acc[r][m] = vfma(wv[r], xv, acc[r][m]);
            }
        }
        for (int r = 0; r < rows; ++r)
            for (int m = 0; m < M; ++m) {
                const float v = vsum(acc[r][m]);
                Y[m * N + n0 + r] = (s ? v * s[n0 + r] : v) + (b ? b[n0 + r] : 0.0f);
            }
    }
}

}  // namespace codegen
