"""The `codegen` console script: info and init, with one-line errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from codegen.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "codegen.cli", *args], capture_output=True, text=True, timeout=300)


def test_init_then_info(tmp_path, capsys):
    assert main(["init", str(tmp_path / "m"), "--preset", "tiny", "--seed", "3"]) == 0
    assert main(["info", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "parameters  6,704,128 in 21 tensors" in out
    assert "layout      safetensors: 1 file(s)" in out
    assert "n_layer=2 n_embd=64 n_head=4 head_dim=16 rotary_dim=8" in out
    assert main(["info", "--json", str(tmp_path / "m")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 6_704_128 and info["dtypes"] == {"float32": 6_704_128}


def test_info_sharded_bin_checkpoint(tmp_path, capsys):
    from codegen import CodeGenConfig, CodeGenForCausalLM

    m = CodeGenForCausalLM(CodeGenConfig.preset("tiny")).half()
    m.save_pretrained(tmp_path, safe_serialization=False, max_shard_size="5MB")
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "bin-sharded: 4 file(s)" in out and "pytorch_model-00001-of-00004.bin" in out
    assert "float16 (6,704,128); config says float16" in out


@pytest.mark.parametrize("args, message", [
    (["info", "/nonexistent/dir"], "codegen: error: /nonexistent/dir: no such checkpoint directory"),
    (["info", "/"], "codegen: error: /: no config.json found"),
])
def test_errors_are_one_line(args, message):
    r = run(*args)
    assert r.returncode == 1
    assert r.stderr.startswith(message) and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


TOKENIZER_ARGS = ["--model", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "codegen-tokenizer")]
needs_tokenizer = pytest.mark.skipif(not os.path.isdir(TOKENIZER_ARGS[1]), reason="CodeGen tokenizer files not in ../shared")


@needs_tokenizer
def test_tokenize_and_detokenize(capsys, monkeypatch):
    assert main(["tokenize", "def f(x):\n    return x", *TOKENIZER_ARGS]) == 0
    assert json.loads(capsys.readouterr().out) == [4299, 277, 7, 87, 2599, 198, 50284, 7783, 2124]
    monkeypatch.setattr(sys, "stdin", io.StringIO("    return x"))
    assert main(["tokenize", "--tokens", *TOKENIZER_ARGS]) == 0
    assert json.loads(capsys.readouterr().out) == ["    ", "return", "\u0120x"]
    assert main(["detokenize", "4299, 277, 7, 87, 2599, 198, 50284, 7783, 2124", *TOKENIZER_ARGS]) == 0
    assert capsys.readouterr().out == "def f(x):\n    return x"
    assert main(["detokenize", "[15496, 995, 50256]", "--skip-special-tokens", *TOKENIZER_ARGS]) == 0
    assert capsys.readouterr().out == "Hello world"


@needs_tokenizer
@pytest.mark.parametrize("args, message", [
    (["detokenize", "1 99999"], "token id 99999 is outside the tokenizer's vocabulary [0, 50295)"),
    (["detokenize", "a b"], "IDS must be integers separated by spaces or commas"),
])
def test_token_cli_errors(args, message):
    r = run(*args, *TOKENIZER_ARGS)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_tokenize_without_tokenizer_files(tmp_path):
    r = run("tokenize", "x", "--model", str(tmp_path))
    assert r.returncode == 1 and "no tokenizer files found" in r.stderr


@needs_tokenizer
def test_complete_end_to_end(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "m")
    assert main(["init", out, "--tokenizer", TOKENIZER_ARGS[1]]) == 0
    capsys.readouterr()
    assert main(["complete", "def fibonacci(n):", "--model", out, "--max-new-tokens", "8", "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert greedy.startswith("def fibonacci(n):") and greedy.endswith("\n")
    assert main(["complete", "def fibonacci(n):", "--model", out, "--max-new-tokens", "8", "--temperature", "0",
                 "--stream", "--threads", "1"]) == 0
    assert capsys.readouterr().out == greedy
    (tmp_path / "p.py").write_text("import os\n")
    assert main(["complete", "--file", str(tmp_path / "p.py"), "--model", out, "--max-new-tokens", "4", "--n", "2",
                 "--seed", "1", "--no-echo"]) == 0
    text = capsys.readouterr().out
    assert "--- completion 1 of 2" in text and "--- completion 2 of 2" in text and "import os" not in text
    monkeypatch.setattr(sys, "stdin", io.StringIO("x = "))
    assert main(["complete", "--model", out, "--max-new-tokens", "3", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("x = ")


@needs_tokenizer
@pytest.mark.parametrize("extra, message", [
    (["--max-new-tokens", "5000"], "more than the model's context window (n_positions) of 2048"),
    (["--top-p", "2"], "top_p must be in (0, 1], got 2.0"),
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--file", "/nonexistent.py"], "--file /nonexistent.py: No such file or directory"),
])
def test_complete_errors(tmp_path, extra, message):
    out = str(tmp_path / "m")
    assert main(["init", out, "--tokenizer", TOKENIZER_ARGS[1]]) == 0
    args = ["complete"] + ([] if "--file" in extra else ["x"]) + ["--model", out, *extra]
    r = run(*args)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_complete_missing_model():
    r = run("complete", "x", "--model", "/nonexistent/model")
    assert r.returncode == 1 and "/nonexistent/model: no such checkpoint directory" in r.stderr
