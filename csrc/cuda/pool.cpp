// CUDA hosts of max/avg/adaptive-average pooling forward and backward. Output (and grad_input)
// take the memory format of the first tensor argument; kernels read any strides, so the other
// operands are only brought to that layout for coalescing.
#include <vector>

#include "host.h"

namespace fastconv {
namespace cuda {
namespace {

Pool2dParams pool_params(const at::Tensor& x, const at::Tensor& y, at::IntArrayRef k, at::IntArrayRef s,
                         at::IntArrayRef p, at::IntArrayRef d) {
  Pool2dParams pp;
  pp.x = tensor4(x); pp.y = tensor4(y);
  pp.kh = k[0]; pp.kw = k[1];
  pp.stride_h = s[0]; pp.stride_w = s[1];
  pp.pad_h = p[0]; pp.pad_w = p[1];
  pp.dil_h = d[0]; pp.dil_w = d[1];
  return pp;
}

std::vector<int64_t> pooled_shape(const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p,
                                  at::IntArrayRef d, bool ceil_mode) {
  const int64_t oh = pool_out(x.size(2), k[0], p[0], s[0], d[0], ceil_mode);
  const int64_t ow = pool_out(x.size(3), k[1], p[1], s[1], d[1], ceil_mode);
  TORCH_CHECK_VALUE(oh > 0 && ow > 0, "fastconv: pooling output size would be ", oh, "x", ow, " for input ",
                    x.sizes(), "; the input is too small");
  return {x.size(0), x.size(1), oh, ow};
}

// kernel_size, stride, padding, dilation, and for average pooling divisor_override.
void check_window(at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d,
                  std::optional<int64_t> divisor_override = std::nullopt) {
  TORCH_CHECK_VALUE(!divisor_override || *divisor_override != 0, "fastconv: 'divisor_override' must not be 0, got ",
                    divisor_override ? *divisor_override : 0);
  check_pair(k, "kernel_size", 1);
  check_pair(s, "stride", 1);
  check_pair(p, "padding", 0);
  check_pair(d, "dilation", 1);
  for (int i = 0; i < 2; ++i) {
    // torch's rule for every pooling: at most half the undilated kernel.
    TORCH_CHECK_VALUE(p[i] <= k[i] / 2, "fastconv: 'padding' ", p, " must be at most half of the kernel size ", k);
  }
}

void check_pool_args(const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p,
                     at::IntArrayRef d, std::optional<int64_t> divisor_override = std::nullopt) {
  check_4d(x, "input");
  check_float(x, "input");
  TORCH_CHECK(x.is_cuda(), "fastconv: 'input' must be a CUDA tensor");
  check_window(k, s, p, d, divisor_override);
}

std::vector<int64_t> check_input_size(at::IntArrayRef input_size, const at::Tensor& g) {
  TORCH_CHECK_VALUE(input_size.size() == 4, "fastconv: 'input_size' must have 4 values, got ", input_size);
  TORCH_CHECK_VALUE(input_size[0] == g.size(0) && input_size[1] == g.size(1), "fastconv: 'input_size' ",
                    input_size, " does not match 'grad_out' ", g.sizes(), " in batch and channels");
  for (auto v : input_size) TORCH_CHECK_VALUE(v >= 0, "fastconv: 'input_size' must be non-negative, got ", input_size);
  return input_size.vec();
}

// Values and int64 argmax indices; with_idx false: the values alone (max_pool2d_values, inference),
// the indices neither tracked nor written (an undefined tensor is returned in their place).
std::tuple<at::Tensor, at::Tensor> max_pool2d_run(const at::Tensor& input, at::IntArrayRef k, at::IntArrayRef s,
                                                  at::IntArrayRef p, at::IntArrayRef d, bool ceil_mode, bool with_idx) {
  check_pool_args(input, k, s, p, d);
  c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = memory_format_of(input);
  const at::Tensor x = dense(input, fmt);
  const auto shape = pooled_shape(x, k, s, p, d, ceil_mode);
  at::Tensor y = empty4(shape, x.options(), fmt);
  at::Tensor idx = with_idx ? empty4(shape, x.options().dtype(at::kLong), fmt) : at::Tensor();
  if (y.numel() == 0) return {y, idx};
  max_pool2d_fwd(pool_params(x, y, k, s, p, d), dtype_of(x), x.data_ptr(), y.data_ptr(),
                 with_idx ? idx.data_ptr<int64_t>() : nullptr, stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, idx};
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_fwd_cuda(const at::Tensor& input, at::IntArrayRef k, at::IntArrayRef s,
                                                       at::IntArrayRef p, at::IntArrayRef d, bool ceil_mode) {
  return max_pool2d_run(input, k, s, p, d, ceil_mode, true);
}

at::Tensor max_pool2d_values_cuda(const at::Tensor& input, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p,
                                  at::IntArrayRef d, bool ceil_mode) {
  return std::get<0>(max_pool2d_run(input, k, s, p, d, ceil_mode, false));
}

at::Tensor max_pool2d_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& indices, at::IntArrayRef input_size) {
  check_4d(grad_out, "grad_out");
  check_float(grad_out, "grad_out");
  TORCH_CHECK(grad_out.is_cuda(), "fastconv: 'grad_out' must be a CUDA tensor");
  check_device(indices, "indices", grad_out, "grad_out");
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, "fastconv: 'indices' must be int64, got ", indices.scalar_type());
  TORCH_CHECK_VALUE(indices.sizes() == grad_out.sizes(), "fastconv: 'indices' ", indices.sizes(),
                    " must have the shape of 'grad_out' ", grad_out.sizes());
  const auto size = check_input_size(input_size, grad_out);
  c10::cuda::CUDAGuard guard(grad_out.device());
  const auto fmt = memory_format_of(grad_out);
  const at::Tensor g = as_layout(grad_out, fmt), idx = as_layout(indices, fmt);
  const bool half = g.element_size() == 2;
  // 16-bit: overlapping windows accumulate in an fp32 buffer laid out like grad_input.
  // (at::zeros would ignore the memory format: allocate in it, then clear)
  at::Tensor gx = half ? empty4(size, g.options(), fmt) : empty4(size, g.options(), fmt).zero_();
  at::Tensor acc = half ? empty4(size, g.options().dtype(at::kFloat), fmt).zero_() : at::Tensor();
  if (gx.numel() == 0) return gx;
  if (g.numel() == 0) return half ? gx.zero_() : gx;
  max_pool2d_bwd(tensor4(g), tensor4(gx), dtype_of(g), g.data_ptr(), idx.data_ptr<int64_t>(), gx.data_ptr(),
                 half ? acc.data_ptr<float>() : nullptr, stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gx;
}

at::Tensor avg_pool2d_fwd_cuda(const at::Tensor& input, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p,
                               bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  const int64_t one[2] = {1, 1};
  check_pool_args(input, k, s, p, one, divisor_override);
  c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = memory_format_of(input);
  const at::Tensor x = dense(input, fmt);
  at::Tensor y = empty4(pooled_shape(x, k, s, p, one, ceil_mode), x.options(), fmt);
  if (y.numel() == 0) return y;
  Pool2dParams pp = pool_params(x, y, k, s, p, one);
  pp.count_include_pad = count_include_pad;
  pp.divisor_override = divisor_override ? *divisor_override : 0;
  avg_pool2d_fwd(pp, dtype_of(x), x.data_ptr(), y.data_ptr(), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor avg_pool2d_bwd_cuda(const at::Tensor& grad_out, at::IntArrayRef input_size, at::IntArrayRef k,
                               at::IntArrayRef s, at::IntArrayRef p, bool ceil_mode, bool count_include_pad,
                               std::optional<int64_t> divisor_override) {
  check_4d(grad_out, "grad_out");
  check_float(grad_out, "grad_out");
  TORCH_CHECK(grad_out.is_cuda(), "fastconv: 'grad_out' must be a CUDA tensor");
  const auto size = check_input_size(input_size, grad_out);
  const int64_t one[2] = {1, 1};
  check_window(k, s, p, one, divisor_override);
  c10::cuda::CUDAGuard guard(grad_out.device());
  const auto fmt = memory_format_of(grad_out);
  const at::Tensor g = dense(grad_out, fmt);
  at::Tensor gx = empty4(size, g.options(), fmt);
  if (gx.numel() == 0) return gx;
  const int64_t oh = pool_out(size[2], k[0], p[0], s[0], 1, ceil_mode), ow = pool_out(size[3], k[1], p[1], s[1], 1, ceil_mode);
  TORCH_CHECK_VALUE(g.size(2) == oh && g.size(3) == ow, "fastconv: 'grad_out' ", g.sizes(),
                    " does not match the pooled size ", oh, "x", ow, " of 'input_size' ", input_size);
  Pool2dParams pp = pool_params(gx, g, k, s, p, one);
  pp.count_include_pad = count_include_pad;
  pp.divisor_override = divisor_override ? *divisor_override : 0;
  avg_pool2d_bwd(pp, dtype_of(g), g.data_ptr(), gx.data_ptr(), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gx;
}

at::Tensor adaptive_avg_pool2d_fwd_cuda(const at::Tensor& input, at::IntArrayRef output_size) {
  check_4d(input, "input");
  check_float(input, "input");
  TORCH_CHECK(input.is_cuda(), "fastconv: 'input' must be a CUDA tensor");
  check_pair(output_size, "output_size", 1);
  TORCH_CHECK_VALUE(input.size(2) > 0 && input.size(3) > 0, "fastconv: 'input' must have non-zero spatial sizes, got ",
                    input.sizes());
  c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = memory_format_of(input);
  const at::Tensor x = dense(input, fmt);
  at::Tensor y = empty4({x.size(0), x.size(1), output_size[0], output_size[1]}, x.options(), fmt);
  if (y.numel() == 0) return y;
  adaptive_avg_pool2d_fwd(tensor4(x), tensor4(y), dtype_of(x), x.data_ptr(), y.data_ptr(), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor adaptive_avg_pool2d_bwd_cuda(const at::Tensor& grad_out, at::IntArrayRef input_size) {
  check_4d(grad_out, "grad_out");
  check_float(grad_out, "grad_out");
  TORCH_CHECK(grad_out.is_cuda(), "fastconv: 'grad_out' must be a CUDA tensor");
  const auto size = check_input_size(input_size, grad_out);
  c10::cuda::CUDAGuard guard(grad_out.device());
  const auto fmt = memory_format_of(grad_out);
  const at::Tensor g = dense(grad_out, fmt);
  at::Tensor gx = empty4(size, g.options(), fmt);
  if (gx.numel() == 0) return gx;
  TORCH_CHECK_VALUE(g.size(2) > 0 && g.size(3) > 0, "fastconv: 'grad_out' must have non-zero spatial sizes");
  adaptive_avg_pool2d_bwd(tensor4(g), tensor4(gx), dtype_of(g), g.data_ptr(), gx.data_ptr(), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gx;
}

}  // namespace
}  // namespace cuda
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("max_pool2d_fwd", &fastconv::cuda::max_pool2d_fwd_cuda);
  m.impl("max_pool2d_values", &fastconv::cuda::max_pool2d_values_cuda);
  m.impl("max_pool2d_bwd", &fastconv::cuda::max_pool2d_bwd_cuda);
  m.impl("avg_pool2d_fwd", &fastconv::cuda::avg_pool2d_fwd_cuda);
  m.impl("avg_pool2d_bwd", &fastconv::cuda::avg_pool2d_bwd_cuda);
  m.impl("adaptive_avg_pool2d_fwd", &fastconv::cuda::adaptive_avg_pool2d_fwd_cuda);
  m.impl("adaptive_avg_pool2d_bwd", &fastconv::cuda::adaptive_avg_pool2d_bwd_cuda);
}
