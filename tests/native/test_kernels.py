"""The native small-row kernels: equal to an fp32 reference up to rounding, used by the decode step of
a model the engine's backend has prepared, and skipped cleanly when they cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import codegen
from codegen.engine.backend import prepare
from codegen.native import kernels
from helpers import TINY_CONFIGS

kernels.load()
native = pytest.mark.skipif(kernels._gemv is None, reason="no AVX512-BF16 CPU or no C++ compiler here")


@native
@pytest.mark.parametrize("K", [1, 31, 32, 33, 127, 128, 129, 1000, 4096])
@pytest.mark.parametrize("N", [1, 7, 300])
def test_gemv_matches_an_fp32_reference(N, K):
    g = torch.Generator().manual_seed(N * 10_000 + K)
    w = torch.randn(N, K, generator=g).bfloat16()
    x = torch.randn(K, generator=g).bfloat16()
    b = torch.randn(N, generator=g).bfloat16()
    for bias in (b, None):
        exact = torch.addmv(bias.float(), w.float(), x.float()) if bias is not None else w.float() @ x.float()
        got = kernels.gemv(w, x, bias)
        assert got.dtype == torch.bfloat16 and got.shape == (N,)
        # one bf16 rounding of an fp32 sum: within half a bf16 ulp plus fp32 summation noise
        assert torch.allclose(got.float(), exact, rtol=2 ** -8, atol=1e-4 * K ** 0.5), (got.float() - exact).abs().max()
        if kernels._f32_gemv is not None:
            w32, x32 = w.float() + 1e-3, x.float()  # fp32 values bf16 cannot hold
            ref = torch.nn.functional.linear(x32, w32, None if bias is None else bias.float())
            torch.testing.assert_close(kernels.gemv(w32, x32, None if bias is None else bias.float()), ref,
                                       rtol=1e-5, atol=1e-5 * K ** 0.5)


@pytest.mark.skipif(kernels._smallmm is None, reason="no AVX-512 CPU or no C++ compiler here")
@pytest.mark.parametrize("M", range(2, 9))
@pytest.mark.parametrize("N,K", [(1, 1), (7, 15), (9, 16), (11, 17), (300, 1000), (64, 4096)])
def test_smallmm_matches_torch(M, N, K):
    g = torch.Generator().manual_seed(M * 1_000_000 + N * 10_000 + K)
    w, x, b = torch.randn(N, K, generator=g), torch.randn(M, K, generator=g), torch.randn(N, generator=g)
    for bias in (b, None):
        got = kernels.smallmm(w, x, bias)
        assert got.shape == (M, N)
        torch.testing.assert_close(got, torch.nn.functional.linear(x, w, bias), rtol=1e-5, atol=1e-5 * K ** 0.5)
        # bf16: fp32 sums of the bf16 values, rounded once (torch's bf16 linear within a bf16 step)
        wb, xb, bb = w.bfloat16(), x.bfloat16(), None if bias is None else bias.bfloat16()
        got = kernels.smallmm(wb, xb, bb)
        exact = torch.nn.functional.linear(xb.double(), wb.double(), None if bb is None else bb.double())
        assert got.dtype == torch.bfloat16 and got.shape == (M, N)
        torch.testing.assert_close(got.double(), exact, rtol=2**-8, atol=1e-5 * K ** 0.5)
    assert kernels.smallmm(w, torch.randn(1, K), b) is None and kernels.smallmm(w, torch.randn(9, K), b) is None
    assert kernels.smallmm(w.bfloat16(), x, None) is None  # mixed dtypes: torch's


@native
def test_arguments_it_does_not_take_return_none():
    w = torch.randn(8, 64).bfloat16()
    assert kernels.gemv(w.half(), torch.randn(64).half(), None) is None  # fp16
    assert kernels.gemv(w.float(), torch.randn(64).bfloat16(), None) is None  # mixed dtypes
    assert kernels.gemv(w.t().contiguous().t(), torch.randn(8).bfloat16(), None) is None  # not row-major
    assert kernels.gemv(w, torch.randn(64).bfloat16(), torch.randn(8)) is None  # fp32 bias
    strided = torch.randn(128).bfloat16()[::2]  # a strided vector is copied, not refused
    assert torch.allclose(kernels.gemv(w, strided, None).float(), w.float() @ strided.float(), rtol=1e-2, atol=1e-2)


@native
def test_bf16_decode_with_the_kernel_equals_torch_path(monkeypatch):
    torch.manual_seed(0)
    model = prepare(codegen.CodeGenForCausalLM(codegen.CodeGenConfig(**TINY_CONFIGS["h8_d80_r64"])).eval().to(torch.bfloat16))
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    calls = []
    native_fn = kernels._gemv
    monkeypatch.setattr(kernels, "_gemv", lambda *a: calls.append(a[4:6]) or native_fn(*a))
    with torch.no_grad():
        out = model(ids[:, :-1], use_cache=True)
        assert not calls  # an 11-token prefill is not a matrix-vector product
        fast = model(ids[:, -1:], past_key_values=out.past_key_values).logits
        assert (1920, 640) in calls and (520, 640) in calls  # qkv_proj and lm_head went native
        monkeypatch.setattr(kernels, "_gemv", None)
        slow = model(ids[:, -1:], past_key_values=out.past_key_values).logits
    assert torch.allclose(fast, slow, atol=0.05), (fast - slow).abs().max()
    assert fast.argmax(-1).tolist() == slow.argmax(-1).tolist()


@pytest.mark.skipif(kernels._smallmm is None, reason="no AVX-512 CPU or no C++ compiler here")
@pytest.mark.parametrize("batch,kernel", [(1, "_f32_gemv"), (5, "_smallmm")])
def test_f32_decode_with_the_kernels_equals_torch_path(monkeypatch, batch, kernel):
    torch.manual_seed(0)
    model = prepare(codegen.CodeGenForCausalLM(codegen.CodeGenConfig(**TINY_CONFIGS["h8_d80_r64"])).eval())
    ids = torch.randint(0, model.config.vocab_size, (batch, 12))
    calls = []
    native_fn = getattr(kernels, kernel)
    monkeypatch.setattr(kernels, kernel, lambda *a: calls.append(a) or native_fn(*a))
    with torch.no_grad():
        out = model(ids[:, :-1], use_cache=True)
        fast = model(ids[:, -1:], past_key_values=out.past_key_values).logits
        assert len(calls) == 2 * 4 + 1  # qkv, out_proj, fc_in, fc_out per layer, lm_head
        monkeypatch.setattr(kernels, kernel, None)
        slow = model(ids[:, -1:], past_key_values=out.past_key_values).logits
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_unbuildable_or_disabled_kernel_falls_back(tmp_path):
    code = ("import torch, logging; logging.basicConfig(); from codegen.native import kernels;"
            "print(kernels.gemv(torch.ones(4, 8).bfloat16(), torch.ones(8).bfloat16(), None))")
    env = dict(os.environ, CODEGEN_CACHE=str(tmp_path), CXX="/bin/false")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "None", done.stderr
    if {"avx512f", "avx512bw"} <= kernels.cpu_flags():
        assert "native kernels unavailable, using torch's" in done.stderr
    env = dict(os.environ, CODEGEN_NATIVE="0")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "None", done.stderr


@pytest.mark.skipif(kernels._compiler() is None, reason="no C++ compiler here")
def test_a_build_from_another_source_directory_is_keyed_by_its_contents(tmp_path):
    """benchmarks/native_ab.py builds a git revision's sources with build(source_dir=...): the same
    files elsewhere give this tree's cached library; a changed file gives another, freshly compiled one."""
    import shutil

    for path in kernels.SOURCES + kernels.HEADERS:
        shutil.copy(path, tmp_path)
    generic = kernels.build(kernels._compiler(), "generic")
    assert kernels.build(kernels._compiler(), "generic", source_dir=str(tmp_path)) == generic
    with open(tmp_path / "sample.cpp", "a") as fh:
        fh.write("\nextern \"C\" int codegen_test_marker() { return 7; }\n")
    other = kernels.build(kernels._compiler(), "generic", source_dir=str(tmp_path))
    assert other != generic and os.path.exists(other)
    import ctypes

    assert ctypes.CDLL(other).codegen_test_marker() == 7
    os.unlink(other)


