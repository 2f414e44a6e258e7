"""One rank of the tensor-parallel tests (started by torchrun from test_tp.py).

    tp_worker.py MODE OUT_JSON CHECKPOINT...

parity: for each checkpoint, fp32 logits of this rank's slice against the whole model (left-padded
batch, and a cached decode step), then, through the lockstep engine on the driver: greedy and
sampled completions, streaming, n > 1, a request prefix cache over three turns, and a continuous
batcher fed from threads with a cancel: each result against one process's. The driver writes what
it measured to OUT_JSON. quant: bf16 / int8 / int4 under TP=2 against TP=1 (tolerances). diverge:
rank 1 picks other tokens (must end with the ranks' divergence error). badload: rank 1 cannot load.
"""

from __future__ import annotations

import json
import os
import sys
import threading

import torch

from codegen import CodeGenForCausalLM
from codegen.completion import CompletionOptions, complete, stream_complete
from codegen.engine.batcher import ContinuousBatcher
from codegen.engine.cache import KVCache
from codegen.engine.params import SamplingParams
from codegen.engine.prefix import PrefixCache
from codegen.engine.request import Request, TokenEvent
from codegen.parallel.group import init, shutdown
from codegen.parallel.load import load_rank
from codegen.parallel.run import run_ranks
from codegen.tokenizer import CodeGenTokenizerFast

mode, out_file, checkpoints = sys.argv[1], sys.argv[2], sys.argv[3:]
results: dict = {}


def spmd_logits(model, ckpt: str) -> dict:
    """Every rank runs the same forward passes (the collectives need all of them)."""
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0
    nxt = torch.randint(0, V, (2, 1), generator=g)
    with torch.no_grad():
        a = model(ids, attention_mask=mask).logits
        cache = KVCache.for_model(model, 2, 16)
        model(ids, past_key_values=cache, attention_mask=mask)
        b = model(nxt, past_key_values=cache, attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)).logits
    if os.environ["RANK"] != "0":
        return {}
    ref = CodeGenForCausalLM.from_pretrained(ckpt).eval()
    with torch.no_grad():
        ra = ref(ids, attention_mask=mask).logits
        out = ref(ids, attention_mask=mask, use_cache=True)
        rb = ref(nxt, past_key_values=out.past_key_values, attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)).logits
    keep = mask.bool()
    return {"prefill": float((a - ra)[keep].abs().max()), "decode": float((b - rb).abs().max()),
            "local_heads": model.transformer.h[0].attn.n_head, "heads": model.config.n_head}


