"""Next-token selection for a batch of rows, each with its own parameters and random stream.

The processing order is transformers': repetition penalty, then the bans (stop tokens before
min_new_tokens, suppressed ids, ids past the vocabulary limit), then, for sampled rows,
temperature -> top-k -> top-p and a draw; greedy rows take the argmax after the same bans.

A sampled row draws exactly one uniform number per token from its own generator and picks the
token by inverse CDF over its warped distribution (ids in vocabulary order), so its tokens depend
only on its seed and its logits, never on which other rows share the batch. Ties are settled by id
(top-k keeps the lower ids among values equal to the k-th, top-p's stable sort removes them first):
a pick is a function of the logits and the draw alone, the one the native sampler (native/sample.cpp,
the scheduler's sampled bursts) makes too.
"""

from __future__ import annotations

import numpy as np
import torch

NEG_INF = float("-inf")


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The argmax of each row of (B, V) logits (B,), the first index of the largest value as torch's
    argmax gives it (a NaN counts as the largest). CPU fp32 rows go through numpy's argmax: torch
    2.13's CPU argmax takes ~130 us for one row of 51200 logits (~500 us for 8), numpy's ~7 us, and a
    batch-1 int8 step of the 350M model is ~15 ms."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2 and logits.shape[1]:
        return torch.from_numpy(logits.contiguous().numpy().argmax(axis=-1)).long()
    return logits.argmax(dim=-1)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """CTRL's penalty as transformers applies it: scores of ids seen so far (`seen`, (B, V) bool) are
    divided by the row's `penalty` (B, 1) when positive and multiplied when negative."""
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def warp(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Temperature, then top-p, leaving at least one token (transformers' warpers; `sample` applies
    top-k before, by keeping the k largest logits)."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_p < 1.0 and logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.shape[-1] > SORT_ALL:
        return _top_p_tail_first(logits, top_p)
    if top_p < 1.0:
        return _top_p_sorted(logits, top_p)
    return logits


def _top_p_sorted(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Top-p by sorting every value: a stable sort, so among equal logits the lower ids go first
    (bf16 models tie often)."""
    sorted_logits, sorted_idx = torch.sort(logits, descending=False, stable=True)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1 - top_p)
    remove[..., -1:] = False
    return logits.masked_fill(remove.scatter(1, sorted_idx, remove), NEG_INF)


SORT_ALL = 1024  # top-p over more values than this sorts only those not certainly removed (as sample.cpp)
_BUCKETS = 130


def _top_p_tail_first(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """warp's top-p on (G, V) CPU fp32 logits, without sorting all V: a stable sort of 51200 values
    took ~3.7 ms a row (60 ms a step of 16 rows). A low tail whose whole mass is at most half of
    1 - top_p is certainly removed (every cumulative probability in it is below the threshold);
    found by the probabilities' binary exponents, it is left out, and only the rest is sorted, its
    cumulative sums starting from the tail's mass. The same removals as sorting everything, up to
    fp64 summation order. Rows that keep more than a quarter of their values (a flat distribution)
    go through torch's sort of every value together, which the threads share: there one row at a
    time in numpy was the slower (16 rows of 51200 random normal logits: 65 against 43 ms)."""
    thr = np.float32(1 - top_p)
    probs = logits.softmax(dim=-1).numpy()
    out = logits.clone()
    wide = []
    for r in range(logits.shape[0]):
        q, z = probs[r], logits[r].numpy()
        bucket = np.where(q > 0, np.minimum(1 - np.frexp(q)[1], _BUCKETS - 2), _BUCKETS - 1)  # 0: [1/2, 1]
        mass = np.bincount(bucket, weights=q.astype(np.float64), minlength=_BUCKETS)
        tail = np.cumsum(mass[::-1])[::-1]  # tail[b]: the mass of buckets b and up
        fits = np.flatnonzero(tail <= 0.5 * thr)  # never bucket 0..the largest's: their tail is the whole
        cut = int(fits[0]) if fits.size else _BUCKETS
        kept = np.flatnonzero(bucket < cut)
        if kept.size > logits.shape[-1] // 4:
            wide.append(r)
            continue
        order = kept[np.argsort(z[kept], kind="stable")]
        cum = (tail[cut] if cut < _BUCKETS else 0.0) + np.cumsum(q[order].astype(np.float64))
        remove = cum.astype(np.float32) <= thr
        remove[-1] = False
        row = out[r].numpy()
        row[bucket >= cut] = NEG_INF
        row[order[remove]] = NEG_INF
    if wide:
        out[wide] = _top_p_sorted(logits[wide], top_p)
    return out


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """(G, K) probabilities (rows need not be normalised) and (G,) uniforms in [0, 1) -> (G,) column
    indices by inverse CDF, in fp64; a column of probability 0 is never picked."""
    cdf = probs.double().cumsum(dim=-1)
    total = cdf[:, -1:]
    if not bool(torch.isfinite(total).all() and (total > 0).all()):
        raise ValueError("the sampling distribution is not finite (temperature too small for these logits?)")
    idx = torch.searchsorted(cdf, uniforms.double()[:, None] * total, right=True).clamp_(max=probs.shape[1] - 1)
    # Rounding can land past the last nonzero entry: step back to it.
    last = probs.shape[1] - 1 - (probs.flip(-1) > 0).long().argmax(dim=-1, keepdim=True)
    return torch.minimum(idx, last).squeeze(1)


def top_k_ids(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The ids of the k largest of each row of (G, V) logits, (G, k) in vocabulary order; among values
    equal to the k-th largest the lower ids are kept (torch.topk's choice there depends on its sort's
    internals), so the pick is a function of the logits alone, which the native sampler reproduces."""
    values, ids = torch.topk(logits, k)
    kth = values[:, -1:]
    # topk's own choice stands where it kept every value equal to the k-th (fp32 logits nearly always),
    # or holds a NaN (the largest: kept, and the draw refuses it); other rows are redone one by one
    settled = ((logits == kth).sum(dim=-1) == (values == kth).sum(dim=-1)) | torch.isnan(kth[:, 0])
    ids = ids.sort(dim=-1).values
    if bool(settled.all()):
        return ids
    if logits.device.type != "cpu":
        redo = ~settled
        ids[redo] = _top_k_ids_by_mask(logits[redo], k, kth[redo])
        return ids
    for r in (~settled).nonzero()[:, 0].tolist():  # numpy: a few tens of us a row
        row, t = logits[r].float().numpy(), kth[r, 0].item()
        above = np.flatnonzero((row > t) | np.isnan(row))  # a NaN counts as the largest
        ids[r] = torch.from_numpy(np.sort(np.concatenate([above, np.flatnonzero(row == t)[:k - above.size]])))
    return ids


def _top_k_ids_by_mask(logits: torch.Tensor, k: int, kth: torch.Tensor) -> torch.Tensor:
    """top_k_ids in whole-tensor ops (off the CPU): the values above the k-th (G, 1) `kth`, then the
    first of those equal to it, as many as are left of k."""
    ties = logits == kth
    above = (logits > kth) | logits.isnan()  # a NaN counts as the largest
    keep = above | (ties & (ties.cumsum(dim=-1) <= k - above.sum(dim=-1, keepdim=True)))
    return keep.nonzero()[:, 1].view(logits.shape[0], k)


def sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, uniforms: torch.Tensor) -> torch.Tensor:
    """(G, V) processed logits of rows that share warp parameters -> (G,) sampled ids."""
    if top_k and top_k < logits.shape[-1]:
        # Same distribution as warping the whole vocabulary (ids outside the top k get probability 0
        # either way), but top-p sorts k values instead of V.
        ids = top_k_ids(logits, top_k)
        probs = warp(logits.gather(1, ids), temperature, top_p).softmax(dim=-1)
        return ids.gather(1, draw(probs, uniforms)[:, None]).squeeze(1)
    probs = warp(logits, temperature, top_p).softmax(dim=-1)
    return draw(probs, uniforms)


def token_logprobs(logits: torch.Tensor, chosen: torch.Tensor, top: int = 0):
    """Log-probabilities under the model's own distribution: of the chosen ids (B,), and the `top`
    most likely (ids, logprobs), each (B, top), when top > 0."""
    logp = logits.float().log_softmax(dim=-1)
    picked = logp.gather(1, chosen[:, None]).squeeze(1)
    if top <= 0:
        return picked, None
    values, ids = logp.topk(top, dim=-1)
    return picked, (ids, values)
