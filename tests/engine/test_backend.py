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
    monkeypatch.setattr(kernels, "f32_smallmm", lambda *a: None)
    torch.manual_seed(rows)
    lin = CPULinear.wrap(nn.Linear(48, 24).to(dtype))
    x = torch.randn(rows, 48).to(dtype)
    with torch.no_grad():
        ref = torch.nn.functional.linear(x.float(), lin.weight.float(), lin.bias.float())
        got = lin(x)
    assert got.dtype == dtype and got.shape == (rows, 24) and got.is_contiguous()
    torch.testing.assert_close(got.float(), ref, rtol=2e-2 if dtype == torch.bfloat16 else 1e-5, atol=2e-2 if dtype == torch.bfloat16 else 1e-5)
