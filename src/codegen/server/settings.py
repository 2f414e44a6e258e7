"""Server settings, declared once (default, bounds, help) and turned into `codegen serve` flags."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _opt(default: Any, help: str, lo: int | None = None, hi: int | None = None, choices: tuple | None = None):
    return field(default=default, metadata={"help": help, "min": lo, "max": hi, "choices": choices})


@dataclass
class ServerSettings:
    model: str | None = _opt(None, "checkpoint directory (config.json, weights, tokenizer files) or a LoRA run's output "
                                   "directory; default: the small bundled demo model")
    adapter: str | None = _opt(None, "LoRA adapter directory to merge into the model")
    tokenizer: str | None = _opt(None, "tokenizer directory, if not the checkpoint directory")
    served_model_name: str | None = _opt(None, "model id reported by /v1/models (default: the directory name)")
    host: str = _opt("127.0.0.1", "address to bind; 0.0.0.0 exposes the server to the network")
    port: int = _opt(8000, "TCP port", 1, 65535)
    api_key: str | None = _opt(None, "require 'Authorization: Bearer KEY' on API requests")
    max_batch: int = _opt(16, "sequences decoded together at most (continuous batching)", 1, 256)
    max_queue: int = _opt(64, "requests waiting at most; more are answered 429", 1, 100000)
    max_tokens_default: int = _opt(16, "max_tokens of a request that gives none (OpenAI's default is 16)", 1, 2048)
    dtype: str = _opt("float32", "weights dtype (auto: the fastest on this CPU; stored: as config.json says)",
                      choices=("float32", "bfloat16", "float16", "auto", "stored"))
    quantize: str | None = _opt(None, "quantize the weights at load (weight-only)", choices=("int8", "int4"))
    device: str = _opt("cpu", "torch device")
    tp: int = _opt(1, "tensor-parallel ranks (start them with `torchrun --nproc-per-node N -m codegen serve --tp N`)", 1, 1024)
    threads: int | None = _opt(None, "CPU threads for torch (default: one per core)", 1, 1024)
    prefix_cache_mb: int = _opt(1024, "memory for the KV of recent prompts (MiB): a request that begins like one of them "
                                      "prefills only the rest; 0 = off", 0, 1 << 20)
    allow_run: bool = _opt(False, "let the web page run the conversation's program (in the evaluation sandbox only, "
                                  "behind the API key when one is set)")
    run_timeout: int = _opt(10, "seconds a program run from the web page may take", 1, 600)
    max_body_bytes: int = _opt(2 * 1024 * 1024, "request bodies larger than this are answered 413 unread", 1024, 2**31)
    shutdown_timeout: int = _opt(10, "seconds running requests get to finish after SIGTERM before they are cancelled", 0, 3600)
    docs: str = _opt("on", "serve /docs and /openapi.json (behind the API key when one is set)", choices=("on", "off"))
    log_level: str = _opt("info", "uvicorn log level", choices=("critical", "error", "warning", "info", "debug"))

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None or isinstance(value, bool):
                continue
            flag = "--" + f.name.replace("_", "-")
            if meta["min"] is not None and value < meta["min"] or meta["max"] is not None and value > meta["max"]:
                raise ValueError(f"{flag} must be in [{meta['min']}, {meta['max']}], got {value}")
            if meta["choices"] and value not in meta["choices"]:
                raise ValueError(f"{flag} must be one of {', '.join(meta['choices'])}, got {value!r}")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if f.type == "bool":
                parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, action="store_true", help=meta["help"])
                continue
            kind = int if f.type in ("int", "int | None") else str
            help = meta["help"] + (f" (default {f.default})" if f.default is not None else "")
            kwargs: dict[str, Any] = dict(type=kind, default=f.default, help=help)
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerSettings:
        settings = cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
        settings.validate()
        return settings
