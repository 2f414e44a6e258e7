"""CodeGen2: the qkv shard count (8 for 1B/3.7B) in the config, the model and the native step, its
tokenizer's sentinels, and fill-in-the-middle through the API, the CLI and the server."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import codegen
from codegen import CodeGenConfig, CodeGenForCausalLM
from codegen.fim import fim_prompt, fim_tokens
from helpers import TOKENIZER_DIR, count_native_passes, hf_model

needs_tokenizer = pytest.mark.skipif(not os.path.isdir(TOKENIZER_DIR), reason="CodeGen tokenizer files not in ../shared")


def test_shard_count_rule_presets_and_override():
    assert CodeGenConfig.preset("350M-mono").qkv_shards == 4
    one = CodeGenConfig.preset("codegen2-1B")
    assert one.qkv_shards == 8 and "head_dim = 128" in one.shard_rule and one.num_parameters() > 1_000_000_000
    assert CodeGenConfig.preset("Salesforce/codegen2-3.7B").qkv_shards == 8
    assert CodeGenConfig.preset("codegen2-7B").qkv_shards == 4 and CodeGenConfig.preset("codegen2-16B").qkv_shards == 4
    hub_like = {**CodeGenConfig.preset("codegen2-7B").to_dict(), "auto_map": {"AutoModelForCausalLM": "x"}}
    assert "7B/16B layout" in CodeGenConfig.from_dict(hub_like).shard_rule  # undecidable: the rule is named
    forced = CodeGenConfig.from_dict({**one.to_dict(), "mp_num": 4})
    assert forced.qkv_shards == 4 and forced.shard_rule == "mp_num = 4 in the config"
    assert "mp_num" not in CodeGenConfig.preset("350M-mono").to_dict()  # CodeGen-1 configs stay as they were
    assert CodeGenConfig.from_dict(json.loads(forced.to_json_string())).mp_num == 4
    with pytest.raises(codegen.ConfigError, match=r"n_head \(12\) must be divisible by the 8 qkv shards"):
        CodeGenConfig(n_embd=96, n_head=12, rotary_dim=4, mp_num=8)
    with pytest.raises(codegen.ConfigError, match="mp_num must be 1, 2, 4, 8 or 16, got 3"):
        CodeGenConfig(mp_num=3)


def to_8_shards(w: torch.Tensor, H: int) -> torch.Tensor:
    """qkv_proj rows of the 4-shard layout rearranged into the 8-shard one (reference sections 1.4, 2.3):
    in S shards each [q | v | k] block holds H/S heads of D rows, heads numbered shard-major."""
    E = w.shape[1]
    D = E // H

    def row(S: int, kind: int, h: int) -> int:  # first row of head h's q (0), v (1) or k (2) with S shards
        L = E // S
        return (h // (H // S)) * 3 * L + kind * L + (h % (H // S)) * D

    out = torch.empty_like(w)
    for kind in range(3):
        for h in range(H):
            out[row(8, kind, h):row(8, kind, h) + D] = w[row(4, kind, h):row(4, kind, h) + D]
    return out


CFG8 = dict(vocab_size=300, n_embd=128, n_layer=2, n_head=8, rotary_dim=8, n_positions=64)


@pytest.fixture(scope="module")
def pair():
    hf = hf_model(CFG8, seed=3)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    ours = CodeGenForCausalLM(CodeGenConfig(**CFG8, mp_num=8, bos_token_id=299, eos_token_id=299)).eval()
    keys = set(ours.state_dict())
    state = {k: v.clone() for k, v in hf.state_dict().items() if k in keys}
    for k in state:
        if k.endswith("qkv_proj.weight"):
            state[k] = to_8_shards(state[k], CFG8["n_head"])
    ours.load_state_dict(state)
    return hf, ours


def test_an_8_shard_model_equals_the_permuted_4_shard_transformers_model(pair):
    hf, ours = pair
    x = torch.randint(0, 300, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = hf(x).logits, ours(x).logits
    assert (ref - got).abs().max() < 1e-5
    for seed in range(3):
        p = torch.randint(0, 299, (1, 5 + seed), generator=torch.Generator().manual_seed(seed))
        kw = dict(max_new_tokens=20, pad_token_id=0)
        assert torch.equal(ours.generate(p, **kw), hf.generate(p, do_sample=False, **kw))
    plain = CodeGenForCausalLM(CodeGenConfig(**CFG8, bos_token_id=299, eos_token_id=299)).eval()
    plain.load_state_dict(ours.state_dict())
    with torch.no_grad():  # read as 4 shards, the same weights are another model: the count matters
        assert (plain(x).logits - ref).abs().max() > 1e-2


@pytest.mark.parametrize("shards", [4, 8])
def test_the_native_step_follows_the_shard_count(monkeypatch, shards):
    from codegen.native import kernels
    from codegen.native.fused import FusedDecoder

    kernels.load()
    if kernels.decode_step is None:
        pytest.skip("no AVX-512 CPU or no C++ compiler here")
    torch.manual_seed(shards)
    model = CodeGenForCausalLM(CodeGenConfig(**CFG8, mp_num=shards)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randint(0, 300, (1, 6), generator=torch.Generator().manual_seed(1))
    calls = count_native_passes(monkeypatch)
    fast = model.generate(x, max_new_tokens=20, eos_token_id=[])
    assert len(calls) == 19
    monkeypatch.setattr(FusedDecoder, "create", classmethod(lambda cls, *a, **k: None))
    assert torch.equal(fast, model.generate(x, max_new_tokens=20, eos_token_id=[]))


# ------------------------------------------------------------------ tokenizer and fill-in-the-middle
def codegen2_tokenizer_files(directory) -> str:
    """CodeGen's tokenizer files with CodeGen2's added tokens (reference section 2.3)."""
    shutil.copytree(TOKENIZER_DIR, directory, dirs_exist_ok=True, ignore=shutil.ignore_patterns("tokenizer.json", "*.md"))
    added = json.loads(open(os.path.join(TOKENIZER_DIR, "added_tokens.json")).read())
    added.update({f"<dummy_{i}>": 50295 + i for i in range(4)})
    added.update({"<sep>": 50299, "<eom>": 50300})
    added.update({f"<mask_{n}>": 51200 - n for n in range(1, 900)})
    with open(os.path.join(directory, "added_tokens.json"), "w") as fh:
        json.dump(added, fh)
    return str(directory)


@pytest.fixture(scope="module")
def fim_dir(tmp_path_factory):
    """A tiny 8-shard checkpoint with CodeGen2's tokenizer; its head is biased towards `<eom>` once
    it has written `x` three times (id 87), so every middle is 'xxx' then the end of the middle."""
    if not os.path.isdir(TOKENIZER_DIR):
        pytest.skip("CodeGen tokenizer files not in ../shared")
    d = tmp_path_factory.mktemp("codegen2")
    codegen2_tokenizer_files(d)
    torch.manual_seed(0)
    model = CodeGenForCausalLM(CodeGenConfig(vocab_size=51200, n_embd=64, n_layer=1, n_head=8, rotary_dim=4,
                                             n_positions=256, mp_num=8, bos_token_id=1, eos_token_id=50256))
    with torch.no_grad():
        model.lm_head.bias[87] += 50.0
    model.save_pretrained(d)
    return str(d)


@needs_tokenizer
def test_codegen2_tokenizer_and_the_fim_prompt(tmp_path):
    tok = codegen.CodeGenTokenizerFast.from_pretrained(codegen2_tokenizer_files(tmp_path))
    assert len(tok) == 51200
    t = fim_tokens(tok)
    assert (t.mask, t.sep, t.eom, t.eos) == (51199, 50299, 50300, 50256)
    assert tok.convert_tokens_to_ids(["<mask_899>", "<dummy_3>"]) == [50301, 50298]
    ids = fim_prompt(tok, "def f(x):\n    ", "\n    return y")
    assert ids == tok.encode("def f(x):\n    ") + [51199] + tok.encode("\n    return y") + [50256, 50299, 51199]
    assert fim_tokens(codegen.CodeGenTokenizerFast.from_pretrained(TOKENIZER_DIR)) is None  # CodeGen-1


@needs_tokenizer
@pytest.mark.parametrize("cls", [codegen.CodeGenTokenizerFast, codegen.CodeGenTokenizer])
def test_sentinels_in_the_users_code_are_text_in_a_fim_prompt(tmp_path, cls):
    tok = cls.from_pretrained(codegen2_tokenizer_files(tmp_path))
    code = "s = '<eom>'  # <mask_1> <sep><|endoftext|>\n        x"
    assert {50300, 51199, 50299, 50256} <= set(tok.encode(code))  # a plain prompt: as transformers encodes it
    ids = fim_prompt(tok, code, code)
    assert ids[-3:] == [50256, 50299, 51199] and ids.count(51199) == 2 and ids.count(50256) == 1
    assert 50300 not in ids and 50299 not in ids[:-2]
    plain = tok.encode_literal(code, [t for t in tok.get_added_vocab() if t.strip()] + ["<|endoftext|>"])
    assert 50280 in plain and tok.decode(plain) == code  # whitespace runs keep their ids; the text is unchanged
    assert ids == plain + [51199] + plain + [50256, 50299, 51199]


@needs_tokenizer
def test_fill_in_the_middle_through_the_api_and_the_cli(fim_dir, capsys):
    model = CodeGenForCausalLM.from_pretrained(fim_dir)
    tok = codegen.CodeGenTokenizerFast.from_pretrained(fim_dir)
    opts = codegen.CompletionOptions(temperature=0, max_new_tokens=6)
    [c] = codegen.complete(model, tok, "def f():\n    ", opts, suffix="\n    return y\n")
    assert c.text == "xxxxxx" and c.finish_reason == "length"
    assert c.prompt_tokens == len(fim_prompt(tok, "def f():\n    ", "\n    return y\n"))
    with torch.no_grad():
        model.lm_head.bias[50300] += 100.0  # now <eom> comes first: an empty middle, ended by <eom>
    [c] = codegen.complete(model, tok, "def f():\n    ", opts, suffix="\n    return y\n")
    assert c.text == "" and c.finish_reason == "stop" and c.token_ids == [50300]
    deltas = list(codegen.stream_complete(model, tok, "a = ", opts, suffix="\nb = 2"))
    assert [d.token for d in deltas] == [50300]
    from codegen.cli import main

    assert main(["complete", "def f():\n    ", "--suffix", "\n    return y", "--model", fim_dir, "--temperature", "0",
                 "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out == "def f():\n    xxx\n    return y\n"  # prompt, middle, suffix
    with open(os.path.join(fim_dir, "suffix.py"), "w") as fh:
        fh.write("\n    return y")
    assert main(["complete", "def f():\n    ", "--suffix-file", os.path.join(fim_dir, "suffix.py"), "--model", fim_dir,
                 "--temperature", "0", "--max-new-tokens", "3", "--no-echo"]) == 0
    assert capsys.readouterr().out == "xxx\n"
    assert main(["complete", "x", "--suffix", "y", "--model", os.path.join(fim_dir, "..", "nonexistent")]) == 1
    assert main(["complete", "x", "--suffix", "y", "--suffix-file", os.path.join(fim_dir, "suffix.py"), "--model", fim_dir]) == 1
    assert "not both" in capsys.readouterr().err
    with pytest.raises(ValueError, match="only CodeGen2 models can fill in the middle"):
        codegen.complete(model, codegen.CodeGenTokenizerFast.from_pretrained(TOKENIZER_DIR), "a", opts, suffix="b")


@needs_tokenizer
def test_fill_in_the_middle_through_the_server_and_the_openai_client(fim_dir):
    pytest.importorskip("uvicorn")
    openai = pytest.importorskip("openai")
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "server"))
    from serving import Server

    model = CodeGenForCausalLM.from_pretrained(fim_dir)
    tok = codegen.CodeGenTokenizerFast.from_pretrained(fim_dir)
    with Server(model, tok) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused")
        r = client.completions.create(model="m", prompt="def f():\n    ", suffix="\n    return y", max_tokens=4, temperature=0)
        assert r.choices[0].text == "xxxx" and r.choices[0].finish_reason == "length"
        streamed = "".join(ch.choices[0].text for ch in client.completions.create(
            model="m", prompt="def f():\n    ", suffix="\n    return y", max_tokens=4, temperature=0, stream=True) if ch.choices)
        assert streamed == "xxxx"
        with pytest.raises(openai.BadRequestError, match="echo cannot be combined with suffix"):
            client.completions.create(model="m", prompt="a", suffix="b", echo=True, max_tokens=2)
        with torch.no_grad():
            model.lm_head.bias[50300] += 100.0
        r = client.completions.create(model="m", prompt="a = ", suffix="\nb = 2", max_tokens=4, temperature=0)
        assert r.choices[0].text == "" and r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 1
