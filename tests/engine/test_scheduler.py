"""The scheduler, the engine's only decode loop, on a scripted model: stops, bans, seeds, logprobs,
row dropping, admission and failure isolation (no transformers, no weights)."""

from __future__ import annotations

import math

import pytest
import torch

from codegen.engine import ErrorEvent, PromptLogprobs, Request, SamplingParams, Scheduler, TokenEvent
from scripted import ScriptedLM, counter, one_hot, uniform

GREEDY = dict(temperature=0.0)


def outputs(scheduler: Scheduler) -> dict[tuple[int, int], list[TokenEvent]]:
    """Run to the end: (request id, index) -> its token events."""
    out: dict[tuple[int, int], list[TokenEvent]] = {}
    for events in scheduler.run():
        for e in events:
            if isinstance(e, TokenEvent):
                out.setdefault((e.request.id, e.index), []).append(e)
    return out


def tokens(events: list[TokenEvent]) -> list[int]:
    return [e.token for e in events]


def test_greedy_tokens_finish_reasons_and_row_dropping():
    lm = ScriptedLM(counter(eos_after=6))
    s = Scheduler(lm)
    short = s.add(Request([[1, 2, 3, 4]], SamplingParams(max_new_tokens=10, **GREEDY)))  # EOS after 2 new
    long = s.add(Request([[10]], SamplingParams(max_new_tokens=3, **GREEDY)))
    out = outputs(s)
    assert tokens(out[short.id, 0]) == [5, 6, 63] and out[short.id, 0][-1].finish_reason == "stop"
    assert tokens(out[long.id, 0]) == [11, 12, 13] and out[long.id, 0][-1].finish_reason == "length"
    assert all(e.finish_reason is None for e in out[short.id, 0][:-1])
    # Two prefills (one per request), then decode steps of both rows together.
    assert lm.forwards == [(1, 4), (1, 1), (2, 1), (2, 1)]
    lm.forwards.clear()
    s.add(Request([[1, 2, 3, 4]], SamplingParams(max_new_tokens=10, **GREEDY)))
    s.add(Request([[10]], SamplingParams(max_new_tokens=5, **GREEDY)))
    outputs(s)
    assert lm.forwards == [(1, 4), (1, 1), (2, 1), (2, 1), (1, 1), (1, 1)]  # the stopped row left the batch
    assert short.done and long.done and not s.has_work


def test_stop_token_ids_min_new_tokens_and_suppressed_ids():
    lm = ScriptedLM(counter(eos_after=2))
    [evs] = outputs(_one(lm, [[5]], SamplingParams(max_new_tokens=5, min_new_tokens=3, **GREEDY))).values()
    # 6, then EOS is due but banned until 3 tokens: the argmax falls to id 0 (all other logits 0).
    assert tokens(evs) == [6, 0, 0, 63]
    [evs] = outputs(_one(lm, [[5]], SamplingParams(max_new_tokens=3, stop_token_ids=(), **GREEDY))).values()
    assert tokens(evs) == [6, 63, 63] and evs[-1].finish_reason == "length"  # no stop ids: EOS is a token
    [evs] = outputs(_one(ScriptedLM(counter()), [[5]], SamplingParams(max_new_tokens=3, stop_token_ids=(7,), **GREEDY))).values()
    assert tokens(evs) == [6, 7] and evs[-1].finish_reason == "stop"
    [evs] = outputs(_one(ScriptedLM(counter()), [[5]], SamplingParams(max_new_tokens=2, suppress_tokens=(6,), **GREEDY))).values()
    assert tokens(evs)[0] != 6


def test_vocab_limit_is_never_crossed_and_prompt_ids_are_checked():
    lm = ScriptedLM(lambda h: one_hot(60))  # the script prefers an id past the limit
    [evs] = outputs(_one(lm, [[5]], SamplingParams(max_new_tokens=4, vocab_limit=50, **GREEDY))).values()
    assert max(tokens(evs)) < 50
    [evs] = outputs(_one(lm, [[5]], SamplingParams(max_new_tokens=4, vocab_limit=50, seed=0))).values()
    assert max(tokens(evs)) < 50
    lm.tokenizer_size = 50  # what from_pretrained records from the checkpoint's tokenizer files
    [evs] = outputs(_one(lm, [[5]], SamplingParams(max_new_tokens=4, **GREEDY))).values()
    assert max(tokens(evs)) < 50
    with pytest.raises(ValueError, match=r"prompt token ids must lie in \[0, 64\)"):
        Scheduler(lm).add(Request([[64]], SamplingParams()))


