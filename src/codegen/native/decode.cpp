// A whole batch-1 decode step of a CodeGen model in one native call (codegen/native/fused.py calls it).
//
// With the matrix-vector products at the memory bandwidth (kernels.cpp), what is left of a step in
// torch is ~60 small ops per layer, each dispatched from Python: ~5-6 ms of a ~56 ms fp32 step of the
// 350M model on a 2-core Xeon. Here one OpenMP region runs every layer with four barriers each:
//   1. ln_1(h) -> a                                       (one thread; E values)
//   2. qkv = Wqkv a; pre = Wfc_in a + b                   (one loop over the 3E + I rows: same input)
//   3. per head: GPT-J rotary on q and k, append k and v to the cache, softmax(q K^T / sqrt(D)) V;
//      gelu_new(pre) -> inner                             (heads and W-wide blocks shared out)
//   4. o = Wout attn; f = Wfc_out inner + b                (one loop over the 2E rows: fc_out's, then
//      out_proj's, each matrix streamed in turn), h = (o + f) + h at the start of the next phase 1
// then ln_f and the LM head. The products' rows are handed out in chunks of CHUNK_BYTES of weights
// (dynamic schedule), not in one fixed half per thread: on a shared host one thread is often slowed
// (an interrupt, another tenant), and with fixed halves the other waited at the barrier for it (~1 ms
// of a 17 ms int8 step of the 350M model, 2 threads, measured per phase). T is the model's storage
// type, float or uint16_t (bf16 bits): every value torch would store in T is rounded to T here too
// (rnd<T>), so results follow torch's bf16 path and not a more precise one; dot products accumulate
// in fp32 as in kernels.cpp.
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>

#include "qdot.h"
#include "sample.h"

