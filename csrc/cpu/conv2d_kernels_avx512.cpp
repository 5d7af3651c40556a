// AVX-512 micro-kernel: up to 12 rows (output pixels) x 32 columns (output channels) held in 24 zmm
// accumulators; each step loads two weight vectors and broadcasts one input value per row.
// Kept line-for-line parallel to conv2d_kernels_avx2.cpp.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "fastconv/conv2d_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")

namespace fastconv {
namespace avx512 {
namespace {

using Vec = __m512;
constexpr int kLanes = 16;
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vbcast(const float* p) { return _mm512_set1_ps(*p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }

template <int NP>
void tile(const TileArgs<float>& t) {
  constexpr int NV = kKv / kLanes;
  Vec acc[NP][NV];
#pragma GCC unroll 16
  for (int i = 0; i < NP; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = t.accumulate ? vload(t.c + i * kKv + j * kLanes) : vzero();
  const int64_t ai = t.a_i, at = t.a_t, len = t.T_len;
  for (int64_t sg = 0; sg < t.nseg; ++sg) {
    const float* a = t.a + t.seg_off[sg];
    const float* b = t.b + sg * len * kKv;
    for (int64_t u = 0; u < len; ++u, a += at, b += kKv) {
      Vec bv[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) bv[j] = vload(b + j * kLanes);
#pragma GCC unroll 16
      for (int i = 0; i < NP; ++i) {
        Vec av = vbcast(a + i * ai);
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[i][j] = vfma(av, bv[j], acc[i][j]);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < NP; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) vstore(t.c + i * kKv + j * kLanes, acc[i][j]);
}

template <int... I>
struct Table {
  static constexpr void (*fns[sizeof...(I)])(const TileArgs<float>&) = {&tile<I + 1>...};
};

}  // namespace

void conv_tile_f32(const TileArgs<float>& t) { Table<0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11>::fns[t.np - 1](t); }
static_assert(kMp == 12, "the table above lists kMp entries");

// 8x8 blocks through registers (unpack, shuffle, lane permute); edges element by element.
void transpose_f32(const float* src, int64_t rows, int64_t cols, int64_t lds, float* dst, int64_t ldd) {
  int64_t i = 0;
  for (; i + 8 <= rows; i += 8) {
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) {
      const float* s = src + i * lds + j;
      __m256 r[8], t[8], u[8];
      for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(s + k * lds);
      for (int k = 0; k < 8; k += 2) {
        t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
        t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
      }
      for (int k = 0; k < 8; k += 4) {
        u[k] = _mm256_shuffle_ps(t[k], t[k + 2], 0x44);
        u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], 0xEE);
        u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0x44);
        u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0xEE);
      }
      float* d = dst + j * ldd + i;
      for (int k = 0; k < 4; ++k) {
        _mm256_storeu_ps(d + k * ldd, _mm256_permute2f128_ps(u[k], u[k + 4], 0x20));
        _mm256_storeu_ps(d + (k + 4) * ldd, _mm256_permute2f128_ps(u[k], u[k + 4], 0x31));
      }
    }
    for (; j < cols; ++j)
      for (int64_t k = i; k < i + 8; ++k) dst[j * ldd + k] = src[k * lds + j];
  }
  for (; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];
}

#include "conv2d_depthwise.inc"

}  // namespace avx512
}  // namespace fastconv

#pragma GCC pop_options
