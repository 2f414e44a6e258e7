"""The CodeGen transformer: `CodeGenModel` and `CodeGenForCausalLM`, numerically equal to transformers'.

Module and parameter names are the checkpoint keys (`transformer.h.0.attn.qkv_proj.weight`, ...), so
transformers' state dicts load key for key. What must match (see the reference note, section 1):
a fused qkv_proj in 4 shards (8 for CodeGen2-1B/3.7B: `config.qkv_shards`) ordered (query, value,
key); GPT-J interleaved rotary on the first `rotary_dim` dims of each head; a parallel block (one ln_1 feeds attention and MLP); fp32 attention
scores; an untied lm_head with bias; fp32 logits. This file is the network only: it knows nothing of
files or tokenizers (`from_pretrained`/`save_pretrained` hand over to `checkpoint.py`) nor of CPU
kernels (the engine's backend, `codegen.engine.backend`, swaps its Linear modules for ones that pick
native kernels, from outside); `generate` hands over to the engine.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from . import checkpoint
from .config import CodeGenConfig
from .ops import ACT_FNS, apply_rotary, rotary_tables
from .outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

_INIT_FUNCTIONS = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
                   "trunc_normal_", "zeros_", "ones_", "constant_")


@contextlib.contextmanager
def no_init_weights():
    """Build models without initialising their weights (as transformers' context of that name does,
    torch's own init functions included): for loading, where every weight is assigned from the
    checkpoint next. On the meta device torch's `normal_` alone costs ~1.5 s (it imports
    torch._dynamo), a third of `codegen complete`'s start with the demo model."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    for name in _INIT_FUNCTIONS:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def is_cache_object(past) -> bool:
    """A preallocated cache the caller owns (e.g. `codegen.KVCache`): it has `length`, `capacity`,
    `update(layer, key, value)` -> all keys and values so far, and `advance(n)`; the legacy format
    is a tuple of (key, value) per layer."""
    return past is not None and not isinstance(past, (tuple, list))


