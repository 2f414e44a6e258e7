// The attention's own work around the products, for every tier of simd.h:
//   codegen_split_heads: qkv_proj's output (B, T, 3E) -> q, k, v (B, H, T, D), GPT-J rotary on q and k;
//   codegen_decode_attention: attention of a batched decode step (one new query per row) over its cache.
// split_heads replaces ~10 torch ops a layer (the rotation's stack, neg, two products and sum, and the
// copies that make heads contiguous: ~1.3 s of a 5.9 s 2047-token fp32 prefill of the 350M model on
// a 2-core AMD EPYC) with one pass that writes each value once.
// decode_attention: the module path's decode (batches of 2 or more rows; one row runs decode.cpp's
// whole step) called torch's SDPA here, whose CPU flash attention spent ~0.4 ms a layer
// on 8 rows x 16 heads x ~100 positions of 64 (a 350M step of 60 ms on a 2-core AMD EPYC Zen 5):
// there a query is a 1-row block and the kernel's tiling and per-call setup dominate. Per (row, head)
// this reads the head's cached keys and values once, in order, as the memory-bound step it is.
//
// The math is SDPA's: scores = (q . k) * scale + mask (additive, the model's dtype), softmax in fp32,
// out = sum p v / sum p, rounded to the storage type T once (float, or uint16_t bf16 bits); results
// differ from torch's in fp32 summation order only.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

namespace {

using namespace codegen;

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
            float qf[MAX_HEAD_DIM];
            for (int64_t i = 0; i < D; ++i) qf[i] = get(qp + i);
            attend_cached<T>(qf, kp, a.kt, vp, a.vt, mask ? mask + b * a.mb : nullptr, a.L, D, a.scale, scores, out + bh * D);
        }
        free(scores);
    }
    return failed ? 2 : 0;
}

// out[2i] = x[2i] c[2i] - x[2i+1] s[2i], out[2i+1] = x[2i+1] c[2i+1] + x[2i] s[2i+1], each product
// and the sum rounded in fp32 (no fused multiply-add), as codegen.ops.apply_rotary computes it.
__attribute__((optimize("fp-contract=off"), noinline)) void rotate(const float* x, const float* sn, const float* cs,
                                                                    float* out, int64_t D) {
    for (int64_t i = 0; i < D; i += 2) {
        const float a = x[i] * cs[i], b = -x[i + 1] * sn[i];
        const float c = x[i + 1] * cs[i + 1], d = x[i] * sn[i + 1];
        out[i] = a + b;
        out[i + 1] = c + d;
    }
}

template <typename T>
void split_heads(const T* qkv, const float* sn, const float* cs, T* q, T* k, T* v, int64_t BT, int64_t T_, int64_t S,
                 int64_t H, int64_t D, int threads) {
    const int64_t per = H / S, L = per * D, E = H * D;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < BT; ++r) {
        const int64_t b = r / T_, t = r % T_;
        float x[MAX_HEAD_DIM], o[MAX_HEAD_DIM];
        for (int64_t s = 0; s < S; ++s)
            for (int64_t j = 0; j < per; ++j) {
                const T* src = qkv + r * 3 * E + s * 3 * L + j * D;  // [q | v | k] of shard s
                const int64_t dst = ((b * H + s * per + j) * T_ + t) * D;
                for (int part = 0; part < 3; part += 2) {  // q, then k
                    for (int64_t i = 0; i < D; ++i) x[i] = get(src + part * L + i);
                    rotate(x, sn + r * D, cs + r * D, o, D);
                    T* out = (part == 0 ? q : k) + dst;
                    for (int64_t i = 0; i < D; ++i) put(out + i, o[i]);
                }
                memcpy(v + dst, src + L, D * sizeof(T));
            }
    }
}

}  // namespace

// qkv (B*T, 3E) of T (the fused [q | v | k] layout in S shards of H/S heads of D), sin and cos (B*T, D)
// fp32 (codegen.ops.rotary_tables) -> q, k, v (B, H, T, D) contiguous. 1 for shapes it does not take.
extern "C" int codegen_split_heads(const void* qkv, const float* sin, const float* cos, void* q, void* k, void* v,
                                   int64_t B, int64_t T, int64_t S, int64_t H, int64_t D, int bf16, int threads) {
    if (D < 2 || D > MAX_HEAD_DIM || D % 2 || S < 1 || H % S) return 1;
    if (bf16)
        split_heads((const uint16_t*)qkv, sin, cos, (uint16_t*)q, (uint16_t*)k, (uint16_t*)v, B * T, T, S, H, D, threads);
    else split_heads((const float*)qkv, sin, cos, (float*)q, (float*)k, (float*)v, B * T, T, S, H, D, threads);
    return 0;
}

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
