"""QuantLinear: the module that stands in for nn.Linear in a quantized model (inference only).

Every route computes `formats.quantized_linear`: the input's rows quantized to int8 (one scale per
row), times the quantized weight, summed in integers, scaled, plus the bias.
- Decode rows (1..16): the native kernels (codegen/native/quant.cpp, qdot.h), which stream the packed
  weights once for all rows; int4 inputs of up to 63 rows too, 16 rows a pass.
- More rows (prefills): int4 weights go to the native int4 GEMM (codegen/native/qgemm.cpp: exact int32
  sums per group, as the passes), except where torch's bf16 GEMM runs on AMX: there int4 prefills of up
  to 128 rows take the passes and longer ones are dequantized a block at a time (about 16 MB) and
  multiplied in bf16 (the activations' int8 values are exact in bf16, the dequantized weights and the
  products' sums are rounded to bf16). int8 weights go to torch's integer GEMM (`torch._int_mm`, VNNI /
  AMX where the CPU has them) a block of output rows at a time, its int32 sums scaled into the output
  by one native pass. The activations are quantized natively (threaded) where the kernels are built.
  No whole matrix is ever materialised.
Where the native kernels are unavailable every input takes the blockwise route (dequantized blocks in
fp32). Returned in the input's dtype.

The scales and biases stay fp32 whatever the activations' dtype: `.to(torch.bfloat16)` on a quantized
model (bf16 activations, and so a bf16 KV cache) moves them with the model but keeps their dtype.
`QuantEmbedding` returns its rows in the activations' dtype, which such a cast sets."""

from __future__ import annotations

import torch
from torch import nn

from ..native import kernels
from .formats import (QuantSpec, dequantize_int4, dequantize_int8, from_kernel_layout, padded, quantize_activations,
                      quantize_int4, quantize_int8, to_kernel_layout)


def _move_keeping_dtypes(module: nn.Module, fn) -> torch.dtype | None:
    """Module._apply for a quantized module's buffers: `fn` (the conversion of `.to()`, `.cuda()`,
    `.bfloat16()`, ...) for their device only, each keeping its dtype: a cast of the model must not
    round the fp32 scales or biases (bf16 would shift every weight by up to 0.4 %). Returns the
    floating dtype the conversion casts to (probed on empty tensors of two dtypes), or None."""
    wanted = None
    for probe in (torch.float32, torch.bfloat16):
        cast = fn(torch.empty(0, dtype=probe)).dtype
        if cast != probe:
            wanted = cast
            break
    for name, t in module._buffers.items():
        if t is not None:
            moved = fn(t)
            module._buffers[name] = moved if moved.dtype == t.dtype else t.to(device=moved.device)
    return wanted


