"""Bursts: a lone row, greedy or sampled, decoding several tokens per scheduler step in one native call
(Scheduler._burst, Backend.decode_picks, FusedDecoder.decode_picks, decode.cpp's picks). Every test
compares against the same scheduler with bursts off (burst=1: one native pass per step, the pick in
Python), which must give the same tokens, events, cache and prefix-cache contents."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

import codegen
from codegen.demo import demo_path
from codegen.engine import KVCache, PrefixCache, Request, SamplingParams, Scheduler, TokenEvent
from codegen.native import kernels
from codegen.native.fused import FusedDecoder, Picks
from codegen.quant import QuantLinear, QuantSpec
from codegen.quant.convert import quantize_model
from helpers import count_native_passes, sharp_lm

kernels.load()
pytestmark = pytest.mark.skipif(kernels.decode_step is None, reason="no native decode step here (no C++ compiler)")

CFG = dict(vocab_size=300, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=96)


def make(dtype="float32", seed=0, **cfg) -> codegen.CodeGenForCausalLM:
    torch.manual_seed(seed)
    model = codegen.CodeGenForCausalLM(codegen.CodeGenConfig(**{**CFG, **cfg})).eval()
    with torch.no_grad():  # off the init, sharp enough that greedy paths vary
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    if dtype in ("int8", "int4"):
        return quantize_model(model, QuantSpec.parse(dtype))
    return model.to(getattr(torch, dtype))


def events(model, params: SamplingParams, prompt, burst: int | None, tokenizer=None, **kw):
    s = Scheduler(model, tokenizer, burst=burst, **kw)
    request = s.add(Request([prompt], params))
    steps = list(s.run())
    got = [(e.index, e.token, e.text, e.offset, e.finish_reason) for step in steps for e in step if isinstance(e, TokenEvent)]
    return got, len(steps), request


DTYPES = ["float32", "bfloat16", "int8", "int4"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_bursts_give_the_tokens_of_single_steps(dtype, monkeypatch):
    model = make(dtype)
    prompt = [5, 17, 42, 7, 99]
    free, _, _ = events(model, SamplingParams(max_new_tokens=40, temperature=0, stop_token_ids=()), prompt, burst=1)
    stop = tuple(sorted({t for _, t, *_ in free[2:12]}))  # ids the free run picks early
    cases = [
        SamplingParams(max_new_tokens=40, temperature=0, stop_token_ids=()),
        # those ids as stop ids, banned for the first 20 tokens: then one ends a burst midway
        SamplingParams(max_new_tokens=60, min_new_tokens=20, temperature=0, stop_token_ids=stop),
        SamplingParams(max_new_tokens=30, temperature=0, stop_token_ids=(), suppress_tokens=(1, 2, 3, 250, 299)),
        SamplingParams(max_new_tokens=30, temperature=0, stop_token_ids=(), vocab_limit=120),
    ]
    passes = count_native_passes(monkeypatch)
    for params in cases:
        passes.clear()
        fast, fast_steps, _ = events(model, params, prompt, burst=None)
        burst_passes = len(passes)
        slow, slow_steps, _ = events(model, params, prompt, burst=1)
        assert fast == slow and len(fast) == slow_steps
        assert burst_passes == len(passes) - burst_passes == len(fast) - 1  # natively both ways
        assert fast_steps < slow_steps  # several tokens a step
        if params.vocab_limit:
            assert max(t for _, t, *_ in fast) < 120
        if params.suppress_tokens:
            assert not {t for _, t, *_ in fast} & set(params.suppress_tokens)
        if params.min_new_tokens:
            assert not {t for _, t, *_ in fast[:20]} & set(stop) and len(fast) > 20
    assert fast_steps <= 1 + -(-29 // Scheduler.BURST) + 1  # the first burst is 2 tokens, then up to BURST


SAMPLED = [  # CompletionOptions', OpenAI's default, top-p alone, top-k alone
    dict(temperature=0.2, top_k=50, top_p=0.95), dict(temperature=1.0), dict(temperature=0.9, top_p=0.8),
    dict(temperature=1.5, top_k=7),
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sampled_bursts_give_the_tokens_of_single_steps(dtype, monkeypatch):
    """The native sampler draws the row's own uniforms in the row's order: the same tokens as the
    Python path's one step a token, with bans, a stop id midway and a vocabulary limit too."""
    model = make(dtype)
    prompt = [5, 17, 42, 7, 99]
    passes = count_native_passes(monkeypatch)
    for i, warp in enumerate(SAMPLED):
        base = dict(max_new_tokens=40, stop_token_ids=(), seed=100 + i, **warp)
        free, _, _ = events(model, SamplingParams(**base), prompt, burst=1)
        stop = tuple(sorted({t for _, t, *_ in free[2:12]}))
        for params in (SamplingParams(**base),
                       SamplingParams(**{**base, "max_new_tokens": 60, "min_new_tokens": 20, "stop_token_ids": stop}),
                       SamplingParams(**base, suppress_tokens=(1, 2, 3, 250, 299), vocab_limit=120)):
            passes.clear()
            fast, fast_steps, _ = events(model, params, prompt, burst=None)
            burst_passes = len(passes)
            slow, slow_steps, _ = events(model, params, prompt, burst=1)
            assert fast == slow and len(fast) == slow_steps, (dtype, params)
            assert burst_passes == len(passes) - burst_passes == len(fast) - 1  # natively both ways
            assert fast_steps < slow_steps
            if params.vocab_limit:
                assert max(t for _, t, *_ in fast) < 120 and not {t for _, t, *_ in fast} & {1, 2, 3}
            if params.min_new_tokens:
                assert not {t for _, t, *_ in fast[:20]} & set(stop)
        assert len({t for _, t, *_ in free}) > 3  # sampled, not stuck on one id


