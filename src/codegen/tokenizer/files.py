"""Tokenizer files: reading and writing vocab.json, merges.txt, added_tokens.json,
special_tokens_map.json, tokenizer_config.json (or tokenizer.json alone), as transformers lays them out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
ADDED_TOKENS_FILE = "added_tokens.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILE = "tokenizer.json"
ENDOFTEXT = "<|endoftext|>"


class TokenizerFileError(ValueError):
    """A missing or corrupt tokenizer file; the message names the file."""


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=None)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


@lru_cache(maxsize=None)
def _to_latin1() -> dict[int, int]:
    """A str.translate table: each byte-level char -> the char whose code is its byte; every other char
    below 256 -> U+0100, which latin-1 cannot encode, so that it fails as chars outside the table do."""
    table = {ord(c): b for c, b in unicode_to_bytes().items()}
    for code in range(256):
        table.setdefault(code, 0x100)
    return table


def token_bytes(token: str) -> bytes:
    """The bytes a byte-level vocabulary token stands for ('Ġhello' -> b' hello'); KeyError naming the
    first char that is not byte-level. One translate and encode in C: loading a tokenizer maps all
    100k of CodeGen's vocabulary and merge strings, ~0.25 s as a Python loop over chars."""
    try:
        return token.translate(_to_latin1()).encode("latin-1")
    except UnicodeEncodeError:
        table = unicode_to_bytes()
        raise KeyError(next(c for c in token if c not in table)) from None


@dataclass
class TokenizerFiles:
    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    added: dict[str, int] = field(default_factory=dict)  # added (non-base) tokens -> id
    special: dict[str, Any] = field(default_factory=dict)  # bos/eos/unk/pad token strings
    settings: dict[str, Any] = field(default_factory=dict)  # tokenizer_config.json


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise TokenizerFileError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise TokenizerFileError(f"{path}: not UTF-8 text ({e})") from None


