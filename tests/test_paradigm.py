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


def test_pieces_extend_the_previous_prompt_exactly(tok):
    c = Conversation()
    first = c.fit(tok, "load the data", 2048, 16)
    assert tok.decode(first) == c.prompt("load the data") and first == tok.encode(c.prompt("load the data"))
    c.add("load the data", "x = 1", ids=[87, 220, 28, 352])  # the model's own (non-canonical) tokens are kept
    second = c.fit(tok, "sum it", 2048, 16)
    assert second[:len(first)] == first and second[len(first):len(first) + 4] == [87, 220, 28, 352]
    assert tok.decode(second) == "".join(tok.decode(p) for p in c.pieces(tok, "sum it"))
    c.turns[-1].ids = None
    assert tok.decode(c.fit(tok, "sum it", 2048, 16)) == c.prompt("sum it")


def test_window_drops_the_oldest_turns_once(tok):
    c = Conversation()
    for i in range(12):
        c.add(f"step {i}", f"value_{i} = {i} * {i} + sum(range({i}))")
    per_turn = len(tok.encode(c.turns[0].render()))
    room = 128 - 16
    ids = c.fit(tok, "next", 128, 16)
    text = tok.decode(ids)
    assert c.start > 0 and len(ids) <= room // 2 + per_turn
    assert text.startswith(HEADER) and text.endswith("# next\n") and f"value_{c.start} =" in text
    start = c.start
    c.add("next", "z = 1")
    again = c.fit(tok, "again", 128, 16)
    assert again[:len(ids)] == ids and c.start == start  # the same beginning: its KV is reused
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
