"""Server throughput and latency at 1, 4 and 16 concurrent clients, with continuous batching and
with one request at a time (--max-batch 1), over real HTTP on a loopback port.

    python benchmarks/serve.py [--preset 350M-mono] [--tokens 32] [--clients 1 4 16] [--dtype float32] [--quantize int8|int4]
    python benchmarks/serve.py --clients 16 --modes float32 int8     # modes side by side in one run, ratios to the first
    python benchmarks/serve.py --clients 16 --modes float32 int8 int8-bf16   # -bf16: bf16 activations and KV cache

The model is a random checkpoint of the preset shape (the speed does not depend on the weights);
each client sends requests back to back (greedy, `--tokens` new tokens, EOS suppressed by a
min-length-free random model is not guaranteed, so token counts come from the responses' usage).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import sys
import threading
import time

from generate import QUANTIZED, quantized_copy  # (benchmarks/, the script's directory, is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "..", "..", "shared", "data", "codegen-tokenizer")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model, tok, max_batch: int, prefix_cache_mb: int = 0):
    """The app over uvicorn on a loopback port, in this process: (server, thread, batcher, url)."""
    import uvicorn

    from codegen.engine.batcher import ContinuousBatcher
    from codegen.engine.prefix import PrefixCache
    from codegen.server.app import create_app

    batcher = ContinuousBatcher(model, tok, max_batch=max_batch, max_queue=1024,
                                prefix_cache=PrefixCache(prefix_cache_mb << 20) if prefix_cache_mb else None)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(batcher, "bench"), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    batcher.start()
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, batcher, f"http://127.0.0.1:{port}"


async def load(url: str, clients: int, per_client: int, tokens: int) -> dict:
    import httpx

    latencies, generated = [], 0

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal generated
        for j in range(per_client):
            body = {"prompt": f"def function_{i}_{j}(values):\n    \"\"\"Return the sorted unique values.\"\"\"\n",
                    "max_tokens": tokens, "temperature": 0}
            t = time.perf_counter()
            r = await http.post(url + "/v1/completions", json=body)
            latencies.append(time.perf_counter() - t)
            r.raise_for_status()
            generated += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=3600) as http:
        t = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - t
    latencies.sort()
    return {"tok_s": generated / wall, "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], "requests": len(latencies)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="350M-mono")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--quantize", choices=["int8", "int4"], help="weight-only quantized model (int8 activations)")
    ap.add_argument("--tokenizer", default=TOKENIZER)
    ap.add_argument("--modes", nargs="+", choices=["float32", "bfloat16", *QUANTIZED],
                    help="serve each in turn in this run (int8/int4: weight-only quantized from fp32, with fp32 activations; "
                         "-bf16: with bf16 activations and KV cache, as --dtype auto loads them where it picks bf16); "
                         "overrides --dtype/--quantize")
    args = ap.parse_args()

    import copy

    import torch

    import codegen
    from codegen.native import kernels

    torch.manual_seed(0)
    base = codegen.CodeGenForCausalLM(codegen.CodeGenConfig.preset(args.preset)).eval()
    modes = args.modes or [args.quantize or args.dtype]
    if not args.modes and args.quantize:
        base = base.to(getattr(torch, args.dtype))
    tok = codegen.CodeGenTokenizerFast.from_pretrained(args.tokenizer)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or platform.machine())
    kernels.load()
    print(f"machine: {cpu}, {os.cpu_count()} cpus, threads {torch.get_num_threads()}, native tier {kernels.tier()[1]}; "
          f"{args.preset} {' / '.join(modes)}; {args.tokens} new tokens per request, {args.requests_per_client} requests per client")
    print(f"{'mode':<10}{'server':<22}{'clients':>8}{'tokens/s':>10}{'p50 s':>8}{'p95 s':>8}")
    results = {}
    for mode in modes:
        if mode in QUANTIZED:
            model = quantized_copy(base, mode)
        else:
            model = copy.deepcopy(base).to(getattr(torch, mode))
        for label, max_batch in (("one at a time", 1), ("continuous batching", 16)):
            server, thread, batcher, url = start(model, tok, max_batch)
            try:
                for clients in args.clients:
                    r = asyncio.run(load(url, clients, args.requests_per_client, args.tokens))
                    results[(mode, label, clients)] = r
                    print(f"{mode:<10}{label:<22}{clients:>8}{r['tok_s']:>10.1f}{r['p50']:>8.2f}{r['p95']:>8.2f}")
            finally:
                server.should_exit = True
                thread.join(timeout=10)
                batcher.close()
        del model
    top = max(args.clients)
    for mode in modes:
        gain = results[(mode, "continuous batching", top)]["tok_s"] / results[(mode, "one at a time", top)]["tok_s"]
        line = f"{mode}: throughput gain of batching at {top} clients {gain:.2f}x"
        if mode != modes[0]:
            ratio = results[(mode, "continuous batching", top)]["tok_s"] / results[(modes[0], "continuous batching", top)]["tok_s"]
            line += f"; {ratio:.2f}x {modes[0]}'s batched throughput"
        print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
