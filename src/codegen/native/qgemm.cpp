// int4 weights times many activation rows (prefills) for every tier of simd.h: codegen_q4_gemm.
//   Y (M, N) = X (M, K) W^T (+ b), W in 4-bit groups of G along K (quant.cpp's kernel layout, scales S
//   (N, Kp / G)), every row of X quantized to int8 with its own scale (qdot.h's quantize_act), the
//   products summed exactly in int32 within a group and in fp32 across groups:
//     y[m, n] = sx[m] * sum_g S[n, g] * (sum_{k in g} u[n, k] x[m, k] - 8 sum_{k in g} x[m, k])
//   with u = value + 8 the stored nibble (0..15, unsigned: the integer products' unsigned operand) and
//   the second sum, corr[m, g], computed once per activation row.
// quant.cpp's 1-16 row products load a vector of one weight row's K values and reduce lanes at the end;
// here the roles turn around, as in a GEMM: a vector holds LANES weight rows' 4 consecutive values
// (4 bytes each), an activation row's 4 values are broadcast to all lanes, and each lane's int32 sum
// is already an output element's. A group's sums are turned into fp32 once per group (not once per 4
// values), scaled by a vector of LANES rows' group scales. A block of NB weight rows is unpacked to
// bytes in that order into a thread's buffer ([K / 4][NB][4]), once per MB activation rows; tiles of
// MT activation rows x NB weight rows keep 2 * MT * NT accumulators in registers.
#include <stdlib.h>

#include "qdot.h"

namespace {

using namespace codegen;

#if defined(__AVX512F__) || defined(__ARM_FEATURE_DOTPROD) || !defined(__AVX2__)
constexpr int MT = 6, NT = 2;  // 32 vector registers (generic: whatever the compiler makes of it)
#else
constexpr int MT = 3, NT = 2;  // AVX2: 16 registers
#endif
constexpr int NB = NT * LANES;  // weight rows per block
constexpr int64_t MB = 512;     // activation rows per pass over the weights (~K * MB bytes of them in cache)

// Rows n0.. of W as bytes in the tiles' order, and their scales [g][NB]; rows past N hold value 0 (nibble
// 8). Eight bytes at a time (16 values): their low nibbles are values i..i+7 of a unit of 32, the high
// ones i+16..i+23, each 4 consecutive values one 32-bit word of the buffer (a store per word).
void unpack(const uint8_t* Q, const float* S, int64_t n0, int64_t N, int64_t Kp, int64_t groups, uint8_t* wb, float* sb) {
    const uint64_t low = 0x0F0F0F0F0F0F0F0Full;
    for (int n = 0; n < NB; ++n) {
        const bool real = n0 + n < N;
        const uint8_t* q = Q + (n0 + n) * (Kp / 2);
        for (int64_t g = 0; g < groups; ++g) sb[g * NB + n] = real ? S[(n0 + n) * groups + g] : 0.0f;
        for (int64_t k0 = 0; k0 < Kp; k0 += 32)
            for (int i = 0; i < 16; i += 8) {
                uint64_t v = 0x8888888888888888ull;
                if (real) memcpy(&v, q + k0 / 2 + i, 8);
                const uint64_t lo = v & low, hi = (v >> 4) & low;
                const uint32_t words[4] = {(uint32_t)lo, (uint32_t)(lo >> 32), (uint32_t)hi, (uint32_t)(hi >> 32)};
                const int64_t at[4] = {k0 + i, k0 + i + 4, k0 + 16 + i, k0 + 20 + i};
                for (int j = 0; j < 4; ++j) memcpy(wb + (at[j] / 4 * NB + n) * 4, &words[j], 4);
            }
    }
}

// R (<= MT) activation rows x NB weight rows: f[m][j] = sum_g scale * (corr + sum u x), lanes = rows.
template <int R>
CODEGEN_INLINE void tile(const int8_t* x, int64_t ldx, const int32_t* corr, int64_t groups, int64_t G, const uint8_t* wb,
                         const float* sb, vf (&f)[MT][NT]) {
    for (int m = 0; m < R; ++m)
        for (int j = 0; j < NT; ++j) f[m][j] = vzero();
    const int64_t steps = G / 4;
    for (int64_t g = 0; g < groups; ++g) {
        ivec a[R][NT];
        for (int m = 0; m < R; ++m) {
            const ivec c = iset(corr[m * groups + g]);
            for (int j = 0; j < NT; ++j) a[m][j] = c;
        }
        const uint8_t* w = wb + g * steps * NB * 4;
        const int8_t* xg = x + g * G;
        for (int64_t s = 0; s < steps; ++s) {
            bvec wv[NT];
            for (int j = 0; j < NT; ++j) wv[j] = bload(w + s * NB * 4 + j * VB);
            for (int m = 0; m < R; ++m) {
                const bvec xb = bcast4(xg + m * ldx + 4 * s);
                for (int j = 0; j < NT; ++j) a[m][j] = udot(a[m][j], wv[j], xb);
            }
        }
        for (int j = 0; j < NT; ++j) {
            const vf sc = vload(sb + g * NB + j * LANES);
            for (int m = 0; m < R; ++m) f[m][j] = vfma(itof(a[m][j]), sc, f[m][j]);
        }
    }
}

template <int R>
void tile_out(const int8_t* x, int64_t ldx, const int32_t* corr, const float* sx, int64_t groups, int64_t G, const uint8_t* wb,
              const float* sb, const float* b, float* Y, int64_t n0, int64_t N) {
    vf f[MT][NT];
    tile<R>(x, ldx, corr, groups, G, wb, sb, f);
    for (int j = 0; j < NT; ++j) {
        const int64_t n = n0 + j * LANES, cnt = N - n < LANES ? N - n : LANES;
        if (cnt <= 0) break;
        const vf bias = b ? vload(b + n, cnt) : vzero();
        for (int m = 0; m < R; ++m) vstore(Y + m * N + n, cnt, vadd(vmul(f[m][j], vset(sx[m])), bias));
    }
}

// The pass's last rows (fewer than MT): the tile of exactly that many.
template <int R>
void tile_rest(int64_t rows, const int8_t* x, int64_t ldx, const int32_t* corr, const float* sx, int64_t groups, int64_t G,
               const uint8_t* wb, const float* sb, const float* b, float* Y, int64_t n0, int64_t N) {
    if constexpr (R > 0) {
        if (rows == R) tile_out<R>(x, ldx, corr, sx, groups, G, wb, sb, b, Y, n0, N);
        else tile_rest<R - 1>(rows, x, ldx, corr, sx, groups, G, wb, sb, b, Y, n0, N);
    }
}

}  // namespace