DECODE_ROWS = 16  # the kernels' row range; more rows take a GEMM, except for int4:
# below this many rows the passes of 16 beat the int4 GEMM or tie with it (the GEMM unpacks each block
# of weights to bytes, a cost the rows amortize; `python benchmarks/quant_prefill.py`, a 2-core Xeon
# with VNNI, 64 rows: 1024 -> 4096 2.00 vs 3.03 ms, 4096 -> 1024 2.98 vs 4.29 (another run 1.71 vs
# 1.65), 1024 -> 3072 1.24 vs 1.30; 17 rows: the passes 1.2-2.4x faster). int8's integer GEMM (VNNI)
# beats passes from 17 rows on.
INT4_GEMM_ROWS = 64
# With AMX, int4 prefills of up to this many rows take the passes (1.3-4x faster than dequantizing
# blocks for a bf16 GEMM, on the Xeon above with 17-128 rows) and longer ones the bf16 blockwise route.
INT4_PASS_ROWS = 128
BLOCK_BYTES = 16 * 2**20  # fp32 bytes of weight rows dequantized at a time on that route


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, spec: QuantSpec, bias: bool = True, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.spec = in_features, out_features, spec
        if spec.bits == 8:
            qshape, sshape, qdtype = (out_features, in_features), (out_features,), torch.int8
        else:
            kp = padded(in_features, spec.group_size)
            qshape, sshape, qdtype = (out_features, kp // 2), (out_features, kp // spec.group_size), torch.uint8
        self.register_buffer("weight", torch.zeros(qshape, dtype=qdtype, device=device))  # int4: the kernels' layout
        self.register_buffer("weight_scale", torch.ones(sshape, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: QuantSpec) -> QuantLinear:
        q = cls(linear.in_features, linear.out_features, spec, bias=linear.bias is not None, device="meta")
        w = linear.weight.detach()
        if spec.bits == 8:
            q.weight, q.weight_scale = quantize_int8(w)
        else:
            packed, q.weight_scale = quantize_int4(w, spec.group_size)
            q.weight = to_kernel_layout(packed)
        if linear.bias is not None:
            q.bias = linear.bias.detach().float().clone()
        return q

    def _apply(self, fn, recurse=True):
        _move_keeping_dtypes(self, fn)
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.spec.name}, bias={self.bias is not None}"

    # ------------------------------------------------------------------ checkpoint (saved layout)
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        weight = self.weight if self.spec.bits == 8 else from_kernel_layout(self.weight)
        destination[prefix + "weight"] = weight if keep_vars else weight.detach()
        destination[prefix + "weight_scale"] = self.weight_scale
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        names = ["weight", "weight_scale"] + (["bias"] if self.bias is not None else [])
        for name in names:
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            tensor = state_dict[key]
            want = getattr(self, name)
            saved_shape = tuple(want.shape)
            if tensor.shape != saved_shape:
                error_msgs.append(f"{key}: shape {tuple(tensor.shape)}, expected {saved_shape} ({self.spec.name})")
                continue
            if name == "weight":
                if tensor.dtype != want.dtype:
                    error_msgs.append(f"{key}: dtype {tensor.dtype}, expected {want.dtype} ({self.spec.name})")
                    continue
                self.weight = tensor.contiguous() if self.spec.bits == 8 else to_kernel_layout(tensor)
            else:
                setattr(self, name, tensor.float().contiguous())

    # ------------------------------------------------------------------ compute
    def dequantized(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows start..stop of the weight as fp32 (out_features, in_features) (tests, the GEMM route)."""
        q, s = self.weight[start:stop], self.weight_scale[start:stop].float()
        if q.device.type == "cpu" and q.is_contiguous() and s.is_contiguous():
            native = kernels.dequantize(q, s, self.in_features, self.spec.bits, self.spec.group_size)
            if native is not None:  # one pass; the torch expressions below make several
                return native
        if self.spec.bits == 8:
            return dequantize_int8(q, s)
        return dequantize_int4(from_kernel_layout(q), s, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        y = None
        rows = x2.shape[0]
        int4 = self.spec.bits == 4
        amx = int4 and rows > DECODE_ROWS and kernels.amx()
        passes = rows <= DECODE_ROWS or (int4 and rows < (INT4_PASS_ROWS + 1 if amx else INT4_GEMM_ROWS))
        if x.device.type == "cpu" and (passes or (int4 and not amx)):
            xf = x2.float().contiguous()
            bias = self.bias if self.bias is None or self.bias.dtype == torch.float32 else self.bias.float()
            scale = self.weight_scale if self.weight_scale.dtype == torch.float32 else self.weight_scale.float()
            if not passes:
                y = kernels.q4_gemm(self.weight, scale, xf, bias, self.spec.group_size)
            else:
                parts = []
                sums = self._row_sums() if rows > 1 else None  # one row: memory-bound, the kernel sums
                for r in range(0, rows, DECODE_ROWS):  # one pass over the packed weights per 16 rows
                    part = kernels.quant_mm(self.weight, scale, xf[r:r + DECODE_ROWS], bias, self.spec.bits,
                                            self.spec.group_size, sums)
                    if part is None:
                        break
                    parts.append(part)
                else:
                    y = parts[0] if len(parts) == 1 else torch.cat(parts)
        if y is None:
            y = self._blockwise(x2)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def _row_sums(self) -> torch.Tensor | None:
        """The int8 weight's row sums (out_features,) int32 for the VNNI products of several rows, made
        once per weight and kept on the weight tensor itself (a replaced weight has none, an updated one
        a newer version); None where the kernels do not take them or an inference tensor, which has no
        version counter, could have changed unseen."""
        w = self.weight
        if self.spec.bits != 8 or w.device.type != "cpu" or not kernels.vnni_takes_row_sums():
            return None
        try:
            version = w._version
        except RuntimeError:
            return None
        cached = getattr(w, "_codegen_row_sums", None)
        if cached is None or cached[0] != version:
            cached = (version, w.sum(1, dtype=torch.int32))
            w._codegen_row_sums = cached
        return cached[1]

    def _blockwise(self, x: torch.Tensor) -> torch.Tensor:
        cpu = x.device.type == "cpu"
        q, s = (cpu and kernels.quantize_rows(x)) or quantize_activations(x)  # (M, K) int8, (M, 1) fp32
        out = torch.empty(x.shape[0], self.out_features, dtype=torch.float32, device=x.device)
        integer = self.spec.bits == 8 and cpu
        dtype = torch.bfloat16 if not integer and kernels.bf16_gemm_faster() else torch.float32
        qx = q if integer else q.to(dtype)
        sw = self.weight_scale.float()
        bias = None if self.bias is None else self.bias.float()
        step = max(1, BLOCK_BYTES // (4 * max(self.in_features, x.shape[0])))
        for n0 in range(0, self.out_features, step):
            n1 = min(n0 + step, self.out_features)
            if integer:  # exact int32 sums; the per-row scales after
                acc = torch._int_mm(qx, self.weight[n0:n1].T)
                if kernels.int_epilogue(acc, s, sw[n0:n1], None if bias is None else bias[n0:n1], out[:, n0:n1]):
                    continue
                y = acc.float() * (s * sw[n0:n1])
            else:
                y = torch.mm(qx, self.dequantized(n0, n1).to(dtype).T).float().mul_(s)
            if bias is not None:
                y += bias[n0:n1]
            out[:, n0:n1] = y
        return out


class QuantEmbedding(nn.Module):
    """nn.Embedding with int8 rows, one fp32 scale per token (`weight`, `weight_scale`); looks rows up
    and returns them in `dtype`, the model's activations' (fp32 unless the model was cast, or loaded,
    to another: `.to(torch.bfloat16)` sets it and keeps the scales fp32). A quantized model's token
    embedding: a quarter of the fp32 table's bytes, and only the rows looked up are ever read."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.dtype = num_embeddings, embedding_dim, dtype
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, dtype=torch.float32, device=device))
        self._reader = None  # (reader, the weight it reads for): see read_rows_with

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> QuantEmbedding:
        q = cls(embedding.num_embeddings, embedding.embedding_dim, device="meta", dtype=embedding.weight.dtype)
        q.weight, q.weight_scale = quantize_int8(embedding.weight.detach())
        return q

    def _apply(self, fn, recurse=True):
        wanted = _move_keeping_dtypes(self, fn)
        if wanted is not None:
            self.dtype = wanted
        return self

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8, {str(self.dtype).removeprefix('torch.')}"

    def dequantized(self) -> torch.Tensor:
        """The table as fp32 (num_embeddings, embedding_dim) (tests)."""
        return dequantize_int8(self.weight, self.weight_scale)

    def read_rows_with(self, reader) -> None:
        """Look rows up as reader(ids), which must equal weight[ids], instead of indexing `weight`: the
        loader's reads from the checkpoint file (safetensors_io.StoredRows), which keep the table's pages
        out of the process. Only while `weight` is the tensor it was given for: a replaced or moved
        weight is indexed again."""
        self._reader = (reader, self.weight) if reader is not None else None

    def reader(self):
        """The reader that looks rows up now (see read_rows_with), or None where `weight` is indexed."""
        r = self._reader
        return r[0] if r is not None and r[1] is self.weight and self.weight.device.type == "cpu" else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        reader = self.reader()
        rows = reader(ids) if reader is not None and ids.device.type == "cpu" else self.weight[ids]
        return (rows.float() * self.weight_scale[ids].unsqueeze(-1)).to(self.dtype)
