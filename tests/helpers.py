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
