// Integer dot products of quantized weights with int8 activations, for every tier of simd.h: the core
// of quant.cpp (1-16 rows) and of decode.cpp's quantized step.
//
// Activations are quantized on the fly, one symmetric scale per row: sx = max|x| / 127, xq =
// round-half-even(x * (127 / max|x|)) in [-127, 127] (codegen/quant/formats.py's quantize_activations
// is the same in torch). Then, exactly in int32:
//   int8 weights (one scale per output row):  y = sx * sw[n] * sum_k q[n, k] xq[k]
//   int4 weights (one scale per group of G):  y = sx * sum_g sw[n, g] * sum_{k in g} (u[n, k] - 8) xq[k]
// A vector instruction multiplies VB bytes of weights with VB bytes of activations and adds each 4
// neighbouring products into an int32 lane: VPDPBUSD where the CPU has AVX512-VNNI (the avx512bf16
// tier) or AVX-VNNI (the avxvnni tier, 256 bits), VPMADDUBSW + VPMADDWD on AVX2 and plain AVX-512,
// SDOT on ARM with the dot-product extension (the dotprod tier), plain C on the generic tier. VPMADDUBSW
// multiplies unsigned by signed bytes and saturates pairs at 16 bits, so
//   int8: |q| (unsigned, <= 128) times xq with q's sign (|xq| <= 127): pairs <= 32512, no saturation
//         (with VNNI, which does not saturate: xq + 128 (unsigned) times q, less 128 * sum q, summed by
//         the same instruction once per weight row for all activation rows; exact for K < 65793);
//   int4: the stored nibble u = value + 8 (0..15) times xq; the 8 * sum xq this adds is taken off by
//         starting each chunk's lanes at -8 * (their activations' sum), computed once per row.
// Layouts: int8 weights and activations in natural order, rows of K bytes (activations zero-padded to
// a multiple of VB). int4 weights in the kernels' layout (quant.cpp): per 32 weights 16 bytes, low
// nibbles weights 0..15, high nibbles 16..31. A chunk of 2 VB weights is one VB-byte load per row;
// its low nibbles meet the activations' first VB bytes and its high nibbles the next VB, so the
// activations are stored in that order: per chunk, for each of its VB / 16 units of 32, values 0..15
// in the first half and 16..31 in the second. Activations past K are zero, so whatever the weights
// hold there adds nothing.
#pragma once
#include <math.h>

#include "simd.h"
#if defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>
#endif

