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
_JVP = {}  # forward-mode tangents, below

below_autograd = torch._C._AutoDispatchBelowAutograd
functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def plain_args(args):
    """True when every tensor argument is an ordinary CPU or CUDA tensor (or parameter): no subclass,
    fake or meta tensor, nor a functorch wrapper (vmap, grad, functionalize), that needs the
    dispatcher."""
    for a in args:
        if isinstance(a, torch.Tensor) and (type(a) not in _PLAIN or a.device.type not in ("cpu", "cuda")
                                            or functorch_wrapped(a)):
            return False
    return True


def _recorded(backward, ops):
    """The autograd formula backward(ops, ctx, *grads) as registered. Without a graph to record (no
    create_graph) and on plain tensors, the operators it calls go straight to their kernels below the
    autograd layer, as that layer itself would, minus its Python per-call cost (about 30 us an
    operator, two or three per convolution's backward)."""
    def run(ctx, *grads):
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or not plain_args(grads) \
                or not plain_args(ctx.saved_tensors):
            return backward(ops, ctx, *grads)
        with below_autograd():
            return backward(ops, ctx, *grads)
    return run


def _registrar(table):
    """A decorator factory: @deco(name) files the function under `name` in `table`."""
    def named(name):
        def deco(fn):
            table[name] = fn
            return fn
        return deco
    return named


_fake = _registrar(_FAKES)


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


@_fake("bn_relu_train_fwd")
def _(input, weight, bias, residual, eps):
    c = (input.shape[1],)
    return _empty(input, input.shape, input), _empty(input, c), _empty(input, c), _empty(input, c)


@_fake("bn_relu_train_bwd")
def _(grad_out, input, result, weight, mean, invstd, residual):
    c = (input.shape[1],)
    return (_empty(input, input.shape, input), _empty(input, c), _empty(input, c),
            _empty(input, input.shape, input) if residual else _empty(input, (0,)))


# ---------------------------------------------------------------- autograd
# Gradients take the memory format torch gives them: that of the forward input (of the saved result
# for ReLU), except adaptive pooling to 1x1 (torch's mean: contiguous). The backward operators lay
# out their output like their first tensor, so the incoming gradient is brought to that format
# first (a copy only where it differs: each later op then reads one layout), and an output whose
# format the operator could not tell (size-1 dimensions) is laid out afterwards.
def _layout(t, fmt):
    """t in memory format fmt; a copy only where it is not already."""
    if t is None or t.dim() != 4 or t.is_contiguous(memory_format=fmt):
        return t
    return t.contiguous(memory_format=fmt)


def _conv_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs[:7]
    ctx.save_for_backward(input, weight)
    ctx.conv = (list(stride), list(padding), list(dilation), groups)
    ctx.has_bias = bias is not None


def _conv_grads(ops, ctx, grad):
    """(grad_input, grad_weight, grad_bias) of a plain convolution given the grad of its output."""
    input, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv
    fmt = A.memory_format(input, weight)  # torch's: the forward's format, whatever the gradient's
    grad = _layout(grad, fmt)
    gi = gw = gb = None
    if ctx.needs_input_grad[0]:
        gi = _layout(ops.conv2d_bwd_input(grad, weight, list(input.shape), stride, padding, dilation, groups), fmt)
    if ctx.needs_input_grad[1]:
        gw = _layout(ops.conv2d_bwd_weight(grad, input, list(weight.shape), stride, padding, dilation, groups), fmt)
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


def _fused_parts(ops, input, weight, bias, scale, shift, residual, conv, combine, mode, eps):
    """(c, z, u) of conv2d_fused: c = conv(input), z = c * scale + shift + bias, u = combine(residual, z)
    (the output is relu(u) or u)."""
    c = ops.conv2d_fwd(input, weight, None, *conv)
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
    return c, z, u


def _fused_backward(ops, ctx, grad):
    # Recompute instead of saving: the forward keeps nothing but its inputs.
    input, weight, bias, scale, shift, residual = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv
    combine, relu, mode, eps = ctx.fused
    c, z, u = _fused_parts(ops, input, weight, bias, scale, shift, residual, ctx.conv, combine, mode, eps)
    g = ops.relu_bwd(_layout(grad, A.memory_format(u)), u) if relu else grad
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
    ctx.fmt = A.memory_format(inputs[0])
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])


