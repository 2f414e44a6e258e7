// Decode-step products, fp32 accumulation, for every tier of simd.h:
//   codegen_bf16_gemv:   y (N) = W (N, K) x (K) (+ b), bf16 (VDPBF16PS on avx512bf16);
//   codegen_f32_gemv:    the same in fp32;
//   codegen_f32_smallmm: Y (M, N) = X (M, K) W (N, K)^T (+ b), fp32, 2 <= M <= 8;
//   codegen_bf16_smallmm: the same with W in bf16 (X, b, Y fp32: the caller widens a bf16 model's few
//                         rows and rounds Y): half the bytes streamed; every tier widens W's values
//                         in registers (a shift), so the products and sums are fp32's.
//
// A decode step multiplies one or a few rows by every weight matrix, so it is bound by streaming W
// from memory. On a 2-core Sapphire Rapids VM torch streams bf16 matrix-vector products at ~14-19
// GB/s where its fp32 ones reach ~25, and 8-row fp32 products at ~11-14 GB/s. Here (measured with
// the same weights, benchmarks/generate.py for the whole model):
// - gemv reads rows in order (one stream per thread), with 4 accumulators to hide the FMA /
//   VDPBF16PS latency and a software prefetch 2 KiB ahead: ~24-26 GB/s in bf16, and in fp32 a few
//   % faster than torch's within a decode step;
// - fp32 M-row products read each block of R weight rows once and dot them with all M rows of X
//   (held in L1); at M = 8 the FMAs take as long as the loads, so the weights are prefetched 8 KiB
//   ahead into L2 to overlap the two: ~15-16 GB/s where torch's addmm gets ~11.
// Rows are split across OpenMP threads; the library links libgomp.so.1, the runtime torch has
// already loaded, so there is one thread pool. Plain C ABI, called through ctypes by
// codegen/native/kernels.py, which compiles this file on first use.
#include "simd.h"

namespace {

using namespace codegen;

// Y (M, N) = X (M, K) W (N, K)^T (+ b): every block of R weight rows is loaded once and multiplied with
// all M rows of X, which stay in L1; the weights are prefetched PF bytes ahead into L2 so that loads and
// FMAs overlap.
template <int M, int R, int PF, typename T>
void rows_mm(const T* Wt, const float* X, const float* b, float* Y, int64_t N, int64_t K, int threads) {
    const int64_t blocks = (N + R - 1) / R;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t n0 = blk * R;
        const int rows = (int)(N - n0 < R ? N - n0 : R);
        const T* w[R];
        for (int r = 0; r < R; ++r) w[r] = Wt + (n0 + (r < rows ? r : 0)) * K;  // past N: re-read a valid row
        vf acc[R][M];
        for (int r = 0; r < R; ++r)
            for (int m = 0; m < M; ++m) acc[r][m] = vzero();
        for (int64_t k = 0; k < K; k += W) {
            const int64_t n = K - k;
            vf wv[R];
            for (int r = 0; r < R; ++r) {
                __builtin_prefetch((const char*)(w[r] + k) + PF, 0, 2);
                wv[r] = vload(w[r] + k, n);
            }
            for (int m = 0; m < M; ++m) {
                const vf xv = vload(X + m * K + k, n);
                for (int r = 0; r < R; ++r) acc[r][m] = vfma(wv[r], xv, acc[r][m]);
            }
        }
        for (int r = 0; r < rows; ++r)
            for (int m = 0; m < M; ++m) {
                const float v = vsum(acc[r][m]);
                Y[m * N + n0 + r] = v + (b ? b[n0 + r] : 0.0f);
            }
    }
}

// Registers: R * M accumulators, R weight vectors and one X vector, out of 32 (AVX-512) or 16.
template <int M> constexpr int rows_per_block() {
    return W == 16 ? (M == 2 ? 8 : M == 3 ? 6 : M == 4 ? 5 : M <= 6 ? 3 : 2) : (M <= 3 ? 3 : M <= 5 ? 2 : 1);
}

constexpr int F32_PREFETCH_BYTES = 8192;

template <int M, typename T>
void smallmm(const T* Wt, const float* X, const float* b, float* Y, int64_t N, int64_t K, int threads) {
    rows_mm<M, rows_per_block<M>(), F32_PREFETCH_BYTES>(Wt, X, b, Y, N, K, threads);
}

template <typename T>
int smallmm_rows(const T* Wt, const float* X, const float* b, float* Y, int64_t M, int64_t N, int64_t K, int threads) {
    switch (M) {
        case 2: smallmm<2>(Wt, X, b, Y, N, K, threads); return 0;
        case 3: smallmm<3>(Wt, X, b, Y, N, K, threads); return 0;
        case 4: smallmm<4>(Wt, X, b, Y, N, K, threads); return 0;
        case 5: smallmm<5>(Wt, X, b, Y, N, K, threads); return 0;
        case 6: smallmm<6>(Wt, X, b, Y, N, K, threads); return 0;
        case 7: smallmm<7>(Wt, X, b, Y, N, K, threads); return 0;
        case 8: smallmm<8>(Wt, X, b, Y, N, K, threads); return 0;
    }
    return 1;
}

// y = gelu_new(x) elementwise over n values, fp32 or (bf16 != 0) bf16 computed in fp32 and rounded to
// nearest even, as torch does (y may be x).
template <typename T> void gelu_tanh(const T* x, T* y, int64_t n, int threads) {
    const int64_t blocks = (n + W - 1) / W;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; ++b) vstore(y + b * W, n - b * W, vgelu(vload(x + b * W, n - b * W)));
}

}  // namespace

// The tier this library was compiled for: its SIMD width and whether bf16 dot products are native.
extern "C" int codegen_simd_width() { return W; }
extern "C" int codegen_native_bf16_dot() { return NATIVE_BF16_DOT ? 1 : 0; }

// Returns 0, or 1 when M is outside 2..8 (the caller then uses torch).
extern "C" int codegen_f32_smallmm(const float* Wt, const float* X, const float* b, float* Y, int64_t M, int64_t N,
                                   int64_t K, int threads) {
    return smallmm_rows(Wt, X, b, Y, M, N, K, threads);
}

extern "C" int codegen_bf16_smallmm(const uint16_t* Wt, const float* X, const float* b, float* Y, int64_t M, int64_t N,
                                    int64_t K, int threads) {
    return smallmm_rows(Wt, X, b, Y, M, N, K, threads);
}

extern "C" void codegen_f32_gemv(const float* Wt, const float* x, const float* b, float* y, int64_t N, int64_t K,
                                 int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; ++n) y[n] = dot_f32(Wt + n * K, x, K) + (b ? b[n] : 0.0f);
}

extern "C" void codegen_gelu_tanh(const void* x, void* y, int64_t n, int bf16, int threads) {
    if (bf16) gelu_tanh((const uint16_t*)x, (uint16_t*)y, n, threads);
    else gelu_tanh((const float*)x, (float*)y, n, threads);
}

extern "C" void codegen_bf16_gemv(const uint16_t* Wt, const uint16_t* x, const uint16_t* b, uint16_t* y, int64_t N,
                                  int64_t K, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; ++n) y[n] = f32_to_bf16(dot_bf16(Wt + n * K, x, K) + (b ? bf16_to_f32(b[n]) : 0.0f));
}
