"""Numerical parity with transformers.CodeGenForCausalLM holding the same random weights (fp32, 1e-5)."""

from __future__ import annotations

import pytest
import torch

import codegen
from codegen import KVCache
from helpers import TINY_CONFIGS, hf_model

ATOL = 1e-5


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def pair(request, tmp_path_factory):
    cfg = TINY_CONFIGS[request.param]
    hf = hf_model(cfg, seed=hash(request.param) % 1000)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    ours = codegen.CodeGenForCausalLM.from_pretrained(path)
    return hf, ours, cfg


def ids(cfg, b, t, seed=1):
    return torch.randint(0, cfg["vocab_size"], (b, t), generator=torch.Generator().manual_seed(seed))


def maxdiff(a, b):
    return (a - b).abs().max().item()


@torch.no_grad()
def test_plain_logits(pair):
    hf, ours, cfg = pair
    x = ids(cfg, 3, 17)
    assert maxdiff(hf(x).logits, ours(x).logits) < ATOL


@torch.no_grad()
def test_plain_logits_against_hf_sdpa(pair):
    hf, ours, cfg = pair
    hf.config._attn_implementation = "sdpa"
    try:
        x = ids(cfg, 2, 9)
        assert maxdiff(hf(x).logits, ours(x).logits) < ATOL
    finally:
        hf.config._attn_implementation = "eager"


@torch.no_grad()
@pytest.mark.parametrize("positions", ["default", "cumsum"])
def test_left_padded_batch(pair, positions):
    hf, ours, cfg = pair
    x = ids(cfg, 3, 12)
    mask = torch.ones_like(x)
    mask[1, :4] = 0
    mask[2, :7] = 0
    kwargs = {"attention_mask": mask}
    if positions == "cumsum":
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    a, b = hf(x, **kwargs).logits, ours(x, **kwargs).logits
    real = mask.bool()
    assert maxdiff(a[real], b[real]) < ATOL
    # A padded row equals the same tokens run alone (RoPE makes the pad shift cancel).
    solo = ours(x[2:, 7:]).logits
    assert maxdiff(b[2, 7:], solo[0]) < 1e-4


@torch.no_grad()
def test_explicit_position_ids(pair):
    hf, ours, cfg = pair
    x = ids(cfg, 2, 8)
    pos = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10], [0, 2, 4, 6, 8, 10, 12, 14]])
    assert maxdiff(hf(x, position_ids=pos).logits, ours(x, position_ids=pos).logits) < ATOL


@torch.no_grad()
def test_token_type_ids(pair):
    hf, ours, cfg = pair
    x = ids(cfg, 2, 8)
    tt = ids(cfg, 2, 8, seed=5) % 16
    a, b = hf(x, token_type_ids=tt).logits, ours(x, token_type_ids=tt).logits
    assert maxdiff(a, b) < ATOL
    assert maxdiff(b, ours(x).logits) > 1e-3  # token types do change the result


@torch.no_grad()
def test_inputs_embeds(pair):
    hf, ours, cfg = pair
    emb = torch.randn(2, 6, cfg["n_embd"], generator=torch.Generator().manual_seed(3))
    assert maxdiff(hf(inputs_embeds=emb).logits, ours(inputs_embeds=emb).logits) < ATOL
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        ours(input_ids=ids(cfg, 2, 6), inputs_embeds=emb)


@torch.no_grad()
@pytest.mark.parametrize("cache_kind", ["tuple", "kvcache"])
@pytest.mark.parametrize("step", [1, 3])
def test_incremental_decoding(pair, cache_kind, step):
    hf, ours, cfg = pair
    x = ids(cfg, 2, 14)
    full = hf(x).logits
    prompt = 5
    past = KVCache.for_model(ours, 2, 14) if cache_kind == "kvcache" else None
    out = ours(x[:, :prompt], past_key_values=past, use_cache=True)
    got = [out.logits]
    past = out.past_key_values
    for start in range(prompt, 14, step):
        out = ours(x[:, start:start + step], past_key_values=past, use_cache=True)
        past = out.past_key_values
        got.append(out.logits)
    assert maxdiff(torch.cat(got, dim=1), full) < ATOL
    if cache_kind == "tuple":
        assert len(past) == cfg["n_layer"]
        k, v = past[0]
        D = cfg["n_embd"] // cfg["n_head"]
        assert k.shape == v.shape == (2, cfg["n_head"], 14, D)