def _max_pool_backward(ops, ctx, grad, _grad_indices):
    (indices,) = ctx.saved_tensors
    dx = ops.max_pool2d_bwd(_layout(grad, ctx.fmt), _layout(indices, ctx.fmt), ctx.input_size)
    return _layout(dx, ctx.fmt), None, None, None, None, None


_AUTOGRAD["max_pool2d_fwd"] = (_max_pool_backward, _max_pool_setup)


def _avg_pool_setup(ctx, inputs, output):
    ctx.input_size = list(inputs[0].shape)
    ctx.fmt = A.memory_format(inputs[0])
    ctx.args = inputs[1:]


def _avg_pool_backward(ops, ctx, grad):
    return (_layout(ops.avg_pool2d_bwd(_layout(grad, ctx.fmt), ctx.input_size, *ctx.args), ctx.fmt),) + (None,) * 6


_AUTOGRAD["avg_pool2d_fwd"] = (_avg_pool_backward, _avg_pool_setup)


def _adaptive_setup(ctx, inputs, output):
    ctx.input_size = list(inputs[0].shape)
    # torch computes the 1x1 case as a mean, whose gradient is contiguous
    ctx.fmt = torch.contiguous_format if tuple(output.shape[2:]) == (1, 1) else A.memory_format(inputs[0])


def _adaptive_backward(ops, ctx, grad):
    return _layout(ops.adaptive_avg_pool2d_bwd(_layout(grad, ctx.fmt), ctx.input_size), ctx.fmt), None


_AUTOGRAD["adaptive_avg_pool2d_fwd"] = (_adaptive_backward, _adaptive_setup)


def _relu_setup(ctx, inputs, output):
    ctx.save_for_backward(output)


def _relu_backward(ops, ctx, grad):
    (result,) = ctx.saved_tensors
    fmt = A.memory_format(result)
    return _layout(ops.relu_bwd(_layout(grad, fmt), result), fmt)


_AUTOGRAD["relu_fwd"] = (_relu_backward, _relu_setup)


def _bn_relu_setup(ctx, inputs, output):
    input, weight, bias, residual, eps = inputs
    y, mean, invstd, _ = output
    ctx.mark_non_differentiable(*output[1:])  # the batch statistics, for the running averages
    ctx.save_for_backward(input, y, weight, mean, invstd)
    ctx.eps = eps
    ctx.has_residual = residual is not None


def _bn_relu_backward(ops, ctx, grad, *_stat_grads):
    input, y, weight, mean, invstd = ctx.saved_tensors
    fmt = A.memory_format(input)
    need = ctx.needs_input_grad
    if torch.is_grad_enabled():  # create_graph: the same formulas in torch ops, differentiable again
        dims = (0, 2, 3)
        m = input.numel() // input.shape[1]
        mu = input.mean(dims, keepdim=True)
        istd = torch.rsqrt(input.var(dims, unbiased=False, keepdim=True) + ctx.eps)
        xhat = (input - mu) * istd
        g = torch.where(y <= 0, torch.zeros_like(grad), grad)
        sg, sgx = g.sum(dims, keepdim=True), (g * xhat).sum(dims, keepdim=True)
        scale = istd if weight is None else istd * weight.view(1, -1, 1, 1)
        dx = scale * (g - sg / m - xhat * sgx / m)
        dw, db = sgx.flatten(), sg.flatten()
        dres = g
    else:
        dx, dw, db, dres = ops.bn_relu_train_bwd(_layout(grad, fmt), input, y, weight, mean, invstd,
                                                 ctx.has_residual)
    return (_layout(dx, fmt) if need[0] else None, dw if need[1] else None, db if need[2] else None,
            _layout(dres, fmt) if need[3] else None, None)


_AUTOGRAD["bn_relu_train_fwd"] = (_bn_relu_backward, _bn_relu_setup)


