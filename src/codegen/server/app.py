"""The HTTP app: OpenAI legacy Completions, Copilot/fauxpilot routes, health and models.

Generation never runs on the event loop: requests go to a `ContinuousBatcher` thread, whose
per-token updates come back through an asyncio queue per request. A client that disconnects has
its rows dropped at the next decode step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from ..batching import BatchRequest, ContinuousBatcher, PromptScores, QueueFull, Update
from .schemas import APIError, CompletionRequest

logger = logging.getLogger(__name__)


def _token_text(tokenizer, token: int) -> str:
    raw = tokenizer._decode_bytes([token])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # part of a multi-byte character, as OpenAI shows it
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class _Choice:
    def __init__(self) -> None:
        self.text: list[str] = []
        self.tokens: list[int] = []
        self.logprobs: list[float | None] = []
        self.top: list[Any] = []
        self.finish_reason: str | None = None


def create_app(batcher: ContinuousBatcher, model_name: str, api_key: str | None = None,
               max_tokens_default: int = 16) -> FastAPI:
    app = FastAPI(title="codegen", description="CodeGen completions, OpenAI- and Copilot-compatible")
    tokenizer = batcher.tokenizer
    n_positions = batcher.model.config.n_positions
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        param = loc[0] if loc else None
        message = f"{param}: {err.get('msg')}" if param else str(err.get("msg"))
        return JSONResponse(APIError(400, message, param).body(), status_code=400)

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("bearer", "token") or not secrets.compare_digest(token.strip(), api_key):
            raise APIError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'", kind="authentication_error",
                           code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "active_sequences": batcher.active, "queued_requests": batcher.queued}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_auth(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "codegen"}]}

    @app.get("/copilot_internal/v2/token")
    async def copilot_token(request: Request) -> dict[str, Any]:
        check_auth(request)
        # A token that never expires in practice: clients refresh it long after any session ends.
        return {"token": "codegen-local", "expires_at": 2**31 - 1, "refresh_in": 10**8}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_auth(request)
        return await _complete(body, request)

    @app.post("/v1/engines/{engine}/completions")
    async def engine_completions(engine: str, body: CompletionRequest, request: Request):
        check_auth(request)
        if body.model is None:
            body.model = engine
        return await _complete(body, request)

    def _prompts(body: CompletionRequest) -> list[list[int]]:
        p = body.prompt
        if isinstance(p, str):
            prompts = [tokenizer.encode(p)] if p else [[]]
        elif p and all(isinstance(x, int) for x in p):
            prompts = [list(p)]
        elif p and all(isinstance(x, str) for x in p):
            prompts = [tokenizer.encode(x) for x in p]
        elif p and all(isinstance(x, list) for x in p):
            prompts = [list(x) for x in p]
        else:
            raise APIError(400, "prompt must be a non-empty string, list of strings, or list of token ids", "prompt")
        for ids in prompts:
            if not ids:
                raise APIError(400, "prompt is empty", "prompt")
            if any(not 0 <= t < len(tokenizer) for t in ids):
                raise APIError(400, f"prompt token ids must lie in [0, {len(tokenizer)})", "prompt")
        return prompts

    def _requests(body: CompletionRequest) -> tuple[list[list[int]], list[BatchRequest], int]:
        if body.suffix:
            raise APIError(400, "suffix is not supported: CodeGen-1 models cannot fill in the middle", "suffix")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(body, name):
                raise APIError(400, f"{name} is not supported by this server; leave it at 0", name)
        if body.logit_bias:
            raise APIError(400, "logit_bias is not supported by this server", "logit_bias")
        best_of = body.best_of or body.n
        if best_of < body.n:
            raise APIError(400, f"best_of ({best_of}) must be >= n ({body.n})", "best_of")
        if best_of > body.n and body.stream:
            raise APIError(400, "best_of > n cannot be streamed", "best_of")
        if best_of > batcher.max_batch:
            raise APIError(400, f"n/best_of must be <= {batcher.max_batch} (the server's --max-batch)", "n")
        prompts = _prompts(body)
        max_tokens = body.max_tokens if body.max_tokens is not None else max_tokens_default
        for ids in prompts:
            if len(ids) + max_tokens > n_positions:
                raise APIError(400, f"the prompt has {len(ids)} tokens; with max_tokens {max_tokens} this exceeds the model's "
                                    f"context window of {n_positions} tokens", "max_tokens")
        logprobs = body.logprobs if body.logprobs is not None else (0 if best_of > body.n else None)
        reqs = [BatchRequest(prompt_ids=ids, max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                             n=best_of, stop=tuple(body.stop or ()), seed=body.seed, logprobs=logprobs,
                             prompt_logprobs=body.echo and body.logprobs is not None)
                for ids in prompts]
        return prompts, reqs, best_of

    async def _submit(reqs: list[BatchRequest]):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        tickets = []
        try:
            for i, req in enumerate(reqs):
                tickets.append(batcher.submit(req, lambda item, i=i: loop.call_soon_threadsafe(queue.put_nowait, (i, item))))
        except QueueFull as e:
            for t in tickets:
                t.cancel()
            raise APIError(429, f"server busy: {e}", kind="rate_limit_error", code="queue_full") from None
        except ValueError as e:
            for t in tickets:
                t.cancel()
            raise APIError(400, str(e), "prompt") from None
        return queue, tickets

    def _logprobs_obj(choice: _Choice, prompt: list[int] | None, scores: PromptScores | None, k: int | None,
                      offset0: int) -> dict[str, Any]:
        tokens = (prompt or []) + choice.tokens
        lps = (scores.logprobs if scores else []) + choice.logprobs
        tops_raw = (scores.top_logprobs if scores else []) + choice.top
        texts = [_token_text(tokenizer, t) for t in tokens]
        offsets, pos = [], offset0
        for t in texts:
            offsets.append(pos)
            pos += len(t) if not t.startswith("bytes:") else 0
        tops = [None if t is None else {_token_text(tokenizer, i): v for i, v in t} for t in tops_raw] if k else None
        return {"tokens": texts, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}

    async def _complete(body: CompletionRequest, request: Request):
        prompts, reqs, best_of = _requests(body)
        queue, tickets = await _submit(reqs)
        rid = f"cmpl-{secrets.token_hex(12)}"
        model = body.model or model_name
        if body.stream:
            return StreamingResponse(_stream(body, prompts, queue, tickets, rid, model, request), media_type="text/event-stream")
        try:
            return await _collect(body, prompts, queue, tickets, best_of, rid, model)
        finally:
            for t in tickets:
                t.cancel()

    async def _collect(body, prompts, queue, tickets, best_of, rid, model) -> dict[str, Any]:
        choices = [[_Choice() for _ in range(best_of)] for _ in prompts]
        scores: list[PromptScores | None] = [None] * len(prompts)
        pending = len(prompts) * best_of
        while pending:
            i, item = await queue.get()
            if isinstance(item, Exception):
                raise APIError(500, f"generation failed: {item}", kind="server_error")
            if isinstance(item, PromptScores):
                scores[i] = item
                continue
            c = choices[i][item.index]
            c.text.append(item.text)
            c.tokens.append(item.token)
            c.logprobs.append(item.logprob)
            c.top.append(item.top_logprobs)
            if item.finish_reason is not None:
                c.finish_reason = item.finish_reason
                pending -= 1
        out, completion_tokens = [], 0
        for i, (ids, cs) in enumerate(zip(prompts, choices)):
            completion_tokens += sum(len(c.tokens) for c in cs)
            if best_of > body.n:  # keep the n most likely samples
                cs = sorted(cs, key=lambda c: -sum(x for x in c.logprobs if x is not None))[: body.n]
            for j, c in enumerate(cs):
                prefix = tokenizer.decode(ids) if body.echo else ""
                lp = None
                if body.logprobs is not None:
                    lp = _logprobs_obj(c, ids if body.echo else None, scores[i] if body.echo else None, body.logprobs, 0)
                out.append({"text": prefix + "".join(c.text), "index": i * body.n + j, "logprobs": lp,
                            "finish_reason": c.finish_reason})
        prompt_tokens = sum(len(ids) for ids in prompts)
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": out,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    async def _stream(body, prompts, queue, tickets, rid, model, request: Request) -> AsyncIterator[str]:
        def chunk(choices: list[dict[str, Any]], usage: dict | None = None) -> str:
            data = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": choices}
            if usage is not None:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n"

        pending = len(prompts) * body.n
        completion_tokens = 0
        offsets: dict[int, int] = {}
        try:
            if body.echo:
                for i, ids in enumerate(prompts):
                    text = tokenizer.decode(ids)
                    for j in range(body.n):
                        offsets[i * body.n + j] = len(text)
                        yield chunk([{"text": text, "index": i * body.n + j, "logprobs": None, "finish_reason": None}])
            while pending:
                try:
                    i, item = await asyncio.wait_for(queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                if isinstance(item, Exception):
                    err = APIError(500, f"generation failed: {item}", kind="server_error")
                    yield f"data: {json.dumps(err.body())}\n\n"
                    return
                if isinstance(item, PromptScores):
                    continue
                assert isinstance(item, Update)
                index = i * body.n + item.index
                completion_tokens += 1
                lp = None
                if body.logprobs is not None:
                    c = _Choice()
                    c.tokens, c.logprobs, c.top = [item.token], [item.logprob], [item.top_logprobs]
                    lp = _logprobs_obj(c, None, None, body.logprobs, offsets.get(index, 0))
                offsets[index] = offsets.get(index, 0) + len(item.text)
                yield chunk([{"text": item.text, "index": index, "logprobs": lp, "finish_reason": item.finish_reason}])
                if item.finish_reason is not None:
                    pending -= 1
            if body.stream_options and body.stream_options.get("include_usage"):
                prompt_tokens = sum(len(ids) for ids in prompts)
                yield chunk([], {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                 "total_tokens": prompt_tokens + completion_tokens})
            yield "data: [DONE]\n\n"
        finally:  # normal end, or the client went away (the response task is cancelled)
            for t in tickets:
                t.cancel()

    app.state.batcher = batcher
    return app


def run(settings) -> None:
    """Load the model, start the batcher thread and serve until interrupted."""
    import os

    import torch
    import uvicorn

    from ..checkpoint import resolve
    from ..model import CodeGenForCausalLM
    from ..tokenizer import CodeGenTokenizerFast

    if settings.threads:
        torch.set_num_threads(settings.threads)
    model_dir = resolve(settings.model)
    tokenizer = CodeGenTokenizerFast.from_pretrained(settings.tokenizer or model_dir)
    model = CodeGenForCausalLM.from_pretrained(model_dir, torch_dtype=settings.dtype, device=settings.device)
    batcher = ContinuousBatcher(model, tokenizer, max_batch=settings.max_batch, max_queue=settings.max_queue)
    name = settings.served_model_name or os.path.basename(os.path.abspath(model_dir))
    app = create_app(batcher, name, settings.api_key, settings.max_tokens_default)
    batcher.start()
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: reachable from other machines%s", settings.host,
                       "" if settings.api_key else " and without an API key")
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    finally:
        batcher.close()
