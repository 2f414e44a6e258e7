// Weight-only quantized products for every tier of simd.h, with int8 activations (qdot.h):
//   codegen_q8_mm: Y (M, N) = X (M, K) (s[n] Q[n, k])^T (+ b): Q int8 (N, K), one scale per output row;
//   codegen_q4_mm: the same with 4-bit Q in groups of G (a power of two, >= 32) along K, one scale per
//                  (row, group), in the kernel layout: per row and per 32 weights, 16 bytes whose low
//                  nibbles hold weights 0..15 and high nibbles 16..31, each as value + 8; rows padded
//                  with value 8 (zero) to Kp, a multiple of G. codegen/quant/formats.py makes this layout
//                  at load from the saved one (consecutive pairs, low nibble first), and back.
// X is fp32; each row is quantized to int8 with its own scale first (qdot.h says how), and the dot
// products run in int32. M is 1..16 (the decode rows; the caller splits larger batches into prefill
// products): every block of R weight rows is loaded once and multiplied with all M activation rows,
// which stay in L1. The weights are the only large stream: 1 byte (int8) or half a byte (int4) per
// weight instead of 2 or 4. Rows are split across OpenMP threads, as in kernels.cpp.
#include <stdlib.h>

#include <type_traits>

#include "qdot.h"

namespace {

using namespace codegen;

// Registers: R * M accumulators, 1-2 R weight vectors, the activations' vectors.
template <int M> constexpr int q_rows_per_block() {
    return W == 16 ? (M <= 2 ? 4 : M <= 4 ? 3 : 2) : (M <= 2 ? 3 : M <= 4 ? 2 : 1);
}

// The M rows of X quantized: one allocation per call (M * ~K bytes), reused within it.
struct Acts {
    QRow rows[16];
    void* mem = nullptr;
    Acts(const float* X, int64_t M, int64_t K, int fmt) {
        const int64_t bytes = act_bytes(K), lanes = act_lanes(K);
        mem = malloc(M * (2 * bytes + 4 * lanes) + 64);
        if (mem == nullptr) return;
        int32_t* bias = (int32_t*)mem;
        int8_t* q = (int8_t*)(bias + M * lanes);
        uint8_t* u = (uint8_t*)(q + M * bytes);
        for (int64_t m = 0; m < M; ++m) {
            int8_t* qm = q + m * bytes;
            int32_t* bm = bias + m * lanes;
            uint8_t* um = fmt == 8 && UNSIGNED_ACTS ? u + m * bytes : nullptr;
            rows[m] = QRow{qm, bm, quantize_act(X + m * K, K, fmt, qm, bm, um), um};
        }
    }
    ~Acts() { free(mem); }
};

// Y (M, N) from blocks of R weight rows split across threads: block(n0, rows, row_of, out) fills
// out[r][m] for rows n0..n0+rows-1 (row_of(r): that row, or a valid one to re-read past N).
template <int M, int R, typename Block>
void blocks_mm(const float* b, float* Y, int64_t N, int threads, Block block) {
    const int64_t blocks = (N + R - 1) / R;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t n0 = blk * R;
        const int rows = (int)(N - n0 < R ? N - n0 : R);
        float out[R][M];
        block(n0, [&](int r) { return n0 + (r < rows ? r : 0); }, out);
        for (int r = 0; r < rows; ++r)
            for (int m = 0; m < M; ++m) Y[m * N + n0 + r] = out[r][m] + (b ? b[n0 + r] : 0.0f);
    }
}

// 9..16 activation rows: two products per block of weight rows, with the first 8 rows and then the
// rest (the accumulators of more do not fit the registers), the second reading the block from L1: one
// pass over the weights where two passes of at most 8 rows read them twice (batch-16 int8 decode of
// the 350M shape was memory-bound at twice the weights' bytes). product(rows, x, out) runs one block
// product of `rows` activation rows (a std::integral_constant) into out[R][rows].
template <int M> constexpr int first_rows() { return M > 8 ? 8 : M; }

template <int M, int R, typename Product>
inline void in_halves(const QRow* x, float (*out)[M], Product product) {
    constexpr int M1 = first_rows<M>();
    if constexpr (M == M1) {
        product(std::integral_constant<int, M>{}, x, out);
    } else {
        float a[R][M1], c[R][M - M1];
        product(std::integral_constant<int, M1>{}, x, a);
        product(std::integral_constant<int, M - M1>{}, x + M1, c);
        for (int r = 0; r < R; ++r) {
            for (int m = 0; m < M1; ++m) out[r][m] = a[r][m];
            for (int m = M1; m < M; ++m) out[r][m] = c[r][m - M1];
        }
    }
}

