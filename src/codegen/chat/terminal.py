"""`codegen chat`: the conversational paradigm in a terminal, typed or scripted.

Each turn's code streams in as the model writes it; then the whole program so far runs in the
evaluation sandbox (with a time limit) and its output, errors and exception are shown. Typing: a
line ending in a backslash continues the turn on the next line; readline gives line editing and a
history (~/.codegen_chat_history); Ctrl-C stops a generation or a run, not the session. Scripted
(`--script TURNS.txt`): one turn (or one /command) per paragraph. The front end only calls the
`ChatSession`; it never touches the model.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass, field

from .session import SETTABLE, ChatSession

HELP = f"""Type what the program should do next; the model writes the code for it, then the program runs.
End a line with \\ to go on typing the same turn on the next line.
  /undo            take back the last turn
  /retry           write the last turn again (new samples)
  /n K [words]     K candidates for a new turn (or, without words, for the last one); pick one
  /run             run the program again
  /save FILE       save the conversation (JSON; /load reads it back)
  /load FILE       continue a saved conversation
  /set NAME VALUE  sampling: {', '.join(SETTABLE)}
  /history         the program so far
  /help            this text
  /quit            leave (also Ctrl-D)
Ctrl-C stops a generation or a run."""


@dataclass
class Record:
    """One turn of the transcript: what was asked, the code written, and the run that followed."""

    text: str
    code: str
    stdout: str = ""
    stderr: str = ""
    error: str | None = None


@dataclass
class Terminal:
    session: ChatSession
    out: object = field(default=sys.stdout)
    run_code: bool = True
    timeout: float = 10.0
    allow_unsafe: bool = False
    interactive: bool = False
    color: bool = False
    transcript: list[Record] = field(default_factory=list)
    _sandbox: object = None

    # ------------------------------------------------------------------ output
    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def dim(self, text: str) -> str:
        return f"\033[2m{text}\033[0m" if self.color else text

    def bold(self, text: str) -> str:
        return f"\033[1m{text}\033[0m" if self.color else text

    # ------------------------------------------------------------------ commands
    def handle(self, line: str) -> bool:
        """One turn or command; False to leave. Errors are shown, and lose nothing."""
        text = line.strip("\n")
        if not text.strip():
            return True
        if not text.startswith("/"):
            self.turn(text)
            return True
        name, _, rest = text[1:].partition(" ")
        rest = rest.strip()
        try:
            if name in ("quit", "exit", "q"):
                return False
            elif name == "help":
                self.say(HELP)
            elif name == "undo":
                turn = self.take_back()
                self.say(self.dim(f"(took back: {turn.text.splitlines()[0] if turn.text else ''})"))
            elif name == "retry":
                if not self.session.turns:
                    raise ValueError("there is no turn to retry")
                self.turn(self.take_back().text)
            elif name == "n":
                k, _, words = rest.partition(" ")
                if not k.isdigit() or int(k) < 1:
                    raise ValueError(f"/n needs a number of candidates >= 1, got {k!r}")
                if not words.strip():
                    if not self.session.turns:
                        raise ValueError("/n K without words retries the last turn, and there is none")
                    words = self.take_back().text
                self.turn(words, int(k))
            elif name == "run":
                self.run(record=self.transcript[-1] if self.transcript else None)
            elif name == "save":
                if not rest:
                    raise ValueError("/save needs a file name")
                self.session.save(rest)
                self.say(self.dim(f"(saved {len(self.session.turns)} turns to {rest})"))
            elif name == "load":
                if not rest:
                    raise ValueError("/load needs a file name")
                self.session.load(rest)
                self.transcript = [Record(t.text, t.code) for t in self.session.turns]
                self.say(self.dim(f"(loaded {len(self.session.turns)} turns from {rest})"))
            elif name == "set":
                key, _, value = rest.partition(" ")
                if not key or not value.strip():
                    raise ValueError(f"/set needs a name and a value; names: {', '.join(SETTABLE)}")
                self.session.set(key, value.strip())
                self.say(self.dim(f"({key} = {getattr(self.session.params, key)})"))
            elif name == "history":
                self.say(self.session.program().rstrip("\n") if self.session.turns else self.dim("(no turns yet)"))
            else:
                raise ValueError(f"unknown command /{name}; /help lists them")
        except (ValueError, IndexError, OSError) as e:
            self.say(f"error: {e}")
        return True

    def take_back(self):
        """Undo the last turn, in the session and the transcript; the turn taken back."""
        turn = self.session.undo()
        if self.transcript:
            self.transcript.pop()
        return turn

    # ------------------------------------------------------------------ a turn
    def turn(self, text: str, n: int = 1) -> None:
        try:
            if n == 1:
                for event in self.session.generate(text):
                    self.out.write(event.text)
                    self.out.flush()
                self.say()
                index = 0
            else:
                self.say(self.dim(f"(writing {n} candidates)"))
                for _ in self.session.generate(text, n):
                    pass
                for i, code in enumerate(self.session.pending.codes):
                    self.say(self.bold(f"--- candidate {i + 1} ---"))
                    self.say(code)
                index = self.pick(n)
        except KeyboardInterrupt:
            self.session.pending = None
            self.say(self.dim("\n(generation stopped; the turn was not added)"))
            return
        except ValueError as e:
            self.say(f"error: {e}")
            return
        turn = self.session.accept(index)
        record = Record(turn.text, turn.code)
        self.transcript.append(record)
        if self.run_code:
            self.run(record)

    def pick(self, n: int) -> int:
        if not self.interactive:
            return 0
        while True:
            answer = input(f"pick 1-{n} (Enter: 1): ").strip() or "1"
            if answer.isdigit() and 1 <= int(answer) <= n:
                return int(answer) - 1
            self.say(f"a number from 1 to {n}, please")

    def run(self, record: Record | None = None) -> None:
        from ..eval.sandbox import Limits, Sandbox, SandboxUnavailable

        if not self.session.turns:
            self.say(self.dim("(nothing to run yet)"))
            return
        result: dict = {}
        box = None
        try:
            if self._sandbox is None:
                self._sandbox = Sandbox(workers=1, allow_unsafe=self.allow_unsafe)
            box = self._sandbox
            worker = threading.Thread(target=lambda: result.update(v=box.run(self.session.program(), Limits(timeout=self.timeout))),
                                      daemon=True)
            worker.start()
            while worker.is_alive():
                worker.join(0.1)
        except KeyboardInterrupt:
            if box is not None:
                box.kill()
            self.say(self.dim("(run stopped)"))
            return
        except SandboxUnavailable as e:
            self.say(f"not run: {e}")
            if record is not None:
                record.error = f"not run: {e}"
            return
        v = result["v"]
        self.say(self.dim("--- run ---"))
        if v.stdout:
            self.say(v.stdout.rstrip("\n"))
        if v.stderr:
            self.say(v.stderr.rstrip("\n"))
        error = v.failure(self.timeout)
        self.say(self.dim(f"(ran in {v.seconds:.2f} s)") if error is None else f"error: {error}")
        if record is not None:
            record.stdout, record.stderr, record.error = v.stdout, v.stderr, error

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    # ------------------------------------------------------------------ files
    def write(self, program: str | None, transcript: str | None, model: str) -> None:
        if program:
            with open(program, "w", encoding="utf-8") as fh:
                fh.write(self.session.program())
        if transcript:
            data = {"model": model, "settings": self.session.settings(), "header": self.session.conversation.header,
                    "turns": [vars(r) for r in self.transcript]}
            with open(transcript, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2)


def paragraphs(text: str) -> list[str]:
    """A script's turns: paragraphs separated by blank lines."""
    out, block = [], []
    for line in text.splitlines():
        if line.strip():
            block.append(line)
        elif block:
            out.append("\n".join(block))
            block = []
    if block:
        out.append("\n".join(block))
    return out


