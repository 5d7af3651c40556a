// Autocast for the convolutions: under torch.autocast("cpu") or torch.autocast("cuda"),
// conv2d_fwd / conv2d_fused_fwd run in the autocast dtype of that device (bf16 on the CPU and fp16 on
// CUDA by default), as F.conv2d does; every other fastconv op keeps its inputs' dtype (the global
// Autocast fallthrough). cached_cast leaves fp64 and other devices' tensors alone, so device
// mismatches still reach the op's own check. Compiled in every build (no CUDA headers).
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace fastconv {
namespace {

using OptT = std::optional<at::Tensor>;

template <c10::DeviceType D>
struct Cast {
  template <typename T>
  T operator()(const T& t) const {
    return at::autocast::cached_cast(at::autocast::get_autocast_dtype(D), t, D);
  }
};

template <c10::DeviceType D, c10::DispatchKey K>
at::Tensor conv2d_fwd_autocast(const at::Tensor& input, const at::Tensor& weight, const OptT& bias,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(K);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastconv::conv2d_fwd", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptT&, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef, int64_t)>();
  const Cast<D> cast;
  return op.call(cast(input), cast(weight), cast(bias), stride, padding, dilation, groups);
}

template <c10::DeviceType D, c10::DispatchKey K>
at::Tensor conv2d_fused_fwd_autocast(const at::Tensor& input, const at::Tensor& weight, const OptT& bias,
                                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                     int64_t groups, const OptT& scale, const OptT& shift, const OptT& residual,
                                     int64_t combine, bool relu, int64_t mode, double eps) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(K);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastconv::conv2d_fused_fwd", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptT&, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef, int64_t, const OptT&, const OptT&,
                                         const OptT&, int64_t, bool, int64_t, double)>();
  const Cast<D> cast;
  return op.call(cast(input), cast(weight), cast(bias), stride, padding, dilation, groups, cast(scale), cast(shift),
                 cast(residual), combine, relu, mode, eps);
}

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, AutocastCPU, m) {
  using c10::DeviceType, c10::DispatchKey;
  m.impl("conv2d_fwd", &fastconv::conv2d_fwd_autocast<DeviceType::CPU, DispatchKey::AutocastCPU>);
  m.impl("conv2d_fused_fwd", &fastconv::conv2d_fused_fwd_autocast<DeviceType::CPU, DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(fastconv, AutocastCUDA, m) {
  using c10::DeviceType, c10::DispatchKey;
  m.impl("conv2d_fwd", &fastconv::conv2d_fwd_autocast<DeviceType::CUDA, DispatchKey::AutocastCUDA>);
  m.impl("conv2d_fused_fwd", &fastconv::conv2d_fused_fwd_autocast<DeviceType::CUDA, DispatchKey::AutocastCUDA>);
}
