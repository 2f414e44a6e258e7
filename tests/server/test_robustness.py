"""One request never harms another, over real HTTP: poisoned requests sent while innocent ones run get
a clean error or a valid answer, and the innocent answers equal their solo answers; authentication
comes before validation; big bodies are refused unread; disconnects free rows; SIGTERM exits in time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from helpers import TOKENIZER_DIR
from serving import Server, free_port

pytestmark = pytest.mark.skipif(not os.path.isdir(TOKENIZER_DIR), reason="CodeGen tokenizer files not in ../shared")
BIG = "x" * (8 * 1024 * 1024)


INNOCENT = [
    {"prompt": "def fibonacci(n):", "max_tokens": 40, "temperature": 0},
    {"prompt": "import os\n", "max_tokens": 40, "temperature": 0, "stream": True},
    {"prompt": "class A:", "max_tokens": 30, "temperature": 0.9, "seed": 3, "n": 2},
    {"prompt": "x = [", "max_tokens": 30, "temperature": 0.7, "seed": 9, "stream": True, "logprobs": 2},
]
POISON = [  # (body or raw bytes, the statuses that count as clean)
    ({"prompt": "a", "max_tokens": 20, "temperature": 1e-300}, {200}),
    ({"prompt": "a", "max_tokens": 20, "temperature": 1.0, "seed": 2**64}, {200}),
    ({"prompt": "a", "max_tokens": 20, "temperature": 1.0, "seed": 2**100}, {200}),
    ({"prompt": "a", "max_tokens": 20, "temperature": 1.0, "seed": -2**64}, {200}),
    ({"prompt": "a", "max_tokens": 20, "temperature": 1e-300, "stream": True}, {200}),
    ({"prompt": "a", "max_tokens": 8, "logprobs": 5, "echo": True}, {200}),
    ({"prompt": ["p"] * 65, "max_tokens": 2}, {400}),
    ({"prompt": "a", "max_tokens": 10**9}, {400}),
    ({"prompt": "a", "n": 2, "best_of": 1}, {400}),
    ({"prompt": BIG}, {413}),
    (b"{", {400}),
    (b"\xff\xfe\x00garbage", {400}),
    ({"prompt": [[1, 2], "mixed"]}, {400}),
]


async def _send(client, url, body):
    if isinstance(body, bytes):
        return await client.post(url, content=body, headers={"content-type": "application/json"})
    if body.get("stream"):
        async with client.stream("POST", url, json=body) as r:
            text = "".join([line async for line in r.aiter_lines()])
            return r.status_code, text
    return await client.post(url, json=body)


def _texts(response) -> list[str]:
    if isinstance(response, tuple):  # streamed
        import json

        status, text = response
        assert status == 200 and text.endswith("data: [DONE]"), text[-300:]
        chunks = [json.loads(c) for c in text.split("data: ")[1:-1]]
        assert not any("error" in c for c in chunks), chunks
        by_index: dict[int, str] = {}
        for c in chunks:
            for ch in c["choices"]:
                by_index[ch["index"]] = by_index.get(ch["index"], "") + ch["text"]
        return [by_index[i] for i in sorted(by_index)]
    assert response.status_code == 200, response.text
    return [c["text"] for c in response.json()["choices"]]


def test_poisoned_requests_harm_no_innocent_one(server):
    url = server.url + "/v1/completions"

    async def solo():
        async with httpx.AsyncClient(timeout=120) as client:
            return [_texts(await _send(client, url, b)) for b in INNOCENT]

    async def mixed():
        async with httpx.AsyncClient(timeout=120) as client:
            innocent = [asyncio.create_task(_send(client, url, b)) for b in INNOCENT]
            await asyncio.sleep(0.05)
            poisoned = await asyncio.gather(*[_send(client, url, b) for b, _ in POISON])
            return [_texts(r) for r in await asyncio.gather(*innocent)], poisoned

    alone = asyncio.run(solo())
    together, poisoned = asyncio.run(mixed())
    assert together == alone
    for (body, ok), r in zip(POISON, poisoned):
        status = r[0] if isinstance(r, tuple) else r.status_code
        assert status in ok, (str(body)[:80], status, (r[1] if isinstance(r, tuple) else r.text)[:300])
        if status != 200:
            err = r.json()["error"]
            assert err["message"] and err["type"] == "invalid_request_error", err
        elif isinstance(r, tuple):
            _texts(r)
    assert server.batcher.active == 0 or time.sleep(1) or server.batcher.active == 0
    # seeds are taken modulo 2**64: 2**64 is seed 0; the server still answers after all of it
    a = httpx.post(url, json={"prompt": "a", "max_tokens": 6, "temperature": 1.0, "seed": 2**64}, timeout=60).json()
    b = httpx.post(url, json={"prompt": "a", "max_tokens": 6, "temperature": 1.0, "seed": 0}, timeout=60).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


def test_health_answers_fast_while_a_huge_body_is_rejected(server):
    done = []

    def big():
        done.append(httpx.post(server.url + "/v1/completions", json={"prompt": BIG}, timeout=60).status_code)

    t = threading.Thread(target=big)
    t.start()
    slowest = 0.0
    with httpx.Client() as client:
        client.get(server.url + "/health")  # connection set up outside the timing
        while t.is_alive() or not done:
            s = time.perf_counter()
            assert client.get(server.url + "/health").status_code == 200
            slowest = max(slowest, time.perf_counter() - s)
            if not t.is_alive():
                break
    t.join()
    assert done == [413] and slowest < 0.5, slowest  # blocked by the body it would take seconds


ROUTES = [("GET", "/v1/models"), ("GET", "/copilot_internal/v2/token"), ("POST", "/v1/completions"),
          ("POST", "/v1/engines/codegen/completions"), ("GET", "/docs"), ("GET", "/openapi.json")]


@pytest.mark.parametrize("method, path", ROUTES)
def test_authentication_comes_first_on_every_route(model, tok, method, path):
    with Server(model, tok, api_key="sekret") as s:
        bad_body = {"prompt": "x", "max_tokens": -5}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer ключ".encode()},
                        {"Authorization": b"\xff\xfe"}, {"Authorization": "Basic sekret"}):
            r = httpx.request(method, s.url + path, headers=headers, json=bad_body if method == "POST" else None)
            assert r.status_code == 401, (headers, r.status_code, r.text)
            assert r.json()["error"]["type"] == "authentication_error"
        ok = {"Authorization": "Bearer sekret"}
        if method == "POST":
            assert httpx.post(s.url + path, headers=ok, json=bad_body).status_code == 400
            assert httpx.post(s.url + path, headers=ok, json={"prompt": "x", "max_tokens": 2}, timeout=60).status_code == 200
        else:
            assert httpx.get(s.url + path, headers=ok).status_code == 200
        assert httpx.get(s.url + "/health").json() == {"status": "ok"}  # says nothing of the model
        assert httpx.get(s.url + "/health", headers=ok).json()["model"] == "codegen-test"


def test_docs_can_be_turned_off(model, tok):
    with Server(model, tok, docs=False) as s:
        assert httpx.get(s.url + "/docs").status_code == 404 and httpx.get(s.url + "/openapi.json").status_code == 404
        assert httpx.get(s.url + "/docs").json()["error"]["message"]


def test_a_non_streaming_client_that_goes_away_frees_its_rows(server):
    before = server.batcher.steps
    body = {"prompt": "def f():", "max_tokens": 240, "temperature": 0.9, "n": 16, "stop": ["\x00never"]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, timeout=0.3)
    deadline = time.time() + 5
    while server.batcher.active and time.time() < deadline:
        time.sleep(0.02)
    assert server.batcher.active == 0 and server.batcher.steps - before < 239  # dropped, not run to max_tokens


def test_sigterm_exits_within_the_shutdown_timeout(tmp_path):
    from codegen.cli import main

    assert main(["init", str(tmp_path / "m"), "--tokenizer", TOKENIZER_DIR]) == 0
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "codegen.cli", "serve", "--model", str(tmp_path / "m"), "--port",
                             str(port), "--shutdown-timeout", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline and proc.poll() is None, proc.stdout.read().decode()[-2000:]
            time.sleep(0.2)
        async def poison():  # what once left SIGTERM waiting on background tasks, sent before it
            async with httpx.AsyncClient(timeout=120) as client:
                return await asyncio.gather(*[_send(client, f"http://127.0.0.1:{port}/v1/completions", b) for b, _ in POISON])

        for (body, ok), r in zip(POISON, asyncio.run(poison())):
            assert (r[0] if isinstance(r, tuple) else r.status_code) in ok, str(body)[:80]
        streaming = threading.Thread(target=lambda: _drain(port), daemon=True)
        streaming.start()
        deadline = time.time() + 30
        while httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["active_sequences"] != 1:
            assert time.time() < deadline, "the long request did not start"
            time.sleep(0.1)
        t = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert time.time() - t < 2 + 5, time.time() - t
    finally:
        if proc.poll() is None:
            proc.kill()


def _drain(port: int) -> None:
    try:
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                          json={"prompt": "def f():", "max_tokens": 2000, "temperature": 0, "stream": True}) as r:
            for _ in r.iter_lines():
                pass
    except httpx.HTTPError:
        pass
