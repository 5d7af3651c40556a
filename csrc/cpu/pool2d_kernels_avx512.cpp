// Pooling kernels compiled for AVX512 (dispatched from pool2d_kernels.cpp).
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
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")
namespace fastconv {
namespace avx512 {
#define FASTCONV_IMPL_AVX2 1
#include "pool2d_kernels_impl.h"
#undef FASTCONV_IMPL_AVX2
FASTCONV_POOL_INSTANTIATE(float)
FASTCONV_POOL_INSTANTIATE(double)
}  // namespace avx512
}  // namespace fastconv
#pragma GCC pop_options
