// CPU host code of relu_fwd/bwd, sort_fwd/bwd and the training-mode BatchNorm + ReLU
// (bn_relu_train_fwd/bwd): checks, layout, allocation, kernel call.
// Elementwise kernels run on the flat storage once every operand is dense in the output's format
// (channels_last for 4-D channels_last first operands, contiguous otherwise).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

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

// The [outer][C][inner] view of a dense 4-D tensor in format fmt (see bn_channel_sums).
struct ChannelView {
  int64_t outer, C, inner;
  ChannelView(const at::Tensor& t, at::MemoryFormat fmt)
      : outer(fmt == at::MemoryFormat::ChannelsLast ? t.size(0) * t.size(2) * t.size(3) : t.size(0)),
        C(t.size(1)), inner(fmt == at::MemoryFormat::ChannelsLast ? 1 : t.size(2) * t.size(3)) {}
  int64_t count() const { return outer * inner; }  // values per channel
};

void check_bn_input(const at::Tensor& x) {
  check_4d(x, "input");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "fastconv: 'input' of the training-mode batch norm must be float32 or float64, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.size(0) * x.size(2) * x.size(3) > 1,
                    "fastconv: expected more than 1 value per channel when training, got input size ", x.sizes());
}

void check_channel_vector(const at::Tensor& x, const std::optional<at::Tensor>& v, const char* name) {
  if (!v) return;
  check_same(x, "input", *v, name);
  TORCH_CHECK_VALUE(v->dim() == 1 && v->size(0) == x.size(1), "fastconv: '", name, "' must have shape (",
                    x.size(1), ",), got ", v->sizes());
}

// Batch statistics over (N, H, W), y = relu((x - mean) * invstd * weight + bias (+ residual)).
// Returns (y, mean, invstd, unbiased variance), the last three per channel in x's dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_relu_train_fwd(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& residual, double eps) {
  check_bn_input(input);
  check_channel_vector(input, weight, "weight");
  check_channel_vector(input, bias, "bias");
  if (residual) check_operand(input, "input", *residual, "residual");
  TORCH_CHECK_VALUE(eps > 0, "fastconv: 'eps' must be > 0, got ", eps);
  const auto fmt = format_of(input);
  const at::Tensor x = as_layout(input, fmt);
  const at::Tensor res = residual ? as_layout(*residual, fmt) : at::Tensor();
  const ChannelView v(x, fmt);
  const auto vec = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor y = empty_like_fmt(x, fmt), mean = at::empty({v.C}, vec), invstd = at::empty({v.C}, vec),
             var_unbiased = at::empty({v.C}, vec);
  const at::Tensor w = weight ? weight->contiguous() : at::Tensor(), b = bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bn_relu_train_fwd", [&] {
    std::vector<double> s1(v.C), s2(v.C);
    fastconv::bn_channel_sums<scalar_t>(x.const_data_ptr<scalar_t>(), nullptr, nullptr, nullptr, nullptr, v.outer,
                                        v.C, v.inner, s1.data(), s2.data());
    std::vector<scalar_t> a(v.C), sh(v.C);
    const double m = double(v.count());
    const scalar_t* wp = w.defined() ? w.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t *mp = mean.mutable_data_ptr<scalar_t>(), *ip = invstd.mutable_data_ptr<scalar_t>(),
             *vp = var_unbiased.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < v.C; ++c) {
      const double mu = s1[c] / m, var = std::max(0.0, s2[c] / m - mu * mu), is = 1.0 / std::sqrt(var + eps);
      mp[c] = scalar_t(mu);
      ip[c] = scalar_t(is);
      vp[c] = scalar_t(var * m / (m - 1));
      a[c] = scalar_t((wp ? double(wp[c]) : 1.0) * is);
      sh[c] = bp ? bp[c] : scalar_t(0);
    }
    fastconv::bn_channel_apply<scalar_t>(x.const_data_ptr<scalar_t>(),
                                         res.defined() ? res.const_data_ptr<scalar_t>() : nullptr, nullptr, nullptr,
                                         mean.const_data_ptr<scalar_t>(), a.data(), sh.data(), nullptr,
                                         y.mutable_data_ptr<scalar_t>(), v.outer, v.C, v.inner);
  });
  return {y, mean, invstd, var_unbiased};
}

