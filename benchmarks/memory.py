"""Peak resident memory of loading a checkpoint and generating, each case in a fresh process: any preset
shape (2B and up included: the random checkpoint is written in bf16 without building a float model in
this process), float and quantized (`codegen quantize`), beside the cost of importing torch alone.

    python benchmarks/memory.py                                  # 350M-mono: bfloat16, int8, int4
    python benchmarks/memory.py --preset 2B-mono --dtype int4    # the int4 2B figure

Each child loads as the commands do (`load_for_inference`).
Peak = VmHWM of the child (anonymous memory and mapped files together), in MiB; the checkpoints go to
--dir (default a temporary directory; 2B-mono needs about 7 GB there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys

from scratch import scratch_dir

CHILD = r"""
import json, sys, torch
path, dtype, batch, prompt, new, threads = sys.argv[1:7]
torch.set_num_threads(int(threads))
from codegen.loading import load_for_inference
from codegen.native import kernels
kernels.load()
m = load_for_inference(path, dtype="bfloat16" if dtype == "bfloat16" else "float32")[0]  # as the commands load
x = torch.randint(0, 50000, (int(batch), int(prompt)))
with torch.inference_mode():
    m.generate(x, max_new_tokens=int(new), min_new_tokens=int(new), pad_token_id=0, do_sample=False)
print(json.dumps({"peak_mib": next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024}))
"""

BASELINE = r"""
import json, torch, codegen
from codegen.native import kernels
kernels.load()
print(json.dumps({"peak_mib": next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024}))
"""


def random_checkpoint(preset: str, path: str) -> None:
    """A random bf16 checkpoint of `preset` at `path`, built on the meta device and filled layer by layer."""
    import torch

    import codegen
    from codegen.model import no_init_weights

    torch.manual_seed(0)
    with torch.device("meta"), no_init_weights():
        model = codegen.CodeGenForCausalLM(codegen.CodeGenConfig.preset(preset))
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(path)
    demo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "codegen", "demo")
    for name in ("vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(demo, name)):
            shutil.copy(os.path.join(demo, name), path)  # the commands load a tokenizer beside the weights


def peak(code: str, *args: str) -> float:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"child failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="350M-mono")
    ap.add_argument("--dtype", nargs="+", default=["bfloat16", "int8", "int4"], choices=["bfloat16", "float32", "int8", "int4"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--dir", help="where the checkpoints are written (default: a temporary directory)")
    args = ap.parse_args()

    from codegen.native import kernels
    from codegen.quant import QuantSpec
    from codegen.quant.convert import quantize_checkpoint

    kernels.load()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cpus, threads {args.threads}; native tier {kernels.tier()[1]}")
    root = args.dir or scratch_dir("memory")
    base = os.path.join(root, f"{args.preset}-bf16")
    if not os.path.exists(os.path.join(base, "config.json")):
        random_checkpoint(args.preset, base)
    baseline = peak(BASELINE)
    print(f"importing torch and codegen (native kernels loaded): {baseline:.0f} MiB")
    print(f"{args.preset}, batch {args.batch}, prompt {args.prompt}, {args.new} new tokens:")
    print(f"{'weights':<10}{'checkpoint MiB':>16}{'peak MiB':>10}{'less import':>13}")
    for dtype in args.dtype:
        path = base
        if dtype in ("int8", "int4"):
            path = os.path.join(root, f"{args.preset}-{dtype}")
            if not os.path.exists(os.path.join(path, "config.json")):
                quantize_checkpoint(base, path, QuantSpec.parse(dtype), progress=False)
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors")) / 2**20
        p = peak(CHILD, path, dtype, str(args.batch), str(args.prompt), str(args.new), str(args.threads))
        print(f"{dtype:<10}{size:>16.0f}{p:>10.0f}{p - baseline:>13.0f}")


if __name__ == "__main__":
    main()
