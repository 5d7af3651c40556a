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
# Inner-loop indices are cast to unsigned: numba guards a signed index it cannot prove non-negative
# with a wraparound select, which turns strided loads into gathers (3-7x slower pooling, im2col).
_U = np.uintp


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
                col[row, _U(base + q)] = zero
            src = x[n, c0 + c, ih]
            if sw == 1:  # a literal stride: a contiguous copy
                for q in range(lo, hi):
                    col[row, _U(base + q)] = src[_U(q + off)]
            else:
                for q in range(lo, hi):
                    col[row, _U(base + q)] = src[_U(q * sw + off)]
            for q in range(hi, Q):
                col[row, _U(base + q)] = zero


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
                    dst = dx[n, c0 + c, ih]
                    for q in range(lo, hi):
                        dst[_U(q * sw + off)] += col[row, _U(base + q)]


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


@nb.njit(inline="always", cache=True)
def _epilogue_images(y3, bias, has_bias, scale, has_scale, shift, has_shift, res3, combine, relu, mode, eps, zero):
    """conv2d_fwd's epilogue on whole images after the convolution: y3 and res3 are (N, K, P*Q) views of
    the output and the residual (a dummy without a combine)."""
    if has_bias or has_scale or has_shift or combine != 0 or relu:
        for n in range(y3.shape[0]):
            _epilogue(y3[n], 0, bias, has_bias, scale, has_scale, shift, has_shift,
                      res3[n] if combine != 0 else res3[0], combine, relu, mode, eps, zero)


@nb.njit(**_SERIAL)  # the parallel work is inside the helpers and BLAS
def conv2d_fwd(x, xg, wg, yg, col, R, S, sh, sw, pt, pl, dh, dw, P, Q, direct, bias, has_bias, scale, has_scale,
               shift, has_shift, resg, combine, relu, mode, eps, zero):
    """x (N,C,H,W); views xg (N,G,Cg,H*W), wg (G,Kg,Cg*R*S), yg (N,G,Kg,P*Q), resg like yg (or a
    dummy); col (Cg*R*S, P*Q) work space. direct: 1x1 kernel, stride 1, no padding, so the input plane
    is its own column matrix.
    The epilogue (bias, scale, shift, combine, relu) runs on each (image, group) block while it is
    still in cache."""
    N, G, Kg, PQ = yg.shape
    Cg = xg.shape[2]
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


# ---------------------------------------------------------------- depthwise (groups == C)
# Each output reduced in registers over its window (as the pooling kernels below): a GEMM per channel
# would be a 1-row product. Literal-size spans for 3x3 windows at stride 1 and 2.
@nb.njit(inline="always", cache=True)
def _dw_span(x2, wk, yrow, lo, hi, r0, i0, nh, DH, J0, J1, SW, DW, off, zero):
    """yrow[lo:hi] from the input plane x2 and the window's weights wk (R, S): window rows r0 + i*DH
    (weight rows i0 + i, i < nh), columns ow*SW + off + j*DW (J0 <= j < J1), all inside the input."""
    for ow in range(lo, hi):
        c0 = ow * SW + off
        acc = zero
        for i in range(nh):
            for j in range(J0, J1):
                acc += x2[_U(r0 + i * DH), _U(c0 + j * DW)] * wk[_U(i0 + i), _U(j)]
        yrow[ow] = acc


@nb.njit(inline="always", cache=True)
def _dw_row3(xr0, xr1, xr2, yrow, lo, hi, SW, off, wk):
    """yrow[lo:hi] of a 3x3 undilated window: input rows xr0..xr2 (1-D views), columns ow*SW + off +
    0..2, the nine weights wk (3, 3) in registers; with SW a literal the loop vectorizes along the row
    (a 4-D index per tap did not)."""
    w00, w01, w02 = wk[0, 0], wk[0, 1], wk[0, 2]
    w10, w11, w12 = wk[1, 0], wk[1, 1], wk[1, 2]
    w20, w21, w22 = wk[2, 0], wk[2, 1], wk[2, 2]
    for ow in range(lo, hi):
        c = _U(ow * SW + off)
        c1, c2 = c + _U(1), c + _U(2)
        yrow[ow] = (w00 * xr0[c] + w01 * xr0[c1] + w02 * xr0[c2] + w10 * xr1[c] + w11 * xr1[c1] + w12 * xr1[c2] +
                    w20 * xr2[c] + w21 * xr2[c1] + w22 * xr2[c2])