def read_turn(prompt: str = ">>> ", more: str = "... ") -> str:
    """One typed turn: lines ending in a backslash go on."""
    lines = []
    line = input(prompt)
    while line.endswith("\\"):
        lines.append(line[:-1])
        line = input(more)
    lines.append(line)
    return "\n".join(lines)


def _readline() -> None:
    try:
        import readline
    except ImportError:  # not on every platform: plain input() still works
        return
    import atexit

    path = os.path.join(os.path.expanduser("~"), ".codegen_chat_history")
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    atexit.register(lambda: _save_history(readline, path))


def _save_history(readline, path: str) -> None:
    try:
        readline.write_history_file(path)
    except OSError:
        pass


def interact(term: Terminal, banner: str) -> None:
    _readline()
    term.say(banner)
    while True:
        try:
            line = read_turn(term.bold(">>> ") if term.color else ">>> ")
        except EOFError:
            term.say()
            return
        except KeyboardInterrupt:
            term.say(term.dim("\n(Ctrl-C: /quit or Ctrl-D leaves)"))
            continue
        if not term.handle(line):
            return


def script(term: Terminal, path: str) -> None:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise FileNotFoundError(f"--script {path}: {e.strerror}") from None
    steps = paragraphs(text)
    if not steps:
        raise ValueError(f"--script {path}: no turns (one turn per paragraph)")
    for step in steps:
        term.say(term.bold(">>> ") + step.replace("\n", "\n... "))
        if not term.handle(step):
            return