def test_repetition_penalty_per_row():
    # id 3 is the favourite, id 4 a close second: once 3 has been seen, a penalty of 2 flips them.
    def script(history):
        x = torch.zeros(64)
        x[3], x[4] = 4.0, 3.0
        return x
    lm = ScriptedLM(script)
    s = Scheduler(lm)
    plain = s.add(Request([[1]], SamplingParams(max_new_tokens=3, **GREEDY)))
    penalised = s.add(Request([[1]], SamplingParams(max_new_tokens=3, repetition_penalty=2.0, **GREEDY)))
    prompt_seen = s.add(Request([[3]], SamplingParams(max_new_tokens=1, repetition_penalty=2.0, **GREEDY)))
    out = outputs(s)
    assert tokens(out[plain.id, 0]) == [3, 3, 3]
    assert tokens(out[penalised.id, 0]) == [3, 4, 3]  # 3 seen: 2 < 3; both seen: 2 > 1.5
    assert tokens(out[prompt_seen.id, 0]) == [4]  # prompt tokens count as seen


def test_replicated_samples_are_independent_and_reproducible():
    lm = ScriptedLM(uniform())
    params = SamplingParams(max_new_tokens=12, n=4, seed=7, stop_token_ids=())
    a = outputs(_one(lm, [[1, 2]], params))
    b = outputs(_one(lm, [[1, 2]], params))
    seqs = [tokens(v) for _, v in sorted(a.items())]
    assert seqs == [tokens(v) for _, v in sorted(b.items())]
    assert len({tuple(x) for x in seqs}) == 4  # four different samples of one prompt
    other = outputs(_one(lm, [[1, 2]], params.replace(seed=8)))
    assert [tokens(v) for _, v in sorted(other.items())] != seqs


def test_a_sample_does_not_depend_on_its_neighbours():
    """Seeded samples are the same alone, with other requests in the batch, when other samples of
    its own request stop early, and when it joins a batch already running."""
    eos_for_odd = lambda h: one_hot(63) if len(h) > 3 and h[1] % 2 else torch.zeros(64)  # noqa: E731
    lm = ScriptedLM(eos_for_odd)
    params = SamplingParams(max_new_tokens=10, n=3, seed=123)
    alone = outputs(_one(lm, [[2, 4]], params))
    alone = [tokens(v) for _, v in sorted(alone.items())]

    s = Scheduler(lm)
    s.add(Request([[1, 3, 5]], SamplingParams(max_new_tokens=6, n=2, seed=1)))  # rows that stop early
    s.step()
    s.step()
    mine = s.add(Request([[2, 4]], params))  # joins a running batch
    s.add(Request([[9]], SamplingParams(max_new_tokens=2, **GREEDY)))
    out = outputs(s)
    assert [tokens(out[mine.id, i]) for i in range(3)] == alone

    # Within one request: prompt 0's samples stop at once (odd second token), prompt 1's go on.
    both = outputs(_one(lm, [[1, 3], [2, 4]], params))
    second = [tokens(v) for k, v in sorted(both.items()) if k[1] >= 3]
    longer = outputs(_one(lm, [[8, 8], [2, 4]], params))  # prompt 0's samples now run to the end
    assert second == [tokens(v) for k, v in sorted(longer.items()) if k[1] >= 3]
    assert all(len(tokens(v)) <= 3 for k, v in both.items() if k[1] < 3)  # EOS as the 3rd token at the latest


