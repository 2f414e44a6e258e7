"""model.generate over the engine: transformers-identical greedy ids, sampling, limits, logprobs."""

from __future__ import annotations

import pytest
import torch

import codegen
from codegen.engine import Request, SamplingParams, Scheduler, TokenEvent
from helpers import TINY_CONFIGS, hf_model


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
    assert torch.equal(a, ours.generate(x, attention_mask=mask, max_new_tokens=15, pad_token_id=0, use_cache=False))
    seq, full = x, mask  # greedy by recomputing the whole sequence every step, as use_cache=False does
    with torch.no_grad():
        for _ in range(15):
            logits = ours(seq, attention_mask=full, position_ids=(full.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
            full = torch.cat([full, torch.ones(len(x), 1, dtype=full.dtype)], dim=1)
    eos = cfg["vocab_size"] - 1
    for row, ref in zip(a, seq):  # rows that produced EOS are padded after it
        ref = ref.tolist()
        end = ref.index(eos, x.shape[1]) + 1 if eos in ref[x.shape[1]:] else len(ref)
        assert row.tolist()[:end] == ref[:end]


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
    with pytest.raises(ValueError, match=rf"prompt 0 has 10 tokens; with max_new_tokens {n} that is {n + 10} positions, "
                                         rf"more than the model's context window \(n_positions\) of {n}"):
        ours.generate(x, max_new_tokens=n)
    assert ours.generate(x, max_length=14).shape == (1, 14)  # max_length counts the prompt
    with pytest.raises(ValueError, match="max_length"):
        ours.generate(x, max_length=8)


def test_logprobs_match_a_full_forward(pair):
    hf, ours, cfg = pair
    x, mask = prompts(cfg, 2)
    scheduler = Scheduler(ours)
    scheduler.add(Request(x, SamplingParams(max_new_tokens=6, logprobs=3, temperature=0), attention_mask=mask))
    events = [e for step in scheduler.run() for e in step if isinstance(e, TokenEvent)]
    seq = ours.generate(x, attention_mask=mask, max_new_tokens=6, pad_token_id=0)
    with torch.no_grad():
        full_mask = torch.cat([mask, torch.ones(2, 6, dtype=torch.long)], dim=1)
        logits = ours(seq, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits
    logp = logits.log_softmax(-1)
    for e in events:
        step = [f for f in events if f.index == e.index].index(e)
        pos = x.shape[1] + step - 1
        assert abs(e.logprob - logp[e.index, pos, e.token].item()) < 1e-4
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




def test_generate_never_returns_ids_the_checkpoints_tokenizer_cannot_decode(tmp_path):
    from codegen.demo import demo_path

    torch.manual_seed(0)
    model = codegen.CodeGenForCausalLM(codegen.CodeGenConfig(vocab_size=51200, n_embd=32, n_layer=1, n_head=4,
                                                             rotary_dim=4, n_positions=64))
    with torch.no_grad():
        model.lm_head.bias[50295:] += 1000.0  # the head's padding rows win every argmax
    model.save_pretrained(tmp_path / "bare")
    x = torch.tensor([[1, 2, 3]])
    bare = codegen.CodeGenForCausalLM.from_pretrained(tmp_path / "bare")
    assert bare.tokenizer_size is None and (bare.generate(x, max_new_tokens=3)[0, 3:] >= 50295).all()
    model.save_pretrained(tmp_path / "full")
    codegen.CodeGenTokenizerFast.from_pretrained(demo_path()).save_pretrained(tmp_path / "full")
    loaded = codegen.CodeGenForCausalLM.from_pretrained(tmp_path / "full")
    assert loaded.tokenizer_size == 50295
    assert (loaded.generate(x, max_new_tokens=3)[0, 3:] < 50295).all()
    sampled = loaded.generate(x, max_new_tokens=5, do_sample=True, top_k=0, generator=torch.Generator().manual_seed(0))
    assert (sampled[0, 3:] < 50295).all()
