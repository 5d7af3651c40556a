// CPU host code of the pooling ops: argument checks, layout (NCHW- or channels_last-contiguous, the
// format of the first tensor argument), allocation, kernel call. bfloat16/float16 run in float32.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "fastconv/pool2d_kernels.h"
#include "fastconv/torch_utils.h"

namespace fastconv {
namespace cpu {
namespace {

// Input in the layout the kernels take, float32 for the 16-bit types.
at::Tensor prepare(const at::Tensor& t, at::MemoryFormat fmt) {
  at::Tensor r = as_layout(t, fmt);
  if (t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf) r = r.to(at::kFloat);
  return r;
}

at::Tensor finish(const at::Tensor& y, at::ScalarType dtype) { return y.scalar_type() == dtype ? y : y.to(dtype); }

template <typename F>
void dispatch(const at::Tensor& t, F&& f) {
  if (t.scalar_type() == at::kDouble) f(double{});
  else f(float{});
}

template <typename T> const T* cptr(const at::Tensor& t) { return static_cast<const T*>(t.const_data_ptr()); }
template <typename T> T* mptr(at::Tensor& t) { return static_cast<T*>(t.mutable_data_ptr()); }

void check_input(const at::Tensor& t, const char* name) {
  check_4d(t, name);
  check_float(t, name);
}

// Geometry of grad_input from input_size, checked against grad_out's batch and channels.
void check_input_size(at::IntArrayRef input_size, const at::Tensor& grad_out) {
  TORCH_CHECK_VALUE(input_size.size() == 4, "fastconv: 'input_size' must have 4 elements (N, C, H, W), got ",
                    input_size);
  TORCH_CHECK_VALUE(input_size[0] == grad_out.size(0) && input_size[1] == grad_out.size(1),
                    "fastconv: 'input_size' ", input_size, " must match the batch and channels of 'grad_out' ",
                    grad_out.sizes());
  TORCH_CHECK_VALUE(input_size[2] >= 1 && input_size[3] >= 1, "fastconv: 'input_size' must have positive H and W, got ",
                    input_size);
}

void check_window(at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef dilation) {
  check_pair(kernel_size, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  for (int i = 0; i < 2; ++i) {
    // torch's rule: at most half the undilated kernel, so no window lies wholly in the padding.
    TORCH_CHECK_VALUE(padding[i] <= kernel_size[i] / 2, "fastconv: 'padding' ", padding,
                      " must be at most half of the kernel size ", kernel_size);
  }
}

Pool2dParams params(const at::Tensor& x, const at::Tensor& y, at::IntArrayRef k, at::IntArrayRef s,
                    at::IntArrayRef pad, at::IntArrayRef dil) {
  Pool2dParams p;
  p.x = tensor4(x);
  p.y = tensor4(y);
  p.kh = k[0], p.kw = k[1], p.stride_h = s[0], p.stride_w = s[1];
  p.pad_h = pad[0], p.pad_w = pad[1], p.dil_h = dil[0], p.dil_w = dil[1];
  return p;
}

std::pair<int64_t, int64_t> out_size(const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef pad,
                                     at::IntArrayRef dil, bool ceil_mode) {
  int64_t P = pool_out(x.size(2), k[0], pad[0], s[0], dil[0], ceil_mode);
  int64_t Q = pool_out(x.size(3), k[1], pad[1], s[1], dil[1], ceil_mode);
  TORCH_CHECK_VALUE(P >= 1 && Q >= 1, "fastconv: pooling output size would be ", P, "x", Q, " for input ",
                    x.size(2), "x", x.size(3), " (kernel_size ", k, ", stride ", s, ", padding ", pad,
                    ", dilation ", dil, "): output size is too small");
  return {P, Q};
}

// (values, indices); indices are left undefined when with_indices is false.
std::tuple<at::Tensor, at::Tensor> max_pool(const at::Tensor& input, at::IntArrayRef kernel_size,
                                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                            bool ceil_mode, bool with_indices) {
  check_input(input, "input");
  check_window(kernel_size, stride, padding, dilation);
  auto [P, Q] = out_size(input, kernel_size, stride, padding, dilation, ceil_mode);
  const auto fmt = memory_format_of(input);
  const at::Tensor x = prepare(input, fmt);
  at::Tensor y = empty4({x.size(0), x.size(1), P, Q}, x.options(), fmt);
  at::Tensor idx;
  if (with_indices) idx = empty4({x.size(0), x.size(1), P, Q}, x.options().dtype(at::kLong), fmt);
  const Pool2dParams p = params(x, y, kernel_size, stride, padding, dilation);
  dispatch(x, [&](auto tag) {
    using T = decltype(tag);
    fastconv::max_pool2d_fwd<T>(p, cptr<T>(x), mptr<T>(y), with_indices ? mptr<int64_t>(idx) : nullptr);
  });
  return {finish(y, input.scalar_type()), idx};
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_fwd(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode) {
  return max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, true);
}

at::Tensor max_pool2d_values(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  return std::get<0>(max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, false));
}

at::Tensor max_pool2d_bwd(const at::Tensor& grad_out, const at::Tensor& indices, at::IntArrayRef input_size) {
  check_input(grad_out, "grad_out");
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, "fastconv: 'indices' must be int64, got ", indices.scalar_type());
  TORCH_CHECK_VALUE(indices.sizes() == grad_out.sizes(), "fastconv: 'indices' ", indices.sizes(),
                    " must have the shape of 'grad_out' ", grad_out.sizes());
  TORCH_CHECK(indices.device() == grad_out.device(), "fastconv: 'indices' is on ", indices.device(),
              " but 'grad_out' is on ", grad_out.device());
  check_input_size(input_size, grad_out);
  const auto fmt = memory_format_of(grad_out);
  const at::Tensor gy = prepare(grad_out, fmt), idx = as_layout(indices, fmt);
  at::Tensor gx = empty4(input_size, gy.options(), fmt);
  Pool2dParams p;
  p.x = tensor4(gx);
  p.y = tensor4(gy);
  dispatch(gy, [&](auto tag) {
    using T = decltype(tag);
    fastconv::max_pool2d_bwd<T>(p, cptr<T>(gy), cptr<int64_t>(idx), mptr<T>(gx));
  });
  return finish(gx, grad_out.scalar_type());
}

void check_avg(at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
               std::optional<int64_t> divisor_override) {
  check_pair(kernel_size, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK_VALUE(padding[i] <= kernel_size[i] / 2, "fastconv: 'padding' ", padding,
                      " must be at most half of the kernel size ", kernel_size);
  }
  TORCH_CHECK_VALUE(!divisor_override || *divisor_override != 0, "fastconv: 'divisor_override' must not be 0");
}

at::Tensor avg_pool2d_fwd(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                          std::optional<int64_t> divisor_override) {
  check_input(input, "input");
  check_avg(kernel_size, stride, padding, divisor_override);
  const int64_t one[2] = {1, 1};
  auto [P, Q] = out_size(input, kernel_size, stride, padding, one, ceil_mode);
  const auto fmt = memory_format_of(input);
  const at::Tensor x = prepare(input, fmt);
  at::Tensor y = empty4({x.size(0), x.size(1), P, Q}, x.options(), fmt);
  Pool2dParams p = params(x, y, kernel_size, stride, padding, one);
  p.count_include_pad = count_include_pad;
  p.divisor_override = divisor_override.value_or(0);
  dispatch(x, [&](auto tag) {
    using T = decltype(tag);
    fastconv::avg_pool2d_fwd<T>(p, cptr<T>(x), mptr<T>(y));
  });
  return finish(y, input.scalar_type());
}

at::Tensor avg_pool2d_bwd(const at::Tensor& grad_out, at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                          at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                          std::optional<int64_t> divisor_override) {
  check_input(grad_out, "grad_out");
  check_avg(kernel_size, stride, padding, divisor_override);
  check_input_size(input_size, grad_out);
  const int64_t one[2] = {1, 1};
  const int64_t P = pool_out(input_size[2], kernel_size[0], padding[0], stride[0], 1, ceil_mode);
  const int64_t Q = pool_out(input_size[3], kernel_size[1], padding[1], stride[1], 1, ceil_mode);
  TORCH_CHECK_VALUE(grad_out.size(2) == P && grad_out.size(3) == Q, "fastconv: 'grad_out' ", grad_out.sizes(),
                    " does not match the pooling output size ", P, "x", Q, " of 'input_size' ", input_size);
  const auto fmt = memory_format_of(grad_out);
  const at::Tensor gy = prepare(grad_out, fmt);
  at::Tensor gx = empty4(input_size, gy.options(), fmt);
  Pool2dParams p = params(gx, gy, kernel_size, stride, padding, one);
  p.count_include_pad = count_include_pad;
  p.divisor_override = divisor_override.value_or(0);
  dispatch(gy, [&](auto tag) {
    using T = decltype(tag);
    fastconv::avg_pool2d_bwd<T>(p, cptr<T>(gy), mptr<T>(gx));
  });
  return finish(gx, grad_out.scalar_type());
}

at::Tensor adaptive_avg_pool2d_fwd(const at::Tensor& input, at::IntArrayRef output_size) {
  check_input(input, "input");
  check_pair(output_size, "output_size", 1);
  TORCH_CHECK_VALUE(input.size(2) > 0 && input.size(3) > 0, "fastconv: 'input' must have non-zero spatial sizes, got ",
                    input.sizes());
  const auto fmt = memory_format_of(input);
  const at::Tensor x = prepare(input, fmt);
  at::Tensor y = empty4({x.size(0), x.size(1), output_size[0], output_size[1]}, x.options(), fmt);
  Pool2dParams p;
  p.x = tensor4(x);
  p.y = tensor4(y);
  dispatch(x, [&](auto tag) {
    using T = decltype(tag);
    fastconv::adaptive_avg_pool2d_fwd<T>(p, cptr<T>(x), mptr<T>(y));
  });
  return finish(y, input.scalar_type());
}

at::Tensor adaptive_avg_pool2d_bwd(const at::Tensor& grad_out, at::IntArrayRef input_size) {
  check_input(grad_out, "grad_out");
  check_input_size(input_size, grad_out);
  const auto fmt = memory_format_of(grad_out);
  const at::Tensor gy = prepare(grad_out, fmt);
  at::Tensor gx = empty4(input_size, gy.options(), fmt);
  Pool2dParams p;
  p.x = tensor4(gx);
  p.y = tensor4(gy);
  dispatch(gy, [&](auto tag) {
    using T = decltype(tag);
    fastconv::adaptive_avg_pool2d_bwd<T>(p, cptr<T>(gy), mptr<T>(gx));
  });
  return finish(gx, grad_out.scalar_type());
}

}  // namespace
}  // namespace cpu
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("max_pool2d_fwd", &fastconv::cpu::max_pool2d_fwd);
  m.impl("max_pool2d_values", &fastconv::cpu::max_pool2d_values);
  m.impl("max_pool2d_bwd", &fastconv::cpu::max_pool2d_bwd);
  m.impl("avg_pool2d_fwd", &fastconv::cpu::avg_pool2d_fwd);
  m.impl("avg_pool2d_bwd", &fastconv::cpu::avg_pool2d_bwd);
  m.impl("adaptive_avg_pool2d_fwd", &fastconv::cpu::adaptive_avg_pool2d_fwd);
  m.impl("adaptive_avg_pool2d_bwd", &fastconv::cpu::adaptive_avg_pool2d_bwd);
}
