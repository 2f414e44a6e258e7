"""KVCache: the batch's keys and values with a length per row, and the operations the engine runs on
them (replicate, keep, extend right-aligned, compact, grow), checked against a real model's logits."""

from __future__ import annotations

import pytest
import torch

import codegen
from codegen.engine import KVCache

CFG = dict(vocab_size=200, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=128)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return codegen.CodeGenForCausalLM(codegen.CodeGenConfig(**CFG)).eval()


def ids(n, seed):
    return torch.randint(0, 200, (1, n), generator=torch.Generator().manual_seed(seed))


def prefill(model, x, capacity):
    cache = KVCache.for_model(model, 1, capacity)
    mask = cache.attend(x.shape[1])
    model.transformer(input_ids=x, past_key_values=cache, attention_mask=mask)
    return cache


def step(model, cache, token, position):
    """One decode step through the engine's cache protocol: logits (B, V)."""
    mask = cache.attend(1)
    B = cache.batch_size
    return model(input_ids=torch.full((B, 1), token), past_key_values=cache, attention_mask=mask,
                 position_ids=torch.tensor(position).view(B, 1)).logits[:, -1]


def full(model, x, token):
    return model(torch.cat([x, torch.tensor([[token]])], dim=1)).logits[:, -1]


@torch.inference_mode()
def test_extend_right_aligns_rows_of_different_lengths(model):
    a, b = ids(5, 1), ids(9, 2)
    cache = prefill(model, a, 6)
    cache.extend(prefill(model, b, 9))  # longer: the first row moves right
    assert cache.length == 9 and cache.lengths().tolist() == [5, 9] and cache.batch_size == 2
    assert cache.suffix_start(0) == 4 and cache.suffix_start(1) == 0
    cache.reserve(1)
    got = step(model, cache, 7, [5, 9])
    torch.testing.assert_close(got[0], full(model, a, 7)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], full(model, b, 7)[0], rtol=1e-5, atol=1e-5)
    assert cache.lengths().tolist() == [6, 10]


@torch.inference_mode()
def test_replicate_keep_and_compact(model):
    a, b = ids(12, 3), ids(3, 4)
    cache = prefill(model, a, 12)
    cache.extend(prefill(model, b, 3))
    cache.replicate(2)
    assert cache.batch_size == 4 and cache.lengths().tolist() == [12, 12, 3, 3]
    cache.keep([2, 3])  # the long rows finish: 9 leading columns are unused now
    assert cache.unused_prefix() == 9
    cache.reserve(1)  # full: the unused columns are dropped rather than the cache grown
    assert cache.capacity == 12 and cache.length == 3
    got = step(model, cache, 5, [3, 3])
    torch.testing.assert_close(got, full(model, b, 5).expand(2, -1), rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_reserve_grows_when_every_column_is_used(model):
    x = ids(4, 5)
    cache = prefill(model, x, 4)
    cache.reserve(1)
    assert cache.capacity >= 5 and cache.length == 4 and cache.lengths().tolist() == [4]
    torch.testing.assert_close(step(model, cache, 9, [4]), full(model, x, 9), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"KVCache holds \d+ positions; \d+ used \+ 100 new do not fit"):
        cache.attend(100)


def test_attend_returns_none_when_every_column_is_attended():
    cache = KVCache(1, 2, 4, 8, 2)
    assert cache.attend(3) is None
    cache.advance(3)
    assert cache.attend(torch.tensor([[0, 1], [1, 1]])).tolist() == [[1, 1, 1, 0, 1], [1, 1, 1, 1, 1]]


def test_truncate_and_alias():
    from codegen.engine import KVCache

    c = KVCache(1, 1, 1, 8, 2)
    c.mark(5)
    c.update(0, torch.ones(1, 1, 5, 2), torch.ones(1, 1, 5, 2))
    c.advance(5)
    a = c.alias()
    a.replicate(3)
    assert a.batch_size == 3 and c.batch_size == 1  # the alias's copies leave the original as it was
    c.truncate(2)
    assert c.length == 2 and c.lengths().tolist() == [2] and not c.mask[0, 2:].any()
    with pytest.raises(ValueError, match=r"length must be in \[0, 2\]"):
        c.truncate(3)


def test_request_kv_must_be_one_row_shorter_than_the_prompt():
    from codegen.engine import KVCache, Request, SamplingParams

    c = KVCache(1, 1, 1, 8, 2)
    c.length = 3
    with pytest.raises(ValueError, match="one-row cache"):
        Request([[1, 2, 3]], SamplingParams(), kv=c)
    with pytest.raises(ValueError, match="one-row cache"):
        Request([[1, 2, 3, 4], [5, 6, 7, 8]], SamplingParams(), kv=c)
    assert Request([[1, 2, 3, 4]], SamplingParams(), kv=c).kv is c
