"""The HTTP app: OpenAI legacy Completions, Copilot/fauxpilot routes, health and models; the chat
API (`chat`) and the web page (`web`) are added to it.

Generation never runs on the event loop: a request's parameters become one `SamplingParams`
(`sampling_params`), its prompts one engine `Request`, which the `ContinuousBatcher` thread decodes
beside the others; its events come back through an asyncio queue. A client that disconnects
(streaming or not) has its rows dropped at the next decode step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.batcher import ContinuousBatcher
from ..engine.params import SamplingParams
from ..engine.request import ErrorEvent, PromptLogprobs, TokenEvent
from ..fim import FimTokens, fim_prompt, fim_tokens
from .chat import add_chat_routes
from .flow import failure, next_event, submit, usage
from .guard import Guard
from .schemas import APIError, CompletionRequest
from .web import add_web_routes

logger = logging.getLogger(__name__)


def _token_text(tokenizer, token: int) -> str:
    raw = tokenizer._decode_bytes([token])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # part of a multi-byte character, as OpenAI shows it
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


# OpenAI's names for the engine's parameters, where they differ.
API_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "stop": "stop"}


def sampling_params(body: CompletionRequest, max_tokens_default: int, max_batch: int,
                    fim: FimTokens | None = None) -> tuple[SamplingParams, int]:
    """The request's one parameter record (and best_of); APIError 400 naming the parameter. A
    `suffix` (fill in the middle) needs a CodeGen2 tokenizer's sentinels (`fim`)."""
    if body.suffix and fim is None:
        raise APIError(400, "suffix is not supported: CodeGen-1 models cannot fill in the middle", "suffix")
    if body.suffix and body.echo:
        raise APIError(400, "echo cannot be combined with suffix", "echo")
    body.refuse_penalties()
    if body.logit_bias:
        raise APIError(400, "logit_bias is not supported by this server", "logit_bias")
    best_of = body.best_of or body.n
    if best_of < body.n:
        raise APIError(400, f"best_of ({best_of}) must be >= n ({body.n})", "best_of")
    if best_of > body.n and body.stream:
        raise APIError(400, "best_of > n cannot be streamed", "best_of")
    if best_of > max_batch:
        raise APIError(400, f"n/best_of must be <= {max_batch} (the server's --max-batch)", "n")
    max_tokens = body.max_tokens if body.max_tokens is not None else max_tokens_default
    try:
        params = SamplingParams(
            max_new_tokens=max_tokens, min_new_tokens=min(body.min_tokens, max_tokens), temperature=body.temperature,
            top_k=body.top_k, top_p=body.top_p, repetition_penalty=body.repetition_penalty, n=best_of,
            stop=tuple(body.stop or ()), seed=body.seed, stop_token_ids=(fim.eom, fim.eos) if body.suffix else None,
            logprobs=body.logprobs if body.logprobs is not None else (0 if best_of > body.n else None),
            prompt_logprobs=body.echo and body.logprobs is not None,
        )
    except ValueError as e:
        name, _, rest = str(e).partition(" ")
        raise APIError(400, f"{API_NAMES.get(name, name)} {rest}", API_NAMES.get(name, name)) from None
    return params, best_of


