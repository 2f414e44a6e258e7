"""Generation speed: ours vs transformers' `generate`, A/B interleaved in one process.

    python benchmarks/generate.py                      # 350M shape, batch 1 and 8, every dtype, greedy and sampling
    python benchmarks/generate.py --quick              # batch 1 greedy
    python benchmarks/generate.py --prefill-2048       # also a 2048-token prefill
    python benchmarks/generate.py --rss                # also peak RSS of load + generate, each library in a fresh process
    python benchmarks/generate.py --hf-compile         # also transformers' StaticCache + torch.compile (slow to compile)

After the cases, our dtypes run once more side by side (batch 1 greedy, and sampled beside it when
--mode has sample; interleaved round by round), for ratios between them taken over the same minutes:
bf16 / fp32, int8 / fp32, int4 / int8, and int8-bf16 / int8, int4-bf16 / int4, int4-bf16 / int8-bf16
(bf16 activations and KV cache, what `--dtype auto` picks for a quantized model where it picks bf16),
and each dtype's sampled / greedy.

One random checkpoint of a preset shape (default 350M-mono) is built once; transformers'
CodeGenForCausalLM gets the same weights. Prompt 64 tokens, 128 new tokens, EOS disabled
(min_new_tokens = max_new_tokens in both). For each case and repeat, ours and transformers run
back to back: a prefill (1 new token) and a full generation; decode tokens/s = batch * (new - 1) /
(full - prefill); CTranslate2, when installed, runs in a child process (its OpenMP runtime would
compete with torch's in one) the same weights converted with its transformers
converter (the same prompt tokens). Medians over repeats are reported, with the ratio ours / transformers, the weight
bytes streamed per decode step times steps/s (GB/s), and that as a fraction of this machine's
measured read bandwidth (the decode ceiling at batch 1), measured before and after each case (a shared
host's bandwidth drifts by 20-40 % over minutes) and the higher taken. "per round" sets each round's
speed against a ceiling measured in the same seconds instead (just before and just after that runner's
timings, the higher of the two) and gives the median over rounds of that fraction. "+KV" counts, besides the weights,
the KV cache each step reads (keys and values of every layer up to its position, the mean over the
decode steps, in the activations' dtype): the memory-bandwidth utilisation (MBU) of Databricks' LLM
inference guide, what the hardware's bandwidth allows at this length. Run it on an idle machine: decode
speed collapses when another process competes for the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scratch import remove, scratch_dir  # noqa: E402


class ReadProbe:
    """The read bandwidth ceiling: the best of REPS reads of 1 GiB of fp32, by torch's sum and (when
    built) by our native matrix-vector kernel, whose software prefetch reads faster than torch's sum on
    some machines. One probe holds its GiB, so that probing between the rounds of a case costs reads only."""

    def __init__(self) -> None:
        from codegen.native import kernels

        self.a = torch.ones(2**28)  # 1 GiB of fp32
        x = torch.ones(1024)
        self.readers = [lambda: self.a.sum()]
        if kernels.load() and kernels.gemv(self.a[:1024].view(1, 1024), x, None) is not None:
            self.readers.append(lambda: kernels.gemv(self.a.view(-1, 1024), x, None))

    REPS = 7  # reads per reader and probe: the best of them

    def __call__(self) -> float:
        best = float("inf")
        for read in self.readers:
            for _ in range(self.REPS):
                t = time.perf_counter()
                read()
                best = min(best, time.perf_counter() - t)
        return self.a.numel() * 4 / best / 1e9


def kv_bytes_per_step(config, batch: int, prompt: int, new: int, element_size: int) -> float:
    """Bytes of keys and values a decode step reads, the mean over the `new - 1` timed steps (step j
    attends prompt + j positions) of every layer and head, for `batch` rows."""
    positions = prompt + new / 2
    return 2 * config.n_layer * config.n_embd * positions * element_size * batch


QUANTIZED = ("int8", "int4", "int8-bf16", "int4-bf16")  # "-bf16": bf16 activations and KV cache


def quantized_copy(ours32, dtype: str):
    """A copy of our fp32 model weight-only quantized as `dtype` names (one of QUANTIZED)."""
    import copy

    from codegen.quant import QuantSpec
    from codegen.quant.convert import quantize_model

    bits, _, act = dtype.partition("-")
    q = quantize_model(copy.deepcopy(ours32), QuantSpec.parse(bits))
    return q.to(torch.bfloat16) if act == "bf16" else q


def weight_bytes(model, streamed: int) -> int:
    """Weight bytes a batch-1 decode step streams: `streamed` parameters (all but the token embedding)
    in the model's dtype, or a quantized model's packed weights and their scales."""
    from codegen.quant import QuantLinear

    quantized = [m for m in model.modules() if isinstance(m, QuantLinear)]
    if quantized:
        return sum(b.numel() * b.element_size() for m in quantized for b in (m.weight, m.weight_scale))
    return streamed * model.lm_head.weight.element_size()


def build(preset: str):
    import transformers

    import codegen

    torch.manual_seed(0)
    cfg = codegen.CodeGenConfig.preset(preset)
    ours = codegen.CodeGenForCausalLM(cfg).eval()
    keys = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "rotary_dim", "bos_token_id", "eos_token_id")
    hf_cfg = transformers.CodeGenConfig(**{k: getattr(cfg, k) for k in keys})
    hf = transformers.CodeGenForCausalLM(hf_cfg).eval()
    hf.load_state_dict(ours.state_dict())
    return ours, hf


def gen_kwargs(mode: str, new: int) -> dict:
    kw = dict(max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
    if mode == "sample":
        kw.update(do_sample=True, temperature=0.8, top_p=0.95, top_k=50)
    else:
        kw.update(do_sample=False)
    return kw


def timed(fn) -> float:
    """Seconds `fn` took (its own figure where it returns one: a child process's timing)."""
    time.sleep(0.25)  # the previous run's idle threads stop spinning first (CTranslate2's OpenMP spins 200 ms)
    t = time.perf_counter()
    own = fn()
    return own if isinstance(own, float) else time.perf_counter() - t


class CT2Process:
    """CTranslate2 in a child process, timing its own calls: it ships its own OpenMP runtime, whose
    threads (spinning ~200 ms after each call) compete with torch's when both live in one process;
    run side by side in one process, both libraries measured slower (Zen 4: ours int8 38 vs 54 tok/s)."""

    def __init__(self, model_dir: str, dtype: str, threads: int) -> None:
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--ct2-child", model_dir, dtype, str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = json.loads(self.proc.stdout.readline() or '{"ok": false}')["ok"]
        self.model_dir = model_dir

    def generate_batch(self, tokens, **kwargs) -> float:
        """Seconds the child's generate_batch took."""
        self.proc.stdin.write(json.dumps({"tokens": tokens, "kwargs": kwargs}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        remove(self.model_dir)


def ct2_child(model_dir: str, dtype: str, threads: str) -> None:
    """The child's side: load the converted model, then time each request read from stdin."""
    import ctranslate2

    try:
        gen = ctranslate2.Generator(model_dir, device="cpu", compute_type=dtype, intra_threads=int(threads))
    except ValueError:  # this build has no kernels for the dtype
        print(json.dumps({"ok": False}), flush=True)
        return
    print(json.dumps({"ok": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        t = time.perf_counter()
        gen.generate_batch(req["tokens"], **req["kwargs"])
        print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)


def ct2_generator(ours, dtype: str, threads: int) -> CT2Process | None:
    """CTranslate2 (when installed) converted from the same weights with its transformers converter,
    in a child process."""
    try:
        import ctranslate2
    except ImportError:
        return None
    import codegen

    src, out = scratch_dir("ct2-src"), scratch_dir(f"ct2-{dtype}")
    ours.float().save_pretrained(src)
    here = os.path.dirname(os.path.abspath(__file__))
    codegen.CodeGenTokenizerFast.from_pretrained(os.path.join(here, "..", "src", "codegen", "demo")).save_pretrained(src)
    ctranslate2.converters.TransformersConverter(src).convert(out, quantization=dtype, force=True)
    remove(src)
    child = CT2Process(out, dtype, threads)
    if not child.ready:
        child.close()
        return None
    return child


def compiled_kwargs() -> dict:
    """transformers' best CPU configuration: a StaticCache and its torch.compile'd decode step (transformers
    compiles only on accelerators unless the compile config allows every device)."""
    import transformers

    import torch._dynamo

    for knob in ("cache_size_limit", "recompile_limit"):  # each case's shapes compile anew; keep them all
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    cc = transformers.CompileConfig()
    cc._compile_all_devices = True
    return dict(cache_implementation="static", compile_config=cc)


def run_case(ours, hf, ct2, batch: int, prompt: int, new: int, mode: str, repeats: int, hf_compile: bool = False,
             probe=None) -> dict:
    x = torch.randint(0, 50000, (batch, prompt), generator=torch.Generator().manual_seed(1))
    runners = {
        "ours": lambda n: ours.generate(x, **gen_kwargs(mode, n)),
        "transformers": lambda n: hf.generate(x, **gen_kwargs(mode, n)),
    }
    if hf_compile:
        compiled = compiled_kwargs()
        runners["compiled"] = lambda n: hf.generate(x, **compiled, **gen_kwargs(mode, n))
    if ct2 is not None:
        tok = demo_tokenizer()
        tokens = [tok.convert_ids_to_tokens(row) for row in x.tolist()]
        sampling = dict(sampling_topk=50, sampling_topp=0.95, sampling_temperature=0.8) if mode == "sample" else dict(sampling_topk=1)
        runners["ctranslate2"] = lambda n: ct2.generate_batch(tokens, max_length=n, min_length=n, end_token=[],
                                                              include_prompt_in_result=False, **sampling)
    return interleave(runners, batch, new, repeats, warm_twice={"compiled"}, probe=probe)


def interleave(runners: dict, batch: int, new: int, repeats: int, warm_twice=frozenset(), probe=None) -> dict:
    """Each runner (new tokens -> a generation) timed round by round, a prefill (1 new token) and a
    full generation each: {name: prefill_ms, decode_tok_s, steps_s} from the medians. Runners in
    `warm_twice` warm up with a full generation too (compilation: the static cache's size changes).
    With a `probe` (a ReadProbe), the read ceiling is measured between any two timings as well, and
    each runner gets `rounds`: per round (steps/s, the higher of the ceilings just before and just
    after): the host's bandwidth drifts over minutes, and a round's speed is set against the
    bandwidth of the same seconds; and `ceiling`, the case's: the higher of the first and last readings."""
    with torch.inference_mode():
        for name, run in runners.items():
            run(2)
            if name in warm_twice:
                run(new)
        pre = {k: [] for k in runners}
        full = {k: [] for k in runners}
        ceilings, at = [], {k: [] for k in runners}  # probe readings; each timing's reading before it
        for _ in range(repeats):
            for name, run in runners.items():
                if probe is not None:
                    at[name].append(len(ceilings))
                    ceilings.append(probe())
                pre[name].append(timed(lambda: run(1)))
                full[name].append(timed(lambda: run(new)))
        if probe is not None:
            ceilings.append(probe())
    out = {}
    for name in runners:
        p, f = statistics.median(pre[name]), statistics.median(full[name])
        out[name] = {"prefill_ms": p * 1e3, "decode_tok_s": batch * (new - 1) / (f - p), "steps_s": (new - 1) / (f - p)}
        if probe is not None:
            out[name]["rounds"] = [((new - 1) / (fr - pr), max(ceilings[i], ceilings[i + 1]))
                                   for pr, fr, i in zip(pre[name], full[name], at[name])]
            out[name]["ceiling"] = max(ceilings[0], ceilings[-1])
    return out


def round_share(rounds: list, nbytes: float) -> float:
    """The median over rounds of nbytes * steps/s / that round's ceiling (GB/s): the fraction of the
    read ceiling a decode step's `nbytes` reach."""
    return statistics.median(nbytes * steps / 1e9 / ceiling for steps, ceiling in rounds)


def prefill_case(ours, hf, ct2, length: int, repeats: int) -> dict:
    """Seconds to the first token of a `length`-token prompt (median), ours / transformers / CTranslate2."""
    x = torch.randint(0, 50000, (1, length), generator=torch.Generator().manual_seed(2))
    kw = dict(max_new_tokens=1, min_new_tokens=1, pad_token_id=0, do_sample=False)
    runs = {"ours": lambda: ours.generate(x, **kw), "transformers": lambda: hf.generate(x, **kw)}
    if ct2 is not None:
        tokens = [demo_tokenizer().convert_ids_to_tokens(x[0].tolist())]
        runs["ctranslate2"] = lambda: ct2.generate_batch(tokens, max_length=1, min_length=1, end_token=[],
                                                         include_prompt_in_result=False, sampling_topk=1)
    res = {k: [] for k in runs}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, run in runs.items():
                res[name].append(timed(run))
    return {k: statistics.median(v) for k, v in res.items()}


def demo_tokenizer():
    import codegen

    return codegen.CodeGenTokenizerFast.from_pretrained(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "codegen", "demo"))


RSS_CHILD = r"""
import json, sys, torch
lib, path, dtype, batch, prompt, new, threads = sys.argv[1:8]
torch.set_num_threads(int(threads))
# int8 / int4: a quantized checkpoint loaded with fp32 activations, int8-bf16 / int4-bf16 with bf16 ones
dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(dtype, torch.bfloat16 if dtype.endswith("-bf16") else torch.float32)
if lib == "ours":
    import codegen
    m = codegen.CodeGenForCausalLM.from_pretrained(path, torch_dtype=dtype)
else:
    import transformers
    m = transformers.CodeGenForCausalLM.from_pretrained(path, dtype=dtype).eval()
x = torch.randint(0, 50000, (int(batch), int(prompt)))
with torch.inference_mode():
    m.generate(x, max_new_tokens=int(new), min_new_tokens=int(new), pad_token_id=0, do_sample=False)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps({"peak_rss_mib": hwm}))
"""


def rss_section(ours, args) -> None:
    path = scratch_dir("rss")
    ours.save_pretrained(path)
    print(f"\npeak RSS of loading {args.preset} and generating {args.new} tokens, each library in a fresh process:")
    print(f"{'dtype':<10}{'batch':>6}{'ours MiB':>10}{'transformers MiB':>18}{'ratio':>8}")
    from codegen.quant import QuantSpec
    from codegen.quant.convert import quantize_checkpoint

    for dtype in args.dtype:
        paths = {"ours": path, "transformers": path}
        if dtype in QUANTIZED:  # ours loads a `codegen quantize` checkpoint of the same weights
            paths["ours"] = scratch_dir(f"rss-{dtype}")
            quantize_checkpoint(path, paths["ours"], QuantSpec.parse(dtype.partition("-")[0]), progress=False)
        for batch in args.batch:
            peaks = {}
            for lib in ("ours", "transformers"):
                r = subprocess.run([sys.executable, "-c", RSS_CHILD, lib, paths[lib], dtype, str(batch), str(args.prompt),
                                    str(args.new), str(args.threads)], capture_output=True, text=True)
                peaks[lib] = json.loads(r.stdout.strip().splitlines()[-1])["peak_rss_mib"] if r.returncode == 0 else float("nan")
            print(f"{dtype:<10}{batch:>6}{peaks['ours']:>10.0f}{peaks['transformers']:>18.0f}{peaks['ours'] / peaks['transformers']:>8.2f}")
        if paths["ours"] != path:
            remove(paths["ours"])


def modes_section(ours32, streamed: int, args, probe) -> None:
    """Our dtypes side by side: batch 1 greedy decode of each (and, with --mode sample, sampled decode
    beside it), interleaved round by round (so that a ratio between two of them, e.g. bf16 / fp32,
    int4 / int8 or sampled / greedy, is taken over the same minutes of the host's bandwidth), with a
    read ceiling measured before and after, and between any two timings (the "per round" shares of
    weights and of weights + KV)."""
    import copy

    models = {}
    for dtype in args.dtype:
        if dtype in QUANTIZED:
            models[dtype] = quantized_copy(ours32, dtype)
        else:
            models[dtype] = copy.deepcopy(ours32).to(getattr(torch, dtype))
    x = torch.randint(0, 50000, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    rounds = max(3, args.repeats)
    modes = ["greedy"] + (["sample"] if "sample" in args.mode else [])
    cases = {(dtype if mode == "greedy" else f"{dtype} sample"): (dtype, mode) for dtype in models for mode in modes}
    runners = {name: (lambda m, mode: lambda n: m.generate(x, **gen_kwargs(mode, n)))(models[dtype], mode)
               for name, (dtype, mode) in cases.items()}
    r = interleave(runners, 1, args.new, rounds, probe=probe)
    ceiling = r[next(iter(r))]["ceiling"]
    print(f"\nours side by side, batch 1 {' and '.join(modes)}, {rounds} interleaved rounds (median), read ceiling {ceiling:.1f} GB/s:")
    print(f"{'dtype':<17}{'tok/s':>8}{'GB/s':>7}{'of ceiling':>12}{'per round':>11}{'+KV':>6}")
    speed = {}
    for name, (dtype, _mode) in cases.items():
        m = models[dtype]
        speed[name] = r[name]["decode_tok_s"]
        nbytes = weight_bytes(m, streamed)
        kv = kv_bytes_per_step(m.config, 1, args.prompt, args.new, m.transformer.ln_f.weight.element_size())
        gbs = nbytes * speed[name] / 1e9
        print(f"{name:<17}{speed[name]:>8.1f}{gbs:>7.1f}{gbs / ceiling:>11.0%}"
              f"{round_share(r[name]['rounds'], nbytes):>11.0%}{round_share(r[name]['rounds'], nbytes + kv):>6.0%}")
    pairs = [(a, b) for a, b in (("bfloat16", "float32"), ("int8", "float32"), ("int4", "int8"), ("int8-bf16", "int8"),
                                 ("int4-bf16", "int4"), ("int4-bf16", "int8-bf16")) if a in speed and b in speed]
    pairs += [(f"{d} sample", d) for d in models if f"{d} sample" in speed]
    if pairs:
        print("ratios: " + ", ".join(f"{a} / {b} {speed[a] / speed[b]:.2f}x" for a, b in pairs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="350M-mono")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16", *QUANTIZED],
                    help="int8 / int4: ours weight-only quantized (fp32 activations, quantized to int8 per product; "
                         "int8-bf16 / int4-bf16: bf16 activations and KV cache) beside transformers fp32 and CTranslate2 int8 "
                         "(default: float32 bfloat16 int8 int4, and int8-bf16 int4-bf16 where --dtype auto picks bf16)")
    ap.add_argument("--mode", nargs="+", default=["greedy", "sample"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="batch 1, greedy only")
    ap.add_argument("--isa", choices=["generic", "avx2", "avxvnni", "avx512", "avx512bf16"],
                    help="force this tier of the native kernels (default: the CPU's highest)")
    ap.add_argument("--prefill-2048", action="store_true", help="also time a 2048-token prefill")
    ap.add_argument("--rss", action="store_true", help="also measure peak RSS in fresh processes")
    ap.add_argument("--no-ct2", action="store_true", help="skip CTranslate2 even when it is installed")
    ap.add_argument("--hf-compile", action="store_true",
                    help="also transformers with a StaticCache and torch.compile (about a minute of compiling per case)")
    args = ap.parse_args()
    if args.isa:  # before anything loads the kernels
        os.environ["CODEGEN_ISA"] = args.isa
    if args.quick:
        args.batch, args.mode = [1], ["greedy"]
    torch.set_num_threads(args.threads)
    if args.dtype is None:  # what `--dtype auto` loads a quantized model in, too (after the tier is forced)
        from codegen.loading import fastest_dtype

        args.dtype = ["float32", "bfloat16", "int8", "int4"] + (["int8-bf16", "int4-bf16"] if fastest_dtype() == "bfloat16" else [])

    import transformers

    probe = ReadProbe()
    bw = probe()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    from codegen.native import kernels

    kernels.load()
    active, why = kernels.tier()
    native = f"tier {why}" if active else f"off (torch's kernels: {why})"
    print(f"machine: {cpu}, {os.cpu_count()} cpus, threads {args.threads}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}; codegen native kernels {native}")
    print(f"measured read bandwidth: {bw:.1f} GB/s (each case: the higher of its own before and after); shape {args.preset}; prompt {args.prompt}, new {args.new}, "
          f"EOS disabled; median of {args.repeats}, A/B interleaved")
    ours32, hf32 = build(args.preset)
    streamed = sum(p.numel() for n, p in ours32.named_parameters() if n != "transformer.wte.weight")

    print(f"\n{'dtype':<10}{'batch':>6}{'mode':>8}{'prefill ms ours/hf':>22}{'decode tok/s ours':>19}{'hf':>8}{'ratio':>7}"
          f"{'GB/s ours':>11}{'hf':>7}{'of ceiling GB/s':>17}{'+KV':>6}{'per round':>11}{'+KV':>6}{'ct2 tok/s':>11}{'ours/ct2':>10}{'hf-compile':>12}{'ours/hfc':>10}")
    # CTranslate2 int8: the quantized rows' and every 2048-token prefill's comparison (built while fp32)
    wants_int8 = args.prefill_2048 or any(d in QUANTIZED for d in args.dtype)
    ct2_int8 = ct2_generator(ours32, "int8", args.threads) if wants_int8 and not args.no_ct2 else None
    for dtype in args.dtype:
        quantized = dtype in QUANTIZED
        if quantized:  # ours weight-only quantized against transformers fp32 and CTranslate2 int8
            ct2 = ct2_int8
            ours, hf = quantized_copy(ours32, dtype), hf32
        else:
            ct2 = ct2_generator(ours32, dtype, args.threads) if not args.no_ct2 else None
            ours, hf = ours32.to(getattr(torch, dtype)), hf32.to(getattr(torch, dtype))
        nbytes = weight_bytes(ours, streamed)
        for batch in args.batch:
            for mode in args.mode:
                r = run_case(ours, hf, ct2, batch, args.prompt, args.new, mode, args.repeats, args.hf_compile, probe)
                ceiling = r["ours"]["ceiling"]  # the host's bandwidth drifts over minutes: the case's own ceiling
                o, h = r["ours"], r["transformers"]
                gbs_o, gbs_h = nbytes * o["steps_s"] / 1e9, nbytes * h["steps_s"] / 1e9
                kv = kv_bytes_per_step(ours.config, batch, args.prompt, args.new, ours.transformer.ln_f.weight.element_size())
                mbu = (nbytes + kv) * o["steps_s"] / 1e9 / ceiling
                rounds = f"{round_share(o['rounds'], nbytes):>11.0%}{round_share(o['rounds'], nbytes + kv):>6.0%}"
                c = r.get("ctranslate2")
                ct2_cols = f"{c['decode_tok_s']:>11.1f}{o['decode_tok_s'] / c['decode_tok_s']:>9.2f}x" if c else f"{'-':>11}{'-':>10}"
                hc = r.get("compiled")
                hc_cols = f"{hc['decode_tok_s']:>12.1f}{o['decode_tok_s'] / hc['decode_tok_s']:>9.2f}x" if hc else f"{'-':>12}{'-':>10}"
                print(f"{dtype:<10}{batch:>6}{mode:>8}{o['prefill_ms']:>12.0f} / {h['prefill_ms']:<7.0f}"
                      f"{o['decode_tok_s']:>19.1f}{h['decode_tok_s']:>8.1f}{o['decode_tok_s'] / h['decode_tok_s']:>6.2f}x"
                      f"{gbs_o:>11.1f}{gbs_h:>7.1f}{gbs_o / ceiling:>12.0%} {ceiling:>4.0f}{mbu:>6.0%}{rounds}{ct2_cols}{hc_cols}")
        if args.prefill_2048:  # against transformers in this dtype (fp32 for int8/int4) and CTranslate2 int8
            length = min(2048, ours.config.n_positions) - 1
            p = prefill_case(ours, hf, ct2_int8, length, max(1, args.repeats - 1))
            c = (f", CTranslate2 int8 {p['ctranslate2']:.2f} s (ours / ct2 int8 time {p['ours'] / p['ctranslate2']:.2f})"
                 if "ctranslate2" in p else "")
            print(f"{dtype:<10} prefill of {length} tokens: ours {p['ours']:.2f} s, transformers {p['transformers']:.2f} s "
                  f"({p['transformers'] / p['ours']:.2f}x){c}")
        if not quantized:
            ours32, hf32 = ours.float(), hf.float()
            if ct2 is not None:
                ct2.close()  # its converted model (GBs on disk) goes with it
    if ct2_int8 is not None:
        ct2_int8.close()
    if len(args.dtype) > 1 and 1 in args.batch and "greedy" in args.mode:
        modes_section(ours32, streamed, args, probe)
    if args.rss:
        rss_section(ours32, args)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--ct2-child"]:
        ct2_child(*sys.argv[2:5])
    else:
        main()
