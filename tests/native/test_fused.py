"""The native batch-1 decode step (native/fused.py, decode.cpp): the same logits and cache as the module path,
used by the engine where it applies and nowhere else, and clear errors for what it cannot take."""

from __future__ import annotations

import time

import pytest
import torch

import codegen
from codegen.engine import KVCache, Request, SamplingParams, Scheduler, TokenEvent
from codegen.engine.batcher import ContinuousBatcher
from codegen.lora import apply_lora
from codegen.native import kernels
from codegen.native.fused import FusedDecoder
from helpers import TINY_CONFIGS, count_native_passes

kernels.load()
native = pytest.mark.skipif(kernels.decode_step is None, reason="no AVX-512 CPU or no C++ compiler here")
bf16_native = pytest.mark.skipif(kernels._gemv is None, reason="no AVX512-BF16 CPU or no C++ compiler here")

# head_dim 24 (demo model, not a multiple of 16), 80 (2B) and 16; partial and full rotary; n_inner set.
SHAPES = {
    "demo_like": dict(vocab_size=300, n_embd=96, n_layer=2, n_head=4, rotary_dim=12, n_positions=80),
    **{k: TINY_CONFIGS[k] for k in ("h4_d16_r8", "h8_d80_r64", "h4_d32_r32")},
}


def make(cfg: dict, dtype=torch.float32, seed=0) -> codegen.CodeGenForCausalLM:
    torch.manual_seed(seed)
    model = codegen.CodeGenForCausalLM(codegen.CodeGenConfig(**cfg)).eval()
    with torch.no_grad():  # weights off their init so that every term matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.to(dtype)


def run_both(model, prompt_len: int, steps: int, seed=0):
    """Logits of `steps` decode steps by the module path and by the fused step, and both caches."""
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (1, prompt_len), generator=g)
    fused = FusedDecoder.create(model)
    assert fused is not None
    caches = [KVCache.for_model(model, 1, prompt_len + steps) for _ in range(2)]
    ref, got = [], []
    with torch.inference_mode():
        for c in caches:
            model.transformer(input_ids=ids, past_key_values=c)
        for _ in range(steps):
            tok = int(torch.randint(0, V, (), generator=g))
            pos = caches[0].length
            ref.append(model(input_ids=torch.tensor([[tok]]), past_key_values=caches[0]).logits[:, -1])
            got.append(fused(tok, pos, caches[1]))
    return torch.cat(ref), torch.cat(got), caches


@native
@pytest.mark.parametrize("shape", list(SHAPES))
def test_fp32_step_equals_the_module_path(shape):
    model = make(SHAPES[shape])
    # 20 steps after 7 prompt tokens: softmax lengths cross the 16-wide blocks
    ref, got, (c_ref, c_got) = run_both(model, 7, 20)
    assert got.shape == ref.shape == (20, model.lm_head.out_features) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert c_got.length == c_ref.length == 27
    torch.testing.assert_close(c_got.key, c_ref.key, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c_got.value, c_ref.value, rtol=1e-5, atol=1e-5)


@bf16_native
@pytest.mark.parametrize("shape", ["demo_like", "h4_d32_r32"])
def test_bf16_step_follows_the_module_path(shape):
    model = make(SHAPES[shape], torch.bfloat16)
    ref, got, (c_ref, c_got) = run_both(model, 5, 12)
    # every intermediate is rounded to bf16 where torch rounds it; only fp32 summation order differs,
    # which can move a value across a bf16 rounding boundary: a few bf16 ulps at these magnitudes
    assert (got - ref).abs().max() <= 4 * 2 ** -8 * ref.abs().max()
    assert (c_got.key.float() - c_ref.key.float()).abs().max() <= 4 * 2 ** -8 * c_ref.key.float().abs().max()
    # greedy picks agree up to near-ties of the bf16 logits
    picked = ref.gather(1, got.argmax(-1, keepdim=True))[:, 0]
    assert (ref.max(-1).values - picked).max() <= 4 * 2 ** -8 * ref.abs().max()


@native
def test_engine_uses_it_for_one_row_only(monkeypatch):
    model = make(SHAPES["h4_d32_r32"])
    calls = count_native_passes(monkeypatch)
    x = torch.randint(0, 1000, (1, 6), generator=torch.Generator().manual_seed(1))
    fast = model.generate(x, max_new_tokens=30, pad_token_id=0, eos_token_id=[])
    assert len(calls) == 29  # every step after the prefill
    calls.clear()
    model.generate(torch.cat([x, x]), max_new_tokens=5, pad_token_id=0, eos_token_id=[])
    assert not calls  # two rows: the module path
    left_padded = torch.tensor([[0, 0, 1, 1, 1, 1]])
    holed = torch.tensor([[1, 0, 1, 1, 1, 1]])
    fast_padded = model.generate(x, attention_mask=left_padded, max_new_tokens=5, pad_token_id=0, eos_token_id=[])
    assert len(calls) == 4  # left padding: natively, attending from the first real token
    calls.clear()
    fast_holed = model.generate(x, attention_mask=holed, max_new_tokens=5, pad_token_id=0, eos_token_id=[])
    assert not calls  # a hole in the mask: the module path
    monkeypatch.setattr(FusedDecoder, "create", classmethod(lambda cls, *a, **k: None))
    assert torch.equal(fast, model.generate(x, max_new_tokens=30, pad_token_id=0, eos_token_id=[]))
    assert torch.equal(fast_padded, model.generate(x, attention_mask=left_padded, max_new_tokens=5, pad_token_id=0, eos_token_id=[]))
    assert torch.equal(fast_holed, model.generate(x, attention_mask=holed, max_new_tokens=5, pad_token_id=0, eos_token_id=[]))


