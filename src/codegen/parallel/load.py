"""Loading a tensor-parallel rank's part of a checkpoint: only its slices are read (safetensors:
plain reads of the slices' bytes; .bin: torch.load's memory map, the slices copied out), converted
to the dtype asked and, with `quantize`, quantized slice by slice; the whole model is never held.

The file's tensors are checked against the whole model's shapes first (the same messages as a
single-process load), then cut (`shard.shard_tensor`'s rule) and assigned to the rank's network
(`shard.shard_model`). A checkpoint quantized by `codegen quantize` is refused: its int4 groups do
not follow the column split; load the float checkpoint with --quantize instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

from .. import checkpoint as ckpt
from ..config import CodeGenConfig
from ..model import CodeGenForCausalLM, no_init_weights
from ..safetensors_io import SafetensorsFormatError, iter_safetensors_parts
from . import shard
from .group import Layout

logger = logging.getLogger(__name__)


def _parts(file: str, config: CodeGenConfig, expected: dict, rank: int, tp: int, kept: Callable[[str, torch.dtype], bool]):
    """(key, whole shape, part) of one weights file, parts read as described in the module doc;
    kept(key, dtype): the tensor is used as stored (a row slice of it may stay memory-mapped)."""
    if file.endswith(".safetensors"):
        shapes: dict[str, tuple] = {}

        def select(key, shape, dtype):
            shapes[key] = shape
            if ckpt.IGNORED_KEY.search(key) or key not in expected or tuple(expected[key]) != shape:
                return 0, slice(0, 0), False  # read nothing: the caller reports the key with its shape
            d = shard.split_dim(key)
            index = shard.part(key, config, rank, tp, shape[d] if len(shape) > d else 0)
            return None if index is None else (d, index, kept(key, dtype))

        try:
            for key, tensor in iter_safetensors_parts(file, select):
                yield key, shapes[key], tensor
        except (SafetensorsFormatError, OSError) as e:
            raise ckpt.CheckpointError(f"{file}: not a readable safetensors file ({e}); it may be truncated or corrupt") from None
        return
    for key, tensor in ckpt.iter_tensors(file):  # views of torch.load's memory map
        ok = key in expected and tuple(expected[key]) == tuple(tensor.shape)
        part = shard.shard_tensor(key, tensor, config, rank, tp) if ok and not ckpt.IGNORED_KEY.search(key) else tensor
        if part is not None:  # a run of rows kept as stored stays a view; other parts are copied out
            yield key, tuple(tensor.shape), part if not ok or (part.is_contiguous() and kept(key, part.dtype)) else part.clone()


def load_rank(path: str | os.PathLike, layout: Layout, *, torch_dtype=None, quantize=None, progress: bool | None = None
              ) -> CodeGenForCausalLM:
    """This rank's part of the CodeGenForCausalLM in `path` (a checkpoint directory)."""
    directory = ckpt.resolve(path)
    config = CodeGenConfig.from_pretrained(directory)
    from ..quant.convert import (embedding_name, empty_quantized, linear_names, quantize_tensor, spec_of,
                                 take_activations_dtype)

    if spec_of(config) is not None:
        raise ckpt.CheckpointError(f"{directory} is quantized ({spec_of(config).name}); under --tp load its float "
                                   f"checkpoint with --quantize {spec_of(config).name.split('-')[0]}")
    rank, tp = layout.tp_rank, layout.tp
    shard.check_split(config, tp)
    layout_name, files = ckpt.weight_files(directory)
    with torch.device("meta"), no_init_weights():
        whole = {k: v.shape for k, v in CodeGenForCausalLM(config).state_dict().items()}
        model = shard.shard_model(CodeGenForCausalLM(config), rank, tp, layout.tp_group)
        on_read = {name + ".weight": quantize for name in linear_names(model)} if quantize is not None else {}
        table = embedding_name(model, quantize) if quantize is not None else None
        if table is not None:
            on_read[table + ".weight"] = None  # the token table: int8, one scale per token
        if quantize is not None:
            empty_quantized(model, quantize)  # (QuantLinear's load relays int4 weights for the kernels)
    wanted = set(model.state_dict())
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    dtype = ckpt.resolve_dtype(torch_dtype, config)
    device = layout.device
    state: dict[str, torch.Tensor] = {}
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(os.path.getsize(f) for f in files), unit="B", unit_scale=True,
               desc=f"loading rank {rank} of {tp}", disable=None if progress is None else not progress)

    def kept(key: str, stored: torch.dtype) -> bool:  # no conversion: the slice is used as it lies in the file
        quantized = key in on_read or (key.endswith(".bias") and key[: -len("bias")] + "weight" in on_read)
        return not quantized and stored.is_floating_point and (dtype is None or stored == dtype) and device.type == "cpu"

    for file in files:
        for key, shape, tensor in _parts(file, config, whole, rank, tp, kept):
            if ckpt.IGNORED_KEY.search(key):
                continue
            if key not in whole:
                raise ckpt.CheckpointError(f"{file}: unexpected tensor {key!r} {shape}: not a parameter of CodeGenForCausalLM")
            if shape != tuple(whole[key]):
                raise ckpt.CheckpointError(f"{file}: tensor {key!r} has shape {shape}, but the config "
                                           f"({directory}/{ckpt.CONFIG_NAME}) requires {tuple(whole[key])}")
            if not tensor.is_floating_point():
                raise ckpt.CheckpointError(f"{file}: tensor {key!r} is {str(tensor.dtype).removeprefix('torch.')}; "
                                           f"a floating-point weight belongs there")
            bar.update(tensor.numel() * tensor.element_size())
            if dtype is None:
                dtype = tensor.dtype  # "auto" without torch_dtype in config.json: the file's own dtype
            tensor = tensor.to(dtype)
            if key in on_read:
                prefix = key[: -len("weight")]
                for name, value in quantize_tensor(tensor, on_read[key]).items():
                    state[prefix + name] = value.to(device)
                continue
            if key.endswith(".bias") and key[: -len("bias")] + "weight" in on_read:
                tensor = tensor.float()
            state[key] = tensor.to(device)
    bar.close()
    if tied and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]  # the same rows of the vocabulary
    missing = sorted(wanted - set(state))
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ckpt.CheckpointError(f"{directory}: the checkpoint ({layout_name}) lacks {len(missing)} tensor(s): {shown}")
    model.load_state_dict(state, strict=True, assign=True)
    take_activations_dtype(model, dtype)
    shard.add_collectives(model, layout.tp_group, tp)
    model.eval()
    ckpt.release_free_memory()
    from ..tokenizer.files import TokenizerFileError, tokenizer_size

    try:
        model.tokenizer_size = tokenizer_size(directory)
    except TokenizerFileError as e:
        logger.warning("%s; generate will not limit ids to the tokenizer's", e)
    logger.info("rank %d of %d: loaded its part of %s (%s, %s)", rank, tp, directory, layout_name, dtype)
    return model
