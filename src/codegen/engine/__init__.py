"""The generation engine: one sampling-parameter record (`params`), the batch's KV cache (`cache`),
token selection (`select`), stop rules on text (`text`), the kernel backend (`backend`), the only
decode loop (`scheduler`), its server thread (`batcher`) and transformers' `generate` (`generate`).
It never imports the model: it drives whatever `CodeGenForCausalLM`-shaped network it is given."""

from .cache import KVCache
from .params import CompletionOptions, SamplingParams
from .scheduler import ErrorEvent, PromptLogprobs, Request, Scheduler, TokenEvent

__all__ = ["CompletionOptions", "ErrorEvent", "KVCache", "PromptLogprobs", "Request", "SamplingParams", "Scheduler",
           "TokenEvent"]
