"""A conversation with a model, front-end agnostic: what `codegen chat` drives (and tests script).

A `ChatSession` holds the `Conversation` (the paradigm's format), the sampling parameters, and the
KV cache of the conversation so far, kept from turn to turn and continued in place: a new turn
prefills only what follows the longest common prefix of its prompt ids and the cached ones (the
prompt is built in pieces, so that is everything but the new turn's comment; an undone or retried
turn cuts the cache back to where it differs; when the window fills, the oldest turns leave the
prompt and the next turn prefills once). Turns are generated as candidates (`generate`, streamed),
then one is taken (`accept`); `program()` is what the front ends run in the evaluation sandbox.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..completion import token_events
from ..engine.cache import KVCache
from ..engine.params import CompletionOptions, SamplingParams, sample_seed
from ..engine.prefix import common_length
from ..engine.request import Request, TokenEvent
from ..engine.scheduler import Scheduler
from ..paradigm import TRUNCATE, TURN_TOKENS, Conversation, Turn

SETTABLE = {"temperature": float, "top_p": float, "top_k": int, "max_new_tokens": int, "repetition_penalty": float,
            "seed": int}


def default_params() -> SamplingParams:
    """The paper's sampling (Salesforce's defaults: temperature 0.2, top_p 0.95) and MTPB's turn rule."""
    return CompletionOptions(max_new_tokens=TURN_TOKENS, truncate_before_pattern=TRUNCATE)


@dataclass
class Pending:
    """Candidates for a turn not yet taken: its words and each candidate's code so far."""

    text: str
    codes: list[str] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)  # each candidate's generated ids


