"""Sandbox throughput: HumanEval's 164 canonical solutions scored in the sandbox, programs per second.

    python benchmarks/sandbox.py [--workers N] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from codegen.eval import humaneval, sandbox

    problems = humaneval.load_problems()
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()] * args.repeat
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus; workers {args.workers}")
    print(f"isolation: {sandbox.describe_isolation()}")
    t = time.perf_counter()
    results, report = humaneval.score(samples, problems, ks=[1], workers=args.workers, progress=False)
    wall = time.perf_counter() - t
    print(f"{len(samples)} programs in {wall:.1f} s: {len(samples) / wall:.1f} programs/s; pass@1 {report.pass_at_k['pass@1']:.3f}")


if __name__ == "__main__":
    main()
