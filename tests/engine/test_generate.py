"""Generation: transformers-identical greedy ids, sampling, stop rules, streaming, limits."""

from __future__ import annotations

import os

import pytest
import torch

import codegen
from codegen import CompletionOptions, complete, stream_complete
from codegen.generate import GenerationConfig, stream
from codegen.sampling import SamplingParams
from helpers import TINY_CONFIGS, TOKENIZER_DIR, hf_model

needs_tokenizer = pytest.mark.skipif(not os.path.isdir(TOKENIZER_DIR), reason="CodeGen tokenizer files not in ../shared")


@pytest.fixture(scope="module", params=["h4_d32_r32", "h8_d80_r64"])
def pair(request, tmp_path_factory):
    cfg = TINY_CONFIGS[request.param]
    hf = hf_model(cfg, seed=7)
    with torch.no_grad():  # sharper distributions than the 0.02 init, so greedy paths vary
        for name, p in hf.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.mul_(4.0)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, codegen.CodeGenForCausalLM.from_pretrained(path), cfg


def prompts(cfg, b=3, t=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, cfg["vocab_size"], (b, t), generator=g)
    mask = torch.ones_like(ids)
    for i in range(1, b):
        mask[i, : 2 * i + 1] = 0  # rows of different lengths, left-padded
    return ids.masked_fill(mask == 0, 0), mask


def test_greedy_single_prompt_equals_transformers(pair):
    hf, ours, cfg = pair
    for seed in range(3):
        x, _ = prompts(cfg, 1, 6 + seed, seed)
        ref = hf.generate(x, max_new_tokens=25, do_sample=False, pad_token_id=0)
        assert torch.equal(ours.generate(x, max_new_tokens=25, pad_token_id=0), ref)


def test_greedy_left_padded_batch_equals_transformers(pair):
    hf, ours, cfg = pair
    x, mask = prompts(cfg)
    ref = hf.generate(x, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0)
    got = ours.generate(x, attention_mask=mask, max_new_tokens=20, pad_token_id=0)
    assert torch.equal(got, ref)
    # each padded row equals its prompt generated alone
    for i in range(3):
        start = 2 * i + 1 if i else 0
        solo = ours.generate(x[i:i + 1, start:], max_new_tokens=20, pad_token_id=0)[0, x.shape[1] - start:]
        assert torch.equal(solo, got[i, x.shape[1]:x.shape[1] + len(solo)])


