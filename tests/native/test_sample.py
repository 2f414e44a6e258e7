"""The native sampler (sample.cpp, the pick of decode.cpp's sampled bursts) against the engine's Python
one (engine.select.sample), on the same logits and uniform draws, for every tier this CPU runs."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from codegen.engine.select import sample
from codegen.native import kernels

kernels.load()
pytestmark = pytest.mark.skipif(kernels.decode_step is None, reason="no native kernels here (no C++ compiler)")


def native(lib, logits: torch.Tensor, temperature: float, top_k: int, top_p: float, u: float) -> int:
    x = logits.contiguous().float()
    V = x.shape[-1]
    scratch = ctypes.create_string_buffer(int(lib.codegen_sample_scratch(V)))
    return int(lib.codegen_sample(x.data_ptr(), V, temperature, top_k, top_p, u, scratch))


def python(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, u: float) -> int:
    return int(sample(logits[None].float(), temperature, top_k, top_p, torch.tensor([u], dtype=torch.float32))[0])


PARAMS = [  # (temperature, top_k, top_p): CompletionOptions', OpenAI's default, and the branches
    (0.2, 50, 0.95), (1.0, 0, 1.0), (0.7, 0, 0.9), (1.3, 0, 0.5), (0.8, 40, 1.0), (1.0, 1, 1.0),
    (0.5, 5000, 0.8), (2.0, 0, 0.999), (1e-3, 0, 0.95), (1.0, 10**6, 0.7),
]


@pytest.mark.parametrize("tier", kernels.runnable_tiers())
def test_native_samples_are_the_python_samples(tier):
    lib = kernels.library(tier)
    gen = torch.Generator().manual_seed(0)
    cases = 0
    for V in (7, 300, 2000, 51200):
        for temperature, top_k, top_p in PARAMS:
            for trial in range(6 if V == 51200 else 12):
                # peaked and flat rows: sharp logits (x 4) put the mass on a few ids, flat ones on thousands
                logits = torch.randn(V, generator=gen) * (4.0 if trial % 2 else 0.5)
                if trial % 4 == 3:  # a bf16 model's logits: many ties, settled by id both ways
                    logits = logits.bfloat16().float()
                if trial % 3 == 2:  # bans and a vocabulary limit, as the engine writes them
                    logits[torch.randint(0, V, (V // 5 + 1,), generator=gen)] = float("-inf")
                    logits[V - V // 4:] = float("-inf")
                    if logits.isinf().all():
                        logits[0] = 0.0
                for u in torch.rand(4, generator=gen).tolist():
                    want = python(logits, temperature, top_k, top_p, u)
                    got = native(lib, logits, temperature, top_k, top_p, u)
                    assert got == want, (tier, V, temperature, top_k, top_p, trial, u)
                    assert logits[got] > float("-inf")
                    cases += 1
    assert cases > 1500


def test_the_draw_covers_the_distribution():
    """The uniform picks by inverse CDF over the kept ids in vocabulary order: u near 0 takes the first
    kept id, u near 1 the last, and the picks' frequencies follow the probabilities."""
    lib = kernels.library(kernels.tier()[0])
    logits = torch.tensor([0.0, float("-inf"), 1.0, 2.0, float("-inf")])
    assert native(lib, logits, 1.0, 0, 1.0, 0.0) == 0
    assert native(lib, logits, 1.0, 0, 1.0, np.nextafter(np.float32(1), np.float32(0)).item()) == 3
    probs = logits.softmax(-1).numpy()
    us = (np.arange(4000) + 0.5) / 4000
    counts = np.bincount([native(lib, logits, 1.0, 0, 1.0, float(u)) for u in us], minlength=5) / len(us)
    np.testing.assert_allclose(counts, probs, atol=1e-3)
    # top-p 0.5 keeps id 3 alone (p 0.665); top-k 2 keeps ids 2 and 3
    assert {native(lib, logits, 1.0, 0, 0.5, float(u)) for u in us[::50]} == {3}
    assert {native(lib, logits, 1.0, 2, 1.0, float(u)) for u in us[::50]} == {2, 3}


def test_ties_are_settled_by_id():
    """Top-k keeps the lower ids among values equal to the k-th; top-p removes the lower ids first."""
    lib = kernels.library(kernels.tier()[0])
    logits = torch.tensor([1.0, 3.0, 1.0, 1.0, 3.0, 1.0])
    for top_k, top_p, kept in ((3, 1.0, {0, 1, 4}), (5, 1.0, {0, 1, 2, 3, 4}), (0, 0.9, {1, 2, 3, 4, 5})):
        us = np.linspace(0, 0.999, 200).tolist()
        assert {native(lib, logits, 1.0, top_k, top_p, u) for u in us} == kept
        assert {python(logits, 1.0, top_k, top_p, u) for u in us} == kept


def test_a_distribution_that_is_not_finite_is_refused_as_python_refuses_it():
    lib = kernels.library(kernels.tier()[0])
    nan = torch.tensor([0.0, float("nan"), 1.0])
    banned = torch.full((4,), float("-inf"))
    for logits, top_k in ((nan, 0), (nan, 2), (banned, 0), (banned, 2)):
        assert native(lib, logits, 1.0, top_k, 0.9, 0.5) == -1
        with pytest.raises(ValueError, match="not finite"):
            python(logits, 1.0, top_k, 0.9, 0.5)


def test_parameters_out_of_range_are_refused():
    lib = kernels.library(kernels.tier()[0])
    logits = torch.zeros(4)
    for temperature, top_k, top_p, u in ((0.0, 0, 1.0, 0.5), (1.0, -1, 1.0, 0.5), (1.0, 0, 0.0, 0.5),
                                         (1.0, 0, 1.5, 0.5), (1.0, 0, 1.0, 1.0), (1.0, 0, 1.0, -0.1)):
        assert native(lib, logits, temperature, top_k, top_p, u) == -2
