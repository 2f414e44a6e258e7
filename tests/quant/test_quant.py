"""Weight-only quantization: formats and their inverses, the kernels of every tier against fp64
references, QuantLinear's two routes, whole models, checkpoints, commands and refusals."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import codegen
from codegen.native import kernels
from codegen.quant import QuantEmbedding, QuantLinear, QuantSpec
from codegen.quant import formats
from codegen.quant.convert import quantize_checkpoint, quantize_model
from codegen.quant.linear import DECODE_ROWS, INT4_PASS_ROWS
from helpers import TOKENIZER_DIR, sharp_lm

SPECS = [QuantSpec(8), QuantSpec(4, 32), QuantSpec(4, 64), QuantSpec(4, 128)]
TIERS = kernels.runnable_tiers() if kernels.supported() else []


# ----------------------------------------------------------------------------- formats
def test_layouts_round_trip():
    torch.manual_seed(0)
    u = torch.randint(0, 16, (5, 96))
    packed = formats.pack_pairs(u)
    assert packed.shape == (5, 48) and torch.equal(formats.unpack_pairs(packed), u.to(torch.uint8))
    assert int(packed[0, 0]) == int(u[0, 0]) | int(u[0, 1]) << 4  # consecutive pairs, low nibble first
    kernel = formats.to_kernel_layout(packed)
    assert int(kernel[0, 0]) == int(u[0, 0]) | int(u[0, 16]) << 4  # per 32: j and j + 16
    assert torch.equal(formats.from_kernel_layout(kernel), packed)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_quantization_error_is_within_half_a_step(spec):
    torch.manual_seed(1)
    w = torch.randn(7, 203) * torch.rand(7, 1) * 3
    if spec.bits == 8:
        q, s = formats.quantize_int8(w)
        err, step = (formats.dequantize_int8(q, s) - w).abs(), s[:, None].expand_as(w)
    else:
        packed, s = formats.quantize_int4(w, spec.group_size)
        assert packed.shape == (7, formats.padded(203, spec.group_size) // 2)
        err = (formats.dequantize_int4(packed, s, 203) - w).abs()
        step = s.repeat_interleave(spec.group_size, dim=1)[:, :203]
    assert bool((err <= step / 2 + 1e-6).all())


def test_spec_validation():
    with pytest.raises(ValueError, match="bits must be 8 or 4, got 3"):
        QuantSpec(3)
    with pytest.raises(ValueError, match="group_size must be one of"):
        QuantSpec(4, 48)
    with pytest.raises(ValueError, match="--quantize must be int8 or int4"):
        QuantSpec.parse("int2")
    with pytest.raises(ValueError, match="quant_method 'gptq' is not supported"):
        QuantSpec.from_config({"quant_method": "gptq", "bits": 4})
    assert QuantSpec.from_config(QuantSpec(4).to_config()) == QuantSpec(4, 32)
    with pytest.raises(ValueError, match="quantization_config: embedding_bits must be 8, got 4"):
        QuantSpec.from_config(QuantSpec(8).to_config() | {"embedding_bits": 4})
    assert not QuantSpec.from_config({"quant_method": "codegen", "bits": 8}).embedding  # earlier checkpoints


# ----------------------------------------------------------------------------- kernels and QuantLinear
@pytest.fixture(params=TIERS or [None])
def tier(request):
    """Each tier this CPU runs, active for the test (the CPU's own restored after)."""
    if request.param is None:
        pytest.skip("no native kernels on this machine")
    kernels.activate(request.param)
    yield request.param
    kernels.activate(kernels.cpu_tier())


def _reference(x, w, bias):
    """formats.quantized_linear in fp64: x's rows quantized as the kernels do, integer sums exact."""
    q, s = formats.quantize_activations(x)
    y = (q.double() @ w.double().T) * s.double()
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_kernels_match_fp64_on_odd_shapes(tier, spec):
    torch.manual_seed(2)
    for n, k in ((37, 45), (9, 257), (130, 96), (5, 300)):
        q = QuantLinear.from_linear(torch.nn.Linear(k, n), spec)
        w = q.dequantized()
        sums = q.weight.sum(1, dtype=torch.int32) if spec.bits == 8 else None
        for m in (1, 2, 3, 7, 8, 9, 13, 16):
            x = torch.randn(m, k) * torch.rand(m, 1) * 4
            ref = _reference(x, w, q.bias)
            y = kernels.quant_mm(q.weight, q.weight_scale, x, q.bias, spec.bits, spec.group_size)
            assert y is not None and torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5), (n, k, m)
            if sums is not None:  # the VNNI products take the rows' sums instead of adding them up
                given = kernels.quant_mm(q.weight, q.weight_scale, x, q.bias, 8, None, sums)
                assert torch.equal(given, y), (n, k, m)


