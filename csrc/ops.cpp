// Every fastconv operator schema, declared once, plus the pybind11 module shell (info, ISA control).
// Implementations: csrc/cpu/<op>.cpp (TORCH_LIBRARY_IMPL CPU), csrc/cuda/<op>.cpp (CUDA).
// Fake (meta) and autograd registrations live in fastconv/ops.py.
//
// Conventions shared by all schemas:
//   * tensors are 4-D (N, C, H, W); the Python layer turns unbatched 3-D input into N = 1;
//   * padding for convolutions is int[4] = (top, bottom, left, right) so 'same' with an even
//     kernel can pad asymmetrically the way torch does; pooling padding is symmetric int[2];
//   * combine: 0 none, 1 add, 2 sort; mode: 0 sqrt, 1 product (fastconv::Combine, SortMode);
//   * outputs are channels_last when the (first) input is, as torch does;
//   * bfloat16/float16 compute in float32.
#include <omp.h>
#include <torch/extension.h>

#include <string>

#include "fastconv/common.h"
#include "fastconv/torch_utils.h"

#ifndef FASTCONV_VERSION
#define FASTCONV_VERSION "0.0.0"
#endif

TORCH_LIBRARY(fastconv, m) {
  m.def("conv2d_fwd(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, "
        "int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_bwd_input(Tensor grad_out, Tensor weight, int[] input_size, int[2] stride, "
        "int[4] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_bwd_weight(Tensor grad_out, Tensor input, int[] weight_size, int[2] stride, "
        "int[4] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_bwd_bias(Tensor grad_out) -> Tensor");
  m.def("conv2d_fused_fwd(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, "
        "int[2] dilation, int groups, Tensor? scale, Tensor? shift, Tensor? residual, int combine, "
        "bool relu, int mode, float eps) -> Tensor");
  m.def("max_pool2d_fwd(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  // Inference form of max_pool2d_fwd: the values only (no int64 indices to compute and write), for
  // calls no gradient can reach; it has no autograd formula.
  m.def("max_pool2d_values(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, bool ceil_mode) -> Tensor");
  m.def("max_pool2d_bwd(Tensor grad_out, Tensor indices, int[] input_size) -> Tensor");
  m.def("avg_pool2d_fwd(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("avg_pool2d_bwd(Tensor grad_out, int[] input_size, int[2] kernel_size, int[2] stride, "
        "int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("adaptive_avg_pool2d_fwd(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_bwd(Tensor grad_out, int[] input_size) -> Tensor");
  m.def("relu_fwd(Tensor input) -> Tensor");
  m.def("relu_bwd(Tensor grad_out, Tensor result) -> Tensor");
  m.def("sort_fwd(Tensor a, Tensor b, int mode, float eps) -> Tensor");
  m.def("sort_bwd(Tensor grad_out, Tensor a, Tensor b, int mode, float eps) -> (Tensor, Tensor)");
  // Training-mode BatchNorm (batch statistics) + optional residual add + ReLU, CPU float32/float64:
  // (y, mean, invstd, unbiased var) and (grad_input, grad_weight, grad_bias, grad_residual).
  m.def("bn_relu_train_fwd(Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, float eps) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("bn_relu_train_bwd(Tensor grad_out, Tensor input, Tensor result, Tensor? weight, Tensor mean, "
        "Tensor invstd, bool residual) -> (Tensor, Tensor, Tensor, Tensor)");
}

namespace {

pybind11::dict info() {
  pybind11::dict d;
  d["version"] = FASTCONV_VERSION;
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#endif
#ifdef FASTCONV_BUILD_FLAGS
  d["build_flags"] = FASTCONV_BUILD_FLAGS;
#endif
  d["cpu_features"] = fastconv::cpu_features();
  d["cpu_l2_bytes"] = fastconv::cpu_l2_bytes();  // sizes the direct convolution's task order
  d["isa_best"] = fastconv::isa_name(fastconv::cpu_best_isa());
  d["isa"] = fastconv::isa_name(fastconv::cpu_isa());
  d["winograd"] = fastconv::cpu_winograd();
  d["omp_threads"] = omp_get_max_threads();
#ifdef FASTCONV_WITH_CUDA
  d["cuda_built"] = true;
#else
  d["cuda_built"] = false;
#endif
  return d;
}

bool set_isa(const std::string& name) {
  fastconv::Isa isa;
  if (name == "avx512") isa = fastconv::Isa::kAvx512;
  else if (name == "avx2") isa = fastconv::Isa::kAvx2;
  else if (name == "portable") isa = fastconv::Isa::kPortable;
  else throw pybind11::value_error("set_isa: 'name' must be 'avx512', 'avx2' or 'portable', got '" + name + "'");
  return fastconv::set_cpu_isa(isa);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastconv native kernels (operators are registered as torch.ops.fastconv.*)";
  m.def("info", &info, "Version, build flags, CPU features, code path, OpenMP threads, CUDA build.");
  m.def("set_isa", &set_isa, pybind11::arg("name"),
        "Force the CPU code path ('avx512' | 'avx2' | 'portable'); returns False if the CPU lacks it.");
  m.def("get_isa", [] { return std::string(fastconv::isa_name(fastconv::cpu_isa())); });
  m.def("set_winograd", [](bool on) {
    const bool before = fastconv::cpu_winograd();
    fastconv::set_cpu_winograd(on);
    return before;
  }, pybind11::arg("enabled"),
        "Allow (True) or forbid Winograd (F(4x4, 3x3), F(2x2, 5x5)) for float32 3x3 and 5x5 stride-1 CPU "
        "convolutions; returns the previous setting. The default comes from FASTCONV_WINOGRAD (on unless it is 0).");
  m.def("cache_weight", &fastconv::cache_weight, pybind11::arg("weight"),
        "Register a CPU convolution weight for the packed-weight cache (inference; see conv2d.cpp).");
  m.def("clear_weight_cache", &fastconv::clear_weight_cache,
        "Drop the CPU convolution's cached packed weights (needed only after writes that bypass a weight's "
        "version counter, such as through .data or a NumPy view).");
  m.def("weight_cache_info", [] {
    auto [entries, bytes, limit] = fastconv::weight_cache_stats();
    pybind11::dict d;
    d["entries"] = entries;
    d["bytes"] = bytes;
    d["limit_bytes"] = limit;
    return d;
  }, "Entries, bytes and byte limit (FASTCONV_WEIGHT_CACHE_MB) of the CPU packed-weight cache.");
  m.def("clear_output_cache", &fastconv::clear_output_cache,
        "Free the cached blocks of released CPU outputs (they serve later outputs without page faults).");
  m.def("output_cache_info", [] {
    auto [bytes, limit] = fastconv::output_cache_stats();
    pybind11::dict d;
    d["bytes"] = bytes;
    d["limit_bytes"] = limit;
    return d;
  }, "Bytes of freed CPU output blocks held for reuse, and the limit (FASTCONV_OUTPUT_CACHE_MB).");
}
