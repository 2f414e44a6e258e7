"""A one-row decode step of `CodeGenForCausalLM` as one native call (decode.cpp), which the engine's
backend (`codegen.engine.backend`) uses whenever one row is decoding.

A step of the 350M model in fp32 on a 2-core Xeon spends ~50 ms streaming weights and ~5-6 ms on the
~60 other ops per layer that torch dispatches one by one from Python; the native step runs them all
in one OpenMP region. It applies to a CPU model in fp32 (or bf16 where the CPU has AVX512-BF16),
in inference, with the gelu_new activation, and plain `Linear` modules (no LoRA adapters, no hooks) or
weight-only quantized ones (int8 / int4, `codegen.quant`: fp32 or bf16 activations, quantized to int8 per product), decoding one
sequence (left padding allowed) into a KVCache. `FusedDecoder.create` returns None
otherwise, and the caller keeps the module path; results are those of the module path up to fp32
summation order. `FusedDecoder.decode_picks` also picks the next tokens (argmax or a sample, with bans:
`Picks`) and runs them, several steps in one call: the scheduler's bursts for a lone row.
"""

from __future__ import annotations

import ctypes
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from torch import nn

from ..ops import GELU_TANH, rotary_tables
from . import kernels

logger = logging.getLogger(__name__)

MAX_HEAD_DIM = 256  # decode.cpp keeps a head in stack arrays
DECODE_ABI = 5


class DecodeArgs(ctypes.Structure):
    """decode.cpp's DecodeArgs, field for field (checked against the library's own layout on first use)."""

    _fields_ = [(name, ctypes.c_int64) for name in (
        "abi", "size", "n_layer", "embd", "heads", "head_dim", "inner", "vocab", "shards", "qformat", "group", "bf16",
        "capacity", "length", "start", "threads", "embed_int8")] + [
        ("eps", ctypes.c_float), ("embed_scale", ctypes.c_float)] + [
        (name, ctypes.c_void_p) for name in ("layers", "embed", "lnf_w", "lnf_b", "head_w", "head_s", "head_b", "key",
                                            "value", "sin", "cos", "scratch", "logits")] + [
        (name, ctypes.c_int64) for name in ("picks", "limit", "n_banned", "n_stop", "ban_stop", "top_k")] + [
        ("temperature", ctypes.c_double), ("top_p", ctypes.c_double), ("uniforms", ctypes.c_void_p)] + [
        (name, ctypes.c_int64) for name in ("embed_fd", "embed_offset")] + [
        (name, ctypes.c_void_p) for name in ("embed_table", "embed_scales", "banned", "stop", "interrupt", "tokens")] + [
        ("picked", ctypes.c_int64)]


@dataclass(frozen=True)
class Picks:
    """The choice of the next tokens the native step makes itself (`FusedDecoder.decode_picks`), as the
    engine's Python path makes it (`engine.select`): `banned` ids excluded, `stop` ids excluded from the
    first `ban_stop` picks, ids from `limit` on never picked; then greedy (temperature 0: the first
    largest logit, a NaN counting as the largest) or sampled (`select.sample`'s top_k, temperature,
    top_p, and pick j drawn by uniforms[j], from the row's own stream); at most `count` picks, the last
    one a stop id if any is."""

    count: int
    limit: int
    banned: tuple[int, ...] = ()
    stop: tuple[int, ...] = ()
    ban_stop: int = 0
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    uniforms: tuple[float, ...] = ()  # sampled: one per pick, each in [0, 1)

    @property
    def sampled(self) -> bool:
        return self.temperature > 0


def layout() -> str:
    """This mirror's "name:offset,...,sizeof:N", the string codegen_decode_layout() returns."""
    fields = ",".join(f"{name}:{getattr(DecodeArgs, name).offset}" for name, _ in DecodeArgs._fields_)
    return f"{fields},sizeof:{ctypes.sizeof(DecodeArgs)}"