namespace codegen {

constexpr int VB = 4 * W;       // bytes per integer vector: 64 / 32 / 16
constexpr int CHUNK = 2 * VB;   // int4 weights per step (VB bytes)
constexpr int LANES = VB / 4;   // int32 lanes (= W)

inline int64_t round_up(int64_t k, int64_t m) { return (k + m - 1) / m * m; }

// One quantized activation row: KX = round_up(K, CHUNK) bytes, (int8 with VNNI) the same plus 128 as
// unsigned bytes, and (int4) KX / 8 bias lanes.
struct QRow {
    const int8_t* q;
    const int32_t* bias;
    float scale;
    const uint8_t* u;
};

#if defined(__AVX512VNNI__) || defined(__AVXVNNI__)
constexpr bool UNSIGNED_ACTS = true;  // int8 products take QRow::u
#else
constexpr bool UNSIGNED_ACTS = false;
#endif

inline int64_t act_bytes(int64_t K) { return round_up(K, CHUNK); }
inline int64_t act_lanes(int64_t K) { return round_up(K, CHUNK) / 8; }

// GCC's generic vectors of the tier's width (W fp32 lanes), for the loops below.
typedef float fw __attribute__((vector_size(4 * W)));
typedef int32_t iw __attribute__((vector_size(4 * W)));
typedef int8_t bw __attribute__((vector_size(W)));

// One value, or W of them, of x times inv = 127 / max|x|, to int8: round half to even (as nearbyintf),
// clamped to [-127, 127]; NaN: 0 (the scale carries it). The clamp comes first (the same result: the
// bounds are integers) so that the vector rounding, (v + 1.5 * 2^23) - 1.5 * 2^23 (exact for
// |v| < 2^22 in the default rounding mode), never meets the product inside a fused multiply-add.
inline int8_t quantize_one(float x, float inv) {
    float v = x * inv;
    v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
    return (int8_t)(v == v ? nearbyintf(v) : 0.0f);
}
inline void quantize_w(const float* x, float inv, int8_t* dst) {
    const fw big = fw{} + 12582912.0f;
    fw v;
    memcpy(&v, x, sizeof v);
    v *= inv;
    v = v > 127.0f ? 127.0f : v;
    v = v < -127.0f ? -127.0f : v;
    v = v == v ? v : 0.0f;
    v = (v + big) - big;
    const bw q = __builtin_convertvector(__builtin_convertvector(v, iw), bw);
    memcpy(dst, &q, sizeof q);
}

// Quantizes x (K fp32) into q (act_bytes(K)), for int4 (fmt 4) bias (act_lanes(K)), for int8 with
// UNSIGNED_ACTS u (act_bytes(K)); returns sx (NaN if x holds a NaN, so that the products are NaN as
// the float ones would be). The passes run W values at a time (int4's order above keeps runs of 16
// consecutive values together).
inline float quantize_act(const float* x, int64_t K, int fmt, int8_t* q, int32_t* bias, uint8_t* u = nullptr) {
    fw mx = {};
    iw bad = {};
    int64_t k = 0;
    for (; k + W <= K; k += W) {
        fw v;
        memcpy(&v, x + k, sizeof v);
        const fw a = (fw)((iw)v & 0x7fffffff);  // |v|
        bad |= a != a;
        mx = a > mx ? a : mx;
    }
    float amax = 0.0f;
    int nan = 0;
    for (int j = 0; j < W; ++j) amax = mx[j] > amax ? mx[j] : amax, nan |= bad[j];
    for (; k < K; ++k) {
        const float a = fabsf(x[k]);
        nan |= a != a;
        amax = a > amax ? a : amax;
    }
    const int64_t KX = act_bytes(K);
    memset(q, 0, KX);
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += 16) {  // chunk c, unit u of 32, half h: to c * CHUNK + h * VB + u * 16
        const int64_t c = k0 / CHUNK, o = k0 % CHUNK;
        const int64_t dst = fmt == 4 ? c * CHUNK + (o % 32 < 16 ? 0 : VB) + o / 32 * 16 : k0;
        int64_t j = 0;
        for (; j + W <= 16 && k0 + j + W <= K; j += W) quantize_w(x + k0 + j, inv, q + dst + j);
        for (; j < 16 && k0 + j < K; ++j) q[dst + j] = quantize_one(x[k0 + j], inv);
    }
    if (fmt == 4)
        for (int64_t l = 0; l < KX / 8; ++l) {  // lane l of chunk c: bytes 4l'..4l'+3 of both halves
            const int64_t c = l / LANES, i = 4 * (l % LANES);
            int32_t s = 0;
            for (int j = 0; j < 4; ++j) s += q[c * CHUNK + i + j] + q[c * CHUNK + VB + i + j];
            bias[l] = -8 * s;
        }
    if (u != nullptr)
        for (int64_t k = 0; k < KX; ++k) u[k] = (uint8_t)(q[k] + 128);
    return nan ? NAN : amax / 127.0f;
}

