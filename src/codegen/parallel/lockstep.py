"""Keeping a tensor-parallel group's ranks on the same decode steps.

Every rank runs the engine's own scheduler over its slice of the network: caches, prefix caches,
batching and sampling are the same code on every rank, so each forward pass (and its collectives)
happens everywhere with the same shapes. Only the group's first rank (the driver) hears from the
user; before each of its steps it sends the group one `Command`: the requests added since the last
step (prompt ids after validation, parameters, the seed it drew), the ids cancelled (read once, so
that a cancel arriving mid-step counts on every rank at the same step), and a digest of its last
step's tokens. Followers (`follow`) apply it to their mirror scheduler and step too. The logits are
gathered whole on every rank and the rows' random streams are seeded alike, so every rank picks
the same tokens; a follower whose tokens differ from the driver's stops with an error naming the
step (never silently wrong). A driver that goes away ends its followers' waits with an error.

Not mirrored: a session's own KV cache (`Request.kv`, codegen chat's kept cache): refused.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..engine.prefix import PrefixCache
from ..engine.request import ErrorEvent, Request, TokenEvent
from ..engine.scheduler import Scheduler
from . import RankError
from .group import Layout

logger = logging.getLogger(__name__)

KEEPALIVE_S = 300.0  # an idle driver tells its followers it is there this often (their waits time out)
_sids = itertools.count(1)


@dataclass
class RequestSpec:
    rid: int
    input_ids: torch.Tensor
    mask: torch.Tensor
    params: object  # SamplingParams
    seed: int | None
    pool: tuple[int, int, int] | None  # (number, max_bytes, min_tokens) of the request's own prefix cache


@dataclass
class Command:
    sid: int = 0  # the driver's scheduler (0: none, a keep-alive or the stop)
    make: dict | None = None  # the scheduler's settings, on its first command
    adds: list[RequestSpec] = field(default_factory=list)
    cancels: list[int] = field(default_factory=list)
    digest: str = ""  # of the driver's previous step of this scheduler
    abort: bool = False
    finish: bool = False  # the scheduler ran out of work (run() ended)
    drops: list[int] = field(default_factory=list)  # schedulers the driver forgot
    pool_drops: list[int] = field(default_factory=list)  # request prefix caches the driver forgot
    stop: bool = False


def digest(events: list) -> str:
    """What a step chose: (request, output, token, finished) of its token events, and its failures."""
    h = hashlib.blake2b(digest_size=8)
    for e in events:
        if isinstance(e, TokenEvent):
            h.update(f"{e.request.id}:{e.index}:{e.token}:{e.finish_reason};".encode())
        elif isinstance(e, ErrorEvent):
            h.update(f"{e.request.id}:error;".encode())
    return h.hexdigest()


class Link:
    """A group's command channel, on every rank (the driver sends, followers receive)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.lock = threading.RLock()  # one command and its step at a time, whatever the thread
        self._drops: list[int] = []
        self._pool_drops: list[int] = []
        self._pools: dict[int, int] = {}  # id(PrefixCache) -> its number
        self._pool_ids = itertools.count(1)
        self.last_sent = time.monotonic()
        self.closed = False

    def send(self, command: Command) -> None:
        with self.lock:
            command.drops, self._drops = self._drops, []
            command.pool_drops, self._pool_drops = self._pool_drops, []
            dist.broadcast_object_list([command], src=self.layout.driver, group=self.layout.ctrl)
            self.last_sent = time.monotonic()

    def receive(self) -> Command:
        box = [None]
        try:
            dist.broadcast_object_list(box, src=self.layout.driver, group=self.layout.ctrl)
        except RuntimeError as e:
            raise RankError(f"lost the driver (rank {self.layout.driver}): {' '.join(str(e).split())[:300]}") from None
        return box[0]

    def forget(self, sid: int) -> None:
        self._drops.append(sid)

    def pool(self, cache: PrefixCache) -> tuple[int, int, int]:
        """A request prefix cache's number (followers keep one of theirs under it) and settings."""
        key = id(cache)
        if key not in self._pools:
            n = self._pools[key] = next(self._pool_ids)
            weakref.finalize(cache, self._forget_pool, key, n)
        return self._pools[key], cache.max_bytes, cache.min_tokens

    def _forget_pool(self, key: int, n: int) -> None:
        self._pools.pop(key, None)
        self._pool_drops.append(n)

    def keepalive(self) -> None:
        """Send a no-op when nothing was sent for KEEPALIVE_S (from a daemon thread of the driver)."""
        while not self.closed:
            time.sleep(min(KEEPALIVE_S / 4, 30.0))
            if not self.closed and time.monotonic() - self.last_sent > KEEPALIVE_S and self.lock.acquire(blocking=False):
                try:
                    if not self.closed:
                        self.send(Command())
                finally:
                    self.lock.release()

    def close(self) -> None:
        """The driver's last word: followers return from `follow`."""
        with self.lock:
            if not self.closed:
                self.send(Command(stop=True))
                self.closed = True


