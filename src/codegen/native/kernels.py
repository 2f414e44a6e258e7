"""Native kernels for decode-sized work, on every CPU: the bf16 and fp32 matrix-vector products of a
batch-1 step, fp32 products of 2 to 8 rows, gelu_new (kernels.cpp), int8 / int4 weight products of 1
to 16 rows with int8 activations (quant.cpp, qdot.h), and a whole batch-1 decode step (decode.cpp,
driven by fused.py) that also picks the next tokens, greedily or sampled (sample.cpp), all written once
against the SIMD layer in simd.h.

The sources are compiled for one tier of the CPU, on first use, with the system's C++ compiler
(`$CXX`, else g++ or c++) into the user cache (`$CODEGEN_CACHE`, else `$XDG_CACHE_HOME/codegen`, else
~/.cache/codegen), keyed by a hash of the sources, compiler, flags and tier, and loaded with ctypes:

    generic     the baseline of x86-64 or aarch64 (4 fp32 lanes: SSE2 / NEON)   every Linux CPU
    dotprod     aarch64 NEON + the dot-product extension (SDOT int8 products)     Cortex-A55/A76+, Neoverse, Apple M
    avx2        AVX2 + FMA + F16C (8 lanes; int8 products by VPMADDUBSW)          Haswell+, Zen 1+
    avxvnni     avx2 + AVX-VNNI (256-bit VPDPBUSD int8 products)                  Alder Lake+ (12th gen Core), Sapphire Rapids+, Zen 5
    avx512      AVX-512 F/BW/VL (16 lanes, masked tails; VPMADDUBSW)              Skylake-SP+, Zen 4
    avx512bf16  avx512 + AVX512-BF16 and VNNI (VDPBF16PS bf16 dot products,     Cooper Lake, Sapphire Rapids+, Zen 4
                VPDPBUSD int8 ones)

Tiers are listed lowest first, but a tier runs only where the CPU has every feature it needs
(`runnable_tiers`): an Ice Lake server has AVX-512 VNNI without AVX-VNNI, so it gets avx512, not avxvnni.
The highest tier the CPU has is used (`tier()` says which, and why); `CODEGEN_ISA=<tier>` forces a
lower one (a higher one is refused with a warning and the CPU's own tier kept). With no compiler, a
failed build or CODEGEN_NATIVE=0, the functions here return None and the caller keeps torch's
kernels: the results differ only by fp32 summation order.
"""

from __future__ import annotations

import ctypes
import functools
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
SOURCES = [os.path.join(_HERE, name) for name in ("kernels.cpp", "decode.cpp", "quant.cpp", "qgemm.cpp", "attention.cpp", "sample.cpp")]
HEADERS = [os.path.join(_HERE, name) for name in ("simd.h", "qdot.h", "sample.h")]

X86_TIERS = ("generic", "avx2", "avxvnni", "avx512", "avx512bf16")  # lowest first
ARM_TIERS = ("generic", "dotprod")
_AVX2 = {"avx2", "fma", "f16c"}
REQUIRES = {"generic": set(), "avx2": _AVX2, "avxvnni": _AVX2 | {"avx_vnni"},
            "avx512": _AVX2 | {"avx512f", "avx512bw", "avx512vl"},
            "avx512bf16": _AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni"},
            "dotprod": {"asimddp"}}  # aarch64 hwcaps as /proc/cpuinfo's Features line names them
_X86 = ["-mavx2", "-mfma", "-mf16c"]
FLAGS = {"generic": [], "avx2": _X86, "avxvnni": _X86 + ["-mavxvnni"],
         "avx512": _X86 + ["-mavx512f", "-mavx512bw", "-mavx512vl"],
         "avx512bf16": _X86 + ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mavx512vnni"],
         "dotprod": ["-march=armv8.2-a+dotprod"]}
VNNI_TIERS = ("avx512bf16", "avxvnni")  # int8 products by VPDPBUSD, on unsigned activations and the weights' row sums


def is_arm() -> bool:
    return platform.machine() in ("aarch64", "arm64")


TIERS = ARM_TIERS if is_arm() else X86_TIERS  # this machine's architecture's, lowest first

