// Torch-free checks of the native kernels against double-precision references, for tiers this machine
// cannot run through Python (ARM, cross-compiled and run under qemu-user; see test_tiers.py). Linked
// with src/codegen/native/*.cpp; exits 0 and prints "ok N checks" when every product agrees.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

extern "C" {
int codegen_q8_mm(const int8_t*, const float*, const int32_t*, const float*, const float*, float*, int64_t, int64_t, int64_t, int);
int codegen_q4_mm(const uint8_t*, const float*, const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                  int64_t, int);
int codegen_q4_gemm(const uint8_t*, const float*, const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                    int64_t, int);
int codegen_quantize_rows(const float*, int64_t, int64_t, int8_t*, float*, int);
void codegen_f32_gemv(const float*, const float*, const float*, float*, int64_t, int64_t, int);
int codegen_f32_smallmm(const float*, const float*, const float*, float*, int64_t, int64_t, int64_t, int);
void codegen_gelu_tanh(const void*, void*, int64_t, int, int);
int codegen_dequantize(const void*, const float*, float*, int64_t, int64_t, int64_t, int64_t, int, int);
int codegen_simd_width();
}

static uint64_t state = 88172645463325252ull;
static double uniform() {  // xorshift64: the same data on every machine
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    return (state >> 11) * (1.0 / 9007199254740992.0);
}
static float normal() { return (float)(sqrt(-2 * log(uniform() + 1e-12)) * cos(6.283185307179586 * uniform())); }

static int checks = 0, failures = 0;
static void expect(bool ok, const char* what, int64_t a, int64_t b, int64_t c, double err) {
    ++checks;
    if (!ok && failures++ < 10) fprintf(stderr, "FAIL %s (%lld, %lld, %lld): error %g\n", what, (long long)a, (long long)b, (long long)c, err);
}

// The activation quantization of qdot.h, written out: scale max|x| / 127, round half even.
static float quantize(const float* x, int64_t K, std::vector<int>& q) {
    float amax = 0;
    for (int64_t k = 0; k < K; ++k) amax = fabsf(x[k]) > amax ? fabsf(x[k]) : amax;
    const float inv = amax > 0 ? 127.0f / amax : 0.0f;
    q.resize(K);
    for (int64_t k = 0; k < K; ++k) q[k] = (int)nearbyintf(x[k] * inv);
    return amax / 127.0f;
}

static double rel(const std::vector<float>& y, const std::vector<double>& r) {
    double err = 0, big = 1e-30;
    for (size_t i = 0; i < y.size(); ++i) err = fmax(err, fabs(y[i] - r[i])), big = fmax(big, fabs(r[i]));
    return err / big;
}

