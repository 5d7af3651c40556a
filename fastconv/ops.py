"""Fake (shape/dtype/memory-format only) and autograd registrations of the operators declared in
csrc/ops.cpp. Every backward calls other registered operators of the same namespace, so autograd,
opcheck and torch.compile see the same ops on every path. `register(namespace)` applies them to any
library defining the same schemas (torch.ops.fastconv here, the Python backends' namespaces too)."""
import functools

import torch

from fastconv import _args as A
from fastconv import _ext

_FAKES = {}
_AUTOGRAD = {}


def _fake(name):
    def deco(fn):
        _FAKES[name] = fn
        return fn
    return deco


def _empty(like, shape, *fmt_from, dtype=None):
    fmt = A.memory_format(*fmt_from) if len(shape) == 4 else torch.contiguous_format
    return torch.empty(tuple(shape), dtype=dtype or like.dtype, device=like.device, memory_format=fmt)


def conv_out_shape(input, weight, stride, padding, dilation):
    n, _, h, w = input.shape
    k, _, r, s = weight.shape
    return (n, k, A.conv_out_size(h, padding[0], padding[1], dilation[0], r, stride[0]),
            A.conv_out_size(w, padding[2], padding[3], dilation[1], s, stride[1]))


# ---------------------------------------------------------------- fakes
@_fake("conv2d_fwd")
def _(input, weight, bias, stride, padding, dilation, groups):
    return _empty(input, conv_out_shape(input, weight, stride, padding, dilation), input, weight)


@_fake("conv2d_fused_fwd")
def _(input, weight, bias, stride, padding, dilation, groups, scale, shift, residual, combine, relu, mode, eps):
    return _empty(input, conv_out_shape(input, weight, stride, padding, dilation), input, weight)


@_fake("conv2d_bwd_input")
def _(grad_out, weight, input_size, stride, padding, dilation, groups):
    return _empty(grad_out, input_size, grad_out)


@_fake("conv2d_bwd_weight")
def _(grad_out, input, weight_size, stride, padding, dilation, groups):
    return _empty(grad_out, weight_size, grad_out)


@_fake("conv2d_bwd_bias")
def _(grad_out):
    return grad_out.new_empty((grad_out.shape[1],))


def _pool_shape(input, kernel_size, stride, padding, dilation, ceil_mode):
    n, c, h, w = input.shape
    return (n, c, A.pool_out_size(h, kernel_size[0], padding[0], stride[0], dilation[0], ceil_mode),
            A.pool_out_size(w, kernel_size[1], padding[1], stride[1], dilation[1], ceil_mode))


@_fake("max_pool2d_fwd")
def _(input, kernel_size, stride, padding, dilation, ceil_mode):
    shape = _pool_shape(input, kernel_size, stride, padding, dilation, ceil_mode)
    return _empty(input, shape, input), _empty(input, shape, input, dtype=torch.int64)


@_fake("max_pool2d_values")
def _(input, kernel_size, stride, padding, dilation, ceil_mode):
    return _empty(input, _pool_shape(input, kernel_size, stride, padding, dilation, ceil_mode), input)


@_fake("max_pool2d_bwd")
def _(grad_out, indices, input_size):
    return _empty(grad_out, input_size, grad_out)


