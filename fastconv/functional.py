"""Public functions mirroring torch.nn.functional: same names, arguments, defaults, output shapes and
output memory format. Each normalizes and validates its arguments, then calls the operator of the
active backend (torch.ops.fastconv.* for the native one; see fastconv.backends)."""
import torch
import torch.autograd.forward_ad as _fwAD

from fastconv import _args as A
from fastconv import backends
from fastconv import ops as _ops_module

COMBINES = {None: 0, "none": 0, "add": 1, "sort": 2}
SORT_MODES = {"sqrt": 0, "product": 1}


def _ops():
    return backends.current_ops()


_KERNEL_TABLES = {}  # id(ops) -> its `kernels` table or None (backends keep their ops alive)


def _kernel_table(ops):
    """A Python backend's table of kernels, None for the native one (asking torch.ops.fastconv for a
    missing attribute raises inside, a few microseconds a call)."""
    try:
        return _KERNEL_TABLES[id(ops)]
    except KeyError:
        table = _KERNEL_TABLES[id(ops)] = getattr(ops, "kernels", None)
        return table


# torch's __torch_function__ protocol, as torch.nn.functional follows it: arguments that override
# torch functions (torch.fx proxies, so that symbolic_trace and create_feature_extractor record
# fastconv calls; tensor subclasses; active TorchFunctionModes) get the call first.
_overridden = torch.overrides.has_torch_function_variadic
_override = torch.overrides.handle_torch_function


_below_autograd = _ops_module.below_autograd


def _no_grad(*ts):
    """True when no gradient can flow from these tensors (grad mode off or none requires grad)."""
    if torch.is_grad_enabled():
        for t in ts:
            if t is not None and t.requires_grad:
                return False
    return True


_plain = _ops_module.plain_args
_wrapped = _ops_module.functorch_wrapped


def _call(name, grad_inputs, *args):
    """The active backend's operator `name` on args. When no gradient can flow (grad mode off, or
    no tensor of grad_inputs requires grad) the call goes straight to the kernel below the autograd
    layer, as that layer itself would, minus its Python per-call cost (the bulk of a small op's
    time); a Python backend's kernel is called directly, and with a gradient to record it runs in an
    autograd.Function with the operator's own formulas (fastconv.ops.direct_autograd). Under
    torch.compile the operator is called as is, for the tracer to see."""
    ops = _ops()
    if torch.compiler.is_compiling():
        return getattr(ops, name)(*args)
    if _fwAD._current_level >= 0:  # forward-mode AD is on: tangents get the operator's own formula
        out = _ops_module.forward_ad(_call_primals, ops, name, args)
        if out is not None:
            return out
    kernels = _kernel_table(ops)
    direct = kernels is not None and _plain(args)
    if not _no_grad(*grad_inputs):
        fn = direct and _ops_module.direct_autograd(ops, name)
        if not fn and any(isinstance(a, torch.Tensor) and _wrapped(a) for a in args):  # torch.func transforms
            fn = _ops_module.function_autograd(ops, name)
        return fn.apply(*args) if fn else getattr(ops, name)(*args)
    if direct:
        return kernels[name](*args)
    if torch.is_inference_mode_enabled():  # autograd's dispatch keys are off already
        return getattr(ops, name)(*args)
    with _below_autograd():
        return getattr(ops, name)(*args)


def _autocast(*tensors):
    """The convolutions' tensors in the autocast dtype where torch.autocast is on for the input's
    device, as F.conv2d's (float64 stays), on every backend; the native operators' own autocast
    kernels (csrc/autocast.cpp) serve calls that bypass this layer."""
    x = tensors[0]
    if not isinstance(x, torch.Tensor) or x.device.type not in ("cpu", "cuda") \
            or not torch.is_autocast_enabled(x.device.type):
        return tensors
    dt = torch.get_autocast_dtype(x.device.type)
    return tuple(t.to(dt) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64
                 else t for t in tensors)


def _call_primals(name, *args):
    return _call(name, [a for a in args if isinstance(a, torch.Tensor)], *args)


