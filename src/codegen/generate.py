"""The token-level generation engine: one prefill into a preallocated KVCache, then a decode loop.

`stream()` yields, after every decode step, one `TokenEvent` per sequence still running. Rows are
the prompts times `num_return_sequences` (the samples of a prompt adjacent); a prompt is prefilled
once and its cache replicated. Prompts are left-padded, with positions `cumsum(mask) - 1` as
transformers' generate computes them. A row that finishes (EOS, a caller's stop rule, or length)
leaves the batch: its cache rows are dropped, so it stops costing compute while the others go on.

`generate()` is transformers' `model.generate` on top of it: same keywords, same output tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .cache import KVCache
from .fused import FusedDecoder, suffix_start
from .sampling import SamplingParams, apply_repetition_penalty, ban_tokens, select, token_logprobs


@dataclass
class GenerationConfig:
    max_new_tokens: int = 20
    min_new_tokens: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    num_return_sequences: int = 1
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    suppress_tokens: tuple[int, ...] = ()
    vocab_limit: int | None = None  # ids >= vocab_limit are never produced (e.g. len(tokenizer))
    logprobs: int | None = None  # None: off; 0: the chosen token's; k: also the k most likely
    use_cache: bool = True

    def validate(self, n_positions: int, prompt_len: int) -> None:
        self.sampling.validate()
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], got {self.min_new_tokens}")
        if self.num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if prompt_len + self.max_new_tokens > n_positions:
            raise ValueError(
                f"prompt length {prompt_len} + max_new_tokens {self.max_new_tokens} = {prompt_len + self.max_new_tokens} "
                f"exceeds the model's n_positions = {n_positions}; shorten the prompt or lower max_new_tokens"
            )


@dataclass
class TokenEvent:
    row: int  # output row: prompt_index * num_return_sequences + sample_index
    token: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # "stop" or "length" on the row's last token


def _forward(model, ids, cache, mask, positions) -> torch.Tensor:
    """Logits (B, V) of the last position only: the LM head is skipped for the rest of a prompt."""
    h = model.transformer(
        input_ids=ids, past_key_values=cache, attention_mask=mask, position_ids=positions, use_cache=cache is not None
    ).last_hidden_state[:, -1]
    return model.lm_head(h).float()


@torch.inference_mode()
def stream(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    config: GenerationConfig,
    generator: torch.Generator | None = None,
    stopper: Callable[[int, int], bool] | None = None,
) -> Iterator[list[TokenEvent]]:
    """Generate for (B, T) left-padded `input_ids`; `stopper(row, token)` may end a row after a token."""
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (batch, length) with length >= 1, got shape {tuple(input_ids.shape)}")
    B, T = input_ids.shape
    config.validate(model.config.n_positions, T)
    device = model.lm_head.weight.device
    input_ids = input_ids.to(device)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device=device, dtype=torch.long)
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(input_ids.shape)}")
    if bool((mask.sum(-1) == 0).any()):
        raise ValueError("a prompt is empty: every row needs at least one attended token")
    padded = not bool(mask.all())
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    n = config.num_return_sequences
    params = config.sampling
    eos = torch.tensor(config.eos_token_ids, device=device, dtype=torch.long)

    cache = KVCache.for_model(model, B, T + config.max_new_tokens) if config.use_cache else None
    fused = FusedDecoder.create(model) if cache is not None else None  # one-row steps in one native call
    logits = _forward(model, input_ids, cache, mask if padded else None, positions)
    rows = torch.arange(B * n, device=device)  # output row of each live batch row
    if n > 1:  # prefill once per prompt, then replicate its cache for the n samples
        expand = torch.arange(B, device=device).repeat_interleave(n)
        if cache is not None:
            cache.reorder(expand)
        logits, input_ids, mask, positions = logits[expand], input_ids[expand], mask[expand], positions[expand]
    seqs = input_ids  # (live, T + step): prompt and generated tokens, for the repetition penalty
    position = positions[:, -1]

    for step in range(config.max_new_tokens):
        logits = apply_repetition_penalty(logits, seqs, params.repetition_penalty)
        banned = list(config.suppress_tokens)
        if step < config.min_new_tokens:
            banned += list(config.eos_token_ids)
        if banned or config.vocab_limit is not None:
            logits = ban_tokens(logits, banned, config.vocab_limit)
        next_ids = select(logits, params, generator)
        logp = top = None
        if config.logprobs is not None:
            logp, top = token_logprobs(logits, next_ids, config.logprobs)

        is_eos = torch.isin(next_ids, eos) if len(config.eos_token_ids) else torch.zeros_like(next_ids, dtype=torch.bool)
        ids_list, eos_list, row_list = next_ids.tolist(), is_eos.tolist(), rows.tolist()
        logp_list = logp.tolist() if logp is not None else None
        if top is not None:
            top_ids, top_vals = top[0].tolist(), top[1].tolist()
        events, keep = [], []
        last_step = step == config.max_new_tokens - 1
        for i, (row, tok) in enumerate(zip(row_list, ids_list)):
            reason = None
            if eos_list[i] or (stopper is not None and stopper(row, tok)):
                reason = "stop"
            elif last_step:
                reason = "length"
            events.append(TokenEvent(
                row, tok,
                logp_list[i] if logp_list is not None else None,
                list(zip(top_ids[i], top_vals[i])) if top is not None else None,
                reason,
            ))
            if reason is None:
                keep.append(i)
        yield events
        if not keep:
            return

        seqs = torch.cat([seqs, next_ids[:, None]], dim=1)
        if len(keep) < len(row_list):  # drop finished rows from the batch and the cache
            idx = torch.tensor(keep, device=device)
            rows, seqs, mask, position, next_ids = rows[idx], seqs[idx], mask[idx], position[idx], next_ids[idx]
            if cache is not None:
                cache.reorder(idx)
            padded = not bool(mask.all())
        mask = torch.cat([mask, mask.new_ones(len(keep), 1)], dim=1)
        position = position + 1
        start = suffix_start(mask[0]) if fused is not None and len(keep) == 1 else None
        if start is not None:
            logits = fused(ids_list[keep[0]], int(position[0]), cache, start)
        elif cache is not None:
            logits = _forward(model, next_ids[:, None], cache, mask if padded else None, position[:, None])
        else:  # recompute everything, as transformers does with use_cache=False
            full_pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = _forward(model, seqs, None, mask if padded else None, full_pos)


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
    """transformers' `generate` for greedy search and sampling: returns (B * num_return_sequences,
    T + new) ids, prompt included, rows that finished early padded with `pad_token_id`."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    T = input_ids.shape[1]
    if max_new_tokens is None:
        max_new_tokens = (max_length if max_length is not None else 20) - T
        if max_new_tokens < 1:
            raise ValueError(f"max_length ({max_length if max_length is not None else 20}, counting the prompt) "
                             f"leaves no room after the {T}-token prompt; set max_new_tokens")
    if eos_token_id is None:
        eos_token_id = model.config.eos_token_id
    eos = tuple([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or ()))
    if pad_token_id is None:
        pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else (eos[0] if eos else 0)
    if attention_mask is None:  # transformers infers padding from pad ids unless pad is also EOS
        if pad_token_id in input_ids and pad_token_id not in eos:
            attention_mask = (input_ids != pad_token_id).long()
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens or 0,
        sampling=SamplingParams(do_sample, temperature, top_k if do_sample else None, top_p, repetition_penalty),
        num_return_sequences=num_return_sequences,
        eos_token_ids=eos,
        pad_token_id=pad_token_id,
        suppress_tokens=tuple(suppress_tokens or ()),
        use_cache=use_cache,
    )
    rows = input_ids.shape[0] * num_return_sequences
    new: list[list[int]] = [[] for _ in range(rows)]
    for events in stream(model, input_ids, attention_mask, config, generator):
        for e in events:
            new[e.row].append(e.token)
    width = max(len(t) for t in new)
    out = torch.full((rows, width), pad_token_id, dtype=torch.long)
    for r, toks in enumerate(new):
        out[r, : len(toks)] = torch.tensor(toks, dtype=torch.long)
    prompt = input_ids.cpu().repeat_interleave(num_return_sequences, dim=0)
    return torch.cat([prompt, out], dim=1).to(input_ids.device)
