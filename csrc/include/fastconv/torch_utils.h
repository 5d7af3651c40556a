// Helpers for the torch-facing op layer (csrc/ops.cpp, csrc/cpu/<op>.cpp, csrc/cuda/<op>.cpp).
// Kernel files never include this: it pulls in the torch headers.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <tuple>

#include "fastconv/common.h"

namespace fastconv {

// The CPU convolution's cache of packed weights (csrc/cpu/conv2d.cpp): register a weight for it,
// drop every entry, and its (entries, bytes, limit in bytes).
void cache_weight(const at::Tensor& weight);
void clear_weight_cache();
std::tuple<int64_t, int64_t, int64_t> weight_cache_stats();

// Output memory format the way torch picks it: channels_last when the tensor is laid out
// channels_last and not (also) NCHW-contiguous.
inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat memory_format_of(const at::Tensor& t) {
  return is_channels_last(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The layouts kernels accept: NCHW-contiguous or channels_last-contiguous. Anything else
// (arbitrary strided views) is copied once into `fmt`.
inline at::Tensor as_layout(const at::Tensor& t, at::MemoryFormat fmt) {
  return t.is_contiguous(fmt) ? t : t.contiguous(fmt);
}

inline Tensor4 tensor4(const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 4, "fastconv: internal error, expected a 4-D tensor, got ", t.dim(), "-D");
  Tensor4 d;
  d.n = t.size(0); d.c = t.size(1); d.h = t.size(2); d.w = t.size(3);
  d.sn = t.stride(0); d.sc = t.stride(1); d.sh = t.stride(2); d.sw = t.stride(3);
  return d;
}

inline at::Tensor empty4(at::IntArrayRef sizes, const at::TensorOptions& opts, at::MemoryFormat fmt) {
  return at::empty(sizes, opts.memory_format(fmt));
}

inline void check_4d(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, "fastconv: '", name, "' must be a 4-D tensor (N, C, H, W), got ",
                    t.dim(), "-D with shape ", t.sizes());
}

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "fastconv: '", name,
                   "' must be a floating-point tensor (float32, float64, bfloat16 or float16), got ",
                   t.scalar_type());
}

inline void check_same(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "fastconv: '", an, "' (", a.scalar_type(),
                   ") and '", bn, "' (", b.scalar_type(), ") must have the same dtype");
  TORCH_CHECK(a.device() == b.device(), "fastconv: '", an, "' is on ", a.device(), " but '", bn,
              "' is on ", b.device(), "; they must be on the same device");
}

}  // namespace fastconv
