"""codegen: Salesforce CodeGen models in plain PyTorch, compatible with transformers checkpoints.

The names below are imported on first use (PEP 562), so that `import codegen` — and the command
line's argument parsing and `--help` — do not pay for importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "BaseModelOutputWithPast": "outputs",
    "CausalLMOutputWithPast": "outputs",
    "CheckpointError": "checkpoint",
    "CodeGenConfig": "config",
    "ConfigError": "config",
    "CodeGenForCausalLM": "model",
    "CodeGenModel": "model",
    "CodeGenTokenizer": "tokenizer",
    "CodeGenTokenizerFast": "tokenizer",
    "TokenizerFileError": "tokenizer",
    "KVCache": "engine",
    "SamplingParams": "engine",
    "Completion": "completion",
    "CompletionDelta": "completion",
    "CompletionOptions": "completion",
    "complete": "completion",
    "stream_complete": "completion",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'codegen' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
