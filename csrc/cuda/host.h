// Helpers of the torch-facing CUDA hosts (csrc/cuda/*.cpp): device checks, dtype mapping, layouts.
#pragma once
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "fastconv/cuda_kernels.h"
#include "fastconv/torch_utils.h"

namespace fastconv {
namespace cuda {

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kF32;
    case at::kDouble: return DType::kF64;
    case at::kHalf: return DType::kF16;
    case at::kBFloat16: return DType::kBF16;
    default:
      TORCH_CHECK_TYPE(false, "fastconv: unsupported dtype ", t.scalar_type(),
                       " (expected float32, float64, bfloat16 or float16)");
  }
}

// `t` must live on the same CUDA device as `ref` (the op's first tensor): a CPU tensor mixed into a
// CUDA call reaches this kernel through dispatch and must raise, not be dereferenced.
inline void check_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.is_cuda() && t.device() == ref.device(), "fastconv: '", name, "' is on ", t.device(), " but '",
              ref_name, "' is on ", ref.device(), "; all tensors of the call must be on the same CUDA device");
}

inline void check_input(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  check_device(t, name, ref, ref_name);
  check_float(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "fastconv: '", name, "' (", t.scalar_type(), ") and '",
                   ref_name, "' (", ref.scalar_type(), ") must have the same dtype");
}

inline int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }
inline cudaStream_t stream() { return at::cuda::getCurrentCUDAStream().stream(); }

inline bool aligned16(const at::Tensor& t) { return (reinterpret_cast<uintptr_t>(t.data_ptr()) & 15) == 0; }

// Contiguous in `fmt` with a 16-byte aligned base (what vectorized kernels need).
inline at::Tensor dense(const at::Tensor& t, at::MemoryFormat fmt) {
  at::Tensor r = as_layout(t, fmt);
  return aligned16(r) ? r : r.clone(fmt);
}

// Memory format of a possibly non-4-D tensor for elementwise ops (non-4-D: contiguous).
inline at::MemoryFormat format_any(const at::Tensor& t) {
  return t.dim() == 4 ? memory_format_of(t) : at::MemoryFormat::Contiguous;
}

inline void check_size(bool ok, const char* what) { TORCH_CHECK_VALUE(ok, "fastconv: ", what); }

}  // namespace cuda
}  // namespace fastconv
