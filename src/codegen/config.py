"""CodeGen architecture configuration: the `config.json` of a checkpoint as a typed dataclass.

Field names and defaults are those of `transformers.CodeGenConfig`, so a hub `config.json` reads
unchanged. Keys the hub configs carry that CodeGen ignores (`scale_attn_weights`, `summary_*`,
`task_specific_params`, ...) are kept in `extra` and written back, never rejected.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

CONFIG_NAME = "config.json"
MODEL_TYPE = "codegen"
MP_NUM = 4  # qkv_proj is laid out as 4 shards (the 4 TPU-v4 cores of the original training run)
# CodeGen2-1B and -3.7B lay it out in 8 (TPU-v3); their configs alone carry a head_dim key, 128 or 256
# (the rule CTranslate2's converter applies; reference section 2.3).
CODEGEN2_8_SHARD_HEAD_DIMS = (128, 256)

# HF's attribute_map: alias -> canonical field.
ALIASES = {
    "max_position_embeddings": "n_positions",
    "hidden_size": "n_embd",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu", "silu", "swish", "tanh")


class ConfigError(ValueError):
    """A config.json or config value that cannot describe a CodeGen model."""


# Bounds on a config's sizes, far above CodeGen-16B (n_embd 6144, 34 layers, 24 heads, 2048 positions,
# 51200 rows): what lies beyond is a corrupt or hostile config.json, refused before any allocation.
LIMITS = {"vocab_size": 2**22, "n_positions": 2**20, "n_embd": 2**16, "n_layer": 1024, "n_head": 1024, "n_inner": 2**18}

@dataclass
class CodeGenConfig:
    vocab_size: int = 50400
    n_positions: int = 2048
    n_ctx: int = 2048  # unused by the model, kept for checkpoint compatibility
    n_embd: int = 4096
    n_layer: int = 28
    n_head: int = 16
    rotary_dim: int | None = 64
    n_inner: int | None = None  # None -> 4 * n_embd
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.0
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False
    torch_dtype: str | None = None  # storage dtype of the checkpoint ("float16", ...)
    architectures: list[str] | None = None
    mp_num: int | None = None  # qkv_proj's shard count; None: decided by `shard_rule` (4, or 8 for CodeGen2-1B/3.7B)
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, kept verbatim

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- derived sizes
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def qkv_shards(self) -> int:
        """How many [q | v | k] shards qkv_proj's output holds: mp_num when set, else by `shard_rule`."""
        if self.mp_num is not None:
            return self.mp_num
        return 8 if self.extra.get("head_dim") in CODEGEN2_8_SHARD_HEAD_DIMS else MP_NUM

    @property
    def shard_rule(self) -> str:
        """Which rule set qkv_shards, in words (for logs and `codegen info`)."""
        if self.mp_num is not None:
            return f"mp_num = {self.mp_num} in the config"
        if self.extra.get("head_dim") in CODEGEN2_8_SHARD_HEAD_DIMS:
            return f"head_dim = {self.extra['head_dim']} in the config: a CodeGen2-1B/3.7B layout, 8 shards"
        if "auto_map" in self.extra or "head_dim" in self.extra:
            return "a CodeGen2 config without head_dim 128/256: the 7B/16B layout, 4 shards (set mp_num to override)"
        return "CodeGen-1's layout, 4 shards"

    @property
    def inner_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def num_parameters(self) -> int:
        e, v = self.n_embd, self.vocab_size
        per_layer = 2 * e + 3 * e * e + e * e + 2 * e * self.inner_dim + self.inner_dim + e
        head = 0 if self.tie_word_embeddings else v * e
        return self.n_layer * per_layer + v * e + 2 * e + head + v

    def validate(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            if value > LIMITS[name]:  # far past any CodeGen model: a corrupt or hostile config
                raise ConfigError(f"{name} = {value} is beyond this project's bound of {LIMITS[name]}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if self.mp_num is not None and (not isinstance(self.mp_num, int) or isinstance(self.mp_num, bool)
                                        or self.mp_num not in (1, 2, 4, 8, 16)):
            raise ConfigError(f"mp_num must be 1, 2, 4, 8 or 16, got {self.mp_num!r}")
        if self.n_head % self.qkv_shards:
            raise ConfigError(
                f"n_head ({self.n_head}) must be divisible by the {self.qkv_shards} qkv shards of the fused "
                f"qkv_proj layout ({self.shard_rule})"
            )
        if self.rotary_dim is None:
            raise ConfigError("rotary_dim=None is not supported: set rotary_dim (<= head_dim, even)")
        if not isinstance(self.rotary_dim, int) or self.rotary_dim <= 0 or self.rotary_dim % 2:
            raise ConfigError(f"rotary_dim must be a positive even integer, got {self.rotary_dim!r}")
        if self.rotary_dim > self.head_dim:
            raise ConfigError(
                f"rotary_dim ({self.rotary_dim}) must not exceed head_dim = n_embd / n_head "
                f"= {self.head_dim}"
            )
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner <= 0):
            raise ConfigError(f"n_inner must be a positive integer or null, got {self.n_inner!r}")
        if self.n_inner is not None and self.n_inner > LIMITS["n_inner"]:
            raise ConfigError(f"n_inner = {self.n_inner} is beyond this project's bound of {LIMITS['n_inner']}")
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(
                f"activation_function {self.activation_function!r} is not supported; "
                f"choose one of {', '.join(ACTIVATIONS)}"
            )
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            p = getattr(self, name)
            if not 0.0 <= float(p) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {p!r}")

    # ----------------------------------------------------------------- HF aliases
    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: aliases, then extra keys (HF keeps them as attributes).
        if name in ALIASES:
            return getattr(self, ALIASES[name])
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"CodeGenConfig has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(ALIASES.get(name, name), value)

    # ----------------------------------------------------------------- dict / json
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> CodeGenConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        model_type = data.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ConfigError(f"{source}: model_type is {model_type!r}, expected {MODEL_TYPE!r}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known: dict[str, Any] = {}
        extra: dict[str, Any] = dict(data.get("extra", {}))
        for key, value in data.items():
            if key in ("model_type", "extra"):
                continue
            key = ALIASES.get(key, key)
            if key == "dtype":  # transformers >= 5 writes "dtype"
                key = "torch_dtype"
            if key in names:
                known[key] = value
            else:
                extra[key] = value
        try:
            return cls(**known, extra=extra)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": MODEL_TYPE}
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = copy.deepcopy(getattr(self, f.name))
        if out["architectures"] is None:
            del out["architectures"]
        if out["mp_num"] is None:  # CodeGen-1 configs stay as transformers writes them
            del out["mp_num"]
        out.update(copy.deepcopy(self.extra))
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> CodeGenConfig:
        """Read `config.json` from a checkpoint directory (or the path of a json file)."""
        path = os.fspath(path)
        file = path if path.endswith(".json") and os.path.isfile(path) else os.path.join(path, CONFIG_NAME)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file or directory")
        if not os.path.isfile(file):
            raise FileNotFoundError(
                f"{path}: no {CONFIG_NAME} found; a CodeGen checkpoint directory holds config.json "
                "next to its weights (model.safetensors or pytorch_model.bin)"
            )
        try:
            with open(file, encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{file}: not valid JSON ({e})") from None
        return cls.from_dict(data, source=file)

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        os.makedirs(directory, exist_ok=True)
        file = os.path.join(directory, CONFIG_NAME)
        with open(file, "w", encoding="utf-8") as fh:
            fh.write(self.to_json_string())
        return file

    # ----------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str) -> CodeGenConfig:
        """Config of a released checkpoint: "350M-mono", "codegen-2B-multi", "Salesforce/codegen-6B-nl"."""
        key = name.split("/")[-1].removeprefix("codegen-")
        key = {"codegen2-3.7B": "codegen2-3_7B"}.get(key, key)
        if key not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
        return cls.from_dict(copy.deepcopy(PRESETS[key]), source=f"preset {name}")


# Shared by every released CodeGen-1 checkpoint (reference section 2.2).
_COMMON = dict(
    vocab_size=51200, n_positions=2048, n_ctx=2048, bos_token_id=1, eos_token_id=50256,
    torch_dtype="float16", architectures=["CodeGenForCausalLM"], tokenizer_class="GPT2Tokenizer",
)
_SIZES = {
    "350M": dict(n_embd=1024, n_layer=20, n_head=16, rotary_dim=32),
    "2B": dict(n_embd=2560, n_layer=32, n_head=32, rotary_dim=64),
    "6B": dict(n_embd=4096, n_layer=33, n_head=16, rotary_dim=64),
    "16B": dict(n_embd=6144, n_layer=34, n_head=24, rotary_dim=64),
}
PRESETS: dict[str, dict[str, Any]] = {
    f"{size}-{data}": {**_COMMON, **shape}
    for size, shape in _SIZES.items()
    for data in ("nl", "multi", "mono")
}
# Small shapes for tests, demos and quick experiments (not released checkpoints).
PRESETS["tiny"] = dict(
    vocab_size=51200, n_positions=2048, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
    bos_token_id=1, eos_token_id=50256, architectures=["CodeGenForCausalLM"],
)


# CodeGen2 (reference section 2.3): 1B as its config.json reads; 3.7B, 7B and 16B by their parameter
# counts with the same head layout (3.7B: head_dim 256, 8 shards; 7B and 16B: no head_dim key, 4 shards).
_CODEGEN2 = dict(vocab_size=51200, n_positions=2048, n_ctx=2048, rotary_dim=64, bos_token_id=1, eos_token_id=2,
                 architectures=["CodeGenForCausalLM"])
PRESETS.update({
    "codegen2-1B": {**_CODEGEN2, "n_embd": 2048, "n_layer": 16, "n_head": 16, "head_dim": 128},
    "codegen2-3_7B": {**_CODEGEN2, "n_embd": 4096, "n_layer": 16, "n_head": 16, "head_dim": 256},
    "codegen2-7B": {**_CODEGEN2, "n_embd": 4096, "n_layer": 32, "n_head": 16},
    "codegen2-16B": {**_CODEGEN2, "n_embd": 6144, "n_layer": 34, "n_head": 24},
})


def preset_names() -> list[str]:
    return sorted(PRESETS)
