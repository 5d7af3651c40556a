// Helpers for the torch-facing op layer (csrc/ops.cpp, csrc/cpu/<op>.cpp, csrc/cuda/<op>.cpp).
// Kernel files never include this: it pulls in the torch headers.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <tuple>
#include <utility>

#include "fastconv/common.h"
#include "fastconv/free_blocks.h"

namespace fastconv {

// The CPU convolution's cache of packed weights (csrc/cpu/weight_cache.cpp): register a weight for
// it, drop every entry, and its (entries, bytes, limit in bytes); and the packed form of `weight`
// for `kind` (size elements), made by pack(out) when missing or stale: an undefined tensor when the
// weight is not registered.
void cache_weight(const at::Tensor& weight);
void clear_weight_cache();
std::tuple<int64_t, int64_t, int64_t> weight_cache_stats();
at::Tensor cached_packed_weight(const at::Tensor& weight, int64_t kind, int64_t size, const at::TensorOptions& opts,
                                const std::function<void(at::Tensor&)>& pack);

// The cache of freed CPU output blocks: release them all; (bytes held, limit in bytes).
void clear_output_cache();
std::pair<int64_t, int64_t> output_cache_stats();

// A pooling argument of two values, each >= minimum (the CPU and CUDA hosts' check).
inline void check_pair(at::IntArrayRef v, const char* name, int64_t minimum) {
  TORCH_CHECK_VALUE(v.size() == 2, "fastconv: '", name, "' must have 2 elements, got ", v);
  TORCH_CHECK_VALUE(v[0] >= minimum && v[1] >= minimum, "fastconv: '", name, "' must be ",
                    minimum == 1 ? "positive" : "non-negative", ", got ", v);
}

// torch's pooling_output_shape (fastconv/_args.py's pool_out_size is the Python twin).
inline int64_t pool_out(int64_t size, int64_t k, int64_t pad, int64_t stride, int64_t dil, bool ceil_mode) {
  const int64_t num = size + 2 * pad - dil * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t out = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= size + pad) --out;
  return out;
}

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

// Every op's output: at::empty, except that CPU outputs of 1 MB and more come from the cache of freed
// output blocks (csrc/cpu/output_cache.cpp), which spares them a page fault per 4 KB. Any rank.
at::Tensor empty4(at::IntArrayRef sizes, const at::TensorOptions& opts, at::MemoryFormat fmt);

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

// Geometry of a convolution call: the kernel parameters and the output size P x Q.
struct ConvGeom {
  Conv2dParams p;
  int64_t P = 0, Q = 0;
};

// Validates the convolution arguments for input size `xs` and weight size `ws` (both 4-D) and
// returns the kernel parameters (tensor strides filled in later by the caller). Shared by the CPU and
// CUDA hosts, so both accept and reject the same calls with the same messages.
inline ConvGeom conv_geom(at::IntArrayRef xs, at::IntArrayRef ws, at::IntArrayRef stride, at::IntArrayRef padding,
                   at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK_VALUE(stride.size() == 2 && stride[0] > 0 && stride[1] > 0,
                    "fastconv: 'stride' must be two positive ints, got ", stride);
  TORCH_CHECK_VALUE(dilation.size() == 2 && dilation[0] > 0 && dilation[1] > 0,
                    "fastconv: 'dilation' must be two positive ints, got ", dilation);
  TORCH_CHECK_VALUE(padding.size() == 4 && padding[0] >= 0 && padding[1] >= 0 && padding[2] >= 0 && padding[3] >= 0,
                    "fastconv: 'padding' must be four non-negative ints (top, bottom, left, right), got ", padding);
  TORCH_CHECK_VALUE(groups > 0, "fastconv: 'groups' must be positive, got ", groups);
  TORCH_CHECK_VALUE(xs.size() == 4, "fastconv: input size must have 4 entries (N, C, H, W), got ", xs);
  TORCH_CHECK_VALUE(ws.size() == 4, "fastconv: weight size must have 4 entries (K, C/groups, R, S), got ", ws);
  TORCH_CHECK_VALUE(ws[0] > 0 && ws[1] > 0 && ws[2] > 0 && ws[3] > 0,
                    "fastconv: 'weight' must have non-zero sizes, got ", ws);
  TORCH_CHECK_VALUE(xs[1] % groups == 0, "fastconv: 'groups' (", groups, ") must divide the input channels (", xs[1], ")");
  TORCH_CHECK_VALUE(ws[0] % groups == 0, "fastconv: 'groups' (", groups, ") must divide the output channels (", ws[0], ")");
  TORCH_CHECK_VALUE(ws[1] * groups == xs[1], "fastconv: 'weight' of shape ", ws, " expects ", ws[1] * groups,
                    " input channels, but 'input' has ", xs[1]);
  TORCH_CHECK_VALUE(xs[2] > 0 && xs[3] > 0, "fastconv: 'input' must have non-zero spatial sizes, got ", xs);
  ConvGeom g;
  g.P = (xs[2] + padding[0] + padding[1] - dilation[0] * (ws[2] - 1) - 1) / stride[0] + 1;
  g.Q = (xs[3] + padding[2] + padding[3] - dilation[1] * (ws[3] - 1) - 1) / stride[1] + 1;
  TORCH_CHECK_VALUE(xs[2] + padding[0] + padding[1] >= dilation[0] * (ws[2] - 1) + 1 &&
                        xs[3] + padding[2] + padding[3] >= dilation[1] * (ws[3] - 1) + 1,
                    "fastconv: conv2d output size would be empty for input ", xs, ", weight ", ws,
                    ", padding ", padding, ", dilation ", dilation);
  g.p.groups = groups;
  g.p.stride_h = stride[0];
  g.p.stride_w = stride[1];
  g.p.pad_h0 = padding[0];
  g.p.pad_w0 = padding[2];
  g.p.dil_h = dilation[0];
  g.p.dil_w = dilation[1];
  return g;
}

}  // namespace fastconv