def engine_runs(model, tok) -> dict:
    """The same requests through the engine: the lockstep driver, or one process (the reference)."""
    prompts = ["def fibonacci(n):", "import os\nimport sys\n", "class Stack:\n    def"]
    got: dict = {}
    got["greedy"] = [c.token_ids for c in complete(model, tok, prompts, CompletionOptions(max_new_tokens=12, temperature=0))]
    got["sampled"] = [c.token_ids for c in complete(model, tok, prompts, CompletionOptions(max_new_tokens=10, temperature=0.8,
                                                                                           n=3, seed=7, top_k=0))]
    got["stream"] = "".join(d.text for d in stream_complete(model, tok, prompts[0], CompletionOptions(
        max_new_tokens=12, temperature=0, stop=("\n\n",))))
    pool = PrefixCache(1 << 24)
    history = "# write a function\n"
    turns = []
    for turn in range(3):
        c = complete(model, tok, history, CompletionOptions(max_new_tokens=8, temperature=0.7, seed=turn), prefix_cache=pool)[0]
        history += c.text + f"\n# turn {turn}\n"
        turns.append(c.token_ids)
    got["turns"], got["reused"] = turns, pool.reused_tokens
    batcher = ContinuousBatcher(model, tok, max_batch=8, prefix_cache=PrefixCache(1 << 24))
    batcher.start()
    outs: dict[int, list[int]] = {}
    done = {i: threading.Event() for i in range(6)}

    def submit(i: int) -> None:
        params = SamplingParams(max_new_tokens=6 + i, temperature=0.0 if i % 2 else 0.9, seed=i, top_k=0)
        ids = tok.encode(prompts[i % 3] + " " * (i // 3))
        request = Request([ids], params)
        outs[i] = []

        def callback(event):
            if isinstance(event, TokenEvent):
                outs[i].append(event.token)
                if i == 4 and len(outs[i]) == 2:
                    request.cancel()
                if event.finish_reason is not None:
                    done[i].set()
            elif isinstance(event, Exception):
                done[i].set()

        batcher.submit(request, callback)
        if i == 4:
            done[i].set()

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(6):
        assert done[i].wait(60), i
    while batcher.active or batcher.queued:
        threading.Event().wait(0.01)
    batcher.close()
    got["batched"] = {str(i): v for i, v in outs.items() if i != 4}
    got["cancelled_len"] = len(outs[4])
    return got


def parity() -> None:
    for ckpt in checkpoints:
        lay = init(2)
        model = load_rank(ckpt, lay)
        results[ckpt] = {"logits": spmd_logits(model, ckpt)}
        tok = CodeGenTokenizerFast.from_pretrained(ckpt)

        def body(model, tok, layout, ckpt=ckpt):
            ours = engine_runs(model, tok)
            ref = engine_runs(CodeGenForCausalLM.from_pretrained(ckpt).eval(), tok)
            results[ckpt]["engine"] = {k: ours[k] == ref[k] for k in ref if k not in ("reused", "cancelled_len")}
            results[ckpt]["reused"] = [ours["reused"], ref["reused"]]
            results[ckpt]["cancelled_len"] = ours["cancelled_len"]
            return 0

        run_ranks(lambda layout, model=model, tok=tok: (model, tok), body, tp=2)


def quant() -> None:
    ckpt = checkpoints[0]
    from codegen.quant import QuantSpec

    for name, dtype, spec in (("bf16", torch.bfloat16, None), ("int8", None, QuantSpec.parse("int8")),
                              ("int4", None, QuantSpec.parse("int4", 32))):
        lay = init(2)
        model = load_rank(ckpt, lay, torch_dtype=dtype, quantize=spec)
        ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            a = model(ids).logits
        tok = CodeGenTokenizerFast.from_pretrained(ckpt)

        def body(model, tok, layout, name=name, dtype=dtype, spec=spec, a=a, ids=ids):
            ref = CodeGenForCausalLM.from_pretrained(ckpt, torch_dtype=dtype, quantize=spec).eval()
            with torch.no_grad():
                b = ref(ids).logits
            g = complete(model, tok, "def f(x):", CompletionOptions(max_new_tokens=8, temperature=0))[0]
            results[name] = {"maxdiff": float((a - b).abs().max()), "scale": float(b.abs().max()), "tokens": len(g.token_ids)}
            return 0

        run_ranks(lambda layout, model=model, tok=tok: (model, tok), body, tp=2)


def diverge() -> None:
    ckpt = checkpoints[0]
    if os.environ["RANK"] == "1":
        from codegen.engine import scheduler

        real = scheduler.Scheduler._select

        def other(self, events):
            chosen, scores, failed = real(self, events)
            return [(t + 1) % 100 for t in chosen], scores, failed

        scheduler.Scheduler._select = other

    def body(model, tok, layout):
        complete(model, tok, "def f(x):", CompletionOptions(max_new_tokens=8, temperature=0))
        complete(model, tok, "def g(x):", CompletionOptions(max_new_tokens=8, temperature=0))
        return 0

    run_ranks(lambda layout: (load_rank(ckpt, layout), CodeGenTokenizerFast.from_pretrained(ckpt)), body, tp=2)


def badload() -> None:
    ckpt = checkpoints[0]

    def load(layout):
        if layout.rank == 1:
            raise FileNotFoundError("/nowhere/model.safetensors: no such file")
        return load_rank(ckpt, layout), CodeGenTokenizerFast.from_pretrained(ckpt)

    run_ranks(load, lambda *a: 0, tp=2)


if __name__ == "__main__":
    try:
        {"parity": parity, "quant": quant, "diverge": diverge, "badload": badload}[mode]()
    finally:
        shutdown()  # parity/quant set the groups up themselves (run_ranks keeps a caller's groups)
    if os.environ["RANK"] == "0":
        with open(out_file, "w") as fh:
            json.dump(results, fh)

