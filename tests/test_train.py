"""Training: overfitting, exact resume, LoRA (adapters only, merge), transformers-loadable checkpoints."""

from __future__ import annotations

import json
import os

import pytest
import torch

import codegen
from codegen import lora
from codegen.train import TrainConfig, lr_at, train
from helpers import TOKENIZER_DIR

pytestmark = pytest.mark.skipif(not os.path.isdir(TOKENIZER_DIR), reason="CodeGen tokenizer files not in ../shared")

TEXT = '''def add(a, b):
    """Return the sum of a and b."""
    return a + b


def mul(a, b):
    """Return the product of a and b."""
    return a * b
'''


@pytest.fixture()
def setup(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        (data / f"m{i}.py").write_text(TEXT.replace("add", f"add{i}"))
    config = codegen.CodeGenConfig(vocab_size=50304, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=128)
    config.save_pretrained(tmp_path / "cfg")
    return tmp_path, str(data), str(tmp_path / "cfg" / "config.json")


def cfg(tmp_path, data, config, **kw):
    base = dict(out=str(tmp_path / "out"), data=[data], config=config, tokenizer=TOKENIZER_DIR, seq_len=32, batch_size=4,
                max_steps=60, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_fraction=0.0, save_every=1000, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_model_overfits(setup):
    tmp_path, data, config = setup
    result = train(cfg(tmp_path, data, config))
    losses = [loss for _, loss in result["history"]]
    assert losses[0] > 9.0 and min(losses[-5:]) < 1.5, losses[-5:]
    assert result["tokens_per_second"] > 0
    # the output directory is a usable checkpoint
    model = codegen.CodeGenForCausalLM.from_pretrained(tmp_path / "out")
    tok = codegen.CodeGenTokenizerFast.from_pretrained(tmp_path / "out")
    [c] = codegen.complete(model, tok, "def mul3(a, b):\n", codegen.CompletionOptions(temperature=0, max_new_tokens=12))
    assert c.text.startswith("    \"\"\"Return the")  # it learned the pattern of the data


def test_killed_run_resumes_with_the_same_losses(setup):
    tmp_path, data, config = setup
    kw = dict(max_steps=12, save_every=4, eval_fraction=0.3, eval_every=4)
    full = train(cfg(tmp_path, data, config, out=str(tmp_path / "a"), **kw))["history"]
    first = train(cfg(tmp_path, data, config, out=str(tmp_path / "b"), **kw), stop_after=6)  # "killed" at step 6
    assert first["steps"] == 6
    resumed = train(cfg(tmp_path, data, config, out=str(tmp_path / "b"), **kw))["history"]
    assert [s for s, _ in resumed] == list(range(1, 13))  # steps 5-6 are redone from the step-4 checkpoint
    assert resumed == full


def test_lora_trains_only_adapters_and_merges_exactly(setup):
    tmp_path, data, config = setup
    train(cfg(tmp_path, data, config, out=str(tmp_path / "base"), max_steps=10))
    base_dir = str(tmp_path / "base")
    before = codegen.CodeGenForCausalLM.from_pretrained(base_dir).state_dict()
    out = str(tmp_path / "lora")
    train(TrainConfig(out=out, data=[data], model=base_dir, seq_len=32, batch_size=4, max_steps=15, lr=1e-2,
                      warmup_steps=2, eval_fraction=0.0, lora_rank=4, lora_alpha=8, lora_targets=["qkv_proj", "fc_in"]))
    assert sorted(os.listdir(out)) >= ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads(open(os.path.join(out, "adapter_config.json")).read())["r"] == 4
    model = codegen.CodeGenForCausalLM.from_pretrained(base_dir)
    wrapped = lora.apply_lora(model, 4, 8, ("qkv_proj", "fc_in"))
    assert len(wrapped) == 4
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    lora.load_adapters(model, out)
    assert any(float(m.lora_B.detach().abs().max()) > 0 for m in model.modules() if isinstance(m, lora.LoRALinear))
    x = torch.randint(0, 50000, (2, 16))
    with torch.no_grad():
        adapted = model(x).logits
        merged = lora.merge_lora(model)
        assert not any(isinstance(m, lora.LoRALinear) for m in merged.modules())
        assert (merged(x).logits - adapted).abs().max() < 1e-5
    # the base checkpoint itself was not modified by LoRA training
    again = codegen.CodeGenForCausalLM.from_pretrained(base_dir).state_dict()
    assert all(torch.equal(before[k], again[k]) for k in before)


def test_training_checkpoints_load_in_transformers(setup):
    transformers = pytest.importorskip("transformers")
    tmp_path, data, config = setup
    train(cfg(tmp_path, data, config, max_steps=8, save_every=4))
    x = torch.randint(0, 50000, (2, 12))
    for path in (tmp_path / "out", tmp_path / "out" / "checkpoint-000004"):
        ours = codegen.CodeGenForCausalLM.from_pretrained(path)
        ref = transformers.CodeGenForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
        with torch.no_grad():
            assert (ours(x).logits - ref(x).logits).abs().max() < 1e-5


def test_schedule_and_errors(setup, tmp_path):
    c = TrainConfig(out="o", data=["d"], config="tiny", lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.55) and lr_at(110, c) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="exactly one of --model"):
        train(TrainConfig(out=str(tmp_path / "x"), data=["d"], config="tiny", model="m"))
    with pytest.raises(FileNotFoundError, match="--data /nonexistent: no such file or directory"):
        train(TrainConfig(out=str(tmp_path / "x"), data=["/nonexistent"], config="tiny", tokenizer=TOKENIZER_DIR))


def test_cli_train_and_perplexity(setup, capsys):
    from codegen.cli import main

    tmp_path, data, config = setup
    out = str(tmp_path / "cli")
    assert main(["train", "--config", config, "--data", data, "--out", out, "--tokenizer", TOKENIZER_DIR, "--seq-len", "32",
                 "--batch-size", "2", "--max-steps", "6", "--warmup-steps", "2", "--eval-fraction", "0"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 6 and summary["tokens_per_second"] > 0
    assert main(["eval", "perplexity", "--model", out, "--data", data, "--seq-len", "32"]) == 0
    ppl = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ppl["tokens"] > 0 and ppl["perplexity"] == pytest.approx(2.718281828 ** ppl["loss"], rel=1e-6)


def test_jsonl_records_and_their_names_decide_the_split(tmp_path):
    from codegen.train import collect_texts, split

    path = tmp_path / "texts.jsonl"
    names = [f"/lib/mod{i}.py" for i in range(40)]
    with open(path, "w") as fh:
        for name in names:  # a file and a function cut out of it share a name: same side of the split
            fh.write(json.dumps({"name": name, "text": f"# {name}\n"}) + "\n")
            fh.write(json.dumps({"name": name, "text": f"def f():  # {name}\n"}) + "\n")
        fh.write(json.dumps({"text": "x = 1\n"}) + "\n\n")  # unnamed: named by file and line
    texts = collect_texts([str(path)])
    assert len(texts) == 81 and texts[-1] == (f"{path}:80", "x = 1\n")
    train_texts, held = split(texts[:80], 0.2)
    assert 0 < len(held) < 80 and len(held) % 2 == 0
    for text in held:
        name = text.split("# ")[-1].strip()
        assert f"# {name}\n" in held and f"def f():  # {name}\n" in held
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"name": "a"}\n')
    with pytest.raises(ValueError, match="bad.jsonl, line 1: a JSONL record needs a 'text' field"):
        collect_texts([str(bad)])


def test_resume_falls_back_to_the_newest_intact_checkpoint(setup, caplog):
    tmp_path, data, config = setup
    kw = dict(max_steps=12, save_every=4)
    full = train(cfg(tmp_path, data, config, out=str(tmp_path / "a"), **kw))["history"]
    out = tmp_path / "b"
    train(cfg(tmp_path, data, config, out=str(out), **kw), stop_after=9)  # checkpoints at 4 and 8
    state = out / "checkpoint-000008" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # truncated, as by a full disk
    with caplog.at_level("WARNING"):
        resumed = train(cfg(tmp_path, data, config, out=str(out), **kw))["history"]
    assert "checkpoint-000008" in caplog.text and "unreadable" in caplog.text and "resuming from" in caplog.text
    assert resumed == full  # from step 4, the same losses
    for name in ("checkpoint-000004", "checkpoint-000008", "checkpoint-000012"):
        os.unlink(out / name / "trainer_state.pt")
    with pytest.raises(ValueError, match=r"no intact checkpoint to resume from \(checkpoint-000012: trainer_state.pt is missing"):
        train(cfg(tmp_path, data, config, out=str(out), **kw))
    assert train(cfg(tmp_path, data, config, out=str(out), resume=False, **kw))["history"] == full