def _matches_library() -> bool:
    if kernels.decode_layout != layout():
        logger.warning("native decode step disabled: the library's DecodeArgs (%s) differ from fused.py's (%s)",
                       kernels.decode_layout, layout())
        return False
    return True


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
        self.dtype = t.ln_f.weight.dtype  # the activations' (and the KV cache's)
        self.bf16 = self.dtype == torch.bfloat16
        self.wte = t.wte  # nn.Embedding or QuantEmbedding: the step reads the token's row in place (int8: and its scale)
        self.dense_embedding = isinstance(self.wte, nn.Embedding)
        self.embed_w = self.wte.weight.data_ptr()
        self.row_bytes = self.wte.weight.shape[1] * self.wte.weight.element_size()
        # an int8 table's scales, read through numpy: a torch op right after a step's weight stream
        # costs ~10-90 us (its code and data evicted from the caches), numpy's indexing ~1-3
        self.embed_scales = None if self.dense_embedding else self.wte.weight_scale.numpy()
        self.row_buffer = np.empty(self.row_bytes, dtype=np.uint8)
        spec = _spec(model.lm_head)
        ptrs = []
        for block in t.h:
            attn, mlp = block.attn, block.mlp
            ptrs += [block.ln_1.weight, block.ln_1.bias, attn.qkv_proj.weight, attn.out_proj.weight,
                     mlp.fc_in.weight, mlp.fc_in.bias, mlp.fc_out.weight, mlp.fc_out.bias,
                     *(_scale(m) for m in (attn.qkv_proj, attn.out_proj, mlp.fc_in, mlp.fc_out))]
        self.layers = (ctypes.c_void_p * len(ptrs))(*[None if p is None else p.data_ptr() for p in ptrs])
        head_b, head_s = model.lm_head.bias, _scale(model.lm_head)
        sin, cos = rotary_tables(torch.arange(cfg.n_positions)[None], cfg.rotary_dim, cfg.head_dim)
        self.sin = sin.reshape(cfg.n_positions, cfg.head_dim).contiguous()
        self.cos = cos.reshape(cfg.n_positions, cfg.head_dim).contiguous()
        a = self.args = DecodeArgs()
        a.abi, a.size, a.embed_int8 = DECODE_ABI, ctypes.sizeof(DecodeArgs), int(not self.dense_embedding)
        a.n_layer, a.embd, a.heads, a.head_dim, a.inner = cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.inner_dim
        a.vocab, a.shards, a.bf16 = model.lm_head.out_features, cfg.qkv_shards, int(self.bf16)
        a.qformat, a.group = (0, 0) if spec is None else (spec.bits, spec.group_size or 0)
        a.eps, a.layers = float(t.ln_f.eps), ctypes.cast(self.layers, ctypes.c_void_p)
        a.lnf_w, a.lnf_b, a.head_w = t.ln_f.weight.data_ptr(), t.ln_f.bias.data_ptr(), model.lm_head.weight.data_ptr()
        a.head_s = None if head_s is None else head_s.data_ptr()
        a.head_b = None if head_b is None else head_b.data_ptr()
        self.head_w = a.head_w
        self.scratch, self.scratch_for = torch.empty(0), -1  # the scratch floats for a cache capacity
        self.vocab = model.lm_head.out_features
        self.n_tokens = self.wte.weight.shape[0]

    @classmethod
    def create(cls, model, linear_types: tuple[type, ...] = (nn.Linear,)) -> FusedDecoder | None:
        """A decoder for `model`, or None where the native step does not apply (see the module doc);
        its Linear modules must be exactly of `linear_types` (a subclass may compute otherwise)."""
        if not kernels.load() or kernels.decode_step is None or not hasattr(model, "transformer") or model.training:
            return None
        if not _matches_library():
            return None
        cfg, wte = model.config, getattr(model.transformer, "wte", None)
        if wte is None or getattr(model.transformer, "ln_f", None) is None:  # not a CodeGen network (a scripted model)
            return None
        from ..quant import QuantEmbedding

        dtype = model.transformer.ln_f.weight.dtype
        if (wte.dtype if isinstance(wte, QuantEmbedding) else wte.weight.dtype) != dtype:
            return None
        if isinstance(wte, QuantEmbedding) and not (
                wte.weight.dtype == torch.int8 and wte.weight.is_contiguous() and wte.weight.device.type == "cpu"
                and wte.weight_scale.dtype == torch.float32 and wte.weight_scale.is_contiguous()):
            return None  # the step reads the int8 row in place, its scale through numpy
        if (dtype not in (torch.float32, torch.bfloat16) or cfg.activation_function not in GELU_TANH
                or cfg.head_dim > MAX_HEAD_DIM or cfg.head_dim % 2 or cfg.n_head % cfg.qkv_shards or cfg.rotary_dim % 2):
            return None
        t = model.transformer
        if getattr(model, "tensor_parallel", None) is not None:  # a rank's slice: its steps need collectives
            return None
        if not all(_plain(m) for m in model.modules()):
            return None
        linears = [model.lm_head] + [m for b in t.h for m in (b.attn.qkv_proj, b.attn.out_proj, b.mlp.fc_in, b.mlp.fc_out)]
        if any(type(m) not in linear_types for m in linears):  # e.g. LoRA adapters
            return None
        specs = {_spec(m) for m in linears}
        if len(specs) != 1 or (None not in specs and any(
                m.weight_scale.dtype != torch.float32 or (m.bias is not None and m.bias.dtype != torch.float32)
                or not m.weight.is_contiguous() for m in linears)):
            return None  # one format for all (quantized: fp32 scales and biases)
        if any(p.device.type != "cpu" or p.dtype != dtype or not p.is_contiguous() for p in model.parameters()):
            return None
        if any(b.mlp.fc_in.bias is None or b.mlp.fc_out.bias is None or b.attn.qkv_proj.bias is not None
               or b.attn.out_proj.bias is not None for b in t.h):
            return None
        if any(ln.weight is None or ln.bias is None for ln in [b.ln_1 for b in t.h] + [t.ln_f]):
            return None
        return cls(model)

    @property
    def can_pick(self) -> bool:
        """Whether `decode_picks` applies: the step reads the picked tokens' embedding rows itself, from the
        table in memory or (an int8 table read from its checkpoint file) with positional reads."""
        reader = self._reader()
        return reader is None or hasattr(reader, "fileno")

    def _reader(self):
        """The int8 table's row reader (QuantEmbedding.reader), or None where the table is indexed in memory."""
        return None if self.dense_embedding else self.wte.reader()

    def __call__(self, token: int, position: int, cache, start: int = 0) -> torch.Tensor:
        """Logits (1, vocab) in fp32 after feeding `token` at `position`; appends to `cache`. Cache
        positions before `start` are padding, not attended to (see `KVCache.suffix_start`)."""
        logits, _row = self._setup(token, position, cache, start, 1)
        self.args.picks = 0
        self._run()
        cache.advance(1)
        return logits

    def decode_picks(self, token: int, position: int, cache, start: int, picks: Picks,
                     interrupt: np.ndarray | None = None) -> tuple[list[int], torch.Tensor]:
        """Feed `token` at `position`, pick the next token (`picks`: greedily or sampled), feed it at the
        next position, and so on, in one native call: (the picked ids, the last pass's logits (1, vocab)).
        Every pick but the last has had its pass: the cache grows by as many columns as there are picks.
        A nonzero `interrupt[0]` (an int32 array another thread may set) ends the run after the current
        pick. A sampled pick whose distribution is not finite (NaN logits) ends the run before it: the
        picks so far are returned (none: the caller's Python path raises the error), the unpicked pass's
        column not counted. Needs `can_pick`."""
        n = picks.count
        if n < 1:
            raise ValueError(f"picks.count must be >= 1, got {n}")
        if not 1 <= picks.limit <= min(self.vocab, self.n_tokens):
            raise ValueError(f"picks.limit {picks.limit} outside [1, {min(self.vocab, self.n_tokens)}]")
        for name in ("banned", "stop"):
            ids = getattr(picks, name)
            if any(not 0 <= t < self.vocab for t in ids):
                raise ValueError(f"picks.{name} holds ids outside [0, {self.vocab}): {list(ids)}")
        uniforms = None
        if picks.sampled:
            if not (math.isfinite(picks.temperature) and picks.top_k >= 0 and 0 < picks.top_p <= 1):
                raise ValueError(f"picks: temperature {picks.temperature} must be finite and > 0, top_k {picks.top_k} "
                                 f">= 0, top_p {picks.top_p} in (0, 1]")
            uniforms = np.asarray(picks.uniforms, dtype=np.float32)
            if uniforms.shape != (n,) or not ((uniforms >= 0) & (uniforms < 1)).all():
                raise ValueError(f"picks.uniforms must be {n} values in [0, 1), got {list(picks.uniforms)}")
        if not self.can_pick:
            raise ValueError("this model's token embedding is read through a reader the native step cannot call")
        if interrupt is not None and (interrupt.dtype != np.int32 or interrupt.size < 1):
            raise ValueError("interrupt must be an int32 numpy array")
        logits, _row = self._setup(token, position, cache, start, n)
        a = self.args
        banned, stop = np.asarray(picks.banned, dtype=np.int64), np.asarray(picks.stop, dtype=np.int64)
        out = np.empty(n, dtype=np.int64)
        a.picks, a.limit, a.ban_stop = n, picks.limit, picks.ban_stop
        a.n_banned, a.banned = banned.size, banned.ctypes.data if banned.size else None
        a.n_stop, a.stop = stop.size, stop.ctypes.data if stop.size else None
        a.temperature, a.top_k, a.top_p = picks.temperature, picks.top_k, picks.top_p
        a.uniforms = None if uniforms is None else uniforms.ctypes.data
        a.tokens = out.ctypes.data
        a.interrupt = None if interrupt is None else interrupt.ctypes.data
        reader = self._reader()
        if reader is None:
            a.embed_fd, a.embed_offset, a.embed_table = -1, 0, self.embed_w
        else:
            a.embed_fd, a.embed_offset, a.embed_table = reader.fileno(), reader.offset, None
        a.embed_scales = None if self.embed_scales is None else self.embed_scales.ctypes.data
        rc = self._run(allow={3, 4})
        picked = int(a.picked)
        cache.advance(picked)
        if rc == 3:
            raise OSError(f"{reader.file}: the embedding row of token {int(out[picked - 1])} could not be read "
                          f"(the file ends early: truncated?)")
        return out[:picked].tolist(), logits

    def _run(self, allow: set[int] = frozenset()) -> int:
        rc = kernels.decode_step(ctypes.byref(self.args))
        if rc != 0 and rc not in allow:
            raise RuntimeError(f"native decode step refused its arguments (code {rc}): "
                               + ", ".join(f"{n}={getattr(self.args, n)}" for n, _ in DecodeArgs._fields_[:16]))
        return rc

    def _setup(self, token: int, position: int, cache, start: int, passes: int) -> tuple[torch.Tensor, object]:
        """Check the call and fill the arguments for up to `passes` passes from `token` at `position`:
        (the logits tensor the step writes, a row the step reads that must stay alive meanwhile)."""
        first_qkv = self.model.transformer.h[0].attn.qkv_proj.weight
        if (self.model.lm_head.weight.data_ptr() != self.head_w or first_qkv.data_ptr() != self.layers[2]
                or self.wte.weight.data_ptr() != self.embed_w
                or (self.embed_scales is not None and self.wte.weight_scale.data_ptr() != self.embed_scales.ctypes.data)):
            raise RuntimeError("the model's weights moved (.to() or a new state dict) since this FusedDecoder was created")
        if cache.batch_size != 1 or cache.key.dtype != self.dtype or not cache.key.is_contiguous():
            raise ValueError("the fused decode step takes a contiguous batch-1 KVCache of the model's dtype")
        if cache.length + passes > cache.capacity:
            raise ValueError(f"KVCache holds {cache.capacity} positions; {cache.length} used + {passes} new do not fit")
        if not 0 <= token < self.n_tokens:
            raise ValueError(f"token id {token} outside the embedding's [0, {self.n_tokens})")
        if not 0 <= position <= self.sin.shape[0] - passes:
            where = f"position {position}" if passes == 1 else f"positions {position}..{position + passes - 1}"
            raise ValueError(f"{where} outside [0, n_positions = {self.sin.shape[0]})")
        if not 0 <= start <= cache.length:
            raise ValueError(f"start {start} outside [0, cache length {cache.length}]")
        a = self.args
        a.capacity, a.length, a.start, a.threads = cache.capacity, cache.length, start, torch.get_num_threads()
        if self.scratch_for != cache.capacity:
            need = kernels.decode_scratch(ctypes.byref(a))
            if self.scratch.numel() < need:
                self.scratch = torch.empty(need, dtype=torch.float32)
            self.scratch_for = cache.capacity
        logits = torch.empty(1, self.vocab, dtype=torch.float32)
        off = position * self.sin.shape[1] * 4
        # the token's row in place, or an int8 table's as its reader gives it (and the row's scale):
        # into a buffer of this decoder's where the reader reads single rows (StoredRows.row_into)
        reader = self._reader()
        row = None
        if reader is None:
            a.embed = self.embed_w + token * self.row_bytes
        elif hasattr(reader, "row_into"):
            reader.row_into(token, self.row_buffer)
            a.embed = self.row_buffer.ctypes.data
        else:
            row = reader(torch.tensor(token))  # kept alive through the step
            a.embed = row.data_ptr()
        if self.embed_scales is not None:
            a.embed_scale = float(self.embed_scales[token])
        a.key, a.value = cache.key.data_ptr(), cache.value.data_ptr()
        a.sin, a.cos = self.sin.data_ptr() + off, self.cos.data_ptr() + off
        a.scratch, a.logits = self.scratch.data_ptr(), logits.data_ptr()
        return logits, row
