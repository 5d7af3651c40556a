"""im2col + GEMM convolutions (forward, input and weight gradients, bias gradient) and the fused
epilogue they and the other forward paths apply."""
from fastconv.numba.cpu._jit import _FAST, _SERIAL, _U, _valid_range, nb, np, prange
from fastconv.numba.cpu.eltwise import _sort_val


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