def test_the_row_sums_a_quantized_linear_passes_follow_its_weight(tier):
    """QuantLinear keeps its int8 weight's row sums for the batched products: an in-place change of the
    weight or a new weight gets new sums, so its outputs stay those of the kernels summing themselves."""
    torch.manual_seed(4)
    q = QuantLinear.from_linear(torch.nn.Linear(70, 33), QuantSpec(8))
    x = torch.randn(5, 70)

    def own():
        return kernels.quant_mm(q.weight, q.weight_scale, x, q.bias, 8)

    with torch.no_grad():
        assert torch.equal(q(x), own())
        assert (q._row_sums() is not None) == kernels.vnni_takes_row_sums()
        q.weight[3] = 127  # in place: a newer version
        assert torch.equal(q(x), own())
        q.load_state_dict({**q.state_dict(), "weight": torch.full((33, 70), -128, dtype=torch.int8)})  # a new tensor
        assert torch.equal(q(x), own())
        if kernels.vnni_takes_row_sums():
            assert torch.equal(q._row_sums(), torch.full((33,), -128 * 70, dtype=torch.int32))
    with pytest.raises(ValueError, match="row_sums must be"):
        kernels.quant_mm(q.weight, q.weight_scale, x, q.bias, 8, None, torch.zeros(33, dtype=torch.int64))


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_gemm_matches_fp64_on_odd_shapes(tier, group):
    """The prefill GEMM (qgemm.cpp): whole tiles, the last rows of a pass, rows past N in a block, K
    not a multiple of the group, more rows than one pass (512) holds."""
    torch.manual_seed(4)
    spec = QuantSpec(4, group)
    for n, k, rows in ((37, 45, (1, 5, 6, 7, 40)), (9, 257, (13, 33)), (130, 96, (100,)), (70, 300, (600,))):
        q = QuantLinear.from_linear(torch.nn.Linear(k, n), spec)
        w = q.dequantized()
        for m in rows:
            x = torch.randn(m, k) * torch.rand(m, 1) * 4
            y = kernels.q4_gemm(q.weight, q.weight_scale, x, q.bias, group)
            assert y is not None and torch.allclose(y.double(), _reference(x, w, q.bias), rtol=1e-5, atol=1e-5), (n, k, m)
    assert torch.isnan(kernels.q4_gemm(q.weight, q.weight_scale, torch.full((40, k), float("nan")), None, group)).all()


def test_int4_prefills_take_the_gemm_from_64_rows(monkeypatch):
    """Without AMX: 17-63 rows in passes of 16, 64 and more in the GEMM; its result equals the passes'
    within fp32 rounding."""
    if not TIERS:
        pytest.skip("no native kernels on this machine")
    monkeypatch.setattr(kernels, "amx", lambda: False)
    calls = []
    real = kernels.q4_gemm
    monkeypatch.setattr(kernels, "q4_gemm", lambda *a: calls.append(a[2].shape[0]) or real(*a))
    torch.manual_seed(5)
    q = QuantLinear.from_linear(torch.nn.Linear(100, 50), QuantSpec(4, 32))
    x = torch.randn(2, 40, 100)
    y = q(x)
    assert calls == [80] and y.shape == (2, 40, 50)
    passes = torch.cat([q(x.reshape(80, 100)[r:r + 16]) for r in range(0, 80, 16)])
    torch.testing.assert_close(y.reshape(80, 50), passes, rtol=1e-5, atol=1e-5)
    q(x[:, :31])  # 62 rows
    assert calls == [80]


