"""What the scheduler takes and gives: a `Request` (prompts and one `SamplingParams`, with its state as
the scheduler runs it) and its events, a `TokenEvent` per generated token, a `PromptLogprobs` per
prompt when asked, an `ErrorEvent` for a request that failed alone."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .cache import KVCache
from .params import SamplingParams
from .prefix import PrefixCache

_ids = itertools.count()


class Request:
    """Prompts (token-id lists, or a (P, T) tensor with its attention mask for left-padded input)
    and the parameters to complete them with. `generator` seeds the samples when params.seed is
    None (else torch's global generator does). Outputs are indexed prompt_index * n + sample."""

    def __init__(self, prompts: Sequence[Sequence[int]] | torch.Tensor, params: SamplingParams,
                 attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 prefix_cache: PrefixCache | None = None, kv: KVCache | None = None) -> None:
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        self.id = next(_ids)
        self.params = params
        self.generator = generator
        self.prefix_cache = prefix_cache  # a pool of its own; else the scheduler's (if any)
        # A session's own one-row cache, whose first kv.length columns hold the prompt's first
        # positions: the prompt is prefilled after them, in place; when the request's one output
        # ends alone in the batch, `kv` is that row's cache and `kv_ids` its tokens.
        self.kv, self.kv_ids = kv, None
        self.cancelled = False
        self._interrupt = None  # the scheduler's burst interrupt (Scheduler.add): a cancel ends a burst too
        self.error: str | None = None
        self.finished = 0  # outputs that have had their last token
        self.seed: int | None = None  # set by Scheduler.add for sampled requests
        if isinstance(prompts, torch.Tensor):
            if prompts.dim() != 2 or prompts.shape[1] == 0:
                raise ValueError(f"input_ids must be (batch, length) with length >= 1, got shape {tuple(prompts.shape)}")
            mask = torch.ones_like(prompts) if attention_mask is None else attention_mask
            if mask.shape != prompts.shape:
                raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(prompts.shape)}")
            self.input_ids, self.mask = prompts.long(), mask.long().to(prompts.device)
        else:
            lists = [list(p) for p in prompts]
            if not lists or any(not all(isinstance(t, int) for t in p) for p in lists):
                raise ValueError("prompts must be a non-empty list of token-id lists")
            width = max((len(p) for p in lists), default=0)
            self.input_ids = torch.tensor([[0] * (width - len(p)) + p for p in lists], dtype=torch.long).view(len(lists), width)
            self.mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in lists], dtype=torch.long).view(len(lists), width)
        self.prompt_tokens = self.mask.sum(-1).tolist()
        if kv is not None and (len(self.prompt_tokens) != 1 or kv.batch_size != 1 or kv.length >= self.prompt_tokens[0]):
            raise ValueError("kv continues one prompt from a one-row cache holding fewer positions than the prompt")
        self.cached_tokens = [0] * len(self.prompt_tokens)  # per prompt: positions reused from a prefix cache

    @property
    def rows(self) -> int:
        return len(self.prompt_tokens) * self.params.n

    @property
    def done(self) -> bool:
        return self.finished == self.rows or self.error is not None or self.cancelled

    def cancel(self) -> None:
        """Drop this request's rows at the next step (e.g. its client went away); a burst running
        meanwhile ends after its current token."""
        self.cancelled = True
        if self._interrupt is not None:
            self._interrupt[0] = 1


@dataclass
class TokenEvent:
    """One generated token of output `index` (prompt_index * n + sample) of `request`. `text` is the
    new text that no stop rule can cut away any more (the rest comes on the last token); `offset` is
    where this token's text begins in the output text. Both need a tokenizer ('' and None without)."""

    request: Request
    index: int
    token: int
    text: str = ""
    offset: int | None = None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # "stop" (stop token, string or pattern) or "length", on the last


@dataclass
class PromptLogprobs:
    """Log-probabilities of a prompt's tokens (the first has none), at the request's admission."""

    request: Request
    prompt_index: int
    logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]] | None]


@dataclass
class ErrorEvent:
    """The request failed alone (its rows have left the batch); the message says why. `status` is 400
    for a problem of the request's own parameters (e.g. a non-finite distribution), 500 otherwise."""

    request: Request
    message: str
    status: int = 400