_lock = threading.Lock()
_gemv = _f32_gemv = _smallmm = _bf16_smallmm = _gelu = _q8 = _q4 = _dequant = None
_attention = _split = decode_step = decode_scratch = None
decode_layout = ""  # codegen_decode_layout(): DecodeArgs' fields and offsets (fused.py checks its mirror)
_tried = False
_active_tier: str | None = None
_why = "not loaded yet"
_libs: dict[str, ctypes.CDLL] = {}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86: /proc/cpuinfo's "flags"; aarch64: its "Features", the hwcaps), read
    once: the routes ask on every forward (reading the file took ~50 us a call)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64", "aarch64", "arm64"):
        return frozenset()
    key = "Features" if is_arm() else "flags"
    try:
        with open("/proc/cpuinfo") as fh:
            line = next((line for line in fh if line.startswith(key)), "")
    except OSError:
        return frozenset()
    return frozenset(line.split(":", 1)[1].split()) if ":" in line else frozenset()


@functools.cache
def cpu_vendor() -> str:
    """x86: /proc/cpuinfo's vendor_id (GenuineIntel, AuthenticAMD, ...); "" elsewhere or where unknown."""
    if is_arm() or platform.system() != "Linux":
        return ""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("vendor_id")), "")
    except OSError:
        return ""


def supported() -> bool:
    """Whether this platform can build the kernels at all (Linux on x86-64 or aarch64)."""
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64")


def runnable_tiers(flags: set[str] | None = None) -> list[str]:
    """The tiers whose every feature the CPU has (`flags`: its feature flags), lowest first."""
    flags = cpu_flags() if flags is None else flags
    return [t for t in TIERS if REQUIRES[t] <= flags]


def cpu_tier(flags: set[str] | None = None) -> str:
    """The highest tier the CPU has."""
    return runnable_tiers(flags)[-1]


def wanted_tier() -> str:
    """The CPU's tier, or the lower one CODEGEN_ISA asks for."""
    best = cpu_tier()
    forced = os.environ.get("CODEGEN_ISA", "").strip().lower()
    if not forced:
        return best
    if forced not in TIERS:
        logger.warning("CODEGEN_ISA=%s is not a tier (%s); using %s", forced, ", ".join(TIERS), best)
        return best
    if forced not in runnable_tiers():
        logger.warning("CODEGEN_ISA=%s asks for more than this CPU has (its tier is %s; %s needs %s); using %s", forced,
                       best, forced, ", ".join(sorted(REQUIRES[forced] - cpu_flags())), best)
        return best
    return forced


def cache_dir() -> str:
    if os.environ.get("CODEGEN_CACHE"):
        return os.environ["CODEGEN_CACHE"]
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "codegen")


