// Pooling kernels, forward and backward, as torch defines them (window clipping, ceil_mode
// overhang, avg divisor rules, adaptive bins, max ties/NaN, indices flat within each H*W plane).
//
// p.x describes the input (for backward: grad_input), p.y the output (for backward: grad_output);
// P, Q = p.y.h, p.y.w are the output sizes the caller computed (ceil_mode is folded into them).
// Both tensors are NCHW-contiguous or both channels_last-contiguous: channels_last (p.x.sc == 1 and
// p.y.sc == 1) is vectorized over C; NCHW (unit stride along W, C == 1 channels_last included)
// works plane row by plane row. float and double (the torch layer
// runs bfloat16/float16 in float32).
#pragma once
#include <cstdint>

#include "fastconv/common.h"

namespace fastconv {

// idx may be null: the values only.
template <typename T> void max_pool2d_fwd(const Pool2dParams& p, const T* x, T* y, int64_t* idx);
// gx = 0, then gx[idx] += gy. Indices outside the plane are skipped: torch reports one for a
// window that dilation and padding leave without any input element (its output is -inf).
template <typename T> void max_pool2d_bwd(const Pool2dParams& p, const T* gy, const int64_t* idx, T* gx);
template <typename T> void avg_pool2d_fwd(const Pool2dParams& p, const T* x, T* y);
template <typename T> void avg_pool2d_bwd(const Pool2dParams& p, const T* gy, T* gx);
// Bins [floor(i*H/P), ceil((i+1)*H/P)); kernel/stride/padding fields of p are unused.
template <typename T> void adaptive_avg_pool2d_fwd(const Pool2dParams& p, const T* x, T* y);
template <typename T> void adaptive_avg_pool2d_bwd(const Pool2dParams& p, const T* gy, T* gx);

}  // namespace fastconv
