"""Checkpoint files: reading and writing transformers-format CodeGen checkpoints.

A checkpoint is a directory with `config.json` and weights as `model.safetensors`,
`pytorch_model.bin`, or shards listed by `model.safetensors.index.json` /
`pytorch_model.bin.index.json`. State-dict keys equal our module names, so no layout conversion is
needed; only the known non-parameter buffers of older checkpoints are dropped.

Loading builds the model on the meta device and assigns tensors one at a time: safetensors tensors
kept as stored are views of a memory map, those converted at load (dtype, quantized, relaid) are read
into their own memory (safetensors_io), `.bin` tensors come from torch.load's map; so a checkpoint
needs about its own size of RAM (no second full copy, no mapped pages of converted tensors beside it). `.bin` files are only ever
read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .config import CONFIG_NAME, CodeGenConfig
from .safetensors_io import SafetensorsFormatError, StoredRows, iter_safetensors

logger = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_WEIGHTS = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
# Non-parameter buffers found in some CodeGen checkpoints (transformers' causal mask, jaxformer's
# `bias`/`masked_bias`): present or not, they carry nothing we need.
IGNORED_KEY = re.compile(r"(^|\.)attn\.(causal_mask|bias|masked_bias)$")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "half": torch.float16,
          "float": torch.float32}
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as the requested model; the message names file and key."""


