"""The native decode step of this tree against a git revision's, A/B interleaved in one process.

    python benchmarks/native_ab.py --against HEAD~1                  # int8 and int4, 350M shape, batch 1 greedy
    python benchmarks/native_ab.py --against 57c3284 --dtype float32 int4-bf16 --repeats 12 --isa avx2

The revision's kernel sources (src/codegen/native's .cpp and .h files, `git show REV:...`) are
compiled for the same tier with the same flags; the two libraries' whole-step entry points
(codegen_decode_step) take turns under one model per dtype, round by round: a prefill (1 new token)
and a full generation each, as benchmarks/generate.py times them, so both sides see the same minutes
of a shared host's drifting bandwidth. Everything else (the prompt's prefill, sampling in Python)
runs this tree's code on both sides. Prints the CPU, the tier, the thread count, each side's decode
steps/s (median over rounds), their ratio, and whether both gave the same tokens. The two
DecodeArgs layouts must be equal: a revision with another ABI cannot be A/B'd this way.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import os
import platform
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import QUANTIZED, interleave, quantized_copy  # noqa: E402
from scratch import scratch_dir  # noqa: E402


def revision_step(rev: str, tier: str):
    """The revision's codegen_decode_step, compiled for `tier`, with its DecodeArgs layout string."""
    from codegen.native import kernels

    here = os.path.dirname(os.path.abspath(kernels.__file__))
    out = scratch_dir("native-ab")
    for path in kernels.SOURCES + kernels.HEADERS:
        name = os.path.relpath(path, here)
        shown = subprocess.run(["git", "show", f"{rev}:src/codegen/native/{name}"], capture_output=True,
                               cwd=here, timeout=60)
        if shown.returncode != 0:
            sys.exit(f"git show {rev}:src/codegen/native/{name} failed: {shown.stderr.decode().strip()}")
        with open(os.path.join(out, name), "wb") as fh:
            fh.write(shown.stdout)
    lib = ctypes.CDLL(kernels.build(kernels._compiler(), tier, source_dir=out))
    step = lib.codegen_decode_step
    step.argtypes, step.restype = [ctypes.c_void_p], ctypes.c_int
    lib.codegen_decode_layout.restype = ctypes.c_char_p
    return step, lib.codegen_decode_layout().decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", required=True, help="a git revision (HEAD~1, a commit, a branch)")
    ap.add_argument("--dtype", nargs="+", default=["int8", "int4"], choices=["float32", "bfloat16", *QUANTIZED])
    ap.add_argument("--preset", default="350M-mono")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--isa", choices=["generic", "avx2", "avxvnni", "avx512", "avx512bf16"],
                    help="force this tier (default: the CPU's highest)")
    args = ap.parse_args()
    if args.isa:
        os.environ["CODEGEN_ISA"] = args.isa
    torch.set_num_threads(args.threads)
    import codegen
    from codegen.native import kernels

    if not kernels.load() or kernels.decode_step is None:
        sys.exit(f"no native decode step here: {kernels.tier()[1]}")
    theirs, layout = revision_step(args.against, kernels.tier()[0])
    if layout != kernels.decode_layout:
        sys.exit(f"{args.against}'s DecodeArgs differ from this tree's: its step cannot run under this tree's caller")
    steps = {"this tree": kernels.decode_step, args.against: theirs}
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cpus, threads {args.threads}; tier {kernels.tier()[1]}; shape {args.preset}, "
          f"prompt {args.prompt}, new {args.new}, batch 1 greedy; median of {args.repeats} interleaved rounds")

    torch.manual_seed(0)
    ours32 = codegen.CodeGenForCausalLM(codegen.CodeGenConfig.preset(args.preset)).eval()
    x = torch.randint(0, 50000, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    print(f"{'dtype':<11}{'this tree':>12}{args.against[:12]:>14}{'ratio':>8}  tokens (steps/s)")
    for dtype in args.dtype:
        if dtype == "float32":
            model = ours32
        else:
            model = copy.deepcopy(ours32).to(torch.bfloat16) if dtype == "bfloat16" else quantized_copy(ours32, dtype)
        outs = {}

        def runner(name):
            def run(n):
                kernels.decode_step = steps[name]
                outs[name] = model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
            return run

        try:
            r = interleave({name: runner(name) for name in steps}, 1, args.new, args.repeats)
        finally:
            kernels.decode_step = steps["this tree"]
        a, b = (r[name]["steps_s"] for name in steps)
        same = "equal" if torch.equal(*outs.values()) else "DIFFER"
        print(f"{dtype:<11}{a:>12.1f}{b:>14.1f}{a / b:>7.2f}x  {same}")


if __name__ == "__main__":
    main()
