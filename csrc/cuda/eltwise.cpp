// CUDA hosts of relu_fwd/bwd and sort_fwd/bwd: any shape; the output takes the memory format of
// the first tensor (non-4-D: contiguous), the other operands are brought to that layout once.
#include "host.h"

namespace fastconv {
namespace cuda {
namespace {

at::Tensor like(const at::Tensor& t, at::MemoryFormat fmt) {
  return at::empty(t.sizes(), t.options().memory_format(fmt));
}

at::Tensor relu_fwd_cuda(const at::Tensor& input) {
  check_float(input, "input");
  c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = format_any(input);
  const at::Tensor x = as_layout(input, fmt);
  at::Tensor y = like(x, fmt);
  if (x.numel() == 0) return y;
  relu_fwd(dtype_of(x), x.data_ptr(), y.data_ptr(), x.numel(), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor relu_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& result) {
  check_float(grad_out, "grad_out");
  check_input(result, "result", grad_out, "grad_out");
  TORCH_CHECK_VALUE(grad_out.sizes() == result.sizes(), "fastconv: 'grad_out' ", grad_out.sizes(),
                    " and 'result' ", result.sizes(), " must have the same shape");
  c10::cuda::CUDAGuard guard(grad_out.device());
  const auto fmt = format_any(grad_out);
  const at::Tensor g = as_layout(grad_out, fmt), r = as_layout(result, fmt);
  at::Tensor gx = like(g, fmt);
  if (g.numel() == 0) return gx;
  relu_bwd(dtype_of(g), g.data_ptr(), r.data_ptr(), gx.data_ptr(), g.numel(), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gx;
}

void check_sort(const at::Tensor& a, const at::Tensor& b, int64_t mode, double eps) {
  check_float(a, "a");
  check_input(b, "b", a, "a");
  TORCH_CHECK_VALUE(a.sizes() == b.sizes(), "fastconv: 'a' ", a.sizes(), " and 'b' ", b.sizes(),
                    " must have the same shape");
  TORCH_CHECK_VALUE(mode == 0 || mode == 1, "fastconv: 'mode' must be 0 (sqrt) or 1 (product), got ", mode);
  TORCH_CHECK_VALUE(eps >= 0, "fastconv: 'eps' must be >= 0, got ", eps);
}

at::Tensor sort_fwd_cuda(const at::Tensor& a, const at::Tensor& b, int64_t mode, double eps) {
  check_sort(a, b, mode, eps);
  c10::cuda::CUDAGuard guard(a.device());
  const auto fmt = format_any(a);
  const at::Tensor ac = as_layout(a, fmt), bc = as_layout(b, fmt);
  at::Tensor y = like(ac, fmt);
  if (ac.numel() == 0) return y;
  sort_fwd(dtype_of(ac), ac.data_ptr(), bc.data_ptr(), y.data_ptr(), ac.numel(), static_cast<int>(mode), eps, stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

std::tuple<at::Tensor, at::Tensor> sort_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& a, const at::Tensor& b,
                                                 int64_t mode, double eps) {
  check_sort(a, b, mode, eps);
  check_input(grad_out, "grad_out", a, "a");
  TORCH_CHECK_VALUE(grad_out.sizes() == a.sizes(), "fastconv: 'grad_out' ", grad_out.sizes(), " and 'a' ", a.sizes(),
                    " must have the same shape");
  c10::cuda::CUDAGuard guard(grad_out.device());
  const auto fmt = format_any(grad_out);
  const at::Tensor g = as_layout(grad_out, fmt), ac = as_layout(a, fmt), bc = as_layout(b, fmt);
  at::Tensor ga = like(g, fmt), gb = like(g, fmt);
  if (g.numel() == 0) return {ga, gb};
  sort_bwd(dtype_of(g), g.data_ptr(), ac.data_ptr(), bc.data_ptr(), ga.data_ptr(), gb.data_ptr(), g.numel(),
           static_cast<int>(mode), eps, stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {ga, gb};
}

}  // namespace
}  // namespace cuda
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("relu_fwd", &fastconv::cuda::relu_fwd_cuda);
  m.impl("relu_bwd", &fastconv::cuda::relu_bwd_cuda);
  m.impl("sort_fwd", &fastconv::cuda::sort_fwd_cuda);
  m.impl("sort_bwd", &fastconv::cuda::sort_bwd_cuda);
}