def _sort_setup(ctx, inputs, output):
    a, b, mode, eps = inputs
    ctx.save_for_backward(a, b)
    ctx.sort = (mode, eps)


def _sort_backward(ops, ctx, grad):
    a, b = ctx.saved_tensors
    ga, gb = ops.sort_bwd(_layout(grad, A.memory_format(a)), a, b, *ctx.sort)
    return _layout(ga, A.memory_format(a)), _layout(gb, A.memory_format(b)), None, None


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


def _gather_at(t, indices):
    """t (N, C, H, W) at max_pool2d's flat indices; 0 at an index past the plane (a window with no
    input tap, whose value is the constant -inf)."""
    n, c, p, q = indices.shape
    plane = t.shape[2] * t.shape[3]
    flat = indices.reshape(n, c, -1)
    inside = flat < plane
    g = t.reshape(n, c, -1).gather(2, flat.clamp(max=max(plane - 1, 0)))
    return torch.where(inside, g, torch.zeros((), dtype=g.dtype, device=g.device)).view(n, c, p, q)


def _max_pool_bwd_backward(ops, ctx, ggx):
    (indices,) = ctx.saved_tensors  # the scatter's adjoint: gather at the saved positions
    return _gather_at(ggx, indices), None, None


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


# ---------------------------------------------------------------- forward mode
# The tangent of each operator's output from its inputs' tangents (None: no tangent), in operators of
# the same namespace, for torch.func.jvp and torch.autograd.forward_ad. Each takes
# (ops, primal args, their tangents, primal output). The public functions route tangents here
# (fastconv.functional._call); the gradient operators have none (forward-over-reverse raises).
_jvp = _registrar(_JVP)


def _sum(*ts):
    ts = [t for t in ts if t is not None]
    return None if not ts else functools.reduce(lambda a, b: a + b, ts)


def _channel(t):
    return None if t is None else t.view(1, -1, 1, 1)


def _full(t, out):
    return t if t is None or t.shape == out.shape else t.expand(out.shape).contiguous()


def _conv_nobias(ops):
    return lambda x, w, *conv: ops.conv2d_fwd(x, w, None, *conv)


def _conv_tangent(ops, fn, a, b, da, db, conv):
    """Tangent of the bilinear fn(a, b, ...): fn(da, b) + fn(a, db)."""
    return _sum(None if da is None else fn(da, b, *conv), None if db is None else fn(a, db, *conv))


@_jvp("conv2d_fwd")
def _(ops, args, tangents, out):
    x, w, _, *conv = args
    dx, dw, db = tangents[:3]
    return _sum(_conv_tangent(ops, _conv_nobias(ops), x, w, dx, dw, conv), _channel(db))


@_jvp("conv2d_fused_fwd")
def _(ops, args, tangents, out):
    x, w, bias, stride, padding, dilation, groups, scale, shift, residual, combine, relu, mode, eps = args
    dx, dw, dbias, _, _, _, _, dscale, dshift, dres = tangents[:10]
    conv = (stride, padding, dilation, groups)
    c, z, u = _fused_parts(ops, x, w, bias, scale, shift, residual, conv, combine, mode, eps)
    dc = _conv_tangent(ops, _conv_nobias(ops), x, w, dx, dw, conv)
    dz = _sum(dc if dc is None or scale is None else dc * _channel(scale),
              None if dscale is None else c * _channel(dscale), _channel(dshift), _channel(dbias))
    if combine == 2:
        ga = None if dres is None else ops.sort_bwd(dres, residual, z, mode, eps)[0]
        gb = None if dz is None else ops.sort_bwd(_full(dz, out), residual, z, mode, eps)[1]
        du = _sum(ga, gb)
    else:
        du = _sum(dz, dres if combine == 1 else None)
    if du is None:
        return None
    return ops.relu_bwd(_full(du, out), u) if relu else du


@_jvp("max_pool2d_fwd")
def _(ops, args, tangents, out):
    return _gather_at(tangents[0], out[1]), None


@_jvp("max_pool2d_values")
def _(ops, args, tangents, out):
    return _gather_at(tangents[0], ops.max_pool2d_fwd(*args)[1])


