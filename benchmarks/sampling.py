"""Token selection of a batched step (engine.select.sample, the Python path of every batch of two or
more rows) against the selection it replaced, side by side in one run (the same logits and draws,
interleaved, median of N), and the native sampler (interleaved with them too) of a lone row's bursts (sample.cpp) beside them.

    python benchmarks/sampling.py                     # 1, 8 and 16 rows of 51200 logits
    python benchmarks/sampling.py --rows 16 --repeats 50

"before" is the selection as it was until 2026-12-08: torch.topk's own choice among tied values, and
top-p by an (unstable) sort of every candidate. Logits are random normal times a scale: x 6 is
peaked (a few dozen ids carry top-p 0.95's mass, as a code model's next token mostly does), x 1.5 flat
(thousands), and "bf16" the peaked ones rounded to bf16 (ties at the k-th value). Prints the CPU, its
tier and the thread count.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import time

import torch

from codegen.engine import select


def before(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """sample as it was before the tie rule and the tail-first top-p."""
    def warp(x: torch.Tensor) -> torch.Tensor:
        x = x / temperature if temperature != 1.0 else x
        if top_p < 1.0:
            values, order = torch.sort(x, descending=False)
            remove = values.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
            remove[..., -1:] = False
            x = x.masked_fill(remove.scatter(1, order, remove), select.NEG_INF)
        return x

    if top_k and top_k < logits.shape[-1]:
        values, ids = torch.topk(logits, top_k)
        ids, order = ids.sort(dim=-1)
        probs = warp(values.gather(1, order)).softmax(dim=-1)
        return ids.gather(1, select.draw(probs, u)[:, None]).squeeze(1)
    return select.draw(warp(logits).softmax(dim=-1), u)


def native_sampler():
    """(call(logits row, temperature, top_k, top_p, u) -> id) of sample.cpp, or None without the kernels."""
    from codegen.native import kernels

    if not kernels.load():
        return None
    lib = kernels.library(kernels.tier()[0])
    scratch = {}

    def call(row: torch.Tensor, temperature: float, top_k: int, top_p: float, u: float) -> int:
        V = row.shape[0]
        if V not in scratch:
            scratch[V] = ctypes.create_string_buffer(int(lib.codegen_sample_scratch(V)))
        return int(lib.codegen_sample(row.data_ptr(), V, temperature, top_k, top_p, u, scratch[V]))

    return call


def ms(fn) -> float:
    """Milliseconds one call of `fn` took."""
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--vocab", type=int, default=51200)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    if any(r < 1 for r in args.rows) or args.vocab < 2:
        ap.error(f"--rows must be >= 1 and --vocab >= 2, got {args.rows} and {args.vocab}")
    torch.set_num_threads(args.threads)
    from codegen.native import kernels

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, tier {kernels.tier()[0] or 'none'}, threads {args.threads}; torch {torch.__version__}; "
          f"{args.vocab} logits a row, median of {args.repeats}, ms a step")
    native = native_sampler()
    settings = {"top-k 50, top-p 0.95, t 0.8": (0.8, 50, 0.95), "top-p 0.95 alone, t 1": (1.0, 0, 0.95)}
    print(f"{'selection':<30}{'logits':>8}{'rows':>6}{'before':>10}{'now':>9}{'ratio':>8}{'native/row':>12}")
    gen = torch.Generator().manual_seed(0)
    for name, (temperature, top_k, top_p) in settings.items():
        for kind in ("peaked", "flat", "bf16"):
            for rows in args.rows:
                x = torch.randn(rows, args.vocab, generator=gen) * (1.5 if kind == "flat" else 6.0)
                if kind == "bf16":
                    x = x.bfloat16().float()
                u = torch.rand(rows, generator=gen)
                runs = {"before": lambda: before(x, temperature, top_k, top_p, u),
                        "now": lambda: select.sample(x, temperature, top_k, top_p, u)}
                if native is not None:
                    row, uu = x[0].contiguous(), float(u[0])
                    runs["native"] = lambda: native(row, temperature, top_k, top_p, uu)
                times = {k: [] for k in runs}
                for fn in runs.values():  # warm-up
                    fn()
                for _ in range(args.repeats):  # interleaved: the same minutes for each
                    for k, fn in runs.items():
                        times[k].append(ms(fn))
                a, b = statistics.median(times["before"]), statistics.median(times["now"])
                nat = f"{statistics.median(times['native']):.3f}" if native is not None else "-"
                print(f"{name:<30}{kind:>8}{rows:>6}{a:>10.2f}{b:>9.2f}{a / b:>7.2f}x{nat:>12}")


if __name__ == "__main__":
    main()
