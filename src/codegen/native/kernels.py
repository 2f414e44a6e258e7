"""Optional native kernels for decode-sized work: the bf16 and fp32 matrix-vector products of a
batch-1 step and fp32 products of 2 to 8 rows, gelu_new (kernels.cpp), and a whole batch-1 decode
step (decode.cpp, driven by fused.py).

They are compiled on first use with the system's C++ compiler (`$CXX`, else g++ or c++) into the user
cache (`$CODEGEN_CACHE`, else `$XDG_CACHE_HOME/codegen`, else ~/.cache/codegen), keyed by a hash of
the source and compiler, and loaded with ctypes, only on Linux x86-64 CPUs with AVX-512 (and
AVX512-BF16 for the bf16 kernel). With no compiler, another CPU, a failed build, or CODEGEN_NATIVE=0,
the functions here return None and the caller keeps torch's kernels: the results differ only by
fp32 summation order.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import torch

logger = logging.getLogger(__name__)

_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [os.path.join(_HERE, name) for name in ("kernels.cpp", "decode.cpp")]
HEADERS = [os.path.join(_HERE, "simd.h")]

_lock = threading.Lock()
_gemv = _f32_gemv = _smallmm = _gelu = decode_step = decode_scratch = None
_tried = False


def cpu_flags() -> set[str]:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return set()
    try:
        with open("/proc/cpuinfo") as fh:
            return set(next((line for line in fh if line.startswith("flags")), "").split())
    except OSError:
        return set()


def cache_dir() -> str:
    if os.environ.get("CODEGEN_CACHE"):
        return os.environ["CODEGEN_CACHE"]
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "codegen")


def build(compiler: str) -> str:
    """Path of the compiled library (built now if the cache lacks it); raises on a failed build."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    if "clang" in version.lower():  # its -fopenmp links libomp: a second thread pool beside torch's libgomp
        raise RuntimeError(f"{compiler} is clang; the kernels need g++ (set CXX=g++)")
    digest = hashlib.sha256(version.encode())
    for path in SOURCES + HEADERS:
        with open(path, "rb") as fh:
            digest.update(fh.read())
    key = digest.hexdigest()[:16]
    out = os.path.join(cache_dir(), f"kernels-{key}.so")
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(out))
    os.close(fd)
    try:
        cmd = [compiler, "-O3", "-shared", "-fPIC", "-fopenmp", *SOURCES, "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
            raise RuntimeError(f"{' '.join(cmd)} failed: {last}")
        os.replace(tmp, out)  # atomic: concurrent first uses never load a half-written file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def load() -> bool:
    """Build and load the kernels once; whether any is available."""
    global _gemv, _f32_gemv, _smallmm, _gelu, decode_step, decode_scratch, _tried
    with _lock:
        if not _tried:
            _tried = True
            flags = cpu_flags()
            compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
            if os.environ.get("CODEGEN_NATIVE", "1") != "0" and {"avx512f", "avx512bw"} <= flags and compiler:
                try:
                    lib = ctypes.CDLL(build(compiler))
                except Exception as e:  # missing headers, old compiler, read-only cache...: torch's kernels it is
                    logger.warning("native kernels unavailable, using torch's: %s", e)
                else:
                    args = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_int64]
                    lib.codegen_f32_smallmm.argtypes = args + [ctypes.c_int64, ctypes.c_int]
                    lib.codegen_f32_smallmm.restype = ctypes.c_int
                    _smallmm = lib.codegen_f32_smallmm
                    lib.codegen_f32_gemv.argtypes = args + [ctypes.c_int]
                    lib.codegen_f32_gemv.restype = None
                    _f32_gemv = lib.codegen_f32_gemv
                    lib.codegen_gelu_tanh.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int]
                    lib.codegen_gelu_tanh.restype = None
                    _gelu = lib.codegen_gelu_tanh
                    lib.codegen_decode_scratch.argtypes = [ctypes.c_void_p]
                    lib.codegen_decode_scratch.restype = ctypes.c_int64
                    decode_scratch = lib.codegen_decode_scratch
                    lib.codegen_decode_step.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_float] + [ctypes.c_void_p] * 12
                    lib.codegen_decode_step.restype = ctypes.c_int
                    decode_step = lib.codegen_decode_step
                    if "avx512_bf16" in flags:
                        lib.codegen_bf16_gemv.argtypes = args + [ctypes.c_int]
                        lib.codegen_bf16_gemv.restype = None
                        _gemv = lib.codegen_bf16_gemv
    return _gemv is not None or _smallmm is not None


def _fits(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> bool:
    return (weight.dtype == dtype and weight.is_contiguous() and weight.device.type == "cpu"
            and (bias is None or (bias.dtype == dtype and bias.is_contiguous())))


def gemv(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """weight (N, K) @ x (K,) + bias (N,) for bf16 or fp32 CPU tensors, or None when the native kernel
    is unavailable or the arguments do not fit it."""
    if not _tried:
        load()
    fn = _gemv if x.dtype == torch.bfloat16 else _f32_gemv if x.dtype == torch.float32 else None
    if fn is None or not _fits(weight, bias, x.dtype):
        return None
    x = x.contiguous()
    y = torch.empty(weight.shape[0], dtype=x.dtype)
    fn(weight.data_ptr(), x.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(), weight.shape[0],
       weight.shape[1], torch.get_num_threads())
    return y


def f32_smallmm(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """x (M, K) @ weight (N, K).T + bias (N,) for fp32 CPU tensors and 2 <= M <= 8, or None when the
    native kernel is unavailable or the arguments do not fit it."""
    if not _tried:
        load()
    if _smallmm is None or x.dtype != torch.float32 or not 2 <= x.shape[0] <= 8 or not _fits(weight, bias, torch.float32):
        return None
    x = x.contiguous()
    y = torch.empty(x.shape[0], weight.shape[0], dtype=torch.float32)
    _smallmm(weight.data_ptr(), x.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(), x.shape[0],
             weight.shape[0], weight.shape[1], torch.get_num_threads())
    return y


def gelu_tanh(x: torch.Tensor, inplace: bool = False) -> torch.Tensor | None:
    """gelu_new(x) for a contiguous fp32 or bf16 CPU tensor (written over x with inplace, which also
    spares the page faults of a fresh output: ~3x faster than torch's on a prefill's activations), or
    None when the kernel is unavailable or the tensor does not fit it."""
    if not _tried:
        load()
    if _gelu is None or x.dtype not in (torch.float32, torch.bfloat16) or x.device.type != "cpu" or not x.is_contiguous():
        return None
    y = x if inplace else torch.empty_like(x)
    _gelu(x.data_ptr(), y.data_ptr(), x.numel(), int(x.dtype == torch.bfloat16), torch.get_num_threads())
    return y
