"""The server's prefix cache (same ids as without, bounded, counted on /health), the chat API with
the official openai client (streamed and not), the program and run routes."""

from __future__ import annotations

import httpx
import pytest

from scripted import coder_lm
from serving import Server

ANSWERS = {"Assign 3 to x.": "x = 3", "Add one to x.": "x = x + 1", "Print x.": "print(x)",
           "Loop forever.": "while True:\n    pass"}


@pytest.fixture(scope="module")
def coder(tok):
    return coder_lm(tok, ANSWERS)


@pytest.fixture(scope="module")
def chat_server(coder, tok):
    with Server(coder, tok, allow_run=True, run_timeout=2) as s:
        yield s


def test_prefix_cache_same_ids_counts_and_bound(model, tok):
    base = "def fibonacci(n):\n    " + "# a comment that makes the prompt longer\n    " * 6
    prompts = [base, base + "if n < 2:", base + "if n < 2:\n        return n", "import os\n"]
    with Server(model, tok, prefix_cache_mb=0) as plain, Server(model, tok, prefix_cache_mb=64) as cached:
        for p in prompts:
            body = {"prompt": p, "max_tokens": 12, "temperature": 0}
            a = httpx.post(plain.url + "/v1/completions", json=body, timeout=60).json()
            b = httpx.post(cached.url + "/v1/completions", json=body, timeout=60).json()
            assert a["choices"] == b["choices"]
            assert a["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
            reused = b["usage"]["prompt_tokens_details"]["cached_tokens"]
            assert (reused > len(tok.encode(base)) - 2) == (p.startswith(base) and p != base), (p, reused)
        health = httpx.get(cached.url + "/health").json()["prefix_cache"]
        assert health["hits"] == 2 and health["misses"] == 2 and 0 < health["bytes"] <= health["max_bytes"]
        assert httpx.get(plain.url + "/health").json()["prefix_cache"] is None
    per_token = 2 * model.config.n_layer * model.config.n_embd * 4
    with Server(model, tok, prefix_cache_mb=1) as small:  # 1 MiB: a few hundred positions of this model
        for i in range(12):
            httpx.post(small.url + "/v1/completions", json={"prompt": f"x_{i} = [" + "1, " * 40, "max_tokens": 2,
                                                             "temperature": 0}, timeout=60)
        health = httpx.get(small.url + "/health").json()["prefix_cache"]
        assert health["bytes"] <= 1 << 20 and health["evictions"] > 0 and health["entries"] * per_token * 40 <= 1 << 20


def test_chat_with_the_openai_client(chat_server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=chat_server.url + "/v1", api_key="unused")
    r = client.chat.completions.create(model="codegen-test", messages=[{"role": "user", "content": "Assign 3 to x."}],
                                       temperature=0)
    assert r.choices[0].message.content == "x = 3" and r.choices[0].finish_reason == "stop"
    assert r.object == "chat.completion" and r.usage.prompt_tokens > 0
    history = [{"role": "system", "content": "A tiny program."},
               {"role": "user", "content": "Assign 3 to x."}, {"role": "assistant", "content": "x = 3"},
               {"role": "user", "content": "Add one to x."}]
    r = client.chat.completions.create(model="codegen-test", messages=history, temperature=0, n=2)
    assert [c.message.content for c in r.choices] == ["x = x + 1"] * 2
    history += [{"role": "assistant", "content": r.choices[0].message.content}, {"role": "user", "content": "Print x."}]
    stream = client.chat.completions.create(model="codegen-test", messages=history, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "print(x)"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # the conversation so far came from the cache
    with pytest.raises(openai.BadRequestError, match="last message must be the user"):
        client.chat.completions.create(model="codegen-test", messages=history[:3], temperature=0)
    with pytest.raises(openai.BadRequestError, match="system message may only come first"):
        client.chat.completions.create(model="codegen-test", messages=history[1:2] + history[:1], temperature=0)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.chat.completions.create(model="codegen-test", messages=history[1:2], logprobs=True)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="codegen-test", messages=history[1:2], max_tokens=100000)


def test_bad_chat_requests_name_the_problem(chat_server):
    url = chat_server.url + "/v1/chat/completions"
    user = [{"role": "user", "content": "Assign 3 to x."}]
    for body, param, words in (({"messages": []}, "messages", "at least 1"),
                               ({"messages": [{"role": "robot", "content": "x"}]}, "messages", "messages[0].role: Input should be"),
                               ({"messages": user, "stop": ["a"] * 5}, "stop", "at most 4 stop sequences"),
                               ({"messages": user, "stop": [""]}, "stop", "non-empty"),
                               ({"messages": user, "temperature": 3}, "temperature", "less than or equal to 2"),
                               ({"messages": user, "n": 99}, "n", "--max-batch"),
                               ({"messages": user, "presence_penalty": 1}, "presence_penalty", "not supported"),
                               ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages",
                                "only text parts")):
        r = httpx.post(url, json=body, timeout=60)
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == param and words in err["message"], (body, err)
    assert httpx.post(url, json={"messages": user, "temperature": 0}, timeout=60).json()["choices"][0]["message"]["content"] == "x = 3"


def test_program_and_run_routes(chat_server, server):
    messages = [{"role": "user", "content": "Assign 3 to x."}, {"role": "assistant", "content": "x = 3"},
                {"role": "user", "content": "Print x."}, {"role": "assistant", "content": "print(x)"}]
    program = httpx.post(chat_server.url + "/v1/chat/program", json={"messages": messages}).json()["program"]
    assert program.endswith("# Assign 3 to x.\nx = 3\n\n# Print x.\nprint(x)\n\n")
    v = httpx.post(chat_server.url + "/v1/run", json={"messages": messages}, timeout=60).json()
    assert v["stdout"] == "3\n" and v["error"] is None and v["status"] == "passed"
    v = httpx.post(chat_server.url + "/v1/run", json={"code": "while True:\n    pass"}, timeout=60).json()
    assert v["error"] == "timed out after 2 s"
    v = httpx.post(chat_server.url + "/v1/run", json={"code": "import socket; socket.create_connection(('1.1.1.1', 80), 2)"},
                   timeout=60).json()
    assert v["status"] == "failed" and v["error"], v  # no network in the sandbox
    bad = httpx.post(chat_server.url + "/v1/run", json={"code": "1", "messages": messages})
    assert bad.status_code == 400 and "one of the two" in bad.json()["error"]["message"]
    off = httpx.post(server.url + "/v1/run", json={"code": "print(1)"})  # started without allow_run
    assert off.status_code == 403 and "--allow-run" in off.json()["error"]["message"]
    assert httpx.get(server.url + "/v1/web/config").json()["allow_run"] is False


def test_page_and_key(model, tok):
    with Server(model, tok, api_key="sesame", allow_run=True) as s:
        page = httpx.get(s.url + "/")
        assert page.status_code == 200 and "<script src=\"/static/app.js\">" in page.text
        assert httpx.get(s.url + "/static/app.js").status_code == 200
        config = httpx.get(s.url + "/v1/web/config").json()
        assert config["needs_key"] and config["model"] is None
        assert httpx.post(s.url + "/v1/run", json={"code": "print(1)"}).status_code == 401
        assert httpx.post(s.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}).status_code == 401
        ok = httpx.post(s.url + "/v1/run", json={"code": "print(1)"}, headers={"Authorization": "Bearer sesame"}, timeout=60)
        assert ok.json()["stdout"] == "1\n"