#if defined(__AVX512F__)
// ------------------------------------------------------------------------------------------ AVX-512
using bvec = __m512i;
using ivec = __m512i;
inline bvec bload(const void* p) { return _mm512_loadu_si512(p); }
inline bvec bload(const void* p, int64_t n) {  // n < VB bytes, zeros after
    return _mm512_maskz_loadu_epi8(n >= 64 ? ~0ull : (1ull << n) - 1ull, p);
}
inline ivec izero() { return _mm512_setzero_si512(); }
inline ivec iload(const int32_t* p) { return _mm512_loadu_si512(p); }
inline ivec iset(int32_t v) { return _mm512_set1_epi32(v); }
inline bvec bcast4(const int8_t* p) { int32_t v; memcpy(&v, p, 4); return _mm512_set1_epi32(v); }  // 4 bytes to every lane
inline void nibbles(bvec v, bvec& lo, bvec& hi) {
    const bvec m = _mm512_set1_epi8(15);
    lo = _mm512_and_si512(v, m);
    hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m);
}
inline bvec babs(bvec w) { return _mm512_abs_epi8(w); }
inline bvec ones_u8() { return _mm512_set1_epi8(1); }
inline bvec bsign(bvec x, bvec w) { return _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x); }
#if defined(__AVX512VNNI__)
inline ivec udot(ivec acc, bvec u, bvec s) { return _mm512_dpbusd_epi32(acc, u, s); }
inline ivec udot2(ivec acc, bvec u, bvec s, bvec u2, bvec s2) { return udot(udot(acc, u, s), u2, s2); }
#else
inline ivec udot(ivec acc, bvec u, bvec s) {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
}
inline ivec udot2(ivec acc, bvec u, bvec s, bvec u2, bvec s2) {  // int4: pairs <= 3810, their sum fits 16 bits
    const __m512i p = _mm512_add_epi16(_mm512_maddubs_epi16(u, s), _mm512_maddubs_epi16(u2, s2));
    return _mm512_add_epi32(acc, _mm512_madd_epi16(p, _mm512_set1_epi16(1)));
}
#endif
inline vf itof(ivec v) { return _mm512_cvtepi32_ps(v); }
inline int32_t isum(ivec v) { return _mm512_reduce_add_epi32(v); }
// Lane l covers the unit (32 weights) l / 4 of the chunk at k0: its group's scale (groups of 2^gs).
inline vf group_scales(const float* s, int64_t k0, int gs, int64_t groups) {
    const int64_t G = int64_t(1) << gs, g0 = k0 >> gs, n = G >= CHUNK ? 1 : CHUNK / G;
    const int64_t have = groups - g0 < n ? groups - g0 : n;
    // Plain loads of the chunk's 1, 2 or 4 scales, masked only in a row's last, partial chunk: with the
    // mask (computed each step) on every load, codegen_q4_mm (1 row, 131072 x 1024, 2 threads) ran at
    // 16.5 GB/s instead of 39.4 on an AMD EPYC (Zen 5), where avx2's scalar loads ran at 39.7.
    const __m128 v = have < n ? _mm_maskz_loadu_ps((__mmask8)((1u << have) - 1u), s + g0)
                     : n == 4 ? _mm_loadu_ps(s + g0)
                     : n == 2 ? _mm_castpd_ps(_mm_load_sd((const double*)(s + g0)))
                              : _mm_load_ss(s + g0);
    const int shift = gs - 3;  // lane l -> unit l / 4 -> its group within the chunk: l / (G / 8)
    const __m512i idx = _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), shift);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v));
}
// The same for a chunk wholly inside the row (its CHUNK / G scales all there), G = 2^GS known: no mask.
template <int GS> inline vf group_scales(const float* s, int64_t k0) {
    constexpr int n = (1 << GS) >= CHUNK ? 1 : CHUNK >> GS;
    const float* p = s + (k0 >> GS);
    if constexpr (n == 1) return _mm512_set1_ps(*p);  // a broadcast load
    const __m128 v = n == 4 ? _mm_loadu_ps(p) : _mm_castpd_ps(_mm_load_sd((const double*)p));
    const __m512i idx = _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), GS - 3);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v));
}

