"""Model behaviour that transformers 5 no longer has (head_mask), training paths, half precision, errors."""

from __future__ import annotations

import pytest
import torch

import codegen
from codegen import CodeGenConfig, CodeGenForCausalLM

CFG = dict(vocab_size=300, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = CodeGenForCausalLM(CodeGenConfig(**CFG)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return m


def x(b=2, t=9, seed=0):
    return torch.randint(0, CFG["vocab_size"], (b, t), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_head_mask_documented_semantics(model):
    """transformers 4.x: head_mask (H,) or (L, H) multiplies the attention probabilities; 0 removes a head."""
    ids = x()
    plain = model(ids).logits
    assert (model(ids, head_mask=torch.ones(4)).logits - plain).abs().max() < 1e-5
    hm = torch.ones(2, 4)
    hm[0, 1] = 0.0
    out = model(ids, head_mask=hm, output_attentions=True)
    assert out.attentions[0][:, 1].abs().max() == 0 and out.attentions[1][:, 1].abs().max() > 0
    # Removing head 1 of layer 0 is the same as zeroing its input columns of out_proj.
    D = CFG["n_embd"] // CFG["n_head"]
    w = model.transformer.h[0].attn.out_proj.weight
    saved = w.clone()
    w[:, D:2 * D] = 0
    try:
        ref = model(ids).logits
    finally:
        w.copy_(saved)
    assert (out.logits - ref).abs().max() < 1e-5
    # A (H,) mask applies to every layer.
    out1 = model(ids, head_mask=torch.tensor([1.0, 0.0, 1.0, 1.0]), output_attentions=True)
    assert all(a[:, 1].abs().max() == 0 for a in out1.attentions)
    with pytest.raises(ValueError, match=r"head_mask has shape \(3,\); expected \(4,\) or \(2, 4\)"):
        model(ids, head_mask=torch.ones(3))


def test_gradient_checkpointing_same_gradients(model):
    ids = x(2, 8)
    grads = []
    for gc in (False, True):
        m = CodeGenForCausalLM(model.config)
        m.load_state_dict(model.state_dict())
        m.train()
        if gc:
            m.gradient_checkpointing_enable()
        out = m(ids, labels=ids)
        assert gc is False or out.past_key_values is None
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_load_and_run(model, tmp_path, dtype):
    model.save_pretrained(tmp_path)
    half = CodeGenForCausalLM.from_pretrained(tmp_path, torch_dtype=dtype)
    assert half.dtype == dtype and half.lm_head.bias.dtype == dtype
    with torch.no_grad():
        ids = x()
        ref = model(ids).logits
        got = half(ids).logits
        assert got.dtype == torch.float32  # logits are fp32 whatever the weights
        assert (got - ref).abs().max() < 0.05
        # cached decoding in half precision equals a full recompute (q/k rounded before the cache)
        out = half(ids[:, :5])
        step = half(ids[:, 5:6], past_key_values=out.past_key_values)
        assert (step.logits[:, -1] - half(ids[:, :6]).logits[:, -1]).abs().max() < 0.05
    half.save_pretrained(tmp_path / "h")
    assert CodeGenForCausalLM.from_pretrained(tmp_path / "h", torch_dtype="auto").dtype == dtype


@torch.no_grad()
def test_input_longer_than_n_positions(model):
    with pytest.raises(ValueError, match=r"sequence length 33 .* exceeds the model's n_positions = 32"):
        model(x(1, 33))
    out = model(x(1, 30))
    with pytest.raises(ValueError, match=r"sequence length 33 \(past 30 \+ input 3\)"):
        model(x(1, 3), past_key_values=out.past_key_values)
    with pytest.raises(ValueError, match=r"position_ids must lie in \[0, n_positions = 32\)"):
        model(x(1, 2), position_ids=torch.tensor([[31, 32]]))


@torch.no_grad()
def test_token_ids_out_of_vocabulary(model):
    ids = x(1, 4)
    ids[0, 2] = 300
    with pytest.raises(ValueError, match=r"input_ids contains id 300, outside the vocabulary \[0, 300\)"):
        model(ids)
    with pytest.raises(ValueError, match=r"token_type_ids contains id -1"):
        model(x(1, 4), token_type_ids=torch.full((1, 4), -1))


@torch.no_grad()
def test_bad_attention_mask_shape(model):
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 5\); expected \(batch, 9\)"):
        model(x(2, 9), attention_mask=torch.ones(2, 5))


@torch.no_grad()
def test_kvcache_overflow_and_replication(model):
    cache = codegen.KVCache.for_model(model, 1, 8)
    model(x(1, 6), past_key_values=cache)
    with pytest.raises(ValueError, match="KVCache holds 8 positions; 6 used \\+ 3 new do not fit"):
        model(x(1, 3), past_key_values=cache)
    cache.replicate(3)
    assert cache.batch_size == 3 and cache.length == 6
    out = model(x(3, 1, seed=4), past_key_values=cache)
    full = model(torch.cat([x(1, 6).expand(3, 6), x(3, 1, seed=4)], dim=1)).logits[:, -1]
    assert (out.logits[:, -1] - full).abs().max() < 1e-5


def test_tied_word_embeddings(tmp_path):
    cfg = CodeGenConfig(**CFG, tie_word_embeddings=True)
    m = CodeGenForCausalLM(cfg)
    assert m.lm_head.weight is m.transformer.wte.weight
    m.save_pretrained(tmp_path)
    back = CodeGenForCausalLM.from_pretrained(tmp_path)
    assert back.lm_head.weight is back.transformer.wte.weight
    ids = x()
    with torch.no_grad():
        assert torch.equal(back(ids).logits, m.eval()(ids).logits)
