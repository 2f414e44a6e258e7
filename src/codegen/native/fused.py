"""A one-row decode step of `CodeGenForCausalLM` as one native call (decode.cpp), which the engine's
backend (`codegen.engine.backend`) uses whenever one row is decoding.

A step of the 350M model in fp32 on a 2-core Xeon spends ~50 ms streaming weights and ~5-6 ms on the
~60 other ops per layer that torch dispatches one by one from Python; the native step runs them all
in one OpenMP region. It applies to a CPU model in fp32 (or bf16 where the CPU has AVX512-BF16),
in inference, with the gelu_new activation, and plain `Linear` modules (no LoRA adapters, no hooks) or
weight-only quantized ones (int8 / int4, `codegen.quant`, with fp32 activations), decoding one
sequence (left padding allowed) into a KVCache. `FusedDecoder.create` returns None
otherwise, and the caller keeps the module path; results are those of the module path up to fp32
summation order.
"""

from __future__ import annotations

import ctypes

import torch

from torch import nn

from ..ops import GELU_TANH, rotary_tables
from . import kernels

MAX_HEAD_DIM = 256  # decode.cpp keeps a head in stack arrays
# Indices into the dims array of decode.cpp.
N_LAYER, EMBD, HEADS, HEAD_DIM, INNER, VOCAB, CAPACITY, LENGTH, TOKEN, THREADS, START, SHARDS, QFORMAT, GROUP = range(14)
N_DIMS = GROUP + 1


def _spec(linear):
    """The quantization of a Linear-like module (QuantLinear's `spec`), or None for a dense one."""
    return getattr(linear, "spec", None)


def _scale(linear):
    return linear.weight_scale if _spec(linear) is not None else None


def _plain(module: torch.nn.Module) -> bool:
    return not (module._forward_hooks or module._forward_pre_hooks)