@nb.njit(**_FAST)
def conv2d_depthwise(x, w, y, sh, sw, pt, pl, dh, dw, zero):
    """y (N, K, P, Q) = the convolution of x (N, C, H, W) with w (K, 1, R, S), groups C (output
    channel k reads input channel k // (K / C))."""
    N, C, H, W = x.shape
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    R, S = w.shape[2], w.shape[3]
    m = K // C
    lo, hi = _inner_span(Q, sw, pl, S, dw, W)
    lit = dh == 1 and dw == 1 and R == 3 and S == 3
    for nk in prange(N * K):
        n, k = nk // K, nk % K
        x2, wk, y2 = x[n, k // m], w[k, 0], y[n, k]
        for oh in range(P):
            start = oh * sh - pt
            i0, i1 = _valid_range(R, dh, start, H)
            r0, nh = start + i0 * dh, i1 - i0
            yrow = y2[oh]
            if nh <= 0:
                for ow in range(Q):
                    yrow[ow] = zero
                continue
            for ow in range(lo):  # border columns: the taps inside the input
                j0, j1 = _valid_range(S, dw, ow * sw - pl, W)
                _dw_span(x2, wk, yrow, ow, ow + 1, r0, i0, nh, dh, j0, j1, sw, dw, -pl, zero)
            for ow in range(hi, Q):
                j0, j1 = _valid_range(S, dw, ow * sw - pl, W)
                _dw_span(x2, wk, yrow, ow, ow + 1, r0, i0, nh, dh, j0, j1, sw, dw, -pl, zero)
            if not (lit and nh == 3 and sw <= 2):
                _dw_span(x2, wk, yrow, lo, hi, r0, i0, nh, dh, 0, S, sw, dw, -pl, zero)
        if lit and sw <= 2:  # the interior columns of the rows whose whole window is inside
            _dw_plane3(x2, wk, y2, sh, sw, pt, pl, lo, hi)


@nb.njit(**_SERIAL)
def _dw_plane3(x2, wk, y2, sh, sw, pt, pl, lo, hi):
    """Output columns [lo, hi) of the rows of plane y2 whose 3x3 undilated window lies inside x2, by
    _dw_row3 with a literal column stride. A function of its own: inlined into the plane loop with its
    border cases the row loop stayed scalar (0.66 against 0.27 ms on 32x112x112)."""
    rlo, rhi = _inner_span(y2.shape[0], sh, pt, 3, 1, x2.shape[0])
    for oh in range(rlo, rhi):
        r0 = _U(oh * sh - pt)
        if sw == 1:
            _dw_row3(x2[r0], x2[r0 + _U(1)], x2[r0 + _U(2)], y2[oh], lo, hi, 1, -pl, wk)
        else:
            _dw_row3(x2[r0], x2[r0 + _U(1)], x2[r0 + _U(2)], y2[oh], lo, hi, 2, -pl, wk)


@nb.njit(**_FAST)
def conv2d_depthwise_cl(xc, wc, yc, sh, sw, pt, pl, dh, dw, zero):
    """Multiplier 1 on channels-last copies, for planes too small to vectorize along: xc (N, H, W, C),
    wc (R, S, C), yc (N, P, Q, C); the loops over channels vectorize."""
    N, H, W, C = xc.shape
    P, Q = yc.shape[1], yc.shape[2]
    R, S = wc.shape[0], wc.shape[1]
    for npq in prange(N * P):
        n, oh = npq // P, npq % P
        for ow in range(Q):
            for c in range(C):
                yc[n, oh, ow, _U(c)] = zero
            for r in range(R):
                ih = oh * sh - pt + r * dh
                if ih < 0 or ih >= H:
                    continue
                for s in range(S):
                    iw = ow * sw - pl + s * dw
                    if iw < 0 or iw >= W:
                        continue
                    for c in range(C):
                        yc[n, oh, ow, _U(c)] += xc[n, _U(ih), _U(iw), _U(c)] * wc[_U(r), _U(s), _U(c)]


@nb.njit(**_FAST)
def conv2d_depthwise_bwd_input(dy, w, dx, sh, sw, pt, pl, dh, dw):
    """dx (N, C, H, W), zeroed: each output's gradient times its window's weights, scattered per input
    plane (its m = K / C output planes one after another, so no two threads write one plane)."""
    N, C, H, W = dx.shape
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    R, S = w.shape[2], w.shape[3]
    m = K // C
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for k in range(c * m, c * m + m):
            for p in range(P):
                for r in range(R):
                    h = p * sh - pt + r * dh
                    if h < 0 or h >= H:
                        continue
                    for s in range(S):
                        off = s * dw - pl
                        lo, hi = _valid_range(Q, sw, off, W)
                        wt = w[k, 0, r, s]
                        for q in range(lo, hi):
                            dx[n, c, _U(h), _U(q * sw + off)] += dy[n, k, p, _U(q)] * wt


@nb.njit(**_FAST)
def conv2d_depthwise_bwd_weight(dy, x, dwt, sh, sw, pt, pl, dh, dw, zero):
    """dwt (K, 1, R, S): per output channel and tap, the sum over images and outputs of its gradient
    times the input the tap reads."""
    N, C, H, W = x.shape
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    R, S = dwt.shape[2], dwt.shape[3]
    m = K // C
    for k in prange(K):
        c = k // m
        for r in range(R):
            for s in range(S):
                off = s * dw - pl
                lo, hi = _valid_range(Q, sw, off, W)
                acc = zero
                for n in range(N):
                    for p in range(P):
                        h = p * sh - pt + r * dh
                        if h < 0 or h >= H:
                            continue
                        for q in range(lo, hi):
                            acc += dy[n, k, p, _U(q)] * x[n, c, _U(h), _U(q * sw + off)]
                dwt[k, 0, r, s] = acc


@nb.njit(**_SERIAL)  # the parallel work is inside the kernel and the epilogue
def conv2d_fwd_depthwise(x, w, y, y3, sh, sw, pt, pl, dh, dw, bias, has_bias, scale, has_scale, shift, has_shift,
                         res3, combine, relu, mode, eps, zero):
    """conv2d_fwd for groups == C, the epilogue as in _epilogue_images. Rows of fewer than 16 outputs
    with multiplier 1 go through channels-last copies."""
    if y.shape[3] < 16 and w.shape[0] == x.shape[1]:
        yc = np.empty((y.shape[0], y.shape[2], y.shape[3], y.shape[1]), y.dtype)
        conv2d_depthwise_cl(np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                            np.ascontiguousarray(w[:, 0].transpose(1, 2, 0)), yc, sh, sw, pt, pl, dh, dw, zero)
        y[:] = yc.transpose(0, 3, 1, 2)
    else:
        conv2d_depthwise(x, w, y, sh, sw, pt, pl, dh, dw, zero)
    _epilogue_images(y3, bias, has_bias, scale, has_scale, shift, has_shift, res3, combine, relu, mode, eps, zero)


# ---------------------------------------------------------------- Winograd F(4x4, 3x3)
# float32 3x3 stride-1 convolutions, groups 1 (the rule of the native kernel: fastconv/numba/kernels.py
# `winograd`). Output tile (n, ty, tx) covers rows 4ty.. and columns 4tx.. of the output; its 6x6
# input tile starts at input row 4ty - pad_top, column 4tx - pad_left. Per block of tiles:
#   V[a*6+b, c, t] = (B^T d B)[a, b]     (input tiles, zero outside the input)
#   M[a*6+b, k, t] = U[a*6+b] @ V[a*6+b]  (36 GEMMs, U = G g G^T from the weights)
#   y tile = A^T m A                      (clipped to the output)
# The transforms apply the 1-D matrices to rows, then columns, each as an inner loop across the
# columns or tiles of a row, which vectorizes.
WINO_TILE_BLOCK = 512  # tiles per block at most: V and M of a 64-channel layer are 4.7 MB each


def winograd_block(N, P, Q):
    """Tiles per block: whole tile rows, blocks of (nearly) equal size."""
    TW = (Q + 3) // 4
    G = N * ((P + 3) // 4)
    nblocks = -(-G // max(1, WINO_TILE_BLOCK // TW))
    return -(-G // nblocks) * TW


_F32 = np.float32  # the Winograd kernels are float32 only; literals must not widen them to float64


@nb.njit(inline="always", cache=True)
def _bt6(d0, d1, d2, d3, d4, d5):
    """B^T (6x6) applied to a column of 6 input values."""
    f, g, h = _F32(4), _F32(5), _F32(2)
    return (f * d0 - g * d2 + d4, d3 + d4 - f * (d1 + d2), f * (d1 - d2) - d3 + d4,
            h * (d3 - d1) + d4 - d2, h * (d1 - d3) + d4 - d2, f * d1 - g * d3 + d5)


@nb.njit(inline="always", cache=True)
def _at6(m0, m1, m2, m3, m4, m5):
    """A^T (4x6) applied to a column of 6 products."""
    p, q = m1 + m2, m1 - m2
    r, u = m3 + m4, m3 - m4
    return m0 + p + r, q + _F32(2) * u, p + _F32(4) * r, q + _F32(8) * u + m5


@nb.njit(inline="always", cache=True)
def _g3(g0, g1, g2):
    """G (6x3) applied to a column of 3 weights."""
    s = g0 + g2
    e = g0 / _F32(24) + g2 / _F32(6)
    return g0 / _F32(4), -(s + g1) / _F32(6), (g1 - s) / _F32(6), e + g1 / _F32(12), e - g1 / _F32(12), g2


@nb.njit(**_FAST)
def winograd_weight(w, U):
    """w (K, C, 3, 3) -> U (36, K, C) = G g G^T per (k, c). The 36 values of a pair go to a row block
    first: written straight into U they land K*C apart, in one L1 set when that is a multiple of
    4 KB, which made the transform 5x slower."""
    K, C = w.shape[0], w.shape[1]
    for k in prange(K):
        u36 = np.empty((36, C), w.dtype)
        for c in range(C):
            t0 = _g3(w[k, c, 0, 0], w[k, c, 1, 0], w[k, c, 2, 0])  # G applied to the weight columns
            t1 = _g3(w[k, c, 0, 1], w[k, c, 1, 1], w[k, c, 2, 1])
            t2 = _g3(w[k, c, 0, 2], w[k, c, 1, 2], w[k, c, 2, 2])
            for a in range(6):
                u = _g3(t0[a], t1[a], t2[a])
                for b in range(6):
                    u36[_U(a * 6 + b), c] = u[b]
        for ab in range(36):
            U[ab, k, :] = u36[ab]


@nb.njit(**_FAST)
def _wino_input(x, g0, g1, TH, TW, pt, pl, V, zrow):
    """V[:, c, (g - g0) * TW + tx] for the tile rows g in [g0, g1) (of all images, g = n * TH + ty)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    WP = 4 * TW + 2
    for c in prange(C):
        R = np.empty((6, WP), x.dtype)  # B^T applied down the columns of one tile row's 6 input rows
        for g in range(g0, g1):
            n, ty = g // TH, g % TH
            r0 = 4 * ty - pt
            rows = [zrow] * 6
            for i in range(6):
                if 0 <= r0 + i < H:
                    rows[i] = x[n, c, r0 + i]
            R[:, :] = _F32(0)
            lo, hi = max(0, pl), min(WP, W + pl)  # padded columns that lie inside the input
            d0, d1, d2, d3, d4, d5 = rows[0], rows[1], rows[2], rows[3], rows[4], rows[5]
            for u in range(lo, hi):
                iu = _U(u - pl)
                R[0, u], R[1, u], R[2, u], R[3, u], R[4, u], R[5, u] = _bt6(d0[iu], d1[iu], d2[iu], d3[iu],
                                                                            d4[iu], d5[iu])
            t0 = (g - g0) * TW
            for a in range(6):
                ra = R[a]
                for tx in range(TW):
                    b0 = _U(4 * tx)
                    v = _bt6(ra[b0], ra[b0 + 1], ra[b0 + 2], ra[b0 + 3], ra[b0 + 4], ra[b0 + 5])
                    for b in range(6):
                        V[a * 6 + b, c, t0 + tx] = v[b]


@nb.njit(**_FAST)
def _wino_output(M, y, g0, g1, TH, TW):
    """The output rows of tile rows [g0, g1) from the products M (36, K, tiles)."""
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    for k in prange(K):
        S = np.empty((4, 6, TW), y.dtype)  # A^T applied down the columns of each tile
        row = np.empty(4 * TW, y.dtype)
        for g in range(g0, g1):
            n, ty = g // TH, g % TH
            t0 = (g - g0) * TW
            for b in range(6):
                for tx in range(TW):
                    t = t0 + tx
                    S[0, b, tx], S[1, b, tx], S[2, b, tx], S[3, b, tx] = _at6(
                        M[b, k, t], M[6 + b, k, t], M[12 + b, k, t], M[18 + b, k, t], M[24 + b, k, t],
                        M[30 + b, k, t])
            for i in range(min(4, P - 4 * ty)):
                s = S[i]
                for tx in range(TW):
                    o = _at6(s[0, tx], s[1, tx], s[2, tx], s[3, tx], s[4, tx], s[5, tx])
                    for j in range(4):
                        row[_U(4 * tx + j)] = o[j]
                y[n, k, 4 * ty + i, :] = row[:Q]


@nb.njit(**_FAST)
def conv2d_winograd(x, U, y, pt, pl, V, M):
    """y (N, K, P, Q) = the 3x3 stride-1 convolution of x (N, C, H, W) with pads pt (top), pl (left)
    and weights U (36, K, C) from winograd_weight; work spaces V (36, C, T) and M (36, K, T) for
    blocks of T tiles (winograd_block)."""
    N, C = x.shape[0], x.shape[1]
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    TH, TW = (P + 3) // 4, (Q + 3) // 4
    G = N * TH  # tile rows of all images
    rows = V.shape[2] // TW
    # A last, shorter block leaves V's last columns stale: the GEMMs' columns are independent, and
    # those of M are never read.
    zrow = np.zeros(x.shape[3], x.dtype)
    for g0 in range(0, G, rows):
        g1 = min(G, g0 + rows)
        _wino_input(x, g0, g1, TH, TW, pt, pl, V, zrow)
        for a in prange(36):
            np.dot(U[a], V[a], M[a])
        _wino_output(M, y, g0, g1, TH, TW)


@nb.njit(**_SERIAL)  # the parallel work is inside the transforms, the GEMM loop and the epilogue
def conv2d_fwd_winograd(x, w, y, y3, pt, pl, U, V, M, bias, has_bias, scale, has_scale, shift, has_shift, res3,
                        combine, relu, mode, eps, zero):
    """conv2d_fwd for a float32 3x3 stride-1 undilated convolution with groups 1 through Winograd;
    U, V, M work spaces, the epilogue as in _epilogue_images."""
    winograd_weight(w, U)
    conv2d_winograd(x, U, y, pt, pl, V, M)
    _epilogue_images(y3, bias, has_bias, scale, has_scale, shift, has_shift, res3, combine, relu, mode, eps, zero)


@nb.njit(**_SERIAL)  # the parallel work is inside the helpers and BLAS
def conv2d_bwd_input(dyg, wt, dx, dxg, col, R, S, sh, sw, pt, pl, dh, dw, P, Q, direct):
    """dyg (N,G,Kg,P*Q); wt (G,Cg*R*S,Kg) = transposed weight; dx (N,C,H,W) zeroed, dxg its
    (N,G,Cg,H*W) view; col (Cg*R*S, P*Q) work space. Column gradient = W^T dy, scattered back onto
    the input planes."""
    N, G = dyg.shape[0], dyg.shape[1]
    Cg = dxg.shape[2]
    for n in range(N):
        for g in range(G):
            if direct:
                np.dot(wt[g], dyg[n, g], dxg[n, g])
            else:
                np.dot(wt[g], dyg[n, g], col)
                _col2im(col, dx, n, g * Cg, R, S, sh, sw, pt, pl, dh, dw, P, Q)


@nb.njit(**_SERIAL)  # the parallel work is inside the helpers and BLAS
def conv2d_bwd_weight(dyg, x, xg, dwg, col, part, R, S, sh, sw, pt, pl, dh, dw, P, Q, direct, zero):
    """dwg (G,Kg,Cg*R*S) zeroed; accumulates dy (Kg,P*Q) @ col^T over the images (work spaces col
    (Cg*R*S, P*Q) and part (Kg, Cg*R*S))."""
    N, G, Kg, PQ = dyg.shape
    Cg = xg.shape[2]
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
# Each output is reduced in registers over its window. Output columns whose window lies wholly inside
# the input form one span per output row; the common window shapes run that span with literal sizes
# (the loops unroll and vectorize across outputs), every other shape and the border outputs with
# runtime sizes. Indices are unsigned (_U).
_SHAPES = ((3, 3, 2), (2, 2, 2), (3, 3, 1))  # (kh, kw, stride_w) with literal-size spans, dilation 1


@nb.njit(inline="always", cache=True)
def _shape_id(kh, kw, sw, dh, dw):
    """1 + the index of (kh, kw, sw) in _SHAPES (undilated windows), else 0."""
    if dh != 1 or dw != 1:
        return 0
    if kh == 3 and kw == 3:
        return 1 if sw == 2 else (3 if sw == 1 else 0)
    return 2 if kh == 2 and kw == 2 and sw == 2 else 0


@nb.njit(inline="always", cache=True)
def _inner_span(OW, sw, pw, kw, dw, W):
    """[lo, hi): the output columns whose whole window lies inside the input."""
    lo, hi = _valid_range(OW, sw, -pw, W - (kw - 1) * dw)
    lo = min(lo, OW)
    return lo, max(lo, min(hi, OW))


@nb.njit(inline="always", cache=True)
def _window_rows(oh, kh, sh, ph, dh, H):
    """First input row and number of rows of output row oh's window inside the input."""
    start = oh * sh - ph
    i0, i1 = _valid_range(kh, dh, start, H)
    return start + i0 * dh, i1 - i0


@nb.njit(inline="always", cache=True)
def _max_span(x3, y3, idx3, want_idx, p, oh, lo, hi, r0, nh, DH, J0, J1, SW, DW, off, W, neg_inf):
    """y3[p, oh, lo:hi]: the max over rows r0 + i*DH (i < nh) and columns ow*SW + off + j*DW
    (J0 <= j < J1), all inside the input. torch's order: the first maximum wins, a NaN wins over
    numbers (the last NaN), a window of -inf reports its first position."""
    for ow in range(lo, hi):
        c0 = ow * SW + off
        b = neg_inf
        bi = r0 * W + c0 + J0 * DW
        for i in range(nh):
            r = r0 + i * DH
            for j in range(J0, J1):
                c = c0 + j * DW
                v = x3[p, _U(r), _U(c)]
                take = (v > b) | (v != v)  # branch-free, so the span vectorizes
                b = v if take else b
                if want_idx:
                    bi = r * W + c if take else bi
        y3[p, oh, ow] = b
        if want_idx:
            idx3[p, oh, ow] = bi


@nb.njit(inline="always", cache=True)
def _max_pool(x3, y3, idx3, want_idx, kh, kw, sh, sw, ph, pw, dh, dw, neg_inf):
    H, W = x3.shape[1], x3.shape[2]
    OH, OW = y3.shape[1], y3.shape[2]
    lo, hi = _inner_span(OW, sw, pw, kw, dw, W)
    sid = _shape_id(kh, kw, sw, dh, dw)
    for p in prange(x3.shape[0]):
        for oh in range(OH):
            r0, nh = _window_rows(oh, kh, sh, ph, dh, H)
            for ow in range(OW):  # border columns: the taps inside the input
                if ow == lo:
                    break
                j0, j1 = _valid_range(kw, dw, ow * sw - pw, W)
                _max_span(x3, y3, idx3, want_idx, p, oh, ow, ow + 1, r0, nh, dh, j0, j1, sw, dw, -pw, W, neg_inf)
            for ow in range(hi, OW):
                j0, j1 = _valid_range(kw, dw, ow * sw - pw, W)
                _max_span(x3, y3, idx3, want_idx, p, oh, ow, ow + 1, r0, nh, dh, j0, j1, sw, dw, -pw, W, neg_inf)
            if sid == 1 and nh == 3:
                _max_span(x3, y3, idx3, want_idx, p, oh, lo, hi, r0, 3, 1, 0, 3, 2, 1, -pw, W, neg_inf)
            elif sid == 2 and nh == 2:
                _max_span(x3, y3, idx3, want_idx, p, oh, lo, hi, r0, 2, 1, 0, 2, 2, 1, -pw, W, neg_inf)
            elif sid == 3 and nh == 3:
                _max_span(x3, y3, idx3, want_idx, p, oh, lo, hi, r0, 3, 1, 0, 3, 1, 1, -pw, W, neg_inf)
            else:
                _max_span(x3, y3, idx3, want_idx, p, oh, lo, hi, r0, nh, dh, 0, kw, sw, dw, -pw, W, neg_inf)


@nb.njit(**_JIT)
def max_pool2d_fwd(x3, y3, idx3, kh, kw, sh, sw, ph, pw, dh, dw, neg_inf):
    _max_pool(x3, y3, idx3, True, kh, kw, sh, sw, ph, pw, dh, dw, neg_inf)


@nb.njit(**_JIT)
def max_pool2d_values(x3, y3, kh, kw, sh, sw, ph, pw, dh, dw, neg_inf):
    """max_pool2d_fwd without indices (no gradient can reach the call)."""
    _max_pool(x3, y3, y3, False, kh, kw, sh, sw, ph, pw, dh, dw, neg_inf)


@nb.njit(**_JIT)
def max_pool2d_bwd(dy2, idx2, dx2):
    """dy2/idx2 (N*C, OH*OW), dx2 (N*C, H*W) zeroed. An index outside the plane (a window with no tap
    inside the input) passes nothing on."""
    hw = dx2.shape[1]
    for pln in prange(dy2.shape[0]):
        for i in range(dy2.shape[1]):
            j = idx2[pln, i]
            if 0 <= j < hw:
                dx2[pln, _U(j)] += dy2[pln, i]


@nb.njit(inline="always", cache=True)
def _avg_window(o, stride, pad, k, size):
    """torch's avg_pool2d window: clipped [start, end) and the padded extent."""
    start = o * stride - pad
    end = min(start + k, size + pad)
    ext = end - start
    return max(start, 0), min(end, size), ext


@nb.njit(inline="always", cache=True)
def _avg_count(o, stride, pad, k, size, count_include_pad):
    """First index and size of output o's window inside the input, and its factor of the divisor."""
    a, b, ext = _avg_window(o, stride, pad, k, size)
    return a, max(b - a, 0), (ext if count_include_pad else max(b - a, 0))


@nb.njit(inline="always", cache=True)
def _sum_span(x3, y3, p, oh, lo, hi, r0, nh, J, SW, off, div):
    """y3[p, oh, lo:hi] = the sum over rows r0 .. r0+nh-1 and columns ow*SW + off + j (j < J),
    all inside the input, divided by div."""
    for ow in range(lo, hi):
        c0 = ow * SW + off
        acc = x3.dtype.type(0)
        for i in range(nh):
            for j in range(J):
                acc += x3[p, _U(r0 + i), _U(c0 + j)]
        y3[p, oh, ow] = acc / div


@nb.njit(**_FAST)
def avg_pool2d_fwd(x3, y3, kh, kw, sh, sw, ph, pw, count_include_pad, divisor, zero):
    """divisor != 0 is divisor_override; windows and divisors as torch's avg_pool2d (an empty
    window gives 0)."""
    H, W = x3.shape[1], x3.shape[2]
    OH, OW = y3.shape[1], y3.shape[2]
    lo, hi = _inner_span(OW, sw, pw, kw, 1, W)
    sid = _shape_id(kh, kw, sw, 1, 1)
    fixed = x3.dtype.type(divisor)
    for p in prange(x3.shape[0]):
        for oh in range(OH):
            r0, nh, fh = _avg_count(oh, sh, ph, kh, H, count_include_pad)
            for ow in range(OW):
                if lo <= ow < hi:
                    continue
                c0, nw, fw = _avg_count(ow, sw, pw, kw, W, count_include_pad)
                if nh == 0 or nw == 0:
                    y3[p, oh, ow] = zero
                    continue
                div = fixed if divisor != 0 else x3.dtype.type(fh * fw)
                _sum_span(x3, y3, p, oh, ow, ow + 1, r0, nh, nw, 0, c0, div)
            if nh == 0:
                for ow in range(lo, hi):
                    y3[p, oh, ow] = zero
                continue
            div = fixed if divisor != 0 else x3.dtype.type(fh * kw)
            if sid == 1 and nh == 3:
                _sum_span(x3, y3, p, oh, lo, hi, r0, 3, 3, 2, -pw, div)
            elif sid == 2 and nh == 2:
                _sum_span(x3, y3, p, oh, lo, hi, r0, 2, 2, 2, -pw, div)
            elif sid == 3 and nh == 3:
                _sum_span(x3, y3, p, oh, lo, hi, r0, 3, 3, 1, -pw, div)
            else:
                _sum_span(x3, y3, p, oh, lo, hi, r0, nh, kw, sw, -pw, div)


@nb.njit(inline="always", cache=True)
def _spread_span(dy3, dx3, p, oh, lo, hi, r0, nh, J, SW, off, div):
    """The gradients of outputs y3[p, oh, lo:hi] spread over their windows (as in _sum_span). (Literal
    window sizes, which speed up the forward spans, gained nothing here: the scatter stays scalar.)"""
    for i in range(nh):
        for ow in range(lo, hi):
            g = dy3[p, oh, ow] / div
            for j in range(J):
                dx3[p, _U(r0 + i), _U(ow * SW + off + j)] += g


@nb.njit(**_FAST)
def avg_pool2d_bwd(dy3, dx3, kh, kw, sh, sw, ph, pw, count_include_pad, divisor):
    """dx3 zeroed; each output's gradient spread evenly over its window."""
    H, W = dx3.shape[1], dx3.shape[2]
    OH, OW = dy3.shape[1], dy3.shape[2]
    lo, hi = _inner_span(OW, sw, pw, kw, 1, W)
    fixed = dy3.dtype.type(divisor)
    for p in prange(dy3.shape[0]):
        for oh in range(OH):
            r0, nh, fh = _avg_count(oh, sh, ph, kh, H, count_include_pad)
            if nh == 0:
                continue
            for ow in range(OW):
                if lo <= ow < hi:
                    continue
                c0, nw, fw = _avg_count(ow, sw, pw, kw, W, count_include_pad)
                if nw > 0:
                    div = fixed if divisor != 0 else dy3.dtype.type(fh * fw)
                    _spread_span(dy3, dx3, p, oh, ow, ow + 1, r0, nh, nw, 0, c0, div)
            div = fixed if divisor != 0 else dy3.dtype.type(fh * kw)
            _spread_span(dy3, dx3, p, oh, lo, hi, r0, nh, kw, sw, -pw, div)


@nb.njit(inline="always", cache=True)
def _adaptive_window(o, size, out):
    """[start, end) of adaptive pooling's window o: [floor(o*size/out), ceil((o+1)*size/out))."""
    return o * size // out, -((-(o + 1) * size) // out)


@nb.njit(**_FAST)
def adaptive_avg_pool2d_fwd(x3, y3, zero):
    H, W = x3.shape[1], x3.shape[2]
    OH, OW = y3.shape[1], y3.shape[2]
    x2 = x3.reshape(x3.shape[0], H * W)
    for p in prange(x3.shape[0]):
        for oh in range(OH):
            h0, h1 = _adaptive_window(oh, H, OH)
            if OW == 1:  # whole rows (global pooling): one contiguous run
                acc = zero
                for i in range(h0 * W, h1 * W):
                    acc += x2[p, _U(i)]
                y3[p, oh, 0] = acc / x3.dtype.type((h1 - h0) * W)
                continue
            for ow in range(OW):
                w0, w1 = _adaptive_window(ow, W, OW)
                acc = zero
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        acc += x3[p, _U(ih), _U(iw)]
                y3[p, oh, ow] = acc / x3.dtype.type((h1 - h0) * (w1 - w0))


@nb.njit(inline="always", cache=True)
def _adaptive_sources(size, out):
    """Per input index i: [first, last) of the adaptive windows that contain i (windows are sorted
    and overlap by at most one, so the containing ones are consecutive); and each window's size."""
    first, last = np.full(size, out, np.intp), np.zeros(size, np.intp)
    count = np.empty(out, np.intp)
    for o in range(out):
        a, b = _adaptive_window(o, size, out)
        count[o] = b - a
        for i in range(a, b):
            first[i] = min(first[i], o)
            last[i] = o + 1
    return first, last, count


@nb.njit(**_FAST)
def adaptive_avg_pool2d_bwd(dy3, dx3):
    """Each input's gradient gathered from the windows that contain it: one write per element, no
    zero fill and no read-modify-write."""
    H, W = dx3.shape[1], dx3.shape[2]
    OH, OW = dy3.shape[1], dy3.shape[2]
    if OH == 1 and OW == 1:  # global pooling: a constant plane
        dx2 = dx3.reshape(dx3.shape[0], H * W)
        for p in prange(dy3.shape[0]):
            v = dy3[p, 0, 0] / dy3.dtype.type(H * W)
            for i in range(H * W):
                dx2[p, _U(i)] = v
        return
    h_first, h_last, h_count = _adaptive_sources(H, OH)
    w_first, w_last, w_count = _adaptive_sources(W, OW)
    zero = dy3.dtype.type(0)
    for p in prange(dy3.shape[0]):
        row = np.empty(OW, dy3.dtype)  # input row ih's gradient per output column
        for ih in range(H):
            for ow in range(OW):
                acc = zero
                for oh in range(h_first[ih], h_last[ih]):
                    acc += dy3[p, oh, ow] / dy3.dtype.type(h_count[oh] * w_count[ow])
                row[ow] = acc
            for iw in range(W):
                acc = zero
                for ow in range(w_first[iw], w_last[iw]):
                    acc += row[ow]
                dx3[p, ih, iw] = acc


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
