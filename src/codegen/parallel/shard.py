"""Tensor-parallel slices of a CodeGen checkpoint: which part of every tensor a rank holds, and the
network made of those parts.

Rank r of t holds:
- `attn.qkv_proj` (3E, E): the rows of heads [r H/t, (r+1) H/t) for q, v and k. The fused weight is
  S shards of [q | v | k], each part H/S heads of D rows (reference note 1.3). When t divides S the
  rank's rows are one contiguous run, S/t whole shards in their own order: the local module keeps
  the layout with S/t shards and nothing is permuted. Otherwise (t a multiple of S, or any t that
  divides H) the rank's heads lie inside shards: its q, v and k rows are gathered into one local
  shard [q | v | k] of H/t heads each (local `shards = 1`).
- `attn.out_proj` (E, E): columns [r E/t, (r+1) E/t), the same heads' outputs.
- `mlp.fc_in` (I, E) and its bias: rows [r I/t, (r+1) I/t); `mlp.fc_out` (E, I): those columns,
  its bias on rank 0 only (the partial sums are added once, so the bias must be too).
- `lm_head` (V, E) and bias: rows [r V/t, (r+1) V/t), the logits gathered after it.
- `wte` (V, E): the same rows; a token outside them gives zeros, and one all-reduce per forward
  adds the rank that holds it (exact: one term is not zero).
- the layer norms whole.
Each block's attention and MLP partial sums are added by one all-reduce before the residual
(`ParallelBlock`): CodeGen's parallel residual needs no second one. `shard_tensor` and its inverse
`merge_tensor` are the layout conversion (round-trip tested).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..config import CodeGenConfig
from ..model import CodeGenBlock


def check_split(config: CodeGenConfig, tp: int) -> None:
    """ValueError naming the size that `tp` ranks cannot split."""
    for name, size in (("n_head", config.n_head), ("inner_dim (n_inner)", config.inner_dim), ("vocab_size", config.vocab_size)):
        if size % tp:
            raise ValueError(f"--tp {tp} does not divide the model's {name} = {size}")


def local_shards(config: CodeGenConfig, tp: int) -> int:
    S = config.qkv_shards
    return S // tp if S % tp == 0 else 1


def qkv_rows(config: CodeGenConfig, rank: int, tp: int) -> slice | torch.Tensor:
    """The rows of qkv_proj's weight rank `rank` holds, in the local module's order."""
    E, H, D, S = config.n_embd, config.n_head, config.head_dim, config.qkv_shards
    part = E // S  # rows of one of q, v, k in one shard: H/S heads of D
    if S % tp == 0:
        n = S // tp
        return slice(rank * n * 3 * part, (rank + 1) * n * 3 * part)
    per_shard, local = H // S, H // tp
    rows = []
    for which in range(3):  # the local shard's [q | v | k]
        for h in range(rank * local, (rank + 1) * local):
            s, j = divmod(h, per_shard)
            start = s * 3 * part + which * part + j * D
            rows.extend(range(start, start + D))
    return torch.tensor(rows)


def _kind(key: str) -> str:
    """How a checkpoint key is split: rows, cols, qkv, fc_out_bias or whole."""
    if key.endswith("attn.qkv_proj.weight"):
        return "qkv"
    if key.endswith(("attn.out_proj.weight", "mlp.fc_out.weight")):
        return "cols"
    if key.endswith(("mlp.fc_in.weight", "mlp.fc_in.bias")) or key in ("lm_head.weight", "lm_head.bias", "transformer.wte.weight"):
        return "rows"
    if key.endswith("mlp.fc_out.bias"):
        return "fc_out_bias"
    return "whole"


def part(key: str, config: CodeGenConfig, rank: int, tp: int, dim: int) -> slice | torch.Tensor | None:
    """The index along the split dimension of `key` (of size `dim`) that `rank` holds; None for a
    tensor the rank does not hold at all (fc_out's bias off rank 0); slice(None) for a whole one."""
    kind = _kind(key)
    if kind == "qkv":
        return qkv_rows(config, rank, tp)
    if kind in ("rows", "cols"):
        n = dim // tp
        return slice(rank * n, (rank + 1) * n)
    if kind == "fc_out_bias":
        return slice(None) if rank == 0 else None
    return slice(None)


def split_dim(key: str) -> int:
    return 1 if _kind(key) == "cols" else 0


def shard_tensor(key: str, tensor: torch.Tensor, config: CodeGenConfig, rank: int, tp: int) -> torch.Tensor | None:
    """Rank `rank`'s part of a whole checkpoint tensor (a view where the part is contiguous in it)."""
    d = split_dim(key)
    index = part(key, config, rank, tp, tensor.shape[d] if tensor.dim() > d else 0)
    if index is None:
        return None
    if isinstance(index, torch.Tensor):
        return tensor.index_select(d, index)
    return tensor[index] if d == 0 else tensor[:, index]


def merge_tensor(key: str, parts: list[torch.Tensor | None], config: CodeGenConfig) -> torch.Tensor:
    """The inverse of `shard_tensor`: the whole tensor from every rank's part, in rank order."""
    tp = len(parts)
    kind = _kind(key)
    if kind in ("whole", "fc_out_bias"):
        return parts[0]
    if kind == "qkv":
        whole = torch.empty((3 * config.n_embd, *parts[0].shape[1:]), dtype=parts[0].dtype)
        for r, p in enumerate(parts):
            whole[qkv_rows(config, r, tp)] = p
        return whole
    return torch.cat(parts, dim=split_dim(key))


class ParallelBlock(CodeGenBlock):
    """A block holding this rank's heads and MLP columns: attention and MLP partial sums are added
    across the group by one all-reduce, then the residual (CodeGen's parallel block)."""

    tp_group = None
    tp_rank, tp = 0, 1

    def forward(self, h, sin, cos, mask, layer_past=None, head_mask=None, output_attentions=False):
        a = self.ln_1(h)
        if head_mask is not None:  # (1, H, 1, 1): this rank's heads
            n = self.attn.n_head
            head_mask = head_mask[:, self.tp_rank * n:(self.tp_rank + 1) * n]
        attn_out, present, probs = self.attn(a, sin, cos, mask, layer_past, self.layer_idx, head_mask, output_attentions)
        partial = attn_out + self.mlp(a)  # (B, T, E): this rank's share of both branches
        dist.all_reduce(partial, group=self.tp_group)
        return partial + h, present, probs


def gather_logits(group, tp: int):
    """A forward hook for lm_head: the vocabulary slices of every rank, concatenated (B, ..., V)."""
    def hook(module, inputs, out):
        parts = [torch.empty_like(out) for _ in range(tp)]
        dist.all_gather(parts, out.contiguous(), group=group)
        return torch.cat(parts, dim=-1)

    return hook


def shard_model(model: nn.Module, rank: int, tp: int, group) -> nn.Module:
    """Make a CodeGenForCausalLM built on the meta device into rank `rank`'s part (modules resized,
    blocks made ParallelBlocks); weights are assigned afterwards, then `add_collectives`."""
    config = model.config
    check_split(config, tp)
    E, I, V = config.n_embd, config.inner_dim, config.vocab_size
    device = model.lm_head.weight.device
    for block in model.transformer.h:
        attn, mlp = block.attn, block.mlp
        attn.qkv_proj = nn.Linear(E, 3 * E // tp, bias=False, device=device)
        attn.out_proj = nn.Linear(E // tp, E, bias=False, device=device)
        attn.n_head, attn.embed_dim, attn.shards = config.n_head // tp, E // tp, local_shards(config, tp)
        mlp.fc_in = nn.Linear(E, I // tp, device=device)
        mlp.fc_out = nn.Linear(I // tp, E, bias=rank == 0, device=device)
        block.__class__ = ParallelBlock
        block.tp_group, block.tp_rank, block.tp = group, rank, tp
    model.lm_head = nn.Linear(E, V // tp, bias=model.lm_head.bias is not None, device=device)
    model.transformer.wte = nn.Embedding(V // tp, E, device=device)
    model.tensor_parallel = (rank, tp)
    return model


def vocab_parallel(embedding: nn.Module, group, rank: int, tp: int, vocab: int) -> None:
    """Make a (dense or quantized) embedding holding rows [r V/t, (r+1) V/t) look up any id: ids are
    shifted into its rows (others clamped, their rows zeroed after) and the ranks' outputs summed."""
    n = vocab // tp
    start, inside = rank * n, {}

    def before(module, args):
        ids = args[0]
        local = ids - start
        inside["mask"] = (local >= 0) & (local < n)
        return (local.clamp(0, n - 1), *args[1:])

    def after(module, args, out):
        out = out * inside.pop("mask").unsqueeze(-1).to(out.dtype)
        dist.all_reduce(out, group=group)
        return out

    embedding.register_forward_pre_hook(before)
    embedding.register_forward_hook(after)


def add_collectives(model: nn.Module, group, tp: int) -> None:
    """The collectives around the vocabulary slices: lm_head's logits gathered after every forward,
    the embedding's lookups summed. Call it once the modules are final (a quantized load replaces
    them, and hooks live on their modules)."""
    model.lm_head.register_forward_hook(gather_logits(group, tp))
    rank = model.tensor_parallel[0]
    vocab_parallel(model.transformer.wte, group, rank, tp, model.config.vocab_size)
