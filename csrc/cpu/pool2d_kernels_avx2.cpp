// Pooling kernels compiled for AVX2 (dispatched from pool2d_kernels.cpp).
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

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace fastconv {
namespace avx2 {
#define FASTCONV_IMPL_AVX2 1
#include "pool2d_kernels_impl.h"
#undef FASTCONV_IMPL_AVX2
FASTCONV_POOL_INSTANTIATE(float)
FASTCONV_POOL_INSTANTIATE(double)
}  // namespace avx2
}  // namespace fastconv
#pragma GCC pop_options
