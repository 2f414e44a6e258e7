"""The scheduler: the engine's only decode loop.

Requests (one or more prompts, one `SamplingParams`) are added; each `step()` runs the forward pass
of the tokens the previous step chose (so that step's events reached their callers first), admits
waiting requests while the row budget allows (a request is prefilled once, its prompts left-padded
into one batch, or prompt by prompt after a prefix from the prefix cache, and its cache replicated
for the n samples of each prompt, which then join the running batch), selects the next token of
every running row, reports it, and drops the rows that finished. `model.generate`, `complete`, `stream_complete` and the
evaluation add their requests at once and step until done; the server's batcher adds requests
while it steps, so rows join and leave at every step. A lone row may run several of those
steps as one (a burst: `Scheduler` below), with the same tokens and events.

Each row has its own random stream (`params.sample_seed` of the request's seed and the output's
index, prompt_index * n + sample), so an output's tokens depend only on the seed, its prompt and its
index: never on the batch it shares or on when other rows finish.
Events: a `TokenEvent` per running row per step (per token of a burst), a `PromptLogprobs` per prompt at admission when
asked, and an `ErrorEvent` for a request that failed alone (its rows leave; the others go on).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..native.fused import Picks
from .backend import Backend
from .cache import KVCache
from .params import sample_seed
from .prefix import PrefixCache
from .request import ErrorEvent, PromptLogprobs, Request, TokenEvent
from .select import NEG_INF, apply_repetition_penalty, greedy, sample, token_logprobs
from .text import RowText

logger = logging.getLogger(__name__)
_FAILED = "failed"  # Scheduler._report: the row's text handling raised


@dataclass
class _Row:
    request: Request
    index: int
    generator: torch.Generator | None
    text: RowText | None
    prompt: list[int]  # the prompt's ids (no padding)
    tokens: list[int] = field(default_factory=list)  # generated so far
    # uniforms drawn from `generator` for a burst's picks that did not run: the next picks take them first
    pending: list[float] = field(default_factory=list)

    @property
    def generated(self) -> int:
        return len(self.tokens)

    def uniforms(self, n: int) -> list[float]:
        """The row's next n uniform draws (one per sampled token): its stream, whether the picks run in
        Python or in a burst."""
        taken, self.pending = self.pending[:n], self.pending[n:]
        if len(taken) < n:
            taken += torch.rand(n - len(taken), generator=self.generator).tolist()
        return taken

    def unused(self, uniforms: list[float]) -> None:
        """Give back the draws of picks that did not run (ahead of any still pending)."""
        self.pending[:0] = uniforms


class Scheduler:
    """Continuous batching over one model. `max_rows` bounds the rows decoded together (None: no
    bound); a tokenizer is needed for text (stop strings, patterns, deltas) and sets the EOS and
    the vocabulary limit, which otherwise come from the model. With a `prefix_cache` (or a
    request's own), prompts reuse the KV of a stored common prefix and prefill only the rest.
    A lone row, greedy or sampled (no other running or waiting, no repetition penalty, no logprobs),
    decodes up to `burst` tokens (and about BURST_SECONDS) per step in one native call
    (`Backend.decode_picks`) where the model's one-row step is native: the same tokens and events
    (sampled: the same draws of the row's stream, picks equal up to fp32 rounding), without Python
    between the tokens (~0.5-1.5 ms of a 12-17 ms int8 step of the 350M model on a 2-core Xeon greedy,
    ~1.6 ms of an 8.6 ms int8-bf16 one on a Zen 5 sampled); a request queued meanwhile ends the burst
    after its current token, so it waits no longer than one token for its admission."""

    BURST = 16  # tokens at most per burst
    BURST_SECONDS = 0.1  # and about this long: streamed text still arrives every ~0.1 s

    def __init__(self, model, tokenizer=None, *, max_rows: int | None = None,
                 prefix_cache: PrefixCache | None = None, burst: int | None = None) -> None:
        burst = self.BURST if burst is None else burst
        if not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst must be an integer >= 1 (1: no bursts), got {burst!r}")
        self.model, self.tokenizer = model, tokenizer
        self.burst = burst
        self._token_seconds: float | None = None  # a burst's time per token, measured at the last one
        # set when a request is queued: a burst running in another thread ends after its current pick
        self._interrupt = np.zeros(1, dtype=np.int32)
        self.backend = Backend.for_model(model)
        self.device = model.lm_head.weight.device
        self.n_positions = model.config.n_positions
        eos = tokenizer.eos_token_id if tokenizer is not None and tokenizer.eos_token_id is not None else model.config.eos_token_id
        self.eos: tuple[int, ...] = (eos,) if eos is not None else ()
        self.vocab_limit = len(tokenizer) if tokenizer is not None else getattr(model, "tokenizer_size", None)
        self.n_tokens = model.config.vocab_size
        self.max_rows = max_rows
        self.prefix_cache = prefix_cache  # requests without a pool of their own use this one
        self.waiting: collections.deque[Request] = collections.deque()
        self.rows: list[_Row] = []
        self.cache: KVCache | None = None
        self.logits: torch.Tensor | None = None  # (B, V) fp32, each row's next-token logits
        self.positions: torch.Tensor | None = None  # (B,) position of each row's next token
        self.seen: torch.Tensor | None = None  # (B, V) bool, ids in each row so far (repetition penalty)
        self.steps = 0
        # Prompts' KV to store in a prefix cache, copied at the next step so that the copy does not
        # delay the first token. Views stay valid: a cache never rewrites a column once written.
        self._to_store: list[tuple[PrefixCache, list[int], torch.Tensor, torch.Tensor]] = []

    @staticmethod
    def create(model, tokenizer=None, **kwargs) -> Scheduler:
        """The scheduler for `model`: this class, or the one a tensor-parallel rank's model names
        (`model.scheduler_class`, set by codegen.parallel: it keeps the group's ranks on the same
        steps). Front ends make their schedulers here."""
        return (getattr(model, "scheduler_class", None) or Scheduler)(model, tokenizer, **kwargs)

    # ------------------------------------------------------------------ requests
    def add(self, request: Request) -> Request:
        """Validate and queue `request`; raises ValueError naming the problem (nothing is queued)."""
        p = request.params
        if (p.stop or p.truncate_before_pattern) and self.tokenizer is None:
            raise ValueError("stop strings and truncation patterns need a tokenizer")
        if self.max_rows is not None and request.rows > self.max_rows:
            raise ValueError(f"the request has {request.rows} sequences (prompts x n); at most {self.max_rows} run together")
        # With a tokenizer, prompt ids must be ones it can decode; without, ones the model embeds.
        limit = self._limit(request) if self.tokenizer is not None else self.n_tokens
        for i, length in enumerate(request.prompt_tokens):
            keep = p.check_prompt(length, self.n_positions, i)
            if keep < length:  # truncate_prompt: keep the end
                request.input_ids, request.mask = request.input_ids[:, -keep:], request.mask[:, -keep:]
                request.prompt_tokens = request.mask.sum(-1).tolist()
                return self.add(request)
        real = request.input_ids[request.mask.bool()]
        if real.numel() and (int(real.min()) < 0 or int(real.max()) >= limit):
            raise ValueError(f"prompt token ids must lie in [0, {limit})")
        if not p.greedy:
            if p.seed is not None:
                request.seed = p.seed
            else:  # drawn once per request, from the caller's generator or torch's global one
                request.seed = int(torch.randint(0, 2**63 - 1, (), generator=request.generator))
        self._queue(request)
        return request

    def _queue(self, request: Request) -> None:
        request._interrupt = self._interrupt
        self.waiting.append(request)
        self._interrupt[0] = 1  # after the append (see step)

    @property
    def queued(self) -> int:
        """Requests waiting for admission."""
        return len(self.waiting)

    def live_ids(self) -> set[int]:
        """The ids of the requests running or waiting."""
        return {r.request.id for r in self.rows} | {r.id for r in self.waiting}

    def _cancelled(self) -> set[int]:
        """The ids of the cancelled requests a step drops, read once at its start (a request
        cancelled from another thread during the step leaves at the next)."""
        return {r.request.id for r in self.rows if r.request.cancelled} | {r.id for r in self.waiting if r.cancelled}

    @property
    def has_work(self) -> bool:
        return bool(self.rows or self.waiting)

    @property
    def active(self) -> int:
        return len(self.rows)

    def run(self) -> Iterator[list]:
        """Step until every request is done, yielding each step's events."""
        while self.has_work:
            yield self.step()
        self._finish()

    def _finish(self) -> None:
        """After the last step: store what the last step left to store in prefix caches."""
        self._store_prompts()

    def _limit(self, request: Request) -> int:
        limit = request.params.vocab_limit or self.vocab_limit
        return min(limit, self.n_tokens) if limit is not None else self.n_tokens

    def _stop_ids(self, request: Request) -> tuple[int, ...]:
        ids = request.params.stop_token_ids
        return self.eos if ids is None else ids

    # ------------------------------------------------------------------ the loop
    @torch.inference_mode()
    def step(self) -> list:
        events: list = []
        self._store_prompts()
        self._interrupt[0] = 0  # cleared before the queue and the cancels are read: those from now end a burst
        cancelled = self._cancelled()
        self._keep([i for i, r in enumerate(self.rows) if r.request.id not in cancelled])
        if self.rows and not self.waiting:
            picks = self._burst()
            if picks is not None and self._step_burst(picks, events):
                return events
        if self.rows:  # every running row's last token was chosen last step and is run now, not then:
            # the previous step's events went out before this forward pass, which cancelled rows skip
            self.cache.reserve(1)
            self.logits = self.backend.decode([r.tokens[-1] for r in self.rows], self.positions, self.cache)
            if self.positions.device.type == "cpu":  # the scheduler's own tensor (made at admission, cat or indexed since)
                self.positions.numpy()[:] += 1
            else:
                self.positions += 1
        while self.waiting and (self.max_rows is None or not self.rows
                                or len(self.rows) + self.waiting[0].rows <= self.max_rows):
            request = self.waiting.popleft()
            if request.id not in cancelled:
                try:
                    self._admit(request, events)
                except Exception as e:  # this request's prefill, not the batch's (which it had not joined)
                    self._fail(request, e, events)
        if not self.rows:
            return events
        chosen, scores, failed = self._select(events)
        self.steps += 1
        keep: list[int] = []
        late: set[int] = set()  # requests whose text handling raised in this step
        for i, (row, token) in enumerate(zip(self.rows, chosen)):
            if row.request.id in failed or row.request.id in late:
                continue
            reason = self._report(row, token, events, *scores.get(i, (None, None)))
            if reason is _FAILED:
                late.add(row.request.id)
            elif reason is None:
                keep.append(i)
            else:
                row.request.finished += 1
                self._store_row(i)
        if late:  # the failed requests' tokens of this step are not reported, their rows leave
            events[:] = [e for e in events if not (isinstance(e, TokenEvent) and e.request.id in late)]
            keep = [i for i in keep if self.rows[i].request.id not in late]
        self._keep(keep)  # self.logits are now those before each row's last token: the next step runs it
        return events

    def _report(self, row: _Row, token: int, events: list, lp: float | None = None, top=None):
        """Append `token` to `row` and its TokenEvent to `events`: the finish reason ("stop",
        "length") or None; _FAILED when its text handling raised (the request failed, with an
        ErrorEvent; no TokenEvent)."""
        row.tokens.append(token)
        p = row.request.params
        offset, fired = None, False
        try:
            if token in self._stop_ids(row.request):
                reason = "stop"
                offset = len(row.text.decoder.text) if row.text is not None else None
            else:
                if row.text is not None:
                    fired, offset = row.text.add(token, check=row.generated > p.min_new_tokens)
                reason = "stop" if fired else "length" if row.generated >= p.max_new_tokens else None
            text = row.text.delta(final=reason is not None) if row.text is not None else ""
        except Exception as e:  # e.g. a tokenizer that cannot decode what the model produced
            self._fail(row.request, e, events)
            return _FAILED
        events.append(TokenEvent(row.request, row.index, token, text, offset, lp, top, reason))
        return reason

    # ------------------------------------------------------------------ bursts
    def _burst(self) -> Picks | None:
        """The native picks of the next steps, when they can run in one call: one row running and none
        waiting, no repetition penalty or logprobs, the native step available. A sampled row's picks
        carry its next uniform draws (those of picks that do not run go back: `_step_burst`)."""
        if self.burst < 2 or len(self.rows) != 1 or self.waiting or not self.backend.can_pick:
            return None
        row = self.rows[0]
        p = row.request.params
        if p.repetition_penalty != 1.0 or p.logprobs is not None or self.positions.device.type != "cpu":
            return None
        V, ban_stop = self.logits.shape[1], max(0, p.min_new_tokens - row.generated)
        stop = self._stop_ids(row.request)
        if any(not 0 <= t < V for t in p.suppress_tokens) or (ban_stop and any(not 0 <= t < V for t in stop)):
            return None  # the Python path's error
        timed = 2 if self._token_seconds is None else int(self.BURST_SECONDS / max(self._token_seconds, 1e-6))
        count = min(self.burst, max(1, timed), p.max_new_tokens - row.generated,
                    self.n_positions - int(self.positions.numpy()[0]))
        if count < 1:
            return None
        picks = Picks(count, self._limit(row.request), tuple(p.suppress_tokens), tuple(t for t in stop if 0 <= t < V),
                      ban_stop)
        if p.greedy:
            return picks
        return replace(picks, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, uniforms=tuple(row.uniforms(count)))

    def _step_burst(self, picks: Picks, events: list) -> bool:
        """Up to picks.count steps of the one running row in one native call (Backend.decode_picks),
        then their events, as those steps would have reported them; False where the call does not
        apply (nothing done). Picks past the row's end (a stop string in the text) are dropped, with
        their cache columns; the uniforms of sampled picks that did not run go back to the row."""
        self.cache.reserve(picks.count)
        row = self.rows[0]
        position = int(self.positions.numpy()[0])
        began = time.perf_counter()
        ran = self.backend.decode_picks(row.tokens[-1], position, self.cache, picks, self._interrupt)
        if ran is None:
            row.unused(list(picks.uniforms))
            return False
        chosen, self.logits = ran
        row.unused(list(picks.uniforms[len(chosen):]))
        self._token_seconds = (time.perf_counter() - began) / len(chosen)
        self.positions.numpy()[:] += len(chosen)
        self.steps += 1
        for j, token in enumerate(chosen):
            self.seen.numpy()[0, token] = True
            reason = self._report(row, token, events)
            if reason is None:
                continue
            if reason is not _FAILED:
                late = len(chosen) - 1 - j  # picks after the end: their passes' columns go
                if late:
                    self.cache.truncate(self.cache.length - late)
                    self.positions.numpy()[:] -= late
                row.request.finished += 1
                self._store_row(0)
            self._keep([])
            break
        return True

    def _fail(self, request: Request, error: Exception, events: list, status: int = 500) -> None:
        logger.warning("request %d failed: %s: %s", request.id, type(error).__name__, error)
        request.error = f"{error}" if status == 400 else f"{type(error).__name__}: {error}"
        events.append(ErrorEvent(request, request.error, status))

    def abort(self) -> list[Request]:
        """Drop every running and waiting request (after a failed forward pass); the requests dropped."""
        dropped = list({r.request.id: r.request for r in self.rows}.values()) + list(self.waiting)
        self.waiting.clear()
        self._keep([])
        return dropped

    def _keep(self, keep: list[int]) -> None:
        """Keep rows `keep` (in order) of the batch and its tensors."""
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self.logits, self.positions, self.seen = [], None, None, None, None
            return
        idx = torch.tensor(keep, device=self.device)
        self.rows = [self.rows[i] for i in keep]
        self.cache.keep(idx)
        self.logits, self.positions, self.seen = self.logits[idx], self.positions[idx], self.seen[idx]

    def _pool(self, request: Request) -> PrefixCache | None:
        return request.prefix_cache if request.prefix_cache is not None else self.prefix_cache

    def _admit(self, request: Request, events: list) -> None:
        """Prefill the request's prompts and join its rows to the batch: in one left-padded batch, or
        prompt by prompt after the stored prefix each shares with the prefix cache."""
        p = request.params
        ids, mask = request.input_ids.to(self.device), request.mask.to(self.device)
        P, T = ids.shape
        extra = p.max_new_tokens if not self.rows else 0  # the first rows' capacity: the whole run
        prompts = [ids[i][mask[i].bool()].tolist() for i in range(P)]
        pool = self._pool(request) if not p.prompt_logprobs else None  # prompt logprobs need every position's hidden state
        matches = [pool.lookup(x, len(x) - 1) for x in prompts] if pool is not None and request.kv is None else []
        if request.kv is not None:
            cache, logits = self._prefill_kv(request, prompts[0], extra)
        elif any(k for _, k in matches):
            cache, logits = self._prefill_each(request, prompts, matches, extra)
        else:
            cache = KVCache.for_model(self.model, P, T + extra, empty=True)  # the prefill writes all T columns
            attn = cache.attend(mask)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits, hidden = self.backend.prefill(ids, cache, attn, positions, all_positions=p.prompt_logprobs)
            if hidden is not None:
                for i in range(P):
                    events.append(self._prompt_logprobs(request, i, hidden[i], ids[i], mask[i]))
            if pool is not None:
                for i, x in enumerate(prompts):
                    self._to_store.append((pool, x, cache.key[:, i, :, T - len(x):T], cache.value[:, i, :, T - len(x):T]))
        seen = torch.zeros(P, logits.shape[1], dtype=torch.int32, device=self.device).scatter_add_(1, ids, mask.int()) > 0
        n = p.n
        cache.replicate(n)
        logits, seen = logits.repeat_interleave(n, 0), seen.repeat_interleave(n, 0)
        positions = torch.tensor(request.prompt_tokens, device=self.device).repeat_interleave(n, 0)
        rows = []
        for i in range(P * n):
            gen = None
            if not p.greedy:
                gen = torch.Generator().manual_seed(sample_seed(request.seed, i))
            text = RowText(self.tokenizer, p.stop, p.truncate_before_pattern) if self.tokenizer is not None else None
            rows.append(_Row(request, i, gen, text, prompts[i // n]))
        if not self.rows:
            self.cache, self.logits, self.positions, self.seen, self.rows = cache, logits, positions, seen, rows
            return
        self.cache.extend(cache)
        self.logits = torch.cat([self.logits, logits])
        self.positions = torch.cat([self.positions, positions])
        self.seen = torch.cat([self.seen, seen])
        self.rows += rows

    def _prefill_each(self, request: Request, prompts: list[list[int]], matches: list, extra: int) -> tuple[KVCache, torch.Tensor]:
        """Prefill each prompt after its stored prefix (k positions copied from the pool); the
        prompts' caches right-aligned in one (P rows) and their last logits (P, V)."""
        whole: KVCache | None = None
        logits = []
        for i, (x, (entry, k)) in enumerate(zip(prompts, matches)):
            cache = KVCache.for_model(self.model, 1, len(x) + extra, empty=True)  # the copy and the prefill fill it
            if k:
                cache.key[:, 0, :, :k] = entry.key[:, :, :k]
                cache.value[:, 0, :, :k] = entry.value[:, :, :k]
                cache.mask[:, :k] = True
                cache.length = k
            logits.append(self._prefill_after(request, i, x, cache))
            if whole is None:
                whole = cache
            else:
                whole.extend(cache)
        return whole, torch.cat(logits)

    def _prefill_kv(self, request: Request, x: list[int], extra: int) -> tuple[KVCache, torch.Tensor]:
        """Prefill the prompt after the positions its own cache holds, in that cache (grown by half
        when it has no room); with n > 1 samples the rows are a copy, so the cache keeps the prompt."""
        cache = request.kv
        cache.reserve(len(x) - cache.length + extra)
        logits = self._prefill_after(request, 0, x, cache)
        if request.params.n > 1:
            request.kv = None  # the copies are the batch's; the session keeps its cache as it is now
            return cache.alias(), logits
        return cache, logits

    def _prefill_after(self, request: Request, i: int, x: list[int], cache: KVCache) -> torch.Tensor:
        """Run prompt i (ids `x`) after the cache.length positions its one-row `cache` holds; its
        last logits (1, V). The prompt's KV is stored in the request's pool (at the next step)."""
        k = cache.length
        attn = cache.attend(len(x) - k)
        positions = torch.arange(k, len(x), device=self.device)[None]
        logits, _ = self.backend.prefill(torch.tensor([x[k:]], device=self.device), cache, attn, positions)
        request.cached_tokens[i] = k
        pool = self._pool(request)
        if pool is not None:
            self._to_store.append((pool, x, cache.key[:, 0, :, :len(x)], cache.value[:, 0, :, :len(x)]))
        return logits

    def _store_prompts(self) -> None:
        for pool, ids, key, value in self._to_store:
            pool.insert(ids, key, value)
        self._to_store.clear()

    def _store_row(self, i: int) -> None:
        """Keep finished row i's KV (its prompt and every generated token but the last, whose KV was
        never computed) in its request's prefix cache, if any; hand a request with its own cache
        the batch's cache when this row is alone in it."""
        row = self.rows[i]
        ids = row.prompt + row.tokens[:-1]
        if row.request.kv is not None:
            if len(self.rows) == 1 and self.cache.suffix_start(0) == 0:
                row.request.kv, row.request.kv_ids = self.cache, ids
            else:  # it shared the batch (a server): the request's cache is not this row's alone
                row.request.kv = None
        pool = self._pool(row.request)
        if pool is None:
            return
        start = self.cache.suffix_start(i)
        if start is None or self.cache.length - start != len(ids):
            return  # a mask with holes: nothing that one prefix can describe
        end = self.cache.length
        pool.insert(ids, self.cache.key[:, i, :, start:end], self.cache.value[:, i, :, start:end])

    def _prompt_logprobs(self, request: Request, i: int, hidden: torch.Tensor, ids: torch.Tensor,
                         mask: torch.Tensor) -> PromptLogprobs:
        k = request.params.logprobs or 0
        start = int((mask == 0).sum())  # left padding
        logps: list[float | None] = [None]
        tops: list = [None]
        n = ids.shape[0]
        for a in range(start, n - 1, 256):  # chunks keep the (T, V) logits small
            b = min(a + 256, n - 1)
            picked, top = token_logprobs(self.backend.head(hidden[a:b]), ids[a + 1:b + 1], k)
            logps += picked.tolist()
            tops += [list(zip(t, v)) for t, v in zip(top[0].tolist(), top[1].tolist())] if top is not None else [None] * (b - a)
        return PromptLogprobs(request, i, logps, tops)

    def _select(self, events: list) -> tuple[list[int], dict[int, tuple], set[int]]:
        """The next token of every row, the logprobs of rows that asked, and the ids of requests
        that failed (with an ErrorEvent each)."""
        raw = self.logits  # the engine's own tensor: the limit is applied in place
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(self.rows):
            groups.setdefault(r.request.id, []).append(i)
        whole = len(groups) == 1
        # numpy's indexing on CPU: right after a step's weight stream (caches evicted) a torch op costs
        # ~10-90 us, numpy's a few
        host = raw.numpy() if raw.device.type == "cpu" and raw.dtype == torch.float32 else None
        for idx in groups.values():  # ids the tokenizer cannot decode are never produced nor scored
            limit = self._limit(self.rows[idx[0]].request)
            if limit < raw.shape[1]:
                if whole and host is not None:
                    host[:, limit:] = NEG_INF
                elif whole:
                    raw[:, limit:] = NEG_INF
                else:
                    raw[torch.tensor(idx, device=self.device)[:, None], torch.arange(limit, raw.shape[1], device=self.device)] = NEG_INF
        processed = raw
        penalties = [r.request.params.repetition_penalty for r in self.rows]
        if any(x != 1.0 for x in penalties):
            penalty = torch.tensor(penalties, device=self.device, dtype=raw.dtype)[:, None]
            processed = apply_repetition_penalty(raw, self.seen, penalty)
        chosen = torch.empty(len(self.rows), dtype=torch.long, device=self.device)
        failed: set[int] = set()
        wants_logprobs = any(r.request.params.logprobs is not None for r in self.rows)
        for rid, idx in groups.items():
            first = self.rows[idx[0]]
            p = first.request.params
            banned = list(p.suppress_tokens)
            if first.generated < p.min_new_tokens:
                banned += list(self._stop_ids(first.request))
            sub = processed if whole else processed[idx]
            if banned and sub is raw and host is not None and not wants_logprobs:
                host[:, banned] = NEG_INF  # raw is only read again for logprobs: banned in place
            elif banned:
                sub = sub.index_fill(1, torch.tensor(banned, device=self.device), NEG_INF)
            try:
                if p.greedy:
                    picked = greedy(sub)
                else:
                    u = torch.tensor([self.rows[i].uniforms(1)[0] for i in idx], dtype=torch.float32, device=self.device)
                    picked = sample(sub, p.temperature, p.top_k, p.top_p, u)
            except (ValueError, RuntimeError) as e:  # this request's distribution, not the batch's
                self._fail(first.request, e, events, status=400)
                failed.add(rid)
                picked = torch.zeros(len(idx), dtype=torch.long, device=self.device)
            if whole:
                chosen = picked
            else:
                chosen[idx] = picked
        if self.seen.device.type == "cpu":
            self.seen.numpy()[np.arange(len(self.rows)), chosen.numpy()] = True
        else:
            self.seen[torch.arange(len(self.rows), device=self.device), chosen] = True
        scores: dict[int, tuple] = {}
        want = [i for i, r in enumerate(self.rows) if r.request.params.logprobs is not None and r.request.id not in failed]
        if want:
            k = max(self.rows[i].request.params.logprobs for i in want)
            picked, top = token_logprobs(raw[want], chosen[want], k)
            picked = picked.tolist()
            top_ids, top_vals = (top[0].tolist(), top[1].tolist()) if top is not None else (None, None)
            for j, i in enumerate(want):
                kk = self.rows[i].request.params.logprobs
                scores[i] = (picked[j], list(zip(top_ids[j][:kk], top_vals[j][:kk])) if kk else None)
        return chosen.tolist(), scores, failed