def test_activation_quantization_equals_torch(tier):
    torch.manual_seed(8)
    for x in (torch.randn(300) * 5, torch.zeros(33), torch.tensor([0.5, -1.5, 2.5, 127.0, -127.49]), torch.randn(1) * 1e-30):
        q, s = kernels.quantize_activations(x)
        tq, ts = formats.quantize_activations(x)
        assert torch.equal(q, tq) and s == float(ts), x
    q, s = kernels.quantize_activations(torch.tensor([1.0, float("nan"), 2.0]))
    assert s != s  # NaN in, NaN products out (as the float products would give)


def test_activation_quantization_of_many_rows_equals_torch(tier):
    """The prefill route's threaded quantize_rows: torch's values, ties included (torch once computed
    127 / amax as a reciprocal times 127, an ulp off, and rounded such a product the other way)."""
    torch.manual_seed(0)
    x = torch.randn(512, 1024)
    x[485, 366] = -2.250297784805298 * x[485].abs().max() / 3.506599187850952  # scaled: within an ulp of -81.5
    for rows in (x, x[:3, :203] * 1e-3, torch.zeros(4, 40), torch.randn(17, 5) * 1e4):
        q, s = kernels.quantize_rows(rows)
        tq, ts = formats.quantize_activations(rows)
        assert q.shape == tq.shape and s.shape == ts.shape == (rows.shape[0], 1)
        assert torch.equal(q, tq) and torch.equal(s, ts)


def test_int_epilogue_equals_the_torch_expression(tier):
    torch.manual_seed(1)
    acc = torch.randint(-2**20, 2**20, (37, 50), dtype=torch.int32)
    sx, sw, b = torch.rand(37, 1), torch.rand(50), torch.randn(50)
    for bias in (b, None):
        ref = acc.float() * (sx * sw) + (0 if bias is None else bias)
        out = torch.full((37, 70), 7.0)
        assert kernels.int_epilogue(acc, sx, sw, bias, out[:, 10:60])  # strided rows, as a block of columns
        assert torch.equal(out[:, 10:60], ref) and (out[:, :10] == 7).all() and (out[:, 60:] == 7).all()
    assert not kernels.int_epilogue(acc.float(), sx, sw, None, out[:, 10:60])  # not int32 sums: refused, untouched


@pytest.mark.parametrize("bits", [8, 4])
def test_prefill_route_equals_its_torch_fallback(tier, bits, monkeypatch):
    """The prefill route with the native activation quantization and epilogue gives the torch
    expressions' result exactly."""
    torch.manual_seed(2)
    q = QuantLinear.from_linear(torch.nn.Linear(200, 72), QuantSpec(bits, 32 if bits == 4 else None))
    x = torch.randn(300, 200)
    native = q._blockwise(x)
    monkeypatch.setattr(kernels, "quantize_rows", lambda x: None)
    monkeypatch.setattr(kernels, "int_epilogue", lambda *a: False)
    assert torch.equal(native, q._blockwise(x))


def test_int8_weights_of_minus_128_and_extreme_activations(tier):
    """A loaded checkpoint may hold -128; activations of +-max quantize to +-127: no 16-bit saturation."""
    k = 96
    q = QuantLinear(k, 8, QuantSpec(8))
    q.weight = torch.full((8, k), -128, dtype=torch.int8)
    q.weight_scale = torch.ones(8)
    for m in (1, 5):
        x = torch.full((m, k), -3.0)
        y = kernels.quant_mm(q.weight, q.weight_scale, x, q.bias, 8)
        assert torch.allclose(y.double(), _reference(x, q.dequantized(), q.bias), rtol=1e-6)
        assert y[0, 0] == pytest.approx(128 * 3.0 * k, rel=1e-6)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_both_routes_and_dtypes(spec):
    torch.manual_seed(3)
    q = QuantLinear.from_linear(torch.nn.Linear(100, 70), spec)
    ref_w = q.dequantized()
    # Stated tolerances: fp32 summation order; int4 prefills in bf16 on AMX.
    gemm_tol = 2e-2 if spec.bits == 4 and kernels.amx() else 1e-5
    passes = INT4_PASS_ROWS if spec.bits == 4 else DECODE_ROWS  # int4 prefills up to 128 rows: the kernels, 16 a pass
    for rows in (1, 5, 40, 100):  # 2 x 40 rows: the prefill route for int8, passes for int4; 2 x 100: both prefill
        x = torch.randn(2, rows, 100)
        ref = formats.quantized_linear(x, ref_w, q.bias)
        tol = gemm_tol if rows * 2 > passes else 1e-5
        assert torch.allclose(q(x), ref, rtol=tol, atol=tol * ref.abs().max()), rows
        xb = x.bfloat16()
        out = q(xb)
        assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), ref, rtol=3e-2, atol=3e-2)


