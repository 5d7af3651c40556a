"""Array-level operators with the argument lists of the schemas in csrc/ops.cpp (4-D NCHW arrays,
conv padding (top, bottom, left, right), combine 0/1/2, mode 0/1). NumPy arrays run the CPU kernels
of fastconv.numba.cpu; arrays exposing __cuda_array_interface__ (torch CUDA tensors, CuPy and Numba
device arrays) run the numba.cuda kernels of fastconv.numba.gpu and return arrays of their own kind.
The kernels do no bounds checks: every operator first runs check_args on its arguments."""
import contextlib
import functools
import math
import os
import threading

import numpy as np

from fastconv._args import check_args, conv_out_hw, pool_out_hw
from fastconv._outputs import empty as _empty, zeros as _zeros

DTYPES = (np.float32, np.float64)


def on_gpu(x):
    """CUDA arrays of any library; also the CUDA simulator's arrays (NUMBA_ENABLE_CUDASIM=1)."""
    if isinstance(x, np.ndarray):
        return False
    return hasattr(x, "__cuda_array_interface__") or type(x).__module__.startswith("numba.cuda")


def _dispatch(fn):
    """Check the arguments (the kernels do no bounds checks, so a raw-op call with inconsistent shapes
    must not reach them), then route to the same-named function of fastconv.numba.gpu when the first
    array is on a GPU."""
    @functools.wraps(fn)
    def op(*args):
        check_args(fn.__name__, args)
        if on_gpu(args[0]):
            from fastconv.numba import gpu
            return getattr(gpu, fn.__name__)(*args)
        return fn(*args)
    return op


_CPU = []


def _cpu():
    """fastconv.numba.cpu, imported on first use (loading the cached kernels takes a moment)."""
    if not _CPU:
        from fastconv.numba import cpu
        _CPU.append(cpu)
    return _CPU[0]


_SCRATCH = threading.local()
SCRATCH_KEEP = 64 << 20  # bytes: larger work spaces are freed after the call


def _scratch(slot, shape, dtype):
    """A work array for the conv kernels, kept per thread and slot between calls: fresh megabytes
    page-fault on every call (on these VMs the im2col buffer and the Winograd blocks of one ResNet
    layer took longer to fault in than to fill)."""
    dtype = np.dtype(dtype)
    n = math.prod(shape)
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    buf = bufs.get((slot, dtype))
    if buf is None or buf.size < n:
        buf = np.empty(max(n, 1), dtype)
        if n * dtype.itemsize <= SCRATCH_KEEP:
            bufs[(slot, dtype)] = buf
    return buf[:n].reshape(shape)


@functools.lru_cache(maxsize=None)
def _blas_controller():
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (the BLAS that np.dot in numba code calls)
        from threadpoolctl import ThreadpoolController
        return ThreadpoolController()
    except ImportError:
        return None


def _one_blas_thread():
    """The conv kernels call BLAS between numba parallel regions; BLAS's own thread pool then competes
    with numba's for the cores, and on a loaded machine its spinning threads made a conv 25x slower
    than one BLAS thread. The limit holds only for the call (about 0.15 ms to set and restore)."""
    ctl = _blas_controller()
    return ctl.limit(limits=1, user_api="blas") if ctl is not None else contextlib.nullcontext()


def _c(a):
    if a.dtype not in DTYPES:
        raise TypeError(f"fastconv.numba: arrays must be float32 or float64, got {a.dtype}")
    return np.ascontiguousarray(a)


def _vec(t, like):
    """Optional per-channel vector -> (array, present) with one compiled signature either way."""
    return (_c(t), True) if t is not None else (np.zeros(1, like.dtype), False)


def _conv_geometry(x, w, stride, padding, dilation, groups, P, Q):
    R, S = w.shape[2], w.shape[3]
    direct = R == 1 and S == 1 and tuple(stride) == (1, 1) and tuple(padding) == (0, 0, 0, 0)
    return (int(R), int(S), int(stride[0]), int(stride[1]), int(padding[0]), int(padding[2]),
            int(dilation[0]), int(dilation[1]), int(P), int(Q), direct)


def _dw_geometry(stride, padding, dilation):
    """(stride h, w, padding top, left, dilation h, w) as ints for the depthwise kernels."""
    return (int(stride[0]), int(stride[1]), int(padding[0]), int(padding[2]), int(dilation[0]), int(dilation[1]))


def _col(geo, cg, pq, dtype):
    """The im2col work space (none for the direct 1x1 case, geo[-1])."""
    return _scratch("col", (0 if geo[-1] else cg * geo[0] * geo[1], pq), dtype)


