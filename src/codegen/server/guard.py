"""What every HTTP request passes before any route sees it: authentication, then a body size bound.

An ASGI middleware, so both come before the body is read or validated: a request without the right
`Authorization: Bearer KEY` gets 401 whatever its body, and a body over the bound gets 413 from its
Content-Length alone (or as soon as a chunked body crosses it) without being buffered. The key is
compared in constant time on bytes, so no header (non-ASCII included) can make the check raise.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable

from .schemas import APIError

UNAUTHORIZED = APIError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'", kind="authentication_error",
                        code="invalid_api_key")


def authorized(header: bytes | None, key: bytes) -> bool:
    """Whether an Authorization header (raw bytes) carries `key` as a Bearer (or Token) credential."""
    if not header:
        return False
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() not in (b"bearer", b"token"):
        return False
    return hmac.compare_digest(token.strip(), key)


async def _answer(send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """`open_paths` need no key: exact paths, or prefixes where they end in "/" (static files)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int,
                 open_paths: Iterable[str] = ("/health", "/", "/static/", "/v1/web/config")) -> None:
        self.app = app
        self.key = api_key.encode("utf-8") if api_key else None
        self.max_body = max_body_bytes
        self.open_paths = frozenset(p for p in open_paths if not p.endswith("/") or p == "/")
        self.open_prefixes = tuple(p for p in open_paths if p.endswith("/") and p != "/")

    def is_open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(self.open_prefixes)

    def is_authorized(self, scope) -> bool:
        if self.key is None:
            return True
        return authorized(dict(scope.get("headers") or ()).get(b"authorization"), self.key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        authorized = self.is_authorized(scope)
        if not authorized and not self.is_open(scope["path"]):
            return await _answer(send, UNAUTHORIZED)
        scope.setdefault("state", {})["authorized"] = authorized
        too_large = APIError(413, f"the request body exceeds the server's bound of {self.max_body} bytes "
                                  f"(--max-body-bytes)", code="request_too_large")
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None:
            try:
                if int(length) > self.max_body:
                    return await _answer(send, too_large)
            except ValueError:
                return await _answer(send, APIError(400, "the Content-Length header is not a number"))
        seen, started, answered = 0, False, False

        async def limited_receive():
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # a chunked body past the bound: answer now, the app sees a disconnect
                    if not started and not answered:
                        answered = True
                        await _answer(send, too_large)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message):
            nonlocal started
            if answered:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, tracking_send)
