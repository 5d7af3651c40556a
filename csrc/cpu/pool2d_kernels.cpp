// Pooling kernels: portable variant and run-time dispatch (pool2d_kernels_avx2.cpp and
// pool2d_kernels_avx512.cpp compile the same body for wider targets).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "fastconv/eltwise_kernels.h"
#include "fastconv/pool2d_kernels.h"

namespace fastconv {
namespace portable {
#define FASTCONV_IMPL_AVX2 0
#include "pool2d_kernels_impl.h"
#undef FASTCONV_IMPL_AVX2
}  // namespace portable

#define FASTCONV_POOL_DECLARE(ns)                                                                 \
  namespace ns {                                                                                  \
  template <typename T> void max_pool2d_fwd(const Pool2dParams&, const T*, T*, int64_t*);         \
  template <typename T> void max_pool2d_bwd(const Pool2dParams&, const T*, const int64_t*, T*);   \
  template <typename T> void avg_pool2d_fwd(const Pool2dParams&, const T*, T*);                   \
  template <typename T> void avg_pool2d_bwd(const Pool2dParams&, const T*, T*);                   \
  template <typename T> void adaptive_avg_pool2d_fwd(const Pool2dParams&, const T*, T*);          \
  template <typename T> void adaptive_avg_pool2d_bwd(const Pool2dParams&, const T*, T*);          \
  }
FASTCONV_POOL_DECLARE(avx2)
FASTCONV_POOL_DECLARE(avx512)

template <typename T> void max_pool2d_fwd(const Pool2dParams& p, const T* x, T* y, int64_t* idx) {
  FASTCONV_ISA_DISPATCH(max_pool2d_fwd<T>, p, x, y, idx)
}
template <typename T> void max_pool2d_bwd(const Pool2dParams& p, const T* gy, const int64_t* idx, T* gx) {
  FASTCONV_ISA_DISPATCH(max_pool2d_bwd<T>, p, gy, idx, gx)
}
template <typename T> void avg_pool2d_fwd(const Pool2dParams& p, const T* x, T* y) {
  FASTCONV_ISA_DISPATCH(avg_pool2d_fwd<T>, p, x, y)
}
template <typename T> void avg_pool2d_bwd(const Pool2dParams& p, const T* gy, T* gx) {
  FASTCONV_ISA_DISPATCH(avg_pool2d_bwd<T>, p, gy, gx)
}
template <typename T> void adaptive_avg_pool2d_fwd(const Pool2dParams& p, const T* x, T* y) {
  FASTCONV_ISA_DISPATCH(adaptive_avg_pool2d_fwd<T>, p, x, y)
}
template <typename T> void adaptive_avg_pool2d_bwd(const Pool2dParams& p, const T* gy, T* gx) {
  FASTCONV_ISA_DISPATCH(adaptive_avg_pool2d_bwd<T>, p, gy, gx)
}

FASTCONV_POOL_INSTANTIATE(float)
FASTCONV_POOL_INSTANTIATE(double)

}  // namespace fastconv
