"""Matrix-vector products of a decode step: torch's against every native tier this CPU runs, side by
side in one run (the same weights, best of N), in GB/s of weights streamed (for int8 / int4: the
packed weights and their scales). The quantized rows (int8, one scale per row; int4, groups of 32)
quantize the activations to int8 first, as the model's products do; torch has no such product (-).

    python benchmarks/products.py                 # 8192 x 2048 (a 350M-shape fc_in is 4096 x 1024)
    python benchmarks/products.py --n 4096 --k 1024 --repeats 50
    python benchmarks/products.py --n 131072 --k 4096 --rows 1 8   # 512 MB int8: past a large L3; 1 and 8 rows

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
    ap.add_argument("--rows", type=int, nargs="+", default=[1], help="activation rows of the quantized products (1-16)")
    args = ap.parse_args()
    if not all(1 <= m <= 16 for m in args.rows):
        ap.error(f"--rows takes 1 to 16 activation rows, not {args.rows}")
    torch.set_num_threads(args.threads)
    from codegen.native import kernels

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    tiers = kernels.runnable_tiers()
    print(f"machine: {cpu}, tier {kernels.cpu_tier()}, threads {args.threads}; torch {torch.__version__}; "
          f"W {args.n} x {args.k}, best of {args.repeats}")
    print(f"{'dtype':<10}{'torch mv':>10}" + "".join(f"{t:>12}" for t in tiers) + "   (GB/s)")
    floats(args, tiers)
    quantized(args, tiers)


def rate(fn, nbytes: int, repeats: int) -> float:
    """GB/s of `nbytes` streamed by fn's fastest of `repeats` calls (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e9


def show(name: str, row: list) -> None:
    """One table row: torch's figure (None: torch has no such product) and each tier's."""
    torch_col = f"{row[0]:>10.1f}" if row[0] is not None else f"{'-':>10}"
    print(f"{name:<10}{torch_col}" + "".join(f"{r:>12.1f}" for r in row[1:]))


def floats(args, tiers: list[str]) -> None:
    """The fp32 and bf16 rows: torch.mv and codegen_f32_gemv / codegen_bf16_gemv of each tier."""
    from codegen.native import kernels

    for dtype in (torch.float32, torch.bfloat16):
        w, x = torch.randn(args.n, args.k).to(dtype), torch.randn(args.k).to(dtype)
        y = torch.empty(args.n, dtype=dtype)
        nbytes = w.numel() * w.element_size()
        row = [rate(lambda: torch.mv(w, x), nbytes, args.repeats)]
        for tier in tiers:
            lib = kernels.library(tier)
            fn = lib.codegen_f32_gemv if dtype == torch.float32 else lib.codegen_bf16_gemv
            row.append(rate(lambda: fn(w.data_ptr(), x.data_ptr(), None, y.data_ptr(), args.n, args.k, args.threads), nbytes, args.repeats))
        show(str(dtype).removeprefix("torch."), row)


def quantized(args, tiers: list[str]) -> None:
    """The int8 and int4 (group 32) rows: codegen_q8_mm / codegen_q4_mm of each tier, per --rows."""
    from codegen.native import kernels
    from codegen.quant import formats

    w = torch.randn(args.n, args.k)
    q8, s8 = formats.quantize_int8(w)
    sums = q8.sum(1, dtype=torch.int32)
    q4, s4 = formats.quantize_int4(w, 32)
    del w
    q4 = formats.to_kernel_layout(q4)
    kp = formats.padded(args.k, 32)
    for m in args.rows:
        x, y = torch.randn(m, args.k), torch.empty(m, args.n)
        for bits, q, s in ((8, q8, s8), (4, q4, s4)):
            nbytes = q.numel() + s.numel() * 4
            row = [None]
            for tier in tiers:
                lib = kernels.library(tier)
                ptrs = (q.data_ptr(), s.data_ptr(), x.data_ptr(), None, y.data_ptr(), m, args.n, args.k)
                if bits == 8:  # with the row sums the model's batched products pass
                    row.append(rate(lambda: lib.codegen_q8_mm(ptrs[0], ptrs[1], sums.data_ptr(), *ptrs[2:], args.threads),
                                    nbytes, args.repeats))
                else:
                    row.append(rate(lambda: lib.codegen_q4_mm(*ptrs, kp, 32, args.threads), nbytes, args.repeats))
            show(f"int{bits} x{m}", row)


if __name__ == "__main__":
    main()
