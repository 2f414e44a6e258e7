"""What the command line and the server load for inference: a model directory (or the bundled demo
model), optionally with LoRA adapters, and its tokenizer.

A directory that `codegen train --lora-rank` wrote holds adapters (`adapter_config.json`,
`adapter_model.safetensors`) and the tokenizer, not a model: its base model is found from
`base_model_name_or_path` in the adapter config. Adapters (from such a directory or `--adapter DIR`)
are merged into the weights after loading, so that inference runs at a plain model's speed.
"""

from __future__ import annotations

import json
import logging
import os

logger = logging.getLogger(__name__)


def demo_or(path: str | None) -> str:
    """`path`, or the bundled demo model's directory when none is given."""
    if path is None:
        from .demo import demo_path

        return demo_path()
    return path


def is_adapter_dir(path: str) -> bool:
    from .lora import ADAPTER_CONFIG

    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG)) and not os.path.isfile(os.path.join(path, "config.json"))


def adapter_base(adapter_dir: str) -> str:
    """The base model an adapter directory names; an error naming the file when it names none."""
    from .lora import ADAPTER_CONFIG

    config_file = os.path.join(adapter_dir, ADAPTER_CONFIG)
    try:
        with open(config_file, encoding="utf-8") as fh:
            base = json.load(fh).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{config_file}: not a readable adapter config ({e})") from None
    if not base:
        raise ValueError(f"{config_file}: no base_model_name_or_path; pass the base model as --model and this "
                         f"directory as --adapter")
    if not os.path.isabs(base) and not os.path.exists(base) and os.path.exists(os.path.join(adapter_dir, base)):
        base = os.path.join(adapter_dir, base)
    return base


def resolve_model(model: str | None, adapter: str | None = None) -> tuple[str, str | None]:
    """(model directory, adapter directory or None) for `--model` and `--adapter` as given."""
    from .checkpoint import resolve

    model = resolve(demo_or(model))
    if is_adapter_dir(model):
        if adapter is not None:
            raise ValueError(f"--model {model} holds LoRA adapters, not a model; give the base model as --model "
                             f"with --adapter, or this directory alone")
        model, adapter = resolve(adapter_base(model)), model
    return model, adapter


def fastest_dtype() -> str:
    """The dtype `--dtype auto` picks on this CPU: bfloat16 where the CPU multiplies bf16 natively
    (AVX512-BF16 / AMX: the native decode step's VDPBF16PS reads half the bytes of fp32, and with AMX
    torch's bf16 GEMM prefills several times faster; with AVX512-BF16 alone prefills run in fp32
    (engine.backend widens them), a little faster than an fp32 model's: half the weight bytes), else
    float32 (on AVX2 and plain AVX-512 CPUs bf16 is widened to fp32 in software). Quantized models
    follow the same rule for their activations and KV cache (the weights stay int8 / int4, the scales
    and biases fp32): bf16 halves the bytes each decode step reads from the cache (the README's
    figures: 1.06x after a 64-token prompt, 1.44x after 1500 for int4 on a 2-core Xeon with
    AVX512-BF16), and benchmarks/quant_quality.py finds the perplexity within 0.1 % of fp32
    activations'."""
    from .native import kernels

    if not kernels.bf16_native() or kernels.tier()[0] not in (None, "avx512bf16"):
        return "float32"  # (a tier forced below avx512bf16 stands for a CPU without native bf16 dot products)
    return "bfloat16"


def load_for_inference(model: str | None, tokenizer: str | None = None, dtype: str | None = "float32",
                       device: str = "cpu", threads: int | None = None, adapter: str | None = None,
                       quantize: str | None = None, group_size: int | None = None, layout=None):
    """(model, fast tokenizer), with the thread count set first (it matters for decode speed). The
    tokenizer comes from `tokenizer`, else the adapter directory when it has one, else the model's.
    `quantize` ("int8" / "int4", weight-only) quantizes each weight as it is read, or, with an
    adapter, after merging it. dtype "auto": `fastest_dtype()` for this CPU; "stored": as the
    checkpoint's config.json says (transformers' torch_dtype="auto"). `layout` (codegen.parallel's,
    with tp > 1): this rank's slice of the model (codegen.parallel.load), on the layout's device."""
    import torch

    from . import lora
    from .model import CodeGenForCausalLM
    from .tokenizer import CodeGenTokenizerFast

    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    elif layout is not None and layout.world > 1:
        from .parallel.run import local_threads

        torch.set_num_threads(local_threads())  # the machine's cores shared by its ranks
    model_dir, adapter_dir = resolve_model(model, adapter)
    if tokenizer is None and adapter_dir is not None and os.path.isfile(os.path.join(adapter_dir, "vocab.json")):
        tokenizer = adapter_dir
    tok = CodeGenTokenizerFast.from_pretrained(tokenizer or model_dir)
    spec = None
    if quantize is not None:
        from .quant import QuantSpec

        spec = QuantSpec.parse(quantize, group_size)  # before loading: a bad flag costs nothing
    if dtype == "auto":
        dtype = fastest_dtype()
        logger.info("--dtype auto: %s on this CPU", dtype)
    elif dtype == "stored":
        dtype = "auto"  # from_pretrained's (transformers') name for it
    if layout is not None and layout.tp > 1:
        if adapter_dir is not None:
            raise ValueError("LoRA adapters are not merged under --tp: merge them into a checkpoint first "
                             "(load with --adapter in one process and save_pretrained) and load that")
        from .parallel.load import load_rank

        return load_rank(model_dir, layout, torch_dtype=dtype, quantize=spec), tok
    # Without an adapter to merge first, weights are quantized as they are read (the float model is never whole).
    net = CodeGenForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, device=device,
                                             quantize=spec if adapter_dir is None else None)
    if adapter_dir is not None:
        from .quant.convert import refuse_quantized

        refuse_quantized(net, "merging a LoRA adapter")
        lora.load_adapters(net, adapter_dir)
        lora.merge_lora(net).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        logger.info("merged the LoRA adapters of %s into %s", adapter_dir, model_dir)
    if spec is not None and adapter_dir is not None:
        from .quant.convert import quantize_model

        quantize_model(net, spec)
    if spec is not None:
        logger.info("quantized %s to %s at load", model_dir, spec.name)
    return net, tok