def test_unseeded_sampling_follows_torchs_global_generator():
    lm = ScriptedLM(uniform())
    params = SamplingParams(max_new_tokens=8, stop_token_ids=())
    torch.manual_seed(3)
    a = tokens(next(iter(outputs(_one(lm, [[1]], params)).values())))
    torch.manual_seed(3)
    b = tokens(next(iter(outputs(_one(lm, [[1]], params)).values())))
    assert a == b
    g = torch.Generator().manual_seed(5)
    c = tokens(next(iter(outputs(_one(lm, [[1]], params, generator=g)).values())))
    g = torch.Generator().manual_seed(5)
    assert c == tokens(next(iter(outputs(_one(lm, [[1]], params, generator=g)).values())))


def test_sampling_follows_the_warped_distribution():
    # Two ids of logits log(0.75) and log(0.25): top_p 0.7 keeps the first only; temperature spreads.
    def script(history):
        x = torch.full((64,), -1e9)
        x[10], x[20] = math.log(0.75), math.log(0.25)
        return x
    lm = ScriptedLM(script, n_positions=512)
    params = SamplingParams(max_new_tokens=400, seed=0, stop_token_ids=())
    [evs] = outputs(_one(lm, [[1]], params)).values()
    share = tokens(evs).count(10) / 400
    assert 0.68 < share < 0.82 and set(tokens(evs)) == {10, 20}
    [evs] = outputs(_one(lm, [[1]], params.replace(top_p=0.7))).values()
    assert set(tokens(evs)) == {10}
    [evs] = outputs(_one(lm, [[1]], params.replace(top_k=1))).values()
    assert set(tokens(evs)) == {10}


def test_logprobs_and_prompt_logprobs():
    def script(history):
        x = torch.arange(64, dtype=torch.float32) / 10
        x[(history[-1] + 1) % 63] = 20.0
        return x
    lm = ScriptedLM(script)
    s = Scheduler(lm)
    r = s.add(Request([[4, 5, 6]], SamplingParams(max_new_tokens=3, logprobs=2, prompt_logprobs=True, **GREEDY)))
    events = [e for step in s.run() for e in step]
    prompt = [e for e in events if isinstance(e, PromptLogprobs)]
    assert len(prompt) == 1 and prompt[0].logprobs[0] is None and len(prompt[0].logprobs) == 3
    for j, (prev, tok) in enumerate(zip([4, 5], [5, 6]), start=1):
        ref = script([prev]).log_softmax(-1)
        assert abs(prompt[0].logprobs[j] - ref[tok].item()) < 1e-5
    toks = [e for e in events if isinstance(e, TokenEvent) and e.request is r]
    for e, prev in zip(toks, [6, 7, 8]):
        ref = script([prev]).log_softmax(-1)
        assert abs(e.logprob - ref[e.token].item()) < 1e-5
        assert e.top_logprobs[0][0] == e.token and len(e.top_logprobs) == 2


def test_admission_waits_for_room_and_bounds_requests():
    lm = ScriptedLM(counter())
    s = Scheduler(lm, max_rows=2)
    with pytest.raises(ValueError, match="3 sequences .* at most 2"):
        s.add(Request([[1]], SamplingParams(n=3)))
    a = s.add(Request([[1]], SamplingParams(max_new_tokens=3, n=2, **GREEDY)))
    b = s.add(Request([[30]], SamplingParams(max_new_tokens=2, **GREEDY)))
    first = s.step()
    assert s.active == 2 and list(s.waiting) == [b] and len(first) == 2
    out = outputs(s)
    out[a.id, 0][:0], out[a.id, 1][:0] = first[:1], first[1:]
    assert tokens(out[a.id, 0]) == tokens(out[a.id, 1]) == [2, 3, 4]
    assert tokens(out[b.id, 0]) == [31, 32]


def test_rows_join_right_aligned_and_the_cache_compacts_and_grows():
    lm = ScriptedLM(counter(), n_positions=512)
    s = Scheduler(lm)
    first = s.add(Request([[1] * 3], SamplingParams(max_new_tokens=40, **GREEDY)))
    early = [e.token for _ in range(5) for e in s.step()]
    late = s.add(Request([[40] * 20], SamplingParams(max_new_tokens=30, **GREEDY)))  # longer history: shifts right
    out = outputs(s)
    assert early + tokens(out[first.id, 0]) == [(1 + i) % 63 for i in range(1, 41)]
    assert tokens(out[late.id, 0]) == [(40 + i) % 63 for i in range(1, 31)]


