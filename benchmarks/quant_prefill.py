"""Quantized prefill routes side by side, per layer: the native kernels 16 rows a pass, the native
int4 GEMM (qgemm.cpp), and the blockwise route (int4: dequantized blocks into torch's GEMM; int8:
torch's integer GEMM), for 17-2048 rows of 350M's shapes.

    python benchmarks/quant_prefill.py [--rows 17 32 64 128 2048] [--repeats 5]

It picks INT4_GEMM_ROWS and INT4_PASS_ROWS in codegen/quant/linear.py. The CPU, tier and threads are
printed.
"""

from __future__ import annotations

import argparse
import time

import torch


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[17, 32, 64, 128, 2048])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from codegen.native import kernels
    from codegen.quant import QuantLinear, QuantSpec

    from conversation import cpu_name

    tier, _ = kernels.tier()
    print(f"cpu: {cpu_name()}, native tier {tier or 'none'}; threads {torch.get_num_threads()}")
    print(f"{'format':<7}{'in x out':>12}{'rows':>6}{'passes ms':>11}{'int4 GEMM ms':>14}{'blockwise ms':>14}")
    torch.manual_seed(0)
    for fmt in ("int4", "int8"):
        spec = QuantSpec.parse(fmt)
        for k, n in ((1024, 4096), (4096, 1024), (1024, 3072)):
            q = QuantLinear.from_linear(torch.nn.Linear(k, n), spec)
            for m in args.rows:
                x = torch.randn(m, k)

                def passes():
                    for r in range(0, m, 16):
                        kernels.quant_mm(q.weight, q.weight_scale, x[r:r + 16].contiguous(), q.bias, spec.bits,
                                         spec.group_size)

                a, b = best(passes, args.repeats), best(lambda: q._blockwise(x), args.repeats)
                g = (f"{best(lambda: kernels.q4_gemm(q.weight, q.weight_scale, x, q.bias, spec.group_size), args.repeats) * 1e3:>14.2f}"
                     if spec.bits == 4 else f"{'-':>14}")
                print(f"{fmt:<7}{f'{k}x{n}':>12}{m:>6}{a * 1e3:>11.2f}{g}{b * 1e3:>14.2f}")


if __name__ == "__main__":
    main()
