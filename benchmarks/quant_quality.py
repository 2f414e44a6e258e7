"""Quality of weight-only quantization on the bundled demo model: held-out perplexity (the 2 % of the
standard library's files the demo model never trained on, chosen by the training's own split rule)
and greedy-token agreement with bf16 on the 20 prompts of scripts/demo_check.py. The quantized
weights are scored with fp32 activations and, for int8 and int4 g32, with bf16 activations too.

    python benchmarks/quant_quality.py [--seq-len 256] [--new 48]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import sysconfig
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seq-len", type=int, default=256, help="the demo model's training length (default 256)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new", type=int, default=48, help="greedy tokens per prompt (default 48)")
    args = ap.parse_args()

    import codegen
    from codegen.quant import QuantSpec
    from codegen.quant.convert import quantize_model
    from codegen.train import collect_texts, evaluate_loss, pack, split

    sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
    from demo_check import PROMPTS

    demo = os.path.join(HERE, "..", "src", "codegen", "demo")
    tok = codegen.CodeGenTokenizerFast.from_pretrained(demo)
    stdlib = sysconfig.get_paths()["stdlib"]
    _, held = split(collect_texts([stdlib], exclude=["*/site-packages/*"]), 0.02)
    blocks = pack(held, tok, args.seq_len)
    print(f"held-out: {len(held)} files of {stdlib}, {blocks.numel():,} tokens in {len(blocks)} blocks of {args.seq_len}")

    base = codegen.CodeGenForCausalLM.from_pretrained(demo, torch_dtype=torch.float32)
    variants = {"bfloat16": copy.deepcopy(base).to(torch.bfloat16),
                "float32": base}
    for name, spec in (("int8", QuantSpec(8)), ("int4 g32", QuantSpec(4, 32)), ("int4 g64", QuantSpec(4, 64)),
                       ("int4 g128", QuantSpec(4, 128))):
        variants[name] = quantize_model(copy.deepcopy(base), spec)
    # The same weights with bf16 activations and KV cache (the scales and biases stay fp32): what
    # `--dtype bfloat16` runs for a quantized model.
    for name in ("int8", "int4 g32"):
        variants[name + " bf16"] = copy.deepcopy(variants[name]).to(torch.bfloat16)
    prompts = [tok(p, return_tensors="pt").input_ids for p in PROMPTS]
    kwargs = dict(max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False)
    reference = None
    print(f"\n{'weights':<15}{'loss':>8}{'perplexity':>12}{'vs bf16':>9}{'greedy tokens = bf16':>22}{'same completions':>18}{'s':>6}")
    ppl_bf16 = None
    for name, model in variants.items():
        t = time.perf_counter()
        loss = evaluate_loss(model, blocks, args.batch_size, None, torch.float32, progress=False)
        with torch.inference_mode():
            outs = [model.generate(p, **kwargs)[0, p.shape[1]:] for p in prompts]
        if reference is None:
            reference, ppl_bf16 = outs, math.exp(loss)
        same = sum(int((a == b).sum()) for a, b in zip(outs, reference))
        whole = sum(bool(torch.equal(a, b)) for a, b in zip(outs, reference))
        ppl = math.exp(loss)
        print(f"{name:<15}{loss:>8.4f}{ppl:>12.3f}{ppl / ppl_bf16 - 1:>+9.2%}{same / (len(prompts) * args.new):>22.1%}"
              f"{whole:>14d}/{len(prompts)}{time.perf_counter() - t:>6.0f}")


if __name__ == "__main__":
    main()