class ChatSession:
    """One person's conversation with one model. `keep_kv` False re-prefills every turn (for
    comparison); `seed` makes a session reproducible (default: random)."""

    def __init__(self, model, tokenizer, params: SamplingParams | None = None, *, seed: int | None = None,
                 keep_kv: bool = True, conversation: Conversation | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.params = params if params is not None else default_params()
        self.params.validate()
        self.conversation = conversation if conversation is not None else Conversation()
        self.keep_kv = keep_kv
        self.kv: KVCache | None = None  # one row: the KV of kv_ids, continued in place turn after turn
        self.kv_ids: list[int] = []
        self.reused: list[int] = []  # per generation: prompt positions that came from the kept KV
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self.generations = 0  # every generation draws its own seed from (seed, this count)
        self.pending: Pending | None = None

    @property
    def turns(self) -> list[Turn]:
        return self.conversation.turns

    def program(self) -> str:
        return self.conversation.program()

    # ------------------------------------------------------------------ generation
    def generate(self, text: str, n: int = 1) -> Iterator[TokenEvent]:
        """Stream n candidates for the turn `text` (events carry the candidate's index); afterwards
        `pending` holds them, to `accept` one. A generation abandoned midway keeps what it made."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a turn needs some words")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        params = self.params
        prompt = self.conversation.fit(self.tokenizer, text, self.model.config.n_positions, params.max_new_tokens)
        seed = params.seed if params.seed is not None else self.seed
        params = params.replace(n=n, seed=sample_seed(seed, self.generations))
        self.generations += 1
        kv = self._continue(prompt)
        request = Request([prompt], params, kv=kv)
        scheduler = Scheduler.create(self.model, self.tokenizer)
        scheduler.add(request)
        self.reused.append(kv.length if kv is not None else 0)
        self.pending = pending = Pending(text, [""] * n, [[] for _ in range(n)])
        try:
            for event in token_events(scheduler.run()):
                pending.codes[event.index] += event.text
                pending.tokens[event.index].append(event.token)
                yield event
        finally:
            self._keep(request, prompt, kv)

    def _continue(self, prompt: list[int]) -> KVCache | None:
        """The kept KV, cut to what it shares with `prompt` (which keeps at least one token to run),
        or a new empty one to keep."""
        if not self.keep_kv:
            return None
        if self.kv is not None:
            k = min(common_length(self.kv_ids, prompt), len(prompt) - 1, self.kv.length)
            if k > 0:
                self.kv.truncate(k)
                self.kv_ids = self.kv_ids[:k]
                return self.kv
        self.kv, self.kv_ids = None, []
        # The whole window, never grown (a copy each time): not zeroed, its pages become memory only
        # as turns write their columns.
        return KVCache.for_model(self.model, 1, self.model.config.n_positions, empty=True)

    def _keep(self, request: Request, prompt: list[int], kv: KVCache | None) -> None:
        """After a generation: keep its output's KV (one output, finished), else what is known."""
        if not self.keep_kv:
            return
        if request.kv is not None and request.kv_ids is not None:
            self.kv, self.kv_ids = request.kv, request.kv_ids
            return
        if kv is None:
            return
        # Interrupted, or rows copied for n candidates: its first positions are the prompt's.
        kv.truncate(min(kv.length, len(prompt)))
        self.kv, self.kv_ids = kv, prompt[:kv.length]

    def accept(self, index: int = 0) -> Turn:
        """Take candidate `index` of the pending turn into the conversation."""
        if self.pending is None:
            raise ValueError("there is no pending turn: generate one first")
        if not 0 <= index < len(self.pending.codes):
            raise ValueError(f"candidate must be in [1, {len(self.pending.codes)}], got {index + 1}")
        code = self.pending.codes[index]
        turn = self.conversation.add(self.pending.text, code, self.code_ids(self.pending.tokens[index], code))
        self.pending = None
        return turn

    def code_ids(self, tokens: list[int], code: str) -> list[int]:
        """Ids for `code`: the model's own tokens as far as they spell it (the truncation rule may cut
        inside a token), then the rest encoded; the next prompt then extends this one's KV exactly."""
        keep = 0
        for j in range(1, len(tokens) + 1):
            if not code.startswith(self.tokenizer.decode(tokens[:j])):
                break
            keep = j
        rest = code[len(self.tokenizer.decode(tokens[:keep])):]
        return tokens[:keep] + (self.tokenizer.encode(rest) if rest else [])

    def say(self, text: str) -> Turn:
        """Generate one candidate for `text` and take it."""
        for _ in self.generate(text):
            pass
        return self.accept(0)

    def undo(self) -> Turn:
        self.pending = None
        return self.conversation.undo()

    def retry(self, n: int = 1) -> Iterator[TokenEvent]:
        """Take back the last turn and generate it again (new samples: a new seed)."""
        turn = self.undo()
        return self.generate(turn.text, n)

    # ------------------------------------------------------------------ settings, files, running
    def set(self, name: str, value: str) -> SamplingParams:
        """Set one sampling parameter from its text; ValueError naming it and its range."""
        kind = SETTABLE.get(name)
        if kind is None:
            raise ValueError(f"unknown setting {name!r}; settable: {', '.join(SETTABLE)}")
        try:
            parsed = kind(value) if not (name == "seed" and value in ("none", "None")) else None
        except ValueError:
            raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
        self.params = self.params.replace(**{name: parsed})
        return self.params

    def settings(self) -> dict:
        return {name: getattr(self.params, name) for name in SETTABLE}

    def save(self, path: str) -> None:
        data = {"format": "codegen-chat/1", **self.conversation.to_dict(), "settings": self.settings()}
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)

    def load(self, path: str) -> None:
        """Replace the conversation with the one saved in `path` (nothing changes if it is bad)."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read a saved conversation: {e}") from None
        conversation = Conversation.from_dict(data, path)
        params = self.params
        for name, value in (data.get("settings") or {}).items():
            if name in SETTABLE:
                try:
                    params = params.replace(**{name: value})
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{path}: settings.{name}: {e}") from None
        self.conversation, self.params, self.pending = conversation, params, None