def test_an_interrupted_sampled_burst_gives_its_unused_draws_to_the_next_picks(monkeypatch):
    """A burst cut short (a queued request, here a flag set by hand) leaves draws of the row's stream
    unused: the next picks, native or in Python, take them first, so the tokens do not change."""
    from codegen.engine.backend import Backend

    model = make()
    params = SamplingParams(max_new_tokens=30, stop_token_ids=(), temperature=1.0, top_p=0.9, seed=7)
    slow, _, _ = events(model, params, [3, 1, 4], burst=1)
    real, calls = Backend.decode_picks, []

    def interrupted(self, token, position, cache, picks, interrupt=None):
        calls.append(picks.count)
        if len(calls) in (2, 3):
            interrupt[0] = 1  # the burst ends after its first pick
        return real(self, token, position, cache, picks, interrupt)

    monkeypatch.setattr(Backend, "decode_picks", interrupted)
    fast, _, _ = events(model, params, [3, 1, 4], burst=None)
    assert fast == slow and len(calls) > 3 and calls[1] > 1


def test_a_sampled_row_with_nan_logits_fails_as_in_python():
    model = make()
    with torch.no_grad():
        model.lm_head.bias[[77]] = float("nan")
    params = SamplingParams(max_new_tokens=6, stop_token_ids=(), temperature=0.8, top_k=20, seed=1)
    runs = []
    for burst in (None, 1):
        s = Scheduler(model, burst=burst)
        request = s.add(Request([[4, 5, 6]], params))
        runs.append([(type(e).__name__, getattr(e, "status", None)) for step in s.run() for e in step])
        assert "not finite" in request.error
    assert runs[0] == runs[1] == [("ErrorEvent", 400)]


def test_a_stop_id_ends_the_burst_with_its_event():
    model = make()
    free, _, _ = events(model, SamplingParams(max_new_tokens=30, temperature=0, stop_token_ids=()), [1, 2, 3], burst=None)
    stop = free[9][1]  # the 10th token, as a stop id (its first occurrence)
    first = next(i for i, e in enumerate(free) if e[1] == stop)
    got, _, _ = events(model, SamplingParams(max_new_tokens=30, temperature=0, stop_token_ids=(stop,)), [1, 2, 3], burst=None)
    assert [t for _, t, *_ in got] == [t for _, t, *_ in free[:first + 1]] and got[-1][-1] == "stop"


