"""Text-level completion: prompts in, typed completions out (what the CLI, server and evaluation use).

`complete()` returns one `Completion` per (prompt, sample); `stream_complete()` yields
`CompletionDelta`s whose texts join to the final completion texts. Stop strings and CodeGen's
`truncate_before_pattern` rule are checked on the decoded text after every token, so a finished
sequence stops costing compute; the text returned ends before the stop string. Ids the tokenizer
cannot decode (the head has 51200 rows, the tokenizer 50295 tokens) are never produced.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .generate import GenerationConfig, stream
from .sampling import SamplingParams
from .tokenizer.base import truncate_before_pattern as truncate

logger = logging.getLogger(__name__)


@dataclass
class CompletionOptions:
    """Defaults follow Salesforce's sample.py: temperature 0.2, top_p 0.95, 128 new tokens, and the
    top_k=50 that transformers silently added there. temperature 0 means greedy."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 0.2
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.0
    n: int = 1
    stop: Sequence[str] = ()
    truncate_before_pattern: Sequence[str] = ()
    seed: int | None = None
    logprobs: int | None = None  # None: off; 0: the chosen token's; k: also the k most likely
    truncate_prompt: bool = False  # keep the end of a prompt that does not fit, instead of failing

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")


@dataclass
class Completion:
    prompt_index: int
    index: int  # prompt_index * n + sample
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS, stop string or pattern) or "length"
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None


@dataclass
class CompletionDelta:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None


class RowText:
    """The decoded text of one generated sequence and its stop rules (stop strings, CodeGen's
    truncation patterns). `add()` after each token says whether a rule fired; `delta()` hands out
    the text that can no longer be cut away."""

    def __init__(self, tokenizer, stop: Sequence[str] = (), patterns: Sequence[str] = ()) -> None:
        self.decoder = tokenizer.incremental_decoder(skip_special_tokens=True)
        self.stop, self.patterns = tuple(stop), tuple(patterns)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.cut: int | None = None  # final text length when a rule fired
        self.sent = 0  # characters already handed out by delta()
        self.done = False

    def add(self, token: int) -> bool:
        before = len(self.decoder.text)
        self.decoder.add([token])
        text = self.decoder.text
        if self.stop:
            start = max(0, before - self.hold)
            hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.cut = min(hits)
                return True
        if self.patterns:
            cut = truncate(text, self.patterns)
            if len(cut) < len(text):
                self.cut = len(cut)
                return True
        return False

    def final_text(self) -> str:
        if not self.done:
            self.done = True
            if self.cut is None:
                self.decoder.flush()
        text = self.decoder.text
        return text[: self.cut] if self.cut is not None else text

    def delta(self, final: bool = False) -> str:
        """New text since the last call. Until `final`, text that could still become the start of a
        stop string (with patterns: the current and previous line) is held back."""
        if final:
            text = self.final_text()
            out, self.sent = text[self.sent:], len(text)
            return out
        text = self.decoder.text
        safe = len(text) - self.hold
        if self.patterns:  # a pattern may still match from the start of the previous line
            last = text.rfind("\n")
            safe = min(safe, text.rfind("\n", 0, last) + 1 if last > 0 else 0)
        safe = max(safe, self.sent)
        out, self.sent = text[self.sent:safe], safe
        return out


@dataclass
class _Row:
    text: RowText
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list = field(default_factory=list)