@_fake("avg_pool2d_fwd")
def _(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return _empty(input, _pool_shape(input, kernel_size, stride, padding, (1, 1), ceil_mode), input)


@_fake("avg_pool2d_bwd")
def _(grad_out, input_size, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return _empty(grad_out, input_size, grad_out)


@_fake("adaptive_avg_pool2d_fwd")
def _(input, output_size):
    return _empty(input, (input.shape[0], input.shape[1], output_size[0], output_size[1]), input)


@_fake("adaptive_avg_pool2d_bwd")
def _(grad_out, input_size):
    return _empty(grad_out, input_size, grad_out)


@_fake("relu_fwd")
def _(input):
    return _empty(input, input.shape, input)


@_fake("relu_bwd")
def _(grad_out, result):
    return _empty(grad_out, grad_out.shape, grad_out)


@_fake("sort_fwd")
def _(a, b, mode, eps):
    return _empty(a, a.shape, a)


@_fake("sort_bwd")
def _(grad_out, a, b, mode, eps):
    return _empty(grad_out, grad_out.shape, grad_out), _empty(grad_out, grad_out.shape, grad_out)


# ---------------------------------------------------------------- autograd
def _conv_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs[:7]
    ctx.save_for_backward(input, weight)
    ctx.conv = (list(stride), list(padding), list(dilation), groups)
    ctx.has_bias = bias is not None


def _conv_grads(ops, ctx, grad):
    """(grad_input, grad_weight, grad_bias) of a plain convolution given the grad of its output."""
    input, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv
    gi = gw = gb = None
    if ctx.needs_input_grad[0]:
        gi = ops.conv2d_bwd_input(grad, weight, list(input.shape), stride, padding, dilation, groups)
    if ctx.needs_input_grad[1]:
        gw = ops.conv2d_bwd_weight(grad, input, list(weight.shape), stride, padding, dilation, groups)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = ops.conv2d_bwd_bias(grad)
    return gi, gw, gb


def _conv_backward(ops, ctx, grad):
    return _conv_grads(ops, ctx, grad) + (None,) * 4


_AUTOGRAD["conv2d_fwd"] = (_conv_backward, _conv_setup)


def _fused_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, scale, shift, residual, combine, relu, mode, eps = inputs
    # every tensor the backward reads is saved, so that an in-place change after the forward raises
    ctx.save_for_backward(input, weight, bias, scale, shift, residual)
    ctx.conv = (list(stride), list(padding), list(dilation), groups)
    ctx.fused = (combine, relu, mode, eps)


def _fused_backward(ops, ctx, grad):
    # Recompute instead of saving: the forward keeps nothing but its inputs.
    input, weight, bias, scale, shift, residual = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv
    combine, relu, mode, eps = ctx.fused
    c = ops.conv2d_fwd(input, weight, None, stride, padding, dilation, groups)
    z = c if scale is None else c * scale.view(1, -1, 1, 1)
    for t in (shift, bias):
        if t is not None:
            z = z + t.view(1, -1, 1, 1)
    if combine == 1:
        u = z + residual
    elif combine == 2:
        u = ops.sort_fwd(residual, z, mode, eps)
    else:
        u = z
    g = ops.relu_bwd(grad, u) if relu else grad
    g_res = None
    if combine == 1:
        g_z, g_res = g, g
    elif combine == 2:
        g_res, g_z = ops.sort_bwd(g, residual, z, mode, eps)
    else:
        g_z = g
    need = ctx.needs_input_grad
    g_bias = g_z.sum((0, 2, 3)) if bias is not None and need[2] else None
    g_shift = g_z.sum((0, 2, 3)) if shift is not None and need[8] else None
    g_scale = (g_z * c).sum((0, 2, 3)) if scale is not None and need[7] else None
    g_c = g_z if scale is None else g_z * scale.view(1, -1, 1, 1)
    gi = gw = None
    if need[0]:
        gi = ops.conv2d_bwd_input(g_c, weight, list(input.shape), stride, padding, dilation, groups)
    if need[1]:
        gw = ops.conv2d_bwd_weight(g_c, input, list(weight.shape), stride, padding, dilation, groups)
    g_res = g_res if residual is not None and need[9] else None
    return gi, gw, g_bias, None, None, None, None, g_scale, g_shift, g_res, None, None, None, None


_AUTOGRAD["conv2d_fused_fwd"] = (_fused_backward, _fused_setup)


def _max_pool_setup(ctx, inputs, output):
    ctx.input_size = list(inputs[0].shape)
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])


def _max_pool_backward(ops, ctx, grad, _grad_indices):
    (indices,) = ctx.saved_tensors
    return ops.max_pool2d_bwd(grad, indices, ctx.input_size), None, None, None, None, None


_AUTOGRAD["max_pool2d_fwd"] = (_max_pool_backward, _max_pool_setup)


def _avg_pool_setup(ctx, inputs, output):
    ctx.input_size = list(inputs[0].shape)
    ctx.args = inputs[1:]


def _avg_pool_backward(ops, ctx, grad):
    return (ops.avg_pool2d_bwd(grad, ctx.input_size, *ctx.args),) + (None,) * 6


_AUTOGRAD["avg_pool2d_fwd"] = (_avg_pool_backward, _avg_pool_setup)


def _adaptive_setup(ctx, inputs, output):
    ctx.input_size = list(inputs[0].shape)


def _adaptive_backward(ops, ctx, grad):
    return ops.adaptive_avg_pool2d_bwd(grad, ctx.input_size), None


_AUTOGRAD["adaptive_avg_pool2d_fwd"] = (_adaptive_backward, _adaptive_setup)


def _relu_setup(ctx, inputs, output):
    ctx.save_for_backward(output)


def _relu_backward(ops, ctx, grad):
    (result,) = ctx.saved_tensors
    return ops.relu_bwd(grad, result)


