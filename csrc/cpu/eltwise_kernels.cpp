// Elementwise kernels: portable variant and run-time dispatch (AVX2 / AVX-512 variants compile the
// same body with wider targets in eltwise_kernels_avx2.cpp / eltwise_kernels_avx512.cpp).
#include <emmintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "fastconv/eltwise_kernels.h"

namespace fastconv {
namespace portable {
#include "eltwise_kernels_impl.h"
}  // namespace portable

#define FASTCONV_ELTWISE_DECLARE(ns)                                                              \
  namespace ns {                                                                                  \
  template <typename T> void relu_fwd(const T*, T*, int64_t);                                     \
  template <typename T> void relu_bwd(const T*, const T*, T*, int64_t);                           \
  template <typename T> void sort_fwd(const T*, const T*, T*, int64_t, SortMode, double);         \
  template <typename T>                                                                           \
  void sort_bwd(const T*, const T*, const T*, T*, T*, int64_t, SortMode, double);                 \
  template <typename T>                                                                           \
  void bn_channel_sums(const T*, const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, double*, \
                       double*);                                                                  \
  template <typename T>                                                                           \
  void bn_channel_apply(const T*, const T*, const T*, const T*, const T*, const T*, const T*, const T*, T*, \
                        int64_t, int64_t, int64_t);                                               \
  }
FASTCONV_ELTWISE_DECLARE(avx2)
FASTCONV_ELTWISE_DECLARE(avx512)

template <typename T> void relu_fwd(const T* x, T* y, int64_t n) {
  FASTCONV_ISA_DISPATCH(relu_fwd<T>, x, y, n)
}
template <typename T> void relu_bwd(const T* gy, const T* r, T* gx, int64_t n) {
  FASTCONV_ISA_DISPATCH(relu_bwd<T>, gy, r, gx, n)
}
template <typename T> void sort_fwd(const T* a, const T* b, T* y, int64_t n, SortMode mode, double eps) {
  FASTCONV_ISA_DISPATCH(sort_fwd<T>, a, b, y, n, mode, eps)
}
template <typename T>
void sort_bwd(const T* gy, const T* a, const T* b, T* ga, T* gb, int64_t n, SortMode mode, double eps) {
  FASTCONV_ISA_DISPATCH(sort_bwd<T>, gy, a, b, ga, gb, n, mode, eps)
}

template <typename T>
void bn_channel_sums(const T* x, const T* y, const T* g, const T* mean, T* gres, int64_t outer, int64_t C,
                     int64_t inner, double* s1, double* s2) {
  FASTCONV_ISA_DISPATCH(bn_channel_sums<T>, x, y, g, mean, gres, outer, C, inner, s1, s2)
}
template <typename T>
void bn_channel_apply(const T* x, const T* res, const T* g, const T* y, const T* mu, const T* a, const T* b,
                      const T* d, T* out, int64_t outer, int64_t C, int64_t inner) {
  FASTCONV_ISA_DISPATCH(bn_channel_apply<T>, x, res, g, y, mu, a, b, d, out, outer, C, inner)
}

FASTCONV_ELTWISE_INSTANTIATE(float)
FASTCONV_ELTWISE_INSTANTIATE(double)
FASTCONV_ELTWISE_INSTANTIATE(bf16)
FASTCONV_ELTWISE_INSTANTIATE(fp16)

FASTCONV_BN_INSTANTIATE(float)
FASTCONV_BN_INSTANTIATE(double)

}  // namespace fastconv
