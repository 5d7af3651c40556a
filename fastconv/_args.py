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
