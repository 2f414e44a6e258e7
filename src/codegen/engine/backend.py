"""The engine's backend: which kernel computes what, by device, dtype, row count and CPU.

It is applied to a model from outside (`prepare`): every plain `nn.Linear` is swapped for a
`CPULinear` (same parameters, same checkpoint keys) that routes the few rows of a decode step to
the native kernels or to torch's fastest route (and bf16 prefills without AMX to fp32), the
attention's SDPA for `attention` (bf16 prefills without AMX in fp32), and the tanh-gelu activation
for one written over fc_in's output by a native kernel; all fall back to torch's own computation
where a gradient is needed, off the CPU, or where the native code is unavailable. A new kind of
linear layer (int8, int4, tensor-parallel) plugs in here, not in the model. `Backend.decode` runs a decode step: the
whole step in one native call (`native.fused`) when one row is decoding, else the model's modules;
`Backend.decode_picks` runs several steps of one row, greedy or sampled, in one native call.
"""

from __future__ import annotations

import functools
import logging
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..native import kernels
from ..native.fused import FusedDecoder, Picks
from ..ops import GELU_TANH
from ..quant import QuantLinear

logger = logging.getLogger(__name__)


class CPULinear(nn.Linear):
    """nn.Linear that picks a faster CPU kernel for the few rows of a decode step, when no gradient
    is needed. Measured on a 2-core Xeon (kernels.cpp, benchmarks/generate.py): torch's x @ W.T
    streams bf16 matrix-vector products at ~10-14 GB/s, its addmv ~14-19, our AVX512-BF16 kernel
    ~24-26 (fp32: ours a few % faster than torch's); 2 to 8 fp32 rows run ~1.4x faster in our kernel
    than in torch's best route, W @ x.T, itself 1.4x faster than x @ W.T up to 32 rows."""

    SMALL = 32  # at most this many rows take the W @ x.T route
    # fp32 inputs of more than SMALL rows go through oneDNN where onednn_fp32() says so (AMD with AVX-512).
    # bf16 inputs of at least WIDEN_ROWS rows (prefills) on an Intel CPU without AMX run in fp32, a block
    # of about WIDEN_BYTES of weight rows widened at a time: there torch's bf16 GEMM is slower than
    # widening and multiplying in fp32 (a 2-core Xeon with AVX512-BF16, no AMX, 1024 -> 4096: 2048 rows
    # 100 vs 138 ms, 128 rows 7.2 vs 8.2, 64 rows 4.7 vs 4.2, widening included). The products of bf16
    # values are exact in fp32 and summed in fp32, as torch's bf16 GEMM sums them; the output is
    # rounded to bf16 once, after the bias.
    WIDEN_ROWS = 128
    WIDEN_BYTES = 16 * 2**20

    @classmethod
    def wrap(cls, linear: nn.Linear) -> CPULinear:
        """The same module (its parameters, hooks and state) with this class's forward."""
        linear.__class__ = cls
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            # torch's own message ("mat1 and mat2 shapes cannot be multiplied (2x5 and 4x3)"); the native
            # and oneDNN routes below assume the width and would fail less clearly.
            return F.linear(x, self.weight, self.bias)
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        inference = not (torch.is_grad_enabled() and (self.weight.requires_grad or x.requires_grad))
        if x.device.type != "cpu" or rows > self.SMALL or x.dim() < 2 or rows == 0:
            if self.weight.dtype == torch.bfloat16 and _widens(x, rows, inference):
                return self._widened(x.reshape(rows, x.shape[-1])).view(*x.shape[:-1], -1)
            if (inference and rows > self.SMALL and x.device.type == "cpu" and x.dtype == self.weight.dtype == torch.float32
                    and onednn_fp32()):
                flat = x.reshape(rows, x.shape[-1]).contiguous()
                return _onednn_linear()(flat, self.weight, self.bias, "none", [], "").view(*x.shape[:-1], -1)
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, x.shape[-1])
        out = None
        if inference:
            if rows == 1:
                out = kernels.gemv(self.weight, flat[0], self.bias)  # None where the kernel is unavailable
            else:
                out = kernels.smallmm(self.weight, flat, self.bias)  # None: unavailable, other dtype, > 8 rows
        if out is None and rows == 1:
            if x.dtype == torch.float32:  # here torch's x @ W.T is its fastest route
                return F.linear(x, self.weight, self.bias)
            # The product, then the bias: on an AVX2-only CPU (Zen 3) torch's bf16 addmv, and F.linear with
            # a bias, stream ~1.2 GB/s where mv streams ~11.
            out = torch.mv(self.weight, flat[0])
            if self.bias is not None:
                out += self.bias
        if out is None:
            out = torch.mm(self.weight, flat.t()).t().contiguous()
            if self.bias is not None:
                out += self.bias
        return out.view(*x.shape[:-1], -1)

    def _widened(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, K) bf16 @ W.T + b in fp32, W widened a block of rows at a time: (M, N) bf16."""
        xf = x.float()
        N, K = self.weight.shape
        out = torch.empty(x.shape[0], N, dtype=torch.bfloat16)
        step = max(1, self.WIDEN_BYTES // (4 * K))
        for n0 in range(0, N, step):
            n1 = min(n0 + step, N)
            y = torch.mm(xf, self.weight[n0:n1].float().T)
            if self.bias is not None:
                y += self.bias[n0:n1].float()
            out[:, n0:n1] = y
        return out


@functools.cache
def _onednn_linear():
    """torch's oneDNN linear op (the one its inductor's CPU fusions call), or None in a build without it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def onednn_fp32() -> bool:
    """Whether fp32 prefill products (more than CPULinear.SMALL rows) go through oneDNN rather than
    torch's F.linear: where kernels.fp32_gemm_by_onednn says it is the faster and torch has the op."""
    return kernels.fp32_gemm_by_onednn() and _onednn_linear() is not None


