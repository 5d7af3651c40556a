// CPU host of the convolution ops: argument checks, output layout, dtype dispatch (bfloat16/float16
// computed in float32), then the kernels of conv2d_kernels.cpp. The kernels take any strides (they
// copy x into a padded channels-last buffer and pack weights), so inputs are passed as they are.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include "fastconv/conv2d_kernels.h"
#include "fastconv/torch_utils.h"

namespace fastconv {
namespace {

at::ScalarType compute_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "fastconv: '", name, "' must be a CPU tensor for this kernel, got ", t.device());
}

at::Tensor to_compute(const at::Tensor& t) {
  const auto ct = compute_type(t.scalar_type());
  return t.scalar_type() == ct ? t : t.to(ct);
}

at::Tensor per_channel(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& like, int64_t k) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  check_same(*t, name, like, "input");
  TORCH_CHECK_VALUE(t->dim() == 1 && t->numel() == k, "fastconv: '", name, "' must be 1-D with ", k,
                    " elements (one per output channel), got shape ", t->sizes());
  return to_compute(*t).contiguous();
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// The packed weights for p (computed from w, the compute-dtype copy of `weight`) when `weight` is
// registered and takes no gradient here; else an undefined tensor (the kernel packs per call).
template <typename T>
at::Tensor packed_weights(const at::Tensor& weight, const at::Tensor& w, const Conv2dParams& p) {
  if (c10::GradMode::is_enabled() && weight.requires_grad()) return at::Tensor();
  const int64_t size = conv2d_fwd_packed_size<T>(p);
  if (size == 0) return at::Tensor();
  const int64_t kind = ((size * 4 + static_cast<int64_t>(cpu_isa())) * 2 + (p.y.sc == 1 ? 1 : 0)) * 1024 +
                       std::min<int64_t>(p.groups, 1023);
  return cached_packed_weight(weight, kind, size, w.options().memory_format(at::MemoryFormat::Contiguous),
                              [&](at::Tensor& out) { conv2d_fwd_pack<T>(p, w.data_ptr<T>(), out.data_ptr<T>()); });
}

at::Tensor conv2d_fused_fwd(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                            const c10::optional<at::Tensor>& residual, int64_t combine, bool relu, int64_t mode,
                            double eps) {
  check_4d(input, "input");
  check_4d(weight, "weight");
  check_float(input, "input");
  check_same(input, "input", weight, "weight");
  check_cpu(input, "input");
  TORCH_CHECK_VALUE(combine >= 0 && combine <= 2, "fastconv: 'combine' must be 0 (none), 1 (add) or 2 (sort), got ", combine);
  TORCH_CHECK_VALUE(mode == 0 || mode == 1, "fastconv: 'mode' must be 0 (sqrt) or 1 (product), got ", mode);
  TORCH_CHECK_VALUE(eps >= 0, "fastconv: 'eps' must be >= 0, got ", eps);
  ConvGeom g = conv_geom(input.sizes(), weight.sizes(), stride, padding, dilation, groups);
  const int64_t N = input.size(0), K = weight.size(0);
  const auto fmt = (is_channels_last(input) || is_channels_last(weight)) ? at::MemoryFormat::ChannelsLast
                                                                          : at::MemoryFormat::Contiguous;
  const auto ct = compute_type(input.scalar_type());
  at::Tensor x = to_compute(input), w = to_compute(weight);
  at::Tensor b = per_channel(bias, "bias", input, K), sc = per_channel(scale, "scale", input, K),
             sh = per_channel(shift, "shift", input, K);
  at::Tensor y = empty4({N, K, g.P, g.Q}, input.options().dtype(ct), fmt);
  at::Tensor r;
  if (combine != 0) {
    TORCH_CHECK_VALUE(residual.has_value() && residual->defined(), "fastconv: combine=", combine, " needs a 'residual' tensor");
    check_same(*residual, "residual", input, "input");
    TORCH_CHECK_VALUE(residual->sizes() == y.sizes(), "fastconv: 'residual' must have the output's shape ", y.sizes(),
                      ", got ", residual->sizes());
    // The kernel reads the residual with the output's strides.
    r = to_compute(*residual).contiguous(fmt);
  }
  if (N > 0) {
    g.p.x = tensor4(x);
    g.p.w = tensor4(w);
    g.p.y = tensor4(y);
    AT_DISPATCH_FLOATING_TYPES(ct, "fastconv_conv2d_fwd", [&] {
      Epilogue<scalar_t> ep;
      ep.bias = ptr_or_null<scalar_t>(b);
      ep.scale = ptr_or_null<scalar_t>(sc);
      ep.shift = ptr_or_null<scalar_t>(sh);
      ep.residual = ptr_or_null<scalar_t>(r);
      ep.combine = static_cast<Combine>(combine);
      ep.sort_mode = static_cast<SortMode>(mode);
      ep.eps = static_cast<scalar_t>(eps);
      ep.relu = relu;
      const at::Tensor packed = packed_weights<scalar_t>(weight, w, g.p);
      conv2d_fwd_cpu<scalar_t>(g.p, x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), ep,
                               packed.defined() ? packed.data_ptr<scalar_t>() : nullptr);
    });
  }
  return ct == input.scalar_type() ? y : y.to(input.scalar_type());
}