def build(compiler: str, tier: str = "avx512bf16", source_dir: str | None = None) -> str:
    """Path of the library compiled for `tier` (built now if the cache lacks it); raises on a failed build.
    `source_dir`: the same files from another directory (benchmarks/native_ab.py builds a git revision's)."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    if "clang" in version.lower():  # its -fopenmp links libomp: a second thread pool beside torch's libgomp
        raise RuntimeError(f"{compiler} is clang; the kernels need g++ (set CXX=g++)")
    flags = ["-O3", "-ffp-contract=fast", "-shared", "-fPIC", "-fopenmp", *FLAGS[tier]]
    digest = hashlib.sha256(version.encode() + " ".join(flags).encode())
    sources, headers = SOURCES, HEADERS
    if source_dir is not None:
        sources, headers = ([os.path.join(source_dir, os.path.basename(p)) for p in ps] for ps in (SOURCES, HEADERS))
    for path in sources + headers:
        with open(path, "rb") as fh:
            digest.update(fh.read())
    out = os.path.join(cache_dir(), f"kernels-{tier}-{digest.hexdigest()[:16]}.so")
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(out))
    os.close(fd)
    try:
        cmd = [compiler, *flags, *sources, "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
            raise RuntimeError(f"{' '.join(cmd)} failed: {last}")
        os.replace(tmp, out)  # atomic: concurrent first uses never load a half-written file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def library(tier: str) -> ctypes.CDLL:
    """The kernels compiled for `tier`, with their signatures declared (tests load lower tiers with it).
    The interface is declared here once, beside the C ABI in kernels.cpp and decode.cpp."""
    if tier in _libs:
        return _libs[tier]
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler (set CXX, or install g++)")
    lib = ctypes.CDLL(build(compiler, tier))
    args = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_int64]
    for name, argtypes, restype in (
        ("codegen_f32_smallmm", args + [ctypes.c_int64, ctypes.c_int], ctypes.c_int),
        ("codegen_bf16_smallmm", args + [ctypes.c_int64, ctypes.c_int], ctypes.c_int),
        ("codegen_f32_gemv", args + [ctypes.c_int], None),
        ("codegen_bf16_gemv", args + [ctypes.c_int], None),
        ("codegen_gelu_tanh", [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int], None),
        ("codegen_decode_scratch", [ctypes.c_void_p], ctypes.c_int64),  # DecodeArgs* (fused.py)
        ("codegen_decode_step", [ctypes.c_void_p], ctypes.c_int),
        ("codegen_decode_layout", [], ctypes.c_char_p),
        ("codegen_sample_scratch", [ctypes.c_int64], ctypes.c_int64),
        ("codegen_sample", [ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int64, ctypes.c_double,
                            ctypes.c_float, ctypes.c_void_p], ctypes.c_int64),
        ("codegen_q8_mm", [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 3 + [ctypes.c_int], ctypes.c_int),
        ("codegen_q4_mm", [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 5 + [ctypes.c_int], ctypes.c_int),
        ("codegen_q4_gemm", [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 5 + [ctypes.c_int], ctypes.c_int),
        ("codegen_dequantize", [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4 + [ctypes.c_int, ctypes.c_int], ctypes.c_int),
        ("codegen_quantize_rows", [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.c_int], ctypes.c_int),
        ("codegen_int_epilogue", [ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3
         + [ctypes.c_int], None),
        ("codegen_split_heads", [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 5 + [ctypes.c_int, ctypes.c_int], ctypes.c_int),
        ("codegen_decode_attention", [ctypes.c_void_p] * 6 + [ctypes.c_float, ctypes.c_int, ctypes.c_int], ctypes.c_int),
        ("codegen_simd_width", [], ctypes.c_int),
        ("codegen_native_bf16_dot", [], ctypes.c_int),
    ):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    _libs[tier] = lib
    return lib


def tier() -> tuple[str | None, str]:
    """(the tier in use, or None when torch's kernels run instead; why)."""
    if not _tried:
        load()
    return _active_tier, _why


def load() -> bool:
    """Build and load the kernels once, for the tier this CPU (or CODEGEN_ISA) asks; whether they are in use."""
    global _gemv, _f32_gemv, _smallmm, _gelu, decode_step, decode_scratch, _tried, _active_tier, _why
    with _lock:
        if not _tried:
            _tried = True
            if os.environ.get("CODEGEN_NATIVE", "1") == "0":
                _why = "CODEGEN_NATIVE=0"
            elif not supported():
                _why = f"no native build for {platform.system()} on {platform.machine()}"
            elif _compiler() is None:
                _why = "no C++ compiler (set CXX, or install g++)"
            else:
                wanted = wanted_tier()
                try:
                    _activate(wanted)
                except Exception as e:  # missing headers, old compiler, read-only cache...: torch's kernels it is
                    _why = f"the build failed: {e}"
                    logger.warning("native kernels unavailable, using torch's: %s", e)
                else:
                    forced = wanted != cpu_tier()
                    _why = f"{wanted}" + (" (forced by CODEGEN_ISA)" if forced else " (this CPU's highest)")
    return _smallmm is not None


def _activate(name: str) -> None:
    global _gemv, _f32_gemv, _smallmm, _bf16_smallmm, _gelu, _q8, _q4, _dequant, _attention, _split, decode_step
    global decode_scratch, decode_layout, _active_tier
    lib = library(name)
    _attention, _split = lib.codegen_decode_attention, lib.codegen_split_heads
    _q8, _q4, _dequant = lib.codegen_q8_mm, lib.codegen_q4_mm, lib.codegen_dequantize
    _smallmm, _f32_gemv, _gemv = lib.codegen_f32_smallmm, lib.codegen_f32_gemv, lib.codegen_bf16_gemv
    _bf16_smallmm = lib.codegen_bf16_smallmm
    _gelu, decode_scratch, decode_step = lib.codegen_gelu_tanh, lib.codegen_decode_scratch, lib.codegen_decode_step
    decode_layout = lib.codegen_decode_layout().decode()
    _active_tier = name


def activate(name: str) -> None:
    """Use the kernels of tier `name` from now on (benchmarks' --isa, tests); refuses a tier the CPU lacks."""
    global _tried, _why
    if name not in TIERS:
        raise ValueError(f"unknown tier {name!r}; choose one of {', '.join(TIERS)}")
    if name not in runnable_tiers():
        raise ValueError(f"tier {name} needs {', '.join(sorted(REQUIRES[name] - cpu_flags()))}, which this CPU lacks")
    with _lock:
        _activate(name)
        _tried, _why = True, f"{name} (activated)"


def bf16_native() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX): the native decode step's VDPBF16PS."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def amx() -> bool:
    """Whether the CPU has AMX bf16 tiles (Intel Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags()


def bf16_gemm_faster() -> bool:
    """Whether torch's bf16 GEMM (oneDNN) beats its fp32 one here: with AMX tiles, and on AMD CPUs with
    AVX512-BF16 (Zen 4 and later), whose VDPBF16PS GEMM ran ~3x torch's fp32 one (AMD EPYC Zen 5, 2
    threads, 2047 x 1024 -> 4096: 33.7 vs 98 ms). On an Intel CPU with AVX512-BF16 but no AMX it is
    slower (a 2-core Xeon, 512 x 1024 -> 4096: bf16 26 ms, fp32 16.5 ms)."""
    return amx() or (cpu_vendor() == "AuthenticAMD" and "avx512_bf16" in cpu_flags())


def bf16_prefills_in_fp32() -> bool:
    """Whether bf16 prefills run faster on their values widened to fp32 (engine.backend): on x86 where
    torch's bf16 GEMM is the slower (bf16_gemm_faster); ARM keeps torch's bf16 (unmeasured)."""
    return not is_arm() and not bf16_gemm_faster()


def fp32_gemm_by_onednn() -> bool:
    """Whether fp32 prefill GEMMs run faster through oneDNN than through torch's default, MKL's sgemm:
    on AMD CPUs with AVX-512, where MKL takes its AVX2 code (an AMD EPYC Zen 5, 2 threads, 2047 x 1024
    -> 4096: MKL 98 ms, oneDNN 57; 128 rows 7.1 vs 2.9). engine.backend makes the call."""
    return cpu_vendor() == "AuthenticAMD" and "avx512f" in cpu_flags()


def native_bf16_dot() -> bool:
    """Whether bf16 dot products run as VDPBF16PS (the avx512bf16 tier) rather than widened to fp32."""
    return _active_tier == "avx512bf16"


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


def smallmm(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """x (M, K) @ weight (N, K).T + bias (N,) for 2 <= M <= 8 rows of fp32 or bf16 CPU tensors (all in one
    dtype; bf16: the products and sums in fp32, rounded to bf16 once, after the bias), or None when the
    native kernel is unavailable or the arguments do not fit it."""
    if not _tried:
        load()
    dtype = x.dtype
    fn = _smallmm if dtype == torch.float32 else _bf16_smallmm if dtype == torch.bfloat16 else None
    if fn is None or not 2 <= x.shape[0] <= 8 or not _fits(weight, bias, dtype):
        return None
    x = x.float().contiguous()
    bias = None if bias is None else bias.float()
    y = torch.empty(x.shape[0], weight.shape[0], dtype=torch.float32)
    fn(weight.data_ptr(), x.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(), x.shape[0],
       weight.shape[0], weight.shape[1], torch.get_num_threads())
    return y.to(dtype)


def quant_mm(q: torch.Tensor, scale: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, bits: int,
             group_size: int | None = None, row_sums: torch.Tensor | None = None) -> torch.Tensor | None:
    """x (M, K) fp32 @ W.T + bias (N,) fp32 for 1 <= M <= 16 with W quantized: int8 q (N, K) with scales
    (N,), or 4-bit q in the kernels' layout (N, Kp / 2) with scales (N, Kp / group_size); each row of x
    is quantized to int8 first (`codegen.quant.formats.quantize_activations`) and the products summed in
    int32. int8 may come with `row_sums` (N,) int32, q.sum(1), which the VNNI tier's products then take
    instead of adding them up (see `vnni_takes_row_sums`). None when the native kernels are unavailable
    (the caller dequantizes instead)."""
    if not _tried:
        load()
    if _q8 is None or not 1 <= x.shape[0] <= 16:
        return None
    y = torch.empty(x.shape[0], q.shape[0], dtype=torch.float32)
    args = (q.data_ptr(), scale.data_ptr(), x.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(),
            x.shape[0], q.shape[0], x.shape[1])
    threads = torch.get_num_threads()
    if bits == 8:
        if row_sums is not None and (row_sums.dtype != torch.int32 or row_sums.shape != (q.shape[0],)
                                     or not row_sums.is_contiguous()):
            raise ValueError(f"row_sums must be ({q.shape[0]},) contiguous int32, got {tuple(row_sums.shape)} {row_sums.dtype}")
        rc = _q8(args[0], args[1], None if row_sums is None else row_sums.data_ptr(), *args[2:], threads)
    else:
        rc = _q4(*args, 2 * q.shape[1], group_size, threads)
    return y if rc == 0 else None


def vnni_takes_row_sums() -> bool:
    """Whether the active tier's int8 products use row sums given to `quant_mm` (VNNI's unsigned
    activations: the avx512bf16 and avxvnni tiers); the others ignore them."""
    if not _tried:
        load()
    return _active_tier in VNNI_TIERS


def q4_gemm(q: torch.Tensor, scale: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None,
            group_size: int) -> torch.Tensor | None:
    """x (M, K) fp32 @ W.T + bias for any M with W in 4 bits (the kernels' layout (N, Kp / 2), fp32 scales
    (N, Kp / group_size)): the prefill product of qgemm.cpp, the same sums as `quant_mm` grouped as a
    GEMM's. None when the native kernels are unavailable."""
    if not _tried:
        load()
    if _q8 is None:
        return None
    y = torch.empty(x.shape[0], q.shape[0], dtype=torch.float32)
    rc = _libs[_active_tier].codegen_q4_gemm(q.data_ptr(), scale.data_ptr(), x.data_ptr(),
                                             None if bias is None else bias.data_ptr(), y.data_ptr(), x.shape[0], q.shape[0],
                                             x.shape[1], 2 * q.shape[1], group_size, torch.get_num_threads())
    return y if rc == 0 else None


