// Elementwise kernels compiled for AVX2 (dispatched from eltwise_kernels.cpp).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <immintrin.h>

#include "fastconv/eltwise_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace fastconv {
namespace avx2 {
#include "eltwise_kernels_impl.h"

FASTCONV_ELTWISE_INSTANTIATE(float)
FASTCONV_ELTWISE_INSTANTIATE(double)
FASTCONV_ELTWISE_INSTANTIATE(bf16)
FASTCONV_ELTWISE_INSTANTIATE(fp16)
FASTCONV_BN_INSTANTIATE(float)
FASTCONV_BN_INSTANTIATE(double)
}  // namespace avx2
}  // namespace fastconv
#pragma GCC pop_options
