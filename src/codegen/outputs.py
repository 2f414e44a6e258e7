"""Output records of the model's forward pass, shaped like `transformers.modeling_outputs`.

They read as dataclasses (`out.logits`), as dicts (`out["logits"]`) and as tuples (`out[0]`,
`out.to_tuple()`); as in transformers, fields that are None are left out of the tuple view.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch


class ModelOutput:
    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v for _, v in self.items())

    def keys(self) -> list[str]:
        return [k for k, _ in self.items()]

    def items(self) -> list[tuple[str, Any]]:
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            return dict(self.items())[key]
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.items())


@dataclass
class BaseModelOutputWithPast(ModelOutput):
    last_hidden_state: torch.Tensor | None = None  # (B, T, E)
    past_key_values: Any = None  # tuple per layer of (key, value), each (B, H, T_total, D), or a KVCache
    hidden_states: tuple[torch.Tensor, ...] | None = None  # n_layer + 1 entries, last one after ln_f
    attentions: tuple[torch.Tensor, ...] | None = None  # n_layer entries of (B, H, T, T_total)


@dataclass
class CausalLMOutputWithPast(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (B, T, V), float32
    past_key_values: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
