// FMA peak of this machine: 12 independent FMA chains per thread (enough to cover the FMA latency
// on two pipes), one thread per core, AVX2 (8 floats) or AVX-512 (16 floats) as the CPU allows.
//   g++ -O2 -fopenmp -mavx2 -mfma benchmarks/fma_peak.cpp -o /tmp/fma_peak && /tmp/fma_peak
//   (add -mavx512f -DUSE_AVX512 on an AVX-512 machine)
#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <cstdio>

#ifdef USE_AVX512
using vec = __m512;
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
constexpr int kLanes = 16;
#else
using vec = __m256;
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
constexpr int kLanes = 8;
#endif

int main() {
  constexpr long kIters = 200'000'000;
  constexpr int kChains = 12;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    float sink = 0;
    auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel reduction(+ : sink)
    {
      // Twelve named accumulators so they stay in registers.
      const vec a = SET1(0.999999f), b = SET1(1e-7f);
      vec c0 = SET1(1), c1 = SET1(2), c2 = SET1(3), c3 = SET1(4), c4 = SET1(5), c5 = SET1(6);
      vec c6 = SET1(7), c7 = SET1(8), c8 = SET1(9), c9 = SET1(10), c10 = SET1(11), c11 = SET1(12);
      for (long it = 0; it < kIters / 100; ++it) {
        c0 = FMA(c0, a, b); c1 = FMA(c1, a, b); c2 = FMA(c2, a, b); c3 = FMA(c3, a, b);
        c4 = FMA(c4, a, b); c5 = FMA(c5, a, b); c6 = FMA(c6, a, b); c7 = FMA(c7, a, b);
        c8 = FMA(c8, a, b); c9 = FMA(c9, a, b); c10 = FMA(c10, a, b); c11 = FMA(c11, a, b);
      }
      vec all[kChains] = {c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11};
      for (int i = 0; i < kChains; ++i) sink += reinterpret_cast<float*>(&all[i])[0];
    }
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double flops = 2.0 * kLanes * kChains * (kIters / 100) * omp_get_max_threads();
    if (flops / s > best) best = flops / s;
    if (sink == 42) std::printf(" ");
  }
  std::printf("threads %d lanes %d: %.1f GFLOP/s\n", omp_get_max_threads(), kLanes, best / 1e9);
}
