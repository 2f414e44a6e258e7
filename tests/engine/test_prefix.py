"""The prefix cache: reuse gives the ids of a full prefill, partial prefixes, LRU eviction within
the byte bound, per-request pools and the scheduler's bookkeeping."""

from __future__ import annotations

import pytest
import torch

from codegen.engine import PrefixCache, Request, SamplingParams, Scheduler, TokenEvent
from codegen.engine.prefix import common_length
from helpers import sharp_lm

GREEDY = dict(temperature=0.0)


@pytest.fixture(scope="module")
def lm():
    return sharp_lm(3, vocab_size=200, scale=5.0)


def run(scheduler: Scheduler, *requests: Request) -> dict[tuple[int, int], list[int]]:
    for r in requests:
        scheduler.add(r)
    out: dict[tuple[int, int], list[int]] = {}
    for events in scheduler.run():
        for e in events:
            if isinstance(e, TokenEvent):
                out.setdefault((e.request.id, e.index), []).append(e.token)
    return out


def ids(n: int, seed: int) -> list[int]:
    return torch.randint(1, 199, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def kv_bytes(lm, tokens: int) -> int:
    c = lm.config
    return 2 * c.n_layer * c.n_head * c.head_dim * tokens * 4


def test_common_length():
    assert common_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_length([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_length([], [1]) == 0 and common_length([2], [1]) == 0
    a = list(range(1000))
    assert common_length(a, a[:637] + [5000] + a[638:]) == 637


def test_reuse_gives_the_ids_of_a_full_prefill(lm):
    pool = PrefixCache(64 << 20)
    cached, plain = Scheduler(lm, prefix_cache=pool), Scheduler(lm)
    base = ids(40, 0)
    params = SamplingParams(max_new_tokens=12, stop_token_ids=(), **GREEDY)
    first = Request([base], params)
    out = run(cached, first)[first.id, 0]
    assert first.cached_tokens == [0] and pool.misses == 1
    # The finished output (prompt + generated but the last) is stored, covering the prompt's entry.
    assert len(pool) == 1 and pool.stats()["bytes"] == kv_bytes(lm, 40 + 11)
    for extension in (out[:11] + ids(7, 1), ids(5, 2), out[:4]):
        prompt = base + extension
        r, ref = Request([prompt], params), Request([prompt], params)
        got = run(cached, r)[r.id, 0]
        assert got == run(plain, ref)[ref.id, 0]
        assert r.cached_tokens == [min(len(prompt) - 1, 40 + common_length(extension, out[:11]))]
    # A prompt that diverges inside a stored one reuses the common part.
    r = Request([base[:30] + ids(6, 3)], params)
    ref = Request([base[:30] + ids(6, 3)], params)
    assert run(cached, r)[r.id, 0] == run(plain, ref)[ref.id, 0] and r.cached_tokens == [30]


def test_multi_prompt_requests_and_samples_reuse_each_prompt(lm):
    pool = PrefixCache(64 << 20)
    cached, plain = Scheduler(lm, prefix_cache=pool), Scheduler(lm)
    a, b = ids(20, 4), ids(33, 5)
    warm = Request([a], SamplingParams(max_new_tokens=2, **GREEDY))
    run(cached, warm)
    params = SamplingParams(max_new_tokens=9, stop_token_ids=(), temperature=0.9, n=3, seed=11)
    prompts = [a + ids(4, 6), b, a[:10]]
    r, ref = Request(prompts, params), Request(prompts, params)
    assert run(cached, r) == {(r.id, i): v for (_, i), v in run(plain, ref).items()}
    assert r.cached_tokens == [20, 0, 9]


def test_joins_a_running_batch(lm):
    """A request admitted with a cached prefix while others decode gets the same ids as alone."""
    pool = PrefixCache(64 << 20)
    s = Scheduler(lm, prefix_cache=pool)
    base = ids(30, 7)
    run(s, Request([base], SamplingParams(max_new_tokens=1, **GREEDY)))
    running = s.add(Request([ids(12, 8)], SamplingParams(max_new_tokens=20, stop_token_ids=(), **GREEDY)))
    s.step(), s.step()
    late = Request([base + ids(3, 9)], SamplingParams(max_new_tokens=10, stop_token_ids=(), **GREEDY))
    out = run(s, late)
    alone = Request([base + ids(3, 9)], SamplingParams(max_new_tokens=10, stop_token_ids=(), **GREEDY))
    assert out[late.id, 0] == run(Scheduler(lm), alone)[alone.id, 0] and late.cached_tokens == [30]
    assert running.done


def test_lru_eviction_within_the_bound(lm):
    pool = PrefixCache(kv_bytes(lm, 50))
    s = Scheduler(lm, prefix_cache=pool)
    p = SamplingParams(max_new_tokens=1, **GREEDY)  # stored: the prompt (the one token has no KV)
    first, second, third = ids(20, 10), ids(20, 11), ids(20, 12)
    run(s, Request([first], p), Request([second], p))
    assert len(pool) == 2 and pool.bytes == kv_bytes(lm, 40)
    r = Request([first + [1]], p)
    run(s, r)  # a hit: `first` becomes the most recent; its 21-token extension... is stored, over the bound
    assert r.cached_tokens == [20]
    assert pool.bytes <= pool.max_bytes
    run(s, Request([third], p))
    assert pool.bytes <= pool.max_bytes and pool.evictions >= 1
    kept = {k[:20] for k in pool._entries}
    assert tuple(third) in kept and tuple(second) not in kept  # the least recently used went first
    big = PrefixCache(kv_bytes(lm, 10))
    run(Scheduler(lm, prefix_cache=big), Request([ids(20, 13)], p))
    assert len(big) == 0 and big.bytes == 0  # larger than the whole bound: not kept


def test_request_pool_overrides_and_prompt_logprobs_skip_it(lm):
    own = PrefixCache(64 << 20)
    s = Scheduler(lm)  # no pool of its own
    base = ids(25, 14)
    run(s, Request([base], SamplingParams(max_new_tokens=1, **GREEDY), prefix_cache=own))
    assert len(own) == 1
    r = Request([base + [3, 4]], SamplingParams(max_new_tokens=1, **GREEDY), prefix_cache=own)
    run(s, r)
    assert r.cached_tokens == [25]
    r = Request([base + [3, 4]], SamplingParams(max_new_tokens=1, prompt_logprobs=True, logprobs=0, **GREEDY),
                prefix_cache=own)
    run(s, r)
    assert r.cached_tokens == [0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_bytes"):
        PrefixCache(-1)
    with pytest.raises(ValueError, match="min_tokens"):
        PrefixCache(10, min_tokens=0)
    pool = PrefixCache(1 << 20)
    with pytest.raises(ValueError, match="3 positions"):
        pool.insert([1, 2, 3], torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))
