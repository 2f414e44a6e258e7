"""`codegen serve` over real HTTP on a loopback port: OpenAI shapes, streaming, errors, batching."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

import codegen
from helpers import TOKENIZER_DIR

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.skipif(not os.path.isdir(TOKENIZER_DIR), reason="CodeGen tokenizer files not in ../shared")

from serving import Server  # noqa: E402


def post(server, body, path="/v1/completions", **kw):
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def greedy_reference(model, tok, prompt, n_tokens):
    [c] = codegen.complete(model, tok, prompt, codegen.CompletionOptions(temperature=0, max_new_tokens=n_tokens))
    return c


def test_health_models_and_copilot_routes(server):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    models = httpx.get(server.url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "codegen-test"
    tok = httpx.get(server.url + "/copilot_internal/v2/token").json()
    assert tok["token"] and tok["expires_at"] > time.time() + 10 * 365 * 86400


def test_completion_shape_and_usage(server, model, tok):
    r = post(server, {"prompt": "def fibonacci(n):", "max_tokens": 12, "temperature": 0, "logprobs": 2})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == "codegen-test"
    [choice] = body["choices"]
    ref = greedy_reference(model, tok, "def fibonacci(n):", 12)
    assert choice["text"] == ref.text and choice["index"] == 0 and choice["finish_reason"] == ref.finish_reason
    lp = choice["logprobs"]
    shown = len(ref.token_ids) - (ref.token_ids[-1] == tok.eos_token_id)  # EOS has no text: not shown
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == shown
    assert all(len(t) <= 2 for t in lp["top_logprobs"]) and lp["text_offset"][0] == 0
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(tok.encode("def fibonacci(n):"))
    assert usage["completion_tokens"] == len(ref.token_ids) and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def read_stream(server, body):
    chunks = []
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks.append(line[6:])
    assert chunks[-1] == "[DONE]"
    return [json.loads(c) for c in chunks[:-1]]


@pytest.mark.parametrize("extra", [{}, {"stop": ["e", "\n"]}, {"n": 2, "temperature": 0.7, "seed": 3}])
def test_streamed_text_equals_non_streamed(server, extra):
    body = {"prompt": ["def fibonacci(n):", "import os\n"], "max_tokens": 16, "temperature": 0, **extra}
    whole = post(server, body).json()["choices"]
    chunks = read_stream(server, {**body, "stream": True})
    for c in whole:
        mine = [ch["choices"][0] for ch in chunks if ch["choices"][0]["index"] == c["index"]]
        assert "".join(m["text"] for m in mine) == c["text"]
        assert mine[-1]["finish_reason"] == c["finish_reason"] and all(m["finish_reason"] is None for m in mine[:-1])
    assert all(ch["object"] == "text_completion" for ch in chunks)


def test_n_list_prompts_and_token_prompts(server, model, tok):
    body = post(server, {"prompt": ["a = 1", "b = 2"], "max_tokens": 5, "n": 2, "temperature": 0.9, "seed": 1}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    ids = tok.encode("def f(x):")
    by_ids = post(server, {"prompt": ids, "max_tokens": 6, "temperature": 0}).json()
    by_text = post(server, {"prompt": "def f(x):", "max_tokens": 6, "temperature": 0}).json()
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
    multi = post(server, {"prompt": [ids, tok.encode("x")], "max_tokens": 3, "temperature": 0}).json()
    assert len(multi["choices"]) == 2 and multi["usage"]["prompt_tokens"] == len(ids) + 1


def test_stop_sequences(server):
    free = post(server, {"prompt": "def fibonacci(n):", "max_tokens": 20, "temperature": 0}).json()["choices"][0]["text"]
    stop = free[5:8]
    got = post(server, {"prompt": "def fibonacci(n):", "max_tokens": 20, "temperature": 0, "stop": stop}).json()["choices"][0]
    assert got["text"] == free[: free.index(stop)] and got["finish_reason"] == "stop"


def test_echo_and_prompt_logprobs(server, tok):
    body = post(server, {"prompt": "def f(x):", "max_tokens": 4, "temperature": 0, "echo": True, "logprobs": 1}).json()
    c = body["choices"][0]
    assert c["text"].startswith("def f(x):")
    n_prompt = len(tok.encode("def f(x):"))
    assert len(c["logprobs"]["tokens"]) == n_prompt + 4
    assert c["logprobs"]["token_logprobs"][0] is None and all(x is not None for x in c["logprobs"]["token_logprobs"][1:])
    assert "".join(c["logprobs"]["tokens"][:n_prompt]) == "def f(x):"


def test_seed_makes_sampling_reproducible(server):
    body = {"prompt": "import", "max_tokens": 10, "temperature": 1.0, "seed": 42, "n": 2}
    assert post(server, body).json()["choices"] == post(server, body).json()["choices"]


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "temperature": 3}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "logprobs": 9}, "logprobs"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": [99999999]}, "prompt"),
    ({"prompt": "x " * 200, "max_tokens": 100}, "max_tokens"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "presence_penalty": 1.0}, "presence_penalty"),
    ({"prompt": "x", "n": 3, "best_of": 2}, "best_of"),
    ({"prompt": "x", "n": 100}, "n"),
])
def test_bad_requests_are_400_with_the_parameter(server, body, param):
    r = post(server, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_suffix_message_says_no_infilling(server):
    assert "cannot fill in the middle" in post(server, {"prompt": "x", "suffix": "y"}).json()["error"]["message"]


def test_unknown_client_fields_are_ignored_and_engines_route(server):
    body = {"prompt": "def f():", "max_tokens": 3, "temperature": 0, "extra": {"language": "python"}, "nwo": "a/b"}
    for engine in ("codegen", "copilot-codex"):
        r = post(server, body, path=f"/v1/engines/{engine}/completions")
        assert r.status_code == 200 and r.json()["model"] == engine


def test_best_of_returns_n(server):
    body = post(server, {"prompt": "x =", "max_tokens": 4, "n": 2, "best_of": 4, "temperature": 0.8, "seed": 0}).json()
    assert len(body["choices"]) == 2 and body["choices"][0]["logprobs"] is None


def test_api_key(model, tok):
    with Server(model, tok, api_key="sekret") as s:
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, headers={"Authorization": "Bearer sekret"})
        assert ok.status_code == 200
        assert httpx.get(s.url + "/health").status_code == 200


def test_full_queue_answers_429(model, tok):
    with Server(model, tok, max_batch=1, max_queue=1) as s:
        async def go():
            async with httpx.AsyncClient(timeout=120) as client:
                body = {"prompt": "def f():", "max_tokens": 200, "temperature": 0}
                return await asyncio.gather(*[client.post(s.url + "/v1/completions", json=body) for _ in range(6)])
        responses = asyncio.run(go())
        codes = sorted(r.status_code for r in responses)
        assert 429 in codes and 200 in codes
        busy = next(r for r in responses if r.status_code == 429).json()["error"]
        assert busy["type"] == "rate_limit_error" and "server busy" in busy["message"]
        with httpx.Client() as c:
            assert c.get(s.url + "/health").json()["queued_requests"] == 0


def test_disconnect_mid_stream_frees_the_slot(server):
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json={"prompt": "def f():", "max_tokens": 240, "temperature": 0, "stream": True}) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert server.batcher.active == 1
    deadline = time.time() + 10
    while server.batcher.active and time.time() < deadline:
        time.sleep(0.05)
    assert server.batcher.active == 0


def test_50_concurrent_requests(server, model, tok):
    prompts = [f"def f{i}(x):\n    return x * {i}" for i in range(50)]

    async def go():
        async with httpx.AsyncClient(timeout=300) as client:
            reqs = [client.post(server.url + "/v1/completions", json={"prompt": p, "max_tokens": 8, "temperature": 0})
                    for p in prompts]
            return await asyncio.gather(*reqs)

    t = time.time()
    responses = asyncio.run(go())
    assert all(r.status_code == 200 for r in responses)
    for p, r in zip(prompts[:10], responses[:10]):
        assert r.json()["choices"][0]["text"] == greedy_reference(model, tok, p, 8).text
    assert time.time() - t < 120
    assert server.batcher.steps > 0


def test_openai_client(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    r = client.completions.create(model="codegen-test", prompt="def f(x):", max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
    text = "".join(ch.choices[0].text for ch in client.completions.create(
        model="codegen-test", prompt="def f(x):", max_tokens=8, temperature=0, stream=True) if ch.choices)
    assert text == r.choices[0].text


def _joined(chunks, index, key):
    return [x for ch in chunks for c in ch["choices"] if c["index"] == index and c["logprobs"] for x in c["logprobs"][key]]


@pytest.mark.parametrize("extra", [{}, {"stop": ["(", "\n"]}, {"n": 2, "temperature": 0.9, "seed": 5, "stop": [" "]}])
def test_streamed_logprobs_equal_non_streamed(server, extra):
    body = {"prompt": "def fibonacci(n):", "max_tokens": 16, "temperature": 0, "logprobs": 2, **extra}
    whole = post(server, body).json()["choices"]
    chunks = read_stream(server, {**body, "stream": True})
    for c in whole:
        lp = c["logprobs"]
        for key in ("tokens", "token_logprobs", "text_offset", "top_logprobs"):
            assert _joined(chunks, c["index"], key) == lp[key], key
        # offsets index the returned text, and the tokens shown make it up (the stop string's is left out)
        assert "".join(lp["tokens"]).startswith(c["text"]) and len("".join(lp["tokens"])) - len(c["text"]) < 8
        assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
        assert all(off < len(c["text"]) for off in lp["text_offset"])


def test_repetition_penalty_top_k_and_min_tokens_extensions(server, model, tok):
    prompt = "def fibonacci(n):"
    for extra, opts in (({"repetition_penalty": 1.5}, {"repetition_penalty": 1.5}),
                        ({"top_k": 3, "temperature": 0.9, "seed": 2}, {"top_k": 3, "temperature": 0.9, "seed": 2})):
        body = {"prompt": prompt, "max_tokens": 12, "temperature": 0, **extra}
        [c] = codegen.complete(model, tok, prompt, codegen.CompletionOptions(
            **{"max_new_tokens": 12, "top_p": 1.0, "top_k": 0, "temperature": 0, **opts}))
        assert post(server, body).json()["choices"][0]["text"] == c.text
    free = post(server, {"prompt": prompt, "max_tokens": 12, "temperature": 0}).json()["choices"][0]["text"]
    stop = free[0]  # the first character: the completion stops at once...
    body = {"prompt": prompt, "max_tokens": 12, "temperature": 0, "stop": [stop]}
    early = post(server, body).json()
    assert early["choices"][0]["text"] == "" and early["usage"]["completion_tokens"] == 1
    late = post(server, {**body, "min_tokens": 5}).json()  # ...but not before min_tokens
    assert late["usage"]["completion_tokens"] >= 5 and late["choices"][0]["text"].startswith(free[:len(free) // 3])
    [c] = codegen.complete(model, tok, prompt, codegen.CompletionOptions(max_new_tokens=12, temperature=0, stop=[stop],
                                                                         min_new_tokens=5))
    assert late["choices"][0]["text"] == c.text
    assert post(server, {"prompt": "x", "min_tokens": -1}).json()["error"]["param"] == "min_tokens"
    assert post(server, {"prompt": "x", "repetition_penalty": 0}).json()["error"]["param"] == "repetition_penalty"


def _cli_samples(text: str, n: int) -> list[str]:
    parts = text.split("--- completion ")[1:]
    assert len(parts) == n
    return [p.split(" ---\n", 1)[1][:-1] for p in parts]  # each ends with the newline the CLI adds


def test_one_seed_gives_the_same_samples_everywhere(server, model, tok, tmp_path, capsys):
    """complete, stream_complete, `codegen complete` and the server (streamed or not, alone or beside other
    requests) give the same samples for the same seed and n, also when a stop string ends some early."""
    from codegen.cli import main

    prompt = "def f(x):"
    opts = dict(max_new_tokens=10, temperature=0.8, top_p=0.95, top_k=50, n=3, seed=11)
    texts = [c.text for c in codegen.complete(model, tok, prompt, codegen.CompletionOptions(**opts))]
    assert len(set(texts)) == 3
    deltas = list(codegen.stream_complete(model, tok, prompt, codegen.CompletionOptions(**opts)))
    assert ["".join(d.text for d in deltas if d.index == i) for i in range(3)] == texts

    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    args = ["complete", prompt, "--model", str(tmp_path), "--max-new-tokens", "10", "--temperature", "0.8",
            "--top-p", "0.95", "--top-k", "50", "--n", "3", "--seed", "11", "--no-echo"]
    assert main(args) == 0
    assert _cli_samples(capsys.readouterr().out, 3) == texts

    body = {"prompt": prompt, "max_tokens": 10, "temperature": 0.8, "top_p": 0.95, "top_k": 50, "n": 3, "seed": 11}
    assert [c["text"] for c in post(server, body).json()["choices"]] == texts
    chunks = read_stream(server, {**body, "stream": True})
    assert ["".join(c["text"] for ch in chunks for c in ch["choices"] if c["index"] == i) for i in range(3)] == texts

    others = [{"prompt": f"import m{i}", "max_tokens": 14, "temperature": 1.0, "n": 2} for i in range(4)]

    async def busy(target):
        async with httpx.AsyncClient(timeout=120) as client:
            rs = await asyncio.gather(*[client.post(server.url + "/v1/completions", json=b) for b in [others[0], target, *others[1:]]])
            return rs[1].json()

    assert [c["text"] for c in asyncio.run(busy(body))["choices"]] == texts

    # A stop string that ends some samples early leaves the others' draws alone.
    stop = next(t[2:4] for t in texts if len(t) > 4 and t[2:4].strip())
    cut = [t[: t.index(stop)] if stop in t else t for t in texts]
    assert any(c != t for c, t in zip(cut, texts))
    got = [c.text for c in codegen.complete(model, tok, prompt, codegen.CompletionOptions(**opts, stop=[stop]))]
    assert got == cut
    assert [c["text"] for c in asyncio.run(busy({**body, "stop": [stop]}))["choices"]] == cut
    assert main(args + ["--stop", stop]) == 0
    assert _cli_samples(capsys.readouterr().out, 3) == cut