def test_cancel_drops_the_rows_at_the_next_step():
    lm = ScriptedLM(counter())
    s = Scheduler(lm)
    a = s.add(Request([[1]], SamplingParams(max_new_tokens=50, **GREEDY)))
    b = s.add(Request([[1]], SamplingParams(max_new_tokens=5, **GREEDY)))
    s.step()
    a.cancel()
    events = [e for step in s.run() for e in step]
    assert all(e.request is b for e in events) and len(events) == 4


def test_a_failing_request_fails_alone():
    bad_prompt = 13
    lm = ScriptedLM(lambda h: torch.full((64,), float("nan")) if h[0] == bad_prompt else one_hot((h[-1] + 1) % 63))
    s = Scheduler(lm)
    bad = s.add(Request([[bad_prompt]], SamplingParams(max_new_tokens=5, seed=0)))
    good = s.add(Request([[1]], SamplingParams(max_new_tokens=5, seed=0)))
    events = [e for step in s.run() for e in step]
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert [e.request for e in errors] == [bad] and "not finite" in errors[0].message
    assert [e.token for e in events if isinstance(e, TokenEvent) and e.request is good] == [2, 3, 4, 5, 6]
    assert not any(isinstance(e, TokenEvent) and e.request is bad for e in events)


def test_context_window_and_prompt_truncation():
    lm = ScriptedLM(counter(), n_positions=16)
    with pytest.raises(ValueError, match=r"prompt 1 has 14 tokens; with max_new_tokens 4 that is 18 positions, more than "
                                         r"the model's context window \(n_positions\) of 16"):
        Scheduler(lm).add(Request([[1], [2] * 14], SamplingParams(max_new_tokens=4)))
    s = Scheduler(lm)
    r = s.add(Request([[1], list(range(1, 15))], SamplingParams(max_new_tokens=4, truncate_prompt=True, **GREEDY)))
    assert r.prompt_tokens == [1, 12]
    out = outputs(s)
    assert tokens(out[r.id, 1]) == [15, 16, 17, 18]
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        Scheduler(lm).add(Request([[]], SamplingParams()))


def test_stop_strings_need_a_tokenizer():
    with pytest.raises(ValueError, match="need a tokenizer"):
        Scheduler(ScriptedLM(counter())).add(Request([[1]], SamplingParams(stop=["x"])))


def _one(lm, prompts, params, generator=None) -> Scheduler:
    s = Scheduler(lm)
    s.add(Request(prompts, params, generator=generator))
    return s


class _Decoder:
    def __init__(self, bad: int) -> None:
        self.text, self.bad = "", bad

    def add(self, ids):
        if self.bad in ids:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "a token the tokenizer cannot decode")
        self.text += "".join(chr(97 + i % 26) for i in ids)

    def flush(self):
        pass


class _Tokenizer:
    eos_token_id = 63

    def __len__(self):
        return 64

    def incremental_decoder(self, skip_special_tokens=True):
        return _Decoder(bad=20)


def test_a_request_whose_text_fails_fails_alone():
    lm = ScriptedLM(counter())
    s = Scheduler(lm, _Tokenizer())
    bad = s.add(Request([[17]], SamplingParams(max_new_tokens=6, **GREEDY)))  # reaches id 20 at its 3rd token
    good = s.add(Request([[1]], SamplingParams(max_new_tokens=6, **GREEDY)))
    events = [e for step in s.run() for e in step]
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert [e.request for e in errors] == [bad] and errors[0].status == 500 and "UnicodeDecodeError" in errors[0].message
    assert [e.token for e in events if isinstance(e, TokenEvent) and e.request is bad] == [18, 19]
    good_events = [e for e in events if isinstance(e, TokenEvent) and e.request is good]
    assert [e.token for e in good_events] == [2, 3, 4, 5, 6, 7] and "".join(e.text for e in good_events) == "cdefgh"
    assert not s.has_work