def _grouped(a, groups):
    """(N, C, H, W) -> (N, G, C/G, H*W) view."""
    n, c, h, w = a.shape
    return a.reshape(n, groups, c // groups, h * w)


_WINOGRAD = [os.environ.get("FASTCONV_WINOGRAD", "1").strip() != "0"]
WINO_MIN_SAVED = 1500  # multiply-adds per channel pair Winograd must save (see `winograd`)


def set_winograd(enabled):
    """Allow (True) or forbid Winograd F(4x4, 3x3) for float32 convolutions on the CPU (default: on
    unless FASTCONV_WINOGRAD=0, as for the native kernels); returns the previous setting."""
    before = _WINOGRAD[0]
    _WINOGRAD[0] = bool(enabled)
    return before


def winograd(x, w, stride, padding, dilation, groups, P, Q):
    """The Winograd rule: the native kernel's for 3x3 (float32, groups 1, 3x3, stride and dilation 1,
    at least 16 input and output channels, output at least 4x4), where the multiply-adds it saves per
    channel pair (9 N P Q - 36 tiles) pay for transforming the weights on every call (about the time of
    1500 multiply-adds in a GEMM here, measured; the native kernel needs 500). The native kernels also
    take 5x5 layers as F(2x2, 5x5); here those stay direct."""
    if not (_WINOGRAD[0] and x.dtype == np.float32 and groups == 1 and tuple(w.shape[2:]) == (3, 3)
            and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and x.shape[1] >= 16 and w.shape[0] >= 16
            and P >= 4 and Q >= 4):
        return False
    tiles = x.shape[0] * ((P + 3) // 4) * ((Q + 3) // 4)
    return 9 * x.shape[0] * P * Q - 36 * tiles >= WINO_MIN_SAVED


def _finite_within(bound, *arrays):
    """True if every value of the arrays is finite and max |a| * max |b| * ... * bound stays below
    float32's maximum (NaN propagates through max and min)."""
    prod = float(bound)
    for a in arrays:
        prod *= max(float(a.max()), -float(a.min())) if a.size else 0.0
    return prod < float(np.finfo(np.float32).max)


def _winograd_safe(a, w):
    """Winograd's transforms spread a NaN or infinity over a tile or an output channel and grow sums
    by up to about 1e4 (input transform 100, weight transform 0.25, output transform 361, per input
    channel): it runs only on finite operands too small for any intermediate to overflow, where its
    results are the direct sum's up to rounding; other layers take the direct path."""
    return _finite_within(1e4 * a.shape[1], a, w)


def _epilogue_args(x, res, bias=None, scale=None, shift=None, combine=0, relu=False, mode=0, eps=0.0):
    """The epilogue arguments of the conv kernels, with the residual view `res` (a dummy without a
    combine); the defaults: none."""
    dt = x.dtype.type
    return (*_vec(bias, x), *_vec(scale, x), *_vec(shift, x), res, int(combine), bool(relu), int(mode), dt(eps),
            dt(0))


def _winograd_fwd(x, w, y, pt, pl, epilogue):
    """epilogue: _epilogue_args with the residual as an (N, K, P*Q) view."""
    N, C, K = x.shape[0], x.shape[1], w.shape[0]
    T = _cpu().winograd_block(N, y.shape[2], y.shape[3])
    _cpu().conv2d_fwd_winograd(x, w, y, y.reshape(N, K, -1), pt, pl, _scratch("U", (36, K, C), x.dtype),
                               _scratch("V", (36, C, T), x.dtype), _scratch("M", (36, K, T), x.dtype), *epilogue)


@_dispatch
def conv2d_fused_fwd(x, w, bias, stride, padding, dilation, groups, scale, shift, residual, combine, relu,
                     mode, eps):
    x, w = _c(x), _c(w)
    N, K = x.shape[0], w.shape[0]
    P, Q = conv_out_hw(x, w, stride, padding, dilation)
    y = _empty((N, K, P, Q), x.dtype)
    res = _c(residual) if combine else np.zeros((1, 1, 1, 1), x.dtype)
    epi = dict(bias=bias, scale=scale, shift=shift, combine=combine, relu=relu, mode=mode, eps=eps)
    res3 = res.reshape(res.shape[0], res.shape[1], -1)  # the per-image paths' (N, K, P*Q) view
    # depthwise: direct, no BLAS (its loops skip the padding: non-finite weights take the im2col path,
    # which multiplies it, as the zero-padded definition)
    if groups > 1 and groups == x.shape[1] and _finite_within(1, w):
        _cpu().conv2d_fwd_depthwise(x, w, y, y.reshape(N, K, P * Q), *_dw_geometry(stride, padding, dilation),
                                    *_epilogue_args(x, res3, **epi))
        return y
    with _one_blas_thread():
        if winograd(x, w, stride, padding, dilation, groups, P, Q) and _winograd_safe(x, w):
            _winograd_fwd(x, w, y, int(padding[0]), int(padding[2]), _epilogue_args(x, res3, **epi))
        else:
            geo = _conv_geometry(x, w, stride, padding, dilation, groups, P, Q)
            _cpu().conv2d_fwd(x, _grouped(x, groups), w.reshape(groups, K // groups, -1), _grouped(y, groups),
                              _col(geo, w.shape[1], P * Q, x.dtype), *geo,
                              *_epilogue_args(x, _grouped(res, groups) if combine else res, **epi))
    return y


def conv2d_fwd(x, w, bias, stride, padding, dilation, groups):
    return conv2d_fused_fwd(x, w, bias, stride, padding, dilation, groups, None, None, None, 0, False, 0, 0.0)


@_dispatch
def conv2d_bwd_input(dy, w, input_size, stride, padding, dilation, groups):
    dy, w = _c(dy), _c(w)
    H, W = int(input_size[2]), int(input_size[3])
    # Stride 1: the input gradient is the convolution of dy with the flipped, transposed weights and
    # padding 2 - p, which Winograd takes where it pays (top and left pads at most 2).
    flipped_pads = tuple(2 - int(p) for p in padding)
    if tuple(w.shape[2:]) == (3, 3) and min(flipped_pads) >= 0 and \
            winograd(dy, w.transpose(1, 0, 2, 3), stride, flipped_pads, dilation, groups, H, W) and \
            _winograd_safe(dy, w):
        wf = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
        dx = _empty(input_size, dy.dtype)
        with _one_blas_thread():
            _winograd_fwd(dy, wf, dx, flipped_pads[0], flipped_pads[2],
                          _epilogue_args(dy, np.zeros((1, 1, 1), dy.dtype)))
        return dx
    dx = _zeros(input_size, dy.dtype)
    if groups > 1 and groups == dx.shape[1] and _finite_within(1, w):  # depthwise: direct, no BLAS
        _cpu().conv2d_depthwise_bwd_input(dy, w, dx, *_dw_geometry(stride, padding, dilation))
        return dx
    G, K = groups, w.shape[0]
    wt = np.ascontiguousarray(w.reshape(G, K // G, -1).transpose(0, 2, 1))
    geo = _conv_geometry(dx, w, stride, padding, dilation, groups, dy.shape[2], dy.shape[3])
    with _one_blas_thread():
        _cpu().conv2d_bwd_input(_grouped(dy, G), wt, dx, _grouped(dx, G),
                                _col(geo, w.shape[1], dy.shape[2] * dy.shape[3], dy.dtype), *geo)
    return dx


@_dispatch
def conv2d_bwd_weight(dy, x, weight_size, stride, padding, dilation, groups):
    dy, x = _c(dy), _c(x)
    dw = np.zeros(tuple(weight_size), dy.dtype)
    if groups > 1 and groups == x.shape[1]:  # depthwise: direct, no BLAS
        _cpu().conv2d_depthwise_bwd_weight(dy, x, dw, *_dw_geometry(stride, padding, dilation), dy.dtype.type(0))
        if _finite_within(1, dw):
            return dw
        dw[...] = 0  # a NaN or infinity in dy: the im2col path below multiplies the padding, as the definition
    G, K = groups, dw.shape[0]
    geo = _conv_geometry(x, dw, stride, padding, dilation, groups, dy.shape[2], dy.shape[3])
    cols = dw.shape[1] * dw.shape[2] * dw.shape[3]
    with _one_blas_thread():
        _cpu().conv2d_bwd_weight(_grouped(dy, G), x, _grouped(x, G), dw.reshape(G, K // G, -1),
                                 _scratch("col", (cols, dy.shape[2] * dy.shape[3]), dy.dtype),
                                 _scratch("part", (K // G, cols), dy.dtype), *geo, dy.dtype.type(0))
    return dw


@_dispatch
def conv2d_bwd_bias(dy):
    dy = _c(dy)
    db = np.empty(dy.shape[1], dy.dtype)
    _cpu().conv2d_bwd_bias(dy.reshape(dy.shape[0], dy.shape[1], dy.shape[2] * dy.shape[3]), db, dy.dtype.type(0))
    return db


def _planes(a):
    n, c, h, w = a.shape
    return a.reshape(n * c, h, w)


def _pool_shape(x, kernel_size, stride, padding, dilation, ceil_mode):
    return x.shape[:2] + pool_out_hw(x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)


def _max_args(x, kernel_size, stride, padding, dilation):
    return (*map(int, (*kernel_size, *stride, *padding, *dilation)), x.dtype.type(-np.inf))


@_dispatch
def max_pool2d_fwd(x, kernel_size, stride, padding, dilation, ceil_mode):
    x = _c(x)
    shape = _pool_shape(x, kernel_size, stride, padding, dilation, ceil_mode)
    y = _empty(shape, x.dtype)
    idx = _empty(shape, np.int64)
    _cpu().max_pool2d_fwd(_planes(x), _planes(y), _planes(idx), *_max_args(x, kernel_size, stride, padding, dilation))
    return y, idx


@_dispatch
def max_pool2d_values(x, kernel_size, stride, padding, dilation, ceil_mode):
    x = _c(x)
    y = _empty(_pool_shape(x, kernel_size, stride, padding, dilation, ceil_mode), x.dtype)
    _cpu().max_pool2d_values(_planes(x), _planes(y), *_max_args(x, kernel_size, stride, padding, dilation))
    return y


@_dispatch
def max_pool2d_bwd(dy, indices, input_size):
    dy, idx = _c(dy), np.ascontiguousarray(indices, np.int64)
    n, c = dy.shape[:2]
    dx = _zeros(input_size, dy.dtype)
    _cpu().max_pool2d_bwd(dy.reshape(n * c, -1), idx.reshape(n * c, -1), dx.reshape(n * c, -1))
    return dx


def _avg_args(kernel_size, stride, padding, count_include_pad, divisor_override):
    return (*map(int, (*kernel_size, *stride, *padding)), bool(count_include_pad), int(divisor_override or 0))


@_dispatch
def avg_pool2d_fwd(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    x = _c(x)
    y = _empty(x.shape[:2] + pool_out_hw(x.shape[2:], kernel_size, stride, padding, (1, 1), ceil_mode), x.dtype)
    _cpu().avg_pool2d_fwd(_planes(x), _planes(y), *_avg_args(kernel_size, stride, padding, count_include_pad,
                                                              divisor_override), x.dtype.type(0))
    return y


@_dispatch
def avg_pool2d_bwd(dy, input_size, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    dy = _c(dy)
    dx = _zeros(input_size, dy.dtype)
    _cpu().avg_pool2d_bwd(_planes(dy), _planes(dx), *_avg_args(kernel_size, stride, padding, count_include_pad,
                                                                divisor_override))
    return dx


@_dispatch
def adaptive_avg_pool2d_fwd(x, output_size):
    x = _c(x)
    y = _empty(x.shape[:2] + tuple(output_size), x.dtype)
    _cpu().adaptive_avg_pool2d_fwd(_planes(x), _planes(y), x.dtype.type(0))
    return y


@_dispatch
def adaptive_avg_pool2d_bwd(dy, input_size):
    dy = _c(dy)
    dx = _empty(input_size, dy.dtype)
    _cpu().adaptive_avg_pool2d_bwd(_planes(dy), _planes(dx))
    return dx


# Elementwise operators work on any shape (flattened; inputs share one shape and memory order).
@_dispatch
def relu_fwd(x):
    x = _c(x)
    y = _empty(x.shape, x.dtype)
    _cpu().relu_fwd(x.reshape(-1), y.reshape(-1), x.dtype.type(0))
    return y


@_dispatch
def relu_bwd(dy, result):
    dy, r = _c(dy), _c(result)
    dx = _empty(dy.shape, dy.dtype)
    _cpu().relu_bwd(dy.reshape(-1), r.reshape(-1), dx.reshape(-1), dy.dtype.type(0))
    return dx


@_dispatch
def sort_fwd(a, b, mode, eps):
    a, b = _c(a), _c(b)
    y = _empty(a.shape, a.dtype)
    dt = a.dtype.type
    _cpu().sort_fwd(a.reshape(-1), b.reshape(-1), y.reshape(-1), int(mode), dt(eps), dt(0))
    return y


def sort_bwd_eps(eps, dtype):
    """eps for the backward, raised to the smallest normal number (as the native kernels do): with eps = 0
    and an operand at 0 the derivative term is then (finite) * 0 = 0, its true value, not 0 * inf = NaN."""
    return np.dtype(dtype).type(max(float(eps), float(np.finfo(dtype).tiny)))


@_dispatch
def sort_bwd(dy, a, b, mode, eps):
    dy, a, b = _c(dy), _c(a), _c(b)
    ga, gb = _empty(dy.shape, dy.dtype), _empty(dy.shape, dy.dtype)
    dt = dy.dtype.type
    _cpu().sort_bwd(dy.reshape(-1), a.reshape(-1), b.reshape(-1), ga.reshape(-1), gb.reshape(-1), int(mode),
                    sort_bwd_eps(eps, dy.dtype), dt(0), dt(1), dt(0.5))
    return ga, gb