_AUTOGRAD["relu_fwd"] = (_relu_backward, _relu_setup)


def _sort_setup(ctx, inputs, output):
    a, b, mode, eps = inputs
    ctx.save_for_backward(a, b)
    ctx.sort = (mode, eps)


def _sort_backward(ops, ctx, grad):
    a, b = ctx.saved_tensors
    ga, gb = ops.sort_bwd(grad, a, b, *ctx.sort)
    return ga, gb, None, None


_AUTOGRAD["sort_fwd"] = (_sort_backward, _sort_setup)


def _values_only_backward(ops, ctx, grad):
    raise RuntimeError("fastconv: max_pool2d_values has no gradient (it keeps no indices); "
                       "use max_pool2d_fwd where a gradient is needed")


_AUTOGRAD["max_pool2d_values"] = (_values_only_backward, lambda ctx, inputs, output: None)


# ---------------------------------------------------------------- double backward
# The backward operators are differentiable too, so that create_graph=True (gradient penalties,
# Hessian-vector products) gets true second derivatives: each formula is the adjoint of a linear
# map, except sort's, written out below.
def _conv_bwd_setup(ctx, inputs, output):
    """Both gradient operators: (grad_out, weight or input, a size, stride, padding, dilation, groups)."""
    grad_out, operand, _, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(grad_out, operand)
    ctx.conv = (list(stride), list(padding), list(dilation), groups)


def _conv_bwd_input_backward(ops, ctx, ggx):
    # dx = A_w^T gy (A_w: the convolution with w), so <ggx, dx> = <A_w ggx, gy>.
    grad_out, weight = ctx.saved_tensors
    g_gy = g_w = None
    if ctx.needs_input_grad[0]:
        g_gy = ops.conv2d_fwd(ggx, weight, None, *ctx.conv)
    if ctx.needs_input_grad[1]:
        g_w = ops.conv2d_bwd_weight(grad_out, ggx, list(weight.shape), *ctx.conv)
    return g_gy, g_w, None, None, None, None, None


_AUTOGRAD["conv2d_bwd_input"] = (_conv_bwd_input_backward, _conv_bwd_setup)


def _conv_bwd_weight_backward(ops, ctx, ggw):
    # <ggw, dw(gy, x)> = <A_ggw x, gy>
    grad_out, input = ctx.saved_tensors
    g_gy = g_x = None
    if ctx.needs_input_grad[0]:
        g_gy = ops.conv2d_fwd(input, ggw, None, *ctx.conv)
    if ctx.needs_input_grad[1]:
        g_x = ops.conv2d_bwd_input(grad_out, ggw, list(input.shape), *ctx.conv)
    return g_gy, g_x, None, None, None, None, None


_AUTOGRAD["conv2d_bwd_weight"] = (_conv_bwd_weight_backward, _conv_bwd_setup)


def _bias_bwd_setup(ctx, inputs, output):
    ctx.shape = inputs[0].shape


def _bias_bwd_backward(ops, ctx, ggb):
    return ggb.view(1, -1, 1, 1).expand(ctx.shape)


_AUTOGRAD["conv2d_bwd_bias"] = (_bias_bwd_backward, _bias_bwd_setup)


def _relu_bwd_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _relu_bwd_backward(ops, ctx, ggx):
    (result,) = ctx.saved_tensors  # the mask's derivative is 0 almost everywhere
    return ops.relu_bwd(ggx, result), None


_AUTOGRAD["relu_bwd"] = (_relu_bwd_backward, _relu_bwd_setup)


def _max_pool_bwd_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _max_pool_bwd_backward(ops, ctx, ggx):
    (indices,) = ctx.saved_tensors  # the scatter's adjoint: gather at the saved positions
    n, c, p, q = indices.shape
    g = ggx.reshape(n, c, -1).gather(2, indices.reshape(n, c, -1)).view(n, c, p, q)
    return g, None, None


_AUTOGRAD["max_pool2d_bwd"] = (_max_pool_bwd_backward, _max_pool_bwd_setup)


def _avg_pool_bwd_setup(ctx, inputs, output):
    ctx.args = inputs[2:]


def _avg_pool_bwd_backward(ops, ctx, ggx):
    return (ops.avg_pool2d_fwd(ggx, *ctx.args),) + (None,) * 7


_AUTOGRAD["avg_pool2d_bwd"] = (_avg_pool_bwd_backward, _avg_pool_bwd_setup)


def _adaptive_bwd_setup(ctx, inputs, output):
    ctx.out_size = list(inputs[0].shape[2:])


