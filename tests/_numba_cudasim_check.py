"""Run by tests/test_numba_cudasim.py in a subprocess: every numba.cuda kernel against the NumPy/CPU
kernels, on Numba device arrays (simulator or real GPU) -- argument: 'numba'; on a real GPU also
'torch' and 'cupy' arrays on a non-default stream."""
import sys

import numpy as np

from fastconv.numba import kernels as K

KIND = sys.argv[1] if len(sys.argv) > 1 else "numba"
rng = np.random.default_rng(1)


def to_dev(a):
    if a is None or not isinstance(a, np.ndarray):
        return a
    if KIND == "torch":
        import torch
        return torch.from_numpy(a).cuda()
    if KIND == "cupy":
        import cupy
        return cupy.asarray(a)
    from numba import cuda
    return cuda.to_device(a)


def to_host(a):
    if KIND == "torch":
        return a.cpu().numpy()
    if KIND == "cupy":
        return a.get()
    return a.copy_to_host()


def same(name, got, want, tol):
    got = [got] if not isinstance(got, tuple) else got
    want = [want] if not isinstance(want, tuple) else want
    for g, w in zip(got, want):
        g = to_host(g)
        assert g.shape == w.shape and g.dtype == w.dtype, (name, g.shape, w.shape, g.dtype, w.dtype)
        nan = np.isnan(w)
        assert np.array_equal(np.isnan(g), nan), (name, "NaN positions differ")
        g, w = g[~nan].astype(np.float64), w[~nan]
        differ = g != w  # equal values (infinities included) need no tolerance
        err = np.abs(g[differ] - w[differ]).max() if differ.any() else 0.0
        assert err <= tol * (1 + np.abs(w[np.isfinite(w)]).max(initial=0.0)), (name, err)
    print(f"ok {name}")


def check(name, *args, tol=1e-5):
    want = getattr(K, name)(*args)
    same(name, getattr(K, name)(*[to_dev(a) for a in args]), want, tol)


def run():
    from numba import config
    # The simulator runs every GPU thread as a Python thread: one dtype is enough there.
    for dt in (np.float32,) if config.ENABLE_CUDASIM else (np.float32, np.float64):
        tol = 1e-5 if dt == np.float32 else 1e-12
        r = lambda *s: rng.standard_normal(s).astype(dt)  # noqa: E731
        x, w, b = r(2, 4, 7, 6), r(6, 2, 3, 2), r(6)
        conv = ([2, 1], [1, 0, 2, 1], [1, 2], 2)
        y = K.conv2d_fwd(x, w, b, *conv)
        check("conv2d_fwd", x, w, b, *conv, tol=tol)
        check("conv2d_fused_fwd", x, w, b, *conv, r(6), r(6), r(*y.shape), 2, True, 0, 0.01, tol=tol)
        check("conv2d_fused_fwd", x, w, None, *conv, None, r(6), r(*y.shape), 1, False, 1, 0.0, tol=tol)
        dy = r(*y.shape)
        check("conv2d_bwd_input", dy, w, list(x.shape), *conv, tol=tol)
        check("conv2d_bwd_weight", dy, x, list(w.shape), *conv, tol=tol)
        check("conv2d_bwd_bias", dy, tol=tol)
        xp = r(2, 3, 7, 8)
        xp[0, 0, 1, 1] = np.nan
        pool = ([3, 2], [2, 2], [1, 1], [1, 2], True)
        check("max_pool2d_fwd", xp, *pool, tol=tol)
        check("max_pool2d_values", xp, *pool, tol=tol)
        ym, idx = K.max_pool2d_fwd(xp, *pool)
        check("max_pool2d_bwd", r(*ym.shape), idx, list(xp.shape), tol=tol)
        for cip, div in ((True, None), (False, None), (True, 5)):
            args = ([3, 3], [2, 1], [1, 1], True, cip, div)
            ya = K.avg_pool2d_fwd(xp, *args)
            check("avg_pool2d_fwd", xp, *args, tol=tol)
            check("avg_pool2d_bwd", r(*ya.shape), list(xp.shape), *args, tol=tol)
        check("adaptive_avg_pool2d_fwd", xp, [3, 5], tol=tol)
        check("adaptive_avg_pool2d_bwd", r(2, 3, 3, 5), list(xp.shape), tol=tol)
        a, c = r(3, 5, 7), r(3, 5, 7)
        check("relu_fwd", a, tol=tol)
        check("relu_bwd", c, K.relu_fwd(a), tol=tol)
        for mode in (0, 1):
            check("sort_fwd", a, c, mode, 0.01, tol=tol)
            check("sort_bwd", r(3, 5, 7), a, c, mode, 0.01, tol=tol)
        a0 = a.copy()
        a0[0] = 0  # eps = 0 with an operand at 0: the derivative term is 0 (no 0 * inf)
        check("sort_bwd", r(3, 5, 7), a0, c, 0, 0.0, tol=tol)
        # windows with no tap inside a 1-row input: -inf at an index past the plane, no gradient
        xw, wpool = r(2, 3, 1, 18), ([2, 4], [2, 3], [1, 2], [2, 2], True)
        check("max_pool2d_fwd", xw, *wpool, tol=tol)
        yw, iw = K.max_pool2d_fwd(xw, *wpool)
        assert np.isinf(yw).all() and (iw >= 18).all()
        check("max_pool2d_bwd", r(*yw.shape), iw, list(xw.shape), tol=tol)
        # The framework-free entry points return arrays of the input's kind (unbatched input here).
        import fastconv.numba as fnb
        y = fnb.conv2d(to_dev(x[0]), to_dev(w), None, 1, "same", 1, 2)
        assert type(y) is type(to_dev(x)), type(y)
        same("fastconv.numba.conv2d", y, fnb.conv2d(x[0], w, None, 1, "same", 1, 2), tol)
        same("fastconv.numba.max_pool2d", fnb.max_pool2d(to_dev(xp), 2, return_indices=True),
             fnb.max_pool2d(xp, 2, return_indices=True), tol)


if __name__ == "__main__":
    if KIND in ("torch", "cupy"):
        # A non-default stream: the kernels must run on the caller's current stream.
        if KIND == "torch":
            import torch
            s = torch.cuda.Stream()
            with torch.cuda.stream(s):
                run()
        else:
            import cupy
            with cupy.cuda.Stream(non_blocking=True):
                run()
    else:
        run()
    print("ALL OK")
