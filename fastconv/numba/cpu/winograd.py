"""Winograd F(4x4, 3x3) forward (float32, 3x3 stride 1)."""
from fastconv.numba.cpu._jit import _FAST, _SERIAL, _U, nb, np, prange
from fastconv.numba.cpu.gemm import _epilogue_images


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
