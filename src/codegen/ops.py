"""The network's math that the model and the native decode step share: GPT-J rotary tables and the
activation functions by their config names. Nothing here knows of modules, files or kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACT_FNS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}

GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # the tanh form, which the native kernels compute


def rotary_tables(position_ids: torch.Tensor, rotary_dim: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) positions -> sin, cos of shape (B, T, 1, 1, 1, head_dim) in fp32, each angle repeated for
    its pair (2i, 2i+1) and padded with sin 0 / cos 1 past rotary_dim, so that rotating a whole head
    leaves the pass-through dims untouched. Angles are bit-equal to transformers' table."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=position_ids.device) / rotary_dim))
    angles = (position_ids.float()[..., None] * inv_freq).repeat_interleave(2, dim=-1)
    pad = head_dim - rotary_dim
    sin = F.pad(angles.sin(), (0, pad), value=0.0)
    cos = F.pad(angles.cos(), (0, pad), value=1.0)
    return sin[:, :, None, None, None, :], cos[:, :, None, None, None, :]


def apply_rotary(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """GPT-J rotation of adjacent pairs: out[2i] = x[2i] cos - x[2i+1] sin, out[2i+1] = x[2i+1] cos
    + x[2i] sin, in fp32; x is (..., D) and sin/cos broadcast to it."""
    xf = x.float()
    pairs = xf.unflatten(-1, (-1, 2))
    swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # [-x1, x0, -x3, x2, ...]
    return xf * cos + swapped * sin