# ----------------------------------------------------------------------------- models and checkpoints
def _dequantized_copy(model, quantized):
    """The float model with the quantized model's weights, dequantized, and each Linear's input rows
    quantized as the kernels do: the torch reference (formats.quantized_linear per layer)."""
    import copy

    ref = copy.deepcopy(model)
    for name, m in quantized.named_modules():
        if isinstance(m, QuantEmbedding):
            with torch.no_grad():
                ref.get_submodule(name).weight.copy_(m.dequantized())
        if isinstance(m, QuantLinear):
            target = ref.get_submodule(name)
            with torch.no_grad():
                target.weight.copy_(m.dequantized())
                if target.bias is not None:
                    target.bias.copy_(m.bias)
            target.register_forward_pre_hook(lambda mod, args: tuple(
                (lambda q, s: q.float() * s)(*formats.quantize_activations(a)) for a in args))
    return ref


@pytest.mark.parametrize("spec", [QuantSpec(8), QuantSpec(4, 32)], ids=lambda s: s.name)
def test_quantized_model_equals_its_dequantized_reference(spec):
    import copy

    model = sharp_lm(4)
    quantized = quantize_model(copy.deepcopy(model), spec)
    assert sum(isinstance(m, QuantLinear) for m in quantized.modules()) == 4 * 2 + 1  # 4 per layer, lm_head
    ref = _dequantized_copy(model, quantized)
    ids = torch.randint(0, 51200, (2, 12))
    with torch.no_grad():
        a, b = quantized(ids).logits, ref(ids).logits  # 24 rows: the prefill route
        c, d = quantized(ids[:1, :8]).logits, ref(ids[:1, :8]).logits  # 8 rows: the kernels
    # Stated tolerance: 5e-2 of the largest logit. Each layer is exact up to fp32 summation order (the
    # kernel tests above), but a last-bit difference upstream can move an activation across a rounding
    # boundary of its int8 row (one step of that row's scale), which later layers carry on.
    assert (a - b).abs().max() / b.abs().max() < 5e-2
    assert (c - d).abs().max() / d.abs().max() < 5e-2
    kwargs = dict(max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert torch.equal(quantized.generate(ids[:1, :5], **kwargs), ref.generate(ids[:1, :5], **kwargs))


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_command_and_loading(tmp_path, bits, capsys):
    from codegen.cli import main

    src, dst = str(tmp_path / "m"), str(tmp_path / "q")
    model = sharp_lm(5)
    model.save_pretrained(src, max_shard_size="600KB")  # several input shards, streamed one by one
    assert main(["quantize", src, dst, "--bits", str(bits), "--max-shard-size", "500KB"]) == 0
    config = json.load(open(os.path.join(dst, "config.json")))
    assert config["quantization_config"] == QuantSpec(bits).to_config()
    assert os.path.exists(os.path.join(dst, "model.safetensors.index.json"))
    loaded = codegen.CodeGenForCausalLM.from_pretrained(dst)
    at_load = quantize_model(codegen.CodeGenForCausalLM.from_pretrained(src), QuantSpec(bits))
    ids = torch.randint(0, 51200, (1, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, at_load(ids).logits)
    # a quantized model saves and loads back unchanged
    loaded.save_pretrained(str(tmp_path / "again"))
    again = codegen.CodeGenForCausalLM.from_pretrained(str(tmp_path / "again"))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, loaded(ids).logits)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_checkpoint(dst, str(tmp_path / "q2"), QuantSpec(8))


def test_cli_quantize_at_load_and_refusals(tmp_path, capsys):
    from codegen.cli import main

    if not os.path.isdir(TOKENIZER_DIR):
        pytest.skip("tokenizer files not in ../shared")
    src = str(tmp_path / "m")
    assert main(["init", src, "--tokenizer", TOKENIZER_DIR]) == 0
    assert main(["quantize", src, str(tmp_path / "q")]) == 0
    capsys.readouterr()
    args = ["def f(x):", "--temperature", "0", "--max-new-tokens", "6"]
    assert main(["complete", *args, "--model", str(tmp_path / "q")]) == 0
    from_file = capsys.readouterr().out
    assert main(["complete", *args, "--model", src, "--quantize", "int8"]) == 0
    assert capsys.readouterr().out == from_file
    assert main(["complete", *args, "--model", src, "--quantize", "int4", "--group-size", "48"]) == 1
    assert "group_size must be one of" in capsys.readouterr().err
    assert main(["train", "--model", str(tmp_path / "q"), "--data", str(tmp_path), "--out", str(tmp_path / "t"),
                 "--max-steps", "1"]) == 1
    assert "quantized checkpoint" in capsys.readouterr().err


def test_a_library_with_other_decode_args_disables_the_native_step(monkeypatch, caplog):
    from codegen.native import fused

    model = sharp_lm(6)
    assert fused.FusedDecoder.create(model) is not None and kernels.decode_layout == fused.layout()
    monkeypatch.setattr(kernels, "decode_layout", kernels.decode_layout.replace("embed:", "embedded:"))
    with caplog.at_level("WARNING"):
        assert fused.FusedDecoder.create(model) is None
    assert "DecodeArgs" in caplog.text and "differ" in caplog.text


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("spec", [QuantSpec(8), QuantSpec(4, 32), QuantSpec(4, 64)], ids=lambda s: s.name)
def test_fused_quantized_step_equals_the_module_path(tier, spec, dtype):
    import copy

    from codegen.engine.backend import Backend

    q = quantize_model(copy.deepcopy(sharp_lm(6)), spec).to(dtype)
    assert Backend.for_model(q)._fused is not None  # the whole one-row step in one native call
    ids = torch.randint(0, 51200, (1, 10))
    kwargs = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False)
    _module_path_gives(q, ids, kwargs, q.generate(ids, **kwargs))


