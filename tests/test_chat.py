"""Conversations: a session's turns reuse the history's KV and give the ids of a full re-prefill;
the terminal front end's commands, scripted runs with transcripts, and bad input."""

from __future__ import annotations

import io
import json

import pytest

from codegen.chat.session import ChatSession
from codegen.chat.terminal import Terminal, paragraphs, script
from codegen.engine import SamplingParams
from codegen.paradigm import HEADER, TRUNCATE
from codegen.tokenizer import CodeGenTokenizerFast
from helpers import TOKENIZER_DIR, sharp_lm
from scripted import coder_lm

ANSWERS = {"Assign 3 to x.": "x = 3", "Add one to x.": "x = x + 1", "Print x.": "print(x)",
           "Print it twice.": "for _ in range(2):\n    print(x)", "Fail.": "raise ValueError('no luck')",
           "Loop forever.": "while True:\n    pass"}


@pytest.fixture(scope="module")
def tok():
    return CodeGenTokenizerFast.from_pretrained(TOKENIZER_DIR)


def greedy(max_new: int = 16) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new, temperature=0.0, truncate_before_pattern=TRUNCATE)


def test_turns_reuse_the_history_and_equal_a_full_reprefill(tok):
    model = sharp_lm(2)
    words = ["Assign 3 to x.", "Add one to x.", "Print x.", "Make a list of ten squares.", "Sum it."]
    cached = ChatSession(model, tok, greedy())
    plain = ChatSession(model, tok, greedy(), keep_kv=False)  # nothing kept: every turn prefills everything
    lengths = []
    for w in words:
        lengths.append(len(cached.conversation.fit(tok, w, model.config.n_positions, 16)))
        a = [e.token for e in cached.generate(w)]
        b = [e.token for e in plain.generate(w)]
        assert a == b
        cached.accept(), plain.accept()
    # Kept from one turn to the next: the previous prompt and its code (but for the last generated
    # token, whose KV is computed only if generation goes on), i.e. all but the new comment.
    for t in range(1, len(words)):
        assert lengths[t - 1] + len(cached.turns[t - 1].ids) - 1 <= cached.reused[t] < lengths[t]
    assert cached.program() == plain.program() and cached.program().startswith(HEADER + "# Assign 3 to x.\n")
    assert plain.reused == [0] * len(words) and cached.reused[0] == 0 and all(k > 0 for k in cached.reused[1:])


def test_sampling_is_reproducible_and_retry_resamples(tok):
    model = sharp_lm(3)
    params = SamplingParams(max_new_tokens=10, temperature=1.0, truncate_before_pattern=TRUNCATE)
    a, b = ChatSession(model, tok, params, seed=5), ChatSession(model, tok, params, seed=5)
    assert a.say("Assign 3 to x.").code == b.say("Assign 3 to x.").code
    first = a.turns[-1].code
    retried = ["".join(e.text for e in a.retry()) for _ in range(1)]
    a.accept()
    assert len(a.turns) == 1 and a.generations == 2
    assert isinstance(retried[0], str) and first == b.turns[-1].code


def test_window_fills_and_the_oldest_turns_leave_the_prompt(tok):
    model = sharp_lm(4)  # n_positions 256
    s = ChatSession(model, tok, greedy(40))
    for i in range(12):
        s.conversation.add(f"Step {i}.", f"value_{i} = [{', '.join(str(j) for j in range(i, i + 8))}]")
    s.say("Print value_11.")
    assert s.conversation.start > 0 and len(s.turns) == 13
    start = s.conversation.start
    s.say("Print value_10.")
    assert s.conversation.start == start  # the next turn keeps the window's beginning (its KV is reused)


def make_terminal(tok, answers=ANSWERS, **kw) -> tuple[Terminal, io.StringIO]:
    out = io.StringIO()
    session = ChatSession(coder_lm(tok, answers), tok, greedy(32))
    return Terminal(session, out, **kw), out


def test_terminal_turns_run_and_commands(tok, tmp_path):
    term, out = make_terminal(tok, timeout=5.0)
    for line in ["Assign 3 to x.", "Add one to x.", "Print x."]:
        term.handle(line)
    assert term.session.program() == HEADER + "# Assign 3 to x.\nx = 3\n\n# Add one to x.\nx = x + 1\n\n# Print x.\nprint(x)\n\n"
    assert [r.stdout for r in term.transcript] == ["", "", "4\n"] and term.transcript[-1].error is None
    term.handle("/undo")
    assert len(term.session.turns) == 2 and len(term.transcript) == 2
    term.handle("Print it twice.")
    assert term.transcript[-1].stdout == "4\n4\n"
    term.handle("/retry")
    assert len(term.session.turns) == 3 and term.transcript[-1].stdout == "4\n4\n"
    term.handle("/n 2 Print x.")
    assert term.session.turns[-1].code == "print(x)" and len(term.session.turns) == 4
    term.handle("Fail.")
    assert "ValueError: no luck" in term.transcript[-1].error
    term.handle("/save " + str(tmp_path / "c.json"))
    term.handle("/undo")
    term.handle("/load " + str(tmp_path / "c.json"))
    assert len(term.session.turns) == 5 and term.session.turns[-1].text == "Fail."
    term.handle("/set temperature 0.5")
    assert term.session.params.temperature == 0.5
    for bad in ("/set temperature hot", "/set top_p 3", "/set colour 1", "/n x", "/frobnicate", "/load " + str(tmp_path / "none.json")):
        term.handle(bad)
    text = out.getvalue()
    assert "temperature must be a number, got 'hot'" in text and "top_p must be in (0, 1]" in text
    assert "unknown setting 'colour'" in text and "unknown command /frobnicate" in text and "none.json" in text
    assert len(term.session.turns) == 5  # the bad commands changed nothing
    term.handle("/history")
    assert out.getvalue().rstrip().endswith("raise ValueError('no luck')")
    assert term.handle("/quit") is False
    term.close()


