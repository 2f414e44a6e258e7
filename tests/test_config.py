"""CodeGenConfig: transformers' names and defaults, aliases, config.json round trips, validation, presets."""

from __future__ import annotations

import json

import pytest

from codegen import CodeGenConfig, ConfigError
from codegen.config import PRESETS

# Parameter counts from the reference note (section 1.2), vocab 51200.
PARAMS = {"350M": 356_712_448, "2B": 2_779_356_160, "6B": 7_064_213_504, "16B": 16_032_155_648}


def test_defaults_match_transformers():
    c = CodeGenConfig()
    assert (c.vocab_size, c.n_positions, c.n_ctx, c.n_embd, c.n_layer, c.n_head, c.rotary_dim) == (50400, 2048, 2048, 4096, 28, 16, 64)
    assert c.n_inner is None and c.inner_dim == 4 * 4096
    assert c.activation_function == "gelu_new" and c.layer_norm_epsilon == 1e-5 and c.initializer_range == 0.02
    assert (c.resid_pdrop, c.embd_pdrop, c.attn_pdrop) == (0.0, 0.0, 0.0)
    assert c.use_cache is True and c.bos_token_id == 50256 and c.eos_token_id == 50256 and c.tie_word_embeddings is False


def test_defaults_equal_transformers_config():
    transformers = pytest.importorskip("transformers")
    ref = transformers.CodeGenConfig()
    ours = CodeGenConfig()
    for key in ("vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head", "rotary_dim", "n_inner",
                "activation_function", "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon",
                "initializer_range", "use_cache", "bos_token_id", "eos_token_id", "tie_word_embeddings"):
        assert getattr(ours, key) == getattr(ref, key), key


def test_aliases():
    c = CodeGenConfig(n_embd=64, n_head=4, rotary_dim=8, n_layer=3, n_positions=128)
    assert (c.hidden_size, c.num_attention_heads, c.num_hidden_layers, c.max_position_embeddings) == (64, 4, 3, 128)
    c.hidden_size = 128
    assert c.n_embd == 128
    d = CodeGenConfig.from_dict({"hidden_size": 32, "num_attention_heads": 4, "rotary_dim": 4, "num_hidden_layers": 1})
    assert (d.n_embd, d.n_head, d.n_layer) == (32, 4, 1)


def test_hub_config_with_extra_keys_round_trips(tmp_path):
    hub = {**PRESETS["350M-mono"], "model_type": "codegen", "scale_attn_weights": True, "gradient_checkpointing": False,
           "summary_type": "cls_index", "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
           "transformers_version": "4.21.0.dev0"}
    (tmp_path / "config.json").write_text(json.dumps(hub))
    c = CodeGenConfig.from_pretrained(tmp_path)
    assert c.scale_attn_weights is True and c.extra["summary_type"] == "cls_index"
    assert c.num_parameters() == PARAMS["350M"]
    c.save_pretrained(tmp_path / "out")
    again = json.loads((tmp_path / "out" / "config.json").read_text())
    for key, value in hub.items():
        assert again[key] == value, key


def test_transformers_reads_our_config_and_we_read_theirs(tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = CodeGenConfig.preset("2B-mono")
    ours.save_pretrained(tmp_path)
    ref = transformers.CodeGenConfig.from_pretrained(tmp_path)
    assert (ref.n_embd, ref.n_head, ref.rotary_dim, ref.n_layer, ref.vocab_size, ref.bos_token_id) == (2560, 32, 64, 32, 51200, 1)
    ref.save_pretrained(tmp_path / "hf")
    back = CodeGenConfig.from_pretrained(tmp_path / "hf")
    assert (back.n_embd, back.n_head, back.rotary_dim, back.n_layer) == (2560, 32, 64, 32)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets(name):
    c = CodeGenConfig.preset(name)
    if name.startswith("codegen2-"):  # CodeGen2's sizes are nominal: 1B, 3.7B, 7B, 16B
        nominal = float(name.split("-")[1].removesuffix("B").replace("_", ".")) * 1e9
        assert 0.85 < c.num_parameters() / nominal < 1.1
        assert CodeGenConfig.preset(f"Salesforce/{name}").to_dict() == c.to_dict()
    elif name != "tiny":
        assert c.num_parameters() == PARAMS[name.split("-")[0]]
        assert CodeGenConfig.preset(f"Salesforce/codegen-{name}").to_dict() == c.to_dict()


def test_unknown_preset():
    with pytest.raises(ConfigError, match=r"unknown preset '1B-mono'; choose one of 16B-mono"):
        CodeGenConfig.preset("1B-mono")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_embd=100, n_head=16), r"n_embd \(100\) must be divisible by n_head \(16\)"),
        (dict(n_embd=96, n_head=6, rotary_dim=8), r"n_head \(6\) must be divisible by the 4 qkv shards"),
        (dict(n_embd=64, n_head=4, rotary_dim=7), r"rotary_dim must be a positive even integer, got 7"),
        (dict(n_embd=64, n_head=4, rotary_dim=32), r"rotary_dim \(32\) must not exceed head_dim = n_embd / n_head = 16"),
        (dict(n_layer=0), r"n_layer must be a positive integer, got 0"),
        (dict(activation_function="gelu_xyz"), r"activation_function 'gelu_xyz' is not supported"),
        (dict(attn_pdrop=1.5), r"attn_pdrop must be in \[0, 1\), got 1.5"),
    ],
)
def test_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CodeGenConfig(**kwargs)


def test_bad_config_files(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config.json: not valid JSON"):
        CodeGenConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gptj"}))
    with pytest.raises(ConfigError, match=r"config.json: model_type is 'gptj', expected 'codegen'"):
        CodeGenConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"n_embd": 100, "n_head": 16}))
    with pytest.raises(ConfigError, match=r"config.json: n_embd \(100\) must be divisible"):
        CodeGenConfig.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        CodeGenConfig.from_pretrained(tmp_path / "nope")
