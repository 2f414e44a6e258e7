"""The server's continuous batcher: the scheduler on its own thread, fed through a bounded queue.

`submit(request, callback)` validates the request (a ValueError names the problem) and queues it;
the thread steps the scheduler whenever there is work and hands each event to its request's
callback (the server turns them into asyncio events). A request joins the running batch at the next
step and leaves it when done or cancelled. A forward pass that raises fails the requests in flight
(their callbacks get the exception); the thread goes on with the next requests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .prefix import PrefixCache
from .request import ErrorEvent, PromptLogprobs, Request, TokenEvent
from .scheduler import Scheduler

logger = logging.getLogger(__name__)

Event = TokenEvent | PromptLogprobs | ErrorEvent


class QueueFull(RuntimeError):
    """The batcher's waiting queue is at its bound; try again later."""


class ContinuousBatcher:
    def __init__(self, model, tokenizer, max_batch: int = 16, max_queue: int = 64,
                 prefix_cache: PrefixCache | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.prefix_cache = prefix_cache  # used from the batcher's thread only; its stats may be read anywhere
        self.scheduler = Scheduler.create(model, tokenizer, max_rows=max_batch, prefix_cache=prefix_cache)
        self._callbacks: dict[int, Callable[[Event | Exception], None]] = {}
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None

    def submit(self, request: Request, callback: Callable[[Event | Exception], None]) -> Request:
        with self._cond:
            if self.scheduler.queued >= self.max_queue:
                raise QueueFull(f"the queue holds {self.max_queue} waiting requests")
            self._callbacks[request.id] = callback
            try:
                self.scheduler.add(request)
            except Exception:
                del self._callbacks[request.id]
                raise
            self._cond.notify()
        return request

    @property
    def queued(self) -> int:
        return self.scheduler.queued

    @property
    def active(self) -> int:
        return self.scheduler.active

    @property
    def steps(self) -> int:
        return self.scheduler.steps

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="codegen-batcher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread after its current step; requests still running or waiting get an error."""
        with self._cond:
            self._running = False
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._cond:
            dropped = self.scheduler.abort()
            callbacks = [self._callbacks.pop(r.id, None) for r in dropped]
        for callback in callbacks:
            if callback is not None:
                callback(RuntimeError("the server is shutting down"))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and not self.scheduler.has_work:
                    self._cond.wait()
                if not self._running:
                    return
            try:
                events = self.scheduler.step()
            except Exception as e:  # never let one bad step kill the server: fail the requests in flight
                logger.exception("generation step failed")
                with self._cond:
                    dropped = self.scheduler.abort()
                for request in dropped:
                    callback = self._callbacks.pop(request.id, None)
                    if callback is not None:
                        callback(e)
                continue
            for event in events:
                callback = self._callbacks.get(event.request.id)
                if callback is not None:
                    callback(event)
            for request in {e.request.id: e.request for e in events}.values():
                if request.done:
                    self._callbacks.pop(request.id, None)
            with self._cond:  # cancelled requests whose rows left the batch: forget their callbacks
                if len(self._callbacks) > self.scheduler.active + self.scheduler.queued:
                    live = self.scheduler.live_ids()
                    for rid in [rid for rid in self._callbacks if rid not in live]:
                        del self._callbacks[rid]