def _widens(x: torch.Tensor, rows: int, inference: bool) -> bool:
    """Whether a bf16 input of `rows` rows runs in fp32 (CPULinear and attention): a prefill of at least
    WIDEN_ROWS rows on a CPU where that is the faster, with no gradient needed."""
    return (rows >= CPULinear.WIDEN_ROWS and inference and x.dtype == torch.bfloat16 and x.device.type == "cpu"
            and kernels.bf16_prefills_in_fp32())


def attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
    """SDPA; one query per row (a batched decode step) in the native kernel (kernels.decode_attention,
    attention.cpp: ~3x torch's there); bf16 prefills (CPULinear.WIDEN_ROWS queries or more) in fp32
    where _widens says so (an Intel CPU without AMX): there torch's bf16 flash attention is slower
    than its fp32 one (a 2-core Xeon with AVX512-BF16, 2047 tokens, 16 heads of 64: 87 vs 61 ms a
    layer). bf16 values are exact in fp32; the output is rounded to bf16 once."""
    inference = not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
    if inference and q.dim() == 4 and q.shape[-2] == 1 and dropout_p == 0.0 and not is_causal and q.device.type == "cpu":
        out = kernels.decode_attention(q, k, v, attn_mask)  # a batched decode step: None where it does not fit
        if out is not None:
            return out
    if _widens(q, q.shape[-2], inference):
        mask = attn_mask if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask.float()
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout_p,
                                              is_causal=is_causal).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)


def split_heads(qkv, sin, cos, shards, heads):
    """CodeGenAttention.split_heads_fn: the native split and rotation (kernels.split_heads) when no
    gradient is needed, else None (the model's torch code)."""
    if torch.is_grad_enabled() and qkv.requires_grad:
        return None
    return kernels.split_heads(qkv, sin, cos, shards, heads)


class TanhGelu(nn.Module):
    """gelu_new over fc_in's own output, in place, by the native kernel when no gradient is needed
    (torch's gelu took ~12 % of a bf16 prefill); torch's otherwise. In place is safe because the MLP
    uses fc_in's output only as this activation's input, unless a hook on fc_in kept it."""

    def __init__(self, fc_in: nn.Linear) -> None:
        super().__init__()
        self._fc_in = [fc_in]  # a list: not registered as a submodule (it is the MLP's)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        fc_in = self._fc_in[0]
        if not (fc_in._forward_hooks or (torch.is_grad_enabled() and h.requires_grad)):
            out = kernels.gelu_tanh(h, inplace=True)  # None where the kernel is unavailable
            if out is not None:
                return out
        return F.gelu(h, approximate="tanh")