def test_eos_and_padding_of_finished_rows_equal_transformers(pair):
    hf, ours, cfg = pair
    x, mask = prompts(cfg)
    free = hf.generate(x, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    eos = int(free[1, -6])  # a token row 1 produces mid-way: it must stop there
    ref = hf.generate(x, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=eos)
    got = ours.generate(x, attention_mask=mask, max_new_tokens=12, pad_token_id=0, eos_token_id=eos)
    assert torch.equal(got, ref)
    assert (got[1, -5:] == 0).all() or got.shape[1] < free.shape[1]


def test_num_return_sequences_with_top_k_1_equals_transformers(pair):
    hf, ours, cfg = pair
    x, mask = prompts(cfg, 2)
    ref = hf.generate(x, attention_mask=mask, max_new_tokens=10, do_sample=True, top_k=1, num_return_sequences=3, pad_token_id=0)
    got = ours.generate(x, attention_mask=mask, max_new_tokens=10, do_sample=True, top_k=1, num_return_sequences=3, pad_token_id=0)
    assert got.shape == (6, 19) and torch.equal(got, ref)
    assert torch.equal(got[0], got[2]) and torch.equal(got[3], got[5])  # samples of a prompt are adjacent


def test_repetition_penalty_and_min_new_tokens_equal_transformers(pair):
    hf, ours, cfg = pair
    x, mask = prompts(cfg, 2, seed=3)
    kw = dict(attention_mask=mask, max_new_tokens=15, pad_token_id=0, repetition_penalty=1.3)
    assert torch.equal(ours.generate(x, **kw), hf.generate(x, do_sample=False, **kw))
    free = ours.generate(x[:1], max_new_tokens=8, pad_token_id=0)
    eos = int(free[0, 9])  # the 1st generated token: min_new_tokens must postpone it
    kw = dict(max_new_tokens=8, min_new_tokens=4, pad_token_id=0, eos_token_id=eos)
    assert torch.equal(ours.generate(x[:1], **kw), hf.generate(x[:1], do_sample=False, **kw))


def test_cached_decoding_equals_full_recompute(pair):
    hf, ours, cfg = pair
    x, mask = prompts(cfg)
    a = ours.generate(x, attention_mask=mask, max_new_tokens=15, pad_token_id=0)
    b = ours.generate(x, attention_mask=mask, max_new_tokens=15, pad_token_id=0, use_cache=False)
    assert torch.equal(a, b)


def test_sampling_reproducible_and_top_k_1_is_greedy(pair):
    hf, ours, cfg = pair
    x, mask = prompts(cfg, 2)
    kw = dict(attention_mask=mask, max_new_tokens=12, pad_token_id=0, do_sample=True, temperature=1.5, top_p=0.9)
    a = ours.generate(x, generator=torch.Generator().manual_seed(5), **kw)
    b = ours.generate(x, generator=torch.Generator().manual_seed(5), **kw)
    c = ours.generate(x, generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(11)
    d = ours.generate(x, **kw)
    torch.manual_seed(11)
    assert torch.equal(d, ours.generate(x, **kw))  # the global RNG when no generator is given
    greedy = ours.generate(x, attention_mask=mask, max_new_tokens=12, pad_token_id=0)
    assert torch.equal(ours.generate(x, attention_mask=mask, max_new_tokens=12, pad_token_id=0, do_sample=True, top_k=1), greedy)


def test_length_limits(pair):
    hf, ours, cfg = pair
    x, _ = prompts(cfg, 1, 10)
    n = cfg["n_positions"]
    with pytest.raises(ValueError, match=rf"prompt length 10 \+ max_new_tokens {n} = {n + 10} exceeds the model's n_positions = {n}"):
        ours.generate(x, max_new_tokens=n)
    assert ours.generate(x, max_length=14).shape == (1, 14)  # max_length counts the prompt
    with pytest.raises(ValueError, match="max_length"):
        ours.generate(x, max_length=8)


def test_logprobs_match_a_full_forward(pair):
    hf, ours, cfg = pair
    x, mask = prompts(cfg, 2)
    config = GenerationConfig(max_new_tokens=6, logprobs=3, pad_token_id=0)
    events = [e for step in stream(ours, x, mask, config) for e in step]
    seq = ours.generate(x, attention_mask=mask, max_new_tokens=6, pad_token_id=0)
    with torch.no_grad():
        full_mask = torch.cat([mask, torch.ones(2, 6, dtype=torch.long)], dim=1)
        logits = ours(seq, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits
    logp = logits.log_softmax(-1)
    for e in events:
        step = [f for f in events if f.row == e.row].index(e)
        pos = x.shape[1] + step - 1
        assert abs(e.logprob - logp[e.row, pos, e.token].item()) < 1e-4
        assert e.top_logprobs[0][0] == e.token  # greedy picks the most likely
        assert len(e.top_logprobs) == 3


def test_bad_generation_parameters(pair):
    hf, ours, cfg = pair
    x, _ = prompts(cfg, 1)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 1.5"):
        ours.generate(x, do_sample=True, top_p=1.5, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"temperature must be > 0"):
        ours.generate(x, do_sample=True, temperature=0.0, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"num_return_sequences must be >= 1"):
        ours.generate(x, num_return_sequences=0, max_new_tokens=2)


# ------------------------------------------------------------------------------ text level
@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    config = codegen.CodeGenConfig(vocab_size=51200, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=256)
    model = codegen.CodeGenForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(6.0)
    return model


@pytest.fixture(scope="module")
def tok():
    if not os.path.isdir(TOKENIZER_DIR):
        pytest.skip("CodeGen tokenizer files not in ../shared")
    return codegen.CodeGenTokenizerFast.from_pretrained(TOKENIZER_DIR)


GREEDY = dict(temperature=0.0, max_new_tokens=24)


def test_complete_greedy_matches_generate(lm, tok):
    [c] = complete(lm, tok, "def fibonacci(n):", CompletionOptions(**GREEDY))
    ids = tok.encode("def fibonacci(n):")
    ref = lm.generate(torch.tensor([ids]), max_new_tokens=24, suppress_tokens=list(range(len(tok), 51200)))[0, len(ids):]
    eos = ref.tolist().index(50256) if 50256 in ref.tolist() else len(ref)
    assert c.token_ids == ref.tolist()[: eos + 1]
    assert c.text == tok.decode(ref[:eos]) and c.prompt_tokens == len(ids) and c.completion_tokens == len(c.token_ids)
    assert c.finish_reason == ("stop" if eos < len(ref) else "length")


def test_never_produces_ids_the_tokenizer_cannot_decode(lm, tok):
    with torch.no_grad():
        lm.lm_head.bias[len(tok):] += 1000.0  # the padding rows of the head now win every argmax
    try:
        x = torch.tensor([tok.encode("import os")])
        assert (lm.generate(x, max_new_tokens=4)[0, 3:] >= len(tok)).all()  # transformers' behaviour
        for opts in (CompletionOptions(**GREEDY), CompletionOptions(max_new_tokens=24, seed=0, temperature=1.0, top_k=0, top_p=1.0)):
            [c] = complete(lm, tok, "import os", opts)
            assert max(c.token_ids) < len(tok)
    finally:
        with torch.no_grad():
            lm.lm_head.bias[len(tok):] -= 1000.0


def test_stop_strings_end_one_row_only(lm, tok):
    prompts = ["def fibonacci(n):", "import os\n"]
    free = complete(lm, tok, prompts, CompletionOptions(**GREEDY))
    text0, text1 = free[0].text, free[1].text
    stop = next(text0[i:i + 3] for i in range(4, len(text0) - 3) if text0[i:i + 3] not in text1 and text0[i:i + 3].strip())
    got = complete(lm, tok, prompts, CompletionOptions(**GREEDY, stop=[stop, "\x00never"]))
    assert got[0].text == text0[: text0.index(stop)] and got[0].finish_reason == "stop"
    assert got[0].completion_tokens < free[0].completion_tokens
    assert got[1].text == text1 and got[1].finish_reason == free[1].finish_reason


def test_truncate_before_pattern_as_stop_rule(lm, tok):
    free = complete(lm, tok, "x = 1", CompletionOptions(**GREEDY))[0].text
    word = next(w for w in free.split() if len(w) > 2)
    patterns = [re_escape(word)]
    [c] = complete(lm, tok, "x = 1", CompletionOptions(**GREEDY, truncate_before_pattern=patterns))
    assert c.text == free[: free.index(word)] and c.finish_reason == "stop"


def re_escape(s):
    import re

    return re.escape(s)


@pytest.mark.parametrize("extra", [{}, {"stop": ["e"]}, {"truncate_before_pattern": [r"\n\n"]}, {"n": 3, "temperature": 0.8, "seed": 1}])
def test_streamed_text_equals_final_text(lm, tok, extra):
    opts = dict(GREEDY, **extra)
    prompts = ["def fibonacci(n):", "import os\n"]
    final = complete(lm, tok, prompts, CompletionOptions(**opts))
    deltas = list(stream_complete(lm, tok, prompts, CompletionOptions(**opts)))
    for c in final:
        mine = [d for d in deltas if d.index == c.index]
        assert "".join(d.text for d in mine) == c.text
        assert [t for d in mine for t in d.token_ids] == c.token_ids
        assert mine[-1].finish_reason == c.finish_reason and all(d.finish_reason is None for d in mine[:-1])


def test_seeded_completions_are_reproducible(lm, tok):
    opts = CompletionOptions(max_new_tokens=16, temperature=0.9, n=2, seed=3)
    a, b = complete(lm, tok, "def f(x):", opts), complete(lm, tok, "def f(x):", opts)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]


def test_prompt_too_long(lm, tok):
    long = "x = 1\n" * 100  # 400 tokens, context 256
    with pytest.raises(ValueError, match=r"prompt 0 has \d+ tokens; with max_new_tokens 24 it exceeds the context window of 256"):
        complete(lm, tok, long, CompletionOptions(**GREEDY))
    [c] = complete(lm, tok, long, CompletionOptions(**GREEDY, truncate_prompt=True))
    assert c.prompt_tokens == 256 - 24