@_jvp("avg_pool2d_fwd")
def _(ops, args, tangents, out):
    return ops.avg_pool2d_fwd(tangents[0], *args[1:])


@_jvp("adaptive_avg_pool2d_fwd")
def _(ops, args, tangents, out):
    return ops.adaptive_avg_pool2d_fwd(tangents[0], *args[1:])


@_jvp("relu_fwd")
def _(ops, args, tangents, out):
    return ops.relu_bwd(tangents[0], out)


@_jvp("sort_fwd")
def _(ops, args, tangents, out):
    a, b, mode, eps = args
    da, db = tangents[:2]
    return _sum(None if da is None else ops.sort_bwd(da, a, b, mode, eps)[0],
                None if db is None else ops.sort_bwd(db, a, b, mode, eps)[1])


def forward_ad(call, ops, name, args):
    """The result of operator `name` on `args` with forward-mode tangents, or None when no argument
    carries a tangent (the caller then runs the operator as usual). `call(name, *primals)` runs the
    operator on the primals."""
    import torch.autograd.forward_ad as fwAD
    primals, tangents = [], []
    for a in args:
        p, t = fwAD.unpack_dual(a) if isinstance(a, torch.Tensor) else (a, None)
        primals.append(p)
        tangents.append(t)
    if all(t is None for t in tangents):
        return None
    if name not in _JVP:
        raise NotImplementedError(f"fastconv: operator {name} has no forward-mode derivative "
                                  "(torch.func.jvp / torch.autograd.forward_ad); use reverse mode")
    out = call(name, *primals)
    tangent = _JVP[name](ops, primals, tangents, out)
    if isinstance(out, tuple):
        return tuple(o if t is None else fwAD.make_dual(o, _full(t, o)) for o, t in zip(out, tangent))
    return out if tangent is None else fwAD.make_dual(out, _full(tangent, out))


class _KernelOps:
    """The operators of a Python backend's OpSet for backward formulas run outside the dispatcher:
    its kernels directly, or (a double backward, create_graph=True) its operators, which record
    their own gradients."""

    def __init__(self, opset):
        self.opset = opset

    def __getattr__(self, name):
        kernel, op = self.opset.kernels[name], getattr(self.opset, name)
        return lambda *args: op(*args) if torch.is_grad_enabled() else kernel(*args)


def _function(class_name, forward, name, ops):
    """An autograd.Function computing forward(*args), with operator `name`'s saved state and backward
    formula run on the operator set `ops`, and a setup_context (as torch.func transforms require)."""
    backward, setup = _AUTOGRAD[name]

    def setup_context(ctx, inputs, output):
        setup(ctx, inputs, output)

    def backward_(ctx, *grads):
        return backward(ops, ctx, *grads)

    # generate_vmap_rule: under torch.func.vmap (jacrev, per-sample gradients) the forward runs on
    # the batched tensors, where the operator's batching (torch's per-example fallback) applies
    return type(class_name, (torch.autograd.Function,),
                {"forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
                 "backward": staticmethod(backward_), "generate_vmap_rule": True})


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
        # named for the operator (the grad_fn shows as <namespace>_<op>Backward)
        _DIRECT[key] = _function(f"{opset.namespace}_{name}", opset.kernels[name], name, _KernelOps(opset))
    return _DIRECT[key]


class _FunctionOps:
    """An operator set whose differentiable operators run through function_autograd's Functions: the
    backward formulas then record their own gradients under torch.func transforms too."""

    def __init__(self, ops):
        self.ops = ops

    def __getattr__(self, name):
        fn = function_autograd(self.ops, name)
        return fn.apply if fn else getattr(self.ops, name)


_FUNCTIONS = {}  # (namespace, op name) -> autograd.Function


