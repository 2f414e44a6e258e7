// Sampling the next token natively (sample.h): the pick of decode.cpp's sampled bursts, and
// codegen_sample, the same function for the tests (tests/native/test_sample.py against
// engine.select.sample).
//
// Why: a sampled row stepped once per token through Python, ~1.6 ms of torch ops and bookkeeping
// around an 8.6 ms int8-bf16 step of the 350M model on a 2-core AMD EPYC (Zen 5), 0.81x greedy's
// speed; picked here, a lone sampled row runs in the scheduler's bursts like a greedy one. Scalar
// code beside a step that streams the weights: with top-k 50 one pass over 51200 logits, 0.06-0.09 ms;
// top-p alone 0.65-0.69 ms on peaked logits, ~4.8 ms on flat ones, whose kept values are all sorted
// (benchmarks/sampling.py, AMD EPYC Zen 5).
#include <math.h>
#include <string.h>

#include <algorithm>

#include "sample.h"

namespace codegen {
namespace {

struct Cand {
    float v;  // the logit, then divided by the temperature; -inf once removed by top-p
    int32_t id;
};

// a ranks above b in the top-k: the larger value, or among equal values the lower id.
inline bool better(const Cand& a, const Cand& b) { return a.v > b.v || (a.v == b.v && a.id < b.id); }

// Probabilities by binary exponent: 0 for [1/2, 1] ... 127 - E for a normal float of exponent field E,
// 128 below the normal range, 129 for zero.
constexpr int BUCKETS = 130;
inline int bucket(float x) {
    if (!(x > 0.0f)) return BUCKETS - 1;
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    const int e = (int)((u >> 23) & 0xff);
    return e ? 127 - e : 128;
}

// Beyond this many candidates, top-p leaves out of its sort a low tail whose mass is certainly removed.
constexpr int64_t SORT_ALL = 1024;

}  // namespace

int64_t sample_scratch_bytes(int64_t V) { return V * (int64_t)(sizeof(Cand) + sizeof(float) + sizeof(int32_t)) + 64; }

int64_t sample_token(const float* logits, int64_t V, const SampleParams& p, void* scratch) {
    Cand* c = (Cand*)scratch;            // K candidates, ids ascending
    float* q = (float*)(c + V);          // their probabilities
    int32_t* order = (int32_t*)(q + V);  // top-p: candidates by value, ascending
    int64_t K = V;
    if (p.top_k > 0 && p.top_k < V) {  // the k best in a heap whose root is the worst kept
        K = p.top_k;
        auto root_is_worst = [](const Cand& a, const Cand& b) { return better(a, b); };
        for (int64_t i = 0; i < V; ++i) {
            const float v = logits[i];
            if (v != v) return -1;  // torch.topk keeps a NaN (the largest): the softmax is NaN
            if (i < K) {
                c[i] = Cand{v, (int32_t)i};
                if (i == K - 1) std::make_heap(c, c + K, root_is_worst);
            } else if (v > c[0].v) {  // an equal value has a higher id than every kept one: it loses
                std::pop_heap(c, c + K, root_is_worst);
                c[K - 1] = Cand{v, (int32_t)i};
                std::push_heap(c, c + K, root_is_worst);
            }
        }
        std::sort(c, c + K, [](const Cand& a, const Cand& b) { return a.id < b.id; });
    } else {
        for (int64_t i = 0; i < V; ++i) {
            if (logits[i] != logits[i]) return -1;
            c[i] = Cand{logits[i], (int32_t)i};
        }
    }
    if (p.temperature != 1.0) {  // fp32 values over an fp32 temperature, as torch divides them
        const float t = (float)p.temperature;
        for (int64_t i = 0; i < K; ++i) c[i].v = c[i].v / t;
    }
    float m = -INFINITY;
    for (int64_t i = 0; i < K; ++i) m = c[i].v > m ? c[i].v : m;
    if (!isfinite(m)) return -1;  // every candidate -inf (or one +inf): torch's softmax is NaN
    if (p.top_p < 1.0) {
        // warp's top-p: softmax, ascending order, and the ids whose cumulative probability (summed in
        // fp64, stored as fp32: torch's CPU cumsum) is at most 1 - top_p removed, the largest kept.
        const float thr = (float)(1.0 - p.top_p);
        double S = 0.0;
        for (int64_t i = 0; i < K; ++i) S += (q[i] = expf(c[i].v - m));
        for (int64_t i = 0; i < K; ++i) q[i] = (float)(q[i] / S);
        int cut = BUCKETS;  // candidates in buckets >= cut are removed unsorted: their whole mass is below thr / 2
        double cum = 0.0;   // their mass
        if (K > SORT_ALL) {
            double mass[BUCKETS] = {0.0};
            for (int64_t i = 0; i < K; ++i) mass[bucket(q[i])] += q[i];
            // the largest value's bucket is never reached: the mass up to it is the whole, 1 > thr / 2
            for (int b = BUCKETS - 1; b >= 0 && cum + mass[b] <= 0.5 * thr; --b) cum += mass[b], cut = b;
        }
        int64_t n = 0;
        for (int64_t i = 0; i < K; ++i) {
            if (bucket(q[i]) < cut) order[n++] = (int32_t)i;
            else c[i].v = -INFINITY;
        }
        std::sort(order, order + n, [c](int32_t a, int32_t b) { return c[a].v < c[b].v || (c[a].v == c[b].v && a < b); });
        for (int64_t j = 0; j + 1 < n; ++j) {
            cum += q[order[j]];
            if ((float)cum > thr) break;
            c[order[j]].v = -INFINITY;
        }
    }
    // softmax over what is left (the largest is, so m is still the max), then the inverse CDF in fp64
    double S = 0.0;
    for (int64_t i = 0; i < K; ++i) S += (q[i] = expf(c[i].v - m));
    double total = 0.0;
    for (int64_t i = 0; i < K; ++i) total += (double)(q[i] = (float)(q[i] / S));
    if (!(isfinite(total) && total > 0.0)) return -1;
    const double target = (double)p.uniform * total;
    int64_t pick = -1, last = K - 1;  // the first cdf > target; the last nonzero probability
    double cdf = 0.0;
    for (int64_t i = 0; i < K; ++i) {
        cdf += (double)q[i];
        if (pick < 0 && cdf > target) pick = i;
        if (q[i] > 0.0f) last = i;
    }
    if (pick < 0 || pick > last) pick = last;  // rounding past the end: the last id with any probability
    return c[pick].id;
}

}  // namespace codegen

// Bytes of scratch codegen_sample needs for `vocab` logits.
extern "C" int64_t codegen_sample_scratch(int64_t vocab) { return codegen::sample_scratch_bytes(vocab); }

// sample_token on `vocab` logits (bans already -inf); -1 for a distribution that is not finite, -2 for
// parameters out of range (vocab < 1, temperature <= 0, top_k < 0, top_p outside (0, 1], uniform outside [0, 1)).
extern "C" int64_t codegen_sample(const float* logits, int64_t vocab, double temperature, int64_t top_k, double top_p,
                                  float uniform, void* scratch) {
    if (vocab < 1 || vocab > INT32_MAX || !(temperature > 0.0) || top_k < 0 || !(top_p > 0.0 && top_p <= 1.0) ||
        !(uniform >= 0.0f && uniform < 1.0f))
        return -2;
    return codegen::sample_token(logits, vocab, codegen::SampleParams{temperature, top_p, top_k, uniform}, scratch);
}
