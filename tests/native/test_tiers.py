"""Every tier of the native kernels (generic, avx2, avx512, avx512bf16; on ARM generic, dotprod) against
fp64 references on odd shapes, and a model's greedy decode with each tier equal to torch's path. Tiers
this CPU lacks are compiled (so CI checks their sources) but not run; the ARM tiers are cross-compiled
with Debian's aarch64 g++ and their torch-free checks (kernel_check.cpp) run under qemu-user when
those are installed (.ci/run installs them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

import codegen
from codegen.engine.backend import prepare
from codegen.native import kernels
from codegen.native.fused import FusedDecoder

if not kernels.supported() or kernels._compiler() is None:
    pytest.skip("no native build on this platform or no C++ compiler", allow_module_level=True)
RUNNABLE = kernels.runnable_tiers()


@pytest.mark.parametrize("tier", kernels.TIERS)
def test_every_tier_compiles(tier):
    lib = kernels.library(tier)
    if tier in RUNNABLE:
        assert lib.codegen_simd_width() == {"generic": 4, "avx2": 8, "avxvnni": 8, "avx512": 16, "avx512bf16": 16, "dotprod": 4}[tier]
        assert lib.codegen_native_bf16_dot() == (tier == "avx512bf16")


def test_tiers_run_only_where_the_cpu_has_all_their_features(monkeypatch, caplog):
    """The tiers are ordered, but runnable by feature set: AVX-VNNI and AVX-512 come on different CPUs."""
    base = {"avx2", "fma", "f16c"}
    avx512 = base | {"avx512f", "avx512bw", "avx512vl"}
    cases = {"Zen 3": (base, "avx2"), "Alder Lake": (base | {"avx_vnni"}, "avxvnni"),
             "Ice Lake server": (avx512 | {"avx512_vnni"}, "avx512"),
             "Zen 4": (avx512 | {"avx512_vnni", "avx512_bf16"}, "avx512bf16"),
             "Sapphire Rapids": (avx512 | {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16"}, "avx512bf16")}
    if kernels.is_arm():
        pytest.skip("x86 feature sets")
    for cpu, (flags, best) in cases.items():
        assert kernels.cpu_tier(flags) == best, cpu
    assert "avxvnni" not in kernels.runnable_tiers(avx512 | {"avx512_vnni"})
    assert kernels.runnable_tiers(base | {"avx_vnni"}) == ["generic", "avx2", "avxvnni"]
    # on an Ice Lake server, avxvnni is refused by name, with the feature it lacks, though avx512 is "higher"
    monkeypatch.setattr(kernels, "cpu_flags", lambda: avx512 | {"avx512_vnni"})
    with pytest.raises(ValueError, match="tier avxvnni needs avx_vnni, which this CPU lacks"):
        kernels.activate("avxvnni")
    monkeypatch.setenv("CODEGEN_ISA", "avxvnni")
    with caplog.at_level("WARNING", logger=kernels.__name__):
        assert kernels.wanted_tier() == "avx512"
    assert "avxvnni needs avx_vnni" in caplog.text


CHECK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel_check.cpp")


def _check_binary(compiler: str, tier: str, out: str) -> str:
    flags = ["-O2", "-ffp-contract=fast", "-fopenmp", *kernels.FLAGS[tier]]
    done = subprocess.run([compiler, *flags, CHECK, *kernels.SOURCES, "-o", out], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.parametrize("tier", RUNNABLE)
def test_torch_free_kernel_check_on_this_cpu(tier, tmp_path):
    """The same C++ checks the ARM tiers run under qemu, here natively: every product against doubles."""
    binary = _check_binary(kernels._compiler(), tier, str(tmp_path / f"check-{tier}"))
    done = subprocess.run([binary], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]


@pytest.mark.parametrize("tier", kernels.ARM_TIERS)
def test_arm_tiers_cross_compiled_and_run_under_qemu(tier, tmp_path):
    cross, qemu, sysroot = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64"), "/usr/aarch64-linux-gnu"
    if kernels.is_arm():
        pytest.skip("an ARM machine runs these tiers natively")
    if cross is None or qemu is None or not os.path.isdir(sysroot):
        pytest.skip("no aarch64 cross compiler or qemu-user (apt install g++-aarch64-linux-gnu qemu-user)")
    binary = _check_binary(cross, tier, str(tmp_path / f"check-{tier}"))
    cpu = ["-cpu", "max"]  # armv8.2+ with the dot-product extension
    done = subprocess.run([qemu, *cpu, "-L", sysroot, binary], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]
    assert "simd width 4" in done.stdout


def ptr(t):
    return t.data_ptr() if t is not None else None


@pytest.mark.parametrize("tier", RUNNABLE)
@pytest.mark.parametrize("N, K", [(1, 1), (7, 5), (33, 31), (9, 33), (17, 100), (8, 257), (40, 1024)])
def test_gemv_fp32_and_bf16_against_fp64(tier, N, K):
    lib = kernels.library(tier)
    g = torch.Generator().manual_seed(N * 1000 + K)
    w, x, b = torch.randn(N, K, generator=g), torch.randn(K, generator=g), torch.randn(N, generator=g)
    ref = w.double() @ x.double() + b.double()
    y = torch.empty(N)
    lib.codegen_f32_gemv(ptr(w), ptr(x), ptr(b), ptr(y), N, K, 2)
    scale = (w.double().abs() @ x.double().abs()) + 1
    assert ((y.double() - ref).abs() / scale).max() < 1e-6
    wb, xb, bb = w.bfloat16(), x.bfloat16(), b.bfloat16()
    refb = wb.double() @ xb.double() + bb.double()
    yb = torch.empty(N, dtype=torch.bfloat16)
    lib.codegen_bf16_gemv(ptr(wb), ptr(xb), ptr(bb), ptr(yb), N, K, 2)
    assert ((yb.double() - refb).abs() <= 2 ** -7 * refb.abs() + 1e-5 * scale).all()  # one bf16 rounding


@pytest.mark.parametrize("tier", RUNNABLE)
@pytest.mark.parametrize("M", [2, 3, 5, 8])
@pytest.mark.parametrize("N, K", [(7, 5), (33, 31), (13, 100)])
def test_small_row_products_against_fp64(tier, M, N, K):
    lib = kernels.library(tier)
    g = torch.Generator().manual_seed(M * 100 + N)
    w, x, b = torch.randn(N, K, generator=g), torch.randn(M, K, generator=g), torch.randn(N, generator=g)
    y = torch.empty(M, N)
    assert lib.codegen_f32_smallmm(ptr(w), ptr(x), ptr(b), ptr(y), M, N, K, 2) == 0
    ref = x.double() @ w.double().T + b.double()
    assert ((y.double() - ref).abs() / ((x.double().abs() @ w.double().abs().T) + 1)).max() < 1e-6
    wb = w.bfloat16()  # bf16 weights, widened in registers: the same fp32 products of their values
    assert lib.codegen_bf16_smallmm(ptr(wb), ptr(x), ptr(b), ptr(y), M, N, K, 2) == 0
    ref = x.double() @ wb.double().T + b.double()
    assert ((y.double() - ref).abs() / ((x.double().abs() @ wb.double().abs().T) + 1)).max() < 1e-6


@pytest.mark.parametrize("tier", RUNNABLE)
@pytest.mark.parametrize("n", [1, 3, 17, 1000])
def test_gelu_against_torch(tier, n):
    lib = kernels.library(tier)
    x = torch.linspace(-12, 12, n) if n > 1 else torch.tensor([0.7])
    y = torch.empty_like(x)
    lib.codegen_gelu_tanh(ptr(x), ptr(y), n, 0, 2)
    torch.testing.assert_close(y, torch.nn.functional.gelu(x, approximate="tanh"), rtol=1e-6, atol=1e-6)
    xb, yb = x.bfloat16(), torch.empty(n, dtype=torch.bfloat16)
    lib.codegen_gelu_tanh(ptr(xb), ptr(yb), n, 1, 2)
    torch.testing.assert_close(yb.float(), torch.nn.functional.gelu(xb, approximate="tanh").float(), rtol=1e-2, atol=1e-2)


def _model(shards=4, dtype=torch.float32):
    torch.manual_seed(0)
    model = codegen.CodeGenForCausalLM(codegen.CodeGenConfig(vocab_size=300, n_embd=96, n_layer=2, n_head=8, rotary_dim=6,
                                                             n_positions=80, mp_num=shards)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
            if p.dim() == 2:
                p.mul_(3.0)
    return prepare(model.to(dtype))


@pytest.mark.parametrize("tier", RUNNABLE)
@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_decode_with_each_tier_equals_torchs_path(monkeypatch, tier, batch):
    model = _model()
    x = torch.randint(0, 299, (batch, 7), generator=torch.Generator().manual_seed(batch))
    kw = dict(max_new_tokens=30, eos_token_id=[])
    before = kernels._active_tier
    try:
        kernels.activate(tier)
        native = model.generate(x, **kw)
    finally:
        kernels.activate(before) if before else None
    for name in ("_gemv", "_f32_gemv", "_smallmm", "_bf16_smallmm", "_gelu", "_attention", "_split"):
        monkeypatch.setattr(kernels, name, None)
    monkeypatch.setattr(FusedDecoder, "create", classmethod(lambda cls, *a, **k: None))
    assert torch.equal(native, model.generate(x, **kw))


@pytest.mark.parametrize("tier", RUNNABLE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_attention_with_each_tier_equals_sdpa(tier, dtype):
    """One query per row and head over a cache's filled columns (strided views, capacity past L), with
    no mask, a per-row additive padding mask and one broadcast row; head sizes that are and are not
    multiples of the vector width, and past one register slice of the value sum (256: 6B / 16B's; 200:
    a partial slice). fp32: within summation order; bf16: a bf16 step."""
    g = torch.Generator().manual_seed(7)
    before = kernels._active_tier
    try:
        kernels.activate(tier)
        for D, L in ((64, 37), (40, 1), (80, 130), (256, 20), (200, 9)):
            B, H, cap = 3, 4, L + 9
            kc, vc = (torch.randn(B, H, cap, D, generator=g).to(dtype) for _ in range(2))
            q = torch.randn(B, H, 1, D, generator=g).to(dtype)
            k, v = kc[:, :, :L], vc[:, :, :L]
            keep = torch.ones(B, 1, 1, L, dtype=torch.bool)
            keep[0, ..., : L // 3] = False
            mask = torch.zeros(B, 1, 1, L, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)
            for m in (None, mask, mask[1:2]):
                got = kernels.decode_attention(q, k, v, m)
                ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                                       attn_mask=None if m is None else m.float())
                assert got is not None and got.dtype == dtype and got.shape == (B, H, 1, D)
                tol = 1e-5 if dtype == torch.float32 else 2**-7
                torch.testing.assert_close(got.float(), ref, rtol=tol, atol=tol)
        assert kernels.decode_attention(q, k, v.float() if dtype == torch.bfloat16 else v.bfloat16(), None) is None
        assert kernels.decode_attention(torch.randn(B, H, 2, D).to(dtype), k, v, None) is None  # two queries: SDPA's
    finally:
        kernels.activate(before) if before else None


@pytest.mark.parametrize("tier", RUNNABLE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_heads_with_each_tier_equals_the_models_torch_code(tier, dtype):
    """qkv_proj's output into rotated heads: bit-equal to CodeGenAttention's torch code (4 and 8
    shards, partial and whole-head rotary, per-row positions)."""
    from codegen.ops import apply_rotary, rotary_tables

    g = torch.Generator().manual_seed(3)
    before = kernels._active_tier
    try:
        kernels.activate(tier)
        for S, H, D, rd in ((4, 16, 64, 32), (8, 8, 80, 64), (1, 4, 48, 48)):
            B, T = 2, 9
            qkv = torch.randn(B, T, 3 * H * D, generator=g).to(dtype)
            sin, cos = rotary_tables(torch.arange(T).repeat(B, 1) + torch.tensor([[0], [3]]), rd, D)
            got = kernels.split_heads(qkv, sin, cos, S, H)
            x = qkv.view(B, T, S, 3, H // S, D)
            v = x[:, :, :, 1].reshape(B, T, H, D).transpose(1, 2)
            qk = apply_rotary(x[:, :, :, 0::2], sin, cos).to(dtype)
            ref = (qk[:, :, :, 0].reshape(B, T, H, D).transpose(1, 2), qk[:, :, :, 1].reshape(B, T, H, D).transpose(1, 2), v)
            assert got is not None and all(torch.equal(a, b) for a, b in zip(got, ref)), (S, H, D)
        assert kernels.split_heads(qkv[:, ::2], sin, cos, S, H) is None  # not contiguous: the torch code
    finally:
        kernels.activate(before) if before else None


@pytest.mark.parametrize("tier", RUNNABLE)
def test_bf16_fused_step_with_each_tier_follows_torchs_path(tier):
    model = _model(shards=8, dtype=torch.bfloat16)
    before = kernels._active_tier
    try:
        kernels.activate(tier)
        fused = FusedDecoder.create(model, linear_types=(torch.nn.Linear, type(model.lm_head)))
        assert fused is not None
        cache = [codegen.KVCache.for_model(model, 1, 20) for _ in range(2)]
        ids = torch.tensor([[5, 9, 2, 7]])
        with torch.inference_mode():
            for c in cache:
                model.transformer(input_ids=ids, past_key_values=c)
            for step, tok in enumerate([3, 8, 1, 4, 6]):
                ref = model(input_ids=torch.tensor([[tok]]), past_key_values=cache[0]).logits[:, -1]
                got = fused(tok, 4 + step, cache[1])
                assert (ref - got).abs().max() <= 0.1 * ref.abs().max(), (step, (ref - got).abs().max())
    finally:
        kernels.activate(before) if before else None


def test_forcing_a_tier_and_refusing_a_higher_one():
    code = "from codegen.native import kernels; print(kernels.tier())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "CODEGEN_ISA": "generic"})
    assert "('generic', 'generic (forced by CODEGEN_ISA)')" in done.stdout, done.stderr
    if kernels.cpu_tier() != "avx512bf16":
        done = subprocess.run([sys.executable, "-c", "import logging; logging.basicConfig();" + code], capture_output=True,
                              text=True, timeout=300, env={**__import__("os").environ, "CODEGEN_ISA": "avx512bf16"})
        assert "asks for more than this CPU has" in done.stderr
    with pytest.raises(ValueError, match="unknown tier"):
        kernels.activate("sse9")
