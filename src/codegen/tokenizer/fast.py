"""`CodeGenTokenizerFast`: the same tokenizer on tiktoken's compiled BPE core.

Added tokens are cut out in Python (tiktoken's own special-token matching is not leftmost-longest),
and the text between them goes to tiktoken with GPT-2's pattern and ranks taken from vocab.json
(GPT-2's merge order equals its id order, so rank-by-id BPE gives the same merges).
"""

from __future__ import annotations

import os

import tiktoken

from .base import GPT2_PATTERN, CodeGenTokenizerBase
from .files import token_bytes


class CodeGenTokenizerFast(CodeGenTokenizerBase):
    num_threads = min(8, os.cpu_count() or 1)

    def _on_vocabulary_change(self) -> None:
        ranks = getattr(self, "_ranks", None)
        if ranks is None:
            ranks = self._ranks = {token_bytes(t): i for t, i in self.encoder.items()}
        self._tiktoken = tiktoken.Encoding(
            name=f"codegen-{id(self)}",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=dict(self.added_tokens_encoder),
        )

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._tiktoken.encode_ordinary(text)

    def _encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        if len(texts) < 16:
            return [self._tiktoken.encode_ordinary(t) for t in texts]
        return self._tiktoken.encode_ordinary_batch(texts, num_threads=self.num_threads)

    def _decode_bytes(self, ids: list[int]) -> bytes:
        try:
            return self._tiktoken.decode_bytes(ids)
        except (KeyError, OverflowError, TypeError):
            self._check_ids(ids)
            raise
