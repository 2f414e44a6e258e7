"""What a quantized checkpoint holds, and the tensor conversions (each beside its inverse).

Saved per quantized Linear (names as the unquantized checkpoint's, plus `weight_scale`):
- int8: `weight` int8 (N, K) and `weight_scale` fp32 (N,): W[n, k] ~ weight_scale[n] * weight[n, k];
- int4: `weight` uint8 (N, Kp / 2), two weights per byte, consecutive k, the low nibble first, each
  stored as q + 8 with q in [-8, 7]; `weight_scale` fp32 (N, Kp / G); K padded with zeros to Kp, a
  multiple of the group size G: W[n, k] ~ weight_scale[n, k // G] * q[n, k].
Symmetric (no zero point): scale = max |W| over the row or group / 127 (int8) or / 7 (int4).
The token embedding (unless lm_head shares it) is int8 with one scale per token, saved as
`transformer.wte.weight` int8 (V, E) and `transformer.wte.weight_scale` fp32 (V,).
config.json records {"quantization_config": {"quant_method": "codegen", "bits": 8 | 4, "group_size": G,
"embedding_bits": 8}}; without "embedding_bits" (checkpoints of earlier versions) the embedding is float.
The kernels' int4 layout (16 bytes per 32 weights: low nibbles 0..15, high nibbles 16..31) is made
at load by `to_kernel_layout` and undone by `from_kernel_layout` when saving.

Activations are quantized on the fly, one symmetric int8 scale per row (`quantize_activations`, the
kernels' rule), and the products summed in integers: `quantized_linear` is what every route of
QuantLinear computes, in torch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

QUANT_METHOD = "codegen"
GROUP_SIZES = (32, 64, 128)


class QuantConfigError(ValueError):
    pass


@dataclass(frozen=True)
class QuantSpec:
    bits: int  # 8 or 4
    group_size: int | None = None  # int4 only: 32, 64 or 128 (default 32)
    embedding: bool = True  # the token embedding int8 too (one scale per token)

    def __post_init__(self):
        if self.bits not in (8, 4):
            raise QuantConfigError(f"quantization bits must be 8 or 4, got {self.bits!r}")
        if self.bits == 8 and self.group_size is not None:
            raise QuantConfigError("int8 quantization has one scale per row: group_size applies to 4 bits only")
        if self.bits == 4:
            if self.group_size is None:
                object.__setattr__(self, "group_size", 32)
            if self.group_size not in GROUP_SIZES:
                raise QuantConfigError(f"int4 group_size must be one of {GROUP_SIZES}, got {self.group_size!r}")

    @classmethod
    def parse(cls, name: str, group_size: int | None = None) -> QuantSpec:
        """'int8' / 'int4' (the --quantize flag) to a spec."""
        names = {"int8": 8, "int4": 4}
        if name not in names:
            raise QuantConfigError(f"--quantize must be int8 or int4, got {name!r}")
        return cls(names[name], group_size if names[name] == 4 else None)

    @property
    def name(self) -> str:
        return f"int{self.bits}" + (f" (group {self.group_size})" if self.bits == 4 else "")

    def to_config(self) -> dict:
        out = {"quant_method": QUANT_METHOD, "bits": self.bits, "group_size": self.group_size}
        return out | ({"embedding_bits": 8} if self.embedding else {})

    @classmethod
    def from_config(cls, data, source: str = "config.json") -> QuantSpec:
        if not isinstance(data, dict) or data.get("quant_method") != QUANT_METHOD:
            method = data.get("quant_method") if isinstance(data, dict) else data
            raise QuantConfigError(f"{source}: quantization_config quant_method {method!r} is not supported "
                                   f"(this loader reads {QUANT_METHOD!r}, written by `codegen quantize`)")
        try:
            if data.get("embedding_bits", 8) != 8:
                raise QuantConfigError(f"embedding_bits must be 8, got {data['embedding_bits']!r}")
            return cls(int(data["bits"]), data.get("group_size"), embedding="embedding_bits" in data)
        except KeyError as e:
            raise QuantConfigError(f"{source}: quantization_config lacks {e}") from None
        except QuantConfigError as e:
            raise QuantConfigError(f"{source}: quantization_config: {e}") from None


def padded(k: int, group_size: int) -> int:
    return -(-k // group_size) * group_size


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> int8 (N, K), fp32 scales (N,)."""
    w = w.float()
    scale = w.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale[:, None]


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> packed uint8 (N, Kp / 2) in the saved layout, fp32 scales (N, Kp / G)."""
    n, k = w.shape
    kp = padded(k, group_size)
    w = torch.nn.functional.pad(w.float(), (0, kp - k)).reshape(n, kp // group_size, group_size)
    scale = w.abs().amax(dim=2) / 7
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[..., None]).clamp_(-8, 7).to(torch.int16).reshape(n, kp) + 8
    return pack_pairs(q), scale


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, in_features: int) -> torch.Tensor:
    """Saved layout -> (N, K) fp32."""
    n, groups = scale.shape
    q = unpack_pairs(packed).float() - 8
    return (q.reshape(n, groups, -1) * scale[..., None]).reshape(n, -1)[:, :in_features]


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., K) float -> int8 values (..., K) and fp32 scales (..., 1): scale = max |x| / 127 per row,
    q = round-half-even(x * (127 / max |x|)) (a zero row: zeros, scale 0), exactly as the native
    kernels compute it in fp32 (codegen/native/qdot.h)."""
    x = x.float()
    amax = x.abs().amax(dim=-1, keepdim=True)
    # a true division, as the kernels' 127.0f / amax: `127 / amax` is amax.reciprocal() * 127 in torch,
    # an ulp off at times, and a product then landing on a .5 rounds the other way
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    q = torch.round(x * inv).clamp_(-127, 127).to(torch.int8)
    return q, amax / 127


