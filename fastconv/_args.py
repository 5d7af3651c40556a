"""Argument normalization and validation shared by the public functions: errors name the argument
and the expected form, the way a user reading them can fix the call."""
import numbers

import torch

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def check_tensor(t, name, dims=None):
    if type(t) is torch.Tensor and t.dtype in _FLOAT_DTYPES and (dims is None or t.dim() in dims):
        return t
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastconv: '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"fastconv: '{name}' must be a floating-point tensor (float32, float64, "
                        f"bfloat16 or float16), got {t.dtype}")
    if dims is not None and t.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"fastconv: '{name}' must be {want}, got {t.dim()}-D with shape {tuple(t.shape)}")
    return t


def check_same(a, an, b, bn):
    if a.dtype != b.dtype:
        raise TypeError(f"fastconv: '{an}' ({a.dtype}) and '{bn}' ({b.dtype}) must have the same dtype")
    if a.device != b.device:
        raise RuntimeError(f"fastconv: '{an}' is on {a.device} but '{bn}' is on {b.device}; "
                           "they must be on the same device")


def _is_int(v):
    return type(v) is int or (isinstance(v, numbers.Integral) and not isinstance(v, bool))


def _as_int(v):
    """v as an int where torch takes it as one (an int, or a 0-d integer or bool tensor), else None."""
    if _is_int(v):
        return int(v)
    if isinstance(v, torch.Tensor) and v.dim() == 0 and not (v.is_floating_point() or v.is_complex()):
        return int(v.item())
    return None


def pair(v, name, minimum=None, allow_none=False):
    """An int or a sequence of two ints (ints may be 0-d integer tensors, as in torch) -> tuple of
    two ints, each >= minimum; with allow_none, an element may be None."""
    # Fast path for the common call (plain ints): these checks run on every op call.
    if type(v) is int and (minimum is None or v >= minimum):
        return (v, v)
    if (type(v) is tuple or type(v) is list) and len(v) == 2 and type(v[0]) is int and type(v[1]) is int \
            and (minimum is None or (v[0] >= minimum and v[1] >= minimum)):
        return (v[0], v[1])
    if isinstance(v, (tuple, list, torch.Size)) and len(v) in (1, 2):
        vals = (v[0], v[0]) if len(v) == 1 else tuple(v)
    else:
        vals = (v, v)
    out = []
    for x in vals:
        if allow_none and x is None:
            out.append(None)
            continue
        i = _as_int(x)
        if i is None:
            raise TypeError(f"fastconv: '{name}' must be an int or a pair of ints, got {v!r}")
        if minimum is not None and i < minimum:
            rel = "positive" if minimum == 1 else f">= {minimum}"
            raise ValueError(f"fastconv: '{name}' must be {rel}, got {v!r}")
        out.append(i)
    return tuple(out)


def positive_int(v, name):
    i = _as_int(v)
    if i is None:
        raise TypeError(f"fastconv: '{name}' must be an int, got {v!r}")
    if i <= 0:
        raise ValueError(f"fastconv: '{name}' must be positive, got {v}")
    return i


def nonzero_int(v, name):
    i = _as_int(v)
    if i is None:
        raise TypeError(f"fastconv: '{name}' must be an int, got {v!r}")
    if i == 0:
        raise ValueError(f"fastconv: '{name}' must not be 0")
    return i


def batched(x, name):
    """(4-D view, was_unbatched) for 3-D (C, H, W) or 4-D (N, C, H, W) input."""
    check_tensor(x, name, dims=(3, 4))
    return (x.unsqueeze(0), True) if x.dim() == 3 else (x, False)


