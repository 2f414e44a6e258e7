"""The conversational paradigm's prompt format: how a multi-turn conversation becomes one prompt.

One module for every user of the format: MTPB (`eval/mtpb.py`), `codegen chat`, the web page and
`/v1/chat/completions`. It is MTPB's format (Nijkamp et al., sec. 4; Salesforce's mtpb_sample.py):

    HEADER                           # Import libraries.\\n\\nimport numpy as np\\n\\n
    # <turn 1, one "# " line per line>
    <code written for turn 1>\\n\\n
    # <turn 2>
    <code written for turn 2>\\n\\n
    # <the new turn>                 <- the model continues here

The model's code for a turn ends where CodeGen's truncation rule cuts it (`TRUNCATE`: a new comment
line, a docstring opener, three newlines, EOS) or after `max_new_tokens` (MTPB: 256). The rendered
conversation is itself the program: the turns are comments.

Token ids: a conversation encodes its prompt in pieces (`Conversation.pieces`), so that each turn
extends the previous prompt's ids exactly and its KV is reused whole; MTPB encodes the text whole.

Context window: when the prompt and the new turn's tokens would not fit in the model's positions,
the oldest turns leave the *prompt* (the header stays, the program keeps every turn), enough of
them to bring the prompt to at most half of what remains of the window, so that the next turns
keep the same beginning and reuse its KV: one full re-prefill each time the window fills, not one
per turn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

HEADER = "# Import libraries.\n\nimport numpy as np\n\n"
TURN_TOKENS = 256  # MTPB's max_gen_length: new tokens per turn
TRUNCATE = ("^#", re.escape("<|endoftext|>"), "^'''", '^"""', "\n\n\n")  # CodeGen's rule, per turn


def comment(text: str) -> str:
    """A turn's words as comment lines: "# " before each line ("# text\\n" for one line)."""
    lines = text.split("\n") if text else [""]
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    return "".join(f"# {line}\n" for line in lines)


def comments(new: str | Sequence[str]) -> str:
    """A new turn's comment lines (or several turns': MTPB's single-turn variant)."""
    return "".join(comment(t) for t in ([new] if isinstance(new, str) else new))


@dataclass
class Turn:
    text: str  # the person's words
    code: str  # the model's code for them (as truncated), or the person's own edit
    ids: list[int] | None = field(default=None, compare=False)  # the code's token ids, where the model's own are known

    def render(self) -> str:
        return comment(self.text) + self.code + "\n\n"


@dataclass
class Conversation:
    """Turns so far, after `header`. `start` is the first turn still in the prompt (the window)."""

    header: str = HEADER
    turns: list[Turn] = field(default_factory=list)
    start: int = 0

    def program(self) -> str:
        """The whole conversation as a program: header, every turn's comment and code."""
        return self.header + "".join(t.render() for t in self.turns)

    def prompt(self, new: str | Sequence[str]) -> str:
        """The prompt for a new turn (or several at once: MTPB's single-turn variant), as text: MTPB
        encodes it whole, as Salesforce's harness does; conversations use `fit` (ids, in pieces)."""
        return self.header + "".join(t.render() for t in self.turns[self.start:]) + comments(new)

    def pieces(self, tokenizer, new: str | Sequence[str]) -> list[list[int]]:
        """The prompt for a new turn as token ids, in pieces encoded one by one: the header with the
        first turn's comment, each turn's code (its `ids` where the model's own tokens are known),
        then "\\n\\n" with the next comment. A turn's pieces never change once written, so the
        next prompt always begins with the last one's ids (its KV is reused whole), whereas
        re-encoding the whole text may tokenize a seam, or the model's own tokens, differently."""
        out, lead = [], self.header
        for t in self.turns[self.start:]:
            out.append(tokenizer.encode(lead + comment(t.text)))
            out.append(list(t.ids) if t.ids is not None else tokenizer.encode(t.code))
            lead = "\n\n"
        out.append(tokenizer.encode(lead + comments(new)))
        return out

    def fit(self, tokenizer, new: str | Sequence[str], n_positions: int, max_new_tokens: int) -> list[int]:
        """The prompt ids for a new turn (`pieces`, joined), after moving `start` past the oldest
        turns where they and max_new_tokens would not fit in n_positions (see the module's
        docstring). ValueError where the header and the new turn alone do not fit."""
        self.start = min(self.start, len(self.turns))
        room = n_positions - max_new_tokens
        pieces = self.pieces(tokenizer, new)
        total = sum(map(len, pieces))
        if total <= room:
            return [t for p in pieces for t in p]
        fixed = len(tokenizer.encode(self.header + comments(new)))
        if fixed > room:
            raise ValueError(f"the new turn and the header take {fixed} tokens; with max_new_tokens {max_new_tokens} "
                             f"the model's {n_positions} positions leave room for {room}")
        sizes = [len(pieces[2 * i]) + len(pieces[2 * i + 1]) for i in range(len(pieces) // 2)]
        target = max(fixed, room // 2)
        while sizes and total > target:
            total -= sizes.pop(0)
            self.start += 1
        while True:  # exact: the first kept turn's comment now follows the header
            ids = [t for p in self.pieces(tokenizer, new) for t in p]
            if len(ids) <= room or self.start >= len(self.turns):
                return ids
            self.start += 1

    def add(self, text: str, code: str, ids: list[int] | None = None) -> Turn:
        turn = Turn(text, code, ids)
        self.turns.append(turn)
        return turn

    def undo(self) -> Turn:
        if not self.turns:
            raise IndexError("there is no turn to undo")
        turn = self.turns.pop()
        self.start = min(self.start, len(self.turns))
        return turn

    def to_dict(self) -> dict:
        return {"header": self.header, "turns": [{"text": t.text, "code": t.code} for t in self.turns]}

    @classmethod
    def from_dict(cls, data: dict, where: str = "conversation") -> Conversation:
        if not isinstance(data, dict) or not isinstance(data.get("turns"), list):
            raise ValueError(f"{where}: expected an object with a 'turns' list")
        turns = []
        for i, t in enumerate(data["turns"]):
            if not isinstance(t, dict) or not isinstance(t.get("text"), str) or not isinstance(t.get("code"), str):
                raise ValueError(f"{where}: turns[{i}] must be an object with string 'text' and 'code'")
            turns.append(Turn(t["text"], t["code"]))
        header = data.get("header", HEADER)
        if not isinstance(header, str):
            raise ValueError(f"{where}: 'header' must be a string")
        return cls(header, turns)
