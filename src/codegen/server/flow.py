"""How a route talks to the batcher: queue an engine request, await its events, report usage."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Request

from ..engine.batcher import ContinuousBatcher, QueueFull
from ..engine.params import SamplingParams
from ..engine.request import ErrorEvent
from ..engine.request import Request as EngineRequest
from .schemas import APIError


def submit(batcher: ContinuousBatcher, prompts: list[list[int]], params: SamplingParams) -> tuple[EngineRequest, asyncio.Queue]:
    """Queue an engine request; its events arrive on the returned asyncio queue. APIError 429 when
    the batcher's queue is full, 400 for what the engine refuses (naming the parameter)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    request = EngineRequest(prompts, params)
    try:
        batcher.submit(request, lambda item: loop.call_soon_threadsafe(queue.put_nowait, item))
    except QueueFull as e:
        raise APIError(429, f"server busy: {e}", kind="rate_limit_error", code="queue_full") from None
    except ValueError as e:  # the context window, an empty prompt, ids outside the vocabulary
        raise APIError(400, str(e), "max_tokens" if "max_new_tokens" in str(e) else "prompt") from None
    return request, queue


async def next_event(queue: asyncio.Queue, request: Request):
    """The next engine event; None once the client has gone away (checked every 0.25 s, also while
    events keep coming)."""
    state = request.scope.setdefault("codegen", {"checked": time.monotonic()})
    while True:
        if time.monotonic() - state["checked"] >= 0.25:
            state["checked"] = time.monotonic()
            if await request.is_disconnected():
                return None
        try:
            return queue.get_nowait() if not queue.empty() else await asyncio.wait_for(queue.get(), timeout=0.25)
        except asyncio.TimeoutError:
            continue


def usage(request: EngineRequest, completion_tokens: int) -> dict[str, Any]:
    """OpenAI's usage object; cached_tokens: prompt positions reused from the prefix cache."""
    prompt_tokens = sum(request.prompt_tokens)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": sum(request.cached_tokens)}}


def failure(item) -> APIError | None:
    """The APIError for an engine event that reports a failure (the batcher's exception, a request's
    ErrorEvent), or None."""
    if isinstance(item, Exception):
        return APIError(500, f"generation failed: {item}", kind="server_error")
    if isinstance(item, ErrorEvent):
        return APIError(item.status, f"generation failed: {item.message}",
                        kind="invalid_request_error" if item.status < 500 else "server_error")
    return None
