"""benchmarks/generate.py's "+KV" column: the KV bytes it counts per decode step are those a step's
attention reads from a KVCache, keys and values of every layer up to its position."""

import copy
import importlib.util
from pathlib import Path

import torch

import codegen
from codegen.engine.cache import KVCache

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "generate.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_generate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kv_bytes_per_step_are_the_cache_columns_each_step_attends():
    bench = _bench()
    cfg = codegen.CodeGenConfig(n_embd=48, n_layer=3, n_head=4, rotary_dim=4, n_positions=64, vocab_size=100)
    prompt, new, batch = 10, 7, 2
    for dtype in (torch.float32, torch.bfloat16):
        cache = KVCache(cfg.n_layer, batch, cfg.n_head, prompt + new, cfg.head_dim, dtype=dtype)
        per_column = 2 * cache.key[:, :, :, :1].numel() * cache.key.element_size()  # keys and values, every layer
        steps = [prompt + j for j in range(1, new)]  # the new - 1 timed steps: step j attends prompt + j columns
        want = per_column * sum(steps) / len(steps)
        got = bench.kv_bytes_per_step(cfg, batch, prompt, new, cache.key.element_size())
        assert abs(got - want) < 1e-9 * want, (dtype, got, want)


def test_weight_bytes_are_what_a_step_streams():
    from codegen.quant import QuantSpec
    from codegen.quant.convert import quantize_model

    bench = _bench()
    cfg = codegen.CodeGenConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=4, n_positions=64, vocab_size=100)
    model = codegen.CodeGenForCausalLM(cfg).eval()
    streamed = sum(p.numel() for n, p in model.named_parameters() if n != "transformer.wte.weight")
    assert bench.weight_bytes(model, streamed) == 4 * streamed
    assert bench.weight_bytes(model.to(torch.bfloat16), streamed) == 2 * streamed
    E, I, V = 64, 256, 100
    for spec, per_row in (("int8", lambda k: k + 4), ("int4", lambda k: k // 2 + 4 * (k // 32))):
        q = quantize_model(codegen.CodeGenForCausalLM(copy.deepcopy(cfg)).eval(), QuantSpec.parse(spec))
        # per layer qkv (3E rows of E), out (E of E), fc_in (I of E), fc_out (E of I); lm_head (V of E)
        rows = cfg.n_layer * ((3 * E + E + I) * per_row(E) + E * per_row(I)) + V * per_row(E)
        assert bench.weight_bytes(q, streamed) == rows


def test_per_round_ceilings_are_the_probes_beside_each_timing():
    """interleave(probe=...) probes before every runner's timings and once at the end; each round of a
    runner gets the higher of the readings just before and just after it, the case the higher of the
    first and last, and round_share is the median of bytes * steps/s / that ceiling."""
    import itertools
    import time

    bench = _bench()
    readings = itertools.count(10.0, 10.0)  # 10, 20, 30, ... GB/s: the order of the probes is visible
    calls = []

    def probe():
        calls.append(1)
        return next(readings)

    runners = {"a": lambda n: time.sleep(0.002 * n), "b": lambda n: time.sleep(0.004 * n)}
    out = bench.interleave(runners, batch=1, new=9, repeats=3, probe=probe)
    assert len(calls) == 3 * 2 + 1
    # probes: a0 10, b0 20, a1 30, b1 40, a2 50, b2 60, end 70: a's rounds are after 10/30/50, before 20/40/60
    assert [c for _, c in out["a"]["rounds"]] == [20.0, 40.0, 60.0]
    assert [c for _, c in out["b"]["rounds"]] == [30.0, 50.0, 70.0]
    assert out["a"]["ceiling"] == out["b"]["ceiling"] == 70.0
    for name, per_step in (("a", 0.002), ("b", 0.004)):
        for steps, _ in out[name]["rounds"]:
            assert 0.5 / per_step < steps < 1.05 / per_step, (name, steps)  # (new - 1) steps of per_step seconds
    rounds = [(100.0, 20.0), (100.0, 40.0), (100.0, 80.0)]
    assert bench.round_share(rounds, 4e8) == 4e8 * 100 / 1e9 / 40.0
    assert "rounds" not in bench.interleave(runners, batch=1, new=3, repeats=1)["a"]
