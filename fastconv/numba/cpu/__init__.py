"""CPU kernels (numba.njit, parallel, cached on disk). Arrays are NCHW-contiguous NumPy arrays of one
floating dtype; the callers in fastconv.numba.kernels allocate outputs and pass typed scalar
constants so that float32 kernels never widen to float64 (numba types an int or Python float literal
as int64/float64, and float32 op float64 -> float64).

Convolution is im2col + GEMM per (image, group): the gather is a parallel loop over the rows of the
column matrix with contiguous inner copies, the product is np.dot (BLAS). The epilogue (bias,
scale, shift, residual combine, ReLU) runs on the rows of the (image, group) block while they are
still in cache. Only reassociation/contraction fast-math flags are used: NaN and Inf must propagate.

One module per op family: gemm (im2col convolutions, the epilogue), depthwise, winograd, pool,
eltwise (ReLU, SORT); _jit holds the numba options and index helpers they share.
"""
from fastconv.numba.cpu.depthwise import (conv2d_depthwise_bwd_input, conv2d_depthwise_bwd_weight,  # noqa: F401
                                          conv2d_fwd_depthwise)
from fastconv.numba.cpu.eltwise import relu_bwd, relu_fwd, sort_bwd, sort_fwd  # noqa: F401
from fastconv.numba.cpu.gemm import conv2d_bwd_bias, conv2d_bwd_input, conv2d_bwd_weight, conv2d_fwd  # noqa: F401
from fastconv.numba.cpu.pool import (adaptive_avg_pool2d_bwd, adaptive_avg_pool2d_fwd, avg_pool2d_bwd,  # noqa: F401
                                     avg_pool2d_fwd, max_pool2d_bwd, max_pool2d_fwd, max_pool2d_values)
from fastconv.numba.cpu.winograd import conv2d_fwd_winograd, winograd_block  # noqa: F401
