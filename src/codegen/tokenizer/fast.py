"""`CodeGenTokenizerFast`: the same tokenizer on tiktoken's compiled BPE core.

tiktoken cannot cut out CodeGen's added tokens itself: its special-token matching is
leftmost-first in hash order, not leftmost-longest, so "    " could come out as two "  ". We cut
them in Python, replacing each occurrence by a private-use sentinel character that tiktoken knows
as a special token with the real id, and encode the whole text in one tiktoken call (one call per
piece would cost more than the BPE itself). Texts that already contain a sentinel character take
the piecewise path.

tiktoken merges by the rank of the merged bytes, not by merge order; with ranks = vocab.json ids
that is the same BPE when the vocabulary is GPT-2-shaped: all 256 bytes present and each merge's
result numbered in merge order (checked at load; CodeGen's vocabulary is). Other vocabularies fall
back to the pure-Python BPE, with a warning.
"""

from __future__ import annotations

import os
import re

import tiktoken

import logging

from .base import CodeGenTokenizerBase
from .files import bytes_to_unicode, token_bytes
from .slow import PythonBPE

logger = logging.getLogger(__name__)

# GPT-2's pre-tokenization pattern as tiktoken writes it for r50k: the same splits, but possessive
# quantifiers and a `\s++$` branch keep fancy-regex off its slow backtracking path.
TIKTOKEN_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
SENTINEL_BASE = 0xF0000  # Supplementary Private Use Area-A


class CodeGenTokenizerFast(CodeGenTokenizerBase):
    num_threads = min(8, os.cpu_count() or 1)

    def _on_vocabulary_change(self) -> None:
        # The ranks live in tiktoken's core only (a Python copy beside it would hold ~7 MiB for good);
        # they are made again when added tokens change the special tokens.
        first = not hasattr(self, "_gpt2_shaped")
        ranks = self._tiktoken_ranks() if first or self._gpt2_shaped else None
        if first:
            self._gpt2_shaped = ranks is not None  # whether tiktoken can run this vocabulary
            if not self._gpt2_shaped:
                logger.warning("%s: vocabulary is not GPT-2-shaped; using the pure-Python BPE", self.name_or_path or "tokenizer")
                self._bpe = PythonBPE(self.encoder, self.bpe_ranks)
        self._sentinel = {tok: chr(SENTINEL_BASE + n) for n, tok in enumerate(sorted(self._split_ids))}
        self._has_sentinel = re.compile("[%s]" % "".join(self._sentinel.values())) if self._sentinel else None
        if ranks is not None:
            self._tiktoken = tiktoken.Encoding(
                name=f"codegen-{id(self)}",
                pat_str=TIKTOKEN_GPT2_PATTERN,
                mergeable_ranks=ranks,
                special_tokens={self._sentinel[t]: i for t, i in self._split_ids.items()},
            )

    def _tiktoken_ranks(self) -> dict[bytes, int] | None:
        """bytes -> vocab id for the 256 bytes and every merge result, or None if ids are not in merge order."""
        enc = self.encoder
        byte_tokens = list(bytes_to_unicode().values())
        if any(t not in enc for t in byte_tokens):
            return None
        ranks = {token_bytes(t): enc[t] for t in byte_tokens}
        last = max(ranks.values())
        for a, b in self._merges:
            merged = token_bytes(a + b)
            if merged in ranks:
                continue
            idx = enc[a + b]
            if idx <= last:
                return None
            ranks[merged] = last = idx
        return ranks

    def _encode_ordinary(self, text: str) -> list[int]:
        if not self._gpt2_shaped:
            return self._bpe.encode(text, self.unk_token_id)
        return self._tiktoken.encode_ordinary(text)

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        if not self._gpt2_shaped:
            return super()._encode_texts(texts)
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
