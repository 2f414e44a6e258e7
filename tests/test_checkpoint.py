"""Checkpoint round trips with transformers (safetensors, .bin, sharded) and clear errors for bad files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import codegen
from codegen import CheckpointError, CodeGenForCausalLM, CodeGenModel
from codegen.checkpoint import describe, parse_size
from helpers import TINY_CONFIGS, hf_model, save_hf_checkpoint

CFG = TINY_CONFIGS["h4_d32_r32"]
LAYOUTS = {
    "safetensors": dict(safe_serialization=True),
    "bin": dict(safe_serialization=False),
    "safetensors-sharded": dict(safe_serialization=True, max_shard_size=200_000),
    "bin-sharded": dict(safe_serialization=False, max_shard_size=200_000),
}
IDS = torch.randint(0, CFG["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def hf():
    return hf_model(CFG)


@torch.no_grad()
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_transformers_checkpoint_loads_in_ours(hf, tmp_path, layout):
    save_hf_checkpoint(hf, tmp_path, **LAYOUTS[layout])
    ours = CodeGenForCausalLM.from_pretrained(tmp_path)
    assert describe(tmp_path)["layout"] == layout
    assert (ours(IDS).logits - hf(IDS).logits).abs().max() < 1e-5


@torch.no_grad()
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_our_checkpoint_loads_in_transformers(hf, tmp_path, layout):
    transformers = pytest.importorskip("transformers")
    hf.save_pretrained(tmp_path / "src")
    ours = CodeGenForCausalLM.from_pretrained(tmp_path / "src")
    ours.save_pretrained(tmp_path / "out", **LAYOUTS[layout])
    assert describe(tmp_path / "out")["layout"] == layout
    back = transformers.CodeGenForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert torch.equal(back(IDS).logits, hf(IDS).logits)
    assert torch.equal(CodeGenForCausalLM.from_pretrained(tmp_path / "out")(IDS).logits, ours(IDS).logits)


@torch.no_grad()
def test_half_precision_transformers_checkpoint(hf, tmp_path):
    hf.half().save_pretrained(tmp_path)
    hf.float()
    auto = CodeGenForCausalLM.from_pretrained(tmp_path, torch_dtype="auto")
    assert auto.dtype == torch.float16
    assert CodeGenForCausalLM.from_pretrained(tmp_path).dtype == torch.float32
    assert CodeGenForCausalLM.from_pretrained(tmp_path, torch_dtype="bfloat16").dtype == torch.bfloat16
    assert (auto(IDS).logits - hf(IDS).logits).abs().max() < 0.05


@torch.no_grad()
def test_base_model_from_causal_lm_checkpoint(hf, tmp_path):
    hf.save_pretrained(tmp_path)
    base = CodeGenModel.from_pretrained(tmp_path)
    assert (base(IDS).last_hidden_state - hf.transformer(IDS).last_hidden_state).abs().max() < 1e-5


def test_ignored_buffers_are_dropped(hf, tmp_path):
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["transformer.h.0.attn.causal_mask"] = torch.ones(1, 1, 8, 8, dtype=torch.bool).tril()
    state["transformer.h.1.attn.masked_bias"] = torch.tensor(-1e9)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    CodeGenForCausalLM.from_pretrained(tmp_path)
    assert describe(tmp_path)["ignored_buffers"] == 2


def test_mis_shaped_tensor(hf, tmp_path):
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["transformer.h.1.mlp.fc_in.bias"] = torch.zeros(7)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'transformer.h.1.mlp.fc_in.bias' has shape \(7,\), but the config .* requires \(512,\)"):
        CodeGenForCausalLM.from_pretrained(tmp_path)


def test_missing_and_unexpected_tensors(hf, tmp_path):
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["lm_head.bias"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lacks 1 tensor\(s\) of CodeGenForCausalLM: lm_head.bias"):
        CodeGenForCausalLM.from_pretrained(tmp_path)
    state["lm_head.bias"] = torch.zeros(CFG["vocab_size"])
    state["transformer.wpe.weight"] = torch.zeros(3, 3)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'transformer.wpe.weight' \(3, 3\)"):
        CodeGenForCausalLM.from_pretrained(tmp_path)


def test_truncated_safetensors(hf, tmp_path):
    hf.save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a readable safetensors file .*truncated or corrupt"):
        CodeGenForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        describe(tmp_path)


@pytest.mark.parametrize("edit, says", [
    (lambda h: h["transformer.ln_f.bias"].update(data_offsets=[0, 10**12]), r"'transformer.ln_f.bias' has data_offsets .* outside"),
    (lambda h: h["transformer.ln_f.bias"].update(dtype="Q7"), r"'transformer.ln_f.bias' has dtype 'Q7'"),
    (lambda h: h["transformer.ln_f.bias"].update(shape=[3, -1]), r"'transformer.ln_f.bias' has shape \[3, -1\]"),
    (lambda h: h["transformer.ln_f.bias"].update(shape=[7]), r"'transformer.ln_f.bias' \(F32 \[7\]\) needs 28 bytes"),
])
def test_malformed_safetensors_headers_name_the_tensor(hf, tmp_path, edit, says):
    """The reader used for converted tensors checks every header entry before trusting a byte."""
    import struct

    hf.save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    data = file.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a readable safetensors file \(.*" + says):
        CodeGenForCausalLM.from_pretrained(tmp_path, torch_dtype="bfloat16")  # converted: the reader


def test_truncated_bin(hf, tmp_path):
    save_hf_checkpoint(hf, tmp_path, safe_serialization=False)
    file = tmp_path / "pytorch_model.bin"
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: not a readable PyTorch weights file"):
        CodeGenForCausalLM.from_pretrained(tmp_path)


def test_bin_with_pickled_code_is_refused(hf, tmp_path):
    hf.save_pretrained(tmp_path)
    os.remove(tmp_path / "model.safetensors")
    torch.save({"transformer.wte.weight": torch.zeros(2), "evil": os.getcwd}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: not a readable PyTorch weights file"):
        CodeGenForCausalLM.from_pretrained(tmp_path)


def test_missing_shard(hf, tmp_path):
    hf.save_pretrained(tmp_path, max_shard_size=200_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    os.remove(tmp_path / victim)
    with pytest.raises(CheckpointError, match=rf"model.safetensors.index.json lists shard\(s\) missing from .*: {victim}"):
        CodeGenForCausalLM.from_pretrained(tmp_path)


def test_directory_without_config(hf, tmp_path):
    hf.save_pretrained(tmp_path)
    os.remove(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match=r"no config.json found"):
        CodeGenForCausalLM.from_pretrained(tmp_path)


def test_directory_without_weights(tmp_path):
    codegen.CodeGenConfig(**CFG).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"no weights found \(expected model.safetensors, pytorch_model.bin"):
        CodeGenForCausalLM.from_pretrained(tmp_path)


def test_hub_id_offline_says_how_to_get_files(tmp_path):
    # HF_HUB_OFFLINE is read when huggingface_hub is imported: run in a fresh process, never online.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "codegen.cli", "info", "Salesforce/codegen-350M-mono"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert re.match(r"codegen: error: Salesforce/codegen-350M-mono: not a local directory.*pass DIR\n$", r.stderr), r.stderr


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("200KB") == 200_000
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size(123) == 123
    with pytest.raises(ValueError, match="max_shard_size 'lots'"):
        parse_size("lots")


def test_bad_torch_dtype(hf, tmp_path):
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"torch_dtype 'int8' is not supported"):
        CodeGenForCausalLM.from_pretrained(tmp_path, torch_dtype="int8")


# ------------------------------------------------------------------ hostile and malformed checkpoints
def _small(tmp_path):
    cfg = codegen.CodeGenConfig(vocab_size=100, n_embd=32, n_layer=1, n_head=4, rotary_dim=4, n_positions=32)
    model = CodeGenForCausalLM(cfg)
    model.save_pretrained(tmp_path / "m")
    return model, tmp_path / "m"


def _one_line_error(path, match):
    with pytest.raises((CheckpointError, codegen.ConfigError)) as e:
        CodeGenForCausalLM.from_pretrained(path)
    assert re.search(match, str(e.value)) and len(str(e.value).splitlines()) == 1, str(e.value)
    r = subprocess.run([sys.executable, "-m", "codegen.cli", "info", str(path)], capture_output=True, text=True, timeout=120)
    if "config.json" not in match:
        return
    assert r.returncode == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors"])
def test_shard_names_must_stay_inside_the_checkpoint(tmp_path, shard):
    model, path = _small(tmp_path)
    os.rename(path / "model.safetensors", tmp_path / "outside.safetensors")
    index = "model.safetensors.index.json" if shard.endswith(".safetensors") else "pytorch_model.bin.index.json"
    (path / index).write_text(json.dumps({"weight_map": {k: shard for k in model.state_dict()}}))
    _one_line_error(path, "lies outside the checkpoint directory")


@pytest.mark.parametrize("key, value, message", [
    ("n_embd", 2**40, r"n_embd = 1099511627776 is beyond this project's bound of 65536"),
    ("vocab_size", -3, "vocab_size must be a positive integer, got -3"),
    ("n_layer", "2", "n_layer must be a positive integer, got '2'"),
    ("n_inner", 2**30, "n_inner = 1073741824 is beyond"),
])
def test_overflowing_or_wrong_config_values(tmp_path, key, value, message):
    _, path = _small(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config[key] = value
    (path / "config.json").write_text(json.dumps(config))
    _one_line_error(path, "config.json: " + message)


def test_integer_tensor_where_a_weight_belongs(tmp_path):
    model, path = _small(tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["lm_head.weight"] = state["lm_head.weight"].long()
    save_file(state, path / "model.safetensors")
    _one_line_error(path, r"tensor 'lm_head.weight' is int64; a floating-point weight belongs there")


def test_legacy_and_raw_pickles(tmp_path):
    import pickle

    model, path = _small(tmp_path)
    os.unlink(path / "model.safetensors")
    torch.save(model.state_dict(), path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    loaded = CodeGenForCausalLM.from_pretrained(path)  # legacy format: read (safely), without a memory map
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    with open(path / "pytorch_model.bin", "wb") as fh:
        pickle.dump({k: v.numpy() for k, v in model.state_dict().items()}, fh)
    _one_line_error(path, r"pytorch_model.bin: not a readable PyTorch weights file \(UnpicklingError")
    torch.save({"lm_head.weight": [1, 2]}, path / "pytorch_model.bin")
    _one_line_error(path, r"'lm_head.weight' is a list, not a tensor")


def test_loading_skips_weight_initialisation(tmp_path):
    """from_pretrained builds the model without running any init (on the meta device torch's normal_
    imports torch._dynamo, ~1.5 s of start-up); torch's init functions are restored afterwards."""
    model, path = _small(tmp_path)
    code = ("import sys, torch, codegen; m = codegen.CodeGenForCausalLM.from_pretrained(sys.argv[1]);"
            "print('torch._dynamo' in sys.modules, torch.nn.init.normal_.__module__)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "torch.nn.init"], done.stderr
    loaded = CodeGenForCausalLM.from_pretrained(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    fresh = CodeGenForCausalLM(model.config)  # outside loading, models are initialised as before
    assert 0.015 < float(fresh.lm_head.weight.detach().std()) < 0.025


def test_malformed_tokenizer_files_beside_a_checkpoint(tmp_path, caplog):
    """The model still loads (without a vocabulary limit, with a warning); the tokenizer's error names the file."""
    model, path = _small(tmp_path)
    (path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    (path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"x7": {"content": "<t>"}}}))
    with caplog.at_level("WARNING"):
        loaded = CodeGenForCausalLM.from_pretrained(path)
    assert loaded.tokenizer_size is None and "added_tokens_decoder is malformed" in caplog.text
    with pytest.raises(codegen.TokenizerFileError, match=r"tokenizer_config.json: added_tokens_decoder is malformed"):
        codegen.CodeGenTokenizerFast.from_pretrained(path)