def quantized_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The quantized layer's function in torch: x's rows quantized (`quantize_activations`), times the
    dequantized weight (N, K) fp32, plus bias, in fp32 (the reference the kernels are tested against)."""
    q, s = quantize_activations(x)
    y = torch.nn.functional.linear(q.float(), weight) * s
    return y if bias is None else y + bias


def pack_pairs(u: torch.Tensor) -> torch.Tensor:
    """(N, Kp) values 0..15 -> (N, Kp / 2) bytes, k = 2i in the low nibble, 2i + 1 in the high."""
    u = u.to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_pairs(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_pairs: (N, Kp) values 0..15 as uint8."""
    return torch.stack([packed & 15, packed >> 4], dim=2).reshape(packed.shape[0], -1)


LAYOUT_ROWS = 4096  # rows relaid at a time: the temporaries stay a few MB whatever the matrix


def to_kernel_layout(packed: torch.Tensor) -> torch.Tensor:
    """Saved layout -> the kernels': per 32 weights, byte j = u[j] | u[j + 16] << 4."""
    out = torch.empty_like(packed)
    for r in range(0, packed.shape[0], LAYOUT_ROWS):
        block = packed[r:r + LAYOUT_ROWS]
        u = unpack_pairs(block).reshape(block.shape[0], -1, 2, 16)
        out[r:r + LAYOUT_ROWS] = (u[:, :, 0] | (u[:, :, 1] << 4)).reshape(block.shape[0], -1)
    return out


def from_kernel_layout(kernel: torch.Tensor) -> torch.Tensor:
    """Inverse of to_kernel_layout."""
    out = torch.empty_like(kernel)
    for r in range(0, kernel.shape[0], LAYOUT_ROWS):
        b = kernel[r:r + LAYOUT_ROWS]
        n = b.shape[0]
        b = b.reshape(n, -1, 16)
        out[r:r + LAYOUT_ROWS] = pack_pairs(torch.stack([b & 15, b >> 4], dim=2).reshape(n, -1))
    return out
