// CUDA kernel layer: declarations shared by the kernel files (csrc/cuda/*_kernels.cu, pure CUDA) and
// the torch-facing hosts (csrc/cuda/*.cpp). Raw pointers, the params structs of common.h and a
// stream; every launcher enqueues on `stream` and returns without synchronizing. Launch errors are
// left in cudaGetLastError() for the host's C10_CUDA_KERNEL_LAUNCH_CHECK.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "fastconv/common.h"

namespace fastconv {
namespace cuda {

enum class DType : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

inline int dtype_size(DType t) { return t == DType::kF64 ? 8 : t == DType::kF32 ? 4 : 2; }

// Epilogue of conv2d_fused_fwd with type-erased per-channel vectors (same dtype as the conv):
// z = acc*scale[k] + shift[k] + bias[k]; combine with residual (none / add / sort(residual, z)); relu.
struct EpilogueArgs {
  const void* bias = nullptr;
  const void* scale = nullptr;
  const void* shift = nullptr;
  const void* residual = nullptr;  // strides of the output
  int combine = 0;                 // fastconv::Combine
  int mode = 0;                    // fastconv::SortMode
  double eps = 0.01;
  bool relu = false;
};

// ---- convolution (conv2d_kernels.cu)
// Which forward path conv2d_fwd takes for these params (hosts use it to pick the layout to make).
enum class ConvPath : int { kTensorCore = 0, kDepthwise = 1, kSimt = 2 };
ConvPath conv2d_fwd_path(const Conv2dParams& p, DType dt, bool allow_tf32);

// Forward with fused epilogue. kTensorCore needs x channels_last-contiguous, w KRSC-contiguous,
// 16-byte aligned bases and C/groups % (16 / element size) == 0; y, residual: any strides.
// kDepthwise / kSimt take any strides.
void conv2d_fwd(const Conv2dParams& p, DType dt, const void* x, const void* w, void* y,
                const EpilogueArgs& ep, bool allow_tf32, int sm_count, cudaStream_t stream);

// Tensor-core path alone (conv2d_tc_kernels.cu), same contract as conv2d_fwd's kTensorCore. float32
// runs as TF32 when allow_tf32, else (on the wgmma engine only) as three TF32 products per term
// (hi*hi + hi*lo + lo*hi of each operand split in two TF32 parts: float32 accuracy).
void conv2d_fwd_tc(const Conv2dParams& p, DType dt, const void* x, const void* w, void* y,
                   const EpilogueArgs& ep, bool allow_tf32, int sm_count, cudaStream_t stream);

// The wgmma tensor-core engine runs here: built for sm_90a, a compute capability 9.0 device, and
// FASTCONV_WGMMA is not 0 (read at every call).
bool conv2d_wgmma_ok();

// grad_input on CUDA cores, any strides/stride/dilation (p.x = grad_input shape): implicit GEMM
// gathering over (r, s, k), or a direct per-element gather when C/groups < 16.
void conv2d_bwd_input_simt(const Conv2dParams& p, DType dt, const void* dy, const void* w, void* dx,
                           int sm_count, cudaStream_t stream);

// grad_weight: split-K reduction over N*P*Q into fp32 (fp64 for double) partials, then a
// deterministic sum into dw (any strides). Tensor cores (fp16/bf16, fp32 as TF32 when allowed) when
// dy and x are NHWC-contiguous, 16-byte aligned and Cg, Kg are multiples of the 16-byte vector;
// CUDA cores otherwise. Workspace: conv2d_bwd_weight_workspace(...) bytes.
int64_t conv2d_bwd_weight_workspace(const Conv2dParams& p, DType dt, bool allow_tf32, int sm_count);
void conv2d_bwd_weight(const Conv2dParams& p, DType dt, const void* dy, const void* x, void* dw,
                       void* workspace, bool allow_tf32, int sm_count, cudaStream_t stream);
// Whether conv2d_bwd_weight can take the tensor-core path for these dtypes and channel counts
// (given NHWC-contiguous, aligned dy and x).
bool conv2d_bwd_weight_tc_eligible(const Conv2dParams& p, DType dt, bool allow_tf32);
// Tensor-core part alone (conv2d_tc_kernels.cu): writes fp32 partials [splits][K][Cg*R*S].
int conv2d_bwd_weight_tc_splits(const Conv2dParams& p, DType dt, int sm_count);
void conv2d_bwd_weight_tc(const Conv2dParams& p, DType dt, const void* dy, const void* x, float* ws, int splits,
                          cudaStream_t stream);

// grad_bias[k] = sum over n, p, q of dy. Workspace: conv2d_bwd_bias_workspace bytes.
int64_t conv2d_bwd_bias_workspace(const Tensor4& dy, DType dt, int sm_count);
void conv2d_bwd_bias(const Tensor4& dy, DType dt, const void* g, void* db, void* workspace, int sm_count,
                     cudaStream_t stream);

// ---- pooling (pool_kernels.cu); Pool2dParams strides describe both tensors.
// idx (flat argmax within each H*W plane, y's strides) may be null: the values alone.
void max_pool2d_fwd(const Pool2dParams& p, DType dt, const void* x, void* y, int64_t* idx, cudaStream_t stream);
// grad_in must be zeroed by the caller when accumulating in place; for 16-bit types `acc` is an
// fp32 buffer laid out like grad_in (zeroed by the caller) and the kernel converts it at the end.
void max_pool2d_bwd(const Tensor4& gy, const Tensor4& gx, DType dt, const void* g, const int64_t* idx,
                    void* gx_ptr, float* acc, cudaStream_t stream);
void avg_pool2d_fwd(const Pool2dParams& p, DType dt, const void* x, void* y, cudaStream_t stream);
void avg_pool2d_bwd(const Pool2dParams& p, DType dt, const void* gy, void* gx, cudaStream_t stream);
void adaptive_avg_pool2d_fwd(const Tensor4& x, const Tensor4& y, DType dt, const void* xp, void* yp,
                             cudaStream_t stream);
void adaptive_avg_pool2d_bwd(const Tensor4& gy, const Tensor4& gx, DType dt, const void* g, void* gxp,
                             cudaStream_t stream);

// ---- elementwise over contiguous buffers of n elements (eltwise_kernels.cu)
void relu_fwd(DType dt, const void* x, void* y, int64_t n, cudaStream_t stream);
void relu_bwd(DType dt, const void* g, const void* result, void* gx, int64_t n, cudaStream_t stream);
void sort_fwd(DType dt, const void* a, const void* b, void* y, int64_t n, int mode, double eps,
              cudaStream_t stream);
void sort_bwd(DType dt, const void* g, const void* a, const void* b, void* ga, void* gb, int64_t n, int mode,
              double eps, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastconv
