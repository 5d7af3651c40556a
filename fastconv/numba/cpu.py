"""CPU kernels (numba.njit, parallel, cached on disk). Arrays are NCHW-contiguous NumPy arrays of one
floating dtype; the callers in fastconv.numba.kernels allocate outputs and pass typed scalar
constants so that float32 kernels never widen to float64 (numba types an int or Python float literal
as int64/float64, and float32 op float64 -> float64).

Convolution is im2col + GEMM per (image, group): the gather is a parallel loop over the rows of the
column matrix with contiguous inner copies, the product is np.dot (BLAS). The epilogue (bias,
scale, shift, residual combine, ReLU) runs on the rows of the (image, group) block while they are
still in cache. Only reassociation/contraction fast-math flags are used: NaN and Inf must propagate.
"""
import numba as nb
import numpy as np
from numba import prange

_JIT = dict(parallel=True, cache=True, nogil=True)
_FAST = dict(_JIT, fastmath={"contract", "reassoc", "arcp", "nsz"})
_SERIAL = dict(cache=True, nogil=True, fastmath={"contract", "reassoc", "arcp", "nsz"})


@nb.njit(inline="always", cache=True)
def _valid_range(count, step, offset, size):
    """[lo, hi) of i in [0, count) with 0 <= i * step + offset < size."""
    lo = 0 if offset >= 0 else (-offset + step - 1) // step
    hi = 0 if size - 1 - offset < 0 else (size - 1 - offset) // step + 1
    hi = min(hi, count)
    return lo, max(lo, hi)


