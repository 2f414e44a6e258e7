"""Checkpoint loading: wall time and peak RSS, ours vs transformers, each in a fresh process.

    python benchmarks/load.py [--preset 350M-mono] [--dtype float16] [--dir DIR]

Writes a random checkpoint of the preset shape (stored in --dtype, as the hub stores fp16) unless
--dir points to one, then loads it with `torch_dtype=auto` and with fp32 in each library.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

from scratch import scratch_dir

CHILD = r"""
import json, sys, time, torch
def hwm():  # peak RSS of this process in MiB (VmHWM starts afresh at exec, unlike ru_maxrss)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
lib, path, dtype = sys.argv[1:4]
torch.set_num_threads(int(sys.argv[4]))
import codegen, transformers  # both imported, so the baseline is the same
base = hwm()
t = time.perf_counter()
if lib == "ours":
    import codegen
    m = codegen.CodeGenForCausalLM.from_pretrained(path, torch_dtype=dtype if dtype == "auto" else getattr(torch, dtype))
else:
    import transformers
    m = transformers.CodeGenForCausalLM.from_pretrained(path, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
elapsed = time.perf_counter() - t
with torch.no_grad():
    m(torch.tensor([[1, 2, 3]]))
peak = hwm()
print(json.dumps({"seconds": elapsed, "peak_rss_mib": peak, "import_rss_mib": base,
                  "dtype": str(next(m.parameters()).dtype)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="350M-mono")
    ap.add_argument("--dtype", default="float16", help="storage dtype of the written checkpoint")
    ap.add_argument("--dir", help="an existing checkpoint to load instead")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    import torch

    import codegen

    path = args.dir
    if path is None:
        path = scratch_dir("load")
        torch.manual_seed(0)
        with torch.device("cpu"):
            model = codegen.CodeGenForCausalLM(codegen.CodeGenConfig.preset(args.preset)).to(getattr(torch, args.dtype))
        model.save_pretrained(path)
        del model
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, threads {args.threads}, torch {torch.__version__}")
    print(f"checkpoint: {path} ({size / 1e6:.0f} MB on disk, stored {args.dtype})")
    print(f"{'library':<14}{'torch_dtype':<13}{'load s':>8}{'peak RSS MiB':>13}{'of which import':>17}  params dtype")
    for dtype in ("auto", "float32"):
        for lib in ("ours", "transformers"):
            r = subprocess.run([sys.executable, "-c", CHILD, lib, path, dtype, str(args.threads)],
                               capture_output=True, text=True)
            if r.returncode:
                print(f"{lib:<14}{dtype:<13} failed: {r.stderr.strip().splitlines()[-1]}")
                continue
            res = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{lib:<14}{dtype:<13}{res['seconds']:>8.2f}{res['peak_rss_mib']:>13.0f}{res['import_rss_mib']:>17.0f}  {res['dtype']}")


if __name__ == "__main__":
    main()
