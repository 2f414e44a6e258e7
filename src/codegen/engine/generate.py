"""transformers' `model.generate` (greedy search and sampling) as a thin layer over the scheduler:
the same keywords, the same output tensor."""

from __future__ import annotations

import torch

from .params import SamplingParams
from .request import ErrorEvent, Request
from .scheduler import Scheduler


def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int | None = None,
    min_new_tokens: int | None = None,
    max_length: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    num_return_sequences: int = 1,
    pad_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
    use_cache: bool = True,
    suppress_tokens: list[int] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Returns (B * num_return_sequences, T + new) ids, prompt included, rows that finished early
    padded with `pad_token_id`. Ids >= `model.tokenizer_size` (set when the checkpoint directory had
    tokenizer files) are never produced. The engine always decodes with its KV cache: `use_cache`
    is accepted for transformers' signature, and cached decoding equals a full recompute."""
    del use_cache
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    T = input_ids.shape[1]
    if max_new_tokens is None:
        max_new_tokens = (max_length if max_length is not None else 20) - T
        if max_new_tokens < 1:
            raise ValueError(f"max_length ({max_length if max_length is not None else 20}, counting the prompt) "
                             f"leaves no room after the {T}-token prompt; set max_new_tokens")
    if num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be >= 1, got {num_return_sequences}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling (do_sample=False is greedy), got {temperature}")
    if eos_token_id is None:
        eos_token_id = model.config.eos_token_id
    eos = tuple([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or ()))
    if pad_token_id is None:
        pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else (eos[0] if eos else 0)
    if attention_mask is None:  # transformers infers padding from pad ids unless pad is also EOS
        if pad_token_id in input_ids and pad_token_id not in eos:
            attention_mask = (input_ids != pad_token_id).long()
    if attention_mask is not None and bool((attention_mask.sum(-1) == 0).any()):
        raise ValueError("a prompt is empty: every row needs at least one attended token")
    params = SamplingParams(
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens or 0,
        temperature=temperature if do_sample else 0.0, top_k=(top_k or 0) if do_sample else 0,
        top_p=top_p if do_sample else 1.0, repetition_penalty=repetition_penalty, n=num_return_sequences,
        stop_token_ids=eos, suppress_tokens=tuple(suppress_tokens or ()),
    )
    scheduler = Scheduler.create(model)
    request = scheduler.add(Request(input_ids, params, attention_mask, generator))
    rows = request.rows
    new: list[list[int]] = [[] for _ in range(rows)]
    for events in scheduler.run():
        for e in events:
            if isinstance(e, ErrorEvent):
                raise ValueError(f"generation failed: {e.message}")
            new[e.index].append(e.token)
    width = max(len(t) for t in new)
    out = torch.full((rows, width), pad_token_id, dtype=torch.long)
    for r, toks in enumerate(new):
        out[r, : len(toks)] = torch.tensor(toks, dtype=torch.long)
    prompt = input_ids.cpu().repeat_interleave(num_return_sequences, dim=0)
    return torch.cat([prompt, out], dim=1).to(input_ids.device)
