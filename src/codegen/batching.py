"""Continuous batching: many independent requests share one model, each joining the running batch
at the next decode step and leaving it when done.

A request is prefilled alone, then its rows (one per sample) are merged into the batch's KVCache,
right-aligned at the current column (shorter histories are left-padded, longer ones shift the batch
right). Every row keeps its own positions and attention mask, so rows of different lengths and
ages decode together; finished or cancelled rows are dropped from the batch. When the cache is full,
columns that no row uses are dropped before it grows. The loop runs on its own thread; results go
to a per-request callback (the server turns them into asyncio events).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .cache import KVCache
from .complete import RowText
from .fused import FusedDecoder, suffix_start
from .sampling import SamplingParams, ban_tokens, select, token_logprobs

logger = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The batcher's waiting queue is at its bound; try again later."""


@dataclass
class BatchRequest:
    prompt_ids: list[int]
    max_new_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None  # None: off; k >= 0: the chosen token's and the k most likely
    prompt_logprobs: bool = False  # also score the prompt tokens (OpenAI's echo + logprobs)


@dataclass
class Update:
    """One generated token of sequence `index` of a request; `text` is new, stop-safe text."""

    index: int
    token: int
    text: str
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None


@dataclass
class PromptScores:
    """Log-probabilities of the prompt tokens (the first has none), sent before any Update."""

    logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]] | None]


class Ticket:
    def __init__(self, request: BatchRequest, callback: Callable[[object], None]) -> None:
        self.request, self.callback = request, callback
        self.cancelled = False

    def cancel(self) -> None:
        """Drop this request's rows at the next step (e.g. its client disconnected)."""
        self.cancelled = True


@dataclass
class _Row:
    ticket: Ticket
    index: int
    text: RowText
    params: SamplingParams
    generator: torch.Generator | None
    generated: int = 0
    finished: bool = False


@dataclass
class _Batch:
    rows: list[_Row] = field(default_factory=list)
    cache: KVCache | None = None
    mask: torch.Tensor | None = None  # (B, capacity) 1 where a row has a key
    pos: torch.Tensor | None = None  # (B,) position of each row's next token
    logits: torch.Tensor | None = None  # (B, V) for each row's next token


