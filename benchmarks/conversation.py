"""Conversations and the prefix cache: time to the first token, with the KV kept and without.

    python benchmarks/conversation.py [--preset 350M-mono] [--dtype float32] [--turns 10] [--turn-tokens 48]
                                      [--prompt-tokens 1500] [--extra-tokens 20] [--repeats 3]

1. A `ChatSession` (what `codegen chat` drives), `--turns` turns of `--turn-tokens` new tokens each
   (no truncation, EOS suppressed, so every turn writes the same amount): time from asking for a
   turn to its first token, per turn, with the session's prefix cache and with it off
   (cache_bytes=0: every turn prefills the whole history). Target: turn 10 <= 1.25x turn 1.
2. The server (`codegen serve`'s app over real HTTP): a `--prompt-tokens` prompt is sent once, then
   the same prompt plus `--extra-tokens` tokens, streamed; time to the first streamed token of
   that second request with the prefix cache on and off (`--prefix-cache-mb 0`), the two servers
   alternating, medians of `--repeats`. Target: on <= 0.25x off.

The model is a random checkpoint of the preset shape (speed does not depend on the weights). The
CPU, the native tier, threads and dtype are printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "..", "..", "shared", "data", "codegen-tokenizer")
sys.path.insert(0, HERE)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), platform.machine())
    except OSError:
        return platform.processor() or platform.machine()


def session_ttft(model, tok, turns: int, turn_tokens: int, cached: bool) -> list[float]:
    from codegen.chat.session import ChatSession
    from codegen.engine import SamplingParams

    params = SamplingParams(max_new_tokens=turn_tokens, min_new_tokens=turn_tokens, temperature=0.0)
    session = ChatSession(model, tok, params, keep_kv=cached)
    words = ["Load the list of numbers from the input.", "Remove the duplicates.", "Sort the numbers in place.",
             "Compute the running sum.", "Keep the values above the mean.", "Square each value.",
             "Group the values by parity.", "Count each group.", "Format the counts as text.", "Print the result."]
    times = []
    for i in range(turns):
        t = time.perf_counter()
        events = session.generate(words[i % len(words)] + (f" (step {i + 1})" if i >= len(words) else ""))
        next(events)
        times.append(time.perf_counter() - t)
        for _ in events:
            pass
        session.accept()
    return times


def server_ttft(url: str, prompt: str, extra: str) -> float:
    import httpx

    body = {"prompt": prompt, "max_tokens": 1, "temperature": 0}
    httpx.post(url + "/v1/completions", json=body, timeout=600).raise_for_status()  # the prompt, now cached (if on)
    body = {"prompt": prompt + extra, "max_tokens": 8, "temperature": 0, "stream": True}
    t = time.perf_counter()
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"text"' in line:
                return time.perf_counter() - t
    raise RuntimeError("no token came back")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="350M-mono")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--turn-tokens", type=int, default=48)
    ap.add_argument("--prompt-tokens", type=int, default=1500)
    ap.add_argument("--extra-tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokenizer", default=TOKENIZER)
    ap.add_argument("--only", choices=["session", "server"])
    args = ap.parse_args()

    import torch

    import codegen
    from codegen.native import kernels

    torch.manual_seed(0)
    model = codegen.CodeGenForCausalLM(codegen.CodeGenConfig.preset(args.preset)).eval().to(getattr(torch, args.dtype))
    tok = codegen.CodeGenTokenizerFast.from_pretrained(args.tokenizer)
    tier, why = kernels.tier()
    print(f"cpu: {cpu_name()} ({os.cpu_count()} cpus), native tier {tier or 'none'}; threads {torch.get_num_threads()}; "
          f"{args.preset} {args.dtype}")

    if args.only != "server":
        session_ttft(model, tok, 2, 4, True)  # warm-up: kernels, allocator
        on = [session_ttft(model, tok, args.turns, args.turn_tokens, True) for _ in range(args.repeats)]
        off = [session_ttft(model, tok, args.turns, args.turn_tokens, False) for _ in range(args.repeats)]
        med_on = [statistics.median(r[i] for r in on) for i in range(args.turns)]
        med_off = [statistics.median(r[i] for r in off) for i in range(args.turns)]
        print(f"\nsession: time to first token per turn (ms), {args.turn_tokens} tokens per turn, median of {args.repeats}")
        print(f"{'turn':>5}{'kept KV':>10}{'re-prefill':>12}")
        for i in range(args.turns):
            print(f"{i + 1:>5}{med_on[i] * 1e3:>10.1f}{med_off[i] * 1e3:>12.1f}")
        print(f"turn {args.turns} / turn 1: kept KV {med_on[-1] / med_on[0]:.2f}x (target <= 1.25), "
              f"re-prefill {med_off[-1] / med_off[0]:.2f}x")

    if args.only != "session":
        from serve import start

        g = torch.Generator().manual_seed(1)
        words = tok.decode(torch.randint(300, 20000, (args.prompt_tokens,), generator=g).tolist())
        ids = tok.encode(words)[: args.prompt_tokens]
        prompt = tok.decode(ids)
        extra = tok.decode(torch.randint(300, 20000, (args.extra_tokens,), generator=g).tolist())
        times = {"on": [], "off": []}
        servers = {"on": start(model, tok, 16, prefix_cache_mb=2048), "off": start(model, tok, 16)}
        try:
            for r in range(args.repeats + 1):
                for name, (_, _, _, url) in servers.items():
                    t = server_ttft(url, f"{r} " + prompt, extra)  # a new prompt each round: nothing cached before
                    if r:  # the first round warms both up
                        times[name].append(t)
        finally:
            for server, thread, batcher, _ in servers.values():
                server.should_exit = True
                thread.join(timeout=10)
                batcher.close()
        a, b = statistics.median(times["on"]), statistics.median(times["off"])
        print(f"\nserver: a cached {len(tok.encode(prompt))}-token prompt + {len(tok.encode(extra))} tokens, time to first "
              f"streamed token, median of {args.repeats}")
        print(f"cache on {a * 1e3:.1f} ms, off {b * 1e3:.1f} ms: on / off = {a / b:.3f} (target <= 0.25)")


if __name__ == "__main__":
    main()
