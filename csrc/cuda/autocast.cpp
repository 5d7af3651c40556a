// Autocast for the convolutions: under torch.autocast("cuda") conv2d_fwd / conv2d_fused_fwd run in
// the autocast dtype (fp16 by default, bf16 if asked), as F.conv2d does; every other fastconv op
// keeps its inputs' dtype (the global AutocastCUDA fallthrough). cached_cast leaves fp64 and
// non-CUDA tensors alone, so device mismatches still reach the CUDA op's own check.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include "host.h"

namespace fastconv {
namespace cuda {
namespace {

using OptT = std::optional<at::Tensor>;

at::Tensor cast(const at::Tensor& t) {
  return at::autocast::cached_cast(at::autocast::get_autocast_dtype(at::kCUDA), t, c10::DeviceType::CUDA);
}
OptT cast(const OptT& t) {
  return at::autocast::cached_cast(at::autocast::get_autocast_dtype(at::kCUDA), t, c10::DeviceType::CUDA);
}

at::Tensor conv2d_fwd_autocast(const at::Tensor& input, const at::Tensor& weight, const OptT& bias,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastconv::conv2d_fwd", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptT&, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef, int64_t)>();
  return op.call(cast(input), cast(weight), cast(bias), stride, padding, dilation, groups);
}

at::Tensor conv2d_fused_fwd_autocast(const at::Tensor& input, const at::Tensor& weight, const OptT& bias,
                                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                     int64_t groups, const OptT& scale, const OptT& shift, const OptT& residual,
                                     int64_t combine, bool relu, int64_t mode, double eps) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastconv::conv2d_fused_fwd", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptT&, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef, int64_t, const OptT&, const OptT&,
                                         const OptT&, int64_t, bool, int64_t, double)>();
  return op.call(cast(input), cast(weight), cast(bias), stride, padding, dilation, groups, cast(scale), cast(shift),
                 cast(residual), combine, relu, mode, eps);
}

}  // namespace
}  // namespace cuda
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, AutocastCUDA, m) {
  m.impl("conv2d_fwd", &fastconv::cuda::conv2d_fwd_autocast);
  m.impl("conv2d_fused_fwd", &fastconv::cuda::conv2d_fused_fwd_autocast);
}
