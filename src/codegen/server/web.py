"""The web page: the conversation and a completion playground in a browser, at `/`.

Static files shipped in the package (`static/`: no build step, nothing fetched from elsewhere, so
it works offline). The page keeps the conversation itself and talks to the API like any client:
`/v1/chat/completions` for turns (streamed), `/v1/completions` for the playground (streamed, with
logprobs), `/v1/run` to run the program. The page and its files need no key; the API does, and the
page sends the key its user typed. `/v1/run` runs code only when the server was started with
`--allow-run`, and then only in the evaluation sandbox.
"""

from __future__ import annotations

import asyncio
import atexit
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from .chat import ChatMessage, conversation
from .schemas import APIError

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_PROGRAM = 1 << 20


class RunRequest(BaseModel):
    """A program, as code or as a conversation (rendered in the paradigm's format)."""

    code: str | None = Field(default=None, max_length=MAX_PROGRAM)
    messages: list[ChatMessage] | None = None


def add_web_routes(app: FastAPI, model_name: str, allow_run: bool, run_timeout: float, needs_key: bool) -> None:
    state: dict[str, Any] = {"sandbox": None}
    lock = asyncio.Lock()

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/v1/web/config")
    async def config(request: Request) -> dict[str, Any]:
        """What the page needs to know (open, like /health: the model is named to authorized callers only)."""
        authorized = request.scope.get("state", {}).get("authorized")
        return {"model": model_name if authorized else None, "allow_run": allow_run, "run_timeout": run_timeout,
                "needs_key": needs_key, "authorized": bool(authorized)}

    @app.post("/v1/run")
    async def run(body: RunRequest) -> dict[str, Any]:
        """Run a program in the evaluation sandbox: status, stdout, stderr, error, seconds."""
        if not allow_run:
            raise APIError(403, "running code is off: start the server with --allow-run to run programs (in the "
                                "sandbox)", "code", kind="permission_error", code="run_disabled")
        from ..eval.sandbox import Limits, Sandbox, SandboxUnavailable

        if (body.code is None) == (body.messages is None):
            raise APIError(400, "give the program as code or as messages (one of the two)", "code")
        code = body.code if body.code is not None else conversation(body.messages, pending=False)[0].program()
        try:
            async with lock:  # the first call starts the sandbox; runs then share its workers
                if state["sandbox"] is None:
                    state["sandbox"] = await asyncio.to_thread(Sandbox, 2)
                    atexit.register(state["sandbox"].close)
            verdict = await asyncio.to_thread(state["sandbox"].run, code, Limits(timeout=run_timeout))
        except SandboxUnavailable as e:
            raise APIError(503, f"cannot run code on this server: {e}", kind="server_error", code="no_sandbox") from None
        return {"status": verdict.status, "stdout": verdict.stdout, "stderr": verdict.stderr,
                "error": verdict.failure(run_timeout),
                "seconds": verdict.seconds}
