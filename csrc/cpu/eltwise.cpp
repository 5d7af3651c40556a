// CPU host code of relu_fwd/bwd and sort_fwd/bwd: checks, layout, allocation, kernel call.
// Elementwise kernels run on the flat storage once every operand is dense in the output's format
// (channels_last for 4-D channels_last first operands, contiguous otherwise).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "fastconv/eltwise_kernels.h"
#include "fastconv/torch_utils.h"

namespace fastconv {
namespace cpu {
namespace {

at::MemoryFormat format_of(const at::Tensor& t) {
  return t.dim() == 4 ? memory_format_of(t) : at::MemoryFormat::Contiguous;
}

at::Tensor empty_like_fmt(const at::Tensor& t, at::MemoryFormat fmt) {
  return empty4(t.sizes(), t.options(), fmt);
}

void check_operand(const at::Tensor& first, const char* fname, const at::Tensor& t, const char* name) {
  check_float(t, name);
  check_same(first, fname, t, name);
  TORCH_CHECK_VALUE(t.sizes() == first.sizes(), "fastconv: '", name, "' must have the shape of '", fname,
                    "' ", first.sizes(), ", got ", t.sizes());
}

SortMode sort_mode(int64_t mode, double eps) {
  TORCH_CHECK_VALUE(mode == 0 || mode == 1, "fastconv: 'mode' must be 0 (sqrt) or 1 (product), got ", mode);
  TORCH_CHECK_VALUE(eps >= 0, "fastconv: 'eps' must be >= 0, got ", eps);
  return static_cast<SortMode>(mode);
}

// Calls f(T{}) with the kernel storage type of `t` (bfloat16/float16 as their bit patterns).
template <typename F>
void dispatch(const at::Tensor& t, const char* op, F&& f) {
  switch (t.scalar_type()) {
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    case at::kBFloat16: return f(bf16{});
    case at::kHalf: return f(fp16{});
    default: TORCH_CHECK_TYPE(false, "fastconv::", op, ": unsupported dtype ", t.scalar_type());
  }
}

template <typename T> const T* cptr(const at::Tensor& t) { return static_cast<const T*>(t.const_data_ptr()); }
template <typename T> T* mptr(at::Tensor& t) { return static_cast<T*>(t.mutable_data_ptr()); }

at::Tensor relu_fwd(const at::Tensor& input) {
  check_float(input, "input");
  const auto fmt = format_of(input);
  const at::Tensor x = as_layout(input, fmt);
  at::Tensor y = empty_like_fmt(x, fmt);
  dispatch(x, "relu_fwd", [&](auto tag) {
    using T = decltype(tag);
    fastconv::relu_fwd<T>(cptr<T>(x), mptr<T>(y), x.numel());
  });
  return y;
}

at::Tensor relu_bwd(const at::Tensor& grad_out, const at::Tensor& result) {
  check_float(grad_out, "grad_out");
  check_operand(grad_out, "grad_out", result, "result");
  const auto fmt = format_of(grad_out);
  const at::Tensor g = as_layout(grad_out, fmt), r = as_layout(result, fmt);
  at::Tensor gx = empty_like_fmt(g, fmt);
  dispatch(g, "relu_bwd", [&](auto tag) {
    using T = decltype(tag);
    fastconv::relu_bwd<T>(cptr<T>(g), cptr<T>(r), mptr<T>(gx), g.numel());
  });
  return gx;
}

at::Tensor sort_fwd(const at::Tensor& a, const at::Tensor& b, int64_t mode, double eps) {
  check_float(a, "a");
  check_operand(a, "a", b, "b");
  const SortMode m = sort_mode(mode, eps);
  const auto fmt = format_of(a);
  const at::Tensor ac = as_layout(a, fmt), bc = as_layout(b, fmt);
  at::Tensor y = empty_like_fmt(ac, fmt);
  dispatch(ac, "sort_fwd", [&](auto tag) {
    using T = decltype(tag);
    fastconv::sort_fwd<T>(cptr<T>(ac), cptr<T>(bc), mptr<T>(y), ac.numel(), m, eps);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> sort_bwd(const at::Tensor& grad_out, const at::Tensor& a, const at::Tensor& b,
                                            int64_t mode, double eps) {
  check_float(grad_out, "grad_out");
  check_operand(grad_out, "grad_out", a, "a");
  check_operand(grad_out, "grad_out", b, "b");
  const SortMode m = sort_mode(mode, eps);
  const auto fmt = format_of(grad_out);
  const at::Tensor g = as_layout(grad_out, fmt), ac = as_layout(a, fmt), bc = as_layout(b, fmt);
  at::Tensor ga = empty_like_fmt(g, fmt), gb = empty_like_fmt(g, fmt);
  dispatch(g, "sort_bwd", [&](auto tag) {
    using T = decltype(tag);
    fastconv::sort_bwd<T>(cptr<T>(g), cptr<T>(ac), cptr<T>(bc), mptr<T>(ga), mptr<T>(gb), g.numel(), m, eps);
  });
  return {ga, gb};
}

}  // namespace
}  // namespace cpu
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("relu_fwd", &fastconv::cpu::relu_fwd);
  m.impl("relu_bwd", &fastconv::cpu::relu_bwd);
  m.impl("sort_fwd", &fastconv::cpu::sort_fwd);
  m.impl("sort_bwd", &fastconv::cpu::sort_bwd);
}
