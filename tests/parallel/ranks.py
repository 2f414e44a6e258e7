"""Helpers of the multi-process tests: torchrun as users start it (2 CPU ranks over gloo on loopback)
and tiny random checkpoints. (A module of its own: `conftest` names clash across test folders.)"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

import codegen
from helpers import TOKENIZER_DIR

HERE = os.path.dirname(os.path.abspath(__file__))


def torchrun(*args: str, ranks: int = 2, timeout: float = 240, env: dict | None = None, cwd: str | None = None):
    """`torchrun --standalone --nproc-per-node RANKS ARGS...`; the finished process (stdout, stderr)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)


def tiny_lm(path: str, seed: int = 0, n_head: int = 4, mp_num: int | None = None, n_embd: int = 64, bin: bool = False) -> str:
    """A random CodeGen-1 layout checkpoint at CodeGen's vocabulary (51200) with the real tokenizer,
    its matrices scaled so that greedy paths vary; `bin`: as pytorch_model.bin (torch.save)."""
    import shutil

    torch.manual_seed(seed)
    cfg = codegen.CodeGenConfig(vocab_size=51200, n_embd=n_embd, n_layer=2, n_head=n_head, rotary_dim=8,
                                n_positions=256, mp_num=mp_num)
    model = codegen.CodeGenForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(5.0)
            elif "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, safe_serialization=not bin)
    for name in os.listdir(TOKENIZER_DIR):
        if name != "PROVENANCE.md":
            shutil.copy(os.path.join(TOKENIZER_DIR, name), path)
    return path
