"""Tensor-parallel slices in one process: the layout conversion and its inverse, the local qkv
layout against the whole model's heads, and reading slices from safetensors files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import codegen
from codegen.parallel import shard
from codegen.safetensors_io import iter_safetensors_parts


def _config(n_head=8, mp_num=None, n_embd=64, vocab=96, n_inner=None):
    return codegen.CodeGenConfig(vocab_size=vocab, n_embd=n_embd, n_layer=2, n_head=n_head, rotary_dim=4,
                                 n_positions=32, mp_num=mp_num, n_inner=n_inner)


CASES = [(4, None, 2), (4, None, 4), (8, None, 8), (8, 8, 2), (8, 8, 4), (8, 1, 2), (8, 2, 4), (8, 1, 8)]


@pytest.mark.parametrize("n_head,mp_num,tp", CASES)
def test_shard_then_merge_is_the_identity(n_head, mp_num, tp):
    cfg = _config(n_head, mp_num)
    torch.manual_seed(0)
    model = codegen.CodeGenForCausalLM(cfg)
    for key, tensor in model.state_dict().items():
        parts = [shard.shard_tensor(key, tensor, cfg, r, tp) for r in range(tp)]
        if key.endswith("mlp.fc_out.bias"):
            assert parts[0] is not None and all(p is None for p in parts[1:])  # added once
        assert torch.equal(shard.merge_tensor(key, parts, cfg), tensor), key
        if key.endswith(("qkv_proj.weight", "fc_in.weight", "lm_head.weight")):
            assert all(p.shape[0] == tensor.shape[0] // tp for p in parts), key
        if key.endswith(("out_proj.weight", "fc_out.weight")):
            assert all(p.shape[1] == tensor.shape[1] // tp for p in parts), key


@pytest.mark.parametrize("n_head,mp_num,tp", CASES)
def test_local_qkv_holds_the_ranks_heads(n_head, mp_num, tp):
    """Each rank's local qkv output, viewed the way its attention module views it, is the whole
    model's q, v and k of heads [r H/t, (r+1) H/t), in order."""
    cfg = _config(n_head, mp_num)
    H, D, S = cfg.n_head, cfg.head_dim, cfg.qkv_shards
    w = torch.randn(3 * cfg.n_embd, cfg.n_embd)
    x = torch.randn(5, cfg.n_embd)
    whole = (x @ w.T).view(5, S, 3, H // S, D)
    # the model's own reading: heads h = shard * (H/S) + j, parts ordered (q, v, k)
    q, v, k = (whole[:, :, i].reshape(5, H, D) for i in range(3))
    Sl = shard.local_shards(cfg, tp)
    for r in range(tp):
        local = (x @ shard.shard_tensor("transformer.h.0.attn.qkv_proj.weight", w, cfg, r, tp).T).view(5, Sl, 3, H // tp // Sl, D)
        heads = slice(r * H // tp, (r + 1) * H // tp)
        for i, ref in enumerate((q, v, k)):
            assert torch.equal(local[:, :, i].reshape(5, H // tp, D), ref[:, heads]), (r, i)
    assert (S % tp == 0) == isinstance(shard.qkv_rows(cfg, 0, tp), slice)  # no permutation when t divides S


def test_splits_that_do_not_divide_are_refused():
    with pytest.raises(ValueError, match="--tp 3 does not divide the model's n_head = 8"):
        shard.check_split(_config(8), 3)
    with pytest.raises(ValueError, match="vocab_size = 97"):
        shard.check_split(_config(8, vocab=97), 2)
    with pytest.raises(ValueError, match="inner_dim"):
        shard.check_split(_config(4, n_inner=90), 4)


def test_safetensors_parts_read_only_what_is_asked(tmp_path):
    torch.manual_seed(1)
    tensors = {"a": torch.randn(37, 300), "b": torch.randn(11, 7).to(torch.bfloat16), "c": torch.randn(9), "d": torch.randn(3, 4)}
    file = str(tmp_path / "m.safetensors")
    save_file(tensors, file)
    index = torch.tensor([0, 1, 2, 5, 6, 10])
    asks = {"a": (1, slice(150, 300), True), "b": (0, index, True), "c": (0, slice(3, 6), True), "d": None}
    got = dict(iter_safetensors_parts(file, lambda key, shape, dtype: asks[key]))
    assert set(got) == {"a", "b", "c"}
    assert torch.equal(got["a"], tensors["a"][:, 150:300]) and got["a"].is_contiguous()
    assert torch.equal(got["b"], tensors["b"][index]) and got["b"].dtype == torch.bfloat16
    assert torch.equal(got["c"], tensors["c"][3:6])
    from codegen import safetensors_io

    old = safetensors_io.READ_BLOCK
    safetensors_io.READ_BLOCK = 7 * 300 * 4  # blocks of 7 rows: the last block is partial
    try:
        got = dict(iter_safetensors_parts(file, lambda key, shape, dtype: (1, slice(1, 299), False) if key == "a" else None))
    finally:
        safetensors_io.READ_BLOCK = old
    assert torch.equal(got["a"], tensors["a"][:, 1:299])
    # a mapped run of rows is a view of the file's pages (copy-on-write: writing it leaves the file as it is)
    got = dict(iter_safetensors_parts(file, lambda key, shape, dtype: (0, slice(4, 9), key == "a") if key in "ab" else None))
    assert torch.equal(got["a"], tensors["a"][4:9]) and torch.equal(got["b"], tensors["b"][4:9])
    got["a"].zero_()
    assert torch.equal(dict(iter_safetensors_parts(file, lambda k, s, d: (0, slice(4, 9), True) if k == "a" else None))["a"],
                       tensors["a"][4:9])
