// Device helpers shared by the CUDA kernel files: element types and their accumulator types,
// conversions, 16-byte vectors, the fused epilogue, launch geometry. Pure CUDA (no torch).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fastconv/cuda_kernels.h"

namespace fastconv {
namespace cuda {

// fp32 accumulation for every type but double.
template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using Acc = typename AccOf<T>::type;

template <typename T> __device__ __forceinline__ Acc<T> to_acc(T v) { return static_cast<Acc<T>>(v); }
template <> __device__ __forceinline__ float to_acc<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(Acc<T> v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T> __device__ __forceinline__ T ld(const T* p) { return __ldg(p); }
template <> __device__ __forceinline__ __half ld<__half>(const __half* p) { return *p; }
template <> __device__ __forceinline__ __nv_bfloat16 ld<__nv_bfloat16>(const __nv_bfloat16* p) { return *p; }

// relu as torch's: NaN stays NaN and -0 stays -0.
template <typename A> __device__ __forceinline__ A relu_nan(A v) { return v < A(0) ? A(0) : v; }

template <typename A> __device__ __forceinline__ A sort_val(A a, A b, int mode, A eps) {
  const A p = relu_nan(a) * relu_nan(b);
  return a + b + (mode == 0 ? sqrt(p + eps) : p);
}

// VEC elements of T moved as one 16-byte access.
template <typename T, int N> struct alignas(sizeof(T) * N) Vec { T v[N]; };
template <typename T> constexpr int kVec16 = 16 / sizeof(T);

template <typename T> __device__ __forceinline__ bool aligned16(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// The host emulation of these kernels (csrc/tests/cuda_emu) defines this to trap a vector access at a
// misaligned address, which a CPU would serve and a GPU would fault on; on the GPU it is empty.
#ifndef FASTCONV_CHECK_VEC_ADDRESS
#define FASTCONV_CHECK_VEC_ADDRESS(p)
#endif

// One 16-byte load / store of N elements at p (16-byte aligned).
template <typename T, int N> __device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  FASTCONV_CHECK_VEC_ADDRESS(p);
  return *reinterpret_cast<const Vec<T, N>*>(p);
}
template <typename T, int N> __device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  FASTCONV_CHECK_VEC_ADDRESS(p);
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

// Device-side form of EpilogueArgs for element type T.
template <typename T> struct Epi {
  const T* bias;
  const T* scale;
  const T* shift;
  const T* residual;
  int combine, mode;
  Acc<T> eps;
  bool relu;
  bool any_channel;  // scale/shift/bias present
  bool trivial;      // nothing to do but convert

  static Epi make(const EpilogueArgs& e) {
    Epi d;
    d.bias = static_cast<const T*>(e.bias);
    d.scale = static_cast<const T*>(e.scale);
    d.shift = static_cast<const T*>(e.shift);
    d.residual = static_cast<const T*>(e.residual);
    d.combine = e.residual ? e.combine : 0;
    d.mode = e.mode;
    d.eps = static_cast<Acc<T>>(e.eps);
    d.relu = e.relu;
    d.any_channel = d.bias || d.scale || d.shift;
    d.trivial = !d.any_channel && d.combine == 0 && !d.relu;
    return d;
  }

  // v: accumulator of output channel k (global index); r: the residual element (if combining).
  __device__ __forceinline__ Acc<T> apply_r(Acc<T> v, int64_t k, Acc<T> r) const {
    if (any_channel) {
      if (scale) v *= to_acc(ld(scale + k));
      if (shift) v += to_acc(ld(shift + k));
      if (bias) v += to_acc(ld(bias + k));
    }
    if (combine) v = combine == 1 ? r + v : sort_val(r, v, mode, eps);
    if (relu) v = relu_nan(v);
    return v;
  }
  // Same, reading the residual at element offset roff of the output.
  __device__ __forceinline__ Acc<T> apply(Acc<T> v, int64_t k, int64_t roff) const {
    return apply_r(v, k, combine ? to_acc(ld(residual + roff)) : Acc<T>(0));
  }
};

// n / d and n % d for n < 2^31 by a multiply and a shift (round-up reciprocal: m = 2^32 (2^s - d) / d
// + 1, s = ceil(log2 d); q = (umulhi(n, m) + n) >> s, exact for every n < 2^31 and 1 <= d <= 2^31).
struct FastDiv {
  uint32_t d = 1, m = 1, s = 0;
  static FastDiv make(int64_t d) {
    FastDiv f;
    f.d = static_cast<uint32_t>(d);
    while ((uint64_t{1} << f.s) < static_cast<uint64_t>(d)) ++f.s;
    f.m = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << f.s) - d)) / d + 1);
    return f;
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(n, m) + n) >> s; }
};

inline int blocks_for(int64_t work, int threads, int max_blocks) {
  int64_t b = (work + threads - 1) / threads;
  if (b > max_blocks) b = max_blocks;
  return b < 1 ? 1 : static_cast<int>(b);
}

// Grid-stride cap: enough blocks to fill any current GPU several times over.
constexpr int kMaxGridBlocks = 132 * 32;
// Largest gridDim.y / gridDim.z.
constexpr int kMaxGridZ = 65535;

// Dispatch a functor templated on the element type.
template <typename F> void dispatch(DType dt, F&& f) {
  switch (dt) {
    case DType::kF32: f(float()); break;
    case DType::kF64: f(double()); break;
    case DType::kF16: f(__half()); break;
    case DType::kBF16: f(__nv_bfloat16()); break;
  }
}

}  // namespace cuda
}  // namespace fastconv
