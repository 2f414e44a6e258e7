"""The tokenizer surface shared by `CodeGenTokenizer` (pure Python) and `CodeGenTokenizerFast` (tiktoken).

CodeGen's tokenizer is GPT-2's byte-level BPE plus 38 whitespace-run tokens (2..31 spaces, 2..9 tabs).
Added tokens are cut out of the text first, leftmost-longest; only the text between them goes through
GPT-2's pre-tokenization regex and BPE. Subclasses supply that last step (`_encode_ordinary`).

Decoding is an exact inverse: bytes of each token concatenated and read as UTF-8. Unlike the 4.37
slow tokenizer, no spaces are put around added tokens, and `clean_up_tokenization_spaces` defaults
to False, since both corrupt code.
"""

from __future__ import annotations

import codecs
import logging
import functools
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from .files import (
    ADDED_TOKENS_FILE,
    ENDOFTEXT,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TokenizerFileError,
    load_files,
    read_merges,
    read_vocab,
    token_bytes,
    write_json,
    write_vocabulary,
)

logger = logging.getLogger(__name__)

# GPT-2's pre-tokenization pattern (contractions, letters, digits, other symbols, whitespace).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def truncate_before_pattern(text: str, patterns: Sequence[str]) -> str:
    """Salesforce's completion truncation (reference 3.4), as transformers' decode applies it.

    Cut before the 2nd top-level `print`, then before the 2nd top-level `def`, then before the
    earliest match of any user pattern (compiled with MULTILINE). A no-op when `patterns` is empty.
    """
    if not patterns:
        return text
    for rule in (r"^print", r"^def"):
        starts = [m.start() for m in re.finditer(rule, text, re.MULTILINE)]
        if len(starts) > 1:
            text = text[: starts[1]]
    cuts = [m.start() for m in (re.search(p, text, re.MULTILINE) for p in patterns) if m]
    return text[: min(cuts)] if cuts else text