def test_nan_logits_pick_as_numpy_argmax():
    """A NaN counts as the largest logit (numpy's argmax, the Python path's): the first NaN wins,
    unless it is banned."""
    model = make()
    with torch.no_grad():
        model.lm_head.bias[[77, 200]] = float("nan")
    for suppress in ((), (77,), (77, 200)):
        params = SamplingParams(max_new_tokens=6, temperature=0, stop_token_ids=(), suppress_tokens=suppress)
        fast, _, _ = events(model, params, [4, 5, 6], burst=None)
        slow, _, _ = events(model, params, [4, 5, 6], burst=1)
        assert fast == slow
        expected = {(): 77, (77,): 200}.get(suppress)
        if expected is not None:
            assert [t for _, t, *_ in fast] == [expected] * 6


def test_a_stop_string_midway_drops_the_later_picks_and_their_cache_columns():
    tok = codegen.CodeGenTokenizerFast.from_pretrained(demo_path())
    model = sharp_lm(seed=3)
    prompt = tok.encode("def add(a, b):\n")
    free, _, _ = events(model, SamplingParams(max_new_tokens=40, temperature=0, stop_token_ids=()), prompt, None, tok)
    text = "".join(t for _, _, t, *_ in free)
    assert len(text) > 20
    stop = text[len(text) // 2: len(text) // 2 + 3]  # a stop string that fires midway through a burst
    params = SamplingParams(max_new_tokens=40, temperature=0, stop_token_ids=(), stop=(stop,))
    runs = []
    for burst in (None, 1):
        pool = PrefixCache(2**26)
        got, _, request = events(model, params, prompt, burst, tok, prefix_cache=pool)
        entry, k = pool.lookup(prompt + [t for _, t, *_ in got], None)
        runs.append((got, k, entry.key[:, :, :k].clone() if entry is not None else None))
    (fast, k_fast, key_fast), (slow, k_slow, key_slow) = runs
    assert fast == slow and fast[-1][-1] == "stop" and len(fast) < len(free)
    # the stored sequence is the prompt and every token but the last (whose KV was never computed)
    assert k_fast == k_slow == len(prompt) + len(fast) - 1
    torch.testing.assert_close(key_fast, key_slow, rtol=0, atol=0)


def test_a_chat_session_keeps_the_same_cache(monkeypatch):
    from codegen.chat.session import ChatSession as Session

    tok = codegen.CodeGenTokenizerFast.from_pretrained(demo_path())
    model = sharp_lm(seed=4)
    kept = []
    for burst in (Scheduler.BURST, 1):
        monkeypatch.setattr(Scheduler, "BURST", burst)
        session = Session(model, tok, SamplingParams(max_new_tokens=24, temperature=0, stop=("\n\n",)))
        out = [e.token for e in session.generate("add two numbers")]
        session.accept(0)
        out2 = [e.token for e in session.generate("now subtract them")]
        kept.append((out, out2, session.kv.length if session.kv is not None else None, list(session.kv_ids)))
    assert kept[0] == kept[1]


def test_a_queued_request_ends_a_burst_after_the_current_token():
    model = make()
    fused = FusedDecoder.create(model)
    cache = KVCache.for_model(model, 1, 40)
    flag = np.ones(1, dtype=np.int32)
    with torch.inference_mode():
        model.transformer(input_ids=torch.tensor([[3, 4, 5]]), past_key_values=cache)
        picks, _ = fused.decode_picks(9, 3, cache, 0, Picks(count=10, limit=300), interrupt=flag)
        assert len(picks) == 1 and cache.length == 4
        flag[0] = 0
        picks, _ = fused.decode_picks(picks[0], 4, cache, 0, Picks(count=10, limit=300), interrupt=flag)
        assert len(picks) == 10 and cache.length == 14
    s = Scheduler(model)
    s.step()
    assert s._interrupt[0] == 0
    s.add(Request([[1, 2]], SamplingParams(max_new_tokens=3, temperature=0)))
    assert s._interrupt[0] == 1  # set by the queueing: a burst in another thread ends
    s.step()
    assert s._interrupt[0] == 0


def test_greedy_picks_equal_module_steps_with_argmax():
    """FusedDecoder.decode_picks's picks and cache against the module path picking by torch's argmax."""
    model = make(seed=5)
    fused = FusedDecoder.create(model)
    caches = [KVCache.for_model(model, 1, 30) for _ in range(2)]
    with torch.inference_mode():
        for c in caches:
            model.transformer(input_ids=torch.tensor([[8, 9, 10, 11]]), past_key_values=c)
        picks, logits = fused.decode_picks(12, 4, caches[0], 0, Picks(count=12, limit=300))
        ref, token = [], 12
        for i in range(12):
            out = model(input_ids=torch.tensor([[token]]), past_key_values=caches[1]).logits[:, -1]
            token = int(out.argmax())
            ref.append(token)
    assert picks == ref and caches[0].length == caches[1].length == 16
    torch.testing.assert_close(logits, out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(caches[0].key, caches[1].key, rtol=1e-5, atol=1e-5)


def test_the_window_end_and_the_burst_size():
    model = make(n_positions=40)
    params = SamplingParams(max_new_tokens=35, temperature=0, stop_token_ids=())
    fast, _, _ = events(model, params, [1, 2, 3, 4, 5], burst=None)  # positions up to the window's last
    slow, _, _ = events(model, params, [1, 2, 3, 4, 5], burst=1)
    assert fast == slow and len(fast) == 35
    with pytest.raises(ValueError, match="burst must be an integer >= 1"):
        Scheduler(model, burst=0)


def test_bursts_last_about_burst_seconds(monkeypatch):
    model = make()
    sizes = []
    real = FusedDecoder.decode_picks
    monkeypatch.setattr(FusedDecoder, "decode_picks", lambda self, t, p, c, s, picks, i=None: sizes.append(picks.count)
                        or real(self, t, p, c, s, picks, i))
    monkeypatch.setattr(Scheduler, "BURST_SECONDS", 0.0)  # one token a burst after the first (2, unmeasured)
    params = SamplingParams(max_new_tokens=8, temperature=0, stop_token_ids=())
    events(model, params, [1, 2], burst=None)
    assert sizes == [2, 1, 1, 1, 1, 1]
    sizes.clear()
    monkeypatch.setattr(Scheduler, "BURST_SECONDS", 1e9)
    events(model, params, [1, 2], burst=None)
    assert sizes == [2, 5]  # then the rest at once (max_new_tokens bounds it)


def test_picks_from_an_embedding_read_from_its_file(tmp_path, monkeypatch):
    """A loaded quantized checkpoint's int8 embedding is read from its file (StoredRows): the native
    picks read their rows themselves (pread), and a file that ends early is an error naming it."""
    from codegen.quant.convert import quantize_checkpoint

    model = make()
    src, dst = tmp_path / "src", tmp_path / "q8"
    model.save_pretrained(src)
    quantize_checkpoint(str(src), str(dst), QuantSpec.parse("int8"))
    loaded = codegen.CodeGenForCausalLM.from_pretrained(dst)
    reader = loaded.transformer.wte.reader()
    assert reader is not None and hasattr(reader, "fileno")
    params = SamplingParams(max_new_tokens=20, temperature=0, stop_token_ids=())
    passes = count_native_passes(monkeypatch)
    fast, fast_steps, _ = events(loaded, params, [7, 8, 9], burst=None)
    slow, slow_steps, _ = events(loaded, params, [7, 8, 9], burst=1)
    assert fast == slow and fast_steps < slow_steps and len(passes) == 38
    in_memory = copy.deepcopy(loaded)
    in_memory.transformer.wte.read_rows_with(None)
    assert events(in_memory, params, [7, 8, 9], burst=None)[0] == fast
    # rows from 1 on cut off: token 0's row is read, its pick's (never 0: banned) is not
    os.truncate(reader.file, reader.offset + reader.row_bytes)
    fused = FusedDecoder.create(loaded, linear_types=(QuantLinear,))
    cache = KVCache.for_model(loaded, 1, 8)
    with torch.inference_mode():
        loaded.transformer(input_ids=torch.tensor([[0]]), past_key_values=cache)
        with pytest.raises(OSError, match=f"{reader.file}: the embedding row of token .* could not be read"):
            fused.decode_picks(0, 1, cache, 0, Picks(count=3, limit=300, banned=(0,)))
    assert cache.length == 2  # the failed pick's own pass ran


def test_decode_picks_refuses_bad_picks():
    model = make()
    fused = FusedDecoder.create(model)
    cache = KVCache.for_model(model, 1, 8)
    with torch.inference_mode():
        model.transformer(input_ids=torch.tensor([[3, 4]]), past_key_values=cache)
        for picks, message in [
            (Picks(count=0, limit=300), "picks.count must be >= 1"),
            (Picks(count=2, limit=301), r"picks.limit 301 outside \[1, 300\]"),
            (Picks(count=2, limit=0), r"picks.limit 0 outside"),
            (Picks(count=2, limit=300, banned=(300,)), r"picks.banned holds ids outside \[0, 300\)"),
            (Picks(count=2, limit=300, stop=(-1,)), r"picks.stop holds ids outside"),
            (Picks(count=7, limit=300), "KVCache holds 8 positions; 2 used \\+ 7 new do not fit"),
            (Picks(count=2, limit=300, temperature=1.0, uniforms=(0.5,)), r"picks.uniforms must be 2 values in \[0, 1\)"),
            (Picks(count=2, limit=300, temperature=1.0, uniforms=(0.5, 1.0)), r"picks.uniforms must be 2 values"),
            (Picks(count=1, limit=300, temperature=float("inf"), uniforms=(0.5,)), "temperature inf must be finite"),
            (Picks(count=1, limit=300, temperature=1.0, top_p=0.0, uniforms=(0.5,)), r"top_p 0.0 in \(0, 1\]"),
            (Picks(count=1, limit=300, temperature=1.0, top_k=-1, uniforms=(0.5,)), "top_k -1 >= 0"),
        ]:
            with pytest.raises(ValueError, match=message):
                fused.decode_picks(5, 2, cache, 0, picks)
        with pytest.raises(ValueError, match="interrupt must be an int32 numpy array"):
            fused.decode_picks(5, 2, cache, 0, Picks(count=2, limit=300), interrupt=np.zeros(1))
        assert cache.length == 2  # nothing ran
        late = KVCache.for_model(model, 1, 200)
        late.length = 94
        with pytest.raises(ValueError, match=r"positions 94..96 outside \[0, n_positions = 96\)"):
            fused.decode_picks(5, 94, late, 0, Picks(count=3, limit=300))


def test_an_interrupt_from_another_thread_ends_a_running_burst():
    """The server's case: the batcher's thread is in a burst (the GIL released) when a request is
    queued from a request thread; the burst ends after its current token."""
    import threading
    import time

    model = make(n_embd=512, n_layer=8, n_head=8, rotary_dim=32, n_positions=64)  # ~5 ms a pass
    fused = FusedDecoder.create(model)
    cache = KVCache.for_model(model, 1, 40)
    flag = np.zeros(1, dtype=np.int32)
    with torch.inference_mode():
        model.transformer(input_ids=torch.tensor([[3, 4, 5]]), past_key_values=cache)
        began = time.perf_counter()
        fused.decode_picks(6, 3, cache, 0, Picks(count=4, limit=300))
        per_pass = (time.perf_counter() - began) / 4
        setter = threading.Timer(2 * per_pass, lambda: flag.__setitem__(0, 1))
        setter.start()
        picks, _ = fused.decode_picks(7, 7, cache, 0, Picks(count=30, limit=300), interrupt=flag)
        setter.join()
    assert 1 <= len(picks) < 30 and cache.length == 7 + len(picks)


def test_a_cancel_from_another_thread_ends_a_running_burst(monkeypatch):
    import threading
    import time

    monkeypatch.setattr(Scheduler, "BURST_SECONDS", 1e9)  # bursts as long as `burst` allows
    model = make(n_embd=512, n_layer=8, n_head=8, rotary_dim=32, n_positions=64)  # ~5 ms a pass
    s = Scheduler(model, burst=32)
    request = s.add(Request([[3, 4, 5]], SamplingParams(max_new_tokens=40, temperature=0, stop_token_ids=())))
    s.step()  # the prefill and the first token
    began = time.perf_counter()
    s.step()  # a burst of 2 (the first is unmeasured): this one's time per token
    per_token = (time.perf_counter() - began) / 2
    canceller = threading.Timer(3 * per_token, request.cancel)
    canceller.start()
    got = s.step()
    canceller.join()
    assert 1 <= len(got) < 30  # the burst ended after the token it was on
    assert s.step() == [] and not s.has_work  # then the request left
