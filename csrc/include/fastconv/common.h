// fastconv kernel layer: plain C++ (no torch, no Python). Every kernel takes raw pointers and one of
// the params structs below; the torch-facing layer (csrc/cpu/*.cpp without "_kernels", csrc/cuda/*.cpp)
// validates, picks the layout, allocates and calls in. The CMake build compiles this layer alone.
#pragma once
#include <cstdint>

namespace fastconv {

// Element strides are in elements (not bytes) and 64-bit: products of sizes pass 2^31 on real nets.
struct Tensor4 {
  int64_t n = 0, c = 0, h = 0, w = 0;      // logical NCHW sizes
  int64_t sn = 0, sc = 0, sh = 0, sw = 0;  // element strides (NCHW contiguous or channels_last)
};

// Dense NHWC (channels_last) storage. The stride of a size-1 dimension is free: torch calls an
// N x C x 1 x 1 tensor with strides (C, 1, 1, 1) channels_last-contiguous, and so must we.
inline bool nhwc_dense(const Tensor4& t) {
  auto ok = [](int64_t size, int64_t stride, int64_t want) { return size == 1 || stride == want; };
  return ok(t.c, t.sc, 1) && ok(t.w, t.sw, t.c) && ok(t.h, t.sh, t.w * t.c) && ok(t.n, t.sn, t.h * t.w * t.c);
}

// Epilogue applied to every conv output element z = acc*scale[k] + shift[k] + bias[k], then
// combine with residual r: none / add (z + r) / sort (sort(r, z)), then relu if asked.
enum class Combine : int { kNone = 0, kAdd = 1, kSort = 2 };
enum class SortMode : int { kSqrt = 0, kProduct = 1 };

template <typename T>
struct Epilogue {
  const T* bias = nullptr;      // [K] or null
  const T* scale = nullptr;     // [K] or null
  const T* shift = nullptr;     // [K] or null
  const T* residual = nullptr;  // output-shaped, strides of `out`, or null
  Combine combine = Combine::kNone;
  SortMode sort_mode = SortMode::kSqrt;
  T eps = T(0.01);
  bool relu = false;
  bool stream = false;  // set by the kernels: write full output runs with non-temporal stores
};

// 2-D convolution. x: [N, C, H, W], w: [K, C/groups, R, S], y: [N, K, P, Q].
// Asymmetric padding (top/left = pad_h0/pad_w0; bottom/right only shape P, Q) serves 'same'.
struct Conv2dParams {
  Tensor4 x, w, y;
  int64_t groups = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h0 = 0, pad_w0 = 0;  // leading (top, left) padding
  int64_t dil_h = 1, dil_w = 1;
};

// Pooling over [N, C, H, W] -> [N, C, P, Q] (same C, any strides in and out).
struct Pool2dParams {
  Tensor4 x, y;
  int64_t kh = 1, kw = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dil_h = 1, dil_w = 1;
  bool count_include_pad = true;
  int64_t divisor_override = 0;  // 0: none
};

// Instruction-set paths of the CPU kernels, chosen once at run time from CPUID and the
// FASTCONV_ISA environment variable (avx512 | avx2 | portable); see csrc/cpu/isa.cpp.
enum class Isa : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };
Isa cpu_isa();                    // the path in use
Isa cpu_best_isa();               // the best path this CPU supports
const char* isa_name(Isa isa);
bool set_cpu_isa(Isa isa);        // false if the CPU lacks it (tests force paths with this)
const char* cpu_features();       // e.g. "avx2 fma avx512f ..."
int64_t cpu_l2_bytes();           // one core's L2 cache (sysconf; 512 KB where it does not say)

// Winograd F(4x4, 3x3) for the float32 3x3 stride-1 convolutions where it pays (conv2d_kernels.cpp):
// on unless the FASTCONV_WINOGRAD environment variable is 0; set_cpu_winograd switches it.
bool cpu_winograd();
void set_cpu_winograd(bool on);

}  // namespace fastconv
