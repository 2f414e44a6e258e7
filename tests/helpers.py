"""Shared test fixtures: tiny random checkpoints built by transformers (the reference oracle)."""

from __future__ import annotations

import os

import pytest
import torch

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
TOKENIZER_DIR = os.path.join(SHARED, "data", "codegen-tokenizer")

# Configs that differ in n_head, head_dim (80 as in 2B), rotary_dim < head_dim and vocab size.
TINY_CONFIGS = {
    "h4_d16_r8": dict(vocab_size=300, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64),
    "h8_d80_r64": dict(vocab_size=520, n_embd=640, n_layer=2, n_head=8, rotary_dim=64, n_positions=96),
    "h4_d32_r32": dict(vocab_size=1000, n_embd=128, n_layer=3, n_head=4, rotary_dim=32, n_positions=128),
    "h12_d8_r4_ninner": dict(vocab_size=257, n_embd=96, n_layer=2, n_head=12, rotary_dim=4, n_positions=64, n_inner=200),
}


def hf_model(cfg: dict, seed: int = 0, attn: str = "eager"):
    """A transformers CodeGenForCausalLM with random weights; LayerNorm and biases perturbed off 1/0."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.CodeGenConfig(**cfg, bos_token_id=cfg["vocab_size"] - 1, eos_token_id=cfg["vocab_size"] - 1)
    config._attn_implementation = attn
    model = transformers.CodeGenForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def save_hf(model, path: str, **kwargs) -> str:
    model.save_pretrained(path, **kwargs)
    return path


def save_hf_checkpoint(model, path, safe_serialization: bool = True, max_shard_size: int | None = None) -> None:
    """Save like transformers' save_pretrained. transformers 5 writes only safetensors, so .bin
    checkpoints are written as transformers 4.x's `safe_serialization=False` did: torch.save of the
    state dict, or shards `pytorch_model-0000i-of-0000n.bin` plus `pytorch_model.bin.index.json`."""
    import json

    if safe_serialization:
        kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        model.save_pretrained(path, **kwargs)
        return
    os.makedirs(path, exist_ok=True)
    model.config.save_pretrained(path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if max_shard_size is None:
        torch.save(state, os.path.join(path, "pytorch_model.bin"))
        return
    shards, size = [{}], 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, os.path.join(path, name))
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in state.values())
    with open(os.path.join(path, "pytorch_model.bin.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)


def sharp_lm(seed: int = 0, vocab_size: int = 51200, scale: float = 6.0):
    """Our CodeGenForCausalLM at CodeGen's vocabulary size (51200) with tiny layers, its matrices scaled
    so that greedy paths vary: for text-level tests with the real tokenizer."""
    import codegen

    torch.manual_seed(seed)
    config = codegen.CodeGenConfig(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=256)
    model = codegen.CodeGenForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return model


def count_native_passes(monkeypatch) -> list[int]:
    """Count the native one-row decode passes (codegen.native.fused): a list that gets a 1 per pass of
    FusedDecoder.__call__ and of FusedDecoder.decode_picks (one per token it picks)."""
    from codegen.native.fused import FusedDecoder

    passes: list[int] = []
    call, decode_picks = FusedDecoder.__call__, FusedDecoder.decode_picks

    def counted_picks(self, *a, **k):
        out = decode_picks(self, *a, **k)
        passes.extend([1] * len(out[0]))
        return out

    monkeypatch.setattr(FusedDecoder, "__call__", lambda self, *a: passes.append(1) or call(self, *a))
    monkeypatch.setattr(FusedDecoder, "decode_picks", counted_picks)
    return passes
