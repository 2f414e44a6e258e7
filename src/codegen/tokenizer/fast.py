"""`CodeGenTokenizerFast`: the same tokenizer on tiktoken's compiled BPE core.

tiktoken cannot cut out CodeGen's added tokens itself: its special-token matching is
leftmost-first in hash order, not leftmost-longest, so "    " could come out as two "  ". We cut
them in Python, replacing each occurrence by a private-use sentinel character that tiktoken knows
as a special token with the real id, and encode the whole text in one tiktoken call (one call per
piece would cost more than the BPE itself). Texts that already contain a sentinel character take
the piecewise path. The ranks are vocab.json's ids: GPT-2's merge order equals its id order, so
rank-by-id BPE makes the same merges as merges.txt.
"""

from __future__ import annotations

import os
import re

import tiktoken

from .base import CodeGenTokenizerBase
from .files import token_bytes

# GPT-2's pre-tokenization pattern as tiktoken writes it for r50k: the same splits, but possessive
# quantifiers and a `\s++$` branch keep fancy-regex off its slow backtracking path.
TIKTOKEN_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
SENTINEL_BASE = 0xF0000  # Supplementary Private Use Area-A


class CodeGenTokenizerFast(CodeGenTokenizerBase):
    num_threads = min(8, os.cpu_count() or 1)

    def _on_vocabulary_change(self) -> None:
        ranks = getattr(self, "_ranks", None)
        if ranks is None:
            ranks = self._ranks = {token_bytes(t): i for t, i in self.encoder.items()}
        self._sentinel = {tok: chr(SENTINEL_BASE + n) for n, tok in enumerate(sorted(self._split_ids))}
        self._has_sentinel = re.compile("[%s]" % "".join(self._sentinel.values())) if self._sentinel else None
        self._tiktoken = tiktoken.Encoding(
            name=f"codegen-{id(self)}",
            pat_str=TIKTOKEN_GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={self._sentinel[t]: i for t, i in self._split_ids.items()},
        )

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._tiktoken.encode_ordinary(text)

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        if self._splitter is None:
            return self._tiktoken.encode_ordinary_batch(texts, num_threads=self.num_threads)
        out: list[list[int] | None] = [None] * len(texts)
        marked, where = [], []
        get, has_sentinel, first = self._sentinel.get, self._has_sentinel, chr(SENTINEL_BASE)
        for n, text in enumerate(texts):
            if text and max(text) >= first and has_sentinel.search(text):
                out[n] = super()._encode_texts([text])[0]  # rare: the text holds a sentinel itself
            else:
                marked.append(self._splitter.sub(lambda m: get(m.group()), text))
                where.append(n)
        if len(marked) == 1:
            out[where[0]] = self._tiktoken.encode(marked[0], allowed_special="all")
        elif marked:
            batch = self._tiktoken.encode_batch(marked, num_threads=self.num_threads, allowed_special="all")
            for n, ids in zip(where, batch):
                out[n] = ids
        return out  # type: ignore[return-value]