template <int M, bool SUMS>
void q8_mm(const int8_t* Q, const float* s, const int32_t* sums, const QRow* x, const float* b, float* Y, int64_t N,
           int64_t K, int threads) {
    constexpr int R = q_rows_per_block<first_rows<M>()>();
    blocks_mm<M, R>(b, Y, N, threads, [&](int64_t, auto row_of, float (*out)[M]) {
        const int8_t* w[R];
        float sw[R];
        int32_t ws[R] = {};
        for (int r = 0; r < R; ++r) w[r] = Q + row_of(r) * K, sw[r] = s[row_of(r)], ws[r] = SUMS ? sums[row_of(r)] : 0;
        in_halves<M, R>(x, out, [&](auto rows, const QRow* xs, auto o) { q8_block<rows(), R, SUMS>(w, sw, K, xs, o, ws); });
    });
}
template <int M>
void q4_mm(const uint8_t* Q, const float* S, const QRow* x, const float* b, float* Y, int64_t N, int64_t K, int64_t Kp,
           int64_t G, int threads) {
    constexpr int R = q_rows_per_block<first_rows<M>()>();
    blocks_mm<M, R>(b, Y, N, threads, [&](int64_t, auto row_of, float (*out)[M]) {
        const uint8_t* w[R];
        const float* sc[R];
        for (int r = 0; r < R; ++r) w[r] = Q + row_of(r) * (Kp / 2), sc[r] = S + row_of(r) * (Kp / G);
        in_halves<M, R>(x, out, [&](auto rows, const QRow* xs, auto o) { q4_block<rows(), R>(w, sc, K, Kp, G, xs, o); });
    });
}
template <int M>
void q_mm(int bits, const void* Q, const float* S, const int32_t* sums, const QRow* x, const float* b, float* Y, int64_t N,
          int64_t K, int64_t Kp, int64_t G, int threads) {
    if (bits == 4) q4_mm<M>((const uint8_t*)Q, S, x, b, Y, N, K, Kp, G, threads);
    else if (UNSIGNED_ACTS && sums != nullptr) q8_mm<M, UNSIGNED_ACTS>((const int8_t*)Q, S, sums, x, b, Y, N, K, threads);
    else q8_mm<M, false>((const int8_t*)Q, S, nullptr, x, b, Y, N, K, threads);
}

int q_mm_rows(int bits, const void* Q, const float* S, const int32_t* sums, const float* X, const float* b, float* Y,
              int64_t M, int64_t N, int64_t K, int64_t Kp, int64_t G, int threads) {
    if (M < 1 || M > 16) return 1;
    Acts acts(X, M, K, bits);
    if (acts.mem == nullptr) return 2;
    const QRow* x = acts.rows;
    switch (M) {
#define CODEGEN_Q_MM_CASE(m) case m: q_mm<m>(bits, Q, S, sums, x, b, Y, N, K, Kp, G, threads); break;
        CODEGEN_Q_MM_CASE(1) CODEGEN_Q_MM_CASE(2) CODEGEN_Q_MM_CASE(3) CODEGEN_Q_MM_CASE(4) CODEGEN_Q_MM_CASE(5)
        CODEGEN_Q_MM_CASE(6) CODEGEN_Q_MM_CASE(7) CODEGEN_Q_MM_CASE(8) CODEGEN_Q_MM_CASE(9) CODEGEN_Q_MM_CASE(10)
        CODEGEN_Q_MM_CASE(11) CODEGEN_Q_MM_CASE(12) CODEGEN_Q_MM_CASE(13) CODEGEN_Q_MM_CASE(14) CODEGEN_Q_MM_CASE(15)
        default: q_mm<16>(bits, Q, S, sums, x, b, Y, N, K, Kp, G, threads); break;
#undef CODEGEN_Q_MM_CASE
    }
    return 0;
}

}  // namespace

// Return 0, or 1 when M is outside 1..16 or the layout is inconsistent (the caller then dequantizes
// and uses torch), 2 when memory for the quantized activations ran out.
// sums: null, or Q's row sums (N int32, sum_k Q[n, k]), which the VNNI tier's products then take
// instead of adding them up (other tiers ignore them).
extern "C" int codegen_q8_mm(const int8_t* Q, const float* s, const int32_t* sums, const float* X, const float* b, float* Y,
                             int64_t M, int64_t N, int64_t K, int threads) {
    return q_mm_rows(8, Q, s, sums, X, b, Y, M, N, K, K, 0, threads);
}

extern "C" int codegen_q4_mm(const uint8_t* Q, const float* S, const float* X, const float* b, float* Y, int64_t M,
                             int64_t N, int64_t K, int64_t Kp, int64_t G, int threads) {
    if (G < 32 || (G & (G - 1)) != 0 || Kp % G != 0 || Kp < K) return 1;  // G: 32, 64, 128, ...
    return q_mm_rows(4, Q, S, nullptr, X, b, Y, M, N, K, Kp, G, threads);
}

// The activation quantization of qdot.h, row by row (the prefill route's; tests compare it with the
// torch expression): each row of X (M, K) fp32 quantized to int8 into Q (M, K), natural order, its
// scale into S (M) (a thread's row goes through its own padded buffer). 2 when memory ran out.
extern "C" int codegen_quantize_rows(const float* X, int64_t M, int64_t K, int8_t* Q, float* S, int threads) {
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        int8_t* buf = (int8_t*)malloc(act_bytes(K));
        if (buf == nullptr) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m)
            if (buf != nullptr) {
                S[m] = quantize_act(X + m * K, K, 8, buf, nullptr);
                memcpy(Q + m * K, buf, K);
            }
        free(buf);
    }
    return failed ? 2 : 0;
}

// The prefill route's int8 epilogue: Y[m, n] = float(A[m, n]) * (sx[m] * sw[n]) (+ b[n]) for A (M, N)
// int32 sums (row stride lda), Y row stride ldy: torch's `A.float() * (sx * sw) + b` in one pass
// instead of four over fresh tensors (the bias added apart, so the product and sum round as torch's).
extern "C" void codegen_int_epilogue(const int32_t* A, int64_t lda, const float* sx, const float* sw, const float* b,
                                     float* Y, int64_t ldy, int64_t M, int64_t N, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t m = 0; m < M; ++m) {
        const int32_t* a = A + m * lda;
        float* y = Y + m * ldy;
        const float s = sx[m];
        for (int64_t n = 0; n < N; ++n) y[n] = (float)a[n] * (s * sw[n]);
        if (b != nullptr)
            for (int64_t n = 0; n < N; ++n) y[n] += b[n];
    }
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
