// The sampled next-token pick of the native decode step (decode.cpp's picks, sample.cpp), declared once.
#pragma once

#include <stdint.h>

namespace codegen {

// One sampled pick's parameters, as engine.select.sample takes them: temperature (> 0), top_k (0 or
// >= vocab: off), top_p in (0, 1], and the row's uniform draw in [0, 1).
struct SampleParams {
    double temperature, top_p;
    int64_t top_k;
    float uniform;
};

// Bytes of scratch that sample_token needs for `vocab` logits.
int64_t sample_scratch_bytes(int64_t vocab);

// The id engine.select.sample picks from `logits` (vocab fp32 values, bans already -inf): top-k (ties
// to the lower ids), temperature, top-p, softmax, inverse CDF in fp64 over the kept ids in vocabulary
// order; -1 where that distribution is not finite (a NaN logit, every kept logit -inf), where the
// Python path raises. The same pick up to fp32 rounding: torch's vectorised softmax rounds differently
// by an ulp or so, which moves a token only when its cumulative probability lies within that of the
// top-p threshold or of the draw.
int64_t sample_token(const float* logits, int64_t vocab, const SampleParams& p, void* scratch);

}  // namespace codegen
