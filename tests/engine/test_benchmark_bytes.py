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
