"""Tensor parallelism on this machine: peak memory per rank, decode speed, and the share of a decode
step spent in the collectives, TP=1 against TP=2 (two ranks over gloo on loopback).

    python benchmarks/parallel.py                                   # 2B-mono shape, bfloat16
    python benchmarks/parallel.py --preset 350M-mono --dtype float32 --tokens 32

Each case runs in fresh processes (TP=2 under torchrun, as users start it), loading as the commands
do (`load_for_inference`), then greedy completions of a short prompt through the engine: one
token (the prefill) and 1 + --tokens tokens; the decode figures are the difference. On every rank
torch.distributed's all_reduce / all_gather are timed (time inside them includes waiting for the
other rank). Peak = VmHWM (anonymous memory and mapped files), after generation, per rank. The
random checkpoint (bf16, written without a float model in memory) goes to --dir (2B: ~5.6 GB).
Threads: TP=1 uses every core; each TP=2 rank half of them (what --tp sets when --threads is not given).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from scratch import scratch_dir  # noqa: E402
TOKENIZER = os.path.join(HERE, "..", "..", "shared", "data", "codegen-tokenizer")

CHILD = r"""
import json, os, sys, time
import torch, torch.distributed as dist
path, dtype, tokens, tp, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
spent = {"s": 0.0, "calls": 0}
def timed(fn):
    def run(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent["s"] += time.perf_counter() - t
            spent["calls"] += 1
    return run
dist.all_reduce, dist.all_gather = timed(dist.all_reduce), timed(dist.all_gather)
from codegen.completion import CompletionOptions, complete
from codegen.loading import load_for_inference
def peak():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
def body(model, tok, layout):
    prompt = "def fibonacci(n):\n    "
    def run(n):
        c0, s0, t = spent["calls"], spent["s"], time.perf_counter()
        ids = complete(model, tok, prompt, CompletionOptions(max_new_tokens=n, min_new_tokens=n, temperature=0, stop=()))[0].token_ids
        return time.perf_counter() - t, spent["s"] - s0, spent["calls"] - c0, ids
    run(2)  # warm-up
    one = min((run(1) for _ in range(2)), key=lambda r: r[0])
    many = min((run(1 + tokens) for _ in range(2)), key=lambda r: r[0])
    step = (many[0] - one[0]) / tokens
    result.update(step_s=step, tok_s=1 / step, coll_step_s=(many[1] - one[1]) / tokens,
                  coll_calls_step=(many[2] - one[2]) / tokens, ids=many[3], threads=torch.get_num_threads())
    return 0
result = {}
t = time.perf_counter()
if tp == 1:
    model, tok = load_for_inference(path, dtype=dtype)
    result["load_s"] = time.perf_counter() - t
    result["load_peak_mib"] = peak()
    body(model, tok, None)
else:
    from codegen.parallel.run import run_ranks
    def load(layout):
        m = load_for_inference(path, dtype=dtype, layout=layout)
        result["load_s"] = time.perf_counter() - t
        result["load_peak_mib"] = peak()
        return m
    run_ranks(load, body, tp=tp)
result["peak_mib"] = peak()
result["rank"] = int(os.environ.get("RANK", "0"))
with open(f"{out}.{result['rank']}", "w") as fh:
    json.dump(result, fh)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="2B-mono")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--tokens", type=int, default=8, help="decode steps timed (default 8)")
    ap.add_argument("--dir", help="where the random checkpoint is written (kept; reused when present)")
    args = ap.parse_args()

    from conversation import cpu_name

    from codegen.native import kernels

    kernels.load()
    root = args.dir or scratch_dir("tp")
    path = os.path.join(root, f"{args.preset}-{args.dtype}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        subprocess.run([sys.executable, "-m", "codegen", "init", path, "--preset", args.preset, "--dtype", args.dtype,
                        "--tokenizer", TOKENIZER], check=True)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; native tier {kernels.tier()[0]}; {args.preset} shape, random "
          f"weights, {args.dtype}; greedy, {args.tokens} decode steps after a 9-token prompt")
    rows = {}
    script = os.path.join(root, "child.py")
    with open(script, "w") as fh:
        fh.write(CHILD)
    for tp in (1, 2):
        out = os.path.join(root, f"result-tp{tp}")
        cmd = [sys.executable, script] if tp == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", script]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        subprocess.run(cmd + [path, args.dtype, str(args.tokens), str(tp), out], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if tp == 2 else None)
        rows[tp] = [json.load(open(f"{out}.{r}")) for r in range(tp)]
    same = rows[1][0]["ids"] == rows[2][0]["ids"]
    print(f"{'':8}{'ranks':>6}{'threads/rank':>14}{'load s':>8}{'peak MiB/rank':>15}{'decode tok/s':>14}"
          f"{'collectives ms/step':>21}{'share':>7}")
    for tp, ranks in rows.items():
        d = ranks[0]
        peaks = "/".join(f"{r['peak_mib']:.0f}" for r in ranks)
        coll = d["coll_step_s"] * 1e3
        print(f"{'TP=' + str(tp):8}{tp:>6}{d['threads']:>14}{max(r['load_s'] for r in ranks):>8.1f}{peaks:>15}"
              f"{d['tok_s']:>14.2f}{coll:>21.1f}{(coll / 1e3 / d['step_s'] if tp > 1 else 0):>7.0%}")
    r1, r2 = rows[1][0], rows[2]
    print(f"TP=2 / TP=1: peak per rank {max(r['peak_mib'] for r in r2) / r1['peak_mib']:.2f}x, decode "
          f"{r2[0]['tok_s'] / r1['tok_s']:.2f}x; collectives per step on rank 0: {r2[0]['coll_calls_step']:.0f} "
          f"({r2[0]['coll_step_s'] * 1e3:.1f} ms of {r2[0]['step_s'] * 1e3:.1f}); greedy ids equal: {same}")


if __name__ == "__main__":
    main()
