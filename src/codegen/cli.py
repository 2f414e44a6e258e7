"""The `codegen` command line. Nothing imports this module; it only calls the library's API."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import checkpoint
from .config import CodeGenConfig, ConfigError, preset_names
from .tokenizer import TokenizerFileError


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def cmd_info(args: argparse.Namespace) -> int:
    info = checkpoint.describe(args.path)
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
    print(f"vocab       {config.vocab_size} rows, n_positions={config.n_positions}, "
          f"bos={config.bos_token_id} eos={config.eos_token_id}, tie_word_embeddings={config.tie_word_embeddings}")
    print("config      " + json.dumps({k: v for k, v in cfg.items()
                                       if k not in ("n_layer", "n_embd", "n_head", "rotary_dim", "vocab_size")}, sort_keys=True))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import resolve_dtype
    from .model import CodeGenForCausalLM

    config = CodeGenConfig.preset(args.preset)
    torch.manual_seed(args.seed)
    model = CodeGenForCausalLM(config).to(resolve_dtype(args.dtype, config, None))
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


def _tokenizer(path: str):
    from .tokenizer import CodeGenTokenizerFast

    return CodeGenTokenizerFast.from_pretrained(path)


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


# Salesforce's README truncation for completions (a plain "^#" would also cut at a "# prompt").
DEFAULT_TRUNCATE = [r"\n\n^#", "^'''", "\n\n\n"]


def load_for_inference(model_dir: str, tokenizer_dir: str | None, dtype: str, device: str, threads: int | None):
    """Model + fast tokenizer, with the thread count set first (it matters for decode speed)."""
    import torch

    from .model import CodeGenForCausalLM
    from .tokenizer import CodeGenTokenizerFast

    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    model_dir = checkpoint.resolve(model_dir)
    tokenizer = CodeGenTokenizerFast.from_pretrained(tokenizer_dir or model_dir)
    model = CodeGenForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, device=device)
    return model, tokenizer


def cmd_complete(args: argparse.Namespace) -> int:
    from .complete import CompletionOptions, complete, stream_complete

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
    opts = CompletionOptions(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        n=args.n, stop=tuple(args.stop or ()), truncate_before_pattern=DEFAULT_TRUNCATE if args.truncate else (),
        seed=args.seed,
    )
    opts.validate()
    model, tokenizer = load_for_inference(args.model, args.tokenizer, args.dtype, args.device, args.threads)
    out = sys.stdout
    if args.stream:
        if args.echo:
            out.write(prompt)
        for delta in stream_complete(model, tokenizer, prompt, opts):
            out.write(delta.text)
            out.flush()
        out.write("\n")
        return 0
    for c in complete(model, tokenizer, prompt, opts):
        if args.n > 1:
            out.write(f"--- completion {c.index + 1} of {args.n} ({c.finish_reason}) ---\n")
        out.write((prompt if args.echo else "") + c.text + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codegen", description="Run Salesforce CodeGen models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="describe a checkpoint: config, parameters, dtype, files")
    p.add_argument("path", help="checkpoint directory (config.json + weights) or hub id")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("init", help="write a randomly initialised checkpoint of a preset shape (tests, benchmarks)")
    p.add_argument("out", help="directory to write")
    p.add_argument("--preset", default="tiny", choices=preset_names(), help="model shape (default: tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--tokenizer", help="copy the tokenizer from this directory into the checkpoint")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("complete", help="complete code from a prompt",
                       description="Complete a prompt. Defaults follow Salesforce's sample.py: temperature 0.2, "
                                   "top_p 0.95 (and transformers' implicit top_k 50), 128 new tokens.")
    p.add_argument("prompt", nargs="?", help="the prompt; '-' or nothing (with no --file) reads standard input")
    p.add_argument("--file", help="read the prompt from this file")
    p.add_argument("--model", required=True, help="checkpoint directory (config.json, weights, tokenizer files)")
    p.add_argument("--tokenizer", help="tokenizer directory, if not the checkpoint directory")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default 128)")
    p.add_argument("--temperature", type=float, default=0.2, help="sampling temperature; 0 = greedy (default 0.2)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens; 0 = off (default 50)")
    p.add_argument("--n", type=int, default=1, help="number of completions (default 1)")
    p.add_argument("--stop", action="append", help="stop string (repeatable); the completion ends before it")
    p.add_argument("--truncate", action="store_true",
                   help="cut completions with CodeGen's rule (2nd top-level def/print, a comment after a blank line, "
                        "''', three newlines)")
    p.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    p.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (default float32; auto = as stored)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's choice, one per core)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--no-echo", dest="echo", action="store_false", help="print only the completion, not the prompt")
    p.set_defaults(func=cmd_complete)

    p = sub.add_parser("tokenize", help="text -> token ids (JSON list)")
    p.add_argument("text", nargs="?", help="text to encode; '-' or nothing reads standard input")
    p.add_argument("--model", required=True, help="directory with the tokenizer files (a checkpoint directory)")
    p.add_argument("--tokens", action="store_true", help="print the token strings instead of ids")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("detokenize", help="token ids -> text")
    p.add_argument("ids", nargs="?", help="ids as '1 2 3', '1,2,3' or a JSON list; '-' or nothing reads standard input")
    p.add_argument("--model", required=True, help="directory with the tokenizer files (a checkpoint directory)")
    p.add_argument("--skip-special-tokens", action="store_true", help="drop <|endoftext|> and other special tokens")
    p.set_defaults(func=cmd_detokenize)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (FileNotFoundError, IsADirectoryError, PermissionError, ConfigError, checkpoint.CheckpointError,
            TokenizerFileError, ValueError, TypeError) as e:
        print(f"codegen: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("codegen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
