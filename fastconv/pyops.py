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
    "max_pool2d_values": "(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
                         "int[2] dilation, bool ceil_mode) -> Tensor",
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

# Native operators the Python backends do not define: the CPU training fusion of BatchNorm (batch
# statistics) + add + ReLU, which fastconv.functional.batch_norm_relu_train uses on the native backend
# only (elsewhere torch's modules run).
NATIVE_ONLY = {"bn_relu_train_fwd", "bn_relu_train_bwd"}

# Elementwise operators run on the raw memory order of their first tensor (no layout copies).
_ELEMENTWISE = {"relu_fwd", "relu_bwd", "sort_fwd", "sort_bwd"}
_LIBS = {}  # namespace -> (torch.library.Library (keeps the definitions alive), OpSet)


def _to_array(t, dtype, nhwc, host):
    if t.requires_grad:
        t = t.detach()
    if host and t.is_cuda:
        t = t.cpu()
    if t.dtype != dtype and t.is_floating_point():
        t = t.to(dtype)
    if nhwc:
        t = t.permute(0, 2, 3, 1)
    if not t.is_contiguous():
        t = t.contiguous()
    return t if t.is_cuda else t.numpy()


def _from_array(a, dtype, fmt, nhwc, device):
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(a)
    if device.type != t.device.type:  # host=True backends on CUDA tensors
        t = t.to(device)
    if nhwc:
        t = t.permute(0, 3, 1, 2)
    if t.dtype != dtype and t.is_floating_point():
        t = t.to(dtype)
    return t.contiguous(memory_format=fmt) if t.dim() == 4 and not t.is_contiguous(memory_format=fmt) else t


def _impl(name, fn, compute_dtype, host, where):
    conv_out = name in ("conv2d_fwd", "conv2d_fused_fwd")
    elementwise = name in _ELEMENTWISE

    def run(*args):
        first = args[0]  # every schema's first argument is a tensor
        dtype, device = first.dtype, first.device
        for a in args[1:]:  # as the native operators: one floating-point dtype for all (indices are int64)
            if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != dtype:
                raise TypeError(f"{where}.{name}: every floating-point tensor must have the first one's "
                                f"dtype {dtype}, got {a.dtype}")
        cl = A.is_channels_last(first)
        # output memory format: the native rule that the fakes in fastconv/ops.py encode
        fmt = A.memory_format(first, args[1]) if conv_out else (torch.channels_last if cl else
                                                                  torch.contiguous_format)
        # (arrays of other shapes stay as they are, for the shape check to name them)
        nhwc = elementwise and cl and all(a.shape == first.shape for a in args if isinstance(a, torch.Tensor))
        cdt = compute_dtype(dtype)
        arrays = [_to_array(a, cdt, nhwc, host) if isinstance(a, torch.Tensor) else a for a in args]
        if device.type == "cuda" and not host:
            with torch.cuda.device(device):
                out = fn(*arrays)
        else:
            out = fn(*arrays)
        if isinstance(out, tuple):
            return tuple(_from_array(o, dtype, fmt, nhwc, device) for o in out)
        return _from_array(out, dtype, fmt, nhwc, device)
    run.__name__ = name
    return run


class OpSet:
    """The operators torch.ops.<namespace> (attribute access, as for torch.ops.fastconv) and, in
    `kernels`, the Python functions behind them: fastconv.functional calls those directly when no
    gradient can flow and nothing traces the call, skipping the dispatcher's round trip into Python
    (about 25 us a call, as much as ReLU on a 1 MB tensor)."""

    def __init__(self, namespace, kernels):
        self.namespace = namespace
        self.ops = getattr(torch.ops, namespace)
        self.kernels = kernels

    def __getattr__(self, name):
        return getattr(self.ops, name)


def define(namespace, impl, compute_dtype, host=False):
    """Define every schema in `namespace`, implemented by `impl.<op>` on array arguments; computes in
    `compute_dtype(tensor dtype)`; registers fakes and autograd from fastconv/ops.py. host=True: `impl`
    is CPU-only (NumPy), CUDA tensors go through host memory. Returns the OpSet."""
    if namespace not in _LIBS:
        lib = torch.library.Library(namespace, "DEF")
        kernels = {}
        for name, schema in SCHEMAS.items():
            lib.define(name + schema)
            kernels[name] = fn = _impl(name, getattr(impl, name), compute_dtype, host,
                                       namespace.replace("fastconv_", "fastconv."))
            lib.impl(name, fn, "CPU")
            lib.impl(name, fn, "CUDA")
        _LIBS[namespace] = (lib, OpSet(namespace, kernels))
        _ops.register(namespace)
    return _LIBS[namespace][1]


def numba_compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32
