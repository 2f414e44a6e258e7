"""`CodeGenTokenizer`: byte-level BPE in pure Python (GPT-2's algorithm), with a per-word id cache."""

from __future__ import annotations

import regex

from .base import GPT2_PATTERN, CodeGenTokenizerBase
from .files import bytes_to_unicode

_CACHE_LIMIT = 200_000  # words; cleared when full so memory stays bounded on huge corpora


class PythonBPE:
    """GPT-2 pre-tokenization and merges-ordered BPE over one vocabulary; words -> ids are cached."""

    def __init__(self, encoder: dict[str, int], bpe_ranks: dict[tuple[str, str], int]) -> None:
        self.encoder, self.ranks = encoder, bpe_ranks
        self.pattern = regex.compile(GPT2_PATTERN)
        self.byte_encoder = [bytes_to_unicode()[b] for b in range(256)]
        self.cache: dict[str, list[int]] = {}

    def bpe(self, word: str) -> list[str]:
        """Merge the characters of one byte-mapped word by merge rank until no known pair remains."""
        parts = list(word)
        ranks = self.ranks
        while len(parts) > 1:
            best, best_rank = -1, None
            for i in range(len(parts) - 1):
                r = ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best < 0:
                break
            a, b = parts[best], parts[best + 1]
            # Merge every occurrence of the pair, left to right, as GPT-2 does.
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def encode(self, text: str, unk_id: int | None) -> list[int]:
        cache, enc, byte_enc = self.cache, self.encoder, self.byte_encoder
        ids: list[int] = []
        for word in self.pattern.findall(text):
            hit = cache.get(word)
            if hit is None:
                mapped = "".join([byte_enc[b] for b in word.encode("utf-8")])
                hit = [enc.get(t, unk_id) for t in self.bpe(mapped)]
                if None in hit:
                    raise ValueError(f"{word!r} has symbols outside the vocabulary and there is no unk_token")
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[word] = hit
            ids.extend(hit)
        return ids


class CodeGenTokenizer(CodeGenTokenizerBase):
    def _on_vocabulary_change(self) -> None:
        if not hasattr(self, "_bpe"):
            self._bpe = PythonBPE(self.encoder, self.bpe_ranks)
        self._bpe.cache.clear()  # the unk id may have changed

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._bpe.encode(text, self.unk_token_id)