@torch.no_grad()
def test_incremental_decoding_with_padding(pair):
    hf, ours, cfg = pair
    x = ids(cfg, 2, 10)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    full = hf(x, attention_mask=mask, position_ids=pos).logits
    out = ours(x[:, :6], attention_mask=mask[:, :6], position_ids=pos[:, :6])
    past, got = out.past_key_values, [out.logits]
    for t in range(6, 10):
        out = ours(x[:, t:t + 1], past_key_values=past, attention_mask=mask[:, :t + 1], position_ids=pos[:, t:t + 1])
        past = out.past_key_values
        got.append(out.logits)
    got = torch.cat(got, dim=1)
    assert maxdiff(got[mask.bool()], full[mask.bool()]) < ATOL


@torch.no_grad()
def test_hidden_states_and_attentions(pair):
    hf, ours, cfg = pair
    x = ids(cfg, 2, 9)
    mask = torch.ones_like(x)
    mask[0, :2] = 0
    a = hf(x, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    b = ours(x, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    assert len(b.hidden_states) == cfg["n_layer"] + 1
    assert len(b.attentions) == cfg["n_layer"]
    for ha, hb in zip(a.hidden_states, b.hidden_states):
        assert maxdiff(ha[mask.bool()], hb[mask.bool()]) < ATOL
    for aa, ab in zip(a.attentions, b.attentions):
        assert ab.shape == (2, cfg["n_head"], 9, 9)
        assert maxdiff(aa[1], ab[1]) < ATOL
        assert maxdiff(aa[0, :, 2:], ab[0, :, 2:]) < ATOL
    assert maxdiff(a.logits[mask.bool()], b.logits[mask.bool()]) < ATOL


@torch.no_grad()
def test_loss_with_ignored_labels(pair):
    hf, ours, cfg = pair
    x = ids(cfg, 2, 10)
    labels = x.clone()
    labels[:, :4] = -100
    labels[1, 7] = -100
    a, b = hf(x, labels=labels), ours(x, labels=labels)
    assert b.loss.shape == ()
    assert abs(a.loss.item() - b.loss.item()) < ATOL


@torch.no_grad()
def test_return_dict_false_tuples(pair):
    hf, ours, cfg = pair
    x = ids(cfg, 1, 5)
    t = ours(x, labels=x, output_hidden_states=True, return_dict=False)
    assert isinstance(t, tuple) and len(t) == 4  # (loss, logits, past_key_values, hidden_states)
    ref = hf(x, labels=x, output_hidden_states=True)
    assert abs(t[0].item() - ref.loss.item()) < ATOL
    assert maxdiff(t[1], ref.logits) < ATOL
    assert len(t[2]) == cfg["n_layer"] and len(t[3]) == cfg["n_layer"] + 1
    assert len(ours(x, use_cache=False, return_dict=False)) == 1
    base = ours.transformer(x, return_dict=False)
    assert len(base) == 2 and base[0].shape == (1, 5, cfg["n_embd"])
    out = ours(x)
    assert out[0] is out.logits and out["logits"] is out.logits and list(out.keys()) == ["logits", "past_key_values"]


@torch.no_grad()
def test_base_model_last_hidden_state(pair):
    hf, ours, cfg = pair
    x = ids(cfg, 2, 7)
    a = hf.transformer(x).last_hidden_state
    b = ours.transformer(x).last_hidden_state
    assert maxdiff(a, b) < ATOL
