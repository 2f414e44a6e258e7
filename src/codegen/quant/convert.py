"""Quantizing: a loaded model in place (`--quantize` at load), and a checkpoint directory shard by
shard (`codegen quantize`), which holds at most one input tensor's float copy and one output shard
in memory (input shards are memory-mapped safetensors), so a 16B checkpoint quantizes on a 24 GB
machine."""

from __future__ import annotations

import json
import logging
import os
import shutil

import torch
from torch import nn

from .formats import QuantSpec, quantize_int8
from .linear import QuantEmbedding, QuantLinear

logger = logging.getLogger(__name__)

CONFIG_KEY = "quantization_config"


def spec_of(config) -> QuantSpec | None:
    """The quantization a config records, or None."""
    data = getattr(config, "extra", {}).get(CONFIG_KEY)
    return None if data is None else QuantSpec.from_config(data)


def linear_names(model: nn.Module) -> list[str]:
    """Every Linear layer, lm_head included unless it shares the embedding's weight."""
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not (tied and name == "lm_head")]


def embedding_name(model: nn.Module, spec: QuantSpec) -> str | None:
    """The token embedding that `spec` quantizes: None when it does not, or lm_head shares its weight."""
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Embedding) and name.endswith("wte")]
    return names[0] if spec.embedding and names and not tied else None