def test_a_run_that_times_out_and_an_empty_undo(tok):
    term, out = make_terminal(tok, timeout=1.0)
    term.handle("/undo")
    assert "no turn to undo" in out.getvalue()
    term.handle("Loop forever.")
    assert term.transcript[-1].error == "timed out after 1 s"
    term.close()


def test_script_writes_program_and_transcript(tok, tmp_path):
    turns = tmp_path / "turns.txt"
    turns.write_text("Assign 3 to x.\n\n\nAdd one to x.\n\n/undo\n\nPrint\nit twice.\n\nPrint x.\n")
    assert paragraphs(turns.read_text()) == ["Assign 3 to x.", "Add one to x.", "/undo", "Print\nit twice.", "Print x."]
    term, out = make_terminal(tok, {**ANSWERS, "it twice.": "for _ in range(2):\n    print(x)"})
    script(term, str(turns))
    term.write(str(tmp_path / "p.py"), str(tmp_path / "t.json"), "scripted")
    assert (tmp_path / "p.py").read_text() == term.session.program()
    assert "# Print\n# it twice.\nfor _ in range(2):\n    print(x)\n\n" in term.session.program()
    data = json.loads((tmp_path / "t.json").read_text())
    assert [t["text"] for t in data["turns"]] == ["Assign 3 to x.", "Print\nit twice.", "Print x."]
    assert [t["stdout"] for t in data["turns"]] == ["", "3\n3\n", "3\n3\n3\n"] and data["model"] == "scripted"
    assert data["settings"]["temperature"] == 0.0
    term.close()


def test_cli_chat_script(tmp_path, capsys):
    from codegen.cli import main

    model = tmp_path / "m"
    assert main(["init", str(model), "--preset", "tiny", "--tokenizer", TOKENIZER_DIR]) == 0
    turns = tmp_path / "turns.txt"
    turns.write_text("Assign 3 to x.\n\nPrint x.\n\n/history\n")
    args = ["chat", "--model", str(model), "--script", str(turns), "--out", str(tmp_path / "p.py"),
            "--transcript", str(tmp_path / "t.json"), "--seed", "3", "--max-new-tokens", "8"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert ">>> Assign 3 to x." in first and ">>> Print x." in first and "--- run ---" in first
    data = json.loads((tmp_path / "t.json").read_text())
    assert len(data["turns"]) == 2 and (tmp_path / "p.py").read_text().startswith(HEADER + "# Assign 3 to x.\n")
    assert main(args) == 0 and json.loads((tmp_path / "t.json").read_text()) == data  # a seed reproduces it
    capsys.readouterr()
    assert main(["chat", "--model", str(model), "--script", str(tmp_path / "missing.txt")]) == 1
    assert "missing.txt" in capsys.readouterr().err
    assert main(["chat", "--model", str(model), "--script", str(turns), "--timeout", "0"]) == 1
    assert "--timeout must be > 0" in capsys.readouterr().err


def test_ctrl_c_stops_a_generation_not_the_session(tok):
    term, out = make_terminal(tok)
    term.handle("Assign 3 to x.")
    real = term.session.generate

    def interrupted(text, n=1):
        events = real(text, n)
        yield next(events)
        raise KeyboardInterrupt

    term.session.generate = interrupted
    term.handle("Add one to x.")
    assert "(generation stopped; the turn was not added)" in out.getvalue()
    assert len(term.session.turns) == 1 and term.session.pending is None
    term.session.generate = real
    term.handle("Add one to x.")
    assert term.session.turns[-1].code == "x = x + 1"
    term.close()


def test_kept_kv_after_an_interrupted_turn_and_candidates(tok):
    """A generation stopped midway, or one with several candidates, leaves the kept KV usable: the
    next turns give the ids of a session that re-prefills everything."""
    model = sharp_lm(5)
    kept, plain = ChatSession(model, tok, greedy()), ChatSession(model, tok, greedy(), keep_kv=False)
    for s in (kept, plain):
        s.say("Assign 3 to x.")
        events = s.generate("Add one to x.")
        next(events), next(events)
        events.close()  # Ctrl-C
        s.pending = None
        for _ in s.generate("Add one to x.", n=2):
            pass
        s.accept(1)
    assert kept.program() == plain.program()
    a = [e.token for e in kept.generate("Print x.")]
    b = [e.token for e in plain.generate("Print x.")]
    assert a == b and kept.reused[-1] > 0
