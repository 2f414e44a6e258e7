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
    print(f"wrote a randomly initialised {args.preset} checkpoint ({model.num_parameters():,} parameters) to {args.out}")
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
    p.set_defaults(func=cmd_init)

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
