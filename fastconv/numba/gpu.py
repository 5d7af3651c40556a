"""numba.cuda kernels with the array-level signatures of fastconv.numba.kernels.

Arrays: torch CUDA tensors, CuPy arrays, Numba device arrays (or anything with
__cuda_array_interface__). Outputs are allocated by the inputs' own library and kernels run on its
current stream (torch.cuda.current_stream(), cupy.cuda.get_current_stream(), the array's stream for
Numba), so they order correctly with the caller's other work. Convolution is an implicit GEMM
(output channels x output pixels, reduction over Cg*R*S) with 16x16 shared-memory tiles and the
epilogue fused into the store; the conv backward passes, pooling and elementwise kernels are
grid-stride loops (scatter passes use atomics). Typed scalar constants are passed in, so float32
kernels stay in float32.
"""
import functools
import math

import numpy as np

if not hasattr(np, "row_stack"):  # numba-cuda 0.30 still calls np.row_stack, removed in NumPy 2.5
    np.row_stack = np.vstack

from numba import config, cuda  # noqa: E402

from fastconv._args import conv_out_hw, pool_out_hw  # noqa: E402
from fastconv.numba.kernels import sort_bwd_eps  # noqa: E402

_T = 16  # conv tile: 16 output channels x 16 output pixels x 16 reduction steps
# Threads per block of the grid-stride kernels and per reduced element (conv weight/bias gradients);
# the simulator runs each thread as a Python thread, so it gets small blocks.
_THREADS, _RED = (32, 8) if config.ENABLE_CUDASIM else (256, 128)


# ---------------------------------------------------------------- arrays, allocation, streams
def _lib(a):
    return type(a).__module__.split(".")[0]


def _np_dtype(a):
    if _lib(a) == "torch":
        return np.dtype(str(a.dtype).replace("torch.", ""))
    return np.dtype(a.dtype)


def _contiguous(a):
    lib = _lib(a)
    if lib == "torch":
        return a.contiguous()
    if lib == "cupy":
        import cupy
        return cupy.ascontiguousarray(a)
    if lib == "numba" and not a.is_c_contiguous():
        raise ValueError("fastconv.numba: Numba device arrays must be C-contiguous")
    return a


def _dev(a):
    """A Numba device-array view of `a` (no copy, no synchronisation)."""
    if a is None or _lib(a) == "numba":
        return a
    try:
        return cuda.as_cuda_array(a, sync=False)
    except TypeError:  # older numba without the sync argument
        return cuda.as_cuda_array(a)


def _stream(like):
    lib = _lib(like)
    if lib == "torch":
        import torch
        return cuda.external_stream(torch.cuda.current_stream(like.device).cuda_stream)
    if lib == "cupy":
        import cupy
        return cuda.external_stream(cupy.cuda.get_current_stream().ptr)
    return getattr(like, "stream", 0)  # 0: the default stream


def _empty(like, shape, dtype=None):
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype or _np_dtype(like))
    lib = _lib(like)
    if lib == "torch":
        import torch
        tdt = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
               np.dtype(np.int64): torch.int64}[dtype]
        return torch.empty(shape, dtype=tdt, device=like.device)
    if lib == "cupy":
        import cupy
        return cupy.empty(shape, dtype)
    return cuda.device_array(shape, dtype, stream=_stream(like))


