"""Matrix-vector products of a decode step: torch's against every native tier this CPU runs, side by
side in one run (the same weights, best of N), in GB/s of weights streamed.

    python benchmarks/kernels.py                 # 8192 x 2048 (a 350M-shape fc_in is 4096 x 1024)
    python benchmarks/kernels.py --n 4096 --k 1024 --repeats 50

Prints the CPU, its tier and the thread count. A matrix that fits in the last-level cache reads
faster than memory: use one larger than it for the memory-bound figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8192, help="rows (output features)")
    ap.add_argument("--k", type=int, default=2048, help="columns (input features)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from codegen.native import kernels

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    tiers = [t for t in kernels.TIERS if kernels.TIERS.index(t) <= kernels.TIERS.index(kernels.cpu_tier())]
    print(f"machine: {cpu}, tier {kernels.cpu_tier()}, threads {args.threads}; torch {torch.__version__}; "
          f"W {args.n} x {args.k}, best of {args.repeats}")
    print(f"{'dtype':<10}{'torch mv':>10}" + "".join(f"{t:>12}" for t in tiers) + "   (GB/s)")
    for dtype in (torch.float32, torch.bfloat16):
        w, x = torch.randn(args.n, args.k).to(dtype), torch.randn(args.k).to(dtype)
        y = torch.empty(args.n, dtype=dtype)
        nbytes = w.numel() * w.element_size()

        def rate(fn) -> float:
            fn()
            best = float("inf")
            for _ in range(args.repeats):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            return nbytes / best / 1e9

        row = [rate(lambda: torch.mv(w, x))]
        for tier in tiers:
            lib = kernels.library(tier)
            fn = lib.codegen_f32_gemv if dtype == torch.float32 else lib.codegen_bf16_gemv
            row.append(rate(lambda: fn(w.data_ptr(), x.data_ptr(), None, y.data_ptr(), args.n, args.k, args.threads)))
        name = str(dtype).removeprefix("torch.")
        print(f"{name:<10}" + "".join(f"{r:>10.1f}" if i == 0 else f"{r:>12.1f}" for i, r in enumerate(row)))


if __name__ == "__main__":
    main()
