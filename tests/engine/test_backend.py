"""The backend is applied from outside: it swaps modules without changing keys or numerics, and the
model and engine import in one direction only."""

from __future__ import annotations

import ast
import os

import pytest
import torch
from torch import nn

import codegen
from codegen.engine.backend import CPULinear, TanhGelu, prepare

SRC = os.path.join(os.path.dirname(codegen.__file__))
CFG = dict(vocab_size=200, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64)


def test_prepare_keeps_keys_and_numerics_and_is_idempotent():
    torch.manual_seed(0)
    model = codegen.CodeGenForCausalLM(codegen.CodeGenConfig(**CFG)).eval()
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))  # the network alone
    x = torch.randint(0, 200, (3, 7))
    keys = list(model.state_dict())
    with torch.no_grad():
        before = model(x).logits
        step_before = model(x[:1, :1]).logits
    prepare(model)
    prepare(model)
    assert list(model.state_dict()) == keys
    assert all(type(m) is CPULinear for m in model.modules() if isinstance(m, nn.Linear))
    assert all(isinstance(b.mlp.act, TanhGelu) for b in model.transformer.h)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, before, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x[:1, :1]).logits, step_before, rtol=1e-5, atol=1e-5)
    # with gradients, torch's own ops: the same loss and gradients as an unprepared copy
    model.train()
    loss = model(x, labels=x).loss
    loss.backward()
    assert model.lm_head.weight.grad is not None and torch.isfinite(loss)


def _imports(path: str) -> set[str]:
    """Modules imported anywhere in a file, relative ones resolved against the codegen package."""
    rel = os.path.relpath(path, SRC).replace(os.sep, "/")[:-3].split("/")
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            base = rel[:-node.level] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names.add(mod if node.level else node.module)
            names.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_imports_flow_one_way():
    engine = [os.path.join(d, f) for sub in ("engine", "native") for d, _, fs in os.walk(os.path.join(SRC, sub))
              for f in fs if f.endswith(".py")]
    for path in engine:  # the engine and the native code never import the model
        assert not any(n == "model" or n.startswith("model.") or n == "codegen.model" for n in _imports(path)), path
    model_imports = _imports(os.path.join(SRC, "model.py"))
    top = {n for n in model_imports if "engine" in n or "native" in n or "tokenizer" in n or "server" in n}
    assert top == {"engine.generate", "engine.generate.generate"}, top  # only generate's hand-over, inside the method


