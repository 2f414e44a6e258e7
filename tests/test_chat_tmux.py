"""`codegen chat` in a real terminal (tmux): typed turns, multi-line input, commands, Ctrl-C at the
prompt and during a run (the session goes on), /quit."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from helpers import TOKENIZER_DIR

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Pane:
    def __init__(self, command: str, env: dict) -> None:
        self.name = f"codegen-test-{uuid.uuid4().hex[:8]}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "160", "-y", "50", command],
                       check=True, env=env)

    def text(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-J", "-S", "-2000", "-t", self.name],
                              capture_output=True, text=True).stdout

    def keys(self, *keys: str, literal: bool = False) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *(["-l"] if literal else []), *keys], check=True)

    def type(self, line: str) -> None:
        self.keys(line, literal=True)
        self.keys("Enter")

    def wait(self, needle: str, count: int = 1, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if text.count(needle) >= count:
                return text
            if not self.alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} (x{count}) did not appear; the pane shows:\n{self.text()}")

    def alive(self) -> bool:
        return subprocess.run(["tmux", "has-session", "-t", self.name], capture_output=True).returncode == 0

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def test_chat_in_a_terminal(tmp_path):
    from codegen.cli import main

    model = tmp_path / "m"
    assert main(["init", str(model), "--preset", "tiny", "--tokenizer", TOKENIZER_DIR]) == 0
    saved = tmp_path / "loop.json"
    saved.write_text(json.dumps({"turns": [{"text": "Print hi.", "code": "print('hi')"},
                                           {"text": "Loop forever.", "code": "while True:\n    pass"}]}))
    env = dict(os.environ, HOME=str(tmp_path), NO_COLOR="1", TERM="xterm")
    out = tmp_path / "program.py"
    command = " ".join(shlex.quote(x) for x in [sys.executable, "-m", "codegen.cli", "chat", "--model", str(model),
                                                 "--seed", "2", "--max-new-tokens", "16", "--timeout", "60",
                                                 "--out", str(out)])
    # Keep the pane after the program exits, to read what it printed last.
    pane = Pane(f"{command}; echo EXITED $?; sleep 30", env)
    try:
        pane.wait("/help lists the commands")
        pane.type("Assign 3 to x.")
        pane.wait("--- run ---")
        pane.type("Add one \\")
        pane.wait("... ")
        pane.type("to x.")
        pane.wait("--- run ---", 2)
        pane.type("/history")
        text = pane.wait("# to x.")
        assert "# Assign 3 to x.\n" in text and "# Add one \n# to x." in text
        pane.type("/undo")
        pane.wait("(took back: Add one ")
        pane.keys("C-c")
        pane.wait("(Ctrl-C: /quit or Ctrl-D leaves)")
        pane.type("/set temperature warm")
        pane.wait("temperature must be a number, got 'warm'")
        pane.type(f"/load {saved}")
        pane.wait("(loaded 2 turns")
        pane.type("/run")
        pane.wait(">>> /run")  # the program now loops
        time.sleep(1.5)
        pane.keys("C-c")
        pane.wait("(run stopped)")
        pane.type("/undo")
        pane.wait("(took back: Loop forever.)")
        pane.type("/run")
        pane.wait(">>> /run", 2)
        pane.wait("hi\n(")
        pane.keys("Up")  # readline history: the last line typed comes back
        pane.wait(">>> /run\n", 2)
        pane.keys("C-u")
        pane.type("/quit")
        pane.wait("EXITED 0")
        assert out.read_text() == "# Import libraries.\n\nimport numpy as np\n\n# Print hi.\nprint('hi')\n\n"
        assert (tmp_path / ".codegen_chat_history").is_file()
    finally:
        pane.close()
