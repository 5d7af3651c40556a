// AVX2+FMA micro-kernel: up to 6 rows (output pixels) x 16 columns (output channels) held in 12 ymm
// accumulators; each step loads two weight vectors and broadcasts one input value per row.
// The kernels themselves are in conv2d_kernels_simd.inc, shared with the AVX-512 path.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "fastconv/conv2d_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace fastconv {
namespace avx2 {
using Vec = __m256;
constexpr int kLanes = 8;
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vbcast(const float* p) { return _mm256_broadcast_ss(p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec vadd(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline void vstream(float* p, Vec v) { _mm256_stream_ps(p, v); }  // p aligned to the vector
// max(0, v) with NaN kept (the x86 max returns its second operand when either is NaN) and -0.0 kept
inline Vec vrelu(Vec v) { return _mm256_max_ps(_mm256_setzero_ps(), v); }

#include "conv2d_kernels_simd.inc"

}  // namespace avx2
}  // namespace fastconv

#pragma GCC pop_options