_truncate = truncate_before_pattern  # decode() has a parameter of the same name


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization` (for English prose; it edits code, so it is opt-in)."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def _leftmost_longest(tokens: Iterable[str]) -> str:
    """A regex matching the longest of `tokens` at the leftmost position. Runs of one character with
    contiguous lengths (CodeGen's 2..31 spaces, 2..9 tabs) become `c{a,b}`, which scans much faster
    than 30 alternatives; greedy repetition still takes the longest run."""
    tokens = set(tokens)
    runs: dict[str, set[int]] = {}
    for t in tokens:
        if len(set(t)) == 1:
            runs.setdefault(t[0], set()).add(len(t))
    parts: list[tuple[int, str]] = []
    for ch, lengths in runs.items():
        others = [t for t in tokens if t[0] == ch and len(set(t)) > 1]
        lo, hi = min(lengths), max(lengths)
        if not others and len(lengths) == hi - lo + 1:
            parts.append((hi, f"{re.escape(ch)}{{{lo},{hi}}}" if hi > lo else re.escape(ch * lo)))
            tokens -= {ch * n for n in lengths}
    parts += [(len(t), re.escape(t)) for t in tokens]
    return "|".join(p for _, p in sorted(parts, key=lambda lp: -lp[0]))


def _to_id_list(ids: Any) -> list[int]:
    if hasattr(ids, "tolist"):  # torch / numpy
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return list(ids)


class BatchEncoding(dict):
    """transformers' BatchEncoding: a dict of model inputs that also reads as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: Any) -> BatchEncoding:
        return BatchEncoding({k: v.to(device) if hasattr(v, "to") else v for k, v in self.items()})


class CodeGenTokenizerBase:
    vocab_files_names = {"vocab_file": "vocab.json", "merges_file": "merges.txt"}
    model_input_names = ["input_ids", "attention_mask"]

    @functools.cached_property
    def decoder(self) -> dict[int, str]:
        """id -> token (transformers' name), made on first use (converting ids to token strings)."""
        return {i: t for t, i in self.encoder.items()}

    @functools.cached_property
    def bpe_ranks(self) -> dict[tuple[str, str], int]:
        """merge pair -> its rank (transformers' name), made on first use: the tiktoken core of the fast
        tokenizer never needs it, and at CodeGen's 50k merges it holds ~10 MiB."""
        return {pair: i for i, pair in enumerate(self._merges)}

    def __init__(
        self,
        vocab_file: str | None = None,
        merges_file: str | None = None,
        errors: str = "replace",
        unk_token: str | None = ENDOFTEXT,
        bos_token: str | None = ENDOFTEXT,
        eos_token: str | None = ENDOFTEXT,
        pad_token: str | None = None,
        add_prefix_space: bool = False,
        add_bos_token: bool = False,
        *,
        added_tokens: dict[str, int] | None = None,
        model_max_length: int = 2048,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
        vocab: dict[str, int] | None = None,
        merges: list[tuple[str, str]] | None = None,
        name_or_path: str = "",
    ) -> None:
        if vocab is None or merges is None:
            if vocab_file is None or merges_file is None:
                raise ValueError("give vocab_file and merges_file (or use from_pretrained(directory))")
            for f in (vocab_file, merges_file):
                if not os.path.isfile(f):
                    raise FileNotFoundError(f"{f}: no such tokenizer file")
            vocab, merges = read_vocab(vocab_file), read_merges(merges_file)
        self.encoder: dict[str, int] = dict(vocab)
        # Merge pairs hold the vocabulary's own string objects (each part of a GPT-2 merge is a token):
        # 100k fewer strings, ~5 MiB at CodeGen's 50k merges.
        same = {t: t for t in self.encoder}
        self._merges = [(same.get(a, a), same.get(b, b)) for a, b in merges]
        self.errors = errors
        self.add_prefix_space = add_prefix_space
        self.add_bos_token = add_bos_token
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.name_or_path = name_or_path
        self.added_tokens_encoder: dict[str, int] = {}
        self._special: set[str] = set()
        self._id_bytes: list[bytes] = []
        self._special_tokens: dict[str, str | None] = dict.fromkeys(SPECIAL_KEYS)
        for content, idx in sorted((added_tokens or {}).items(), key=lambda kv: kv[1]):
            self._add_token(content, idx, special=False)
        for key, value in zip(SPECIAL_KEYS, (bos_token, eos_token, unk_token, pad_token)):
            setattr(self, key, value)
        self._rebuild()

    # ----------------------------------------------------------------- vocabulary
    def _add_token(self, content: str, idx: int | None = None, special: bool = False) -> int:
        if content in self.encoder:
            idx = self.encoder[content]
        elif content in self.added_tokens_encoder:
            idx = self.added_tokens_encoder[content]
        else:
            idx = len(self) if idx is None else idx
            self.added_tokens_encoder[content] = idx
        if special:
            self._special.add(content)
        return idx

    def _rebuild(self) -> None:
        """Recompute the id -> bytes table and the added-token splitter after the vocabulary changed."""
        size = len(self)
        table = [b""] * size
        for tok, i in self.encoder.items():
            table[i] = token_bytes(tok)
        for tok, i in self.added_tokens_encoder.items():
            table[i] = tok.encode("utf-8")
        self._id_bytes = table
        self.added_tokens_decoder = {i: t for t, i in self.added_tokens_encoder.items()}
        # Leftmost-longest matching: at each position the regex tries longer tokens first.
        splitters = list(self.added_tokens_encoder) + [t for t in self._special if t in self.encoder]
        self._splitter = re.compile(_leftmost_longest(splitters)) if splitters else None
        self._split_ids = {t: self.added_tokens_encoder.get(t, self.encoder.get(t)) for t in splitters}
        self._special_ids = {self._split_ids.get(t, self.encoder.get(t)) for t in self.all_special_tokens}
        self._on_vocabulary_change()

    def _on_vocabulary_change(self) -> None:
        """Hook for backends that keep their own copy of the added tokens."""

    def __len__(self) -> int:
        top = max(self.added_tokens_encoder.values(), default=-1)
        return max(len(self.encoder), top + 1)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def get_vocab(self) -> dict[str, int]:
        return {**self.encoder, **self.added_tokens_encoder}

    def get_added_vocab(self) -> dict[str, int]:
        return dict(self.added_tokens_encoder)

    def add_tokens(self, tokens: str | Iterable[str], special_tokens: bool = False) -> int:
        tokens = [tokens] if isinstance(tokens, str) else list(tokens)
        before = len(self)
        for t in tokens:
            self._add_token(t, special=special_tokens)
        self._rebuild()
        return len(self) - before

    def add_special_tokens(self, special_tokens_dict: dict[str, str]) -> int:
        before = len(self)
        for key, value in special_tokens_dict.items():
            if key not in SPECIAL_KEYS:
                raise ValueError(f"unknown special token key {key!r}; use one of {', '.join(SPECIAL_KEYS)}")
            setattr(self, key, value)
        return len(self) - before

    # special tokens: setting one to a string outside the vocabulary adds it, as transformers does
    def _set_special(self, key: str, value: str | None) -> None:
        if value is not None:
            if not isinstance(value, str):
                raise TypeError(f"{key} must be a string or None, got {type(value).__name__}")
            self._add_token(value, special=True)
        self._special_tokens[key] = value
        if self._id_bytes:
            self._rebuild()

    bos_token = property(lambda s: s._special_tokens["bos_token"], lambda s, v: s._set_special("bos_token", v))
    eos_token = property(lambda s: s._special_tokens["eos_token"], lambda s, v: s._set_special("eos_token", v))
    unk_token = property(lambda s: s._special_tokens["unk_token"], lambda s, v: s._set_special("unk_token", v))
    pad_token = property(lambda s: s._special_tokens["pad_token"], lambda s, v: s._set_special("pad_token", v))

    def _token_id(self, key: str) -> int | None:
        tok = self._special_tokens[key]
        return None if tok is None else self.convert_tokens_to_ids(tok)

    def _set_token_id(self, key: str, value: int | None) -> None:
        self._set_special(key, None if value is None else self.convert_ids_to_tokens(int(value)))

    bos_token_id = property(lambda s: s._token_id("bos_token"), lambda s, v: s._set_token_id("bos_token", v))
    eos_token_id = property(lambda s: s._token_id("eos_token"), lambda s, v: s._set_token_id("eos_token", v))
    unk_token_id = property(lambda s: s._token_id("unk_token"), lambda s, v: s._set_token_id("unk_token", v))
    pad_token_id = property(lambda s: s._token_id("pad_token"), lambda s, v: s._set_token_id("pad_token", v))

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {k: v for k, v in self._special_tokens.items() if v is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys([*self.special_tokens_map.values(), *sorted(self._special)]))

    @property
    def all_special_ids(self) -> list[int]:
        return [self.convert_tokens_to_ids(t) for t in self.all_special_tokens]

    # ----------------------------------------------------------------- encoding
    def _encode_ordinary(self, text: str) -> list[int]:
        raise NotImplementedError

    def _encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        return [self._encode_ordinary(t) for t in texts]

    def _segments(self, text: str) -> list[str | int]:
        """Text split into ordinary pieces (str) and added-token ids (int), in order."""
        if self._splitter is None:
            return [text] if text else []
        out: list[str | int] = []
        pos = 0
        for m in self._splitter.finditer(text):
            if m.start() > pos:
                out.append(text[pos:m.start()])
            out.append(self._split_ids[m.group()])
            pos = m.end()
        if pos < len(text):
            out.append(text[pos:])
        return out

    def _encode_many(self, texts: list[str], add_prefix_space: bool | None = None) -> list[list[int]]:
        if not all(isinstance(t, str) for t in texts):
            bad = next(t for t in texts if not isinstance(t, str))
            raise TypeError(f"text must be a string or a list of strings, got {type(bad).__name__}")
        if self.add_prefix_space if add_prefix_space is None else add_prefix_space:
            texts = [" " + t for t in texts]
        return self._encode_texts(texts)

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        segmented = [self._segments(t) for t in texts]
        pieces = [p for segs in segmented for p in segs if isinstance(p, str)]
        encoded = iter(self._encode_ordinary_batch(pieces))
        out = []
        for segs in segmented:
            ids: list[int] = []
            for p in segs:
                if isinstance(p, str):
                    ids.extend(next(encoded))
                else:
                    ids.append(p)
            out.append(ids)
        return out

    def encode_literal(self, text: str, literal: Iterable[str]) -> list[int]:
        """`text`'s ids with the added tokens named in `literal` taken as the plain text they spell
        (e.g. a fill-in-the-middle prefix that itself contains `<eom>`); other added tokens as usual."""
        literal = set(literal)
        pieces: list[str | int] = []
        for p in self._segments(text):
            name = (self.added_tokens_decoder.get(p) or self.decoder.get(p)) if isinstance(p, int) else None
            if name in literal:
                p = name
            if isinstance(p, str) and pieces and isinstance(pieces[-1], str):
                pieces[-1] += p
            else:
                pieces.append(p)
        encoded = iter(self._encode_ordinary_batch([p for p in pieces if isinstance(p, str)]))
        return [i for p in pieces for i in (next(encoded) if isinstance(p, str) else [p])]

    def tokenize(self, text: str, add_prefix_space: bool | None = None) -> list[str]:
        return self.convert_ids_to_tokens(self._encode_many([text], add_prefix_space)[0])

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        def one(t: str) -> int:
            idx = self.added_tokens_encoder.get(t, self.encoder.get(t))
            if idx is None:
                unk = self._special_tokens["unk_token"]
                idx = self.added_tokens_encoder.get(unk, self.encoder.get(unk)) if unk is not None else None
            if idx is None:
                raise KeyError(f"token {t!r} is not in the vocabulary and there is no unk_token")
            return idx

        return one(tokens) if isinstance(tokens, str) else [one(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int], skip_special_tokens: bool = False) -> str | list[str]:
        single = isinstance(ids, int) or (hasattr(ids, "dim") and ids.dim() == 0)
        id_list = self._check_ids(_to_id_list(ids))
        tokens = [self.added_tokens_decoder.get(i) or self.decoder[i] for i in id_list
                  if not (skip_special_tokens and i in self._special_ids)]
        return tokens[0] if single else tokens

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self.decode(self.convert_tokens_to_ids(tokens))

    def build_inputs_with_special_tokens(self, ids: list[int], pair: list[int] | None = None) -> list[int]:
        bos = [self.bos_token_id] if self.add_bos_token and self.bos_token_id is not None else []
        return bos + ids + (bos + pair if pair is not None else [])

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
    ):
        if text_pair is None and not padding and truncation in (None, False) and return_tensors is None:
            ids = self._encode_many([text])[0]
            if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
                ids = [self.bos_token_id] + ids
            return ids
        enc = self(text, text_pair, add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                   max_length=max_length, return_tensors=return_tensors)
        return enc["input_ids"]

    def __call__(
        self,
        text: str | list[str],
        text_pair: str | list[str] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_length: bool = False,
        padding_side: str | None = None,
        add_prefix_space: bool | None = None,
    ) -> BatchEncoding:
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        pairs = None
        if text_pair is not None:
            pairs = list(text_pair) if isinstance(text_pair, (list, tuple)) else [text_pair]
            if len(pairs) != len(texts):
                raise ValueError(f"text has {len(texts)} entries but text_pair has {len(pairs)}")
        strategy = self._padding_strategy(padding)
        if strategy != "do_not_pad" and self.pad_token is None:
            raise ValueError(
                "Asking to pad but the tokenizer has no padding token: set one, e.g. "
                "tokenizer.pad_token = tokenizer.eos_token"
            )
        encoded = self._encode_many(texts + (pairs or []), add_prefix_space)
        firsts, seconds = encoded[: len(texts)], (encoded[len(texts):] if pairs else [None] * len(texts))
        limit = None
        if truncation not in (None, False, "do_not_truncate"):
            limit = max_length if max_length is not None else self.model_max_length
        elif max_length is not None and strategy != "max_length":
            logger.warning("max_length=%d is ignored without truncation=True", max_length)

        bos = [self.bos_token_id] if add_special_tokens and self.add_bos_token and self.bos_token_id is not None else None
        if bos is None and limit is None and pairs is None:
            rows, lengths = firsts, None  # the common case: nothing to add or cut
        else:
            rows, lengths = [], []
            for a, b in zip(firsts, seconds):
                if bos is not None:
                    a = bos + a
                    b = bos + b if b is not None else None
                if limit is not None:
                    a, b = self._truncate(a, b, limit, truncation)
                rows.append(a + b if b is not None else a)
                lengths.append(len(a))
        want_types = bool(return_token_type_ids)
        types = [[0] * n + [1] * (len(r) - n) for r, n in zip(rows, lengths)] if want_types and lengths else (
            [[0] * len(r) for r in rows] if want_types else None)
        masks = [[1] * len(r) for r in rows]

        target = None
        if strategy == "longest":
            target = max((len(r) for r in rows), default=0)
        elif strategy == "max_length":
            target = max_length if max_length is not None else self.model_max_length
        if target is not None and pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        if target is not None:
            side = padding_side or self.padding_side
            if side not in ("left", "right"):
                raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
            pad = self.pad_token_id
            for i, r in enumerate(rows):
                n = target - len(r)
                if n > 0:
                    if side == "left":
                        rows[i], masks[i] = [pad] * n + r, [0] * n + masks[i]
                        if types is not None:
                            types[i] = [0] * n + types[i]
                    else:
                        rows[i], masks[i] = r + [pad] * n, masks[i] + [0] * n
                        if types is not None:
                            types[i] = types[i] + [0] * n

        out = BatchEncoding(input_ids=rows)
        if types is not None:
            out["token_type_ids"] = types
        if return_attention_mask is None or return_attention_mask:
            out["attention_mask"] = masks
        if return_length:
            out["length"] = [sum(m) for m in masks]
        if not batched:
            out = BatchEncoding({k: v[0] for k, v in out.items()})
        return self._as_tensors(out, return_tensors, batched)

    @staticmethod
    def _padding_strategy(padding: bool | str) -> str:
        if padding is True or padding == "longest":
            return "longest"
        if padding is False or padding is None or padding == "do_not_pad":
            return "do_not_pad"
        if padding == "max_length":
            return "max_length"
        raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")

    def _truncate(self, a: list[int], b: list[int] | None, limit: int, strategy: bool | str) -> tuple[list[int], list[int] | None]:
        def cut(ids: list[int], n: int) -> list[int]:
            if n <= 0:
                return ids
            return ids[n:] if self.truncation_side == "left" else ids[: len(ids) - n]

        excess = len(a) + len(b or []) - limit
        if excess <= 0:
            return a, b
        if b is None or strategy == "only_first":
            return cut(a, excess), b
        if strategy == "only_second":
            return a, cut(b, excess)
        # longest_first: take tokens from whichever sequence is longer, one at a time
        na = nb = 0
        for _ in range(excess):
            if len(a) - na > len(b) - nb:
                na += 1
            else:
                nb += 1
        return cut(a, na), cut(b, nb)

    def _as_tensors(self, enc: BatchEncoding, return_tensors: str | None, batched: bool) -> BatchEncoding:
        if return_tensors is None:
            return enc
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        rows = enc["input_ids"] if batched else [enc["input_ids"]]
        if len({len(r) for r in rows}) > 1:
            raise ValueError("sequences have different lengths: pass padding=True to return tensors")
        if return_tensors == "pt":
            import torch

            convert = lambda v: torch.tensor(v if batched else [v], dtype=torch.long)  # noqa: E731
        else:
            import numpy as np

            convert = lambda v: np.array(v if batched else [v], dtype=np.int64)  # noqa: E731
        return BatchEncoding({k: convert(v) for k, v in enc.items()})

    # ----------------------------------------------------------------- decoding
    def _check_ids(self, ids: list[int]) -> list[int]:
        n = len(self._id_bytes)
        for i in ids:
            if not isinstance(i, int) or not 0 <= i < n:
                raise ValueError(f"token id {i!r} is outside the tokenizer's vocabulary [0, {n})")
        return ids

    def _decode_bytes(self, ids: list[int]) -> bytes:
        table = self._id_bytes
        try:
            return b"".join([table[i] for i in ids])
        except (IndexError, TypeError):
            self._check_ids(ids)
            raise

    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        truncate_before_pattern: Sequence[str] | None = None,
    ) -> str:
        ids = _to_id_list(token_ids)
        if ids and min(ids) < 0:
            self._check_ids(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        text = self._decode_bytes(ids).decode("utf-8", errors=self.errors)
        if self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces:
            text = clean_up_tokenization(text)
        if truncate_before_pattern:
            text = _truncate(text, truncate_before_pattern)
        return text

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None,
                     truncate_before_pattern: Sequence[str] | None = None) -> list[str]:
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens, clean_up_tokenization_spaces, truncate_before_pattern) for s in sequences]

    def incremental_decoder(self, skip_special_tokens: bool = False) -> IncrementalDecoder:
        return IncrementalDecoder(self, skip_special_tokens)

    # ----------------------------------------------------------------- files
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        add_prefix_space: bool | None = None,
        add_bos_token: bool | None = None,
        pad_token: str | None = None,
        padding_side: str | None = None,
        model_max_length: int | None = None,
        clean_up_tokenization_spaces: bool | None = None,
        errors: str | None = None,
    ):
        directory = os.fspath(path)
        files = load_files(directory)
        s = files.settings
        special = files.special

        def pick(given, key, default):
            return given if given is not None else s.get(key, default)

        tok = cls(
            errors=pick(errors, "errors", "replace"),
            unk_token=special.get("unk_token", ENDOFTEXT),
            bos_token=special.get("bos_token", ENDOFTEXT),
            eos_token=special.get("eos_token", ENDOFTEXT),
            pad_token=pad_token if pad_token is not None else special.get("pad_token"),
            add_prefix_space=pick(add_prefix_space, "add_prefix_space", False),
            add_bos_token=pick(add_bos_token, "add_bos_token", False),
            added_tokens=files.added,
            model_max_length=int(pick(model_max_length, "model_max_length", 2048)),
            padding_side=pick(padding_side, "padding_side", "right"),
            truncation_side=s.get("truncation_side", "right"),
            # Our default is False whatever the file says when it is silent (4.37 assumed True).
            clean_up_tokenization_spaces=pick(clean_up_tokenization_spaces, "clean_up_tokenization_spaces", False),
            vocab=files.vocab,
            merges=files.merges,
            name_or_path=directory,
        )
        return tok

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, str]:
        return write_vocabulary(save_directory, self.encoder, self._merges, filename_prefix)

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        directory = os.fspath(save_directory)
        vocab_file, merges_file = self.save_vocabulary(directory)
        added = {t: i for t, i in self.added_tokens_encoder.items()}
        decoder = {
            str(i): {"content": t, "lstrip": False, "normalized": t not in self._special, "rstrip": False,
                     "single_word": False, "special": t in self._special}
            for t, i in sorted({**added, **{t: self.encoder[t] for t in self._special if t in self.encoder}}.items(), key=lambda kv: kv[1])
        }
        config = {
            "tokenizer_class": "CodeGenTokenizer",
            "add_prefix_space": self.add_prefix_space,
            "add_bos_token": self.add_bos_token,
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "errors": self.errors,
            "added_tokens_decoder": decoder,
            **self.special_tokens_map,
        }
        files = [vocab_file, merges_file]
        files.append(write_json(directory, ADDED_TOKENS_FILE, added))
        files.append(write_json(directory, SPECIAL_TOKENS_MAP_FILE, self.special_tokens_map))
        files.append(write_json(directory, TOKENIZER_CONFIG_FILE, config))
        return tuple(files)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, len={len(self)}, "
                f"padding_side={self.padding_side!r}, special_tokens={self.special_tokens_map})")


class IncrementalDecoder:
    """Text deltas for streamed token ids: never half a UTF-8 character; the pieces join to `decode(ids)`."""

    def __init__(self, tokenizer: CodeGenTokenizerBase, skip_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors=tokenizer.errors)
        self.text = ""

    def add(self, ids: int | Iterable[int]) -> str:
        ids = self.tokenizer._check_ids(_to_id_list(ids))
        if self.skip_special_tokens:
            ids = [i for i in ids if i not in self.tokenizer._special_ids]
        delta = self._utf8.decode(self.tokenizer._decode_bytes(ids))
        self.text += delta
        return delta

    def flush(self) -> str:
        """Whatever is left at the end (an incomplete character becomes U+FFFD under errors='replace')."""
        delta = self._utf8.decode(b"", final=True)
        self.text += delta
        return delta


__all__ = ["BatchEncoding", "CodeGenTokenizerBase", "IncrementalDecoder", "TokenizerFileError", "truncate_before_pattern"]