def _adaptive_bwd_backward(ops, ctx, ggx):
    return ops.adaptive_avg_pool2d_fwd(ggx, ctx.out_size), None


_AUTOGRAD["adaptive_avg_pool2d_bwd"] = (_adaptive_bwd_backward, _adaptive_bwd_setup)


def _sort_bwd_setup(ctx, inputs, output):
    grad_out, a, b, mode, eps = inputs
    ctx.save_for_backward(grad_out, a, b)
    ctx.sort = (mode, eps)


def _sort_bwd_backward(ops, ctx, gga, ggb):
    """VJP of (ga, gb) = (g (1 + [a>0] rb d), g (1 + [b>0] ra d)), d = 1/(2 sqrt(s)), s = ra rb + eps
    (mode sqrt; d = 1 in mode product). With the kernels' floor on eps (the smallest normal) so that
    the terms stay finite where an operand is 0. Written in torch ops: it differentiates again."""
    g, a, b = ctx.saved_tensors
    mode, eps = ctx.sort
    gga = torch.zeros_like(g) if gga is None else gga
    ggb = torch.zeros_like(g) if ggb is None else ggb
    pa, pb = (a > 0).to(g.dtype), (b > 0).to(g.dtype)
    ra, rb = a.clamp(min=0), b.clamp(min=0)
    if mode == 0:
        s = ra * rb + max(eps, torch.finfo(g.dtype).tiny)
        d = 0.5 * s.rsqrt()
        e = 0.25 * s.rsqrt() / s  # -d/ds d
        g_g = gga * (1 + pa * rb * d) + ggb * (1 + pb * ra * d)
        # d(rb d)/da = -[a>0] rb^2 e,  d(ra d)/da = [a>0] (d - ra rb e), symmetric in b
        g_a = g * pa * (-gga * pa * rb * rb * e + ggb * pb * (d - ra * rb * e))
        g_b = g * pb * (-ggb * pb * ra * ra * e + gga * pa * (d - ra * rb * e))
    else:
        g_g = gga * (1 + pa * rb) + ggb * (1 + pb * ra)
        g_a = g * ggb * pa * pb
        g_b = g * gga * pa * pb
    return g_g, g_a, g_b, None, None


_AUTOGRAD["sort_bwd"] = (_sort_bwd_backward, _sort_bwd_setup)


class _KernelOps:
    """The operators of a Python backend's OpSet for backward formulas run outside the dispatcher:
    its kernels directly, or (a double backward, create_graph=True) its operators, which record
    their own gradients."""

    def __init__(self, opset):
        self.opset = opset

    def __getattr__(self, name):
        kernel, op = self.opset.kernels[name], getattr(self.opset, name)
        return lambda *args: op(*args) if torch.is_grad_enabled() else kernel(*args)


_DIRECT = {}  # (namespace, op name) -> autograd.Function


def direct_autograd(opset, name):
    """An autograd.Function running a Python backend's kernel `name` with the formulas above, for
    plain tensors in eager mode: the same forward, saved state and backward as the operator, without
    its two round trips through the dispatcher into Python (about 25 us each, as much as the kernel
    of a small pooling or ReLU). None when the operator has no formula here."""
    key = (opset.namespace, name)
    if key not in _DIRECT:
        if name not in _AUTOGRAD:
            return None
        backward, setup = _AUTOGRAD[name]
        kernel, ops = opset.kernels[name], _KernelOps(opset)

        def forward(*args):
            return kernel(*args)

        def setup_context(ctx, inputs, output):
            setup(ctx, inputs, output)

        def backward_(ctx, *grads):
            return backward(ops, ctx, *grads)

        # named for the operator (the grad_fn shows as <namespace>_<op>Backward)
        _DIRECT[key] = type(f"{opset.namespace}_{name}", (torch.autograd.Function,),
                            {"forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
                             "backward": staticmethod(backward_)})
    return _DIRECT[key]


def register(namespace):
    """Register the fakes and autograd formulas above for the operators `namespace` defines."""
    ops = getattr(torch.ops, namespace)
    defined = set(torch._C._dispatch_get_all_op_names())
    for name, fn in _FAKES.items():
        if f"{namespace}::{name}" in defined:
            torch.library.register_fake(f"{namespace}::{name}", fn)
    for name, (backward, setup) in _AUTOGRAD.items():
        if f"{namespace}::{name}" in defined:
            torch.library.register_autograd(f"{namespace}::{name}", functools.partial(backward, ops),
                                            setup_context=setup)


if _ext.native_available():
    register("fastconv")