class _Choice:
    """One output's accumulated state: its text, every generated token (usage, best_of ranking), and
    the tokens shown in `logprobs`: those whose text begins inside the returned text, released in
    order as the text is (so streamed and non-streamed logprobs are the same)."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.sent = 0  # characters of text so far
        self.tokens = 0
        self.logprob_sum = 0.0
        self.pending: list[tuple[int, float | None, list | None, int]] = []  # (token, logprob, top, offset)
        self.finish_reason: str | None = None

    def add(self, e: TokenEvent) -> list[tuple[int, float | None, list | None, int]]:
        """Record the event; the logprob entries released with its text."""
        self.text.append(e.text)
        self.sent += len(e.text)
        self.tokens += 1
        self.logprob_sum += e.logprob or 0.0
        self.pending.append((e.token, e.logprob, e.top_logprobs, e.offset if e.offset is not None else self.sent))
        n = 0
        while n < len(self.pending) and self.pending[n][3] < self.sent:
            n += 1
        released, self.pending = self.pending[:n], self.pending[n:]
        if e.finish_reason is not None:
            self.finish_reason = e.finish_reason
            self.pending = []  # tokens that begin after the returned text (EOS, the stop string)
        return released


def create_app(batcher: ContinuousBatcher, model_name: str, api_key: str | None = None,
               max_tokens_default: int = 16, max_body_bytes: int = 2 * 1024 * 1024, docs: bool = True,
               allow_run: bool = False, run_timeout: float = 10.0) -> FastAPI:
    """The app over a running batcher. With `api_key`, every route but /health and the web page's
    static files needs it (checked before the body is read; /docs and /openapi.json too); /health
    then names the model only to an authenticated caller. Bodies over `max_body_bytes` are answered
    413 unread. `allow_run`: the page may run its program in the sandbox (POST /v1/run)."""
    app = FastAPI(title="codegen", description="CodeGen completions, OpenAI- and Copilot-compatible",
                  docs_url="/docs" if docs else None, openapi_url="/openapi.json" if docs else None, redoc_url=None)
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes)
    tokenizer = batcher.tokenizer
    fim_ids = fim_tokens(tokenizer)  # None: CodeGen-1, no fill-in-the-middle
    created = int(time.time())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(APIError(exc.status_code, str(exc.detail), kind=kind).body(), status_code=exc.status_code)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [p for p in err.get("loc", ()) if p != "body"]
        param = str(loc[0]) if loc else None
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")  # messages[0].role
        message = f"{where}: {err.get('msg')}" if where else str(err.get("msg"))
        return JSONResponse(APIError(400, message, param).body(), status_code=400)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        if not request.scope.get("state", {}).get("authorized"):
            return {"status": "ok"}
        cache = batcher.prefix_cache
        return {"status": "ok", "model": model_name, "active_sequences": batcher.active, "queued_requests": batcher.queued,
                "prefix_cache": cache.stats() if cache is not None else None}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "codegen"}]}

    @app.get("/copilot_internal/v2/token")
    async def copilot_token(request: Request) -> dict[str, Any]:
        # A token that never expires in practice: clients refresh it long after any session ends.
        return {"token": "codegen-local", "expires_at": 2**31 - 1, "refresh_in": 10**8}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await _complete(body, request)

    @app.post("/v1/engines/{engine}/completions")
    async def engine_completions(engine: str, body: CompletionRequest, request: Request):
        if body.model is None:
            body.model = engine
        return await _complete(body, request)

    def _prompts(body: CompletionRequest) -> list[list[int]]:
        p = body.prompt
        if body.suffix:  # fill in the middle: the prompt is the code before the cursor, as text
            if not (isinstance(p, str) or (p and all(isinstance(x, str) for x in p))):
                raise APIError(400, "with suffix, prompt must be a string or a list of strings", "prompt")
            return [fim_prompt(tokenizer, x, body.suffix) for x in ([p] if isinstance(p, str) else p)]
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
        return prompts  # empty prompts and ids the tokenizer cannot decode: refused by the engine (400)

    def _logprobs_obj(entries, k: int | None, offset0: int) -> dict[str, Any]:
        """OpenAI's logprobs object for (token, logprob, top, offset) entries."""
        return {
            "tokens": [_token_text(tokenizer, t) for t, _, _, _ in entries],
            "token_logprobs": [lp for _, lp, _, _ in entries],
            "top_logprobs": [None if top is None else {_token_text(tokenizer, i): v for i, v in top}
                             for _, _, top, _ in entries] if k else None,
            "text_offset": [offset0 + off for _, _, _, off in entries],
        }

    def _prompt_entries(ids: list[int], scores: PromptLogprobs | None) -> tuple[str, list]:
        """The echoed prompt text and its logprob entries (offsets of each token's text in it)."""
        decoder = tokenizer.incremental_decoder(skip_special_tokens=False)
        entries = []
        for j, t in enumerate(ids):
            entries.append((t, scores.logprobs[j] if scores else None, scores.top_logprobs[j] if scores else None,
                            len(decoder.text)))
            decoder.add([t])
        decoder.flush()
        return decoder.text, entries

    async def _complete(body: CompletionRequest, request: Request):
        params, best_of = sampling_params(body, max_tokens_default, batcher.max_batch, fim_ids)
        prompts = await asyncio.to_thread(_prompts, body)
        engine_request, queue = submit(batcher, prompts, params)
        rid = f"cmpl-{secrets.token_hex(12)}"
        model = body.model or model_name
        if body.stream:
            return StreamingResponse(_stream(body, prompts, engine_request, queue, rid, model, request),
                                     media_type="text/event-stream")
        try:
            return await _collect(body, prompts, engine_request, queue, best_of, rid, model, request)
        finally:
            engine_request.cancel()

    async def _collect(body, prompts, engine_request, queue, best_of, rid, model, request: Request) -> dict[str, Any]:
        choices = [[_Choice() for _ in range(best_of)] for _ in prompts]
        shown = [[[] for _ in range(best_of)] for _ in prompts]
        scores: list[PromptLogprobs | None] = [None] * len(prompts)
        while not all(c.finish_reason for cs in choices for c in cs):
            item = await next_event(queue, request)
            if item is None:
                raise APIError(499, "client closed the request")
            error = failure(item)
            if error is not None:
                raise error
            if isinstance(item, PromptLogprobs):
                scores[item.prompt_index] = item
                continue
            i, j = divmod(item.index, best_of)
            shown[i][j] += choices[i][j].add(item)
        out = []
        for i, ids in enumerate(prompts):
            order = list(range(best_of))
            if best_of > body.n:  # keep the n most likely samples
                order = sorted(order, key=lambda j: -choices[i][j].logprob_sum)[: body.n]
            prefix, prompt_entries = _prompt_entries(ids, scores[i]) if body.echo else ("", [])
            for rank, j in enumerate(order):
                c = choices[i][j]
                lp = _logprobs_obj(prompt_entries + [(t, v, top, len(prefix) + off) for t, v, top, off in shown[i][j]],
                                   body.logprobs, 0) if body.logprobs is not None else None
                out.append({"text": prefix + "".join(c.text), "index": i * body.n + rank, "logprobs": lp,
                            "finish_reason": c.finish_reason})
        completion_tokens = sum(c.tokens for cs in choices for c in cs)
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": out,
                "usage": usage(engine_request, completion_tokens)}

    async def _stream(body, prompts, engine_request, queue, rid, model, request: Request) -> AsyncIterator[str]:
        def chunk(choices: list[dict[str, Any]], usage: dict | None = None) -> str:
            data = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": choices}
            if usage is not None:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n"

        n = body.n
        choices = [_Choice() for _ in range(len(prompts) * n)]
        offsets = [0] * len(choices)  # length of the echoed prompt text before each output's text
        completion_tokens = 0
        try:
            if body.echo:
                for i, ids in enumerate(prompts):
                    text = tokenizer.decode(ids)
                    for j in range(n):
                        offsets[i * n + j] = len(text)
                        yield chunk([{"text": text, "index": i * n + j, "logprobs": None, "finish_reason": None}])
            while not all(c.finish_reason for c in choices):
                item = await next_event(queue, request)
                if item is None:
                    return
                if isinstance(item, (Exception, ErrorEvent)):
                    status = 500 if isinstance(item, Exception) else item.status
                    kind = "server_error" if status >= 500 else "invalid_request_error"
                    message = item.message if isinstance(item, ErrorEvent) else str(item)
                    yield f"data: {json.dumps(APIError(status, f'generation failed: {message}', kind=kind).body())}\n\n"
                    return
                if isinstance(item, PromptLogprobs):
                    continue
                completion_tokens += 1
                released = choices[item.index].add(item)
                if not (item.text or released or item.finish_reason):
                    continue
                lp = _logprobs_obj(released, body.logprobs, offsets[item.index]) if body.logprobs is not None else None
                yield chunk([{"text": item.text, "index": item.index, "logprobs": lp, "finish_reason": item.finish_reason}])
            if body.stream_options and body.stream_options.get("include_usage"):
                yield chunk([], usage(engine_request, completion_tokens))
            yield "data: [DONE]\n\n"
        finally:  # normal end, or the client went away (the response task is cancelled)
            engine_request.cancel()

    add_chat_routes(app, batcher, model_name)
    add_web_routes(app, model_name, allow_run, run_timeout, api_key is not None)
    app.state.batcher = batcher
    return app