def _empty_result(shape, like, *inputs):
    """torch's result of an op with no output elements: an empty tensor, connected to the tensors of
    `inputs` that require grad (their gradients are zeros, as torch's)."""
    y = like.new_empty(shape)
    if not _no_grad(*inputs):
        y = y + sum(t.sum() * 0 for t in inputs if t is not None and t.requires_grad)
    return y


def _out_hw(x, weight, stride, pads, dilation):
    """The convolution's output height and width."""
    return _ops_module.conv_out_shape(x, weight, stride, pads, dilation)[2:]


def _conv_geometry(kernel, stride, padding, dilation, groups):
    """(stride, pads, dilation, groups) as the operators take them, for a kernel of size (r, s)."""
    stride = A.pair(stride, "stride", minimum=1)
    dilation = A.pair(dilation, "dilation", minimum=1)
    groups = A.positive_int(groups, "groups")
    return list(stride), list(A.conv_padding(padding, kernel, stride, dilation)), list(dilation), groups


def _conv_args(input, weight, bias, stride, padding, dilation, groups):
    x, unbatched = A.batched(input, "input")
    A.check_tensor(weight, "weight", dims=(4,))
    A.check_same(x, "input", weight, "weight")
    k, cpg, r, s = weight.shape
    stride, pads, dilation, groups = _conv_geometry((r, s), stride, padding, dilation, groups)
    c = x.shape[1]
    if c % groups:
        raise ValueError(f"fastconv: 'groups' ({groups}) must divide the input channels ({c})")
    if k % groups:
        raise ValueError(f"fastconv: 'groups' ({groups}) must divide the output channels "
                         f"(weight.shape[0] = {k})")
    if cpg * groups != c:
        raise ValueError(f"fastconv: 'weight' of shape {tuple(weight.shape)} expects {cpg * groups} input "
                         f"channels (weight.shape[1] * groups = {cpg} * {groups}), but 'input' has {c}")
    if k == 0 or r == 0 or s == 0:
        raise ValueError(f"fastconv: 'weight' must have non-zero sizes, got shape {tuple(weight.shape)}")
    if bias is not None:
        A.check_tensor(bias, "bias", dims=(1,))
        A.check_same(x, "input", bias, "bias")
        if bias.shape[0] != k:
            raise ValueError(f"fastconv: 'bias' must have {k} elements (one per output channel), "
                             f"got shape {tuple(bias.shape)}")
    p, q = _out_hw(x, weight, stride, pads, dilation)
    if p <= 0 or q <= 0:
        raise ValueError(f"fastconv: conv2d output size would be {p}x{q} for input {x.shape[2]}x{x.shape[3]}, "
                         f"kernel {r}x{s}, padding {padding}, stride {tuple(stride)}, dilation {tuple(dilation)}: "
                         "the input is too small (output size must be positive)")
    return x, unbatched, stride, pads, dilation, groups, (p, q)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution, as torch.nn.functional.conv2d (padding: int, pair, 'same' or 'valid')."""
    if _overridden(input, weight, bias):  # FX proxies, tensor subclasses, function modes
        return _override(conv2d, (input, weight, bias), input, weight, bias, stride, padding, dilation, groups)
    input, weight, bias = _autocast(input, weight, bias)
    x, unbatched, stride, pads, dilation, groups, out_hw = _conv_args(input, weight, bias, stride, padding,
                                                                      dilation, groups)
    if x.shape[1] == 0:  # torch's result without input channels: no output channels either
        y = _empty_result((x.shape[0], 0, *out_hw), x, x, weight, bias)
    else:
        y = _call("conv2d_fwd", (x, weight, bias), x, weight, bias, stride, pads, dilation, groups)
    return y.squeeze(0) if unbatched else y


def linear(input, weight, bias=None):
    """Fully connected layer, as torch.nn.functional.linear: input (*, in_features), weight
    (out_features, in_features) or (in_features,), bias (out_features,), () or None. Computed as the
    1x1 convolution of input viewed as (M, in_features, 1, 1), M the product of the leading dims; at
    a few rows the CPU kernel streams the weights once, bound by memory bandwidth."""
    if _overridden(input, weight, bias):  # FX proxies, tensor subclasses, function modes
        return _override(linear, (input, weight, bias), input, weight, bias)
    input, weight, bias = _autocast(input, weight, bias)  # torch.autocast casts linear as it casts conv2d
    A.check_tensor(input, "input")
    A.check_tensor(weight, "weight", dims=(1, 2))
    A.check_same(input, "input", weight, "weight")
    vector = weight.dim() == 1
    w = weight.unsqueeze(0) if vector else weight
    k, c = w.shape
    if input.dim() == 0 or input.shape[-1] != c:
        raise ValueError(f"fastconv: linear 'input' must have shape (*, {c}) (the last dim is weight.shape[-1] "
                         f"= in_features), got {tuple(input.shape)}")
    if bias is not None:
        A.check_tensor(bias, "bias", dims=(0, 1))
        A.check_same(input, "input", bias, "bias")
        if bias.dim() == 1 and bias.shape[0] != k or vector and bias.dim() != 0:
            raise ValueError(f"fastconv: linear 'bias' must have shape ({k},) or (){' (the weight is 1-D)' if vector else ''}, "
                             f"got {tuple(bias.shape)}")
        bias = bias.expand(k) if bias.dim() == 0 else bias
    lead = input.shape[:-1]
    y = conv2d(input.reshape(-1, c, 1, 1), w.reshape(k, c, 1, 1), bias)
    return y.reshape(lead) if vector else y.reshape(*lead, k)


def _per_channel(t, name, k, x):
    if t is None:
        return None
    A.check_tensor(t, name, dims=(1,))
    A.check_same(x, "input", t, name)
    if t.shape[0] != k:
        raise ValueError(f"fastconv: '{name}' must have {k} elements (one per output channel), "
                         f"got shape {tuple(t.shape)}")
    return t


def conv2d_fused(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, scale=None,
                 shift=None, residual=None, combine=None, relu=False, mode="sqrt", eps=0.01):
    """conv2d with its epilogue fused: z = conv(input) * scale + shift + bias (per output channel);
    then combine z with `residual`: None, 'add' (z + r) or 'sort' (sort(r, z)); then ReLU if asked."""
    if _overridden(input, weight, bias, scale, shift, residual):
        return _override(conv2d_fused, (input, weight, bias, scale, shift, residual), input, weight, bias, stride,
                         padding, dilation, groups, scale=scale, shift=shift, residual=residual, combine=combine,
                         relu=relu, mode=mode, eps=eps)
    input, weight, bias, scale, shift, residual = _autocast(input, weight, bias, scale, shift, residual)
    x, unbatched, stride, pads, dilation, groups, out_hw = _conv_args(input, weight, bias, stride, padding,
                                                                      dilation, groups)
    k = weight.shape[0]
    if x.shape[1] == 0:
        raise ValueError("fastconv: conv2d_fused needs at least one input channel, got 'input' of shape "
                         f"{tuple(input.shape)} (torch's conv2d of it has no output channels to fuse)")
    scale = _per_channel(scale, "scale", k, x)
    shift = _per_channel(shift, "shift", k, x)
    if combine not in COMBINES:
        raise ValueError(f"fastconv: 'combine' must be None, 'add' or 'sort', got {combine!r}")
    if mode not in SORT_MODES:
        raise ValueError(f"fastconv: 'mode' must be 'sqrt' or 'product', got {mode!r}")
    if not isinstance(relu, bool):
        raise TypeError(f"fastconv: 'relu' must be a bool, got {relu!r}")
    eps = _eps(eps)
    code = COMBINES[combine]
    if code and residual is None:
        raise ValueError(f"fastconv: combine={combine!r} needs a 'residual' tensor")
    if residual is not None:
        if not code:
            raise ValueError("fastconv: 'residual' was given but combine is None; pass combine='add' or 'sort'")
        r, _ = A.batched(residual, "residual")
        A.check_same(x, "input", r, "residual")
        want = (x.shape[0], k, *out_hw)
        if tuple(r.shape) != want:
            raise ValueError(f"fastconv: 'residual' must have the output's shape {want}, got {tuple(r.shape)}")
        residual = r
    y = _call("conv2d_fused_fwd", (x, weight, bias, scale, shift, residual), x, weight, bias, stride, pads,
              dilation, groups, scale, shift, residual, code, relu, SORT_MODES[mode], eps)
    return y.squeeze(0) if unbatched else y


def _pool_args(input, kernel_size, stride, padding, dilation):
    x, unbatched = A.batched(input, "input")
    k = A.pair(kernel_size, "kernel_size", minimum=1)
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        s = k
    else:
        s = A.pair(stride, "stride", minimum=1)
    p = A.pair(padding, "padding", minimum=0)
    d = A.pair(dilation, "dilation", minimum=1)
    # torch's rule for both poolings: padding at most half the (undilated) kernel size.
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"fastconv: 'padding' ({padding}) must be at most half of the kernel size ({kernel_size})")
    if x.shape[1] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"fastconv: 'input' must have non-zero channel and spatial sizes, got {tuple(x.shape)}")
    return x, unbatched, list(k), list(s), list(p), list(d)


def _check_pool_out(x, k, s, p, d, ceil_mode):
    oh = A.pool_out_size(x.shape[2], k[0], p[0], s[0], d[0], ceil_mode)
    ow = A.pool_out_size(x.shape[3], k[1], p[1], s[1], d[1], ceil_mode)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"fastconv: pooling output size would be {oh}x{ow} for input {x.shape[2]}x{x.shape[3]} "
                         f"(kernel {k}, stride {s}, padding {p}, dilation {d}): output size is too small")


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2-D max pooling, as torch.nn.functional.max_pool2d (indices are flat within each H*W plane)."""
    if _overridden(input):
        return _override(max_pool2d, (input,), input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    x, unbatched, k, s, p, d = _pool_args(input, kernel_size, stride, padding, dilation)
    _check_pool_out(x, k, s, p, d, bool(ceil_mode))
    # Inference without indices: the native values-only op (no indices computed or written).
    if not return_indices and _no_grad(x):
        y = _call("max_pool2d_values", (x,), x, k, s, p, d, bool(ceil_mode))
        return y.squeeze(0) if unbatched else y
    y, idx = _call("max_pool2d_fwd", (x,), x, k, s, p, d, bool(ceil_mode))
    if unbatched:
        y, idx = y.squeeze(0), idx.squeeze(0)
    return (y, idx) if return_indices else y


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pooling, as torch.nn.functional.avg_pool2d."""
    if _overridden(input):
        return _override(avg_pool2d, (input,), input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                         divisor_override)
    x, unbatched, k, s, p, d = _pool_args(input, kernel_size, stride, padding, 1)
    if divisor_override is not None:
        divisor_override = A.nonzero_int(divisor_override, "divisor_override")
    _check_pool_out(x, k, s, p, d, bool(ceil_mode))
    y = _call("avg_pool2d_fwd", (x,), x, k, s, p, bool(ceil_mode), bool(count_include_pad), divisor_override)
    return y.squeeze(0) if unbatched else y


def adaptive_avg_pool2d(input, output_size):
    """2-D adaptive average pooling, as torch.nn.functional.adaptive_avg_pool2d (None keeps a size)."""
    if _overridden(input):
        return _override(adaptive_avg_pool2d, (input,), input, output_size)
    x, unbatched = A.batched(input, "input")
    if output_size is None:
        raise TypeError("fastconv: 'output_size' must be an int or a pair (of ints or None), got None")
    if isinstance(output_size, (tuple, list, torch.Size)) and len(output_size) != 2:  # torch: no 1-sequences here
        raise ValueError(f"fastconv: 'output_size' must be an int or a pair, got {tuple(output_size)!r}")
    oh, ow = A.pair(output_size, "output_size", minimum=0, allow_none=True)
    oh = x.shape[2] if oh is None else oh
    ow = x.shape[3] if ow is None else ow
    if x.shape[2] == 0 or x.shape[3] == 0:  # no channels is fine, as in torch
        raise ValueError(f"fastconv: 'input' must have non-zero spatial sizes, got {tuple(x.shape)}")
    if oh == 0 or ow == 0:  # torch: an empty result
        y = _empty_result((x.shape[0], x.shape[1], oh, ow), x, x)
    else:
        y = _call("adaptive_avg_pool2d_fwd", (x,), x, [oh, ow])
    return y.squeeze(0) if unbatched else y


class _ReluInplace(torch.autograd.Function):
    """relu(input, inplace=True) where a gradient is recorded: `input` is overwritten and marked
    dirty, and the backward reads the result, as torch's relu_ (a copy_ onto the input instead left
    the graph a zeros_like and an add per ReLU, and those lost the gradient's memory format)."""

    @staticmethod
    def forward(ctx, input):
        ctx.ops = _ops()
        with _below_autograd():
            input.copy_(ctx.ops.relu_fwd(input))
        ctx.mark_dirty(input)
        ctx.save_for_backward(input)
        return input

    @staticmethod
    def backward(ctx, grad):
        return _ops_module._AUTOGRAD["relu_fwd"][0](ctx.ops, ctx, grad)


def relu(input, inplace=False):
    """ReLU, as torch.nn.functional.relu (inplace writes the result back into `input`)."""
    if _overridden(input):
        return _override(relu, (input,), input, inplace)
    A.check_tensor(input, "input")
    if inplace and not _no_grad(input) and _plain((input,)) and _fwAD._current_level < 0 \
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing():
        return _ReluInplace.apply(input)
    y = _call("relu_fwd", (input,), input)
    return input.copy_(y) if inplace else y


def batch_norm_relu_train(input, bn, residual=None):
    """relu(bn(input) + residual) (residual optional) for a torch.nn.BatchNorm2d `bn` in training
    mode, as one native operator: the batch statistics, the normalization, the add and the ReLU in
    two passes over `input`, the backward (ReLU's mask, BatchNorm's two reductions and its input
    gradient) in two more; `bn`'s running averages are updated as torch's BatchNorm2d updates them.
    Returns None where that operator does not apply (another backend, device or dtype, a BatchNorm
    subclass or in eval mode, torch.compile, tracing, forward-mode AD or torch.func transforms), and
    the caller then runs the modules."""
    args = (input, bn.weight, bn.bias, residual)
    if (type(bn) is not torch.nn.BatchNorm2d or not bn.training or backends.get_backend() != "native"
            or not isinstance(input, torch.Tensor) or input.dim() != 4 or input.device.type != "cpu"
            or input.dtype not in (torch.float32, torch.float64) or not _plain(args)
            or input.shape[0] * input.shape[2] * input.shape[3] <= 1 or bn.num_features != input.shape[1]
            or any(t is not None and (t.dtype != input.dtype or t.device != input.device) for t in args[1:])
            or (residual is not None and residual.shape != input.shape)
            or _fwAD._current_level >= 0 or torch.compiler.is_compiling() or torch.jit.is_tracing()):
        return None
    y, mean, _, var = torch.ops.fastconv.bn_relu_train_fwd(input, bn.weight, bn.bias, residual, float(bn.eps))
    if bn.track_running_stats and bn.running_mean is not None:  # torch's _BatchNorm.forward
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                factor = 1.0 / float(bn.num_batches_tracked)
        with torch.no_grad():  # (1 - factor) * running + factor * batch, one op each
            bn.running_mean.lerp_(mean, factor)
            bn.running_var.lerp_(var, factor)
    return y


def _eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"fastconv: 'eps' must be a float, got {eps!r}")
    if not eps >= 0:
        raise ValueError(f"fastconv: 'eps' must be >= 0, got {eps}")
    return float(eps)


def sort(a, b, mode="sqrt", eps=0.01):
    """Second-order response transform of two branches (SORT, Wang et al., ICCV 2017):
    mode='sqrt': a + b + sqrt(relu(a) * relu(b) + eps); mode='product': a + b + relu(a) * relu(b)."""
    if _overridden(a, b):
        return _override(sort, (a, b), a, b, mode, eps)
    A.check_tensor(a, "a")
    A.check_tensor(b, "b")
    A.check_same(a, "a", b, "b")
    if a.shape != b.shape:
        raise ValueError(f"fastconv: 'a' and 'b' must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if mode not in SORT_MODES:
        raise ValueError(f"fastconv: 'mode' must be 'sqrt' or 'product', got {mode!r}")
    return _call("sort_fwd", (a, b), a, b, SORT_MODES[mode], _eps(eps))