@nb.njit(**_FAST)
def _im2col(x, n, c0, R, S, sh, sw, pt, pl, dh, dw, P, Q, col, zero):
    H, W = x.shape[2], x.shape[3]
    for row in prange(col.shape[0]):
        c = row // (R * S)
        r = (row // S) % R
        s = row % S
        off = s * dw - pl
        lo, hi = _valid_range(Q, sw, off, W)
        for p in range(P):
            ih = p * sh - pt + r * dh
            base = p * Q
            if ih < 0 or ih >= H:
                for q in range(Q):
                    col[row, base + q] = zero
                continue
            for q in range(lo):
                col[row, base + q] = zero
            for q in range(lo, hi):
                col[row, base + q] = x[n, c0 + c, ih, q * sw + off]
            for q in range(hi, Q):
                col[row, base + q] = zero


@nb.njit(**_FAST)
def _col2im(col, dx, n, c0, R, S, sh, sw, pt, pl, dh, dw, P, Q):
    H, W = dx.shape[2], dx.shape[3]
    cg = col.shape[0] // (R * S)
    for c in prange(cg):  # one thread per input plane: no two threads write the same element
        for r in range(R):
            for s in range(S):
                row = (c * R + r) * S + s
                off = s * dw - pl
                lo, hi = _valid_range(Q, sw, off, W)
                for p in range(P):
                    ih = p * sh - pt + r * dh
                    if ih < 0 or ih >= H:
                        continue
                    base = p * Q
                    for q in range(lo, hi):
                        dx[n, c0 + c, ih, q * sw + off] += col[row, base + q]


@nb.njit(inline="always", cache=True)
def _sort_val(a, b, mode, eps, zero):
    ra = max(a, zero)
    rb = max(b, zero)
    return a + b + (np.sqrt(ra * rb + eps) if mode == 0 else ra * rb)


@nb.njit(**_FAST)
def _epilogue(y, k0, bias, has_bias, scale, has_scale, shift, has_shift, res, combine, relu, mode, eps,
              zero):
    """In place on y (Kg, P*Q), rows k0.. of the output: z = y*scale + shift + bias, combine, relu."""
    for kk in prange(y.shape[0]):
        k = k0 + kk
        a = scale[k] if has_scale else zero
        b = (shift[k] if has_shift else zero) + (bias[k] if has_bias else zero)
        for i in range(y.shape[1]):
            z = (y[kk, i] * a if has_scale else y[kk, i]) + b
            if combine == 1:
                z = z + res[kk, i]
            elif combine == 2:
                z = _sort_val(res[kk, i], z, mode, eps, zero)
            if relu and z < zero:
                z = zero
            y[kk, i] = z


@nb.njit(**_SERIAL)  # the parallel work is inside the helpers and BLAS
def conv2d_fwd(x, xg, wg, yg, R, S, sh, sw, pt, pl, dh, dw, P, Q, direct, bias, has_bias, scale, has_scale,
               shift, has_shift, resg, combine, relu, mode, eps, zero):
    """x (N,C,H,W); views xg (N,G,Cg,H*W), wg (G,Kg,Cg*R*S), yg (N,G,Kg,P*Q), resg like yg (or a
    dummy). direct: 1x1 kernel, stride 1, no padding, so the input plane is its own column matrix."""
    N, G, Kg, PQ = yg.shape
    Cg = xg.shape[2]
    col = np.empty((0 if direct else Cg * R * S, PQ), x.dtype)
    epi = has_bias or has_scale or has_shift or combine != 0 or relu
    for n in range(N):
        for g in range(G):
            if direct:
                np.dot(wg[g], xg[n, g], yg[n, g])
            else:
                _im2col(x, n, g * Cg, R, S, sh, sw, pt, pl, dh, dw, P, Q, col, zero)
                np.dot(wg[g], col, yg[n, g])
            if epi:
                _epilogue(yg[n, g], g * Kg, bias, has_bias, scale, has_scale, shift, has_shift,
                          resg[n, g] if combine != 0 else resg[0, 0], combine, relu, mode, eps, zero)


@nb.njit(**_SERIAL)  # the parallel work is inside the helpers and BLAS
def conv2d_bwd_input(dyg, wt, dx, dxg, R, S, sh, sw, pt, pl, dh, dw, P, Q, direct):
    """dyg (N,G,Kg,P*Q); wt (G,Cg*R*S,Kg) = transposed weight; dx (N,C,H,W) zeroed, dxg its
    (N,G,Cg,H*W) view. Column gradient = W^T dy, scattered back onto the input planes."""
    N, G = dyg.shape[0], dyg.shape[1]
    Cg = dxg.shape[2]
    col = np.empty((0 if direct else wt.shape[1], dyg.shape[3]), dx.dtype)
    for n in range(N):
        for g in range(G):
            if direct:
                np.dot(wt[g], dyg[n, g], dxg[n, g])
            else:
                np.dot(wt[g], dyg[n, g], col)
                _col2im(col, dx, n, g * Cg, R, S, sh, sw, pt, pl, dh, dw, P, Q)


@nb.njit(**_SERIAL)  # the parallel work is inside the helpers and BLAS
def conv2d_bwd_weight(dyg, x, xg, dwg, R, S, sh, sw, pt, pl, dh, dw, P, Q, direct, zero):
    """dwg (G,Kg,Cg*R*S) zeroed; accumulates dy (Kg,P*Q) @ col^T over the images."""
    N, G, Kg, PQ = dyg.shape
    Cg = xg.shape[2]
    col = np.empty((Cg * R * S, PQ), x.dtype)
    part = np.empty((Kg, Cg * R * S), x.dtype)
    for n in range(N):
        for g in range(G):
            if direct:
                np.dot(dyg[n, g], xg[n, g].T, part)
            else:
                _im2col(x, n, g * Cg, R, S, sh, sw, pt, pl, dh, dw, P, Q, col, zero)
                np.dot(dyg[n, g], col.T, part)
            dwg[g] += part


@nb.njit(**_FAST)
def conv2d_bwd_bias(dy3, db, zero):
    """dy3 (N,K,P*Q) -> db (K,)."""
    for k in prange(dy3.shape[1]):
        acc = zero
        for n in range(dy3.shape[0]):
            for i in range(dy3.shape[2]):
                acc += dy3[n, k, i]
        db[k] = acc


# ---------------------------------------------------------------- pooling (x3/y3: (N*C, H, W))
# Forward pooling works an output row at a time: for each window tap, in torch's scan order (window
# rows, then columns), it updates every output of the row -- an inner loop over contiguous outputs
# that the compiler vectorizes, instead of a short loop per output window.
@nb.njit(**_JIT)
def max_pool2d_fwd(x3, y3, idx3, kh, kw, sh, sw, ph, pw, dh, dw, neg_inf):
    H, W = x3.shape[1], x3.shape[2]
    OH, OW = y3.shape[1], y3.shape[2]
    for pln in prange(x3.shape[0]):
        best = y3[pln, 0].copy()
        arg = idx3[pln, 0].copy()
        for oh in range(OH):
            h0 = oh * sh - ph
            h1 = min(h0 + (kh - 1) * dh + 1, H)
            while h0 < 0:
                h0 += dh
            for ow in range(OW):
                w0 = ow * sw - pw
                while w0 < 0:
                    w0 += dw
                best[ow] = neg_inf
                arg[ow] = h0 * W + w0  # torch's index when nothing beats -inf
            for ih in range(h0, h1, dh):
                for j in range(kw):
                    off = j * dw - pw
                    lo, hi = _valid_range(OW, sw, off, W)
                    base = ih * W + off
                    for ow in range(lo, hi):
                        v = x3[pln, ih, ow * sw + off]
                        b = best[ow]
                        take = (v > b) | (v != v)  # NaN wins, as in torch; branch-free so it vectorizes
                        best[ow] = v if take else b
                        arg[ow] = base + ow * sw if take else arg[ow]
            y3[pln, oh, :] = best
            idx3[pln, oh, :] = arg


@nb.njit(**_JIT)
def max_pool2d_bwd(dy2, idx2, dx2):
    """dy2/idx2 (N*C, OH*OW), dx2 (N*C, H*W) zeroed."""
    for pln in prange(dy2.shape[0]):
        for i in range(dy2.shape[1]):
            dx2[pln, idx2[pln, i]] += dy2[pln, i]


@nb.njit(inline="always", cache=True)
def _avg_window(o, stride, pad, k, size):
    """torch's avg_pool2d window: clipped [start, end) and the padded extent."""
    start = o * stride - pad
    end = min(start + k, size + pad)
    ext = end - start
    return max(start, 0), min(end, size), ext


@nb.njit(**_FAST)
def avg_pool2d_fwd(x3, y3, kh, kw, sh, sw, ph, pw, count_include_pad, divisor, zero):
    """divisor > 0 is divisor_override; windows and divisors as torch's avg_pool2d."""
    H, W = x3.shape[1], x3.shape[2]
    OH, OW = y3.shape[1], y3.shape[2]
    for pln in prange(x3.shape[0]):
        acc = y3[pln, 0].copy()
        for oh in range(OH):
            h0, h1, eh = _avg_window(oh, sh, ph, kh, H)
            acc[:] = zero
            for ih in range(h0, h1):
                for j in range(kw):
                    off = j - pw
                    lo, hi = _valid_range(OW, sw, off, W)
                    for ow in range(lo, hi):
                        acc[ow] += x3[pln, ih, ow * sw + off]
            for ow in range(OW):
                w0, w1, ew = _avg_window(ow, sw, pw, kw, W)
                if h0 >= h1 or w0 >= w1:
                    y3[pln, oh, ow] = zero
                    continue
                cnt = divisor if divisor > 0 else (eh * ew if count_include_pad else (h1 - h0) * (w1 - w0))
                y3[pln, oh, ow] = acc[ow] / x3.dtype.type(cnt)


@nb.njit(**_FAST)
def avg_pool2d_bwd(dy3, dx3, kh, kw, sh, sw, ph, pw, count_include_pad, divisor):
    """dx3 zeroed; each output's gradient spread evenly over its window."""
    H, W = dx3.shape[1], dx3.shape[2]
    OH, OW = dy3.shape[1], dy3.shape[2]
    for pln in prange(dy3.shape[0]):
        for oh in range(OH):
            h0, h1, eh = _avg_window(oh, sh, ph, kh, H)
            for ow in range(OW):
                w0, w1, ew = _avg_window(ow, sw, pw, kw, W)
                if h0 >= h1 or w0 >= w1:
                    continue
                cnt = divisor if divisor > 0 else (eh * ew if count_include_pad else (h1 - h0) * (w1 - w0))
                g = dy3[pln, oh, ow] / dy3.dtype.type(cnt)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        dx3[pln, ih, iw] += g


@nb.njit(**_FAST)
def adaptive_avg_pool2d(x3, y3, backward, zero):
    """Same conventions as avg_pool2d; windows [floor(o*H/OH), ceil((o+1)*H/OH))."""
    if backward:
        H, W, OH, OW = y3.shape[1], y3.shape[2], x3.shape[1], x3.shape[2]
    else:
        H, W, OH, OW = x3.shape[1], x3.shape[2], y3.shape[1], y3.shape[2]
    for pln in prange(x3.shape[0]):
        for oh in range(OH):
            h0 = oh * H // OH
            h1 = -((-(oh + 1) * H) // OH)
            for ow in range(OW):
                w0 = ow * W // OW
                w1 = -((-(ow + 1) * W) // OW)
                cnt = (h1 - h0) * (w1 - w0)
                if backward:
                    g = x3[pln, oh, ow] / x3.dtype.type(cnt)
                    for ih in range(h0, h1):
                        for iw in range(w0, w1):
                            y3[pln, ih, iw] += g
                else:
                    acc = zero
                    for ih in range(h0, h1):
                        for iw in range(w0, w1):
                            acc += x3[pln, ih, iw]
                    y3[pln, oh, ow] = acc / x3.dtype.type(cnt)


# ---------------------------------------------------------------- elementwise (flat arrays)
@nb.njit(**_JIT)
def relu_fwd(x, y, zero):
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = zero if v < zero else v  # NaN passes through


@nb.njit(**_JIT)
def relu_bwd(g, r, dx, zero):
    for i in prange(g.shape[0]):
        dx[i] = g[i] if r[i] > zero else zero


@nb.njit(**_JIT)
def sort_fwd(a, b, y, mode, eps, zero):
    for i in prange(a.shape[0]):
        y[i] = _sort_val(a[i], b[i], mode, eps, zero)


@nb.njit(**_JIT)
def sort_bwd(g, a, b, ga, gb, mode, eps, zero, one, half):
    for i in prange(g.shape[0]):
        av, bv = a[i], b[i]
        ra = max(av, zero)
        rb = max(bv, zero)
        if mode == 0:
            d = half / np.sqrt(ra * rb + eps)
            da, db = rb * d, ra * d
        else:
            da, db = rb, ra
        ga[i] = g[i] * (one + (da if av > zero else zero))
        gb[i] = g[i] * (one + (db if bv > zero else zero))
