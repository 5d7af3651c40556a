"""ReLU and SORT, forward and backward, on flat arrays."""
from fastconv.numba.cpu._jit import _JIT, nb, np, prange


@nb.njit(inline="always", cache=True)
def _sort_val(a, b, mode, eps, zero):
    ra = max(a, zero)
    rb = max(b, zero)
    return a + b + (np.sqrt(ra * rb + eps) if mode == 0 else ra * rb)


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
