"""Text-level completion: stop rules on text, streaming, seeds, limits, undecodable ids."""

from __future__ import annotations

import os

import pytest
import torch

import codegen
from codegen import CompletionOptions, complete, stream_complete
from helpers import TOKENIZER_DIR, sharp_lm


@pytest.fixture(scope="module")
def lm():
    return sharp_lm()


@pytest.fixture(scope="module")
def tok():
    if not os.path.isdir(TOKENIZER_DIR):
        pytest.skip("CodeGen tokenizer files not in ../shared")
    return codegen.CodeGenTokenizerFast.from_pretrained(TOKENIZER_DIR)


GREEDY = dict(temperature=0.0, max_new_tokens=24)


def test_complete_greedy_matches_generate(lm, tok):
    [c] = complete(lm, tok, "def fibonacci(n):", CompletionOptions(**GREEDY))
    ids = tok.encode("def fibonacci(n):")
    ref = lm.generate(torch.tensor([ids]), max_new_tokens=24, suppress_tokens=list(range(len(tok), 51200)))[0, len(ids):]
    eos = ref.tolist().index(50256) if 50256 in ref.tolist() else len(ref)
    assert c.token_ids == ref.tolist()[: eos + 1]
    assert c.text == tok.decode(ref[:eos]) and c.prompt_tokens == len(ids) and c.completion_tokens == len(c.token_ids)
    assert c.finish_reason == ("stop" if eos < len(ref) else "length")


def test_never_produces_ids_the_tokenizer_cannot_decode(lm, tok):
    with torch.no_grad():
        lm.lm_head.bias[len(tok):] += 1000.0  # the padding rows of the head now win every argmax
    try:
        x = torch.tensor([tok.encode("import os")])
        assert (lm.generate(x, max_new_tokens=4)[0, 3:] >= len(tok)).all()  # transformers' behaviour
        for opts in (CompletionOptions(**GREEDY), CompletionOptions(max_new_tokens=24, seed=0, temperature=1.0, top_k=0, top_p=1.0)):
            [c] = complete(lm, tok, "import os", opts)
            assert max(c.token_ids) < len(tok)
    finally:
        with torch.no_grad():
            lm.lm_head.bias[len(tok):] -= 1000.0


def test_stop_strings_end_one_row_only(lm, tok):
    prompts = ["def fibonacci(n):", "import os\n"]
    free = complete(lm, tok, prompts, CompletionOptions(**GREEDY))
    text0, text1 = free[0].text, free[1].text
    stop = next(text0[i:i + 3] for i in range(4, len(text0) - 3) if text0[i:i + 3] not in text1 and text0[i:i + 3].strip())
    got = complete(lm, tok, prompts, CompletionOptions(**GREEDY, stop=[stop, "\x00never"]))
    assert got[0].text == text0[: text0.index(stop)] and got[0].finish_reason == "stop"
    assert got[0].completion_tokens < free[0].completion_tokens
    assert got[1].text == text1 and got[1].finish_reason == free[1].finish_reason


def test_truncate_before_pattern_as_stop_rule(lm, tok):
    free = complete(lm, tok, "x = 1", CompletionOptions(**GREEDY))[0].text
    word = next(w for w in free.split() if len(w) > 2)
    patterns = [re_escape(word)]
    [c] = complete(lm, tok, "x = 1", CompletionOptions(**GREEDY, truncate_before_pattern=patterns))
    assert c.text == free[: free.index(word)] and c.finish_reason == "stop"


def re_escape(s):
    import re

    return re.escape(s)


@pytest.mark.parametrize("extra", [{}, {"stop": ["e"]}, {"truncate_before_pattern": [r"\n\n"]}, {"n": 3, "temperature": 0.8, "seed": 1}])
def test_streamed_text_equals_final_text(lm, tok, extra):
    opts = dict(GREEDY, **extra)
    prompts = ["def fibonacci(n):", "import os\n"]
    final = complete(lm, tok, prompts, CompletionOptions(**opts))
    deltas = list(stream_complete(lm, tok, prompts, CompletionOptions(**opts)))
    for c in final:
        mine = [d for d in deltas if d.index == c.index]
        assert "".join(d.text for d in mine) == c.text
        assert [d.token for d in mine] == c.token_ids
        assert mine[-1].finish_reason == c.finish_reason and all(d.finish_reason is None for d in mine[:-1])


def test_seeded_completions_are_reproducible(lm, tok):
    opts = CompletionOptions(max_new_tokens=16, temperature=0.9, n=2, seed=3)
    a, b = complete(lm, tok, "def f(x):", opts), complete(lm, tok, "def f(x):", opts)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]


def test_prompt_too_long(lm, tok):
    long = "x = 1\n" * 100  # 400 tokens, context 256
    with pytest.raises(ValueError, match=r"prompt 0 has 400 tokens; with max_new_tokens 24 that is 424 positions, more than the model.s context window \(n_positions\) of 256"):
        complete(lm, tok, long, CompletionOptions(**GREEDY))
    [c] = complete(lm, tok, long, CompletionOptions(**GREEDY, truncate_prompt=True))
    assert c.prompt_tokens == 256 - 24