// Gradients of bn_relu_train_fwd given grad (of y), its input, its result y and (mean, invstd):
// (grad_input, grad_weight, grad_bias, grad_residual); grad_residual is the gradient through the
// ReLU when `residual`, else an empty tensor.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_relu_train_bwd(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& result,
    const std::optional<at::Tensor>& weight, const at::Tensor& mean, const at::Tensor& invstd, bool residual) {
  check_bn_input(input);
  check_operand(input, "input", grad_out, "grad_out");
  check_operand(input, "input", result, "result");
  check_channel_vector(input, weight, "weight");
  check_channel_vector(input, mean, "mean");
  check_channel_vector(input, invstd, "invstd");
  const auto fmt = format_of(input);
  const at::Tensor x = as_layout(input, fmt), g = as_layout(grad_out, fmt), y = as_layout(result, fmt);
  const ChannelView v(x, fmt);
  const auto vec = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor dx = empty_like_fmt(x, fmt), dw = at::empty({v.C}, vec), db = at::empty({v.C}, vec);
  at::Tensor dres = residual ? empty_like_fmt(x, fmt) : at::empty({0}, vec);
  const at::Tensor w = weight ? weight->contiguous() : at::Tensor(), mu = mean.contiguous(), is = invstd.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bn_relu_train_bwd", [&] {
    std::vector<double> sg(v.C), sgx(v.C);
    const scalar_t* mp = mu.const_data_ptr<scalar_t>();
    fastconv::bn_channel_sums<scalar_t>(x.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
                                        g.const_data_ptr<scalar_t>(), mp,
                                        residual ? dres.mutable_data_ptr<scalar_t>() : nullptr, v.outer, v.C, v.inner,
                                        sg.data(), sgx.data());
    std::vector<scalar_t> A(v.C), B(v.C), D(v.C);
    const double m = double(v.count());
    const scalar_t *ip = is.const_data_ptr<scalar_t>(), *wp = w.defined() ? w.const_data_ptr<scalar_t>() : nullptr;
    scalar_t *dwp = dw.mutable_data_ptr<scalar_t>(), *dbp = db.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < v.C; ++c) {
      const double isc = double(ip[c]), a = (wp ? double(wp[c]) : 1.0) * isc, bcoef = -a * isc * isc * sgx[c] / m;
      A[c] = scalar_t(a);
      B[c] = scalar_t(bcoef);
      D[c] = scalar_t(-a * sg[c] / m);
      dwp[c] = scalar_t(sgx[c] * isc);
      dbp[c] = scalar_t(sg[c]);
    }
    fastconv::bn_channel_apply<scalar_t>(x.const_data_ptr<scalar_t>(), nullptr, g.const_data_ptr<scalar_t>(),
                                         y.const_data_ptr<scalar_t>(), mp, A.data(), B.data(), D.data(),
                                         dx.mutable_data_ptr<scalar_t>(), v.outer, v.C, v.inner);
  });
  return {dx, dw, db, dres};
}

}  // namespace
}  // namespace cpu
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("relu_fwd", &fastconv::cpu::relu_fwd);
  m.impl("relu_bwd", &fastconv::cpu::relu_bwd);
  m.impl("sort_fwd", &fastconv::cpu::sort_fwd);
  m.impl("sort_bwd", &fastconv::cpu::sort_bwd);
  m.impl("bn_relu_train_fwd", &fastconv::cpu::bn_relu_train_fwd);
  m.impl("bn_relu_train_bwd", &fastconv::cpu::bn_relu_train_bwd);
}