namespace {

using namespace codegen;

template <typename T> inline float rnd(float x);
template <> inline float rnd<float>(float x) { return x; }
template <> inline float rnd<uint16_t>(float x) { return bf16_to_f32(f32_to_bf16(x)); }

inline float dot(const float* w, const float* x, int64_t K) { return dot_f32(w, x, K); }
inline float dot(const uint16_t* w, const uint16_t* x, int64_t K) { return dot_bf16(w, x, K); }

// A weight matrix of the step: dense T rows, or int8 (one scale per row) or 4-bit (one scale per group
// of G) rows, whose fp32 scales and biases go with activations of either T: each product input is
// quantized to int8 once (qdot.h), from fp32 (bf16 widened first), and each output rounded to T.
struct Lin {
    const void* w;
    const float* s;
};

// Rows per iteration of the quantized products' loops (the rows kernels of qdot.h run them one after
// another). Before, an iteration was one row (a block of one to four rows interleaved, measured: one row
// was fastest on Zen 5, 47 % over two, and within 4 % on an AVX-512 VNNI Xeon), each a call.
constexpr int TILE = 16;

// Rows n0 .. n0 + rows - 1 (rows <= TILE) of a quantized matrix . x, finished (scales applied).
inline void qrows(int fmt, int64_t G, Lin l, int64_t n0, int rows, int64_t K, const QRow& x, float* out) {
    if (fmt == 8) q8_rows((const int8_t*)l.w, l.s, n0, n0 + rows, K, x, out);
    else q4_rows((const uint8_t*)l.w, l.s, n0, n0 + rows, K, round_up(K, G), G, x, out);
}

// A quantized activation row in scratch: K values' bytes, their unsigned copy and bias lanes.
struct QBuf {
    QRow row;
    int8_t* q;
    int32_t* bias;
    uint8_t* u;
    void set(const float* x, int64_t K, int fmt) {
        uint8_t* un = fmt == 8 && UNSIGNED_ACTS ? u : nullptr;
        row = QRow{q, bias, quantize_act(x, K, fmt, q, bias, un), un};
    }
    // bf16 activations: widened into `stage` (K floats; exact) first
    void set(const uint16_t* x, int64_t K, int fmt, float* stage) {
        for (int64_t i = 0; i < K; ++i) stage[i] = bf16_to_f32(x[i]);
        set(stage, K, fmt);
    }
    void set(const float* x, int64_t K, int fmt, float*) { set(x, K, fmt); }
};

// LayerNorm of fp32 x into T out; mean and variance summed in double.
template <typename T> void layer_norm(const float* x, const T* w, const T* b, T* out, int64_t E, float eps) {
    double s = 0.0, ss = 0.0;
    for (int64_t i = 0; i < E; ++i) s += x[i];
    const float mean = (float)(s / E);
    for (int64_t i = 0; i < E; ++i) ss += (double)(x[i] - mean) * (x[i] - mean);
    const float rstd = 1.0f / sqrtf((float)(ss / E) + eps);
    for (int64_t i = 0; i < E; ++i) put(out + i, (x[i] - mean) * rstd * get(w + i) + get(b + i));
}

// One head: rotate q and k (fp32, then rounded to T), append k and v at position `len` of the
// head's cache rows (capacity x D), attend over positions start..len (before start: padding), write
// the head's output to out.
template <typename T>
void attend(const float* q, const float* v, const float* k, const float* sin, const float* cos, T* kc, T* vc,
                   int64_t start, int64_t len, int64_t D, float* scores, T* out) {
    float qr[MAX_HEAD_DIM];
    for (int64_t i = 0; i < D; ++i) {
        const float qs = (i & 1) ? q[i - 1] : -q[i + 1], ks = (i & 1) ? k[i - 1] : -k[i + 1];
        qr[i] = rnd<T>(q[i] * cos[i] + qs * sin[i]);
        put(kc + len * D + i, k[i] * cos[i] + ks * sin[i]);
        put(vc + len * D + i, v[i]);
    }
    const float scale = 1.0f / sqrtf((float)D);
    attend_cached<T>(qr, kc + start * D, D, vc + start * D, D, nullptr, len + 1 - start, D, scale, scores + start, out);
}

// The arguments of codegen_decode_step, declared here once: codegen/native/fused.py mirrors them as a
// ctypes.Structure and checks it against codegen_decode_layout() (every field's name and offset) when
// the library loads; the step itself checks abi and size.
constexpr int64_t DECODE_ABI = 5;
struct DecodeArgs {
    int64_t abi, size;  // DECODE_ABI, sizeof(DecodeArgs)
    int64_t n_layer, embd, heads, head_dim, inner, vocab;
    int64_t shards;          // qkv_proj's output is that many shards of [q | v | k] (4; 8 for CodeGen2-1B/3.7B)
    int64_t qformat, group;  // 0 dense, 8 int8, 4 int4 (groups of `group`) for every Linear, lm_head included
    int64_t bf16;            // the activations' (and the KV cache's) type T: 1 bf16, 0 fp32
    int64_t capacity, length, start, threads;  // this step: the cache's size and fill, padding before start
    int64_t embed_int8;                        // 1: `embed` is an int8 row, times embed_scale (then rounded to T)
    float eps, embed_scale;
    const void* const* layers;  // PER_LAYER pointers per layer (below)
    const void* embed;          // the token's embedding row: embd values of T, or of int8 (embed_int8)
    const void *lnf_w, *lnf_b, *head_w;
    const float* head_s;  // lm_head's scales (quantized) or null
    const void* head_b;
    void *key, *value;            // the cache, (n_layer, 1, heads, capacity, head_dim) of T
    const float *sin, *cos;       // head_dim values for this position (the next positions' follow)
    float *scratch, *logits;      // codegen_decode_scratch floats; vocab fp32 logits
    // Decoding in this call (picks > 0): after each forward pass the `banned` ids, and the `stop` ids for
    // the first `ban_stop` picks, are set to -inf in the logits; then the next token is the first index
    // of the largest logit in [0, limit) (a NaN counts as the largest, as numpy's argmax), or, with
    // `uniforms` (one per pick), a sample (sample.h: the logits from limit on -inf, top_k, temperature,
    // top_p, pick j by uniforms[j]); the pass for it follows, at the next position, until `picks` tokens
    // are picked, a stop id is picked, or *interrupt is nonzero (another thread queued work). Each pass
    // writes one more cache column. picks == 0: one pass, the logits only.
    int64_t picks, limit, n_banned, n_stop, ban_stop;
    int64_t top_k;
    double temperature, top_p;
    const float* uniforms;  // null: greedy
    int64_t embed_fd, embed_offset;  // the picks' embedding rows: pread from this file at this offset (fd >= 0),
    const void* embed_table;         // else from this table (rows of `embed`'s type)
    const float* embed_scales;       // an int8 table's scale per row
    const int64_t *banned, *stop;
    const int32_t* interrupt;  // may be null
    int64_t* tokens;           // out: the picks
    int64_t picked;            // out: how many (every one but the last has had its pass)
};
#define CODEGEN_DECODE_FIELDS(X)                                                                                       \
    X(abi) X(size) X(n_layer) X(embd) X(heads) X(head_dim) X(inner) X(vocab) X(shards) X(qformat) X(group) X(bf16)     \
    X(capacity) X(length) X(start) X(threads) X(embed_int8) X(eps) X(embed_scale) X(layers) X(embed) X(lnf_w)          \
    X(lnf_b) X(head_w) X(head_s) X(head_b) X(key) X(value) X(sin) X(cos) X(scratch) X(logits) X(picks) X(limit)        \
    X(n_banned) X(n_stop) X(ban_stop) X(top_k) X(temperature) X(top_p) X(uniforms) X(embed_fd) X(embed_offset) X(embed_table) X(embed_scales) X(banned) X(stop)     \
    X(interrupt) X(tokens) X(picked)
// Per layer: ln_1 weight and bias, qkv_proj, out_proj, fc_in weight and bias, fc_out weight and bias,
// then the four products' scales (*_S, null when dense). Biases are T, or fp32 when quantized (as
// lm_head's head_b).
enum { LN_W, LN_B, QKV, OUT, FC_IN, FC_IN_B, FC_OUT, FC_OUT_B, QKV_S, OUT_S, FC_IN_S, FC_OUT_S, PER_LAYER };

// Tiles of TILE rows that cover n rows (the quantized products' loops take one at a time).
inline int64_t blocks(int64_t qr, int64_t n) { return (n + qr - 1) / qr; }

// Weight bytes per chunk of rows that a thread takes at a time. Each chunk starts new streams for the
// prefetchers, so larger chunks stream faster, until the last chunk of a phase keeps the other thread
// waiting. Interleaved A/B, 350M shape, 2 threads, AMD EPYC (Zen 5), ms per step, chunks of 64-128 KB
// / 512 KB / 1-2 MB: int8 8.81 / 7.85 / 8.90, int4 6.69 / 6.15 / 6.89, bf16 12.92 / 10.52 (fp32 alike).
constexpr int64_t CHUNK_BYTES = 512 << 10;
// Rows (units of `unit`) per chunk of a matrix with rows of `row_bytes`.
inline int chunk(int64_t row_bytes, int64_t unit = 1) {
    const int64_t n = CHUNK_BYTES / (row_bytes * unit);
    return (int)(n > 1 ? n : 1);
}

// The pick after pass j of a call (DecodeArgs): the bans written into the logits, then the first index
// of the largest value in [0, limit), a NaN counting as the largest (numpy's argmax, which the engine's
// Python path takes over the same banned logits), or a sample (sample.h; -1 where its distribution is
// not finite). `buf`: sample_scratch_bytes(vocab).
inline int64_t pick(const DecodeArgs& A, float* logits, int64_t j, void* buf) {
    for (int64_t i = 0; i < A.n_banned; ++i) logits[A.banned[i]] = -INFINITY;
    if (j < A.ban_stop)
        for (int64_t i = 0; i < A.n_stop; ++i) logits[A.stop[i]] = -INFINITY;
    if (A.uniforms) {
        for (int64_t i = A.limit; i < A.vocab; ++i) logits[i] = -INFINITY;
        return sample_token(logits, A.vocab, SampleParams{A.temperature, A.top_p, A.top_k, A.uniforms[j]}, buf);
    }
    int64_t best = 0;
    float top = logits[0];
    if (isnan(top)) return 0;
    for (int64_t i = 1; i < A.limit; ++i) {
        const float v = logits[i];
        if (isnan(v)) return i;
        if (v > top) top = v, best = i;
    }
    return best;
}

inline bool is_stop(const DecodeArgs& A, int64_t token) {
    for (int64_t i = 0; i < A.n_stop; ++i)
        if (A.stop[i] == token) return true;
    return false;
}

// An embedding row into h (E floats): E values of T, or (int8) E int8 values times the row's scale
// rounded to T, as QuantEmbedding gives them.
template <typename T>
void embed_row(const DecodeArgs& A, const void* row, float scale, float* h) {
    if (A.embed_int8)
        for (int64_t i = 0; i < A.embd; ++i) h[i] = rnd<T>((float)((const int8_t*)row)[i] * scale);
    else
        for (int64_t i = 0; i < A.embd; ++i) h[i] = get((const T*)row + i);
}

// The embedding row of a picked token into h (E floats), through `buf` (row bytes) when read from the
// file; false when the file ends early.
template <typename T>
bool embed_pick(const DecodeArgs& A, int64_t token, float* h, void* buf) {
    const int64_t E = A.embd, bytes = E * (A.embed_int8 ? 1 : (int64_t)sizeof(T));
    const void* row = (const char*)A.embed_table + token * bytes;
    if (A.embed_fd >= 0) {
        if (pread((int)A.embed_fd, buf, (size_t)bytes, (off_t)(A.embed_offset + token * bytes)) != (ssize_t)bytes)
            return false;
        row = buf;
    }
    embed_row<T>(A, row, A.embed_int8 ? A.embed_scales[token] : 1.0f, h);
    return true;
}

// One forward pass of the token in A.embed, then (A.picks > 0) picks and their passes; returns 0, 3 when
// a pick's embedding row could not be read, or 4 when a sampled pick's distribution is not finite (the
// picks before either stand).
template <typename T>
int decode_step(DecodeArgs& A) {
    const int fmt = (int)A.qformat;
    const bool quant = fmt != 0;
    const int64_t G = A.group;
    const int64_t E = A.embd, H = A.heads, D = A.head_dim, I = A.inner, cap = A.capacity;
    int64_t len = A.length;  // cache columns before this pass (each pass of a call writes one more)
    // bytes of a weight row of K columns: T values, int8, or int4 pairs with their group scales
    auto row_bytes = [&](int64_t K) -> int64_t {
        return !quant ? K * (int64_t)sizeof(T) : fmt == 8 ? K : round_up(K, G) / 2 + round_up(K, G) / G * 4;
    };
    const int chunk_e = chunk(row_bytes(E), quant ? TILE : 1), chunk_i = chunk(row_bytes(I), quant ? TILE : 1);
    const int64_t L = E / A.shards, per_shard = H / A.shards, V = A.vocab;
    const void* const* layers = A.layers;
    const T *lnf_w = (const T*)A.lnf_w, *lnf_b = (const T*)A.lnf_b;
    // a quantized model's biases are fp32 (the weights' scales' dtype), a dense one's T
    auto qbias = [](const void* b, int64_t n) -> float { return ((const float*)b)[n]; };
    auto bias = [](const void* b, int64_t n) -> float { return get((const T*)b + n); };
    const void* head_b = A.head_b;
    const void* head_w = A.head_w;
    const float* head_s = A.head_s;
    const float *sin = A.sin, *cos = A.cos;  // this pass's position
    T *key = (T*)A.key, *value = (T*)A.value;
    float *scratch = A.scratch, *logits = A.logits;
    const float eps = A.eps;
    float* h = scratch;        // E: the residual stream
    float* qkv = h + E;        // 3E
    float* pre = qkv + 3 * E;  // I: fc_in's output before the activation
    float* scores = pre + I;   // H x cap
    T* a = (T*)(scores + H * cap);  // E: ln_1's output, T for the products
    T* attn = a + E;                // E
    T* inner = attn + E;            // I
    // Quantized models: the three product inputs as int8 rows (ln_1's output, attention, gelu).
    int32_t* lanes = (int32_t*)(inner + I + 16);
    int8_t* bytes = (int8_t*)(lanes + 2 * act_lanes(E) + act_lanes(I));
    const int64_t nb = 2 * act_bytes(E) + act_bytes(I);  // the unsigned copies after the signed bytes
    void* row_buf = (uint8_t*)bytes + 2 * nb + 64;              // a picked token's embedding row read from the file
    float* stage = (float*)((uint8_t*)row_buf + E * sizeof(float) + 64);  // max(E, I): bf16 inputs widened to quantize
    void* sample_buf = stage + (E > I ? E : I) + 16;                      // a sampled pick's (sample_scratch_bytes)
    QBuf xa{{}, bytes, lanes, (uint8_t*)bytes + nb};
    QBuf xo{{}, xa.q + act_bytes(E), xa.bias + act_lanes(E), xa.u + act_bytes(E)};
    QBuf xi{{}, xo.q + act_bytes(E), xo.bias + act_lanes(E), xo.u + act_bytes(E)};
    embed_row<T>(A, A.embed, A.embed_scale, h);
    // The last products' outputs, out_proj's and fc_out's (with its bias), in qkv's first 2E floats (the
    // attention has read qkv by then); the residual sum is taken by the next single section.
    float *out_o = qkv, *out_f = qkv + E;
    auto residual = [&] {
        for (int64_t n = 0; n < E; ++n) h[n] = rnd<T>(rnd<T>(out_o[n] + out_f[n]) + h[n]);
    };

    int64_t picked = 0;
    int rc = 0;
    bool more = true;  // another pass (the picks so far allow it)
#pragma omp parallel num_threads((int)A.threads)
    {
        for (;;) {  // a pass of the token in h, then (picks) the next token's
            for (int64_t l = 0; l < A.n_layer; ++l) {
                const void* const* w = layers + l * PER_LAYER;
                const Lin wqkv{w[QKV], (const float*)w[QKV_S]}, wout{w[OUT], (const float*)w[OUT_S]};
                const Lin win{w[FC_IN], (const float*)w[FC_IN_S]}, wfo{w[FC_OUT], (const float*)w[FC_OUT_S]};
                const void *bin = w[FC_IN_B], *bfo = w[FC_OUT_B];
#pragma omp single
                {
                    if (l > 0) residual();
                    layer_norm(h, (const T*)w[LN_W], (const T*)w[LN_B], a, E, eps);
                    if (quant) xa.set(a, E, fmt, stage);
                }
                if (quant) {
#pragma omp for schedule(dynamic, chunk_e)
                    for (int64_t blk = 0; blk < blocks(TILE, 3 * E) + blocks(TILE, I); ++blk) {
                        float o[TILE];
                        const bool first = blk < blocks(TILE, 3 * E);
                        const int64_t n0 = TILE * (first ? blk : blk - blocks(TILE, 3 * E)), N = first ? 3 * E : I;
                        const int rows = (int)(N - n0 < TILE ? N - n0 : TILE);
                        qrows(fmt, G, first ? wqkv : win, n0, rows, E, xa.row, o);
                        for (int r = 0; r < rows; ++r)
                            if (first) qkv[n0 + r] = rnd<T>(o[r]);
                            else pre[n0 + r] = rnd<T>(o[r] + qbias(bin, n0 + r));
                    }
                } else {
#pragma omp for schedule(dynamic, chunk_e)
                    for (int64_t n = 0; n < 3 * E + I; ++n) {
                        if (n < 3 * E) qkv[n] = rnd<T>(dot((const T*)wqkv.w + n * E, a, E));
                        else pre[n - 3 * E] = rnd<T>(dot((const T*)win.w + (n - 3 * E) * E, a, E) + bias(bin, n - 3 * E));
                    }
                }
#pragma omp for schedule(static) nowait
                for (int64_t hd = 0; hd < H; ++hd) {
                    const float* q = qkv + (hd / per_shard) * 3 * L + (hd % per_shard) * D;
                    const int64_t row = ((l * H) + hd) * cap * D;
                    attend<T>(q, q + L, q + 2 * L, sin, cos, key + row, value + row, A.start, len, D, scores + hd * cap, attn + hd * D);
                }
#pragma omp for schedule(static)
                for (int64_t i = 0; i < I; i += W) vstore(inner + i, I - i, vgelu(vload(pre + i, I - i)));
                if (quant) {
#pragma omp single
                    {
                        xo.set(attn, E, fmt, stage);
                        xi.set(inner, I, fmt, stage);
                    }
#pragma omp for schedule(dynamic, chunk_i)
                    for (int64_t blk = 0; blk < 2 * blocks(TILE, E); ++blk) {
                        float o[TILE];
                        const bool fc = blk < blocks(TILE, E);  // fc_out's rows first: the larger blocks
                        const int64_t n0 = TILE * (fc ? blk : blk - blocks(TILE, E));
                        const int rows = (int)(E - n0 < TILE ? E - n0 : TILE);
                        qrows(fmt, G, fc ? wfo : wout, n0, rows, fc ? I : E, fc ? xi.row : xo.row, o);
                        for (int r = 0; r < rows; ++r)
                            if (fc) out_f[n0 + r] = rnd<T>(o[r] + qbias(bfo, n0 + r));
                            else out_o[n0 + r] = rnd<T>(o[r]);
                    }
                } else {
#pragma omp for schedule(dynamic, chunk_i)
                    for (int64_t n = 0; n < 2 * E; ++n) {
                        if (n < E) out_f[n] = rnd<T>(dot((const T*)wfo.w + n * I, inner, I) + bias(bfo, n));
                        else out_o[n - E] = rnd<T>(dot((const T*)wout.w + (n - E) * E, attn, E));
                    }
                }
            }
#pragma omp single
            {
                if (A.n_layer > 0) residual();
                layer_norm(h, lnf_w, lnf_b, a, E, eps);
                if (quant) xa.set(a, E, fmt, stage);
            }
            if (quant) {
#pragma omp for schedule(dynamic, chunk_e)
                for (int64_t blk = 0; blk < blocks(TILE, V); ++blk) {
                    float o[TILE];
                    const int64_t n0 = TILE * blk;
                    const int rows = (int)(V - n0 < TILE ? V - n0 : TILE);
                    qrows(fmt, G, Lin{head_w, head_s}, n0, rows, E, xa.row, o);
                    for (int r = 0; r < rows; ++r) logits[n0 + r] = rnd<T>(o[r] + (head_b ? qbias(head_b, n0 + r) : 0.0f));
                }
            } else {
#pragma omp for schedule(dynamic, chunk_e)
                for (int64_t n = 0; n < V; ++n)
                    logits[n] = rnd<T>(dot((const T*)head_w + n * E, a, E) + (head_b ? bias(head_b, n) : 0.0f));
            }
            if (A.picks == 0) break;
#pragma omp single
            {
                const int64_t token = pick(A, logits, picked, sample_buf);
                if (token < 0) {
                    more = false, rc = 4;  // this pass's column stays unpicked: the caller does not count it
                } else {
                    A.tokens[picked++] = token;
                    ++len, sin += D, cos += D;  // the pass wrote cache column len
                    const int32_t* stop_now = A.interrupt;
                    more = picked < A.picks && !is_stop(A, token) && !(stop_now && __atomic_load_n(stop_now, __ATOMIC_RELAXED));
                    if (more && !embed_pick<T>(A, token, h, row_buf)) more = false, rc = 3;
                }
            }
            if (!more) break;
        }
    }
    A.picked = picked;
    return rc;
}

}  // namespace