at::Tensor conv2d_fwd(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return conv2d_fused_fwd(input, weight, bias, stride, padding, dilation, groups, c10::nullopt, c10::nullopt,
                          c10::nullopt, 0, false, 0, 0.0);
}

void check_grad_shape(const at::Tensor& grad_out, const ConvGeom& g, int64_t n, int64_t k) {
  TORCH_CHECK_VALUE(grad_out.size(0) == n && grad_out.size(1) == k && grad_out.size(2) == g.P && grad_out.size(3) == g.Q,
                    "fastconv: 'grad_out' must have shape [", n, ", ", k, ", ", g.P, ", ", g.Q, "], got ",
                    grad_out.sizes());
}

at::Tensor conv2d_bwd_input(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef input_size,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_4d(grad_out, "grad_out");
  check_4d(weight, "weight");
  check_float(grad_out, "grad_out");
  check_same(grad_out, "grad_out", weight, "weight");
  check_cpu(grad_out, "grad_out");
  ConvGeom g = conv_geom(input_size, weight.sizes(), stride, padding, dilation, groups);
  check_grad_shape(grad_out, g, input_size[0], weight.size(0));
  const auto ct = compute_type(grad_out.scalar_type());
  at::Tensor dy = to_compute(grad_out), w = to_compute(weight);
  at::Tensor dx = empty4(input_size, grad_out.options().dtype(ct), memory_format_of(grad_out));
  if (dx.numel() > 0) {
    g.p.x = tensor4(dx);
    g.p.w = tensor4(w);
    g.p.y = tensor4(dy);
    AT_DISPATCH_FLOATING_TYPES(ct, "fastconv_conv2d_bwd_input", [&] {
      conv2d_bwd_input_cpu<scalar_t>(g.p, dy.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>());
    });
  }
  return ct == grad_out.scalar_type() ? dx : dx.to(grad_out.scalar_type());
}

at::Tensor conv2d_bwd_weight(const at::Tensor& grad_out, const at::Tensor& input, at::IntArrayRef weight_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_4d(grad_out, "grad_out");
  check_4d(input, "input");
  check_float(grad_out, "grad_out");
  check_same(grad_out, "grad_out", input, "input");
  check_cpu(grad_out, "grad_out");
  ConvGeom g = conv_geom(input.sizes(), weight_size, stride, padding, dilation, groups);
  check_grad_shape(grad_out, g, input.size(0), weight_size[0]);
  const auto ct = compute_type(grad_out.scalar_type());
  at::Tensor dy = to_compute(grad_out), x = to_compute(input);
  at::Tensor dw = empty4(weight_size, grad_out.options().dtype(ct), memory_format_of(grad_out));
  g.p.x = tensor4(x);
  g.p.w = tensor4(dw);
  g.p.y = tensor4(dy);
  AT_DISPATCH_FLOATING_TYPES(ct, "fastconv_conv2d_bwd_weight", [&] {
    conv2d_bwd_weight_cpu<scalar_t>(g.p, dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>());
  });
  return ct == grad_out.scalar_type() ? dw : dw.to(grad_out.scalar_type());
}

at::Tensor conv2d_bwd_bias(const at::Tensor& grad_out) {
  check_4d(grad_out, "grad_out");
  check_float(grad_out, "grad_out");
  check_cpu(grad_out, "grad_out");
  const auto ct = compute_type(grad_out.scalar_type());
  at::Tensor dy = to_compute(grad_out);
  at::Tensor db = at::empty({grad_out.size(1)}, grad_out.options().dtype(ct));
  AT_DISPATCH_FLOATING_TYPES(ct, "fastconv_conv2d_bwd_bias", [&] {
    conv2d_bwd_bias_cpu<scalar_t>(tensor4(dy), dy.data_ptr<scalar_t>(), db.data_ptr<scalar_t>());
  });
  return ct == grad_out.scalar_type() ? db : db.to(grad_out.scalar_type());
}

}  // namespace

}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("conv2d_fwd", &fastconv::conv2d_fwd);
  m.impl("conv2d_fused_fwd", &fastconv::conv2d_fused_fwd);
  m.impl("conv2d_bwd_input", &fastconv::conv2d_bwd_input);
  m.impl("conv2d_bwd_weight", &fastconv::conv2d_bwd_weight);
  m.impl("conv2d_bwd_bias", &fastconv::conv2d_bwd_bias);
}