def test_a_cast_quantized_model_keeps_fp32_scales_and_takes_the_activations_dtype(tmp_path):
    """`.to(torch.bfloat16)` on a quantized model casts its activations (layer norms, the embedding's
    output, so the KV cache) and keeps every scale and bias fp32; loading a quantized checkpoint with
    torch_dtype=bfloat16 gives the same model, and saving it writes the fp32 scales unchanged."""
    import copy

    from codegen.engine.cache import KVCache

    q = quantize_model(copy.deepcopy(sharp_lm(6)), QuantSpec(4, 32))
    scales = {n: b.clone() for n, b in q.named_buffers() if n.endswith(("weight_scale", ".bias"))}
    b = copy.deepcopy(q).to(torch.bfloat16)
    assert b.transformer.ln_f.weight.dtype == torch.bfloat16 and b.transformer.wte.dtype == torch.bfloat16
    for n, t in b.named_buffers():
        if n in scales:
            assert t.dtype == torch.float32 and torch.equal(t, scales[n]), n
    ids = torch.randint(0, 51200, (1, 6))
    with torch.no_grad():
        assert b.transformer.wte(ids).dtype == torch.bfloat16
        assert KVCache.for_model(b, 1, 8).key.dtype == torch.bfloat16
        out = b(ids, use_cache=True)
    assert out.past_key_values[0][0].dtype == torch.bfloat16
    assert b.float().transformer.wte.dtype == torch.float32
    b.to(torch.bfloat16)
    b.save_pretrained(str(tmp_path / "q"))
    loaded = codegen.CodeGenForCausalLM.from_pretrained(str(tmp_path / "q"), torch_dtype="bfloat16")
    assert loaded.transformer.wte.dtype == torch.bfloat16
    for n, t in loaded.named_buffers():
        if n in scales:
            assert t.dtype == torch.float32 and torch.equal(t, scales[n]), n
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, b(ids).logits)
    fp32 = codegen.CodeGenForCausalLM.from_pretrained(str(tmp_path / "q"), torch_dtype="float32")
    assert fp32.transformer.wte.dtype == torch.float32