// Floats of scratch that codegen_decode_step needs.
extern "C" int64_t codegen_decode_scratch(const DecodeArgs* a) {
    const int64_t E = a->embd, I = a->inner;  // + the quantized activations' lanes and bytes (decode_step)
    // + E + 16 for a picked token's embedding row read from its file, + max(E, I) + 16 for the stage, + a
    // sampled pick's scratch
    return 8 * E + 2 * I + a->heads * a->capacity + 64 + 2 * act_lanes(E) + act_lanes(I) + (2 * act_bytes(E) + act_bytes(I)) / 2 + 16 +
           E + 16 + (E > I ? E : I) + 16 + sample_scratch_bytes(a->vocab) / 4 + 16;
}

// "name:offset,..." for every field of DecodeArgs, then "sizeof:N" (fused.py compares its mirror).
extern "C" const char* codegen_decode_layout() {
    static char text[1024];
    if (text[0] == 0) {
        int n = 0;
#define CODEGEN_FIELD(f) n += snprintf(text + n, sizeof text - n, "%s:%zu,", #f, offsetof(DecodeArgs, f));
        CODEGEN_DECODE_FIELDS(CODEGEN_FIELD)
#undef CODEGEN_FIELD
        snprintf(text + n, sizeof text - n, "sizeof:%zu", sizeof(DecodeArgs));
    }
    return text;
}