def conv_padding(padding, kernel, stride, dilation):
    """torch's conv2d padding (int, pair, 'same', 'valid') -> (top, bottom, left, right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("fastconv: padding='same' is not supported for strided convolutions "
                                 f"(stride={stride}); use stride=1 or explicit padding")
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]  # the odd extra goes bottom/right, as torch
            return tuple(pads)
        raise ValueError(f"fastconv: 'padding' must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    ph, pw = pair(padding, "padding", minimum=0)
    return (ph, ph, pw, pw)


def conv_out_size(size, pad0, pad1, dil, k, stride):
    return (size + pad0 + pad1 - dil * (k - 1) - 1) // stride + 1


def pool_out_size(size, k, pad, stride, dil, ceil_mode):
    """torch's pooling_output_shape."""
    num = size + 2 * pad - dil * (k - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = num // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def is_channels_last(t):
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def memory_format(*ts):
    return torch.channels_last if any(is_channels_last(t) for t in ts) else torch.contiguous_format


# ---------------------------------------------------------------- array-level operator arguments
# The operators' own argument lists (csrc/ops.cpp's schemas: 4-D NCHW arrays or tensors, conv padding
# (top, bottom, left, right)), as the Python backends receive them.

def conv_out_hw(x, w, stride, padding, dilation):
    return (conv_out_size(x.shape[2], padding[0], padding[1], dilation[0], w.shape[2], stride[0]),
            conv_out_size(x.shape[3], padding[2], padding[3], dilation[1], w.shape[3], stride[1]))


def pool_out_hw(hw, kernel_size, stride, padding, dilation, ceil_mode):
    return tuple(pool_out_size(int(hw[i]), kernel_size[i], padding[i], stride[i], dilation[i], ceil_mode)
                 for i in range(2))


def _need(cond, op, msg):
    if not cond:
        raise ValueError(f"{op}: {msg}")


def _shape(a):
    return tuple(a.shape)


def _check_conv(op, x_shape, w_shape, stride, padding, dilation, groups):
    """Consistent 4-D conv geometry; returns the output size (P, Q)."""
    _need(len(x_shape) == 4 and len(w_shape) == 4, op, f"input {x_shape} and weight {w_shape} must be 4-D")
    _need(len(stride) == 2 and len(padding) == 4 and len(dilation) == 2, op, "stride[2], padding[4], dilation[2]")
    _need(min(stride) >= 1 and min(dilation) >= 1 and min(padding) >= 0 and groups >= 1, op,
          f"stride {stride} and dilation {dilation} must be positive, padding {padding} >= 0, groups {groups} >= 1")
    _need(x_shape[1] == w_shape[1] * groups and w_shape[0] % groups == 0 and min(w_shape) > 0, op,
          f"input {x_shape}, weight {w_shape} and groups {groups} do not match")
    pq = (conv_out_size(x_shape[2], padding[0], padding[1], dilation[0], w_shape[2], stride[0]),
          conv_out_size(x_shape[3], padding[2], padding[3], dilation[1], w_shape[3], stride[1]))
    _need(min(pq) > 0, op, f"output size {pq} must be positive")
    return pq


def _check_pool(op, shape, kernel_size, stride, padding, dilation):
    _need(len(shape) == 4 and min(shape[1:]) > 0, op, f"input {shape} must be 4-D with non-zero C, H, W")
    _need(all(len(v) == 2 for v in (kernel_size, stride, padding, dilation)), op,
          f"kernel_size {kernel_size}, stride {stride}, padding {padding} and dilation {dilation} must be pairs")
    _need(min(kernel_size) >= 1 and min(stride) >= 1 and min(dilation) >= 1, op, "sizes must be positive")
    _need(all(0 <= padding[i] <= kernel_size[i] // 2 for i in range(2)), op,  # torch's rule, dilation or not
          f"padding {padding} must be in [0, half the kernel size {kernel_size}]")


def check_args(name, args, where="fastconv.numba"):
    """Refuses array-level operator arguments the kernels cannot take (they do no bounds checks), with
    an error naming `where`.`name`; shared by the Python backends (numba, the NumPy reference). The
    rules are the public functions' and the native operators' (tests/test_errors.py compares them)."""
    a0, op = args[0], f"{where}.{name}"
    if name in ("conv2d_fwd", "conv2d_fused_fwd"):
        if name == "conv2d_fwd":
            args = tuple(args) + (None, None, None, 0, False, 0, 0.0)
        x, w, bias, stride, padding, dilation, groups, scale, shift, residual, combine, relu, mode, eps = args
        p, q = _check_conv(op, _shape(x), _shape(w), stride, padding, dilation, groups)
        for t, tn in ((bias, "bias"), (scale, "scale"), (shift, "shift")):
            _need(t is None or _shape(t) == (w.shape[0],), op, f"'{tn}' must have shape ({w.shape[0]},)")
        _need(combine in (0, 1, 2) and mode in (0, 1), op, f"combine {combine} / mode {mode} out of range")
        out = (x.shape[0], w.shape[0], p, q)
        _need(combine == 0 or (residual is not None and _shape(residual) == out), op,
              f"residual must have the output's shape {out}")
    elif name in ("conv2d_bwd_input", "conv2d_bwd_weight"):
        dy, t, size, stride, padding, dilation, groups = args
        size = tuple(size)
        xs, ws = (size, _shape(t)) if name == "conv2d_bwd_input" else (_shape(t), size)
        p, q = _check_conv(op, xs, ws, stride, padding, dilation, groups)
        _need(_shape(dy) == (xs[0], ws[0], p, q), op, f"grad_out {_shape(dy)} != output shape {(xs[0], ws[0], p, q)}")
    elif name in ("conv2d_bwd_bias", "max_pool2d_bwd", "avg_pool2d_bwd", "adaptive_avg_pool2d_bwd"):
        _need(len(a0.shape) == 4, op, f"grad_out must be 4-D, got {_shape(a0)}")
        if name != "conv2d_bwd_bias":
            size = tuple(args[2] if name == "max_pool2d_bwd" else args[1])
            _need(len(size) == 4 and size[:2] == _shape(a0)[:2], op,
                  f"input_size {size} does not match grad_out {_shape(a0)}")
        if name == "max_pool2d_bwd":
            idx = args[1]
            _need(_shape(idx) == _shape(a0), op, "indices must have grad_out's shape")
        if name == "avg_pool2d_bwd":
            _check_pool(op, size, args[2], args[3], args[4], (1, 1))
            _need(_shape(a0)[2:] == pool_out_hw(size[2:], *args[2:5], (1, 1), args[5]), op,
                  "grad_out does not match the pooled size")
    elif name in ("max_pool2d_fwd", "max_pool2d_values"):
        _check_pool(op, _shape(a0), *args[1:5])
        _need(min(pool_out_hw(_shape(a0)[2:], *args[1:6])) > 0, op, "the pooled size must be positive")
    elif name == "avg_pool2d_fwd":
        _check_pool(op, _shape(a0), *args[1:4], (1, 1))
        _need(min(pool_out_hw(_shape(a0)[2:], *args[1:4], (1, 1), args[4])) > 0, op,
              "the pooled size must be positive")
    elif name == "adaptive_avg_pool2d_fwd":
        _need(len(a0.shape) == 4 and min(_shape(a0)[2:]) > 0 and len(args[1]) == 2 and min(args[1]) >= 1, op,
              f"input {_shape(a0)} must be 4-D with non-zero H, W and output_size {args[1]} positive")
    else:  # elementwise
        arrays = [a for a in args if not isinstance(a, (int, float))]
        _need(all(_shape(a) == _shape(a0) for a in arrays), op, "arrays must have the same shape")
        if name.startswith("sort"):
            _need(args[-2] in (0, 1), op, f"mode {args[-2]} must be 0 (sqrt) or 1 (product)")
