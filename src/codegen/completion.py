"""Text-level completion: prompts in, typed completions out (what the CLI and evaluation use).

`complete()` returns one `Completion` per (prompt, sample); `stream_complete()` yields the engine's
`TokenEvent`s (also named `CompletionDelta`), whose texts join to the final completion texts. Both
run one request through the engine's scheduler: stop strings and CodeGen's
`truncate_before_pattern` rule are checked on the decoded text after every token, so a finished
sequence stops costing compute; the text returned ends before the stop string. Ids the tokenizer
cannot decode (the head has 51200 rows, the tokenizer 50295 tokens) are never produced.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from . import fim
from .engine.params import CompletionOptions, SamplingParams
from .engine.prefix import PrefixCache
from .engine.request import ErrorEvent, Request, TokenEvent
from .engine.scheduler import Scheduler

CompletionDelta = TokenEvent  # what stream_complete yields

__all__ = ["Completion", "CompletionDelta", "CompletionOptions", "complete", "stream_complete"]


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


def _prompts(prompt: str | Sequence[str]) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompt must be a string or a non-empty list of strings")
    return prompts


def _run(model, tokenizer, prompt, options: SamplingParams | None, generator,
         suffix: str | None = None, prefix_cache: PrefixCache | None = None) -> tuple[Request, Iterator[list]]:
    options = options if options is not None else CompletionOptions()
    if not isinstance(options, SamplingParams):
        raise TypeError(f"options must be CompletionOptions / SamplingParams, got {type(options).__name__}")
    options.validate()  # a record changed after construction is checked again
    if suffix is not None:  # fill in the middle: each prompt is the code before the cursor
        if not isinstance(suffix, str):
            raise ValueError("suffix must be a string")
        ids = [fim.fim_prompt(tokenizer, p, suffix) for p in _prompts(prompt)]
        if options.stop_token_ids is None:
            options = options.replace(stop_token_ids=fim.stop_ids(tokenizer))
    elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(t, int) for t in prompt):
        ids = [list(prompt)]  # one prompt, as token ids
    else:
        ids = [tokenizer.encode(p) for p in _prompts(prompt)]
    scheduler = Scheduler.create(model, tokenizer)
    request = scheduler.add(Request(ids, options, generator=generator, prefix_cache=prefix_cache))
    return request, scheduler.run()


def token_events(steps: Iterator[list]) -> Iterator[TokenEvent]:
    """The token events of a scheduler's steps; ValueError for a request that failed."""
    for events in steps:
        for e in events:
            if isinstance(e, ErrorEvent):
                raise ValueError(f"generation failed: {e.message}")
            if isinstance(e, TokenEvent):
                yield e


@dataclass
class _Output:
    text: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list = field(default_factory=list)


def complete(model, tokenizer, prompt: str | Sequence[str] | Sequence[int], options: SamplingParams | None = None,
             generator: torch.Generator | None = None, suffix: str | None = None,
             prefix_cache: PrefixCache | None = None) -> list[Completion]:
    """Complete each prompt (a string, a list of strings, or one prompt's token ids) `options.n`
    times; results ordered by (prompt, sample). With `suffix`
    (CodeGen2 models), fill in the middle between each prompt and the suffix: the text is the middle.
    With a `prefix_cache`, each prompt prefills only what follows its longest common prefix with a
    sequence stored there, and the prompts and outputs are stored (a conversation keeps one)."""
    request, steps = _run(model, tokenizer, prompt, options, generator, suffix, prefix_cache)
    n = request.params.n
    outs = [_Output() for _ in range(request.rows)]
    done: dict[int, Completion] = {}
    for e in token_events(steps):
        o = outs[e.index]
        o.text.append(e.text)
        o.ids.append(e.token)
        if e.logprob is not None:
            o.logprobs.append(e.logprob)
        if e.top_logprobs is not None:
            o.top.append(e.top_logprobs)
        if e.finish_reason is not None:
            done[e.index] = Completion(
                prompt_index=e.index // n, index=e.index, text="".join(o.text), token_ids=o.ids,
                finish_reason=e.finish_reason, prompt_tokens=request.prompt_tokens[e.index // n],
                completion_tokens=len(o.ids), logprobs=o.logprobs if request.params.logprobs is not None else None,
                top_logprobs=o.top if request.params.logprobs else None,
            )
    return [done[i] for i in sorted(done)]


def stream_complete(model, tokenizer, prompt: str | Sequence[str] | Sequence[int], options: SamplingParams | None = None,
                    generator: torch.Generator | None = None, suffix: str | None = None,
                    prefix_cache: PrefixCache | None = None) -> Iterator[TokenEvent]:
    """Token events as they arrive; an output's `text`s join to its `complete()` text. Text that could
    still turn out to be the start of a stop string (or, with truncate_before_pattern, the current
    and previous line) is held back until it cannot. `prefix_cache`: as for `complete`."""
    _, steps = _run(model, tokenizer, prompt, options, generator, suffix, prefix_cache)
    yield from token_events(steps)