int main() {
    const int64_t shapes[][2] = {{37, 45}, {9, 257}, {130, 96}, {5, 300}};
    for (auto& s : shapes) {
        const int64_t N = s[0], K = s[1];
        std::vector<float> X(40 * K), b(N);  // 16 rows for the decode products, 40 for the GEMM
        for (auto& v : X) v = normal() * 3;
        for (auto& v : b) v = normal();
        // int8: one scale per row
        std::vector<int8_t> Q(N * K);
        std::vector<float> S(N);
        for (auto& v : Q) v = (int8_t)(int)(uniform() * 255 - 127);
        for (auto& v : S) v = (float)(uniform() * 0.02 + 1e-3);
        std::vector<int32_t> sums(N);  // the row sums a caller may pass (the VNNI tier then skips its own)
        for (int64_t n = 0; n < N; ++n)
            for (int64_t k = 0; k < K; ++k) sums[n] += Q[n * K + k];
        for (int64_t M = 1; M <= 16; M += (M < 3 ? 1 : 5))
          for (int with_sums = 0; with_sums < 2; ++with_sums) {
            std::vector<float> Y(M * N);
            std::vector<double> R(M * N);
            expect(codegen_q8_mm(Q.data(), S.data(), with_sums ? sums.data() : nullptr, X.data(), b.data(), Y.data(), M, N, K,
                                 2) == 0, "q8 rc", N, K, M, with_sums);
            for (int64_t m = 0; m < M; ++m) {
                std::vector<int> q;
                const float sx = quantize(&X[m * K], K, q);
                for (int64_t n = 0; n < N; ++n) {
                    long long acc = 0;
                    for (int64_t k = 0; k < K; ++k) acc += (long long)Q[n * K + k] * q[k];
                    R[m * N + n] = (double)acc * sx * S[n] + b[n];
                }
            }
            const double e = rel(Y, R);
            expect(e < 1e-5, "q8_mm", N, K, M, e);
        }
        // int4, groups of G: the kernels' layout, per 32 weights byte j = (w[j] + 8) | (w[j + 16] + 8) << 4
        for (int64_t G : {32, 64, 128}) {
            const int64_t Kp = (K + G - 1) / G * G;
            std::vector<int> W(N * Kp);
            std::vector<uint8_t> P(N * Kp / 2);
            std::vector<float> SG(N * (Kp / G));
            for (int64_t n = 0; n < N; ++n)
                for (int64_t k = 0; k < Kp; ++k) W[n * Kp + k] = k < K ? (int)(uniform() * 16) - 8 : 0;
            for (auto& v : SG) v = (float)(uniform() * 0.1 + 1e-3);
            for (int64_t n = 0; n < N; ++n)
                for (int64_t u = 0; u < Kp / 32; ++u)
                    for (int j = 0; j < 16; ++j)
                        P[n * Kp / 2 + u * 16 + j] = (uint8_t)((W[n * Kp + u * 32 + j] + 8) | (W[n * Kp + u * 32 + 16 + j] + 8) << 4);
            for (int64_t M : {1, 2, 3, 8, 13, 40}) {  // the 1-16 row products and the GEMM (any M, tiles and tails)
                std::vector<float> Y(M * N), YG(M * N);
                std::vector<double> R(M * N);
                if (M <= 16)
                    expect(codegen_q4_mm(P.data(), SG.data(), X.data(), b.data(), Y.data(), M, N, K, Kp, G, 2) == 0, "q4 rc", N, K, M, 0);
                expect(codegen_q4_gemm(P.data(), SG.data(), X.data(), b.data(), YG.data(), M, N, K, Kp, G, 2) == 0, "q4 gemm rc", N, K, M, 0);
                for (int64_t m = 0; m < M; ++m) {
                    std::vector<int> q;
                    const float sx = quantize(&X[m * K], K, q);
                    for (int64_t n = 0; n < N; ++n) {
                        double acc = 0;
                        for (int64_t g = 0; g < Kp / G; ++g) {
                            long long part = 0;
                            for (int64_t k = g * G; k < (g + 1) * G && k < K; ++k) part += (long long)W[n * Kp + k] * q[k];
                            acc += (double)part * SG[n * (Kp / G) + g];
                        }
                        R[m * N + n] = acc * sx + b[n];
                    }
                }
                if (M <= 16) expect(rel(Y, R) < 1e-5, "q4_mm", N, K, G * 100 + M, rel(Y, R));
                expect(rel(YG, R) < 1e-5, "q4_gemm", N, K, G * 100 + M, rel(YG, R));
            }
            std::vector<float> D(N * K);
            expect(codegen_dequantize(P.data(), SG.data(), D.data(), N, K, Kp, G, 4, 2) == 0, "dequantize rc", N, K, G, 0);
            double e = 0;
            for (int64_t n = 0; n < N; ++n)
                for (int64_t k = 0; k < K; ++k) e = fmax(e, fabs(D[n * K + k] - W[n * Kp + k] * (double)SG[n * (Kp / G) + k / G]));
            expect(e < 1e-6, "dequantize int4", N, K, G, e);
        }
        // the native activation quantization itself
        std::vector<int8_t> qa(K);
        std::vector<int> qr;
        float sa = 0.0f;
        const int rc = codegen_quantize_rows(X.data(), 1, K, qa.data(), &sa, 1);
        const float sr = quantize(X.data(), K, qr);
        bool same = rc == 0 && sa == sr;
        for (int64_t k = 0; k < K; ++k) same &= qa[k] == qr[k];
        expect(same, "quantize_act", N, K, 0, 0);
        // fp32 products
        std::vector<float> Wf(N * K);
        for (auto& v : Wf) v = normal();
        for (int64_t M = 1; M <= 8; ++M) {
            std::vector<float> Y(M * N);
            std::vector<double> R(M * N);
            if (M == 1) codegen_f32_gemv(Wf.data(), X.data(), b.data(), Y.data(), N, K, 2);
            else expect(codegen_f32_smallmm(Wf.data(), X.data(), b.data(), Y.data(), M, N, K, 2) == 0, "smallmm rc", N, K, M, 0);
            for (int64_t m = 0; m < M; ++m)
                for (int64_t n = 0; n < N; ++n) {
                    double acc = b[n];
                    for (int64_t k = 0; k < K; ++k) acc += (double)Wf[n * K + k] * X[m * K + k];
                    R[m * N + n] = acc;
                }
            const double e = rel(Y, R);
            expect(e < 1e-5, "f32 products", N, K, M, e);
        }
    }
    std::vector<float> x(1000), y(1000);
    for (auto& v : x) v = normal() * 4;
    codegen_gelu_tanh(x.data(), y.data(), 1000, 0, 2);
    double e = 0;
    for (int i = 0; i < 1000; ++i) {
        const double v = x[i], g = 0.5 * v * (1 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
        e = fmax(e, fabs(y[i] - g));
    }
    expect(e < 1e-5, "gelu_tanh", 1000, 0, 0, e);
    if (failures) {
        fprintf(stderr, "%d of %d checks failed (simd width %d)\n", failures, checks, codegen_simd_width());
        return 1;
    }
    printf("ok %d checks (simd width %d)\n", checks, codegen_simd_width());
    return 0;
}