@pytest.mark.parametrize("rows", [1, 3, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_routes_without_native_kernels_equal_f_linear(monkeypatch, rows, dtype):
    from codegen.native import kernels

    monkeypatch.setattr(kernels, "gemv", lambda *a: None)
    monkeypatch.setattr(kernels, "smallmm", lambda *a: None)
    torch.manual_seed(rows)
    lin = CPULinear.wrap(nn.Linear(48, 24).to(dtype))
    x = torch.randn(rows, 48).to(dtype)
    with torch.no_grad():
        ref = torch.nn.functional.linear(x.float(), lin.weight.float(), lin.bias.float())
        got = lin(x)
    assert got.dtype == dtype and got.shape == (rows, 24) and got.is_contiguous()
    torch.testing.assert_close(got.float(), ref, rtol=2e-2 if dtype == torch.bfloat16 else 1e-5, atol=2e-2 if dtype == torch.bfloat16 else 1e-5)


def test_bf16_prefills_without_amx_run_in_fp32(monkeypatch):
    """x86 without AMX: bf16 inputs of WIDEN_ROWS rows or more are multiplied in fp32 blocks (the exact
    sums of torch's bf16 GEMM, rounded once) and attended in fp32; fewer rows, AMX, or a gradient: torch's
    bf16 ops. A bf16 model's prefill through either route gives close logits."""
    from codegen.engine import backend
    from codegen.native import kernels

    if kernels.is_arm():
        pytest.skip("x86 only")
    monkeypatch.setattr(kernels, "bf16_gemm_faster", lambda: False)
    monkeypatch.setattr(CPULinear, "WIDEN_BYTES", 48 * 4 * 10)  # blocks of 10 weight rows: 3 blocks of 24
    torch.manual_seed(9)
    lin = CPULinear.wrap(nn.Linear(48, 24).bfloat16())
    widened = []
    real = CPULinear._widened
    monkeypatch.setattr(CPULinear, "_widened", lambda self, x: widened.append(x.shape[0]) or real(self, x))
    x = torch.randn(2, 70, 48).bfloat16()
    with torch.no_grad():
        got = lin(x)
        exact = (x.double() @ lin.weight.double().T + lin.bias.double()).float()
        lin(x[:, :60])  # 120 rows: torch's
    assert widened == [140] and got.dtype == torch.bfloat16 and got.shape == (2, 70, 24)
    assert ((got.float() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()  # rounded once: within half a bf16 step
    monkeypatch.setattr(kernels, "bf16_gemm_faster", lambda: True)
    with torch.no_grad():
        lin(x)
    assert widened == [140]

    monkeypatch.setattr(kernels, "bf16_gemm_faster", lambda: False)
    q, k, v = (torch.randn(1, 4, 130, 16).bfloat16() for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    out = backend.attention(q, k, v, is_causal=True)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref.bfloat16())

    model = codegen.CodeGenForCausalLM(codegen.CodeGenConfig(**{**CFG, "n_positions": 256})).eval().bfloat16()
    ids = torch.randint(0, 200, (1, 150))
    with torch.no_grad():
        plain = model(ids).logits.float()
        prepare(model)
        routed = model(ids).logits.float()
    assert all(b.attn.attention_fn is backend.attention for b in model.transformer.h)
    torch.testing.assert_close(routed, plain, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("vendor, flags, bf16_gemm, onednn", [
    ("AuthenticAMD", {"avx2", "avx512f", "avx512_bf16"}, True, True),  # Zen 4, Zen 5
    ("AuthenticAMD", {"avx2", "fma"}, False, False),  # Zen 3: MKL's AVX2 code is the CPU's best
    ("GenuineIntel", {"avx2", "avx512f", "avx512_bf16"}, False, False),  # a Xeon without AMX
    ("GenuineIntel", {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, True, False),
])
def test_prefill_routes_follow_the_cpu(monkeypatch, vendor, flags, bf16_gemm, onednn):
    from codegen.native import kernels

    monkeypatch.setattr(kernels, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset(flags))
    assert kernels.bf16_gemm_faster() is bf16_gemm and kernels.fp32_gemm_by_onednn() is onednn
    assert kernels.bf16_prefills_in_fp32() is (not bf16_gemm and not kernels.is_arm())


def test_fp32_prefills_through_onednn_equal_torchs(monkeypatch):
    """Where fp32_gemm_by_onednn says so: inputs of more than SMALL rows, no gradient, go through
    oneDNN's linear op and give F.linear's result within fp32 summation order; fewer rows, a gradient
    or bf16 take the other routes. A model's prefill through it gives the plain model's logits."""
    from codegen.engine import backend
    from codegen.native import kernels

    if backend._onednn_linear() is None:
        pytest.skip("this torch build has no oneDNN linear op")
    monkeypatch.setattr(kernels, "fp32_gemm_by_onednn", lambda: True)
    calls = []
    op = backend._onednn_linear()
    monkeypatch.setattr(backend, "_onednn_linear", lambda: lambda x, *a: calls.append(tuple(x.shape)) or op(x, *a))
    torch.manual_seed(4)
    for bias in (True, False):
        lin = CPULinear.wrap(nn.Linear(48, 24, bias=bias))
        x = torch.randn(3, 20, 48)
        with torch.no_grad():
            got = lin(x)
            ref = torch.nn.functional.linear(x, lin.weight, lin.bias)
            lin(x[:1, :8])  # 8 rows: the small-row kernels
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        assert got.shape == (3, 20, 24)
    assert calls == [(60, 48), (60, 48)]
    lin(x)  # a gradient is needed: torch's
    lin.bfloat16()
    with torch.no_grad():
        lin(x.bfloat16())
    assert calls == [(60, 48), (60, 48)]

    model = codegen.CodeGenForCausalLM(codegen.CodeGenConfig(**CFG)).eval()
    ids = torch.randint(0, 200, (2, 30))
    with torch.no_grad():
        plain = model(ids).logits
        prepare(model)
        routed = model(ids).logits
    assert len(calls) > 2
    torch.testing.assert_close(routed, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 4, 60])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_wrong_input_width_gets_torchs_message_on_every_route(monkeypatch, rows, dtype):
    """Whatever route the row count and dtype pick (native small-row kernels, oneDNN, widened bf16),
    an input of the wrong width fails with torch's message naming both shapes, not a kernel's."""
    from codegen.native import kernels

    monkeypatch.setattr(kernels, "fp32_gemm_by_onednn", lambda: True)
    lin = CPULinear.wrap(nn.Linear(48, 24)).to(dtype)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"mat1 and mat2 shapes cannot be multiplied \(%dx40" % rows):
        lin(torch.randn(rows, 40, dtype=dtype))