def dequantize(q: torch.Tensor, scale: torch.Tensor, in_features: int, bits: int, group_size: int | None) -> torch.Tensor | None:
    """Rows of a quantized weight (int8 (N, K), or 4-bit in the kernels' layout (N, Kp / 2)) with their
    fp32 scales as fp32 (N, in_features), or None when the native kernels are unavailable."""
    if not _tried:
        load()
    if _dequant is None:
        return None
    out = torch.empty(q.shape[0], in_features, dtype=torch.float32)
    rc = _dequant(q.data_ptr(), scale.data_ptr(), out.data_ptr(), q.shape[0], in_features,
                  in_features if bits == 8 else 2 * q.shape[1], group_size or 0, bits, torch.get_num_threads())
    return out if rc == 0 else None


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, float] | None:
    """The native kernels' activation quantization of one fp32 row (K,): (int8 values, scale), or None
    when the kernels are unavailable (tests compare it with codegen.quant.formats')."""
    rows = quantize_rows(x.reshape(1, -1))
    return None if rows is None else (rows[0][0], float(rows[1]))


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """x (M, K) quantized row by row as `codegen.quant.formats.quantize_activations` does (int8 (M, K),
    fp32 scales (M, 1)), threaded; None when the kernels are unavailable."""
    if not _tried:
        load()
    if _q8 is None:
        return None
    x = x.float().contiguous()
    q = torch.empty(x.shape, dtype=torch.int8)
    s = torch.empty(x.shape[0], 1, dtype=torch.float32)
    rc = _libs[_active_tier].codegen_quantize_rows(x.data_ptr(), x.shape[0], x.shape[1], q.data_ptr(), s.data_ptr(),
                                                   torch.get_num_threads())
    return (q, s) if rc == 0 else None


