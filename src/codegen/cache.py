"""A preallocated key/value cache that the caller owns and passes to the model.

Keys and values of every layer live in two tensors of shape (n_layer, B, H, capacity, D); a forward
pass with T new tokens writes positions [length, length + T) and attends to [0, length + T). Nothing
is reallocated while decoding, unlike the legacy tuple cache that concatenates every step.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        capacity: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        shape = (n_layer, batch_size, n_head, capacity, head_dim)
        self.key = torch.zeros(shape, dtype=dtype, device=device)
        self.value = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # positions filled, the same for every row (rows are left-padded)

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch_size: int, capacity: int) -> KVCache:
        cfg = model.config
        p = next(model.parameters())
        return cls(cfg.n_layer, batch_size, cfg.n_head, capacity, cfg.head_dim, dtype=p.dtype, device=p.device)

    @property
    def capacity(self) -> int:
        return self.key.shape[3]

    @property
    def batch_size(self) -> int:
        return self.key.shape[1]

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H, T, D) key/value of `layer` after the filled part; return all filled positions."""
        end = self.length + key.shape[2]
        self.key[layer, :, :, self.length:end] = key
        self.value[layer, :, :, self.length:end] = value
        return self.key[layer, :, :, :end], self.value[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (B',) of the batch, e.g. to replicate one prompt's cache n times."""
        self.key = self.key.index_select(1, index)
        self.value = self.value.index_select(1, index)

    def to_legacy(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        n = self.length
        return tuple((self.key[i, :, :, :n], self.value[i, :, :, :n]) for i in range(self.key.shape[0]))
