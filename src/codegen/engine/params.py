"""One record of sampling and stopping parameters, validated in one place, for every front end.

`SamplingParams` is what a request asks of the engine: token selection (temperature, 0 = greedy;
top_k; top_p; repetition penalty; suppressed ids; a vocabulary limit), stopping (min/max new
tokens, stop strings, CodeGen's truncation patterns, stop token ids), what to report (logprobs) and
randomness (a seed). `CompletionOptions` is the same record with the defaults of Salesforce's
`sample.py`. The context-window check is `check_prompt`, and an output's random stream is
`sample_seed(seed, index)`: its tokens depend only on the seed, its prompt and its index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

SEED_MODULUS = 2**64  # seeds are taken modulo 2**64 (negative and huge ones included)
GREEDY_BELOW = 1e-5  # temperatures below this are greedy: the distribution is the argmax's within fp32 anyway


@dataclass
class SamplingParams:
    max_new_tokens: int = 16
    min_new_tokens: int = 0  # before this many new tokens, stop tokens are banned and stop strings do not fire
    temperature: float = 1.0  # 0 (or below GREEDY_BELOW) = greedy (argmax); otherwise the softmax temperature
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # CTRL's, as transformers applies it; 1 = off
    n: int = 1  # samples per prompt
    stop: Sequence[str] = ()  # the text ends before the first of these
    truncate_before_pattern: Sequence[str] = ()  # CodeGen's regex truncation, as a stop rule
    stop_token_ids: Sequence[int] | None = None  # None: the model's / tokenizer's EOS; () = none
    suppress_tokens: Sequence[int] = ()  # never produced
    vocab_limit: int | None = None  # ids >= this are never produced (None: the tokenizer's size, if known)
    logprobs: int | None = None  # None: off; 0: the chosen token's; k: also the k most likely
    prompt_logprobs: bool = False  # also score the prompt tokens (OpenAI's echo with logprobs)
    seed: int | None = None  # None: drawn from torch's global generator
    truncate_prompt: bool = False  # keep the end of a prompt that does not fit, instead of failing

    def __post_init__(self) -> None:
        for name in ("stop", "truncate_before_pattern", "suppress_tokens"):
            value = getattr(self, name)
            setattr(self, name, (value,) if isinstance(value, str) else tuple(value or ()))
        if self.stop_token_ids is not None:
            self.stop_token_ids = tuple(self.stop_token_ids)
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def validate(self) -> None:
        """Raise ValueError naming the first parameter out of its range."""
        def bad(name: str, rule: str) -> None:
            raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        for name in ("max_new_tokens", "min_new_tokens", "top_k", "n"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                bad(name, "an integer")
        if self.max_new_tokens < 1:
            bad("max_new_tokens", ">= 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            bad("min_new_tokens", f"in [0, max_new_tokens = {self.max_new_tokens}]")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            bad("temperature", ">= 0 (0 = greedy)")
        if self.top_k < 0:
            bad("top_k", ">= 0 (0 = off)")
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            bad("top_p", "in (0, 1]")
        if not (isinstance(self.repetition_penalty, (int, float)) and math.isfinite(self.repetition_penalty)
                and self.repetition_penalty > 0):
            bad("repetition_penalty", "> 0")
        if self.n < 1:
            bad("n", ">= 1")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", "non-empty strings")
        if any(not isinstance(s, str) or not s for s in self.truncate_before_pattern):
            bad("truncate_before_pattern", "non-empty regular expressions")
        for name in ("stop_token_ids", "suppress_tokens"):
            if any(not isinstance(t, int) or t < 0 for t in getattr(self, name) or ()):
                bad(name, "non-negative token ids")
        if self.vocab_limit is not None and (not isinstance(self.vocab_limit, int) or self.vocab_limit < 1):
            bad("vocab_limit", "None or >= 1")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or self.logprobs < 0):
            bad("logprobs", "None or >= 0")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            bad("seed", "None or an integer")

    def replace(self, **changes) -> SamplingParams:
        """A copy with `changes`, validated again (the record's type is kept)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return type(self)(**values)

    def check_prompt(self, length: int, n_positions: int, index: int = 0) -> int:
        """The prompt length to use (the end of a prompt is kept with truncate_prompt); raises
        ValueError when prompt + max_new_tokens do not fit the context window."""
        if length < 1:
            raise ValueError(f"prompt {index} is empty")
        budget = n_positions - self.max_new_tokens
        if length <= budget:
            return length
        if self.truncate_prompt and budget >= 1:
            return budget
        raise ValueError(
            f"prompt {index} has {length} tokens; with max_new_tokens {self.max_new_tokens} that is "
            f"{length + self.max_new_tokens} positions, more than the model's context window (n_positions) of "
            f"{n_positions}: shorten the prompt or lower max_new_tokens"
        )


@dataclass
class CompletionOptions(SamplingParams):
    """SamplingParams with Salesforce's sample.py defaults: temperature 0.2, top_p 0.95, 128 new
    tokens, and the top_k=50 that transformers silently added there."""

    max_new_tokens: int = 128
    temperature: float = 0.2
    top_p: float = 0.95
    top_k: int = 50


def _mix64(x: int) -> int:
    """splitmix64's finaliser: nearby inputs give unrelated 64-bit outputs."""
    x &= 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def sample_seed(seed: int, index: int) -> int:
    """The seed of output `index` (prompt_index * n + sample) of a request seeded with `seed`: a 64-bit
    value that depends on nothing else, so the same request gives the same samples alone, beside
    other requests, streamed or not, whatever finishes first."""
    return _mix64((seed % SEED_MODULUS) + 0x9E3779B97F4A7C15 * (index + 1))
