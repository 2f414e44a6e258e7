"""SamplingParams: one record, validated in one place; seeds per output."""

from __future__ import annotations

import pytest

from codegen.engine import CompletionOptions, SamplingParams
from codegen.engine.params import sample_seed


@pytest.mark.parametrize("kwargs, message", [
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1, got 0"),
    ({"min_new_tokens": 20}, "min_new_tokens must be in [0, max_new_tokens = 16], got 20"),
    ({"temperature": -0.1}, "temperature must be >= 0 (0 = greedy), got -0.1"),
    ({"temperature": float("inf")}, "temperature must be >= 0"),
    ({"top_k": -1}, "top_k must be >= 0 (0 = off), got -1"),
    ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
    ({"repetition_penalty": 0}, "repetition_penalty must be > 0, got 0"),
    ({"n": 0}, "n must be >= 1, got 0"),
    ({"stop": ["a", ""]}, "stop must be non-empty strings"),
    ({"suppress_tokens": [-1]}, "suppress_tokens must be non-negative token ids"),
    ({"logprobs": -1}, "logprobs must be None or >= 0, got -1"),
    ({"seed": 1.5}, "seed must be None or an integer, got 1.5"),
    ({"n": 2.0}, "n must be an integer, got 2.0"),
])
def test_bad_values_name_the_parameter(kwargs, message):
    with pytest.raises(ValueError) as e:
        SamplingParams(**kwargs)
    assert message in str(e.value)


def test_defaults_replace_and_one_record():
    assert SamplingParams().greedy is False and SamplingParams(temperature=0).greedy
    o = CompletionOptions()
    assert isinstance(o, SamplingParams) and (o.temperature, o.top_p, o.top_k, o.max_new_tokens) == (0.2, 0.95, 50, 128)
    assert SamplingParams(stop="\n").stop == ("\n",)
    changed = o.replace(n=3)
    assert type(changed) is CompletionOptions and changed.n == 3 and o.n == 1
    with pytest.raises(ValueError, match="n must be >= 1"):
        o.replace(n=0)


def test_check_prompt():
    p = SamplingParams(max_new_tokens=10)
    assert p.check_prompt(54, 64) == 54
    with pytest.raises(ValueError, match=r"prompt 2 has 55 tokens; with max_new_tokens 10 that is 65 positions"):
        p.check_prompt(55, 64, 2)
    assert p.replace(truncate_prompt=True).check_prompt(100, 64) == 54


def test_sample_seeds_are_distinct_and_reduced_to_64_bits():
    seeds = {sample_seed(s, i) for s in range(50) for i in range(50)}
    assert len(seeds) == 2500 and all(0 <= x < 2**64 for x in seeds)
    assert sample_seed(2**64 + 7, 3) == sample_seed(7, 3) and sample_seed(-1, 0) == sample_seed(2**64 - 1, 0)