class CodeGenAttention(nn.Module):
    # softmax(q k^T / sqrt(D) + mask) v with SDPA's arguments; a backend may set its own per module
    # (codegen.engine.backend: the same attention, computed by the fastest route for the input).
    attention_fn = staticmethod(F.scaled_dot_product_attention)
    # Optional (qkv (B, T, 3E), sin, cos, shards, heads) -> (q, k, v) (B, H, T, D), or None to use the
    # torch code below; set from outside (the engine's backend installs a native one for inference).
    split_heads_fn = None

    def __init__(self, config: CodeGenConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.embed_dim = config.n_head, config.head_dim, config.n_embd
        self.shards = config.qkv_shards  # 4 (CodeGen-1, CodeGen2-7B/16B) or 8 (CodeGen2-1B/3.7B)
        self.qkv_proj = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.attn_pdrop = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, sin, cos, mask, layer_past, layer_idx, head_mask=None, output_attentions=False):
        B, T, _ = x.shape
        H, D = self.n_head, self.head_dim
        # Output features are S shards of [q | v | k], each L = E/S wide and split into H/S heads of D.
        S = self.shards
        fused = self.qkv_proj(x)
        heads = self.split_heads_fn(fused, sin, cos, S, H) if self.split_heads_fn is not None else None
        if heads is not None:
            q, k, v = heads
        else:
            qkv = fused.view(B, T, S, 3, H // S, D)
            v = qkv[:, :, :, 1].reshape(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
            # Rotary on q and k together, in fp32, then rounded to the model dtype so that cached and
            # uncached runs agree.
            qk = apply_rotary(qkv[:, :, :, 0::2], sin, cos).to(v.dtype)  # (B, T, S, 2, H/S, D)
            q = qk[:, :, :, 0].reshape(B, T, H, D).transpose(1, 2)
            k = qk[:, :, :, 1].reshape(B, T, H, D).transpose(1, 2)

        if is_cache_object(layer_past):
            k, v = layer_past.update(layer_idx, k, v)
            present = None
        else:
            if layer_past is not None:
                k = torch.cat((layer_past[0].to(k.dtype), k), dim=-2)
                v = torch.cat((layer_past[1].to(v.dtype), v), dim=-2)
            present = (k, v)

        dropout = self.attn_pdrop if self.training else 0.0
        probs = None
        if output_attentions or head_mask is not None:
            # Exact path: fp32 scores and softmax, probabilities returned.
            scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask.float()
            probs = F.dropout(scores.softmax(dim=-1).to(v.dtype), p=dropout, training=self.training)
            if head_mask is not None:
                probs = probs * head_mask
            out = torch.matmul(probs, v)
        else:
            out = self.attention_fn(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None and T > 1
            )
        out = self.resid_dropout(self.out_proj(out.transpose(1, 2).reshape(B, T, self.embed_dim)))
        return out, present, probs


class CodeGenMLP(nn.Module):
    def __init__(self, config: CodeGenConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(config.n_embd, config.inner_dim)
        self.fc_out = nn.Linear(config.inner_dim, config.n_embd)
        self.act = ACT_FNS[config.activation_function]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc_out(self.act(self.fc_in(x))))


class CodeGenBlock(nn.Module):
    def __init__(self, config: CodeGenConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CodeGenAttention(config)
        self.mlp = CodeGenMLP(config)

    def forward(self, h, sin, cos, mask, layer_past=None, head_mask=None, output_attentions=False):
        a = self.ln_1(h)  # parallel residual: attention and MLP read the same normalised input
        attn_out, present, probs = self.attn(a, sin, cos, mask, layer_past, self.layer_idx, head_mask, output_attentions)
        return attn_out + self.mlp(a) + h, present, probs


class CodeGenPreTrainedModel(nn.Module):
    """Shared surface: init, dtype/device, gradient checkpointing, and the checkpoint hand-over."""

    config: CodeGenConfig

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        for m in self.modules():
            if isinstance(m, CodeGenModel):
                m.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for m in self.modules():
            if isinstance(m, CodeGenModel):
                m.gradient_checkpointing = False

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        torch_dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        config: CodeGenConfig | None = None,
        revision: str | None = None,
        progress: bool = False,
        quantize=None,
    ):
        """transformers' from_pretrained; `quantize` (a codegen.quant.QuantSpec, or "int8" / "int4")
        quantizes every Linear as it is read (weight-only)."""
        if isinstance(quantize, str):
            from .quant import QuantSpec

            quantize = QuantSpec.parse(quantize)
        return checkpoint.load_pretrained(
            cls, path, torch_dtype=torch_dtype, device=device, config=config, revision=revision, progress=progress,
            quantize=quantize,
        )

    def save_pretrained(self, path: str | os.PathLike, *, safe_serialization: bool = True, max_shard_size: int | str = "5GB") -> None:
        checkpoint.save_pretrained(self, path, safe_serialization=safe_serialization, max_shard_size=max_shard_size)


class CodeGenModel(CodeGenPreTrainedModel):
    def __init__(self, config: CodeGenConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(CodeGenBlock(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.apply(self._init_weights)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.wte = value

    def _check_ids(self, name: str, ids: torch.Tensor) -> None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.config.vocab_size)][0].item()
            raise ValueError(f"{name} contains id {bad}, outside the vocabulary [0, {self.config.vocab_size})")

    def _attention_mask(self, attention_mask, past_len, T, dtype, device, exact: bool):
        """Additive (B or 1, 1, T, past_len + T) mask, or None where SDPA's causal flag suffices."""
        total = past_len + T
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[1] != total:
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}; expected (batch, {total}) = "
                    f"(batch, past length {past_len} + new tokens {T})"
                )
            if bool(attention_mask.bool().all()):
                attention_mask = None
        if attention_mask is None and not exact and (past_len == 0 or T == 1):
            return None
        # Query i (absolute position past_len + i) sees key j if j <= past_len + i and j is not padding.
        keep = torch.ones(T, total, dtype=torch.bool, device=device).tril(diagonal=past_len)[None, None]
        if attention_mask is not None:
            keep = keep & attention_mask.bool()[:, None, None, :]
        # Scores are fp32 on the exact path; SDPA adds the mask in the compute dtype.
        mask_dtype = torch.float32 if exact else dtype
        return torch.zeros(keep.shape, dtype=mask_dtype, device=device).masked_fill(~keep, torch.finfo(mask_dtype).min)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: tuple | Any | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPast | tuple:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        return_dict = True if return_dict is None else return_dict
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputation in backward cannot re-append to a cache
        if input_ids is not None:
            self._check_ids("input_ids", input_ids)
            inputs_embeds = self.wte(input_ids.view(-1, input_ids.shape[-1]))
        B, T = inputs_embeds.shape[:2]

        if is_cache_object(past_key_values):
            past_len = past_key_values.length
            if past_len + T > past_key_values.capacity:
                raise ValueError(f"KVCache holds {past_key_values.capacity} positions; {past_len} used + {T} new do not fit")
        else:
            past_len = past_key_values[0][0].shape[-2] if past_key_values else 0
        if position_ids is None:
            if past_len + T > self.config.n_positions:
                raise ValueError(
                    f"sequence length {past_len + T} (past {past_len} + input {T}) exceeds the model's "
                    f"n_positions = {self.config.n_positions}"
                )
            position_ids = torch.arange(past_len, past_len + T, device=inputs_embeds.device)[None]
        else:
            position_ids = position_ids.view(-1, T)
            if position_ids.numel() and (int(position_ids.min()) < 0 or int(position_ids.max()) >= self.config.n_positions):
                raise ValueError(f"position_ids must lie in [0, n_positions = {self.config.n_positions})")
        position_ids = position_ids.expand(B, T)

        h = inputs_embeds.to(self.ln_f.weight.dtype)  # the blocks' dtype (an int8 table's rows come as fp32)
        if token_type_ids is not None:
            token_type_ids = token_type_ids.view(-1, T)
            self._check_ids("token_type_ids", token_type_ids)
            h = h + self.wte(token_type_ids).to(h.dtype)  # token types share the token embedding table
        h = self.drop(h)

        exact = bool(output_attentions) or head_mask is not None
        mask = self._attention_mask(attention_mask, past_len, T, h.dtype, h.device, exact)
        sin, cos = rotary_tables(position_ids, self.config.rotary_dim, self.config.head_dim)
        head_masks = self._head_masks(head_mask, h.dtype)

        presents, all_hidden, all_attn = [] if use_cache else None, [] if output_hidden_states else None, [] if output_attentions else None
        for i, block in enumerate(self.h):
            if all_hidden is not None:
                all_hidden.append(h)
            layer_past = past_key_values if is_cache_object(past_key_values) else (past_key_values[i] if past_key_values else None)
            args = (h, sin, cos, mask, layer_past, head_masks[i], bool(output_attentions))
            if self.gradient_checkpointing and self.training:
                h, present, probs = grad_checkpoint(block, *args, use_reentrant=False)
            else:
                h, present, probs = block(*args)
            if presents is not None:
                presents.append(present)
            if all_attn is not None:
                all_attn.append(probs)
        h = self.ln_f(h)
        if all_hidden is not None:
            all_hidden.append(h)

        cache = None
        if is_cache_object(past_key_values):
            past_key_values.advance(T)
            cache = past_key_values
        elif use_cache:
            cache = tuple(presents)
        out = BaseModelOutputWithPast(
            last_hidden_state=h,
            past_key_values=cache,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            attentions=tuple(all_attn) if all_attn is not None else None,
        )
        return out if return_dict else out.to_tuple()

    def _head_masks(self, head_mask: torch.Tensor | None, dtype: torch.dtype) -> list:
        """(H,) or (n_layer, H) -> per-layer (1, H, 1, 1) multipliers of the attention probabilities."""
        L, H = self.config.n_layer, self.config.n_head
        if head_mask is None:
            return [None] * L
        if head_mask.shape not in ((H,), (L, H)):
            raise ValueError(f"head_mask has shape {tuple(head_mask.shape)}; expected ({H},) or ({L}, {H})")
        head_mask = head_mask.to(dtype).expand(L, H)
        return [head_mask[i][None, :, None, None] for i in range(L)]


class CodeGenForCausalLM(CodeGenPreTrainedModel):
    # The tokenizer's size when the checkpoint directory has tokenizer files (set by from_pretrained):
    # `generate` never returns ids >= it (the head has 51200 rows, CodeGen's tokenizer 50295 tokens).
    tokenizer_size: int | None = None

    def __init__(self, config: CodeGenConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = CodeGenModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)
        self._init_weights(self.lm_head)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """transformers' `generate` (greedy search and sampling): same keywords, same output tensor;
        a thin layer over the generation engine (`codegen.engine.generate`)."""
        from .engine.generate import generate

        return generate(self, input_ids, attention_mask, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: tuple | Any | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> CausalLMOutputWithPast | tuple:
        base = self.transformer(
            input_ids=input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(base.last_hidden_state).float()  # fp32 logits, as transformers 4.x
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            # Token t predicts label t + 1; positions labelled -100 are ignored.
            loss = F.cross_entropy(
                logits[..., :-1, :].reshape(-1, logits.shape[-1]), labels[..., 1:].reshape(-1), ignore_index=-100
            )
        out = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=base.past_key_values,
            hidden_states=base.hidden_states,
            attentions=base.attentions,
        )
        return out if return_dict is None or return_dict else out.to_tuple()