def test_a_quantized_model_in_a_dtype_the_native_step_lacks_runs_the_module_path():
    """fp16 activations (the native step takes fp32 and bf16) or a scale cast by hand to bf16: the
    fused step declines, and the module path still decodes, close to the fp32 model's logits."""
    import copy

    from codegen.engine.backend import Backend

    q = quantize_model(copy.deepcopy(sharp_lm(6)), QuantSpec(8))
    ids = torch.randint(0, 51200, (1, 5))
    with torch.no_grad():
        ref = q(ids).logits
        half = copy.deepcopy(q).to(torch.float16)
        assert half.transformer.wte.dtype == torch.float16 and half.lm_head.weight_scale.dtype == torch.float32
        assert Backend.for_model(half)._fused is None
        run = half(ids, use_cache=True)
        out = run.logits
        assert run.past_key_values[0][0].dtype == torch.float16  # the KV cache in the activations' dtype
        assert (out - ref).abs().max() <= 0.05 * ref.abs().max()
        kwargs = dict(max_new_tokens=4, do_sample=False)
        assert half.generate(ids, **kwargs).shape == (1, 9)
        bf = copy.deepcopy(q).to(torch.bfloat16)
        assert Backend.for_model(bf)._fused is not None or not kernels.load()
        bf.lm_head.weight_scale = bf.lm_head.weight_scale.to(torch.bfloat16)  # not the format the step reads
        assert Backend.for_model(bf)._fused is None
        assert bf.generate(ids, **kwargs).shape == (1, 9)


def _module_path_gives(model, ids, kwargs, fused):
    """With a hook on lm_head (the module path, not the native step) `model` generates `fused` too."""
    from codegen.engine.backend import Backend

    hook = model.lm_head.register_forward_hook(lambda *a: None)
    try:
        assert Backend.for_model(model)._fused is None
        assert torch.equal(model.generate(ids, **kwargs), fused)
    finally:
        hook.remove()