@pytest.mark.skipif(kernels.decode_step is None, reason="no native decode step here")
def test_native_ab_names_a_revision_it_cannot_read():
    """benchmarks/native_ab.py with a revision git does not know stops with git's complaint and the
    file it asked for, before building or timing anything."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isdir(os.path.join(root, ".git")):
        pytest.skip("not a git checkout")
    done = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "native_ab.py"), "--against", "no-such-rev",
                           "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "git show no-such-rev:src/codegen/native/kernels.cpp failed" in done.stderr, done.stderr


@pytest.mark.skipif(kernels._gelu is None, reason="no AVX-512 CPU or no C++ compiler here")
@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000, 65536])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gelu_tanh_matches_torch(n, dtype):
    x = (torch.randn(n, generator=torch.Generator().manual_seed(n)) * 4).to(dtype)
    ref = torch.nn.functional.gelu(x, approximate="tanh")
    got = kernels.gelu_tanh(x)
    assert got.dtype == dtype and got.shape == x.shape and got.data_ptr() != x.data_ptr()
    # fp32: an exp-based tanh, within a few fp32 ulps of torch's; bf16: computed in fp32 then rounded, so
    # at most one bf16 ulp apart where the two fp32 values straddle a rounding boundary
    ulp = 2 ** -23 if dtype == torch.float32 else 2 ** -8
    assert ((got.float() - ref.float()).abs() <= 4 * ulp * ref.float().abs() + 4e-6).all()
    same = x.clone()
    assert kernels.gelu_tanh(same, inplace=True) is same and torch.equal(same, got)
    assert kernels.gelu_tanh(x.half()) is None and kernels.gelu_tanh(x.view(-1, 1).expand(-1, 2).t()) is None