def _token_content(value: Any) -> str | None:
    """special_tokens_map values are strings or AddedToken dicts ({"content": ...})."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def read_vocab(path: str) -> dict[str, int]:
    vocab = _read_json(path)
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise TokenizerFileError(f"{path}: expected a JSON object mapping token strings to integer ids")
    return vocab


def read_merges(path: str) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
    except UnicodeDecodeError as e:
        raise TokenizerFileError(f"{path}: not UTF-8 text ({e})") from None
    merges = []
    for n, line in enumerate(lines, 1):
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise TokenizerFileError(f"{path}, line {n}: expected two space-separated symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _check_merges(merges: list[tuple[str, str]], vocab: dict[str, int], source: str) -> None:
    for n, (a, b) in enumerate(merges):
        if a + b not in vocab:
            raise TokenizerFileError(f"{source}: merge {n + 1} ({a!r} {b!r}) makes {a + b!r}, which is not in the vocabulary")


def _added_tokens(directory: str, settings: dict) -> dict[str, int]:
    """The added tokens of a vocab.json layout: added_tokens.json, then tokenizer_config.json's
    added_tokens_decoder for tokens it does not name (a copy: the files' JSON is cached)."""
    file = os.path.join(directory, ADDED_TOKENS_FILE)
    added: dict[str, int] = {}
    if os.path.isfile(file):
        data = _read_json(file)
        if not isinstance(data, dict):
            raise TokenizerFileError(f"{file}: expected a JSON object of token -> id")
        added = dict(data)
    try:
        for idx, entry in settings.get("added_tokens_decoder", {}).items():
            added.setdefault(entry["content"], int(idx))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise TokenizerFileError(f"{os.path.join(directory, TOKENIZER_CONFIG_FILE)}: added_tokens_decoder is malformed "
                                 f"({type(e).__name__}: {e})") from None
    return added


def load_files(directory: str) -> TokenizerFiles:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no such tokenizer directory")
    path = lambda name: os.path.join(directory, name)  # noqa: E731
    settings = _read_json(path(TOKENIZER_CONFIG_FILE)) if os.path.isfile(path(TOKENIZER_CONFIG_FILE)) else {}
    special = _read_json(path(SPECIAL_TOKENS_MAP_FILE)) if os.path.isfile(path(SPECIAL_TOKENS_MAP_FILE)) else {}
    special = {k: _token_content(v) for k, v in special.items() if k.endswith("_token")}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if key in settings and key not in special:
            special[key] = _token_content(settings[key])

    if os.path.isfile(path(VOCAB_FILE)) or os.path.isfile(path(MERGES_FILE)):
        for name in (VOCAB_FILE, MERGES_FILE):
            if not os.path.isfile(path(name)):
                raise TokenizerFileError(f"{directory}: {name} is missing (a byte-level BPE tokenizer needs {VOCAB_FILE} and {MERGES_FILE})")
        vocab, merges = read_vocab(path(VOCAB_FILE)), read_merges(path(MERGES_FILE))
        _check_merges(merges, vocab, path(MERGES_FILE))
        added = _added_tokens(directory, settings)
    elif os.path.isfile(path(TOKENIZER_FILE)):
        data = _read_json(path(TOKENIZER_FILE))
        try:
            model = data["model"]
            vocab = model["vocab"]
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
            added = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
        except (KeyError, TypeError, AttributeError) as e:
            raise TokenizerFileError(f"{path(TOKENIZER_FILE)}: not a BPE tokenizer.json ({e!r})") from None
        if model.get("type", "BPE") != "BPE":
            raise TokenizerFileError(f"{path(TOKENIZER_FILE)}: model type {model.get('type')!r}, expected BPE")
        _check_merges(merges, vocab, path(TOKENIZER_FILE))
    else:
        raise FileNotFoundError(f"{directory}: no tokenizer files found (expected {VOCAB_FILE} and {MERGES_FILE}, or {TOKENIZER_FILE})")
    # Tokens already in the base vocabulary (e.g. <|endoftext|>) are not "added".
    added = {t: i for t, i in added.items() if vocab.get(t) != i}
    return TokenizerFiles(vocab=vocab, merges=merges, added=added, special=special, settings=settings)


def write_vocabulary(directory: str, vocab: dict[str, int], merges: list[tuple[str, str]], prefix: str | None = None) -> tuple[str, str]:
    os.makedirs(directory, exist_ok=True)
    stem = f"{prefix}-" if prefix else ""
    vocab_path = os.path.join(directory, stem + VOCAB_FILE)
    merges_path = os.path.join(directory, stem + MERGES_FILE)
    with open(vocab_path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(vocab, ensure_ascii=False) + "\n")
    with open(merges_path, "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n")
        fh.writelines(f"{a} {b}\n" for a, b in merges)
    return vocab_path, merges_path


def write_json(directory: str, name: str, data: Any) -> str:
    file = os.path.join(directory, name)
    with open(file, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    return file


def tokenizer_size(directory: str) -> int | None:
    """len() of the tokenizer whose files are in `directory` (its vocabulary and added tokens), or None
    when there are none; read without the merges, for a model to know which ids it may produce."""
    path = lambda name: os.path.join(directory, name)  # noqa: E731
    if os.path.isfile(path(VOCAB_FILE)):
        settings = _read_json(path(TOKENIZER_CONFIG_FILE)) if os.path.isfile(path(TOKENIZER_CONFIG_FILE)) else {}
        vocab = read_vocab(path(VOCAB_FILE))
        ids = set(vocab.values()) | set(_added_tokens(directory, settings if isinstance(settings, dict) else {}).values())
    elif os.path.isfile(path(TOKENIZER_FILE)):
        data = _read_json(path(TOKENIZER_FILE))
        try:
            vocab = data["model"]["vocab"]
            ids = set(vocab.values()) | {t["id"] for t in data.get("added_tokens", [])}
        except (KeyError, TypeError, AttributeError):
            return None
    else:
        return None
    return max(len(vocab), max((i for i in ids if isinstance(i, int)), default=-1) + 1)