# --------------------------------------------------------------------------- locating files
def resolve(path: str | os.PathLike, revision: str | None = None) -> str:
    """A local checkpoint directory for `path`: the path itself, or a hub download of a hub id."""
    path = os.fspath(path)
    if os.path.exists(path) or not HUB_ID.match(path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such checkpoint directory")
        return path
    how = (
        f"download the checkpoint elsewhere (e.g. `huggingface-cli download {path} --local-dir DIR` "
        f"or `git clone https://huggingface.co/{path}`) and pass DIR"
    )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"{path}: not a local directory, and huggingface_hub is not installed to fetch it from the hub "
            f"(pip install 'codegen[hub]'); or {how}"
        ) from None
    try:
        local = snapshot_download(path, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.txt"])
        if not _weight_files(local)[1]:
            local = snapshot_download(path, revision=revision, allow_patterns=["*.json", "*.bin", "*.txt"])
    except Exception as e:  # offline, unknown repo, auth: all end the same way for the user
        raise FileNotFoundError(f"{path}: not a local directory and could not be fetched from the hub ({' '.join(str(e).split())}); {how}") from None
    return local


def _weight_files(directory: str) -> tuple[str, list[str]]:
    """(layout, files), preferring safetensors over .bin; layout is '' when there are no weights."""
    for name, layout in ((SAFE_WEIGHTS, "safetensors"), (SAFE_INDEX, "safetensors-sharded"),
                         (BIN_WEIGHTS, "bin"), (BIN_INDEX, "bin-sharded")):
        file = os.path.join(directory, name)
        if not os.path.isfile(file):
            continue
        if not name.endswith(".index.json"):
            return layout, [file]
        try:
            with open(file, encoding="utf-8") as fh:
                weight_map = json.load(fh)["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{file}: not a valid shard index ({e!r})") from None
        root = os.path.realpath(directory)
        for f in shards:  # an index may name only files inside its own directory
            inside = os.path.realpath(os.path.join(directory, f)) if isinstance(f, str) else ""
            if not isinstance(f, str) or os.path.isabs(f) or not inside.startswith(root + os.sep):
                raise CheckpointError(f"{file}: shard {f!r} lies outside the checkpoint directory {directory}")
        missing = [f for f in shards if not os.path.isfile(os.path.join(directory, f))]
        if missing:
            raise CheckpointError(f"{file} lists shard(s) missing from {directory}: {', '.join(missing)}")
        return layout, [os.path.join(directory, f) for f in shards]
    return "", []


def weight_files(directory: str) -> tuple[str, list[str]]:
    layout, files = _weight_files(directory)
    if not files:
        raise CheckpointError(
            f"{directory}: no weights found (expected {SAFE_WEIGHTS}, {BIN_WEIGHTS}, or a sharded checkpoint "
            f"with {SAFE_INDEX} / {BIN_INDEX})"
        )
    return layout, files


def iter_tensors(file: str, copy: Callable[[str, torch.dtype], bool] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) pairs of one weights file. safetensors: the tensors copy(key, dtype) names (all
    without `copy`) read one at a time into their own memory, the others mapped (see safetensors_io);
    .bin: views of torch.load's memory map."""
    if file.endswith(".safetensors"):
        try:
            yield from iter_safetensors(file, copy)
        except (SafetensorsFormatError, SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: not a readable safetensors file ({e}); it may be truncated or corrupt") from None
        return
    def unreadable(e: Exception) -> CheckpointError:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return CheckpointError(f"{file}: not a readable PyTorch weights file ({type(e).__name__}: {first}); only "
                               f"tensors saved by torch.save are loaded, never other pickled objects")

    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            state = torch.load(file, map_location="cpu", weights_only=True)  # legacy (non-zip) .bin: no memory map
    except Exception as e:  # UnpicklingError for anything but plain tensors, EOFError for truncation
        raise unreadable(e) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: expected a dict of tensors, found {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{file}: {key!r} is a {type(value).__name__}, not a tensor")
        yield key, value


# --------------------------------------------------------------------------- loading
def release_free_memory() -> None:
    """Return the allocator's free pages to the system (glibc's malloc_trim). Loading frees many large
    blocks (tensors read, then converted or relaid) that glibc keeps in its heap; without this a
    quantized 2B model holds ~0.4 GiB of them for the life of the process. No-op elsewhere."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def resolve_dtype(torch_dtype: Any, config: CodeGenConfig) -> torch.dtype | None:
    """The dtype to load in; None for "auto" when config.json names none (then the file's own dtype)."""
    if torch_dtype is None:
        return torch.float32  # transformers 4.x default: fp32 whatever the file holds
    if torch_dtype == "auto":
        stored = config.torch_dtype
        if isinstance(stored, str) and stored in DTYPES:
            return DTYPES[stored]
        return None if stored is None else torch.float32
    if isinstance(torch_dtype, torch.dtype):
        if torch_dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"torch_dtype {torch_dtype} is not supported; use float32, float16 or bfloat16")
        return torch_dtype
    if isinstance(torch_dtype, str) and torch_dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[torch_dtype.removeprefix("torch.")]
    raise ValueError(f"torch_dtype {torch_dtype!r} is not supported; use None, 'auto', float32, float16 or bfloat16")


def load_pretrained(cls, path, *, torch_dtype=None, device=None, config=None, revision=None, progress=None, quantize=None):
    """Build `cls` (CodeGenModel or CodeGenForCausalLM) from a checkpoint directory or hub id.
    `quantize` (a QuantSpec) quantizes each Linear weight as it is read, so that the float model is
    never held whole."""
    directory = resolve(path, revision)
    config = config if config is not None else CodeGenConfig.from_pretrained(directory)
    if config.mp_num is None and ("auto_map" in config.extra or "head_dim" in config.extra):
        # a CodeGen2 config: its shard count is not written down, so say which rule decided it
        logger.warning("%s: qkv_proj read as %d shards (%s)", directory, config.qkv_shards, config.shard_rule)
    layout, files = weight_files(directory)
    from .model import no_init_weights

    from .quant.convert import (embedding_name, empty_quantized, linear_names, quantize_tensor, spec_of,
                                take_activations_dtype)
    from .quant.formats import to_kernel_layout
    from .quant.linear import QuantLinear

    spec = spec_of(config)  # a checkpoint written by `codegen quantize`
    if quantize is not None and spec is not None:
        raise CheckpointError(f"{directory} is already quantized ({spec.name}); load it without quantize")
    with torch.device("meta"), no_init_weights():
        model = cls(config)
        # quantized as read: weight key -> the Linear's spec (None: the embedding, int8 per token)
        on_read = {name + ".weight": quantize for name in linear_names(model)} if quantize is not None else {}
        table = embedding_name(model, quantize) if quantize is not None else None
        if table is not None:
            on_read[table + ".weight"] = None
        if quantize is not None:  # the file holds float weights: check them against the float shapes
            expected = {k: v.shape for k, v in model.state_dict(keep_vars=True).items()}
            empty_quantized(model, quantize)
        if spec is not None:
            empty_quantized(model, spec)
    described = model.state_dict(keep_vars=True)
    if quantize is None:
        expected = {k: v.shape for k, v in described.items()}
    # quantized layers' tensors keep their stored dtypes (int8 / packed uint8 weights, fp32 scales and biases)
    exact = {k: v.dtype for k, v in described.items() if spec is not None and _quantized_key(model, k)}
    tied = {"lm_head.weight"} if config.tie_word_embeddings and "lm_head.weight" in expected else set()
    # A CodeGenModel loads the `transformer.` part of a causal-LM checkpoint, as in transformers.
    strip = "transformer." if "wte.weight" in expected else ""

    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = resolve_dtype(torch_dtype, config)
    state: dict[str, torch.Tensor] = {}
    total = sum(os.path.getsize(f) for f in files)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"loading {os.path.basename(os.path.abspath(directory))}",
               disable=None if progress is None else not progress)
    packed = {k for k in exact if k.endswith(".weight") and spec.bits == 4  # relaid for the kernels at load
              and isinstance(model.get_submodule(k[: -len(".weight")]), QuantLinear)}
    relaid: set[str] = set()

    def converted(key: str, stored: torch.dtype) -> bool:  # read, not mapped: converted copies only stay
        key = key[len(strip):] if strip and key.startswith(strip) else key
        return key in on_read or key in packed or (stored.is_floating_point and key not in exact
                                                   and dtype is not None and stored != dtype)

    mapped_from: dict[str, tuple[str, str]] = {}  # kept-as-stored safetensors tensors: key -> (file, its key there)
    for file in files:
        for key, tensor in iter_tensors(file, converted):
            stored_key = key
            if strip and key.startswith(strip):
                key = key[len(strip):]
            elif strip and key.startswith("lm_head."):
                continue
            if IGNORED_KEY.search(key):
                continue
            if key not in expected:
                raise CheckpointError(f"{file}: unexpected tensor {key!r} {tuple(tensor.shape)}: not a parameter of {cls.__name__}")
            if tensor.shape != expected[key]:
                raise CheckpointError(
                    f"{file}: tensor {key!r} has shape {tuple(tensor.shape)}, but the config "
                    f"({directory}/{CONFIG_NAME}) requires {tuple(expected[key])}"
                )
            if key in exact:
                if tensor.dtype != exact[key] and not (tensor.is_floating_point() and exact[key].is_floating_point):
                    raise CheckpointError(f"{file}: tensor {key!r} is {str(tensor.dtype).removeprefix('torch.')}; the "
                                          f"quantized layer ({spec.name}) needs {str(exact[key]).removeprefix('torch.')}")
                bar.update(tensor.numel() * tensor.element_size())
                if key in packed:  # relaid now, so that the saved layout is freed before the next tensor is read
                    model.get_submodule(key[: -len(".weight")]).weight = to_kernel_layout(tensor).to(device)
                    relaid.add(key)
                    continue
                state[key] = tensor.to(device)
                if file.endswith(".safetensors") and device.type == "cpu":
                    mapped_from[key] = (file, stored_key)
                continue
            if not tensor.is_floating_point():
                raise CheckpointError(f"{file}: tensor {key!r} is {str(tensor.dtype).removeprefix('torch.')}; a floating-point "
                                      f"weight belongs there")
            if dtype is None and tensor.is_floating_point():
                dtype = tensor.dtype  # "auto" without torch_dtype in config.json: the file's own dtype
            bar.update(tensor.numel() * tensor.element_size())
            if tensor.is_floating_point() and tensor.dtype != dtype:
                tensor = tensor.to(dtype)
            if key in on_read:  # quantized now, from the dtype the float model would have had
                prefix = key[: -len("weight")]
                for name, value in quantize_tensor(tensor, on_read[key]).items():
                    state[prefix + name] = value.to(device)
                continue
            if key.endswith(".bias") and key[: -len("bias")] + "weight" in on_read:
                tensor = tensor.float()  # a quantized layer's bias is fp32
            state[key] = tensor.to(device)
    bar.close()
    missing = sorted(set(expected) - set(state) - tied - relaid)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise CheckpointError(f"{directory}: the checkpoint ({layout}) lacks {len(missing)} tensor(s) of {cls.__name__}: {shown}")
    if tied:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    result = model.load_state_dict(state, strict=False, assign=True)
    if set(result.missing_keys) - relaid - tied or result.unexpected_keys:  # checked above; a guard, not a path
        raise CheckpointError(f"{directory}: could not assign {result.missing_keys or result.unexpected_keys}")
    if tied:
        model.lm_head.weight = model.transformer.wte.weight
    take_activations_dtype(model, dtype)
    _rows_from_files(model, mapped_from)
    model.eval()
    release_free_memory()  # what reading and relaying freed, before the model runs
    if hasattr(model, "tokenizer_size"):  # what generate may produce: ids the tokenizer can decode
        from .tokenizer.files import TokenizerFileError, tokenizer_size

        try:
            model.tokenizer_size = tokenizer_size(directory)
        except TokenizerFileError as e:
            logger.warning("%s; generate will not limit ids to the tokenizer's", e)
    logger.info("loaded %s from %s (%s, %s)", cls.__name__, directory, layout, dtype)
    return model


def _rows_from_files(model, mapped_from: dict[str, tuple[str, str]]) -> None:
    """A quantized token embedding kept as stored in a safetensors file looks its rows up with reads of
    the file (safetensors_io.StoredRows), so that its table is not made resident through the map."""
    from .quant import QuantEmbedding

    for name, module in model.named_modules():
        if isinstance(module, QuantEmbedding) and name + ".weight" in mapped_from:
            module.read_rows_with(StoredRows(*mapped_from[name + ".weight"]))


def _quantized_key(model, key: str) -> bool:
    from .quant import QuantEmbedding, QuantLinear

    parent = key.rpartition(".")[0]
    try:
        return isinstance(model.get_submodule(parent), (QuantLinear, QuantEmbedding))
    except AttributeError:
        return False


# --------------------------------------------------------------------------- saving
def parse_size(size: int | str) -> int:
    """'5GB' -> 5 * 10**9, '500MiB' -> 500 * 2**20, as transformers' max_shard_size."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*", size.upper())
    if not m:
        raise ValueError(f"max_shard_size {size!r} is not a size like 5GB, 500MB or 2GiB")
    base = 1024 if m.group(3) == "IB" else 1000
    return int(float(m.group(1)) * base ** " KMGT".index(m.group(2) or " "))


def save_pretrained(model, path, *, safe_serialization: bool = True, max_shard_size: int | str = "5GB") -> None:
    os.makedirs(path, exist_ok=True)
    config = model.config
    config.torch_dtype = str(model.dtype).removeprefix("torch.")
    config.architectures = [type(model).__name__]
    config.save_pretrained(path)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # shared with wte; safetensors refuses aliased tensors

    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes

    for name in os.listdir(path):  # stale weights of an earlier save would shadow or mix with these
        if re.fullmatch(r"(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?|model\.safetensors\.index\.json", name):
            os.remove(os.path.join(path, name))
    stem, ext = ("model", "safetensors") if safe_serialization else ("pytorch_model", "bin")
    names = [f"{stem}.{ext}"] if len(shards) == 1 else [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        file = os.path.join(path, name)
        if safe_serialization:
            save_file(shard, file, metadata={"format": "pt"})
        else:
            torch.save(shard, file)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {key: name for name, shard in zip(names, shards) for key in shard},
        }
        with open(os.path.join(path, f"{stem}.{ext}.index.json"), "w", encoding="utf-8") as fh:
            json.dump(index, fh, indent=2, sort_keys=True)


# --------------------------------------------------------------------------- inspection
def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Config, layout, files, tensor count, parameter count and stored dtypes, without loading weights."""
    directory = resolve(path)
    config = CodeGenConfig.from_pretrained(directory)
    layout, files = weight_files(directory)
    dtypes: dict[str, int] = {}
    n_params = n_tensors = 0
    ignored = []
    for file in files:
        if file.endswith(".safetensors"):
            try:
                with safe_open(file, framework="pt") as fh:
                    shapes = {k: (fh.get_slice(k).get_shape(), SAFETENSORS_DTYPES.get(fh.get_slice(k).get_dtype(), fh.get_slice(k).get_dtype())) for k in fh.keys()}
            except SafetensorError as e:
                raise CheckpointError(f"{file}: not a readable safetensors file ({e}); it may be truncated or corrupt") from None
        else:
            shapes = {k: (list(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in iter_tensors(file)}
        for key, (shape, dtype) in shapes.items():
            if IGNORED_KEY.search(key):
                ignored.append(key)
                continue
            n_tensors += 1
            count = 1
            for s in shape:
                count *= s
            n_params += count
            dtypes[dtype] = dtypes.get(dtype, 0) + count
    return {
        "path": os.path.abspath(directory),
        "layout": layout,
        "files": [{"name": os.path.basename(f), "bytes": os.path.getsize(f)} for f in files],
        "tensors": n_tensors,
        "ignored_buffers": len(ignored),
        "parameters": n_params,
        "dtypes": dtypes,
        "qkv_shards": config.qkv_shards,
        "shard_rule": config.shard_rule,
        "config": config.to_dict(),
    }