def prepare(model: nn.Module) -> nn.Module:
    """Swap `model`'s plain Linear modules and tanh-gelu activations for the backend's (idempotent);
    returns the model. Checkpoint keys, parameters and numerics are unchanged."""
    for module in model.modules():
        if type(module) is nn.Linear:
            CPULinear.wrap(module)
        if hasattr(module, "attention_fn"):
            module.attention_fn = attention
            module.split_heads_fn = split_heads
        act, fc_in = getattr(module, "act", None), getattr(module, "fc_in", None)
        if fc_in is not None and not isinstance(act, TanhGelu) and model.config.activation_function in GELU_TANH:
            module.act = TanhGelu(fc_in)
    return model


class Backend:
    """The forward passes of the engine for one model; `for_model` keeps one per model."""

    def __init__(self, model) -> None:
        self.model = prepare(model)
        self._fused: FusedDecoder | None = None
        self.refresh()

    @classmethod
    def for_model(cls, model) -> Backend:
        backend = _BACKENDS.get(model)
        if backend is None:
            backend = _BACKENDS[model] = cls(model)
        else:
            backend.refresh()
        return backend

    def refresh(self) -> None:
        """Decide again whether the native one-row step applies to the model as it is now (its
        weights, dtype, mode, modules and hooks): the engine calls this when a scheduler starts."""
        self._fused = FusedDecoder.create(self.model, linear_types=(nn.Linear, CPULinear, QuantLinear))

    def prefill(self, input_ids: torch.Tensor, cache, mask: torch.Tensor | None, positions: torch.Tensor,
                all_positions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run (B, T) prompt tokens into `cache`: (logits of the last position (B, V) in fp32, and the
        hidden states of every position (B, T, E) when `all_positions`, for prompt logprobs)."""
        m = self.model
        h = m.transformer(input_ids=input_ids, past_key_values=cache, attention_mask=mask,
                          position_ids=positions).last_hidden_state
        return m.lm_head(h[:, -1]).float(), (h if all_positions else None)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden).float()

    @property
    def can_pick(self) -> bool:
        """Whether `decode_picks` may apply (the model's one-row step is native and picks tokens itself)."""
        return self._fused is not None and self._fused.can_pick

    def decode_picks(self, token: int, position: int, cache, picks: Picks,
                     interrupt=None) -> tuple[list[int], torch.Tensor] | None:
        """One row's decode steps from `token` at `position`, each next token picked natively (`picks`:
        greedy or sampled), in one native call: (the picks, the last step's logits (1, V)); the cache
        gains a column per pick (the last pick is not run). None where it does not apply (see
        `can_pick`; a mask with holes; a first sampled pick whose distribution is not finite, which the
        Python path then reports), with the cache as it was."""
        if not self.can_pick:
            return None
        start = cache.suffix_start(0)
        if start is None:
            return None
        cache.mark(picks.count)  # raises where the cache has no room for the picks
        try:
            chosen, logits = self._fused.decode_picks(token, position, cache, start, picks, interrupt)
        finally:
            cache.unmark(cache.length)  # the columns of passes that did not run, or whose pick did not
        return (chosen, logits) if chosen else None

    def decode(self, tokens: list[int], positions: torch.Tensor, cache) -> torch.Tensor:
        """One new token per row (B,) at `positions` (B,) into `cache` (which must have room for
        one more column): logits (B, V) in fp32."""
        cache.mark(1)
        if len(tokens) == 1 and self._fused is not None:
            start = cache.suffix_start(0, extra=1)  # None for a mask with holes: the module path
            if start is not None:
                position = positions.numpy()[0] if positions.device.type == "cpu" else positions[0]
                return self._fused(tokens[0], int(position), cache, start)
        mask = cache.attention_mask(1)
        m = self.model
        ids = torch.tensor(tokens, device=positions.device)[:, None]
        h = m.transformer(input_ids=ids, past_key_values=cache, attention_mask=mask,
                          position_ids=positions[:, None]).last_hidden_state
        return m.lm_head(h[:, -1]).float()


_BACKENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