def test_greedy_equals_torchs_argmax_on_ties_nans_and_infinities():
    """The greedy pick (numpy's argmax for CPU fp32 rows) is torch's argmax: the first of tied maxima,
    a NaN as the largest, a row of -inf's first index; other dtypes and shapes take torch's."""
    from codegen.engine.select import greedy

    torch.manual_seed(0)
    x = torch.randn(6, 50)
    x[1, [3, 7]] = 9.0  # a tie: the first
    x[2, 11] = float("nan")
    x[3] = float("-inf")
    x[4, [5, 20]] = float("inf")
    x[5, [4, 9]] = float("nan")
    with torch.inference_mode():
        for rows in (x, x[:, ::2], x[2:3], x.bfloat16(), x.double()):
            got = greedy(rows)
            assert got.dtype == torch.long and torch.equal(got, rows.argmax(dim=-1))


def test_top_k_ties_go_to_the_lower_ids_whatever_topk_chose():
    """select.top_k_ids: a bf16 model's logits tie often at the k-th value; the lower ids among the
    tied are kept (numpy per row on the CPU, whole-tensor masks elsewhere: the same ids)."""
    from codegen.engine.select import _top_k_ids_by_mask, top_k_ids

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(16, 3000, generator=gen) * 3).bfloat16().float()
    x[3] = 1.0  # a row of one value: the first k ids
    x[5, :10] = float("nan")  # NaNs count as the largest
    for k in (1, 7, 50, 400):
        ids = top_k_ids(x, k)
        assert ids.shape == (16, k) and bool((ids.diff(dim=-1) > 0).all())
        kth = torch.topk(x, k).values[:, -1:]
        rows = [r for r in range(16) if not (r == 5 and k <= 10)]  # there the k-th is a NaN: topk's own choice
        assert torch.equal(ids[rows], _top_k_ids_by_mask(x[rows], k, kth[rows]))
        assert ids[3].tolist() == list(range(k))
        assert k <= 10 or set(range(10)) <= set(ids[5].tolist())
        for r in (0, 7, 15):
            row = x[r]
            above = (row > kth[r]).sum().item()
            tied = torch.nonzero(row == kth[r])[:, 0][: k - above]
            assert set(ids[r].tolist()) == set(torch.nonzero(row > kth[r])[:, 0].tolist()) | set(tied.tolist())


def test_top_p_over_a_large_vocabulary_sorts_only_what_it_may_keep():
    """select.warp's top-p on CPU rows of more than SORT_ALL logits leaves out a low tail that is
    certainly removed: the same removals as sorting all of them (torch's stable sort, transformers'
    rule), except where a cumulative probability lies within rounding of the threshold."""
    from codegen.engine.select import SORT_ALL, warp

    gen = torch.Generator().manual_seed(0)
    checked = 0
    for trial in range(24):
        x = torch.randn(4, 51200 if trial % 2 else SORT_ALL + 7, generator=gen) * (0.3, 1.0, 3.0, 8.0)[trial % 4]
        if trial % 3 == 0:
            x = x.bfloat16().float()  # ties
        for top_p in (0.5, 0.9, 0.95, 0.999):
            got = warp(x, 1.0, top_p).isinf()
            values, order = torch.sort(x, stable=True)
            cum = values.softmax(dim=-1).cumsum(dim=-1)
            remove = cum <= (1 - top_p)
            remove[:, -1] = False
            want = remove.scatter(1, order, remove)
            for r in range(4):
                differ = torch.nonzero(got[r] ^ want[r])[:, 0]
                # a differing id's own cumulative probability (in the full sort) is the threshold's, up to rounding
                at = torch.nonzero(order[r][:, None] == differ[None])[:, 0]
                assert torch.allclose(cum[r, at], torch.tensor(1 - top_p), rtol=1e-6, atol=0), (trial, top_p, r)
                assert differ.numel() <= 1 and not got[r].all()
                checked += 1
    assert checked == 24 * 4 * 4