@pytest.mark.parametrize("shape", [(40, 97), (168, 300)], ids=["tiny", "chunks"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("spec", [QuantSpec(8), QuantSpec(4, 32), QuantSpec(4, 64), QuantSpec(4, 128)],
                         ids=lambda s: s.name)
def test_fused_quantized_step_on_odd_shapes_equals_the_module_path(tier, spec, dtype, shape):
    """Odd n_inner and vocabulary (the step takes rows in tiles: a last, partial tile of each) and
    n_embd % 32 != 0 (partial vectors and groups); "chunks": rows of whole kernel steps (128 weights on
    AVX-512, 64 on AVX2) and a partial last one: the fused step's logits and cache are the module
    path's up to fp32 summation order (both quantize the same activations and sum in int32); with
    bf16 activations (and KV cache) every value is rounded to bf16 where torch rounds it."""
    from codegen.engine.cache import KVCache
    from codegen.native.fused import FusedDecoder

    torch.manual_seed(3)
    cfg = codegen.CodeGenConfig(vocab_size=301, n_embd=shape[0], n_inner=shape[1], n_layer=2, n_head=4, rotary_dim=4,
                                n_positions=64)
    q = quantize_model(codegen.CodeGenForCausalLM(cfg).eval(), spec).to(dtype)
    fused = FusedDecoder.create(q, linear_types=(torch.nn.Linear, QuantLinear))
    assert fused is not None
    ids = torch.randint(0, 301, (1, 5))
    caches = [KVCache.for_model(q, 1, 16) for _ in range(2)]
    with torch.inference_mode():
        for c in caches:
            q.transformer(input_ids=ids, past_key_values=c)
        for step, tok in enumerate([7, 300, 0, 151, 42, 9]):
            ref = q(input_ids=torch.tensor([[tok]]), past_key_values=caches[0]).logits[:, -1]
            got = fused(tok, 5 + step, caches[1])
            if dtype == torch.float32:
                torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
            else:  # a summation-order difference can move a value across a bf16 rounding boundary, or an
                # activation across a step of its int8 row: a few bf16 ulps of the largest logit
                assert (got - ref).abs().max() <= 8 * 2 ** -8 * ref.abs().max(), step
    assert caches[1].key.dtype == caches[0].key.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(caches[1].key, caches[0].key, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(caches[1].value, caches[0].value, rtol=1e-5, atol=1e-5)
    else:
        for a, b in ((caches[1].key, caches[0].key), (caches[1].value, caches[0].value)):
            assert (a.float() - b.float()).abs().max() <= 8 * 2 ** -8 * b.float().abs().max()


def test_int4_product_refuses_groups_that_are_not_powers_of_two(tier):
    """The kernels find a weight's group by a shift: 96 (a multiple of 32) is refused, not mis-scaled;
    the caller then dequantizes."""
    w = torch.zeros(3, 96, dtype=torch.uint8)  # 3 rows of 192 weights: two groups of 96
    x = torch.randn(1, 192)
    assert kernels.quant_mm(w, torch.ones(3, 2), x, None, 4, 96) is None
    assert kernels.quant_mm(w, torch.ones(3, 3), x, None, 4, 64) is not None
    xs = torch.randn(40, 192)
    assert kernels.q4_gemm(w, torch.ones(3, 2), xs, None, 96) is None
    assert kernels.q4_gemm(w, torch.ones(3, 3), xs, None, 64) is not None


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_native_dequantization_equals_the_formats(tier, spec):
    torch.manual_seed(7)
    q = QuantLinear.from_linear(torch.nn.Linear(203, 19), spec)
    native = kernels.dequantize(q.weight, q.weight_scale, 203, spec.bits, spec.group_size)
    if spec.bits == 8:
        ref = formats.dequantize_int8(q.weight, q.weight_scale)
    else:
        ref = formats.dequantize_int4(formats.from_kernel_layout(q.weight), q.weight_scale, 203)
    assert torch.equal(native, ref)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_quantizing_while_reading_equals_quantizing_after(tmp_path, dtype):
    """from_pretrained(quantize=...) quantizes each weight as it is read (the float model is never
    whole) and gives the model quantize_model gives after a float load."""
    src = str(tmp_path / "m")
    sharp_lm(8).save_pretrained(src, max_shard_size="600KB")
    ids = torch.randint(0, 51200, (1, 7))
    for spec in (QuantSpec(8), QuantSpec(4, 64)):
        read = codegen.CodeGenForCausalLM.from_pretrained(src, torch_dtype=dtype, quantize=spec)
        after = quantize_model(codegen.CodeGenForCausalLM.from_pretrained(src, torch_dtype=dtype), spec)
        assert read.config.quantization_config == spec.to_config()
        with torch.no_grad():
            assert torch.equal(read(ids).logits, after(ids).logits)
    quantize_checkpoint(src, str(tmp_path / "q"), QuantSpec(8))
    with pytest.raises(ValueError, match="already quantized"):
        codegen.CodeGenForCausalLM.from_pretrained(str(tmp_path / "q"), quantize="int8")


def _rss_kb() -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))


def test_stored_rows_equal_indexing_and_keep_the_table_out_of_the_process(tmp_path):
    """A quantized checkpoint's token embedding looks its rows up with reads of the file: the rows equal
    indexing the mapped table, bad indices are refused by name, a moved or replaced weight is indexed
    again, and looking up a few hundred rows of a 25 MB table leaves the table out of the process's
    resident memory (through the map, the page cache's large folios made ~all of it resident)."""
    import copy
    import pickle

    from safetensors.torch import save_file

    from codegen.safetensors_io import StoredRows

    table = torch.randint(-127, 128, (25600, 1024), dtype=torch.int8)
    file = str(tmp_path / "t.safetensors")
    save_file({"other": torch.zeros(3), "emb": table}, file)
    rows = StoredRows(file, "emb")
    ids = torch.tensor([[0, 25599, 7], [-1, 3, 3]])
    assert torch.equal(rows(ids), table[ids]) and torch.equal(rows(torch.tensor(5)), table[5])
    assert rows(torch.tensor([], dtype=torch.long)).shape == (0, 1024)
    with pytest.raises(IndexError, match="index 25600 is out of range for the 25600 rows of 'emb'"):
        rows(torch.tensor([1, 25600]))
    with pytest.raises(TypeError, match="integers"):
        rows(torch.tensor([1.0]))
    assert copy.deepcopy(rows) is rows and torch.equal(pickle.loads(pickle.dumps(rows))(ids), table[ids])
    buffer = np.zeros(1024, dtype=np.uint8)
    for r in (0, 25599, -1, 77):
        rows.row_into(r, buffer)
        assert torch.equal(torch.from_numpy(buffer.view(np.int8)), table[r])
    with pytest.raises(IndexError, match="index -25601 is out of range for the 25600 rows of 'emb'"):
        rows.row_into(-25601, buffer)
    with pytest.raises(KeyError, match="no tensor 'nope'"):
        StoredRows(file, "nope")

    from safetensors import safe_open

    with safe_open(file, framework="pt") as fh:
        mapped = fh.get_tensor("emb")  # the loader's view of the table: a map of the file
    emb = QuantEmbedding(25600, 1024, device="meta")
    emb.weight, emb.weight_scale = mapped, torch.rand(25600) + 0.5
    emb.read_rows_with(StoredRows(file, "emb"))
    lookups = torch.randint(0, 25600, (300,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        emb(lookups[:2])  # torch's first-call allocations, before the measurement
        before = _rss_kb()
        got = torch.cat([emb(lookups[i:i + 1]) for i in range(300)])
    assert _rss_kb() - before < 5 * 1024, "the table's pages became resident"  # through the map: ~20 MB
    assert torch.equal(got, table[lookups].float() * emb.weight_scale[lookups].unsqueeze(-1))
    emb.weight = table.clone()  # a replaced weight: indexed, the reader no longer applies
    emb.weight[lookups[0]] = 0
    assert torch.equal(emb(lookups[:1]), torch.zeros(1, 1024))


def test_a_quantized_checkpoint_reads_its_embedding_rows_from_the_file(tmp_path):
    src, dst = str(tmp_path / "m"), str(tmp_path / "q")
    sharp_lm(5).save_pretrained(src)
    quantize_checkpoint(src, dst, QuantSpec(8))
    loaded = codegen.CodeGenForCausalLM.from_pretrained(dst)
    wte = loaded.transformer.wte
    assert isinstance(wte, QuantEmbedding) and wte._reader is not None
    calls = []
    reader = wte._reader[0]
    wte.read_rows_with(lambda ids: calls.append(ids.shape) or reader(ids))
    ids = torch.randint(0, 51200, (2, 9))
    with torch.no_grad():
        via_reads = loaded(ids).logits
        wte.read_rows_with(None)
        indexed = loaded(ids).logits
    assert calls == [(2, 9)] and torch.equal(via_reads, indexed)
    at_load = codegen.CodeGenForCausalLM.from_pretrained(src, quantize="int8")  # quantized in memory: no file
    assert at_load.transformer.wte._reader is None and at_load.transformer.wte.reader() is None


def test_the_native_step_reads_a_quantized_embedding_as_the_module_path_does(tmp_path, tier):
    """The fused one-row step takes the token's int8 row (through the file reader of a loaded quantized
    checkpoint, else in place) and its scale: its greedy tokens equal the module path's."""
    from codegen.engine.backend import Backend

    src, dst = str(tmp_path / "m"), str(tmp_path / "q")
    sharp_lm(5).save_pretrained(src)
    quantize_checkpoint(src, dst, QuantSpec(8))
    loaded = codegen.CodeGenForCausalLM.from_pretrained(dst)
    wte = loaded.transformer.wte
    calls, reader = [], wte.reader()
    wte.read_rows_with(lambda ids: calls.append(ids.shape) or reader(ids))
    assert Backend.for_model(loaded)._fused is not None
    ids = torch.randint(0, 51200, (1, 7))
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False)
    fused = loaded.generate(ids, **kwargs)
    assert calls.count(()) == 11  # the prefill's (1, 7), then one row per native step after the first token
    wte.read_rows_with(reader)  # StoredRows itself: single rows into the decoder's buffer (row_into)
    assert Backend.for_model(loaded)._fused is not None and torch.equal(loaded.generate(ids, **kwargs), fused)
    wte.read_rows_with(None)  # the table indexed in place by the step
    assert torch.equal(loaded.generate(ids, **kwargs), fused)
    _module_path_gives(loaded, ids, kwargs, fused)