class LockstepScheduler(Scheduler):
    """The driver's scheduler: the engine's, sending each step's command to the followers first.
    Requests are queued in an inbox and join `waiting` at the next step's start (a request added
    from another thread during a step cannot be admitted by this rank alone)."""

    def __init__(self, model, tokenizer=None, *, max_rows: int | None = None, prefix_cache: PrefixCache | None = None) -> None:
        super().__init__(model, tokenizer, max_rows=max_rows, prefix_cache=prefix_cache)
        self.link: Link = model.lockstep_link
        self.sid = next(_sids)
        self._make = {"max_rows": max_rows, "prefix_cache": None if prefix_cache is None else prefix_cache.max_bytes,
                      "min_tokens": None if prefix_cache is None else prefix_cache.min_tokens}
        self._inbox: list[Request] = []
        self._inbox_lock = threading.Lock()
        self._snapshot: set[int] = set()
        self._digest = ""
        weakref.finalize(self, self.link.forget, self.sid)

    def add(self, request: Request) -> Request:
        if request.kv is not None:
            raise ValueError("a session's own KV cache (codegen chat) is not supported under tensor parallelism; "
                             "run the session without --tp, or send its turns as prompts (a prefix cache reuses them)")
        return super().add(request)

    def _queue(self, request: Request) -> None:
        with self._inbox_lock:
            self._inbox.append(request)

    @property
    def queued(self) -> int:
        return len(self.waiting) + len(self._inbox)

    @property
    def has_work(self) -> bool:
        return bool(self.rows or self.waiting or self._inbox)

    def live_ids(self) -> set[int]:
        with self._inbox_lock:
            return super().live_ids() | {r.id for r in self._inbox}

    def _cancelled(self) -> set[int]:
        return self._snapshot

    def _spec(self, r: Request) -> RequestSpec:
        pool = self.link.pool(r.prefix_cache) if r.prefix_cache is not None else None
        return RequestSpec(r.id, r.input_ids, r.mask, r.params, r.seed, pool)

    def _command(self, **kwargs) -> Command:
        make, self._make = self._make, None
        return Command(sid=self.sid, make=make, digest=self._digest, **kwargs)

    @torch.inference_mode()
    def step(self) -> list:
        with self.link.lock:
            with self._inbox_lock:
                new, self._inbox = self._inbox, []
            self.waiting.extend(new)
            self._snapshot = super()._cancelled()
            self.link.send(self._command(adds=[self._spec(r) for r in new], cancels=sorted(self._snapshot)))
            events = super().step()
            self._digest = digest(events)
            return events

    def abort(self) -> list[Request]:
        with self.link.lock:
            with self._inbox_lock:
                self.waiting.extend(self._inbox)
                self._inbox = []
            self.link.send(self._command(abort=True))
            return super().abort()

    def _finish(self) -> None:
        with self.link.lock:
            self.link.send(self._command(finish=True))
            super()._finish()


def attach(model, layout: Layout) -> Link:
    """Make `model` (this rank's slice) step in lockstep: on the driver, front ends get a
    LockstepScheduler from Scheduler.create; followers call `follow`."""
    link = Link(layout)
    model.lockstep_link = link
    if layout.is_driver:
        model.scheduler_class = LockstepScheduler
        threading.Thread(target=link.keepalive, name="codegen-keepalive", daemon=True).start()
    return link


@dataclass
class _Mirror:
    scheduler: Scheduler
    digest: str = ""  # of its last step, which the driver's next command must match


def follow(model, tokenizer, link: Link) -> None:
    """A follower's loop: mirror the driver's schedulers until it says stop. RankError when the
    driver goes away or this rank's tokens differ from the driver's."""
    mirrors: dict[int, _Mirror] = {}  # the driver's scheduler number -> this rank's copy
    pools: dict[int, PrefixCache] = {}
    rank = link.layout.rank
    while True:
        cmd = link.receive()
        if cmd.stop:
            return
        for n in cmd.pool_drops:
            pools.pop(n, None)
        for sid in cmd.drops:
            mirrors.pop(sid, None)
        if not cmd.sid:
            continue
        if cmd.make is not None:
            make = cmd.make
            pool = None if make["prefix_cache"] is None else PrefixCache(make["prefix_cache"], make["min_tokens"])
            mirrors[cmd.sid] = _Mirror(Scheduler(model, tokenizer, max_rows=make["max_rows"], prefix_cache=pool))
        mirror = mirrors.get(cmd.sid)
        if mirror is None:
            raise RankError(f"rank {rank}: a command for scheduler {cmd.sid}, which this rank does not hold")
        s = mirror.scheduler
        if cmd.digest != mirror.digest:
            raise RankError(f"rank {rank} diverged from its driver (rank {link.layout.driver}) at step {s.steps} of "
                            f"scheduler {cmd.sid}: the ranks chose different tokens")
        with torch.inference_mode():
            if cmd.abort:
                s.abort()
                continue
            if cmd.finish:
                s._finish()
                mirrors.pop(cmd.sid, None)
                continue
            for spec in cmd.adds:
                pool = None
                if spec.pool is not None:
                    n, size, min_tokens = spec.pool
                    pool = pools.get(n)
                    if pool is None:
                        pool = pools[n] = PrefixCache(size, min_tokens)
                r = Request(spec.input_ids, spec.params, attention_mask=spec.mask, prefix_cache=pool)
                r.id = spec.rid
                s.add(r)
                r.seed = spec.seed
            cancels = set(cmd.cancels)
            for r in [row.request for row in s.rows] + list(s.waiting):
                if r.id in cancels:
                    r.cancelled = True
            try:
                mirror.digest = digest(s.step())
            except Exception as e:  # as on the driver, whose abort (or divergence check) follows
                logger.warning("rank %d: a step failed: %s: %s", rank, type(e).__name__, e)
