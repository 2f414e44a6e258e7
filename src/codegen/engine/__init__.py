"""The generation engine: one sampling-parameter record (`params`), the batch's KV cache (`cache`),
the prefix cache (`prefix`), token selection (`select`), stop rules on text (`text`), the kernel
backend (`backend`), the only decode loop (`scheduler`), its server thread (`batcher`) and
transformers' `generate` (`generate`).
It never imports the model: it drives whatever `CodeGenForCausalLM`-shaped network it is given."""

from .cache import KVCache
from .params import CompletionOptions, SamplingParams
from .prefix import Prefix, PrefixCache
from .request import ErrorEvent, PromptLogprobs, Request, TokenEvent
from .scheduler import Scheduler

__all__ = ["CompletionOptions", "ErrorEvent", "KVCache", "Prefix", "PrefixCache", "PromptLogprobs", "Request",
           "SamplingParams", "Scheduler", "TokenEvent"]
