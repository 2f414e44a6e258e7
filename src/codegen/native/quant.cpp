// Weight-only quantized products for every tier of simd.h; fp32 activations and accumulation.
//   codegen_q8_mm: Y (M, N) = X (M, K) (s[n] Q[n, k])^T (+ b): Q int8 (N, K), one scale per output row;
//   codegen_q4_mm: the same with 4-bit Q in groups of G (a multiple of 32) along K, one scale per
//                  (row, group), in the kernel layout: per row and per 32 weights, 16 bytes whose low
//                  nibbles hold weights 0..15 and high nibbles 16..31, each as value + 8; rows padded
//                  with value 8 (zero) to Kp, a multiple of G. codegen/quant/formats.py makes this layout
//                  at load from the saved one (consecutive pairs, low nibble first), and back.
// M is 1..16 (the decode rows; the caller splits larger batches into prefill products): every block of
// R weight rows is widened to fp32 once and multiplied with all M rows of X, which stay in L1. The
// weights are the only large stream: 1 byte (int8) or half a byte (int4) per weight instead of 2 or 4.
// Rows are split across OpenMP threads, as in kernels.cpp.
#include "rows.h"

namespace {

using namespace codegen;

constexpr int Q_PREFETCH_BYTES = 4096;

// Registers: R * M accumulators, R weight vectors and one X vector.
template <int M> constexpr int q_rows_per_block() {
    return W == 16 ? (M == 1 ? 4 : M <= 3 ? 4 : M <= 6 ? 3 : 2) : (M <= 2 ? 3 : M <= 5 ? 2 : 1);
}

template <int M>
void q8_mm(const int8_t* Q, const float* s, const float* X, const float* b, float* Y, int64_t N, int64_t K, int threads) {
    rows_mm<M, q_rows_per_block<M>(), Q_PREFETCH_BYTES>(Q, s, X, b, Y, N, K, threads);
}

template <int M>
void q4_mm(const uint8_t* Q, const float* S, const float* X, const float* b, float* Y, int64_t N, int64_t K, int64_t Kp,
           int64_t G, int threads) {
    constexpr int R = q_rows_per_block<M>();
    const int64_t blocks = (N + R - 1) / R;
    const int64_t groups = Kp / G;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t n0 = blk * R;
        const int rows = (int)(N - n0 < R ? N - n0 : R);
        const uint8_t* w[R];
        const float* sc[R];
        for (int r = 0; r < R; ++r) {
            const int64_t row = n0 + (r < rows ? r : 0);
            w[r] = Q + row * (Kp / 2);
            sc[r] = S + row * groups;
        }
        vf acc[R][M];
        for (int r = 0; r < R; ++r)
            for (int m = 0; m < M; ++m) acc[r][m] = vzero();
        for (int64_t k0 = 0; k0 < K; k0 += 32) {  // 32 weights = 16 bytes per row
            vf table[R];
            for (int r = 0; r < R; ++r) {
                __builtin_prefetch(w[r] + k0 / 2 + Q_PREFETCH_BYTES, 0, 2);
                table[r] = q4_table(sc[r][k0 / G]);
            }
            for (int hi = 0; hi < 2; ++hi)
                for (int c = 0; c < 16 / W; ++c) {
                    const int64_t k = k0 + hi * 16 + c * W;
                    if (k >= K) continue;
                    const int64_t n = K - k;
                    vf wv[R];
                    for (int r = 0; r < R; ++r) wv[r] = vload_q4(w[r] + k0 / 2 + c * W, hi, table[r]);
                    for (int m = 0; m < M; ++m) {
                        const vf xv = vload(X + m * K + k, n);
                        for (int r = 0; r < R; ++r) acc[r][m] = vfma(wv[r], xv, acc[r][m]);
                    }
                }
        }
        for (int r = 0; r < rows; ++r)
            for (int m = 0; m < M; ++m) Y[m * N + n0 + r] = vsum(acc[r][m]) + (b ? b[n0 + r] : 0.0f);
    }
}

}  // namespace

