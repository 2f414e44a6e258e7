"""Weight-only quantization: int8 (one scale per output row) and int4 (one scale per group of 32,
64 or 128 along the input) for every Linear layer, lm_head included; the token embedding int8.

- `formats`: the spec recorded in config.json, quantize / dequantize, and the two int4 byte layouts
  (the saved one and the kernels', made at load) with their conversions both ways;
- `linear`: QuantLinear, the module that replaces nn.Linear (native kernels for decode rows, integer
  or blockwise-dequantized GEMMs for prefills), and QuantEmbedding, the int8 token embedding;
- `convert`: quantizing a loaded model in place, and a checkpoint directory shard by shard."""

from .formats import QuantSpec
from .linear import QuantEmbedding, QuantLinear

__all__ = ["QuantEmbedding", "QuantLinear", "QuantSpec"]