def _swap(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def empty_quantized(model: nn.Module, spec: QuantSpec) -> nn.Module:
    """Replace every Linear by an empty QuantLinear on the meta device (before loading a quantized checkpoint)."""
    for name in linear_names(model):
        m = model.get_submodule(name)
        _swap(model, name, QuantLinear(m.in_features, m.out_features, spec, bias=m.bias is not None, device="meta"))
    emb = embedding_name(model, spec)
    if emb is not None:
        m = model.get_submodule(emb)
        _swap(model, emb, QuantEmbedding(m.num_embeddings, m.embedding_dim, device="meta"))
    model.config.extra[CONFIG_KEY] = spec.to_config()
    return model


def take_activations_dtype(model: nn.Module, dtype: torch.dtype | None) -> None:
    """After loading: every QuantEmbedding returns its rows in `dtype`, the float weights' (the
    activations'; None: fp32), as `.to(dtype)` on a loaded model would set it. The loaders build the
    model on the meta device before the checkpoint has said its dtype."""
    for module in model.modules():
        if isinstance(module, QuantEmbedding):
            module.dtype = dtype if dtype is not None else torch.float32


def quantize_model(model: nn.Module, spec: QuantSpec) -> nn.Module:
    """Quantize every Linear of a loaded model in place (its float weights are released one by one)."""
    if spec_of(model.config) is not None:
        raise ValueError(f"the model is already quantized ({spec_of(model.config).name})")
    for name in linear_names(model):
        _swap(model, name, QuantLinear.from_linear(model.get_submodule(name), spec))
    emb = embedding_name(model, spec)
    if emb is not None:
        _swap(model, emb, QuantEmbedding.from_embedding(model.get_submodule(emb)))
    model.config.extra[CONFIG_KEY] = spec.to_config()
    return model.eval()


def quantize_tensor(weight: torch.Tensor, spec: QuantSpec | None) -> dict[str, torch.Tensor]:
    """One Linear weight (N, K) -> its checkpoint tensors {"weight", "weight_scale"} (saved layout);
    spec None: an embedding table (int8, one scale per token)."""
    if spec is None:
        q, scale = quantize_int8(weight)
        return {"weight": q, "weight_scale": scale}
    probe = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    probe.weight = nn.Parameter(weight, requires_grad=False)
    state = QuantLinear.from_linear(probe, spec).state_dict()
    return {"weight": state["weight"], "weight_scale": state["weight_scale"]}


def refuse_quantized(model: nn.Module, what: str) -> None:
    spec = spec_of(getattr(model, "config", None))
    if spec is not None or any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ValueError(f"{what} needs an unquantized model; this one is {spec.name if spec else 'quantized'} "
                         f"(quantize after training or merging, with `codegen quantize` or --quantize)")


def quantize_checkpoint(src: str, dst: str, spec: QuantSpec, max_shard_size: int | str = "2GB", progress: bool | None = None) -> dict:
    """Write the quantized form of checkpoint directory `src` to `dst` (config with its
    quantization_config, safetensors shards, tokenizer files); returns {"tensors", "quantized", "bytes"}."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from ..checkpoint import IGNORED_KEY, iter_tensors, parse_size, weight_files
    from ..config import CodeGenConfig
    from ..model import CodeGenForCausalLM, no_init_weights

    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("codegen quantize: the output directory must differ from the input")
    config = CodeGenConfig.from_pretrained(src)
    if spec_of(config) is not None:
        raise ValueError(f"{src} is already quantized ({spec_of(config).name})")
    with torch.device("meta"), no_init_weights():
        meta = CodeGenForCausalLM(config)
    targets = {name + ".weight": meta.get_submodule(name) for name in linear_names(meta)}
    emb = embedding_name(meta, spec)
    _, files = weight_files(src)
    os.makedirs(dst, exist_ok=True)
    limit = parse_size(max_shard_size)
    shard: dict[str, torch.Tensor] = {}
    names: list[str] = []
    weight_map: dict[str, str] = {}
    stats = {"tensors": 0, "quantized": 0, "bytes": 0}
    size = 0

    def flush() -> None:
        nonlocal shard, size
        if shard:
            name = f"model-{len(names) + 1:05d}.safetensors"
            save_file(shard, os.path.join(dst, name), metadata={"format": "pt"})
            names.append(name)
            weight_map.update({k: name for k in shard})
            shard, size = {}, 0

    bar = tqdm(total=len(files), unit="file", desc="quantizing", disable=None if progress is None else not progress)
    for file in files:
        for key, tensor in iter_tensors(file):
            if IGNORED_KEY.search(key):
                continue
            if key in targets:
                linear = targets[key]
                if tuple(tensor.shape) != (linear.out_features, linear.in_features):
                    raise ValueError(f"{file}: {key} has shape {tuple(tensor.shape)}; the config says "
                                     f"{(linear.out_features, linear.in_features)}")
                out = quantize_tensor(tensor, spec)
                stats["quantized"] += 1
                pieces = {key: out["weight"], key[: -len("weight")] + "weight_scale": out["weight_scale"]}
            elif emb is not None and key == emb + ".weight":
                out = quantize_tensor(tensor, None)
                stats["quantized"] += 1
                pieces = {key: out["weight"], key[: -len("weight")] + "weight_scale": out["weight_scale"]}
            elif key.endswith(".bias") and key[: -len("bias")] + "weight" in targets:
                pieces = {key: tensor.float().contiguous()}
            else:
                pieces = {key: tensor.contiguous()}
            for k, v in pieces.items():
                nbytes = v.numel() * v.element_size()
                if shard and size + nbytes > limit:
                    flush()
                shard[k] = v.clone() if v.data_ptr() == tensor.data_ptr() else v  # not a view of the input map
                size += nbytes
                stats["bytes"] += nbytes
            stats["tensors"] += 1
        bar.update(1)
    flush()
    bar.close()
    if len(names) == 1:
        os.replace(os.path.join(dst, names[0]), os.path.join(dst, "model.safetensors"))
    else:
        final = [f"model-{i + 1:05d}-of-{len(names):05d}.safetensors" for i in range(len(names))]
        for old, new in zip(names, final):
            os.replace(os.path.join(dst, old), os.path.join(dst, new))
        rename = dict(zip(names, final))
        with open(os.path.join(dst, "model.safetensors.index.json"), "w", encoding="utf-8") as fh:
            json.dump({"metadata": {"total_size": stats["bytes"]},
                       "weight_map": {k: rename[v] for k, v in sorted(weight_map.items())}}, fh, indent=2)
    config.extra[CONFIG_KEY] = spec.to_config()
    config.save_pretrained(dst)
    for name in os.listdir(src):  # the tokenizer's files travel with the weights
        if name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "generation_config.json"):
            shutil.copy(os.path.join(src, name), os.path.join(dst, name))
    logger.info("quantized %d of %d tensors of %s to %s (%s)", stats["quantized"], stats["tensors"], src, dst, spec.name)
    return stats