// 0, 1 for an inconsistent layout (G not a power of two >= 32, Kp not a multiple of G or < K, M < 1),
// 2 when memory ran out. Any M; the caller uses quant.cpp's products for the decode rows.
extern "C" int codegen_q4_gemm(const uint8_t* Q, const float* S, const float* X, const float* b, float* Y, int64_t M,
                               int64_t N, int64_t K, int64_t Kp, int64_t G, int threads) {
    if (G < 32 || (G & (G - 1)) != 0 || Kp % G != 0 || Kp < K || M < 1) return 1;
    const int64_t groups = Kp / G, ldx = round_up(act_bytes(K) > Kp ? act_bytes(K) : Kp, 64);
    int8_t* xq = (int8_t*)malloc(M * ldx);
    int32_t* corr = (int32_t*)malloc(M * groups * sizeof(int32_t));
    float* sx = (float*)malloc(M * sizeof(float));
    int failed = xq == nullptr || corr == nullptr || sx == nullptr;
    if (!failed) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t m = 0; m < M; ++m) {
            int8_t* q = xq + m * ldx;
            sx[m] = quantize_act(X + m * K, K, 8, q, nullptr);  // natural order, zeros to act_bytes(K)
            memset(q + act_bytes(K), 0, ldx - act_bytes(K));
            for (int64_t g = 0; g < groups; ++g) {
                int32_t s = 0;
                for (int64_t k = g * G; k < (g + 1) * G; ++k) s += q[k];
                corr[m * groups + g] = -8 * s;
            }
        }
    }
    if (!failed) {
        const int64_t blocks = (N + NB - 1) / NB;
#pragma omp parallel num_threads(threads)
        {
            uint8_t* wb = (uint8_t*)malloc(Kp * NB);
            float* sb = (float*)malloc(groups * NB * sizeof(float));
            if (wb == nullptr || sb == nullptr) {
#pragma omp atomic write
                failed = 2;
            }
            for (int64_t m0 = 0; m0 < M; m0 += MB) {
                const int64_t m1 = m0 + MB < M ? m0 + MB : M;
#pragma omp for schedule(static) nowait
                for (int64_t blk = 0; blk < blocks; ++blk) {
                    if (wb == nullptr || sb == nullptr) continue;
                    const int64_t n0 = blk * NB;
                    unpack(Q, S, n0, N, Kp, groups, wb, sb);
                    int64_t m = m0;
                    for (; m + MT <= m1; m += MT)
                        tile_out<MT>(xq + m * ldx, ldx, corr + m * groups, sx + m, groups, G, wb, sb, b, Y + m * N, n0, N);
                    if (m < m1) tile_rest<MT - 1>(m1 - m, xq + m * ldx, ldx, corr + m * groups, sx + m, groups, G, wb, sb, b,
                                                  Y + m * N, n0, N);
                }
            }
            free(wb);
            free(sb);
        }
    }
    free(xq);
    free(corr);
    free(sx);
    return failed ? 2 : 0;
}
