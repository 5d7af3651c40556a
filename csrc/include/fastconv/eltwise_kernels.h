// Elementwise kernels over flat arrays (the host hands over dense storage in one layout): ReLU and
// SORT, forward and backward. 16-bit types are converted to float32 per element on the fly.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastconv/common.h"

namespace fastconv {

// Storage types for torch's bfloat16 / float16 (same bit patterns); the kernels compute in float32.
struct bf16 { uint16_t bits; };
struct fp16 { uint16_t bits; };

template <typename T> void relu_fwd(const T* x, T* y, int64_t n);
// gx = result > 0 ? gy : 0 (NaN results pass the gradient, as torch's threshold_backward).
template <typename T> void relu_bwd(const T* gy, const T* result, T* gx, int64_t n);
// y = a + b + sqrt(relu(a)*relu(b) + eps) (kSqrt) or a + b + relu(a)*relu(b) (kProduct).
template <typename T> void sort_fwd(const T* a, const T* b, T* y, int64_t n, SortMode mode, double eps);
// (ga, gb) in one pass; derivative terms whose true value is 0 stay 0 even for eps = 0.
template <typename T>
void sort_bwd(const T* gy, const T* a, const T* b, T* ga, T* gb, int64_t n, SortMode mode, double eps);

// Training-mode BatchNorm + ReLU over a dense [outer][C][inner] tensor (channels-last: outer =
// N*H*W, inner = 1; NCHW: outer = N, inner = H*W), float and double, sums in double.
// bn_channel_sums, forward (y = g = mean = gres = nullptr): s1 = sum x, s2 = sum x^2 per channel;
// backward: g' = (y <= 0 ? 0 : g) (written to gres unless null), s1 = sum g', s2 = sum g' (x - mean).
template <typename T>
void bn_channel_sums(const T* x, const T* y, const T* g, const T* mean, T* gres, int64_t outer, int64_t C,
                     int64_t inner, double* s1, double* s2);
// Forward (g = y = d = nullptr): out = relu((x - mu[c]) a[c] + b[c] (+ res)); backward:
// out = a[c] g' + b[c] (x - mu[c]) + d[c].
template <typename T>
void bn_channel_apply(const T* x, const T* res, const T* g, const T* y, const T* mu, const T* a, const T* b,
                      const T* d, T* out, int64_t outer, int64_t C, int64_t inner);

// Split [0, n) into one contiguous range per thread; `work` is the total cost in elements so
// small jobs stay on the calling thread (an OpenMP fork costs about as much as ~50k simple ops).
template <typename F>
void parallel_ranges(int64_t n, int64_t work, F&& f) {
  int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
  nt = static_cast<int>(std::min<int64_t>({nt, n, std::max<int64_t>(1, work / 32768)}));
  if (nt <= 1) {
    if (n > 0) f(int64_t(0), n);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    int64_t t = omp_get_thread_num(), k = omp_get_num_threads();
    int64_t b = n * t / k, e = n * (t + 1) / k;
    if (b < e) f(b, e);
  }
}

}  // namespace fastconv

// The kernel bodies (csrc/cpu/*_kernels_impl.h) are compiled once per code path inside namespace
// fastconv::<isa> (portable, avx2, avx512) so that no inline or template symbol built for a wider
// ISA can be picked by the linker for generic code; the generic file dispatches with this.
#define FASTCONV_ISA_DISPATCH(fn, ...)                             \
  switch (::fastconv::cpu_isa()) {                                 \
    case ::fastconv::Isa::kAvx512: return avx512::fn(__VA_ARGS__); \
    case ::fastconv::Isa::kAvx2: return avx2::fn(__VA_ARGS__);     \
    default: return portable::fn(__VA_ARGS__);                     \
  }

// Explicit instantiations of the elementwise kernels for one element type, used once per ISA file.
#define FASTCONV_ELTWISE_INSTANTIATE(T)                                                           \
  template void relu_fwd<T>(const T*, T*, int64_t);                                               \
  template void relu_bwd<T>(const T*, const T*, T*, int64_t);                                     \
  template void sort_fwd<T>(const T*, const T*, T*, int64_t, SortMode, double);                   \
  template void sort_bwd<T>(const T*, const T*, const T*, T*, T*, int64_t, SortMode, double);

// The BatchNorm + ReLU kernels' instantiations (float and double), once per ISA file.
#define FASTCONV_BN_INSTANTIATE(T)                                                                 \
  template void bn_channel_sums<T>(const T*, const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, \
                                   double*, double*);                                              \
  template void bn_channel_apply<T>(const T*, const T*, const T*, const T*, const T*, const T*, const T*,  \
                                    const T*, T*, int64_t, int64_t, int64_t);
