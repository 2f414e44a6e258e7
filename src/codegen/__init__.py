"""codegen: Salesforce CodeGen models in plain PyTorch, compatible with transformers checkpoints."""

from .checkpoint import CheckpointError
from .config import CodeGenConfig, ConfigError
from .engine import KVCache, SamplingParams
from .model import CodeGenForCausalLM, CodeGenModel
from .outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from .tokenizer import CodeGenTokenizer, CodeGenTokenizerFast, TokenizerFileError

__version__ = "0.1.0"

__all__ = [
    "BaseModelOutputWithPast",
    "CausalLMOutputWithPast",
    "CheckpointError",
    "CodeGenConfig",
    "CodeGenForCausalLM",
    "CodeGenModel",
    "CodeGenTokenizer",
    "CodeGenTokenizerFast",
    "ConfigError",
    "KVCache",
    "SamplingParams",
    "TokenizerFileError",
]

from .complete import Completion, CompletionDelta, CompletionOptions, complete, stream_complete  # noqa: E402

__all__ += ["Completion", "CompletionDelta", "CompletionOptions", "complete", "stream_complete"]