#elif defined(__AVX2__)
// --------------------------------------------------------------------------------------------- AVX2
using bvec = __m256i;
using ivec = __m256i;
inline bvec bload(const void* p) { return _mm256_loadu_si256((const __m256i*)p); }
inline bvec bload(const void* p, int64_t n) {
    alignas(32) uint8_t buf[32] = {};
    memcpy(buf, p, n < 32 ? n : 32);
    return _mm256_load_si256((const __m256i*)buf);
}
inline ivec izero() { return _mm256_setzero_si256(); }
inline ivec iload(const int32_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
inline ivec iset(int32_t v) { return _mm256_set1_epi32(v); }
inline bvec bcast4(const int8_t* p) { int32_t v; memcpy(&v, p, 4); return _mm256_set1_epi32(v); }
inline void nibbles(bvec v, bvec& lo, bvec& hi) {
    const bvec m = _mm256_set1_epi8(15);
    lo = _mm256_and_si256(v, m);
    hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
}
inline bvec babs(bvec w) { return _mm256_abs_epi8(w); }
inline bvec ones_u8() { return _mm256_set1_epi8(1); }
inline bvec bsign(bvec x, bvec w) { return _mm256_sign_epi8(x, w); }
#if defined(__AVXVNNI__)
// The avxvnni tier: VPDPBUSD on 256 bits (VEX-encoded), as the avx512bf16 tier's on 512. udot2's two
// products run side by side and are added (int4, one row, 131072 x 1024, 2 threads, Xeon: 24.0 GB/s,
// 20.9 chained one after the other, avx2's VPMADDUBSW 20.6).
inline ivec udot(ivec acc, bvec u, bvec s) { return _mm256_dpbusd_avx_epi32(acc, u, s); }
inline ivec udot2(ivec acc, bvec u, bvec s, bvec u2, bvec s2) {
    return _mm256_add_epi32(udot(acc, u, s), udot(_mm256_setzero_si256(), u2, s2));
}
#else
inline ivec udot(ivec acc, bvec u, bvec s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
inline ivec udot2(ivec acc, bvec u, bvec s, bvec u2, bvec s2) {
    const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(u, s), _mm256_maddubs_epi16(u2, s2));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}
#endif
inline vf itof(ivec v) { return (vf)_mm256_cvtepi32_ps(v); }
inline int32_t isum(ivec v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}
inline vf group_scales(const float* s, int64_t k0, int gs, int64_t groups) {
    // A chunk is 2 units of 32: groups of 32 give its two halves their two scales (one 8-byte load and a
    // permute: an interleaved A/B, one row, 262144 x 1024, 2 threads, Xeon, avx2 tier: 18.8 -> 19.5
    // GB/s, in cache 20.7 -> 22.2, where two broadcasts and an insert were); larger groups one.
    const int64_t g0 = k0 >> gs;
    if (gs != 5) return (vf)_mm256_set1_ps(s[g0]);
    const __m128 v = g0 + 1 < groups ? _mm_castpd_ps(_mm_load_sd((const double*)(s + g0))) : _mm_set1_ps(s[g0]);
    return (vf)_mm256_permutevar8x32_ps(_mm256_castps128_ps256(v), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
}
template <int GS> inline vf group_scales(const float* s, int64_t k0) {
    const int64_t g0 = k0 >> GS;
    if constexpr (GS != 5) return (vf)_mm256_set1_ps(s[g0]);
    const __m128 v = _mm_castpd_ps(_mm_load_sd((const double*)(s + g0)));
    return (vf)_mm256_permutevar8x32_ps(_mm256_castps128_ps256(v), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
}

#elif defined(__ARM_FEATURE_DOTPROD)
// ------------------------------------------------------------------------------- ARM NEON with SDOT
// SDOT multiplies signed by signed bytes, so weights and activations enter as they are (no sign trick,
// no unsigned copy); int4 nibbles (0..15) are signed bytes too.
using bvec = int8x16_t;
using ivec = int32x4_t;
inline bvec bload(const void* p) { return vld1q_s8((const int8_t*)p); }
inline bvec bload(const void* p, int64_t n) {
    int8_t buf[16] = {};
    memcpy(buf, p, n < 16 ? n : 16);
    return vld1q_s8(buf);
}
inline ivec izero() { return vdupq_n_s32(0); }
inline ivec iload(const int32_t* p) { return vld1q_s32(p); }
inline ivec iset(int32_t v) { return vdupq_n_s32(v); }
inline bvec bcast4(const int8_t* p) { int32_t v; memcpy(&v, p, 4); return vreinterpretq_s8_s32(vdupq_n_s32(v)); }
inline void nibbles(bvec v, bvec& lo, bvec& hi) {
    const uint8x16_t u = vreinterpretq_u8_s8(v);
    lo = vreinterpretq_s8_u8(vandq_u8(u, vdupq_n_u8(15)));
    hi = vreinterpretq_s8_u8(vshrq_n_u8(u, 4));
}
inline bvec babs(bvec w) { return w; }
inline bvec bsign(bvec x, bvec) { return x; }
inline bvec ones_u8() { return vdupq_n_s8(1); }
inline ivec udot(ivec acc, bvec u, bvec s) { return vdotq_s32(acc, u, s); }
inline ivec udot2(ivec acc, bvec u, bvec s, bvec u2, bvec s2) { return vdotq_s32(vdotq_s32(acc, u, s), u2, s2); }
inline vf itof(ivec v) { return (vf)vcvtq_f32_s32(v); }
inline int32_t isum(ivec v) { return vaddvq_s32(v); }
inline vf group_scales(const float* s, int64_t k0, int gs, int64_t) { return vset(s[k0 >> gs]); }
template <int GS> inline vf group_scales(const float* s, int64_t k0) { return vset(s[k0 >> GS]); }  // CHUNK 32: one group

#else
// ------------------------------------------------------------------------------------------ generic
struct bvec {
    int8_t b[VB];
};
typedef int32_t ivec __attribute__((vector_size(LANES * 4)));
inline bvec bload(const void* p) {
    bvec v;
    memcpy(v.b, p, VB);
    return v;
}
inline bvec bload(const void* p, int64_t n) {
    bvec v = {};
    memcpy(v.b, p, n < VB ? n : VB);
    return v;
}
inline ivec izero() { return ivec{}; }
inline ivec iload(const int32_t* p) {
    ivec v;
    memcpy(&v, p, sizeof v);
    return v;
}
inline ivec iset(int32_t v) { return ivec{} + v; }
inline bvec bcast4(const int8_t* p) {
    bvec v;
    for (int i = 0; i < VB; i += 4) memcpy(v.b + i, p, 4);
    return v;
}
inline void nibbles(bvec v, bvec& lo, bvec& hi) {
    for (int i = 0; i < VB; ++i) lo.b[i] = (int8_t)((uint8_t)v.b[i] & 15), hi.b[i] = (int8_t)((uint8_t)v.b[i] >> 4);
}
inline bvec babs(bvec w) { return w; }      // the generic products take both operands signed
inline bvec ones_u8() { bvec v; memset(v.b, 1, VB); return v; }
inline bvec bsign(bvec x, bvec) { return x; }
// u: weights (int8 signed, or nibbles 0..15), s: activations; lane l += sum of bytes 4l..4l+3.
inline ivec udot(ivec acc, bvec u, bvec s) {
    for (int l = 0; l < LANES; ++l)
        for (int j = 0; j < 4; ++j) acc[l] += (int32_t)u.b[4 * l + j] * s.b[4 * l + j];
    return acc;
}
inline ivec udot2(ivec acc, bvec u, bvec s, bvec u2, bvec s2) { return udot(udot(acc, u, s), u2, s2); }
inline vf itof(ivec v) { return __builtin_convertvector(v, vf); }
inline int32_t isum(ivec v) {
    int32_t s = 0;
    for (int l = 0; l < LANES; ++l) s += v[l];
    return s;
}
inline vf group_scales(const float* s, int64_t k0, int gs, int64_t) { return vset(s[k0 >> gs]); }
template <int GS> inline vf group_scales(const float* s, int64_t k0) { return vset(s[k0 >> GS]); }  // CHUNK 32: one group
#endif

// One step of K of the block products below: VB int8 weights (int4: CHUNK) of each of R rows times the
// M activation rows. TAIL: the last, partial step (masked loads, no prefetch). The main loop and the
// tail are separate calls: with the mask test inside one loop GCC also stored every accumulator to the
// stack on every step, and the 8-row int8 product ran store-bound (an interleaved A/B of the two builds,
// 2 threads on an AVX-512 VNNI Xeon: 19.6 -> 28.5 GB/s at 4096 x 1024; 1-row products unchanged).
#define CODEGEN_INLINE inline __attribute__((always_inline))
// SUMS: the caller has the weight rows' sums (VNNI's offset term), so the step does not add them up.
template <int M, int R, bool TAIL, bool SUMS>
CODEGEN_INLINE void q8_step(const int8_t* const* w, int64_t k, int64_t K, const QRow* x, ivec (&acc)[R][M], ivec (&wsum)[R]) {
    bvec wa[R], ws[R];
    for (int r = 0; r < R; ++r) {
        if constexpr (!TAIL) __builtin_prefetch(w[r] + k + 4096, 0, 2);
        ws[r] = TAIL ? bload(w[r] + k, K - k) : bload(w[r] + k);
        if constexpr (UNSIGNED_ACTS && !SUMS) wsum[r] = udot(wsum[r], ones_u8(), ws[r]);
        else wa[r] = babs(ws[r]);
    }
    for (int m = 0; m < M; ++m) {
        if constexpr (UNSIGNED_ACTS) {
            const bvec xu = bload(x[m].u + k);
            for (int r = 0; r < R; ++r) acc[r][m] = udot(acc[r][m], xu, ws[r]);
        } else {
            const bvec xv = bload(x[m].q + k);
            for (int r = 0; r < R; ++r) acc[r][m] = udot(acc[r][m], wa[r], bsign(xv, ws[r]));
        }
    }
}

// R rows of int8 weights (w[r], K bytes each) times M activation rows: out[r][m], scales applied.
// sums: null, or (SUMS) each row's sum of weights (sum_k q[r, k]), which the VNNI products' offset
// needs: summing them in the loop costs one VPDPBUSD per step and row besides the M products (an
// interleaved A/B on the AVX-512 VNNI Xeon, 2 threads, 256 MB int8: 16 rows 7.8 -> 10.4 GB/s without
// the sums' instructions, 8 rows 16.1 -> 17.2); the one-row product is memory-bound and sums in the loop.
template <int M, int R, bool SUMS = false>
inline void q8_block(const int8_t* const* w, const float* sw, int64_t K, const QRow* x, float (*out)[M],
                     const int32_t* sums = nullptr) {
    ivec acc[R][M], wsum[R];
    for (int r = 0; r < R; ++r) {
        wsum[r] = izero();
        for (int m = 0; m < M; ++m) acc[r][m] = izero();
    }
    int64_t k = 0;
    for (; k + VB <= K; k += VB) q8_step<M, R, false, SUMS>(w, k, K, x, acc, wsum);
    if (k < K) q8_step<M, R, true, SUMS>(w, k, K, x, acc, wsum);
    for (int r = 0; r < R; ++r) {
        const int32_t off = !UNSIGNED_ACTS ? 0 : SUMS ? 128 * sums[r] : 128 * isum(wsum[r]);
        for (int m = 0; m < M; ++m) out[r][m] = (float)(isum(acc[r][m]) - off) * x[m].scale * sw[r];
    }
}

// How far ahead (bytes) the int4 rows are prefetched: an interleaved A/B of codegen_q4_mm, one row,
// 131072 x 4096 (320 MB with scales), 2 threads, AVX-512 VNNI Xeon: 4096 gave 16.9 GB/s, 8192 20.6
// (avx2 tier: 15.5 -> 18.6); int8 (4096) showed no difference beyond noise.
constexpr int Q4_PREFETCH = 8192;

// GS > 0 (not in the TAIL): the group size 2^GS is known and the chunk is wholly inside the row, so its
// scales load without masks or tests (q4_rows).
template <int M, int R, bool TAIL, int GS = 0>
CODEGEN_INLINE void q4_step(const uint8_t* const* w, const float* const* s, int64_t k0, int64_t Kp, int gs, int64_t groups,
                            const QRow* x, vf (&acc)[R][M]) {
    static_assert(GS == 0 || !TAIL, "a partial chunk's scales need the masked loads");
    bvec lo[R], hi[R];
    vf sv[R];
    for (int r = 0; r < R; ++r) {
        if constexpr (!TAIL) __builtin_prefetch(w[r] + k0 / 2 + Q4_PREFETCH, 0, 2);
        nibbles(TAIL ? bload(w[r] + k0 / 2, (Kp - k0) / 2) : bload(w[r] + k0 / 2), lo[r], hi[r]);
        if constexpr (GS > 0) sv[r] = group_scales<GS>(s[r], k0);
        else sv[r] = group_scales(s[r], k0, gs, groups);
    }
    for (int m = 0; m < M; ++m) {
        const bvec xlo = bload(x[m].q + k0), xhi = bload(x[m].q + k0 + VB);
        const ivec b = iload(x[m].bias + k0 / 8);
        for (int r = 0; r < R; ++r) acc[r][m] = vfma(itof(udot2(b, lo[r], xlo, hi[r], xhi)), sv[r], acc[r][m]);
    }
}

// R rows of int4 weights (w[r] in the kernels' layout, Kp / 2 bytes; s[r] their Kp / G scales). G is a
// power of two (32, 64, 128, ...): a group's index is a shift, not a 64-bit division per step.
template <int M, int R>
inline void q4_block(const uint8_t* const* w, const float* const* s, int64_t K, int64_t Kp, int64_t G, const QRow* x,
                     float (*out)[M]) {
    const int64_t groups = Kp / G;
    const int gs = __builtin_ctzll(G);
    vf acc[R][M];
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < M; ++m) acc[r][m] = vzero();
    int64_t k0 = 0;
    for (; k0 < K && (Kp - k0) / 2 >= VB; k0 += CHUNK) q4_step<M, R, false>(w, s, k0, Kp, gs, groups, x, acc);
    if (k0 < K) q4_step<M, R, true>(w, s, k0, Kp, gs, groups, x, acc);
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < M; ++m) out[r][m] = vsum(acc[r][m]) * x[m].scale;
}

// The decode step's products (decode.cpp): rows [n0, n1) of a matrix times one activation row, scales
// applied, into out[0 .. n1 - n0). The rows run one after another, one stream, with whatever a row
// needs (its pointers, the group size's shift, the scale loads' form) fixed outside the row loop: the
// step's matrices have short rows (K = 1024 for most of the 350M shape's), where a call per row (two
// 64-bit divisions, the masked scale loads' tests, the horizontal sums' setup) cost as much as the
// row's own 8 int4 steps (one thread, a 0.5 MB matrix in L2, AMD EPYC Zen 5, avx512bf16 tier: 32 GB/s
// a call per row against 64 here). int8 rows have no such setup: each is q8_block's one-row product
// (two accumulators taking alternate steps measured 0.96-1.04x of it in the whole step, AMD EPYC Zen 5,
// avx512bf16 and avx2 tiers, benchmarks/native_ab.py). Each row's sums are exactly those of q8_block /
// q4_block with one row, so the step's outputs equal the batched products' bit for bit.
inline void q8_rows(const int8_t* Q, const float* s, int64_t n0, int64_t n1, int64_t K, const QRow& x, float* out) {
    for (int64_t n = n0; n < n1; ++n) {
        const int8_t* w = Q + n * K;
        float o[1][1];
        q8_block<1, 1>(&w, s + n, K, &x, o);
        out[n - n0] = o[0][0];
    }
}

// int4 rows in groups of G = 2^GS (rows of Kp / 2 bytes, Kp >> GS scales each).
template <int GS>
inline void q4_rows(const uint8_t* Q, const float* S, int64_t n0, int64_t n1, int64_t K, int64_t Kp, const QRow& x,
                    float* out) {
    const int64_t row = Kp / 2, groups = Kp >> GS;
    for (int64_t n = n0; n < n1; ++n) {
        const uint8_t* w = Q + n * row;
        const float* s = S + n * groups;
        vf acc[1][1] = {{vzero()}};
        int64_t k0 = 0;
        for (; k0 < K && k0 + CHUNK <= Kp; k0 += CHUNK) q4_step<1, 1, false, GS>(&w, &s, k0, Kp, GS, groups, &x, acc);
        if (k0 < K) q4_step<1, 1, true>(&w, &s, k0, Kp, GS, groups, &x, acc);
        out[n - n0] = vsum(acc[0][0]) * x.scale;
    }
}
inline void q4_rows(const uint8_t* Q, const float* S, int64_t n0, int64_t n1, int64_t K, int64_t Kp, int64_t G,
                    const QRow& x, float* out) {
    switch (__builtin_ctzll(G)) {
        case 5: return q4_rows<5>(Q, S, n0, n1, K, Kp, x, out);
        case 6: return q4_rows<6>(Q, S, n0, n1, K, Kp, x, out);
        case 7: return q4_rows<7>(Q, S, n0, n1, K, Kp, x, out);
        default:  // groups past the formats' 128 weights (the C entry takes any power of two): a call per row
            for (int64_t n = n0; n < n1; ++n) {
                const uint8_t* w = Q + n * (Kp / 2);
                const float* s = S + n * (Kp / G);
                float o[1][1];
                q4_block<1, 1>(&w, &s, K, Kp, G, &x, o);
                out[n - n0] = o[0][0];
            }
    }
}

}  // namespace codegen
