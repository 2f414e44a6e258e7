"""The KV cache of a running batch, which owns every cache operation the engine needs.

Keys and values of every layer live in two tensors (n_layer, B, H, capacity, D). Columns are shared:
a forward pass with T new tokens writes columns [length, length + T) of every row, and each row
attends to the columns set in its own `mask` (B, capacity): its length is its own (`lengths()`),
and its keys end at the shared `length` (rows are right-aligned, shorter histories left-padded).
Rows can be replicated (a prompt's cache for its n samples), kept (finished rows dropped), appended
(a newly admitted request's rows, right-aligned), and columns no row uses dropped or the capacity
grown. The model only calls `update`, `advance`, `length` and `capacity`.
"""

from __future__ import annotations

import torch


def cached_heads(model) -> int:
    """The heads whose keys and values this process caches: all of them, or a tensor-parallel
    rank's share (its attention modules' own head count)."""
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    return blocks[0].attn.n_head if blocks else model.config.n_head


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
        empty: bool = False,
    ) -> None:
        # empty: not zeroed, for a cache whose every column is written before attention reads it (a
        # prefill writes all its columns, left padding included); attention reads masked columns
        # too, so they must hold finite values, never uninitialised memory.
        shape = (n_layer, batch_size, n_head, capacity, head_dim)
        make = torch.empty if empty else torch.zeros
        self.key = make(shape, dtype=dtype, device=device)
        self.value = make(shape, dtype=dtype, device=device)
        self.mask = torch.zeros(batch_size, capacity, dtype=torch.bool, device=device)  # columns each row attends to
        self.length = 0  # columns written (the same for every row)

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch_size: int, capacity: int, empty: bool = False) -> KVCache:
        cfg = model.config
        p = next(model.parameters())
        return cls(cfg.n_layer, batch_size, cached_heads(model), capacity, cfg.head_dim, dtype=p.dtype, device=p.device,
                   empty=empty)

    def _empty_like(self, batch_size: int, capacity: int, empty: bool = False) -> KVCache:
        L, _, H, _, D = self.key.shape
        return KVCache(L, batch_size, H, capacity, D, dtype=self.key.dtype, device=self.key.device, empty=empty)

    @property
    def capacity(self) -> int:
        return self.key.shape[3]

    @property
    def batch_size(self) -> int:
        return self.key.shape[1]

    # ------------------------------------------------------------------ the model's side
    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H, T, D) key/value of `layer` after the filled part; return all filled columns."""
        end = self.length + key.shape[2]
        self.key[layer, :, :, self.length:end] = key
        self.value[layer, :, :, self.length:end] = value
        return self.key[layer, :, :, :end], self.value[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    # ------------------------------------------------------------------ the engine's side
    def mark(self, new: torch.Tensor | int) -> None:
        """Mark the next columns as attended, before a forward pass of T new tokens: `new` is the (B, T)
        mask of those tokens (0 = padding) or T (all attended)."""
        T = new if isinstance(new, int) else new.shape[1]
        if self.length + T > self.capacity:
            raise ValueError(f"KVCache holds {self.capacity} positions; {self.length} used + {T} new do not fit")
        if isinstance(new, int) and self.mask.device.type == "cpu":  # each decode step: numpy's slice, not torch's ops
            self.mask.numpy()[:, self.length:self.length + T] = True
        else:
            self.mask[:, self.length:self.length + T] = True if isinstance(new, int) else new.bool()

    def unmark(self, column: int) -> None:
        """Unmark the columns from `column` on, which must not be written yet (marked for decode passes
        that did not run)."""
        if not self.length <= column <= self.capacity:
            raise ValueError(f"unmark: column must be in [{self.length}, {self.capacity}], got {column}")
        if self.mask.device.type == "cpu":
            self.mask.numpy()[:, column:] = False
        else:
            self.mask[:, column:] = False

    def attention_mask(self, T: int) -> torch.Tensor | None:
        """The model's attention mask (B, length + T) for T marked new columns, or None when every row
        attends to every column."""
        mask = self.mask[:, :self.length + T]
        return None if bool(mask.all()) else mask.long()

    def attend(self, new: torch.Tensor | int) -> torch.Tensor | None:
        """`mark(new)`, then the model's attention mask for it."""
        self.mark(new)
        return self.attention_mask(new if isinstance(new, int) else new.shape[1])

    def lengths(self) -> torch.Tensor:
        """(B,) columns each row attends to."""
        return self.mask[:, :self.length].sum(dim=1)

    def suffix_start(self, row: int, extra: int = 0) -> int | None:
        """The first attended column of `row` if it attends to every column from there on to
        `length + extra` (left padding only, as after `attend(extra)`), else None."""
        m = self.mask[row, :self.length + extra]
        if m.device.type == "cpu":  # each batch-1 decode step: numpy's, not torch's ops
            m = m.numpy()
        start = m.shape[0] - int(m.sum())
        return start if start < m.shape[0] and bool(m[start:].all()) else None

    def keep(self, rows: torch.Tensor | list[int]) -> None:
        """Keep rows `rows` (B',) in that order; an index may repeat (replication)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.key.device)
        self.key = self.key.index_select(1, index)
        self.value = self.value.index_select(1, index)
        self.mask = self.mask.index_select(0, index)

    def replicate(self, n: int) -> None:
        """Each row n times, the copies adjacent (a prompt's cache for its n samples)."""
        if n > 1:
            self.keep(torch.arange(self.batch_size, device=self.key.device).repeat_interleave(n))

    def extend(self, other: KVCache, capacity: int | None = None) -> None:
        """Append the rows of `other` (e.g. a newly prefilled request), right-aligned with these; the
        capacity becomes at least `capacity`."""
        length = max(self.length, other.length)
        shift = length - self.length  # these rows move right when the new ones are longer
        cap = max(capacity or 0, self.capacity + shift, length)
        B = self.batch_size
        # not zeroed as a whole: each row's columns are copied and its left padding (before a shorter
        # source) zeroed, for attention reads it masked; columns from `length` on are written before
        # they are read (as in _move)
        grown = self._empty_like(B + other.batch_size, cap, empty=True)
        for src, dst in ((self, slice(0, B)), (other, slice(B, None))):
            off = length - src.length
            grown.key[:, dst, :, :off].zero_()
            grown.value[:, dst, :, :off].zero_()
            grown.key[:, dst, :, off:length] = src.key[:, :, :, :src.length]
            grown.value[:, dst, :, off:length] = src.value[:, :, :, :src.length]
            grown.mask[dst, off:length] = src.mask[:, :src.length]
        self.key, self.value, self.mask, self.length = grown.key, grown.value, grown.mask, length

    def _move(self, drop: int, capacity: int) -> None:
        moved = self._empty_like(self.batch_size, capacity, empty=True)  # columns past n are written before read
        n = self.length - drop
        moved.key[:, :, :, :n] = self.key[:, :, :, drop:self.length]
        moved.value[:, :, :, :n] = self.value[:, :, :, drop:self.length]
        moved.mask[:, :n] = self.mask[:, drop:self.length]
        self.key, self.value, self.mask, self.length = moved.key, moved.value, moved.mask, n

    def alias(self) -> KVCache:
        """Another cache object over the same tensors: its keep, replicate and extend replace its own
        tensors and leave this object as it is."""
        other = KVCache.__new__(KVCache)
        other.key, other.value, other.mask, other.length = self.key, self.value, self.mask, self.length
        return other

    def truncate(self, length: int) -> None:
        """Forget every column from `length` on (a session continuing after a common prefix): the
        next forward pass writes there."""
        if not 0 <= length <= self.length:
            raise ValueError(f"truncate: length must be in [0, {self.length}], got {length}")
        with torch.inference_mode():  # the engine makes its caches in inference mode
            self.mask[:, length:] = False
        self.length = length

    def unused_prefix(self) -> int:
        """Leading columns that no row attends to."""
        used = self.mask[:, :self.length].any(dim=0).nonzero()
        return int(used[0]) if len(used) else self.length

    def reserve(self, n: int, limit: int | None = None) -> None:
        """Room for n more columns: drop the columns no row uses when that frees enough (a quarter of
        the capacity at least, so that this is rare), else grow by half, to at most `limit`."""
        if self.length + n <= self.capacity:
            return
        dead = self.unused_prefix()
        need = self.length - dead + n
        if dead >= max(n, self.capacity // 4):
            self._move(dead, self.capacity)
        else:
            cap = max(need, int(self.capacity * 1.5) + 16)
            self._move(dead, min(cap, limit) if limit is not None and limit >= need else cap)

    def to_legacy(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        n = self.length
        return tuple((self.key[i, :, :, :n], self.value[i, :, :, :n]) for i in range(self.key.shape[0]))
