"""The conversational prompt format: MTPB's layout, the window policy, round trips; MTPB sampling
with the prefix cache gives the ids of re-prefilling every history."""

from __future__ import annotations

import pytest

from codegen.paradigm import HEADER, Conversation, comment
from codegen.tokenizer import CodeGenTokenizerFast
from helpers import TOKENIZER_DIR, sharp_lm


@pytest.fixture(scope="module")
def tok():
    return CodeGenTokenizerFast.from_pretrained(TOKENIZER_DIR)


def test_mtpb_layout():
    c = Conversation()
    assert c.prompt("load the data") == HEADER + "# load the data\n"
    c.add("load the data", "x = [1, 2]")
    c.add("two lines\nof words\n", "y = sum(x)")
    assert c.program() == HEADER + "# load the data\nx = [1, 2]\n\n# two lines\n# of words\ny = sum(x)\n\n"
    assert c.prompt(["a", "b"]) == c.program() + "# a\n# b\n"
    assert comment("") == "# \n"
    assert c.undo().code == "y = sum(x)" and len(c.turns) == 1
    with pytest.raises(IndexError):
        Conversation().undo()


def test_round_trip_and_bad_files():
    c = Conversation(turns=[])
    c.add("t", "print(1)")
    assert Conversation.from_dict(c.to_dict()) == Conversation(c.header, c.turns)
    with pytest.raises(ValueError, match=r"x.json: turns\[0\]"):
        Conversation.from_dict({"turns": [{"text": 1}]}, "x.json")
    with pytest.raises(ValueError, match="'turns' list"):
        Conversation.from_dict([], "x.json")


def test_window_drops_the_oldest_turns_once(tok):
    c = Conversation()
    for i in range(12):
        c.add(f"step {i}", f"value_{i} = {i} * {i} + sum(range({i}))")
    per_turn = len(tok.encode(c.turns[0].render()))
    room = 128 - 16
    text = c.fit(tok, "next", 128, 16)
    assert c.start > 0 and len(tok.encode(text)) <= room // 2 + per_turn
    assert text.startswith(HEADER) and text.endswith("# next\n") and f"value_{c.start} =" in text
    start = c.start
    c.add("next", "z = 1")
    assert c.fit(tok, "again", 128, 16).startswith(HEADER + c.turns[start].render())  # same start: KV reused
    assert c.start == start
    assert c.program().count("# step") == 12  # the program keeps every turn
    with pytest.raises(ValueError, match="positions"):
        c.fit(tok, "word " * 200, 128, 16)


def test_mtpb_sampling_with_the_cache_equals_reprefill(tok, monkeypatch):
    from codegen.engine.prefix import PrefixCache
    from codegen.eval import mtpb

    reused = []
    lookup = PrefixCache.lookup

    def counted(self, ids, limit=None):
        entry, k = lookup(self, ids, limit)
        reused.append(k)
        return entry, k

    monkeypatch.setattr(PrefixCache, "lookup", counted)

    model = sharp_lm(1)
    problems = [{"id": "1", "name": "t", "prompts": ["Assign {a} to a variable x.", "Add one to x.", "Print x."],
                 "inputs": [{"a": 3}], "outputs": [4], "max_gen_length": 12}]
    for greedy in (True, False):
        kw = dict(temperature=0.0) if greedy else dict(temperature=0.8)
        cached = mtpb.sample(model, tok, problems, 2, progress=False, **kw)
        plain = mtpb.sample(model, tok, problems, 2, progress=False, prefix_cache=False, **kw)
        assert cached == plain
        assert sum(k > 0 for k in reused) == 4  # turns 2 and 3 of both samples reused their history
        reused.clear()
        assert cached[0]["program"].startswith(HEADER + "# Assign 3 to a variable x.\n")
