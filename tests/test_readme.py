"""Every command of the README's shell blocks runs as written, on a tiny random checkpoint, and every
Python block executes. Substituted: the model directory (DIR, path/to/codegen-350M-mono), the port,
the data files the commands name (made here), and sizes a CPU test can afford (fewer problems,
samples, steps and tokens) — never a flag's spelling or meaning."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time

import pytest

from helpers import SHARED, TOKENIZER_DIR

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
MTPB = os.path.join(SHARED, "data", "mtpb", "mtpb.jsonl")
pytestmark = pytest.mark.skipif(not (os.path.isdir(TOKENIZER_DIR) and os.path.isfile(MTPB)),
                                reason="CodeGen tokenizer files or MTPB not in ../shared")
CODE = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"
# Sizes only: (pattern in the command, replacement or extra arguments).
SMALLER = [
    (r"codegen eval humaneval --model", lambda c: c.replace("--n 20", "--n 2") + " --limit 2 --max-new-tokens 8"),
    (r"codegen eval mtpb", lambda c: c.replace("--limit 3", "--limit 1")),
    (r"codegen train", lambda c: re.sub(r"--max-steps \d+", "", c) + " --max-steps 2 --seq-len 32 --batch-size 2 --eval-fraction 0"),
    (r"codegen complete", lambda c: c + " --max-new-tokens 16"),
    (r"torchrun --nproc-per-node 2 -m codegen complete", lambda c: c + " --max-new-tokens 16"),
    (r"torchrun --nproc-per-node 2 -m codegen eval humaneval",
     lambda c: c.replace("--num-samples 20", "--num-samples 2") + " --limit 2 --max-new-tokens 8"),
    (r"codegen chat", lambda c: c + " --max-new-tokens 8"),
]


def blocks(kind: str) -> list[str]:
    text = open(README, encoding="utf-8").read()
    return re.findall(rf"```{kind}\n(.*?)```", text, flags=re.S)


def commands() -> list[str]:
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip() if "  #" in line else line.strip()
            for part in line.split(" && "):
                if part.startswith(("codegen ", "curl ", "torchrun ")):
                    out.append(part)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    from codegen.cli import main

    assert main(["init", str(root / "model"), "--tokenizer", TOKENIZER_DIR]) == 0
    (root / "prompt.py").write_text("def fibonacci(n):\n")
    (root / "turns.txt").write_text("Assign 3 to x.\n\nPrint x.\n")
    (root / "before.py").write_text("def add(a, b):\n    ")
    (root / "after.py").write_text("\n    return result\n")
    from test_codegen2 import codegen2_tokenizer_files

    import codegen

    model2 = codegen.CodeGenForCausalLM(codegen.CodeGenConfig(vocab_size=51200, n_embd=64, n_layer=1, n_head=8,
                                                              rotary_dim=4, n_positions=256, mp_num=8))
    model2.save_pretrained(root / "model2")
    codegen2_tokenizer_files(root / "model2")
    for d in ("my_project", "src/pkg", "held_out"):
        (root / d).mkdir(parents=True)
        for i in range(3):
            (root / d / f"m{i}.py").write_text(CODE.replace("add", f"add{i}") * (60 if d == "held_out" else 1))
    (root / "code.jsonl").write_text("".join('{"text": %s}\n' % __import__("json").dumps(CODE) for _ in range(4)))
    os.symlink(MTPB, root / "mtpb.jsonl")
    return root


def test_the_readme_names_the_commands_it_shows():
    cmds = commands()
    assert any(c.startswith("codegen serve") for c in cmds) and any(c.startswith("curl") for c in cmds)
    assert sum(c.startswith("codegen ") for c in cmds) >= 12


def test_every_readme_command_runs(workdir):
    port = str(free_port())
    env = dict(os.environ, CODEGEN_PROGRESS_INTERVAL="600")
    server = None
    try:
        for cmd in commands():
            cmd = cmd.replace("path/to/codegen-350M-mono", "model").replace(" DIR2", " model2").replace(" DIR", " model")
            cmd = cmd.replace("8000", port)
            for pattern, smaller in SMALLER:
                if cmd.startswith(pattern):
                    cmd = smaller(cmd)
            background = cmd.endswith("&")
            argv = shlex.split(cmd.rstrip("&"))
            if argv[0] == "codegen":
                argv = [sys.executable, "-m", "codegen.cli", *argv[1:]]
            elif argv[0] == "torchrun":  # torch's launcher, from this interpreter's torch
                argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
            if argv[1:4] == ["-m", "codegen.cli", "eval"] and "--samples" in argv and not (workdir / "samples.jsonl").exists():
                os.link(workdir / "runs" / "he" / "samples.jsonl", workdir / "samples.jsonl")  # what the line before wrote
            if background:
                server = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                deadline = time.time() + 60
                while subprocess.run(["curl", "-sf", f"localhost:{port}/health"], capture_output=True).returncode:
                    assert time.time() < deadline and server.poll() is None, "the server did not start"
                    time.sleep(0.2)
                continue
            done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{cmd}\n{done.stderr[-3000:]}"
            if argv[0] == "curl":
                assert '"text_completion"' in done.stdout, done.stdout
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


def test_every_readme_python_block_runs(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    namespace = {"DIR": str(workdir / "model")}
    for block in blocks("python"):
        exec(compile(block.replace('"path/to/codegen-350M-mono"', "DIR"), "README.md", "exec"), namespace)
    assert namespace["out"].logits.shape[-1] == 51200
