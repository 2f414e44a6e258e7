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


@dataclass
class Turn:
    text: str  # the person's words
    code: str  # the model's code for them (as truncated), or the person's own edit

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
        """The prompt for a new turn (or several at once: MTPB's single-turn variant)."""
        group = [new] if isinstance(new, str) else list(new)
        return self.header + "".join(t.render() for t in self.turns[self.start:]) + "".join(comment(t) for t in group)

    def fit(self, tokenizer, new: str | Sequence[str], n_positions: int, max_new_tokens: int) -> str:
        """`prompt(new)`, after moving `start` past the oldest turns where the prompt and
        max_new_tokens would not fit in n_positions (see the module's docstring). ValueError where
        the header and the new turn alone do not fit."""
        self.start = min(self.start, len(self.turns))
        room = n_positions - max_new_tokens
        text = self.prompt(new)
        if len(tokenizer.encode(text)) <= room:
            return text
        sizes = [len(tokenizer.encode(t.render())) for t in self.turns[self.start:]]
        fixed = len(tokenizer.encode(self.header + "".join(comment(t) for t in ([new] if isinstance(new, str) else new))))
        if fixed > room:
            raise ValueError(f"the new turn and the header take {fixed} tokens; with max_new_tokens {max_new_tokens} "
                             f"the model's {n_positions} positions leave room for {room}")
        total = fixed + sum(sizes)
        target = max(fixed, room // 2)
        while sizes and total > target:
            total -= sizes.pop(0)
            self.start += 1
        text = self.prompt(new)
        while len(tokenizer.encode(text)) > room and self.start < len(self.turns):  # retokenization at the seams
            self.start += 1
            text = self.prompt(new)
        return text

    def add(self, text: str, code: str) -> Turn:
        turn = Turn(text, code)
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