def test_suffix_start():
    cache = KVCache(1, 5, 4, 4, 2)
    cache.mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    cache.length = 3
    assert cache.suffix_start(0) == 0 and cache.suffix_start(1) == 2 and cache.suffix_start(1, extra=1) == 2
    assert cache.suffix_start(2) is None and cache.suffix_start(3) is None and cache.suffix_start(4) is None
    assert cache.suffix_start(0, extra=1) is None  # the next column is not attended yet


@native
def test_left_padded_step_equals_the_module_path():
    model = make(SHAPES["demo_like"])
    ids = torch.randint(0, 300, (1, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    fused = FusedDecoder.create(model)
    caches = [KVCache.for_model(model, 1, 20) for _ in range(2)]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        for c in caches:
            model.transformer(input_ids=ids, past_key_values=c, attention_mask=mask, position_ids=pos)
        for step in range(8):
            tok, p = 5 + step, 6 + step
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
            ref = model(input_ids=torch.tensor([[tok]]), past_key_values=caches[0], attention_mask=mask,
                        position_ids=torch.tensor([[p]])).logits[:, -1]
            got = fused(tok, p, caches[1], start=3)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@native
def test_server_batcher_uses_it_for_a_lone_request(monkeypatch):
    from codegen.demo import demo_path

    model = make(SHAPES["h4_d32_r32"])
    tok = codegen.CodeGenTokenizerFast.from_pretrained(demo_path())

    def run():
        batcher = ContinuousBatcher(model, tok, max_batch=4)
        out = []
        batcher.submit(Request([[3, 1, 4, 1, 5]], SamplingParams(max_new_tokens=12, temperature=0)),
                       lambda e: out.append(e.token) if isinstance(e, TokenEvent) else None)
        batcher.start()
        deadline = time.time() + 30
        while len(out) < 12 and time.time() < deadline:
            time.sleep(0.01)
        batcher.close()
        return out

    calls = count_native_passes(monkeypatch)
    fast = run()
    assert len(calls) == 11 and len(fast) == 12
    monkeypatch.setattr(FusedDecoder, "create", classmethod(lambda cls, *a, **k: None))
    assert run() == fast


@native
def test_a_batch_that_shrinks_to_one_row_continues_natively(monkeypatch):
    model = make(SHAPES["h4_d16_r8"])
    x = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(2))

    def run():
        s = Scheduler(model)
        requests = [s.add(Request(x[:1], SamplingParams(max_new_tokens=1, temperature=0))),  # leaves after one token
                    s.add(Request(x[1:], SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=())))]
        steps = list(s.run())
        return [[e.token for step in steps for e in step if e.request is r] for r in requests], len(steps)

    calls = count_native_passes(monkeypatch)
    (first, second), steps = run()
    assert len(calls) == 11  # the second request's steps after the first left, natively
    assert steps < 12  # in bursts: several tokens a step
    monkeypatch.setattr(FusedDecoder, "create", classmethod(lambda cls, *a, **k: None))
    (slow_first, slow_second), slow_steps = run()
    assert (first, second) == (slow_first, slow_second) and len(first) == 1 and len(second) == 12 and slow_steps == 12


@native
def test_where_it_does_not_apply():
    cfg = SHAPES["h4_d16_r8"]
    assert FusedDecoder.create(make(cfg)) is not None
    assert FusedDecoder.create(make(cfg).train()) is None  # dropout
    assert FusedDecoder.create(make(cfg).half()) is None
    assert FusedDecoder.create(make({**cfg, "activation_function": "relu"})) is None
    lora = make(cfg)
    apply_lora(lora, rank=2, alpha=4)
    assert FusedDecoder.create(lora.eval()) is None  # adapters are not in the native step
    hooked = make(cfg)
    hooked.transformer.h[0].mlp.register_forward_hook(lambda *a: None)
    assert FusedDecoder.create(hooked) is None  # a user's hook must still run


@native
def test_bad_arguments_name_the_problem():
    model = make(SHAPES["h4_d16_r8"])
    fused = FusedDecoder.create(model)
    cache = KVCache.for_model(model, 1, 2)
    with pytest.raises(ValueError, match="token id 300 outside the embedding's \\[0, 300\\)"):
        fused(300, 0, cache)
    with pytest.raises(ValueError, match="position 64 outside \\[0, n_positions = 64\\)"):
        fused(1, 64, cache)
    with pytest.raises(ValueError, match="start 1 outside \\[0, cache length 0\\]"):
        fused(1, 0, cache, start=1)
    with pytest.raises(ValueError, match="batch-1 KVCache"):
        fused(1, 0, KVCache.for_model(model, 2, 2))
    fused(1, 0, cache)
    fused(2, 1, cache)
    with pytest.raises(ValueError, match="KVCache holds 2 positions; 2 used \\+ 1 new do not fit"):
        fused(3, 2, cache)
    model.to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="the model's weights moved"):
        fused(1, 0, KVCache.for_model(model, 1, 2))
