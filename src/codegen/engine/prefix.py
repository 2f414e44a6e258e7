"""The prefix cache: the keys and values of recent token sequences, so that a prompt that begins
like one of them prefills only the rest.

The KV of position i depends only on tokens 0..i, so any common prefix of a new prompt and a stored
sequence can be reused, not only a whole stored one: an editor that resends its file after a
keystroke, a chat client that resends the conversation with a new message, a conversation turn
whose history was retokenized. Entries are (ids, key, value) with key/value (n_layer, H, T, D), kept
in least-recently-used order within a byte bound. The scheduler looks prompts up at admission and
stores what it computed: each prompt after its prefill, each finished output (prompt + generated
tokens whose KV exists, i.e. all but the last) when it ends. An entry that is a prefix of a new one
is dropped, since the new one serves every lookup it would.

Single-threaded by design: the scheduler's thread is the only user; `stats()` may be read from any.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .cache import cached_heads


@dataclass
class Prefix:
    """The KV of `ids`: key and value (n_layer, H, len(ids), D)."""

    ids: tuple[int, ...]
    key: torch.Tensor
    value: torch.Tensor

    @property
    def nbytes(self) -> int:
        return kv_nbytes(self.key)


def kv_nbytes(key: torch.Tensor) -> int:
    """Bytes of a key tensor and its value tensor of the same shape."""
    return key.numel() * key.element_size() * 2


def kv_bytes_per_token(model) -> int:
    """Bytes of keys and values one position takes in `model`'s cache (all layers)."""
    cfg = model.config
    return 2 * cfg.n_layer * cached_heads(model) * cfg.head_dim * next(model.parameters()).element_size()


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    if n == 0 or a[0] != b[0]:
        return 0
    if tuple(a[:n]) == tuple(b[:n]):
        return n
    lo, hi = 1, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]: bisect on slices (C-speed compares)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tuple(a[:mid]) == tuple(b[:mid]):
            lo = mid
        else:
            hi = mid
    return lo


class PrefixCache:
    """A bounded LRU pool of sequences' KV. `max_bytes` bounds the tensors held; `min_tokens` is the
    shortest common prefix worth reusing."""

    def __init__(self, max_bytes: int, min_tokens: int = 1) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        if min_tokens < 1:
            raise ValueError(f"min_tokens must be >= 1, got {min_tokens}")
        self.max_bytes, self.min_tokens = max_bytes, min_tokens
        self._entries: collections.OrderedDict[tuple[int, ...], Prefix] = collections.OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0
        self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "bytes": self.bytes, "max_bytes": self.max_bytes, "hits": self.hits,
                "misses": self.misses, "evictions": self.evictions, "reused_tokens": self.reused_tokens}

    def lookup(self, ids: Sequence[int], limit: int | None = None) -> tuple[Prefix | None, int]:
        """The entry sharing the longest prefix with `ids` and that length (at most `limit`, for a
        prompt: len - 1, since its last token must run to give the next one's logits); (None, 0) on a
        miss. Counts a hit or a miss; a hit becomes the most recently used entry."""
        limit = len(ids) if limit is None else min(limit, len(ids))
        best, best_len = None, 0
        for key, entry in self._entries.items():
            n = min(common_length(key, ids), limit)
            if n > best_len:
                best, best_len = entry, n
        if best is None or best_len < self.min_tokens:
            self.misses += 1
            return None, 0
        self.hits += 1
        self.reused_tokens += best_len
        self._entries.move_to_end(best.ids)
        return best, best_len

    def insert(self, ids: Sequence[int], key: torch.Tensor, value: torch.Tensor) -> bool:
        """Store the KV (n_layer, H, T, D) of `ids` (T = len(ids)), copied; False where it is not
        kept (shorter than min_tokens, larger than the bound, or already covered by an entry)."""
        ids = tuple(ids)
        if key.shape[2] != len(ids) or value.shape != key.shape:
            raise ValueError(f"key/value {tuple(key.shape)}/{tuple(value.shape)} do not hold {len(ids)} positions")
        size = kv_nbytes(key)
        if len(ids) < self.min_tokens or size > self.max_bytes:
            return False
        for k in list(self._entries):
            if len(k) >= len(ids) and k[:len(ids)] == ids:  # covered: refresh the longer one
                self._entries.move_to_end(k)
                return False
            if len(k) < len(ids) and ids[:len(k)] == k:  # the new entry covers this one
                self.bytes -= self._entries.pop(k).nbytes
        entry = Prefix(ids, key.clone(memory_format=torch.contiguous_format),
                       value.clone(memory_format=torch.contiguous_format))
        self._entries[ids] = entry
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.nbytes
            self.evictions += 1
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
