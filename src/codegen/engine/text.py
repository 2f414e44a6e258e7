"""The decoded text of one generated sequence and its stop rules (stop strings, CodeGen's truncation
patterns), checked after every token on the text itself, so a rule fires as soon as it can."""

from __future__ import annotations

from collections.abc import Sequence

from ..tokenizer.base import truncate_before_pattern as truncate


class RowText:
    """`add(token)` says whether a stop rule fired and returns the token's start offset in the text;
    `delta()` hands out the text that can no longer be cut away; `final_text()` is the text that the
    completion returns (ending before the stop string, if one fired)."""

    def __init__(self, tokenizer, stop: Sequence[str] = (), patterns: Sequence[str] = ()) -> None:
        self.decoder = tokenizer.incremental_decoder(skip_special_tokens=True)
        self.stop, self.patterns = tuple(stop), tuple(patterns)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.cut: int | None = None  # final text length when a rule fired
        self.sent = 0  # characters already handed out by delta()
        self.done = False

    def add(self, token: int, check: bool = True) -> tuple[bool, int]:
        """(whether a stop rule fired, the offset in the text where this token's text begins); with
        `check` False (before min_new_tokens) the rules are not applied."""
        before = len(self.decoder.text)
        self.decoder.add([token])
        text = self.decoder.text
        if not check:
            return False, before
        if self.stop:
            start = max(0, before - self.hold)
            hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.cut = min(hits)
                return True, before
        if self.patterns:
            cut = truncate(text, self.patterns)
            if len(cut) < len(text):
                self.cut = len(cut)
                return True, before
        return False, before

    def final_text(self) -> str:
        if not self.done:
            self.done = True
            if self.cut is None:
                self.decoder.flush()
        text = self.decoder.text
        return text[: self.cut] if self.cut is not None else text

    def delta(self, final: bool = False) -> str:
        """New text since the last call. Until `final`, text that could still become the start of a
        stop string (with patterns: the current and previous line) is held back."""
        if final:
            text = self.final_text()
            out, self.sent = text[self.sent:], len(text)
            return out
        text = self.decoder.text
        safe = len(text) - self.hold
        if self.patterns:  # a pattern may still match from the start of the previous line, or from
            # the newlines just before it ("\n\n\n" after "x = 3\n\n" begins at the first newline)
            last = text.rfind("\n")
            line = text.rfind("\n", 0, last) + 1 if last > 0 else 0
            while line > 0 and text[line - 1] == "\n":
                line -= 1
            safe = min(safe, line)
        safe = max(safe, self.sent)
        out, self.sent = text[self.sent:safe], safe
        return out
