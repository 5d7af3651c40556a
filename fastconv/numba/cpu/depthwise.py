"""Depthwise convolutions (groups == C): forward in NCHW and channels-last, both gradients."""
from fastconv.numba.cpu._jit import _FAST, _SERIAL, _U, _inner_span, _valid_range, nb, np, prange
from fastconv.numba.cpu.gemm import _epilogue_images


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
