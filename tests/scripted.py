"""A weight-free stand-in for CodeGenForCausalLM whose next-token logits a test chooses: engine tests
of stops, bans, seeds, row dropping and admission run without transformers or real weights.

`ScriptedLM(script)` calls `script(history)` with a row's real tokens so far (prompt and generated,
padding left out) and takes the returned (V,) logits. It keeps each row's tokens in the KV cache
itself (head 0 of layer 0 stores the token id), so it exercises the engine's cache operations
(replication, dropping rows, admission with right-alignment, compaction) as a real model does.
"""

from __future__ import annotations

import torch
from torch import nn

import codegen


class _Out:
    def __init__(self, h):
        self.last_hidden_state = h


class _Transformer(nn.Module):
    def __init__(self, lm: ScriptedLM) -> None:
        super().__init__()
        self._lm = [lm]

    def forward(self, input_ids, past_key_values=None, attention_mask=None, position_ids=None, **_):
        lm = self._lm[0]
        lm.forwards.append(tuple(input_ids.shape))
        cache = past_key_values
        B, T = input_ids.shape
        kv = input_ids.float()[:, None, :, None].expand(B, lm.config.n_head, T, lm.config.head_dim)
        keys, _ = cache.update(0, kv, kv)  # (B, H, length + T, 1)
        past = cache.length
        cache.advance(T)
        mask = torch.ones(B, past + T, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        out = torch.empty(B, T, lm.config.vocab_size)
        for b in range(B):
            ids = keys[b, 0, :, 0].long()
            for t in range(T):
                upto = past + t + 1
                history = [int(x) for x, m in zip(ids[:upto], mask[b, :upto]) if m]
                out[b, t] = lm.script(history) if history else 0.0  # a padding position
        return _Out(out)


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # the engine reads the device and dtype here

    def forward(self, h):
        return h


class ScriptedLM(nn.Module):
    def __init__(self, script, vocab_size: int = 64, n_positions: int = 128, eos: int = 63) -> None:
        super().__init__()
        self.config = codegen.CodeGenConfig(vocab_size=vocab_size, n_embd=8, n_layer=1, n_head=4, rotary_dim=2,
                                            n_positions=n_positions, activation_function="relu",
                                            bos_token_id=eos, eos_token_id=eos)
        self.script = script
        self.transformer = _Transformer(self)
        self.lm_head = _Head()
        self.forwards: list[tuple[int, int]] = []  # (rows, tokens) of every forward pass
        self.eval()


def one_hot(token: int, vocab: int = 64, high: float = 10.0) -> torch.Tensor:
    x = torch.zeros(vocab)
    x[token] = high
    return x


def counter(vocab: int = 64, eos: int | None = None, eos_after: int | None = None):
    """A script whose greedy next token is (last token + 1) % (vocab - 1); with eos_after, EOS once the
    history holds that many tokens."""
    def script(history):
        if eos_after is not None and len(history) >= eos_after:
            return one_hot(eos if eos is not None else vocab - 1, vocab)
        return one_hot((history[-1] + 1) % (vocab - 1), vocab)
    return script


def uniform(vocab: int = 64):
    """Every id equally likely: sampling tests see the random streams directly."""
    return lambda history: torch.zeros(vocab)


def coder(tokenizer, answers: dict[str, str], default: str = "pass"):
    """A script that writes, after the conversation's last turn comment "# <words>", the code
    answers[words] (default: `default`) and then three newlines (where the paradigm's truncation
    cuts), token by token, greedily: a deterministic 'model' for conversation tests."""
    import re

    def script(history):
        text = tokenizer.decode(history)
        turns = list(re.finditer(r"^# (.*)\n", text, re.M))
        if not turns:
            return one_hot(tokenizer.eos_token_id, len(tokenizer))
        last = turns[-1]
        written = text[last.end():]
        target = tokenizer.encode(answers.get(last.group(1), default) + "\n\n\n")
        for k in range(len(target) + 1):
            if tokenizer.decode(target[:k]) == written:
                return one_hot(target[k] if k < len(target) else tokenizer.eos_token_id, len(tokenizer))
        return one_hot(tokenizer.eos_token_id, len(tokenizer))
    return script


def coder_lm(tokenizer, answers: dict[str, str], default: str = "pass") -> ScriptedLM:
    return ScriptedLM(coder(tokenizer, answers, default), vocab_size=len(tokenizer), n_positions=2048,
                      eos=tokenizer.eos_token_id)