class _Run:
    """One generation over tokenized prompts, with per-row text state for stop rules."""

    def __init__(self, model, tokenizer, prompts: list[str], opts: CompletionOptions, generator) -> None:
        opts.validate()
        self.opts = opts
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        encoded = [tokenizer.encode(p) for p in prompts]
        budget = model.config.n_positions - opts.max_new_tokens
        for i, ids in enumerate(encoded):
            if not ids:
                raise ValueError(f"prompt {i} is empty")
            if len(ids) > budget:
                if not opts.truncate_prompt:
                    raise ValueError(
                        f"prompt {i} has {len(ids)} tokens; with max_new_tokens {opts.max_new_tokens} it exceeds the "
                        f"context window of {model.config.n_positions} tokens (lower max_new_tokens or truncate the prompt)"
                    )
                encoded[i] = ids[-budget:]
        width = max(len(ids) for ids in encoded)
        self.input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded])
        self.mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
        self.prompt_tokens = [len(ids) for ids in encoded]
        sampling = SamplingParams(
            do_sample=opts.temperature > 0, temperature=opts.temperature if opts.temperature > 0 else 1.0,
            top_k=opts.top_k if opts.temperature > 0 else None, top_p=opts.top_p if opts.temperature > 0 else 1.0,
            repetition_penalty=opts.repetition_penalty,
        )
        self.config = GenerationConfig(
            max_new_tokens=opts.max_new_tokens, min_new_tokens=opts.min_new_tokens, sampling=sampling,
            num_return_sequences=opts.n, eos_token_ids=(eos,) if eos is not None else (), pad_token_id=pad,
            vocab_limit=len(tokenizer), logprobs=opts.logprobs,
        )
        if generator is None and opts.seed is not None:
            generator = torch.Generator(device=model.lm_head.weight.device).manual_seed(opts.seed)
        self.generator = generator
        self.model = model
        self.rows = [_Row(RowText(tokenizer, opts.stop, opts.truncate_before_pattern)) for _ in range(len(prompts) * opts.n)]

    def _stopper(self, row: int, token: int) -> bool:
        return self.rows[row].text.add(token)

    def events(self):
        return stream(self.model, self.input_ids, self.mask, self.config, self.generator, self._stopper)

    def record(self, event) -> None:
        r = self.rows[event.row]
        r.ids.append(event.token)
        if event.logprob is not None:
            r.logprobs.append(event.logprob)
        if event.top_logprobs is not None:
            r.top.append(event.top_logprobs)

    def completion(self, row: int, reason: str) -> Completion:
        r = self.rows[row]
        return Completion(
            prompt_index=row // self.opts.n, index=row, text=r.text.final_text(), token_ids=list(r.ids),
            finish_reason=reason, prompt_tokens=self.prompt_tokens[row // self.opts.n], completion_tokens=len(r.ids),
            logprobs=list(r.logprobs) if self.opts.logprobs is not None else None,
            top_logprobs=list(r.top) if self.opts.logprobs else None,
        )


def _prompts(prompt: str | Sequence[str]) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompt must be a string or a non-empty list of strings")
    return prompts


def complete(model, tokenizer, prompt: str | Sequence[str], options: CompletionOptions | None = None,
             generator: torch.Generator | None = None) -> list[Completion]:
    """Complete each prompt `options.n` times; results ordered by (prompt, sample)."""
    run = _Run(model, tokenizer, _prompts(prompt), options or CompletionOptions(), generator)
    done: dict[int, Completion] = {}
    for events in run.events():
        for e in events:
            run.record(e)
            if e.finish_reason is not None:
                done[e.row] = run.completion(e.row, e.finish_reason)
    return [done[i] for i in sorted(done)]


def stream_complete(model, tokenizer, prompt: str | Sequence[str], options: CompletionOptions | None = None,
                    generator: torch.Generator | None = None) -> Iterator[CompletionDelta]:
    """Text deltas as tokens arrive; a row's deltas join to its `complete()` text. Text that could
    still turn out to be the start of a stop string (or, with truncate_before_pattern, the current
    and previous line) is held back until it cannot."""
    run = _Run(model, tokenizer, _prompts(prompt), options or CompletionOptions(), generator)
    for events in run.events():
        for e in events:
            run.record(e)
            lp = [e.logprob] if e.logprob is not None else None
            top = [e.top_logprobs] if e.top_logprobs is not None else None
            text = run.rows[e.row].text.delta(final=e.finish_reason is not None)
            yield CompletionDelta(e.row, text, [e.token], e.finish_reason, lp, top)