def function_autograd(ops, name):
    """An autograd.Function running operator `name` of `ops` through the dispatcher (grad mode is off
    in a Function's forward: the operator's kernel) with the formulas above, for torch.func
    transforms, which the Functions torch generates for register_autograd do not support. None when
    the operator has no formula here."""
    key = (getattr(ops, "namespace", None) or getattr(ops, "name", None), name)
    if key not in _FUNCTIONS:
        if name not in _AUTOGRAD:
            return None
        _FUNCTIONS[key] = _function(f"{key[0]}_{name}_function", getattr(ops, name), name, _FunctionOps(ops))
    return _FUNCTIONS[key]


# ---------------------------------------------------------------- torch.func.vmap
# Batching rules. Every operator works per sample along dim 0 (N) of its activations, so a vmap
# dimension folds into N: (B, N, C, H, W) -> (B*N, C, H, W), one call, then back. That holds when
# only activations are batched; a batched weight, or an operator that sums over N (the weight and
# bias gradients, as per-sample gradients ask), runs once per vmap index instead.
# name -> (argument positions of activations, position of an input-size list or None, reduces over N)
_VMAP = {
    "relu_fwd": ((0,), None, False), "relu_bwd": ((0, 1), None, False),
    "sort_fwd": ((0, 1), None, False), "sort_bwd": ((0, 1, 2), None, False),
    "max_pool2d_fwd": ((0,), None, False), "max_pool2d_values": ((0,), None, False),
    "max_pool2d_bwd": ((0, 1), 2, False), "avg_pool2d_fwd": ((0,), None, False),
    "avg_pool2d_bwd": ((0,), 1, False), "adaptive_avg_pool2d_fwd": ((0,), None, False),
    "adaptive_avg_pool2d_bwd": ((0,), 1, False), "conv2d_fwd": ((0,), None, False),
    "conv2d_fused_fwd": ((0, 9), None, False), "conv2d_bwd_input": ((0,), 2, False),
    "conv2d_bwd_weight": ((0, 1), None, True), "conv2d_bwd_bias": ((0,), None, True),
}


def _vmap_rule(op, name):
    acts, size_at, reduces = _VMAP[name]

    def rule(info, in_dims, *args):
        b = info.batch_size
        in_dims = [d if isinstance(a, torch.Tensor) else None for a, d in zip(args, in_dims)]
        batched = [i for i, d in enumerate(in_dims) if d is not None]
        if reduces or any(i not in acts for i in batched):  # once per vmap index
            outs = [op(*[a if d is None else a.select(d, j) for a, d in zip(args, in_dims)]) for j in range(b)]
            if isinstance(outs[0], tuple):
                return tuple(torch.stack(o) for o in zip(*outs)), (0,) * len(outs[0])
            return torch.stack(outs), 0
        args = list(args)
        n = None
        for i in acts:  # batch dim first, unbatched activations expanded, then B folded into N
            if args[i] is None:
                continue
            a = args[i].movedim(in_dims[i], 0) if in_dims[i] is not None else args[i].expand(b, *args[i].shape)
            n = a.shape[1]
            args[i] = a.reshape(b * a.shape[1], *a.shape[2:])
        if size_at is not None:
            args[size_at] = [b * args[size_at][0]] + list(args[size_at][1:])
        out = op(*args)
        if isinstance(out, tuple):
            return tuple(o.reshape(b, n, *o.shape[1:]) for o in out), (0,) * len(out)
        return out.reshape(b, n, *out.shape[1:]), 0
    return rule


def register(namespace):
    """Register the fakes, autograd formulas and batching rules above for the operators `namespace`
    defines."""
    ops = getattr(torch.ops, namespace)
    defined = set(torch._C._dispatch_get_all_op_names())
    for name, fn in _FAKES.items():
        if f"{namespace}::{name}" in defined:
            torch.library.register_fake(f"{namespace}::{name}", fn)
    for name, (backward, setup) in _AUTOGRAD.items():
        if f"{namespace}::{name}" in defined:
            torch.library.register_autograd(f"{namespace}::{name}", _recorded(backward, ops), setup_context=setup)
    for name in _VMAP:
        if f"{namespace}::{name}" in defined:
            torch.library.register_vmap(f"{namespace}::{name}", _vmap_rule(getattr(ops, name), name))


if _ext.native_available():
    register("fastconv")
    from fastconv import onnx as _onnx
    _onnx.register()