def run(settings) -> None:
    """Load the model, start the batcher thread and serve until interrupted; under --tp (torchrun),
    rank 0 serves and the other ranks follow its steps (codegen.parallel)."""
    from ..loading import load_for_inference

    def load(layout=None):
        return load_for_inference(settings.model, settings.tokenizer, settings.dtype, settings.device, settings.threads,
                                  adapter=settings.adapter, quantize=settings.quantize, layout=layout)

    from ..parallel.run import run_model

    run_model(load, lambda model, tokenizer, layout: serve(settings, model, tokenizer), tp=settings.tp,
              device=settings.device, one_group=True)


def serve(settings, model, tokenizer) -> int:
    """Serve `model` until interrupted."""
    import uvicorn

    from ..engine.prefix import PrefixCache
    from ..loading import resolve_model

    pool = PrefixCache(settings.prefix_cache_mb << 20) if settings.prefix_cache_mb else None
    batcher = ContinuousBatcher(model, tokenizer, max_batch=settings.max_batch, max_queue=settings.max_queue,
                                prefix_cache=pool)
    model_dir, adapter_dir = resolve_model(settings.model, settings.adapter)
    name = settings.served_model_name or os.path.basename(os.path.abspath(adapter_dir or model_dir))
    app = create_app(batcher, name, settings.api_key, settings.max_tokens_default, settings.max_body_bytes,
                     docs=settings.docs == "on", allow_run=settings.allow_run, run_timeout=settings.run_timeout)
    batcher.start()
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: reachable from other machines%s", settings.host,
                       "" if settings.api_key else " and without an API key")
    try:
        # SIGTERM: uvicorn stops accepting, gives running requests shutdown_timeout seconds, then cancels them.
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                    timeout_graceful_shutdown=settings.shutdown_timeout)
    finally:
        batcher.close()
    return 0