def int_epilogue(acc: torch.Tensor, sx: torch.Tensor, sw: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> bool:
    """out (M, N) fp32 (rows may be strided) = acc (M, N) int32 * (sx (M, 1) * sw (N,)) + bias (N,), as
    torch computes it, in one threaded pass; False (out untouched) when the kernels are unavailable or
    the tensors do not fit (fp32 / int32, unit column stride)."""
    if not _tried:
        load()
    if _q8 is None:
        return False
    M, N = acc.shape
    fits = (acc.dtype == torch.int32 and acc.stride(1) == 1 and out.dtype == torch.float32 and out.stride(1) == 1
            and tuple(out.shape) == (M, N) and sx.dtype == sw.dtype == torch.float32 and sx.is_contiguous()
            and sx.numel() == M and sw.is_contiguous() and sw.numel() == N
            and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous() and bias.numel() == N)))
    if not fits:
        return False
    _libs[_active_tier].codegen_int_epilogue(acc.data_ptr(), acc.stride(0), sx.data_ptr(), sw.data_ptr(),
                                             None if bias is None else bias.data_ptr(), out.data_ptr(), out.stride(0),
                                             M, N, torch.get_num_threads())
    return True


def split_heads(qkv: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, shards: int, heads: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """qkv_proj's output (B, T, 3E) (fp32 or bf16, contiguous) and the rotary tables (B, T, ..., D) fp32
    (codegen.ops.rotary_tables) -> q, k, v (B, H, T, D) contiguous, q and k rotated in fp32 and rounded
    to qkv's dtype, exactly as CodeGenAttention's torch code makes them; None where it does not fit."""
    if not _tried:
        load()
    if _split is None or qkv.dim() != 3 or qkv.dtype not in (torch.float32, torch.bfloat16) or qkv.device.type != "cpu":
        return None
    B, T, E3 = qkv.shape
    D = E3 // 3 // heads
    if (not qkv.is_contiguous() or E3 != 3 * heads * D or sin.dtype != torch.float32 or cos.dtype != torch.float32
            or sin.numel() != B * T * D or cos.numel() != B * T * D or not sin.is_contiguous() or not cos.is_contiguous()):
        return None
    q, k, v = (torch.empty(B, heads, T, D, dtype=qkv.dtype) for _ in range(3))
    rc = _split(qkv.data_ptr(), sin.data_ptr(), cos.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), B, T, shards,
                heads, D, int(qkv.dtype == torch.bfloat16), torch.get_num_threads())
    return (q, k, v) if rc == 0 else None


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """SDPA of one query per row and head (attention.cpp): q (B, H, 1, D), k and v (B, H, L, D) (a
    cache's filled columns: any strides with D contiguous), mask None or additive, broadcastable to
    (B, 1, 1, L), all of one dtype, fp32 or bf16, on the CPU: (B, H, 1, D); None where it does not fit."""
    if not _tried:
        load()
    if _attention is None or q.dim() != 4 or q.shape[2] != 1 or k.dim() != 4 or k.shape != v.shape:
        return None
    B, H, _, D = q.shape
    L = k.shape[2]
    if (k.shape[:2] != (B, H) or k.shape[3] != D or q.dtype not in (torch.float32, torch.bfloat16) or L == 0
            or any(t.dtype != q.dtype or t.device.type != "cpu" or t.stride(-1) != 1 for t in (q, k, v))):
        return None
    mb = 0
    if mask is not None:
        if mask.dtype != q.dtype or mask.dim() != 4 or mask.shape[1:3] != (1, 1) or mask.shape[3] != L \
                or mask.shape[0] not in (1, B) or mask.stride(-1) != 1:
            return None
        mb = mask.stride(0) if mask.shape[0] == B else 0
    out = torch.empty(B, H, 1, D, dtype=q.dtype)
    dims = (ctypes.c_int64 * 13)(B, H, L, D, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
                                 v.stride(0), v.stride(1), v.stride(2), mb)
    rc = _attention(q.data_ptr(), k.data_ptr(), v.data_ptr(), None if mask is None else mask.data_ptr(), out.data_ptr(),
                    dims, D ** -0.5, int(q.dtype == torch.bfloat16), torch.get_num_threads())
    return out if rc == 0 else None


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
