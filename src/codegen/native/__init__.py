"""Native CPU code: the C++ kernels (`kernels.cpp`, `decode.cpp`, `simd.h`), their build and ctypes
binding (`kernels`), and the whole one-row decode step (`fused`). Which of them runs when is the
engine's backend's decision (`codegen.engine.backend`), not this package's."""
