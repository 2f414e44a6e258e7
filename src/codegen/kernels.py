"""Optional native CPU kernel: a bf16 matrix-vector product with AVX512-BF16 instructions.

torch's bf16 `addmv` streams weights at about 20 GB/s on a 2-core Sapphire Rapids where the memory
allows about 27 (benchmarks/generate.py); a decode step at batch 1 is nothing but such products.
This kernel (fp32 accumulation with `vdpbf16ps`, four rows per pass sharing the vector, OpenMP over
rows) is compiled on first use with torch.utils.cpp_extension when the CPU has avx512_bf16 and a C++
compiler is present, and cached by torch. Anything else, or CODEGEN_NATIVE=0, keeps torch's kernel.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading

import torch

logger = logging.getLogger(__name__)

_SOURCE = r"""
#include <torch/extension.h>
#include <immintrin.h>
#include <cstring>

// y = W x (+ b): W (N, K) bf16 row-major, x (K,) bf16, y (N,) bf16; fp32 accumulation.
torch::Tensor bf16_gemv(torch::Tensor W, torch::Tensor x, c10::optional<torch::Tensor> bias) {
    TORCH_CHECK(W.dim() == 2 && x.dim() == 1 && W.size(1) == x.size(0), "bf16_gemv: shapes do not match");
    TORCH_CHECK(W.scalar_type() == torch::kBFloat16 && x.scalar_type() == torch::kBFloat16, "bf16_gemv: bf16 only");
    W = W.contiguous();
    x = x.contiguous();
    const int64_t N = W.size(0), K = W.size(1), K32 = K / 32 * 32;
    auto y = torch::empty({N}, W.options());
    const uint16_t* w = reinterpret_cast<const uint16_t*>(W.data_ptr<at::BFloat16>());
    const uint16_t* xv = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
    uint16_t* out = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
    torch::Tensor bf;
    const float* b = nullptr;
    if (bias.has_value()) { bf = bias->to(torch::kFloat32).contiguous(); b = bf.data_ptr<float>(); }
    at::parallel_for(0, (N + 3) / 4, 16, [&](int64_t begin, int64_t end) {
        for (int64_t blk = begin; blk < end; ++blk) {
            const int64_t n0 = blk * 4, rows = std::min<int64_t>(4, N - n0);
            __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            for (int64_t k = 0; k < K32; k += 32) {
                __m512bh xb = (__m512bh)_mm512_loadu_si512(xv + k);
                for (int r = 0; r < rows; ++r)
                    acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(w + (n0 + r) * K + k), xb);
            }
            for (int r = 0; r < rows; ++r) {
                float s = _mm512_reduce_add_ps(acc[r]);
                for (int64_t k = K32; k < K; ++k) {
                    uint32_t wi = uint32_t(w[(n0 + r) * K + k]) << 16, xi = uint32_t(xv[k]) << 16;
                    float wf, xf;
                    std::memcpy(&wf, &wi, 4);
                    std::memcpy(&xf, &xi, 4);
                    s += wf * xf;
                }
                if (b) s += b[n0 + r];
                uint32_t bits;
                std::memcpy(&bits, &s, 4);
                bits += 0x7FFF + ((bits >> 16) & 1);  // round to nearest even, as torch does
                out[n0 + r] = uint16_t(bits >> 16);
            }
        }
    });
    return y;
}
"""

_lock = threading.Lock()
_module = None
_tried = False


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            return "avx512_bf16" in fh.read()
    except OSError:
        return False


def native():
    """The compiled extension, or None (unsupported CPU, no compiler, disabled, or a failed build)."""
    global _module, _tried
    if _tried:
        return _module
    with _lock:
        if _tried:
            return _module
        _tried = True
        if os.environ.get("CODEGEN_NATIVE", "1") == "0" or not _cpu_has_bf16() or not shutil.which("c++"):
            return None
        try:
            from torch.utils.cpp_extension import load_inline

            logger.info("compiling the bf16 matrix-vector kernel (once; cached by torch)")
            _module = load_inline("codegen_bf16_gemv", cpp_sources=[_SOURCE], functions=["bf16_gemv"],
                                  extra_cflags=["-O3", "-mavx512f", "-mavx512bw", "-mavx512bf16"], verbose=False)
        except Exception as e:  # no headers, old compiler, ...: torch's kernel it is
            logger.warning("native bf16 kernel unavailable (%s); using torch's", str(e).splitlines()[0] if str(e) else type(e).__name__)
            _module = None
    return _module


def bf16_gemv(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    mod = native()
    if mod is None:
        return None
    return mod.bf16_gemv(weight, x, bias)
