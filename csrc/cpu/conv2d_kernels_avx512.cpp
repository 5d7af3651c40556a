// AVX-512 micro-kernel: up to 12 rows (output pixels) x 32 columns (output channels) held in 24 zmm
// accumulators; each step loads two weight vectors and broadcasts one input value per row.
// The kernels themselves are in conv2d_kernels_simd.inc, shared with the AVX2 path.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "fastconv/conv2d_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")

namespace fastconv {
namespace avx512 {
using Vec = __m512;
constexpr int kLanes = 16;
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vbcast(const float* p) { return _mm512_set1_ps(*p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec vadd(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline void vstream(float* p, Vec v) { _mm512_stream_ps(p, v); }  // p aligned to the vector
// max(0, v) with NaN kept (the x86 max returns its second operand when either is NaN) and -0.0 kept
inline Vec vrelu(Vec v) { return _mm512_max_ps(_mm512_setzero_ps(), v); }

#include "conv2d_kernels_simd.inc"

}  // namespace avx512
}  // namespace fastconv

#pragma GCC pop_options
