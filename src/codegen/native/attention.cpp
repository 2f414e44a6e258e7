// Attention of a batched decode step (one new query per row) over its KV cache, for every tier of
// simd.h: codegen_decode_attention. The module path's decode (batches of 2 or more rows; one row runs
// decode.cpp's whole step) called torch's SDPA here, whose CPU flash attention spent ~0.4 ms a layer
// on 8 rows x 16 heads x ~100 positions of 64 (a 350M step of 60 ms on a 2-core AMD EPYC Zen 5):
// there a query is a 1-row block and the kernel's tiling and per-call setup dominate. Per (row, head)
// this reads the head's cached keys and values once, in order, as the memory-bound step it is.
//
// The math is SDPA's: scores = (q . k) * scale + mask (additive, the model's dtype), softmax in fp32,
// out = sum p v / sum p, rounded to the storage type T once (float, or uint16_t bf16 bits); results
// differ from torch's in fp32 summation order only.
#include <math.h>
#include <stdlib.h>

#include "simd.h"

namespace {

using namespace codegen;

inline float get(const float* p) { return *p; }
inline float get(const uint16_t* p) { return bf16_to_f32(*p); }
inline void put(float* p, float x) { *p = x; }
inline void put(uint16_t* p, float x) { *p = f32_to_bf16(x); }

constexpr int64_t MAX_HEAD_DIM = 256;

// Strides in elements; a head's D values are contiguous everywhere. q (B, H, D): qb, qh; k and v
// (B, H, L, D): kb, kh, kt and vb, vh, vt; mask (B, L) additive or null: mb (0 broadcasts one row);
// out (B, H, D) contiguous.
struct Attn {
    int64_t B, H, L, D, qb, qh, kb, kh, kt, vb, vh, vt, mb;
    float scale;
};

template <typename T>
int decode_attention(const T* q, const T* k, const T* v, const T* mask, T* out, const Attn& a, int threads) {
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float* scores = (float*)malloc(sizeof(float) * (a.L + W));
        if (scores == nullptr) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < a.B * a.H; ++bh) {
            if (scores == nullptr) continue;
            const int64_t b = bh / a.H, h = bh % a.H, D = a.D;
            const T *qp = q + b * a.qb + h * a.qh, *kp = k + b * a.kb + h * a.kh, *vp = v + b * a.vb + h * a.vh;
            float qf[MAX_HEAD_DIM], acc[MAX_HEAD_DIM];
            for (int64_t i = 0; i < D; ++i) qf[i] = get(qp + i), acc[i] = 0.0f;
            float mx = -INFINITY;
            for (int64_t t = 0; t < a.L; ++t) {
                const T* kr = kp + t * a.kt;
                vf s = vzero();
                for (int64_t i = 0; i < D; i += W) s = vfma(vload(qf + i, D - i), vload(kr + i, D - i), s);
                const float sc = vsum(s) * a.scale + (mask ? get(mask + b * a.mb + t) : 0.0f);
                scores[t] = sc;
                mx = sc > mx ? sc : mx;
            }
            float sum = 0.0f;
            for (int64_t t = 0; t < a.L; t += W) {
                const int64_t n = a.L - t;
                const vf e = vexp(vsub(vload(scores + t, n), vset(mx)));
                vstore(scores + t, n, e);
                sum += vsum(n >= W ? e : vload(scores + t, n));  // lanes past n: zero
            }
            for (int64_t t = 0; t < a.L; ++t) {
                const vf p = vset(scores[t]);
                const T* vr = vp + t * a.vt;
                for (int64_t i = 0; i < D; i += W) vstore(acc + i, D - i, vfma(p, vload(vr + i, D - i), vload(acc + i, D - i)));
            }
            const float inv = 1.0f / sum;
            T* o = out + bh * D;
            for (int64_t i = 0; i < D; ++i) put(o + i, acc[i] * inv);
        }
        free(scores);
    }
    return failed ? 2 : 0;
}

}  // namespace

// Returns 0; 1 for shapes it does not take (head_dim over 256, no positions), 2 when memory ran out.
extern "C" int codegen_decode_attention(const void* q, const void* k, const void* v, const void* mask, void* out,
                                        const int64_t* shape_strides, float scale, int bf16, int threads) {
    const int64_t* s = shape_strides;  // B, H, L, D, qb, qh, kb, kh, kt, vb, vh, vt, mb
    const Attn a{s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11], s[12], scale};
    if (a.D < 1 || a.D > MAX_HEAD_DIM || a.L < 1) return 1;
    if (bf16)
        return decode_attention((const uint16_t*)q, (const uint16_t*)k, (const uint16_t*)v, (const uint16_t*)mask,
                                (uint16_t*)out, a, threads);
    return decode_attention((const float*)q, (const float*)k, (const float*)v, (const float*)mask, (float*)out, a, threads);
}