def _launch(kernel, n, stream, *args):
    if n > 0:
        kernel[min(-(-n // _THREADS), 65535 * 8), _THREADS, stream](*args)


def _zeros(like, shape, stream):
    out = _empty(like, shape)
    d = _dev(out)
    flat = d.reshape(d.size)
    _launch(_fill, flat.size, stream, flat, d.dtype.type(0))
    return out, d


def _prep(*arrays):
    """Contiguous inputs, their device views, the stream and the typed zero of the first one."""
    arrays = [None if a is None else _contiguous(a) for a in arrays]
    first = arrays[0]
    views = [_dev(a) for a in arrays]
    return arrays, views, _stream(first), views[0].dtype.type(0)


@cuda.jit
def _fill(out, value):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = value


# ---------------------------------------------------------------- convolution
@cuda.jit(device=True, inline=True)
def _sort_val(a, b, mode, eps, zero):
    ra = max(a, zero)
    rb = max(b, zero)
    return a + b + (math.sqrt(ra * rb + eps) if mode == 0 else ra * rb)


@functools.lru_cache(maxsize=None)
def _conv_kernel(nbtype):
    @cuda.jit
    def conv(x, w, y, G, sh, sw, pt, pl, dh, dw, bias, has_bias, scale, has_scale, shift, has_shift, res,
             combine, relu, mode, eps, zero):
        H, W = x.shape[2], x.shape[3]
        K, Cg, R, S = w.shape
        Kg = K // G
        P, Q = y.shape[2], y.shape[3]
        PQ = P * Q
        RS = R * S
        KD = Cg * RS
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        pix = cuda.blockIdx.x * _T + tx
        kk = cuda.blockIdx.y * _T + ty
        p = pix // Q
        q = pix % Q
        sw_ = cuda.shared.array((_T, _T), nbtype)
        sx = cuda.shared.array((_T, _T), nbtype)
        for ng in range(cuda.blockIdx.z, y.shape[0] * G, cuda.gridDim.z):  # grid z is capped at 65535
            n = ng // G
            g = ng % G
            acc = zero
            for kd0 in range(0, KD, _T):
                kd = kd0 + tx  # weight tile: row = output channel kk, column = reduction index kd
                v = zero
                if kk < Kg and kd < KD:
                    v = w[g * Kg + kk, kd // RS, (kd // S) % R, kd % S]
                sw_[ty, tx] = v
                kd = kd0 + ty  # input tile: row = reduction index kd, column = output pixel
                v = zero
                if pix < PQ and kd < KD:
                    ih = p * sh - pt + ((kd // S) % R) * dh
                    iw = q * sw - pl + (kd % S) * dw
                    if ih >= 0 and ih < H and iw >= 0 and iw < W:
                        v = x[n, g * Cg + kd // RS, ih, iw]
                sx[ty, tx] = v
                cuda.syncthreads()
                for i in range(_T):
                    acc += sw_[ty, i] * sx[i, tx]
                cuda.syncthreads()
            if kk < Kg and pix < PQ:
                k = g * Kg + kk
                z = acc * scale[k] if has_scale else acc
                if has_shift:
                    z += shift[k]
                if has_bias:
                    z += bias[k]
                if combine == 1:
                    z += res[n, k, p, q]
                elif combine == 2:
                    z = _sort_val(res[n, k, p, q], z, mode, eps, zero)
                if relu and z < zero:
                    z = zero
                y[n, k, p, q] = z
    return conv


def conv2d_fused_fwd(x, w, bias, stride, padding, dilation, groups, scale, shift, residual, combine, relu,
                     mode, eps):
    (x, w, bias, scale, shift, residual), (dx, dw_, db, dsc, dsh, dres), stream, zero = _prep(
        x, w, bias, scale, shift, residual)
    N, K = x.shape[0], w.shape[0]
    P, Q = conv_out_hw(x, w, stride, padding, dilation)
    y = _empty(x, (N, K, P, Q))
    grid = (-(-(P * Q) // _T), -(-(K // groups) // _T), min(N * groups, 65535))
    if 0 in grid:
        return y
    dummy = dw_.reshape(dw_.size)[:1]
    dres4 = dres if dres is not None else dx
    kernel = _conv_kernel(_nbtype(zero.dtype))
    kernel[grid, (_T, _T), stream](dx, dw_, _dev(y), groups, stride[0], stride[1], padding[0], padding[2],
                                   dilation[0], dilation[1], db if db is not None else dummy, db is not None,
                                   dsc if dsc is not None else dummy, dsc is not None,
                                   dsh if dsh is not None else dummy, dsh is not None, dres4, int(combine),
                                   bool(relu), int(mode), zero.dtype.type(eps), zero)
    return y


def conv2d_fwd(x, w, bias, stride, padding, dilation, groups):
    return conv2d_fused_fwd(x, w, bias, stride, padding, dilation, groups, None, None, None, 0, False, 0, 0.0)


def _nbtype(dtype):
    from numba import float32, float64
    return float32 if np.dtype(dtype) == np.float32 else float64


@cuda.jit
def _conv_bwd_input(dy, w, dx, G, sh, sw, pt, pl, dh, dw, zero):
    N, C, H, W = dx.shape
    K, Cg, R, S = w.shape
    Kg = K // G
    P, Q = dy.shape[2], dy.shape[3]
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        iw = i % W
        ih = (i // W) % H
        c = (i // (W * H)) % C
        n = i // (W * H * C)
        g = c // Cg
        acc = zero
        for r in range(R):
            ph = ih + pt - r * dh  # = p * sh for a contributing output row p
            if ph < 0 or ph % sh != 0 or ph // sh >= P:
                continue
            for s in range(S):
                qw = iw + pl - s * dw
                if qw < 0 or qw % sw != 0 or qw // sw >= Q:
                    continue
                for kk in range(Kg):
                    k = g * Kg + kk
                    acc += w[k, c - g * Cg, r, s] * dy[n, k, ph // sh, qw // sw]
        dx[n, c, ih, iw] = acc


def conv2d_bwd_input(dy, w, input_size, stride, padding, dilation, groups):
    (dy, w), (ddy, dw_), stream, zero = _prep(dy, w)
    dx = _empty(dy, input_size)
    d = _dev(dx)
    _launch(_conv_bwd_input, d.size, stream, ddy, dw_, d, groups, stride[0], stride[1], padding[0], padding[2],
            dilation[0], dilation[1], zero)
    return dx


@cuda.jit
def _conv_bwd_weight(dy, x, dwt, G, sh, sw, pt, pl, dh, dw, zero):
    """One block per weight element; its threads split the N*P*Q sum and add their parts atomically."""
    K, Cg, R, S = dwt.shape
    N, _, H, W = x.shape
    P, Q = dy.shape[2], dy.shape[3]
    e = cuda.blockIdx.x
    s = e % S
    r = (e // S) % R
    c = (e // (S * R)) % Cg
    k = e // (S * R * Cg)
    ci = (k // (K // G)) * Cg + c
    acc = zero
    for i in range(cuda.threadIdx.x, N * P * Q, cuda.blockDim.x):
        q = i % Q
        p = (i // Q) % P
        n = i // (Q * P)
        ih = p * sh - pt + r * dh
        iw = q * sw - pl + s * dw
        if ih >= 0 and ih < H and iw >= 0 and iw < W:
            acc += dy[n, k, p, q] * x[n, ci, ih, iw]
    cuda.atomic.add(dwt, (k, c, r, s), acc)


def conv2d_bwd_weight(dy, x, weight_size, stride, padding, dilation, groups):
    (dy, x), (ddy, dxx), stream, zero = _prep(dy, x)
    dw, d = _zeros(dy, weight_size, stream)
    if d.size:
        _conv_bwd_weight[d.size, _RED, stream](ddy, dxx, d, groups, stride[0], stride[1], padding[0], padding[2],
                                               dilation[0], dilation[1], zero)
    return dw


@cuda.jit
def _conv_bwd_bias(dy, db, zero):
    N, K, P, Q = dy.shape
    k = cuda.blockIdx.x
    acc = zero
    for i in range(cuda.threadIdx.x, N * P * Q, cuda.blockDim.x):
        acc += dy[i // (P * Q), k, (i // Q) % P, i % Q]
    cuda.atomic.add(db, k, acc)


def conv2d_bwd_bias(dy):
    (dy,), (ddy,), stream, zero = _prep(dy)
    db, d = _zeros(dy, (dy.shape[1],), stream)
    if d.size:
        _conv_bwd_bias[d.size, _RED, stream](ddy, d, zero)
    return db


# ---------------------------------------------------------------- pooling (one thread per output)
@cuda.jit
def _max_pool_fwd(x, y, idx, want_idx, kh, kw, sh, sw, ph, pw, dh, dw, neg_inf):
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        ow = i % OW
        oh = (i // OW) % OH
        c = (i // (OW * OH)) % C
        n = i // (OW * OH * C)
        h0 = oh * sh - ph
        h1 = min(h0 + (kh - 1) * dh + 1, H)
        while h0 < 0:
            h0 += dh
        w0 = ow * sw - pw
        w1 = min(w0 + (kw - 1) * dw + 1, W)
        while w0 < 0:
            w0 += dw
        best = neg_inf
        bi = h0 * W + w0
        for ih in range(h0, h1, dh):
            for iw in range(w0, w1, dw):
                v = x[n, c, ih, iw]
                if v > best or v != v:  # NaN wins, as in torch
                    best = v
                    bi = ih * W + iw
        y[n, c, oh, ow] = best
        if want_idx:
            idx[n, c, oh, ow] = bi


def _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, want_idx):
    (x,), (dx,), stream, zero = _prep(x)
    shape = tuple(x.shape[:2]) + pool_out_hw(x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    y = _empty(x, shape)
    idx = _empty(x, shape, np.int64) if want_idx else None
    dy = _dev(y)
    _launch(_max_pool_fwd, dy.size, stream, dx, dy, _dev(idx) if want_idx else dy, want_idx, *kernel_size,
            *stride, *padding, *dilation, zero.dtype.type(-np.inf))
    return y, idx


def max_pool2d_fwd(x, kernel_size, stride, padding, dilation, ceil_mode):
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, True)


def max_pool2d_values(x, kernel_size, stride, padding, dilation, ceil_mode):
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, False)[0]


@cuda.jit
def _max_pool_bwd(dy, idx, dx):
    N, C, OH, OW = dy.shape
    H, W = dx.shape[2], dx.shape[3]
    for i in range(cuda.grid(1), dy.size, cuda.gridsize(1)):
        ow = i % OW
        oh = (i // OW) % OH
        c = (i // (OW * OH)) % C
        n = i // (OW * OH * C)
        j = idx[n, c, oh, ow]
        if 0 <= j < H * W:  # outside: a window with no tap inside the input (value -inf)
            cuda.atomic.add(dx, (n, c, j // W, j % W), dy[n, c, oh, ow])


def max_pool2d_bwd(dy, indices, input_size):
    (dy, indices), (ddy, didx), stream, zero = _prep(dy, indices)
    dx, d = _zeros(dy, input_size, stream)
    _launch(_max_pool_bwd, ddy.size, stream, ddy, didx, d)
    return dx


@cuda.jit(device=True, inline=True)
def _avg_window(o, stride, pad, k, size):
    start = o * stride - pad
    end = min(start + k, size + pad)
    ext = end - start
    return max(start, 0), min(end, size), ext


@functools.lru_cache(maxsize=None)
def _avg_kernel(nbtype):
    @cuda.jit
    def avg_pool(x, y, kh, kw, sh, sw, ph, pw, count_include_pad, divisor, adaptive, backward, zero):
        """x: input (forward) or grad_out (backward); y: output, or grad_in zeroed (backward). One
        thread per pooled element; adaptive: windows [floor(o*H/OH), ceil((o+1)*H/OH))."""
        if backward:
            H, W, OH, OW = y.shape[2], y.shape[3], x.shape[2], x.shape[3]
        else:
            H, W, OH, OW = x.shape[2], x.shape[3], y.shape[2], y.shape[3]
        C = x.shape[1]
        for i in range(cuda.grid(1), x.shape[0] * C * OH * OW, cuda.gridsize(1)):
            ow = i % OW
            oh = (i // OW) % OH
            c = (i // (OW * OH)) % C
            n = i // (OW * OH * C)
            if adaptive:
                h0, h1 = oh * H // OH, -((-(oh + 1) * H) // OH)
                w0, w1 = ow * W // OW, -((-(ow + 1) * W) // OW)
                cnt = (h1 - h0) * (w1 - w0)
            else:
                h0, h1, eh = _avg_window(oh, sh, ph, kh, H)
                w0, w1, ew = _avg_window(ow, sw, pw, kw, W)
                if divisor != 0:
                    cnt = divisor
                elif count_include_pad:
                    cnt = eh * ew
                else:
                    cnt = (h1 - h0) * (w1 - w0)
            if h0 >= h1 or w0 >= w1:
                if not backward:
                    y[n, c, oh, ow] = zero
                continue
            if backward:
                g = x[n, c, oh, ow] / nbtype(cnt)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        cuda.atomic.add(y, (n, c, ih, iw), g)
            else:
                acc = zero
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        acc += x[n, c, ih, iw]
                y[n, c, oh, ow] = acc / nbtype(cnt)
    return avg_pool


def _avg(src, out_shape, backward, args):
    (src,), (dsrc,), stream, zero = _prep(src)
    if backward:
        out, d = _zeros(src, out_shape, stream)
    else:
        out = _empty(src, out_shape)
        d = _dev(out)
    pooled = dsrc.size if backward else d.size
    _launch(_avg_kernel(_nbtype(zero.dtype)), pooled, stream, dsrc, d, *args, backward, zero)
    return out


def avg_pool2d_fwd(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    shape = tuple(x.shape[:2]) + pool_out_hw(x.shape[2:], kernel_size, stride, padding, (1, 1), ceil_mode)
    return _avg(x, shape, False, (*kernel_size, *stride, *padding, bool(count_include_pad),
                                  int(divisor_override or 0), False))


def avg_pool2d_bwd(dy, input_size, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return _avg(dy, input_size, True, (*kernel_size, *stride, *padding, bool(count_include_pad),
                                       int(divisor_override or 0), False))


def adaptive_avg_pool2d_fwd(x, output_size):
    return _avg(x, tuple(x.shape[:2]) + tuple(output_size), False, (1, 1, 1, 1, 0, 0, False, 0, True))


def adaptive_avg_pool2d_bwd(dy, input_size):
    return _avg(dy, input_size, True, (1, 1, 1, 1, 0, 0, False, 0, True))


# ---------------------------------------------------------------- elementwise (flat views)
@cuda.jit
def _relu_fwd(x, y, zero):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        y[i] = zero if v < zero else v  # NaN passes through


@cuda.jit
def _relu_bwd(g, r, dx, zero):
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        dx[i] = g[i] if r[i] > zero else zero


@cuda.jit
def _sort_fwd(a, b, y, mode, eps, zero):
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        y[i] = _sort_val(a[i], b[i], mode, eps, zero)


@cuda.jit
def _sort_bwd(g, a, b, ga, gb, mode, eps, one, half, zero):
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        av = a[i]
        bv = b[i]
        ra = max(av, zero)
        rb = max(bv, zero)
        if mode == 0:
            d = half / math.sqrt(ra * rb + eps)
            da = rb * d
            db = ra * d
        else:
            da = rb
            db = ra
        ga[i] = g[i] * (one + (da if av > zero else zero))
        gb[i] = g[i] * (one + (db if bv > zero else zero))


def _elementwise(kernel, inputs, n_out, *scalars):
    """Run `kernel(*inputs, *outputs, *scalars, zero)` on flat views; scalars may be callables of the
    typed zero (so constants get the arrays' dtype)."""
    inputs, views, stream, zero = _prep(*inputs)
    scalars = [v(zero) if callable(v) else v for v in scalars]
    outs = [_empty(inputs[0], inputs[0].shape) for _ in range(n_out)]
    flat = [v.reshape(v.size) for v in views + [_dev(o) for o in outs]]
    _launch(kernel, flat[0].size, stream, *flat, *scalars, zero)
    return outs


def relu_fwd(x):
    return _elementwise(_relu_fwd, (x,), 1)[0]


def relu_bwd(dy, result):
    return _elementwise(_relu_bwd, (dy, result), 1)[0]


def sort_fwd(a, b, mode, eps):
    return _elementwise(_sort_fwd, (a, b), 1, int(mode), lambda z: z.dtype.type(eps))[0]


def sort_bwd(dy, a, b, mode, eps):
    return tuple(_elementwise(_sort_bwd, (dy, a, b), 2, int(mode), lambda z: sort_bwd_eps(eps, z.dtype),
                              lambda z: z.dtype.type(1), lambda z: z.dtype.type(0.5)))
