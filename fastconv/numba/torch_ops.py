"""Array-level operator sets exposed as torch custom operators with the schemas of csrc/ops.cpp, so a
Python backend (numba, the NumPy reference) plugs into fastconv.functional, autograd and
torch.compile exactly like torch.ops.fastconv: `define(namespace, impl, compute_dtype)`.

Tensors cross into `impl` as NumPy arrays (CPU, zero-copy where the layout allows) or as the CUDA
tensors themselves (they expose __cuda_array_interface__; the GPU kernels allocate their outputs
with torch). Output memory formats follow the native rule that the fakes in fastconv/ops.py encode.
"""
import torch

from fastconv import _args as A
from fastconv import ops as _ops

SCHEMAS = {
    "conv2d_fwd": "(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, "
                  "int[2] dilation, int groups) -> Tensor",
    "conv2d_bwd_input": "(Tensor grad_out, Tensor weight, int[] input_size, int[2] stride, "
                        "int[4] padding, int[2] dilation, int groups) -> Tensor",
    "conv2d_bwd_weight": "(Tensor grad_out, Tensor input, int[] weight_size, int[2] stride, "
                         "int[4] padding, int[2] dilation, int groups) -> Tensor",
    "conv2d_bwd_bias": "(Tensor grad_out) -> Tensor",
    "conv2d_fused_fwd": "(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, "
                        "int[2] dilation, int groups, Tensor? scale, Tensor? shift, Tensor? residual, "
                        "int combine, bool relu, int mode, float eps) -> Tensor",
    "max_pool2d_fwd": "(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
                      "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)",
    "max_pool2d_bwd": "(Tensor grad_out, Tensor indices, int[] input_size) -> Tensor",
    "avg_pool2d_fwd": "(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
                      "bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor",
    "avg_pool2d_bwd": "(Tensor grad_out, int[] input_size, int[2] kernel_size, int[2] stride, "
                      "int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor",
    "adaptive_avg_pool2d_fwd": "(Tensor input, int[2] output_size) -> Tensor",
    "adaptive_avg_pool2d_bwd": "(Tensor grad_out, int[] input_size) -> Tensor",
    "relu_fwd": "(Tensor input) -> Tensor",
    "relu_bwd": "(Tensor grad_out, Tensor result) -> Tensor",
    "sort_fwd": "(Tensor a, Tensor b, int mode, float eps) -> Tensor",
    "sort_bwd": "(Tensor grad_out, Tensor a, Tensor b, int mode, float eps) -> (Tensor, Tensor)",
}

# Elementwise operators run on the raw memory order of their first tensor (no layout copies).
_ELEMENTWISE = {"relu_fwd", "relu_bwd", "sort_fwd", "sort_bwd"}
_LIBS = {}  # keeps the torch.library.Library objects (and so the definitions) alive


def _out_format(name, tensors):
    if name in ("conv2d_fwd", "conv2d_fused_fwd"):
        return A.memory_format(tensors[0], tensors[1])
    return A.memory_format(tensors[0])


def _to_array(t, dtype, nhwc, host):
    t = t.detach().cpu() if host else t.detach()
    if t.is_floating_point() and t.dtype != dtype:
        t = t.to(dtype)
    if nhwc:
        t = t.permute(0, 2, 3, 1)
    t = t.contiguous()
    return t if t.is_cuda else t.numpy()


def _from_array(a, dtype, fmt, nhwc, device):
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(a).to(device)
    if nhwc:
        t = t.permute(0, 3, 1, 2)
    if t.is_floating_point() and t.dtype != dtype:
        t = t.to(dtype)
    return t.contiguous(memory_format=fmt) if t.dim() == 4 else t


def _impl(name, fn, compute_dtype, host):
    def run(*args):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        first = tensors[0]
        dtype = first.dtype
        fmt = _out_format(name, tensors)
        nhwc = name in _ELEMENTWISE and A.is_channels_last(first)
        cdt = compute_dtype(dtype)
        arrays = [_to_array(a, cdt, nhwc, host) if isinstance(a, torch.Tensor) else a for a in args]
        if first.is_cuda and not host:
            with torch.cuda.device(first.device):
                out = fn(*arrays)
        else:
            out = fn(*arrays)
        if isinstance(out, tuple):
            return tuple(_from_array(o, dtype, fmt, nhwc, first.device) for o in out)
        return _from_array(out, dtype, fmt, nhwc, first.device)
    run.__name__ = name
    return run


def define(namespace, impl, compute_dtype, host=False):
    """Define every schema in `namespace`, implemented by `impl.<op>` on array arguments; computes in
    `compute_dtype(tensor dtype)`; registers fakes and autograd from fastconv/ops.py. host=True: `impl`
    is CPU-only (NumPy), CUDA tensors go through host memory."""
    if namespace not in _LIBS:
        lib = torch.library.Library(namespace, "DEF")
        for name, schema in SCHEMAS.items():
            lib.define(name + schema)
            fn = _impl(name, getattr(impl, name), compute_dtype, host)
            lib.impl(name, fn, "CPU")
            lib.impl(name, fn, "CUDA")
        _LIBS[namespace] = lib
        _ops.register(namespace)
    return getattr(torch.ops, namespace)


def numba_compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32