class ContinuousBatcher:
    def __init__(self, model, tokenizer, max_batch: int = 16, max_queue: int = 64) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
        self.vocab_limit = len(tokenizer)
        self.device = model.lm_head.weight.device
        self._pending: collections.deque[Ticket] = collections.deque()
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self.batch = _Batch()
        self.steps = 0
        self.fused = FusedDecoder.create(model)  # a batch of one row steps in one native call

    # ------------------------------------------------------------------ public
    def validate(self, request: BatchRequest) -> None:
        n_pos = self.model.config.n_positions
        if not request.prompt_ids:
            raise ValueError("the prompt is empty")
        if request.n > self.max_batch:
            raise ValueError(f"n = {request.n} exceeds the server's batch size {self.max_batch}")
        if len(request.prompt_ids) + request.max_new_tokens > n_pos:
            raise ValueError(
                f"the prompt has {len(request.prompt_ids)} tokens; with max_tokens {request.max_new_tokens} it exceeds "
                f"the context window of {n_pos} tokens"
            )
        if any(not 0 <= t < self.vocab_limit for t in request.prompt_ids):
            raise ValueError(f"prompt token ids must lie in [0, {self.vocab_limit})")

    def submit(self, request: BatchRequest, callback: Callable[[object], None]) -> Ticket:
        self.validate(request)
        ticket = Ticket(request, callback)
        with self._cond:
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"the queue holds {self.max_queue} waiting requests")
            self._pending.append(ticket)
            self._cond.notify()
        return ticket

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> int:
        return len(self.batch.rows)

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="codegen-batcher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and not self._pending and not self.batch.rows:
                    self._cond.wait()
                if not self._running:
                    return
                admit = []
                while self._pending and self.active + sum(t.request.n for t in admit) + self._pending[0].request.n <= self.max_batch:
                    admit.append(self._pending.popleft())
            try:
                with torch.inference_mode():
                    for ticket in admit:
                        if not ticket.cancelled:
                            self._admit(ticket)
                    if self.batch.rows:
                        self._step()
            except Exception as e:  # never let one bad step kill the server: fail the requests in flight
                logger.exception("generation step failed")
                for row in self.batch.rows:
                    if not row.finished:
                        row.finished = True
                        row.ticket.callback(e)
                self.batch = _Batch()

    def _forward(self, ids, cache, mask, pos) -> torch.Tensor:
        return self.model.transformer(input_ids=ids, past_key_values=cache, attention_mask=mask, position_ids=pos).last_hidden_state

    def _admit(self, ticket: Ticket) -> None:
        req = ticket.request
        cfg = self.model.config
        P = len(req.prompt_ids)
        ids = torch.tensor([req.prompt_ids], device=self.device)
        cache = KVCache.for_model(self.model, 1, P)
        h = self._forward(ids, cache, None, None)
        if req.prompt_logprobs:
            ticket.callback(self._prompt_scores(h[0], req))
        logits = self.model.lm_head(h[:, -1]).float()

        greedy = req.temperature == 0
        params = SamplingParams(do_sample=not greedy, temperature=1.0 if greedy else req.temperature,
                                top_k=None if greedy else (req.top_k or None), top_p=1.0 if greedy else req.top_p)
        new_rows = []
        for i in range(req.n):
            gen = None
            if req.seed is not None:
                gen = torch.Generator(device=self.device).manual_seed(req.seed + i)
            new_rows.append(_Row(ticket, i, RowText(self.tokenizer, req.stop), params, gen))

        b = self.batch
        n = req.n
        if not b.rows:
            cap = P + min(req.max_new_tokens, 64)
            b.cache = KVCache(cfg.n_layer, n, cfg.n_head, cap, cfg.head_dim, dtype=cache.key.dtype, device=self.device)
            b.cache.key[:, :, :, :P] = cache.key
            b.cache.value[:, :, :, :P] = cache.value
            b.cache.length = P
            b.mask = torch.zeros(n, cap, dtype=torch.long, device=self.device)
            b.mask[:, :P] = 1
            b.pos = torch.full((n,), P, dtype=torch.long, device=self.device)
            b.logits = logits.expand(n, -1).clone()
            b.rows = new_rows
            return
        cur = b.cache.length
        if P > cur:  # shift the batch right so that the new rows fit, right-aligned
            self._resize(shift=P - cur, capacity=max(b.cache.capacity + P - cur, P + 1))
            cur = P
        B = len(b.rows)
        old = b.cache
        grown = KVCache(cfg.n_layer, B + n, cfg.n_head, old.capacity, cfg.head_dim, dtype=old.key.dtype, device=self.device)
        grown.key[:, :B], grown.value[:, :B] = old.key, old.value
        grown.key[:, B:, :, cur - P:cur] = cache.key
        grown.value[:, B:, :, cur - P:cur] = cache.value
        grown.length = cur
        mask = torch.zeros(n, old.capacity, dtype=torch.long, device=self.device)
        mask[:, cur - P:cur] = 1
        b.cache = grown
        b.mask = torch.cat([b.mask, mask])
        b.pos = torch.cat([b.pos, torch.full((n,), P, dtype=torch.long, device=self.device)])
        b.logits = torch.cat([b.logits, logits.expand(n, -1)])
        b.rows += new_rows

    def _prompt_scores(self, hidden: torch.Tensor, req: BatchRequest) -> PromptScores:
        k = req.logprobs or 0
        logps: list[float | None] = [None]
        tops: list = [None]
        ids = torch.tensor(req.prompt_ids, device=self.device)
        for start in range(0, len(req.prompt_ids) - 1, 256):  # chunks keep the (T, V) logits small
            end = min(start + 256, len(req.prompt_ids) - 1)
            logits = self.model.lm_head(hidden[start:end]).float()
            picked, top = token_logprobs(logits, ids[start + 1:end + 1], k)
            logps += picked.tolist()
            tops += [list(zip(i, v)) for i, v in zip(top[0].tolist(), top[1].tolist())] if top is not None else [None] * (end - start)
        return PromptScores(logps, tops)

    def _resize(self, shift: int = 0, drop: int = 0, capacity: int | None = None) -> None:
        """Move every row's keys right by `shift` or left by `drop` columns, into `capacity` columns."""
        b = self.batch
        old, cur = b.cache, b.cache.length
        cap = capacity or old.capacity
        new_len = cur + shift - drop
        cache = KVCache(old.key.shape[0], old.key.shape[1], old.key.shape[2], cap, old.key.shape[4],
                        dtype=old.key.dtype, device=self.device)
        cache.key[:, :, :, shift:new_len] = old.key[:, :, :, drop:cur]
        cache.value[:, :, :, shift:new_len] = old.value[:, :, :, drop:cur]
        cache.length = new_len
        mask = torch.zeros(b.mask.shape[0], cap, dtype=torch.long, device=self.device)
        mask[:, shift:new_len] = b.mask[:, drop:cur]
        b.cache, b.mask = cache, mask

    def _ensure_room(self) -> None:
        b = self.batch
        cur = b.cache.length
        if cur < b.cache.capacity:
            return
        used = b.mask[:, :cur].any(dim=0).nonzero()
        first = int(used[0]) if len(used) else cur
        if first > cur // 4:  # enough dead columns on the left: drop them
            self._resize(drop=first)
        else:
            self._resize(drop=first, capacity=min(int(b.cache.capacity * 1.5) + 16, 2 * self.model.config.n_positions))

    def _step(self) -> None:
        b = self.batch
        logits = ban_tokens(b.logits, None, self.vocab_limit)
        chosen = torch.empty(len(b.rows), dtype=torch.long, device=self.device)
        greedy = [i for i, r in enumerate(b.rows) if not r.params.do_sample]
        if greedy:
            chosen[greedy] = logits[greedy].argmax(dim=-1)
        for i, r in enumerate(b.rows):
            if r.params.do_sample:
                chosen[i] = select(logits[i:i + 1], r.params, r.generator)[0]
        want = [i for i, r in enumerate(b.rows) if r.ticket.request.logprobs is not None]
        scores = {}
        if want:
            k = max(b.rows[i].ticket.request.logprobs for i in want)
            picked, top = token_logprobs(b.logits[want], chosen[want], k)
            for j, i in enumerate(want):
                kk = b.rows[i].ticket.request.logprobs
                tops = list(zip(top[0][j, :kk].tolist(), top[1][j, :kk].tolist())) if kk else None
                scores[i] = (float(picked[j]), tops)

        keep = []
        for i, (r, tok) in enumerate(zip(b.rows, chosen.tolist())):
            if r.ticket.cancelled:
                continue
            r.generated += 1
            reason = None
            if tok == self.eos or r.text.add(tok):
                reason = "stop"
            elif r.generated >= r.ticket.request.max_new_tokens:
                reason = "length"
            lp, top = scores.get(i, (None, None))
            r.ticket.callback(Update(r.index, tok, r.text.delta(final=reason is not None), lp, top, reason))
            if reason is None:
                keep.append(i)
            else:
                r.finished = True
        self.steps += 1
        if len(keep) < len(b.rows):
            if not keep:
                self.batch = _Batch()
                return
            idx = torch.tensor(keep, device=self.device)
            b.cache.reorder(idx)
            b.mask, b.pos, chosen = b.mask[idx], b.pos[idx], chosen[idx]
            b.rows = [b.rows[i] for i in keep]
        self._ensure_room()
        cur = b.cache.length
        b.mask[:, cur] = 1
        start = suffix_start(b.mask[0, :cur + 1]) if self.fused is not None and len(b.rows) == 1 else None
        if start is not None:
            b.logits = self.fused(int(chosen[0]), int(b.pos[0]), b.cache, start)
        else:
            h = self._forward(chosen[:, None], b.cache, b.mask[:, :cur + 1], b.pos[:, None])
            b.logits = self.model.lm_head(h[:, -1]).float()
        b.pos = b.pos + 1
