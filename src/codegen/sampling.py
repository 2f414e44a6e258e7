"""Next-token selection: pure functions of logits, the tokens so far and an explicit torch.Generator.

The processing order is transformers': repetition penalty, min-new-tokens EOS ban and suppressed
ids, then (when sampling) temperature -> top-k -> top-p, then softmax and multinomial. Greedy
decoding takes the argmax after the same non-sampling steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None  # None or 0: off
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def validate(self) -> None:
        if not (self.temperature > 0):
            raise ValueError(f"temperature must be > 0 (use do_sample=False for greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty as transformers applies it: scores of ids in `seen` (B, T) are divided by
    `penalty` when positive and multiplied when negative."""
    if penalty == 1.0:
        return logits
    score = torch.gather(logits, 1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, seen, score)


def ban_tokens(logits: torch.Tensor, ids: list[int] | None = None, from_id: int | None = None) -> torch.Tensor:
    """-inf for `ids` and for every id >= `from_id` (ids the tokenizer cannot decode)."""
    if ids:
        logits = logits.index_fill(1, torch.tensor(ids, device=logits.device), float("-inf"))
    if from_id is not None and from_id < logits.shape[-1]:
        logits = logits.clone()
        logits[:, from_id:] = float("-inf")
    return logits


def warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, then top-p, each leaving at least one token (transformers' warpers)."""
    if params.temperature != 1.0:
        logits = logits / params.temperature
    if params.top_k:
        k = min(params.top_k, logits.shape[-1])
        kth = torch.topk(logits, k).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cum <= (1 - params.top_p)
        remove[..., -1:] = False
        logits = logits.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
    return logits


def select(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) processed logits -> (B,) next ids: argmax, or a draw from the warped distribution."""
    if not params.do_sample:
        return logits.argmax(dim=-1)
    if params.top_k and params.top_k < logits.shape[-1]:
        # Same distribution as warping the full vocabulary (ids outside the top k get probability 0
        # either way), but top-p sorts k values instead of V.
        values, ids = torch.topk(logits, params.top_k)
        warped = warp(values, SamplingParams(True, params.temperature, None, params.top_p))
        pick = torch.multinomial(warped.softmax(dim=-1), num_samples=1, generator=generator)
        return ids.gather(1, pick).squeeze(1)
    probs = warp(logits, params).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def token_logprobs(logits: torch.Tensor, chosen: torch.Tensor, top: int = 0):
    """Log-probabilities under the model's own distribution (raw logits): of the chosen ids (B,), and
    the `top` most likely (ids, logprobs), each (B, top), when top > 0."""
    logp = logits.float().log_softmax(dim=-1)
    picked = logp.gather(1, chosen[:, None]).squeeze(1)
    if top <= 0:
        return picked, None
    values, ids = logp.topk(top, dim=-1)
    return picked, (ids, values)
