"""LoRA adapters for CodeGen's linear layers: add, save separately, load, merge into the weights.

A target Linear W (out, in) gets trainable A (r, in) and B (out, r), B starting at zero, and computes
W x + (alpha / r) B A x; merging sets W += (alpha / r) B A and removes the adapter. Adapters are
saved as `adapter_model.safetensors` with `adapter_config.json` (PEFT's file names and key layout).
"""

from __future__ import annotations

import json
import math
import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
TARGETS = ("qkv_proj", "out_proj", "fc_in", "fc_out")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.lora_B @ self.lora_A).to(self.base.weight.dtype) * self.scale
        for p in self.base.parameters():
            p.requires_grad_(True)
        return self.base


def _targets(model: nn.Module, targets: tuple[str, ...]):
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                yield module, child_name, f"{name}.{child_name}" if name else child_name


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = TARGETS) -> list[str]:
    """Freeze the model and wrap every Linear named in `targets` with an adapter; names wrapped."""
    if rank < 1:
        raise ValueError(f"lora rank must be >= 1, got {rank}")
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise ValueError(f"unknown LoRA target module(s) {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for parent, child_name, full in _targets(model, targets):
        setattr(parent, child_name, LoRALinear(getattr(parent, child_name), rank, alpha))
        wrapped.append(full)
    model.lora_config = {"r": rank, "lora_alpha": alpha, "target_modules": list(targets)}
    return wrapped


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """PEFT's key layout: base_model.model.<module>.lora_A.weight."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            out[f"base_model.model.{name}.lora_A.weight"] = module.lora_A.detach().contiguous()
            out[f"base_model.model.{name}.lora_B.weight"] = module.lora_B.detach().contiguous()
    return out


def save_adapters(model: nn.Module, directory: str, base_model: str | None = None) -> None:
    os.makedirs(directory, exist_ok=True)
    if base_model and os.path.exists(base_model):  # a relative path would be read as a hub id elsewhere
        base_model = os.path.abspath(base_model)
    save_file(adapter_state_dict(model), os.path.join(directory, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = dict(model.lora_config, peft_type="LORA", task_type="CAUSAL_LM", base_model_name_or_path=base_model, bias="none")
    with open(os.path.join(directory, ADAPTER_CONFIG), "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2)


def load_adapters(model: nn.Module, directory: str) -> None:
    """Wrap `model` as the adapter config says and load the adapter weights into it."""
    with open(os.path.join(directory, ADAPTER_CONFIG), encoding="utf-8") as fh:
        config = json.load(fh)
    if not any(isinstance(m, LoRALinear) for m in model.modules()):
        apply_lora(model, config["r"], config["lora_alpha"], tuple(config["target_modules"]))
    state = load_file(os.path.join(directory, ADAPTER_WEIGHTS))
    modules = dict(model.named_modules())
    for key, tensor in state.items():
        name, part = key.removeprefix("base_model.model.").rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        target = modules.get(name)
        if not isinstance(target, LoRALinear):
            raise ValueError(f"{directory}/{ADAPTER_WEIGHTS}: {key} names no adapter of this model")
        with torch.no_grad():
            getattr(target, part).copy_(tensor)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its Linear and remove it; the model is plain again (all trainable)."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model
