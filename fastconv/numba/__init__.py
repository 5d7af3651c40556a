"""Numba kernels for fastconv's operators, usable without torch tensors.

  fastconv.numba.conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1)
  max_pool2d, avg_pool2d, adaptive_avg_pool2d, relu, sort, conv2d_fused

take NumPy arrays (CPU kernels: numba.njit, parallel, cached) or, on a GPU, CuPy arrays, Numba
device arrays or anything with __cuda_array_interface__ (numba.cuda kernels), and return arrays of
the same kind, with the argument conventions of fastconv.functional / torch.nn.functional. Arguments
are validated by the same code as the torch functions (run on shape-only "meta" tensors).

The torch backend "numba" (fastconv.set_backend("numba")) runs the same kernels as the custom
operators torch.ops.fastconv_numba.*, with autograd and torch.compile support.
"""
import numpy as np
import torch

from fastconv import _args as A
from fastconv import functional as F
from fastconv.numba import kernels as K

_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def _meta(arrays):
    """Shape-only torch stand-ins for the arrays (None stays None), after checking their kinds."""
    kinds = set()
    out = []
    for name, a in arrays:
        if a is None:
            out.append(None)
            continue
        gpu = K.on_gpu(a)
        if not (gpu or isinstance(a, np.ndarray)):
            raise TypeError(f"fastconv.numba: '{name}' must be a NumPy array or a CUDA array (CuPy, Numba "
                            f"device array), got {type(a).__name__}")
        dt = np.dtype(a.dtype)
        if dt not in _TORCH_DTYPES:
            raise TypeError(f"fastconv.numba: '{name}' must be float32 or float64, got {dt}")
        kinds.add((gpu, dt))
        out.append(torch.empty(tuple(a.shape), dtype=_TORCH_DTYPES[dt], device="meta"))
    if len(kinds) > 1:
        names = ", ".join(f"'{n}'" for n, a in arrays if a is not None)
        raise TypeError(f"fastconv.numba: {names} must all be on the same device with the same dtype")
    return out


def _validate(fn, *args, **kwargs):
    """Run the torch function `fn` on meta tensors: all of its checks, and the output's shape."""
    from fastconv import backends
    with backends.use_backend("numba"):
        return fn(*args, **kwargs)


def _empty_like(input, shape):
    """An empty result of the input's kind (torch's result where an op has no output elements)."""
    if K.on_gpu(input):
        from fastconv.numba import gpu
        return gpu._empty(input, tuple(shape), np.dtype(input.dtype))
    return np.empty(tuple(shape), input.dtype)


def _batched(x):
    return x.reshape((1,) + tuple(x.shape)) if len(x.shape) == 3 else x


def _unbatch(y, unbatched):
    return y.reshape(tuple(y.shape)[1:]) if unbatched else y


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution, as torch.nn.functional.conv2d."""
    mx, mw, mb = _meta([("input", input), ("weight", weight), ("bias", bias)])
    if mx.shape[-3] == 0:  # no input channels: torch's empty result
        return _empty_like(input, _validate(F.conv2d, mx, mw, mb, stride, padding, dilation, groups).shape)
    _, unbatched, stride, pads, dilation, groups, _ = F._conv_args(mx, mw, mb, stride, padding, dilation, groups)
    return _unbatch(K.conv2d_fwd(_batched(input), weight, bias, stride, pads, dilation, groups), unbatched)


def conv2d_fused(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, scale=None,
                 shift=None, residual=None, combine=None, relu=False, mode="sqrt", eps=0.01):
    """As fastconv.conv2d_fused: conv * scale + shift + bias, then combine with `residual`, then ReLU."""
    mx, mw, mb, ms, mt, mr = _meta([("input", input), ("weight", weight), ("bias", bias), ("scale", scale),
                                    ("shift", shift), ("residual", residual)])
    _validate(F.conv2d_fused, mx, mw, mb, stride, padding, dilation, groups, scale=ms, shift=mt,
              residual=mr, combine=combine, relu=relu, mode=mode, eps=eps)
    _, unbatched, stride, pads, dilation, groups, _ = F._conv_args(mx, mw, mb, stride, padding, dilation, groups)
    res = None if residual is None else _batched(residual)
    y = K.conv2d_fused_fwd(_batched(input), weight, bias, stride, pads, dilation, groups, scale, shift, res,
                           F.COMBINES[combine], relu, F.SORT_MODES[mode], float(eps))
    return _unbatch(y, unbatched)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2-D max pooling, as torch.nn.functional.max_pool2d (indices flat within each H*W plane)."""
    (mx,) = _meta([("input", input)])
    mx, unbatched, k, s, p, d = F._pool_args(mx, kernel_size, stride, padding, dilation)
    F._check_pool_out(mx, k, s, p, d, bool(ceil_mode))
    y, idx = K.max_pool2d_fwd(_batched(input), k, s, p, d, bool(ceil_mode))
    y, idx = _unbatch(y, unbatched), _unbatch(idx, unbatched)
    return (y, idx) if return_indices else y


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pooling, as torch.nn.functional.avg_pool2d."""
    (mx,) = _meta([("input", input)])
    mx, unbatched, k, s, p, d = F._pool_args(mx, kernel_size, stride, padding, 1)
    if divisor_override is not None:
        divisor_override = A.nonzero_int(divisor_override, "divisor_override")
    F._check_pool_out(mx, k, s, p, d, bool(ceil_mode))
    y = K.avg_pool2d_fwd(_batched(input), k, s, p, bool(ceil_mode), bool(count_include_pad), divisor_override)
    return _unbatch(y, unbatched)


def adaptive_avg_pool2d(input, output_size):
    """2-D adaptive average pooling, as torch.nn.functional.adaptive_avg_pool2d."""
    (mx,) = _meta([("input", input)])
    want = _validate(F.adaptive_avg_pool2d, mx, output_size)
    size = list(want.shape[-2:])
    if 0 in size:
        return _empty_like(input, want.shape)
    unbatched = len(input.shape) == 3
    return _unbatch(K.adaptive_avg_pool2d_fwd(_batched(input), size), unbatched)


def relu(input, inplace=False):
    """ReLU, as torch.nn.functional.relu."""
    _meta([("input", input)])
    y = K.relu_fwd(input)
    if inplace:
        input[...] = y
        return input
    return y


def sort(a, b, mode="sqrt", eps=0.01):
    """SORT: a + b + sqrt(relu(a) relu(b) + eps) ('sqrt') or a + b + relu(a) relu(b) ('product')."""
    ma, mb = _meta([("a", a), ("b", b)])
    if ma.shape != mb.shape:
        raise ValueError(f"fastconv: 'a' and 'b' must have the same shape, got {tuple(ma.shape)} and {tuple(mb.shape)}")
    if mode not in F.SORT_MODES:
        raise ValueError(f"fastconv: 'mode' must be 'sqrt' or 'product', got {mode!r}")
    return K.sort_fwd(a, b, F.SORT_MODES[mode], F._eps(eps))


__all__ = ["conv2d", "conv2d_fused", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "relu", "sort"]