class FusedDecoder:
    """Holds the addresses of the model's weights: create it after the model's last `.to()`; a call
    after the weights moved raises instead of reading freed memory."""

    def __init__(self, model) -> None:
        cfg, t = model.config, model.transformer
        self.model = model  # keeps the weights alive while their addresses are in use
        self.dtype = t.wte.weight.dtype  # the activations' (and the KV cache's)
        self.bf16 = self.dtype == torch.bfloat16
        spec = _spec(model.lm_head)
        ptrs = []
        for block in t.h:
            attn, mlp = block.attn, block.mlp
            ptrs += [block.ln_1.weight, block.ln_1.bias, attn.qkv_proj.weight, attn.out_proj.weight,
                     mlp.fc_in.weight, mlp.fc_in.bias, mlp.fc_out.weight, mlp.fc_out.bias,
                     *(_scale(m) for m in (attn.qkv_proj, attn.out_proj, mlp.fc_in, mlp.fc_out))]
        self.layers = (ctypes.c_void_p * len(ptrs))(*[None if p is None else p.data_ptr() for p in ptrs])
        head_b, head_s = model.lm_head.bias, _scale(model.lm_head)
        self.fixed = (t.wte.weight.data_ptr(), t.ln_f.weight.data_ptr(), t.ln_f.bias.data_ptr(),
                      model.lm_head.weight.data_ptr(), None if head_s is None else head_s.data_ptr(),
                      None if head_b is None else head_b.data_ptr())
        self.eps = float(t.ln_f.eps)
        sin, cos = rotary_tables(torch.arange(cfg.n_positions)[None], cfg.rotary_dim, cfg.head_dim)
        self.sin = sin.reshape(cfg.n_positions, cfg.head_dim).contiguous()
        self.cos = cos.reshape(cfg.n_positions, cfg.head_dim).contiguous()
        self.dims = (ctypes.c_int64 * N_DIMS)()
        for i, v in ((N_LAYER, cfg.n_layer), (EMBD, cfg.n_embd), (HEADS, cfg.n_head), (HEAD_DIM, cfg.head_dim),
                     (INNER, cfg.inner_dim), (VOCAB, model.lm_head.out_features), (SHARDS, cfg.qkv_shards),
                     (QFORMAT, 0 if spec is None else spec.bits), (GROUP, 0 if spec is None else spec.group_size or 0)):
            self.dims[i] = v
        self.scratch = torch.empty(0)
        self.vocab = model.lm_head.out_features
        self.n_tokens = t.wte.weight.shape[0]

    @classmethod
    def create(cls, model, linear_types: tuple[type, ...] = (nn.Linear,)) -> FusedDecoder | None:
        """A decoder for `model`, or None where the native step does not apply (see the module doc);
        its Linear modules must be exactly of `linear_types` (a subclass may compute otherwise)."""
        if not kernels.load() or kernels.decode_step is None or not hasattr(model, "transformer") or model.training:
            return None
        cfg, wte = model.config, getattr(model.transformer, "wte", None)
        if wte is None:  # not a CodeGen network (a test's scripted model)
            return None
        dtype = wte.weight.dtype
        if (dtype not in (torch.float32, torch.bfloat16) or cfg.activation_function not in GELU_TANH
                or cfg.head_dim > MAX_HEAD_DIM or cfg.head_dim % 2 or cfg.n_head % cfg.qkv_shards or cfg.rotary_dim % 2):
            return None
        t = model.transformer
        if not all(_plain(m) for m in model.modules()):
            return None
        linears = [model.lm_head] + [m for b in t.h for m in (b.attn.qkv_proj, b.attn.out_proj, b.mlp.fc_in, b.mlp.fc_out)]
        if any(type(m) not in linear_types for m in linears):  # e.g. LoRA adapters
            return None
        specs = {_spec(m) for m in linears}
        if len(specs) != 1 or (None not in specs and (dtype != torch.float32 or any(
                m.weight_scale.dtype != torch.float32 or (m.bias is not None and m.bias.dtype != torch.float32)
                or not m.weight.is_contiguous() for m in linears))):
            return None  # one format for all (quantized: fp32 activations, scales and biases)
        if any(p.device.type != "cpu" or p.dtype != dtype or not p.is_contiguous() for p in model.parameters()):
            return None
        if any(b.mlp.fc_in.bias is None or b.mlp.fc_out.bias is None or b.attn.qkv_proj.bias is not None
               or b.attn.out_proj.bias is not None for b in t.h):
            return None
        if any(ln.weight is None or ln.bias is None for ln in [b.ln_1 for b in t.h] + [t.ln_f]):
            return None
        return cls(model)

    def __call__(self, token: int, position: int, cache, start: int = 0) -> torch.Tensor:
        """Logits (1, vocab) in fp32 after feeding `token` at `position`; appends to `cache`. Cache
        positions before `start` are padding, not attended to (see `KVCache.suffix_start`)."""
        first_qkv = self.model.transformer.h[0].attn.qkv_proj.weight
        if self.model.lm_head.weight.data_ptr() != self.fixed[3] or first_qkv.data_ptr() != self.layers[2]:
            raise RuntimeError("the model's weights moved (.to() or a new state dict) since this FusedDecoder was created")
        if cache.batch_size != 1 or cache.key.dtype != self.dtype or not cache.key.is_contiguous():
            raise ValueError("the fused decode step takes a contiguous batch-1 KVCache of the model's dtype")
        if cache.length >= cache.capacity:
            raise ValueError(f"KVCache holds {cache.capacity} positions; all are used")
        if not 0 <= token < self.n_tokens:
            raise ValueError(f"token id {token} outside the embedding's [0, {self.n_tokens})")
        if not 0 <= position < self.sin.shape[0]:
            raise ValueError(f"position {position} outside [0, n_positions = {self.sin.shape[0]})")
        if not 0 <= start <= cache.length:
            raise ValueError(f"start {start} outside [0, cache length {cache.length}]")
        d = self.dims
        d[CAPACITY], d[LENGTH], d[TOKEN], d[THREADS] = cache.capacity, cache.length, token, torch.get_num_threads()
        d[START] = start
        need = kernels.decode_scratch(d)
        if self.scratch.numel() < need:
            self.scratch = torch.empty(need, dtype=torch.float32)
        logits = torch.empty(1, self.vocab, dtype=torch.float32)
        off = position * self.sin.shape[1] * 4
        rc = kernels.decode_step(int(self.bf16), d, self.eps, self.layers, *self.fixed, cache.key.data_ptr(),
                                 cache.value.data_ptr(), self.sin.data_ptr() + off, self.cos.data_ptr() + off,
                                 self.scratch.data_ptr(), logits.data_ptr())
        if rc != 0:
            raise RuntimeError(f"native decode step refused dims {list(d)}")
        cache.advance(1)
        return logits