// Returns 0; 1 for arguments it does not take (a head_dim over MAX_HEAD_DIM, shards that do not divide
// the heads, int4 groups not a power
// of two >= 32, a start past the length, picks past the cache's room, a limit outside [1, vocab], a ban
// outside the vocabulary, picks without their table, sampling parameters out of range); 2 for a caller built against another DecodeArgs
// (abi or size differ); 3 when a pick's embedding row could not be read from its file; 4 when a sampled
// pick's distribution is not finite (a NaN logit, every candidate -inf). Sets a->picked.
extern "C" int codegen_decode_step(DecodeArgs* a) {
    a->picked = 0;
    if (a->abi != DECODE_ABI || a->size != (int64_t)sizeof(DecodeArgs)) return 2;
    if (a->head_dim > MAX_HEAD_DIM || a->shards < 1 || a->embd % a->shards || a->heads % a->shards || a->start < 0 ||
        a->start > a->length)
        return 1;
    if (a->qformat != 0 && ((a->qformat != 8 && a->qformat != 4) ||
                            (a->qformat == 4 && (a->group < 32 || (a->group & (a->group - 1))))))
        return 1;
    if (a->picks < 0 || a->length + (a->picks > 0 ? a->picks : 1) > a->capacity) return 1;
    if (a->picks > 0) {
        if (a->limit < 1 || a->limit > a->vocab || !a->tokens || a->n_banned < 0 || a->n_stop < 0 ||
            (a->n_banned && !a->banned) || (a->n_stop && !a->stop) || (a->embed_fd < 0 && !a->embed_table) ||
            (a->embed_int8 && !a->embed_scales) || a->vocab > INT32_MAX)
            return 1;
        if (a->uniforms && (!(a->temperature > 0.0) || a->top_k < 0 || !(a->top_p > 0.0 && a->top_p <= 1.0)))
            return 1;
        for (int64_t i = 0; a->uniforms && i < a->picks; ++i)
            if (!(a->uniforms[i] >= 0.0f && a->uniforms[i] < 1.0f)) return 1;
        for (int64_t i = 0; i < a->n_banned; ++i)
            if (a->banned[i] < 0 || a->banned[i] >= a->vocab) return 1;
        for (int64_t i = 0; i < a->n_stop; ++i)
            if (a->stop[i] < 0 || a->stop[i] >= a->vocab) return 1;
    }
    return a->bf16 ? decode_step<uint16_t>(*a) : decode_step<float>(*a);
}