// Returns 0, or 1 when M is outside 1..16 (the caller then dequantizes and uses torch).
extern "C" int codegen_q8_mm(const int8_t* Q, const float* s, const float* X, const float* b, float* Y, int64_t M, int64_t N,
                             int64_t K, int threads) {
    while (M > 0) {  // 9..16 rows: two passes of at most 8 (the accumulators of more do not fit the registers)
        const int64_t m = M > 8 ? 8 : M;
        switch (m) {
            case 1: q8_mm<1>(Q, s, X, b, Y, N, K, threads); break;
            case 2: q8_mm<2>(Q, s, X, b, Y, N, K, threads); break;
            case 3: q8_mm<3>(Q, s, X, b, Y, N, K, threads); break;
            case 4: q8_mm<4>(Q, s, X, b, Y, N, K, threads); break;
            case 5: q8_mm<5>(Q, s, X, b, Y, N, K, threads); break;
            case 6: q8_mm<6>(Q, s, X, b, Y, N, K, threads); break;
            case 7: q8_mm<7>(Q, s, X, b, Y, N, K, threads); break;
            case 8: q8_mm<8>(Q, s, X, b, Y, N, K, threads); break;
            default: return 1;
        }
        X += m * K;
        Y += m * N;
        M -= m;
    }
    return 0;
}

extern "C" int codegen_q4_mm(const uint8_t* Q, const float* S, const float* X, const float* b, float* Y, int64_t M,
                             int64_t N, int64_t K, int64_t Kp, int64_t G, int threads) {
    if (G % 32 != 0 || Kp % G != 0 || Kp < K) return 1;
    while (M > 0) {
        const int64_t m = M > 8 ? 8 : M;
        switch (m) {
            case 1: q4_mm<1>(Q, S, X, b, Y, N, K, Kp, G, threads); break;
            case 2: q4_mm<2>(Q, S, X, b, Y, N, K, Kp, G, threads); break;
            case 3: q4_mm<3>(Q, S, X, b, Y, N, K, Kp, G, threads); break;
            case 4: q4_mm<4>(Q, S, X, b, Y, N, K, Kp, G, threads); break;
            case 5: q4_mm<5>(Q, S, X, b, Y, N, K, Kp, G, threads); break;
            case 6: q4_mm<6>(Q, S, X, b, Y, N, K, Kp, G, threads); break;
            case 7: q4_mm<7>(Q, S, X, b, Y, N, K, Kp, G, threads); break;
            case 8: q4_mm<8>(Q, S, X, b, Y, N, K, Kp, G, threads); break;
            default: return 1;
        }
        X += m * K;
        Y += m * N;
        M -= m;
    }
    return 0;
}

// Rows [0, N) of a quantized matrix as fp32 (N, K) into out: the prefill route's dequantization, one
// pass over the packed weights (bits 8: Q int8 (N, K), S (N,); bits 4: the kernels' layout, Kp, G).
extern "C" int codegen_dequantize(const void* Q, const float* S, float* out, int64_t N, int64_t K, int64_t Kp, int64_t G,
                                  int bits, int threads) {
    if (bits != 8 && (bits != 4 || G % 32 != 0 || Kp % G != 0 || Kp < K)) return 1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; ++n) {
        float* y = out + n * K;
        if (bits == 8) {
            const int8_t* q = (const int8_t*)Q + n * K;
            const vf s = vset(S[n]);
            for (int64_t k = 0; k < K; k += W) vstore(y + k, K - k, vmul(vload_i8(q + k, K - k), s));
        } else {
            const uint8_t* q = (const uint8_t*)Q + n * (Kp / 2);
            for (int64_t k0 = 0; k0 < K; k0 += 32) {
                const vf table = q4_table(S[n * (Kp / G) + k0 / G]);
                for (int hi = 0; hi < 2; ++hi)
                    for (int c = 0; c < 16 / W; ++c) {
                        const int64_t k = k0 + hi * 16 + c * W;
                        if (k < K) vstore(y + k, K - k, vload_q4(q + k0 / 2 + c * W, hi, table));
                    }
            }
        }
    }
    return 0;
}
