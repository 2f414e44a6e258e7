"""`POST /v1/chat/completions`: OpenAI's chat API over the conversational paradigm.

Mapping (README, "Chat API"): a leading `system` (or `developer`) message becomes comment lines
before the paradigm's header (`# Import libraries.\\n\\nimport numpy as np\\n\\n`); each `user`
message is a turn, written as `# ` comment lines; each `assistant` message is the code written for
the turn before it; consecutive user messages form one turn. The last message must be the user's:
the reply is the code for it, cut by CodeGen's truncation rule (and the request's `stop`), at most
`max_tokens` (default 256, MTPB's turn). When the conversation does not fit the context window, its
oldest turns are left out of the prompt. Clients resend the whole conversation each time; the
server's prefix cache makes that cheap (`usage.prompt_tokens_details.cached_tokens`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..engine.batcher import ContinuousBatcher
from ..engine.params import SamplingParams
from ..engine.request import PromptLogprobs
from ..paradigm import HEADER, TRUNCATE, TURN_TOKENS, Conversation, Turn, comment
from .flow import failure, next_event, submit, usage
from .schemas import APIError, SamplingRequest


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, ...: accepted and ignored

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    def text(self, index: int) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"messages[{index}].content: only text parts are supported", "messages")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False


class ProgramRequest(BaseModel):
    messages: list[ChatMessage] = Field(min_length=1)


def conversation(messages: list[ChatMessage], pending: bool = True) -> tuple[Conversation, str]:
    """The conversation before the last user turn, and that turn's words; with `pending` False, the
    whole conversation (a last user turn without code has empty code) and ''."""
    header = HEADER
    turns: list[list[str]] = []  # [words, code]
    last_user = False
    for i, m in enumerate(messages):
        text = m.text(i)
        if m.role in ("system", "developer"):
            if i != 0:
                raise APIError(400, f"messages[{i}]: a system message may only come first", "messages")
            header = (comment(text) + "\n" if text.strip() else "") + HEADER
        elif m.role == "user":
            if last_user:
                turns[-1][0] += "\n" + text
            else:
                turns.append([text, ""])
            last_user = True
        else:
            if not turns or not last_user:
                raise APIError(400, f"messages[{i}]: an assistant message must follow a user message", "messages")
            turns[-1][1] = text
            last_user = False
    if not pending:
        return Conversation(header, [Turn(text, code) for text, code in turns]), ""
    if not last_user:
        raise APIError(400, "the last message must be the user's: the reply is the code for it", "messages")
    words = turns.pop()[0]
    talk = Conversation(header)
    for text, code in turns:
        talk.add(text, code)
    return talk, words


def add_chat_routes(app: FastAPI, batcher: ContinuousBatcher, model_name: str) -> None:
    tokenizer = batcher.tokenizer
    n_positions = batcher.model.config.n_positions

    def params(body: ChatRequest) -> SamplingParams:
        body.refuse_penalties()
        if body.logprobs:
            raise APIError(400, "logprobs are not supported on chat completions; /v1/completions has them", "logprobs")
        if body.n > batcher.max_batch:
            raise APIError(400, f"n must be <= {batcher.max_batch} (the server's --max-batch)", "n")
        max_tokens = body.max_completion_tokens or body.max_tokens or min(TURN_TOKENS, n_positions // 2)
        if max_tokens >= n_positions:
            raise APIError(400, f"max_tokens ({max_tokens}) must be below the model's context window of {n_positions} "
                                f"positions, which also hold the conversation", "max_tokens")
        try:
            return SamplingParams(max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                                  top_k=body.top_k, repetition_penalty=body.repetition_penalty, n=body.n,
                                  stop=tuple(body.stop or ()), truncate_before_pattern=TRUNCATE, seed=body.seed)
        except ValueError as e:
            name, _, rest = str(e).partition(" ")
            name = "max_tokens" if name == "max_new_tokens" else name
            raise APIError(400, f"{name} {rest}", name) from None

    def prompt(body: ChatRequest, max_tokens: int) -> list[int]:
        talk, words = conversation(body.messages)
        try:
            return talk.fit(tokenizer, words, n_positions, max_tokens)
        except ValueError as e:
            raise APIError(400, str(e), "messages") from None

    @app.post("/v1/chat/program")
    async def chat_program(body: ProgramRequest) -> dict[str, str]:
        """The conversation as a program (what /v1/run runs and the page downloads)."""
        return {"program": conversation(body.messages, pending=False)[0].program()}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        p = params(body)
        ids = await asyncio.to_thread(prompt, body, p.max_new_tokens)
        engine_request, queue = submit(batcher, [ids], p)
        rid, model, created = f"chatcmpl-{secrets.token_hex(12)}", body.model or model_name, int(time.time())

        def chunk(choices: list[dict], usage_: dict | None = None) -> str:
            data = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
            if usage_ is not None:
                data["usage"] = usage_
            return f"data: {json.dumps(data)}\n\n"

        async def events():
            """(index, text, finish_reason) per token; raises APIError for a failed request."""
            finished = 0
            while finished < body.n:
                item = await next_event(queue, request)
                if item is None:
                    return
                error = failure(item)
                if error is not None:
                    raise error
                if isinstance(item, PromptLogprobs):
                    continue
                finished += item.finish_reason is not None
                yield item

        if body.stream:
            async def stream():
                tokens = 0
                try:
                    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None} for i in range(body.n)])
                    async for e in events():
                        tokens += 1
                        if e.text or e.finish_reason:
                            yield chunk([{"index": e.index, "delta": {"content": e.text} if e.text else {},
                                          "logprobs": None, "finish_reason": e.finish_reason}])
                    if body.stream_options and body.stream_options.get("include_usage"):
                        yield chunk([], usage(engine_request, tokens))
                    yield "data: [DONE]\n\n"
                except APIError as e:
                    yield f"data: {json.dumps(e.body())}\n\n"
                finally:
                    engine_request.cancel()
            return StreamingResponse(stream(), media_type="text/event-stream")

        texts = [[] for _ in range(body.n)]
        reasons: list[str | None] = [None] * body.n
        tokens = 0
        try:
            async for e in events():
                tokens += 1
                texts[e.index].append(e.text)
                reasons[e.index] = e.finish_reason or reasons[e.index]
        finally:
            engine_request.cancel()
        if not all(reasons):
            raise APIError(499, "client closed the request")
        return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": i, "message": {"role": "assistant", "content": "".join(t)}, "logprobs": None,
                             "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))],
                "usage": usage(engine_request, tokens)}
