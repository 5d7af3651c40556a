"""The numba backend (torch.ops.fastconv_numba.* and the NumPy entry points of fastconv.numba) against
torch.nn.functional and, when present, the NumPy float64 reference; the backend registry."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import fastconv
from fastconv import _outputs, tolerance
from fastconv import backends

pytest.importorskip("numba")
import fastconv.numba as fnb  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
DTYPES = [torch.float32, torch.float64]


@pytest.fixture(autouse=True)
def _numba_backend():
    with fastconv.use_backend("numba"):
        yield


def tol(dtype):
    """fastconv.tolerance's model, as torch.testing.assert_close's arguments."""
    atol, rtol = tolerance.tol(dtype)
    return dict(atol=atol, rtol=rtol)


def grads(fn, *inputs, seed=0):
    """Output and gradients of sum(fn(*inputs) * g) for a fixed random g."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    out = fn(*leaves)
    out = out[0] if isinstance(out, tuple) else out
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * g).sum().backward()
    return [out.detach()] + [t.grad for t in leaves if t is not None]


def assert_same(fc, ref, *inputs, dtype):
    for a, b in zip(grads(fc, *inputs), grads(ref, *inputs)):
        torch.testing.assert_close(a, b, **tol(dtype))


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


CONVS = [  # (N, C, H, W), (K, C/groups, R, S), stride, padding, dilation, groups
    ((2, 3, 11, 13), (5, 3, 3, 3), 1, 1, 1, 1),
    ((1, 4, 9, 7), (6, 2, 1, 1), 1, 0, 1, 2),
    ((2, 6, 12, 10), (6, 2, 3, 2), (2, 3), (0, 2), (2, 1), 3),
    ((1, 1, 13, 13), (1, 1, 11, 11), 1, 5, 1, 1),
    ((3, 3, 8, 9), (4, 3, 2, 2), 3, 0, 1, 1),       # stride > kernel
    ((1, 4, 10, 7), (4, 1, 3, 3), 1, "same", 2, 4),  # depthwise, dilated 'same'
    ((1, 2, 6, 6), (3, 2, 4, 4), 1, "same", 1, 1),   # even kernel: asymmetric padding
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,ws,stride,padding,dilation,groups", CONVS)
def test_conv2d(xs, ws, stride, padding, dilation, groups, dtype):
    x, w, b = randn(*xs, dtype=dtype), randn(*ws, dtype=dtype), randn(ws[0], dtype=dtype)
    args = (stride, padding, dilation, groups)
    assert_same(lambda x, w, b: fastconv.conv2d(x, w, b, *args), lambda x, w, b: TF.conv2d(x, w, b, *args),
                x, w, b, dtype=dtype)


@pytest.mark.parametrize("combine,mode,relu", [(None, "sqrt", False), ("add", "sqrt", True),
                                               ("sort", "sqrt", True), ("sort", "product", False)])
def test_conv2d_fused(combine, mode, relu):
    dtype = torch.float64
    x, w, b = randn(2, 4, 9, 8, dtype=dtype), randn(6, 2, 3, 3, dtype=dtype), randn(6, dtype=dtype)
    scale, shift = randn(6, dtype=dtype), randn(6, dtype=dtype)
    res = randn(2, 6, 5, 4, dtype=dtype) if combine else None

    def ref(x, w, b, scale, shift, *r):
        z = TF.conv2d(x, w, None, 2, 1, 1, 2) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
        if combine == "add":
            z = z + r[0]
        elif combine == "sort":
            a, c = r[0], z
            z = a + c + (torch.sqrt(a.relu() * c.relu() + 0.01) if mode == "sqrt" else a.relu() * c.relu())
        return z.relu() if relu else z

    def fc(x, w, b, scale, shift, *r):
        return fastconv.conv2d_fused(x, w, b, 2, 1, 1, 2, scale=scale, shift=shift, residual=r[0] if r else None,
                                     combine=combine, relu=relu, mode=mode)

    inputs = (x, w, b, scale, shift) + ((res,) if combine else ())
    assert_same(fc, ref, *inputs, dtype=dtype)
    y = fnb.conv2d_fused(*[t.numpy() for t in (x, w, b)], 2, 1, 1, 2, scale=scale.numpy(), shift=shift.numpy(),
                         residual=None if res is None else res.numpy(), combine=combine, relu=relu, mode=mode)
    torch.testing.assert_close(torch.from_numpy(y), ref(*inputs))


DEPTHWISE = [  # (N, C, H, W), multiplier, (R, S), stride, padding, dilation: the direct depthwise kernels
    ((2, 5, 9, 20), 1, (3, 3), 1, 1, 1),          # plane rows of 20: literal 3x3 spans at stride 1
    ((1, 6, 11, 23), 1, (3, 3), 2, 1, 1),         # stride 2
    ((1, 7, 7, 7), 1, (3, 3), 1, 1, 1),           # small planes: the channels-last copy
    ((1, 3, 9, 18), 2, (3, 3), (1, 2), (0, 1), 1),  # multiplier 2, unequal strides
    ((1, 4, 12, 17), 1, (5, 5), 1, 4, 2),         # 5x5 dilated, padding wider than the window
    ((1, 4, 5, 6), 1, (3, 3), 1, 1, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,m,rs,stride,padding,dilation", DEPTHWISE)
def test_conv2d_depthwise(xs, m, rs, stride, padding, dilation, dtype):
    c = xs[1]
    x, w, b = randn(*xs, dtype=dtype), randn(c * m, 1, *rs, dtype=dtype), randn(c * m, dtype=dtype)
    args = (stride, padding, dilation, c)
    assert_same(lambda x, w, b: fastconv.conv2d(x, w, b, *args), lambda x, w, b: TF.conv2d(x, w, b, *args),
                x, w, b, dtype=dtype)
    y = TF.conv2d(x, w, b, *args)
    r = randn(*y.shape, dtype=dtype)
    fused = fastconv.conv2d_fused(x, w, None, *args, scale=b, shift=b, residual=r, combine="sort", relu=True)
    z = TF.conv2d(x, w, None, *args) * b[:, None, None] + b[:, None, None]
    torch.testing.assert_close(fused, torch.relu(r + z + torch.sqrt(r.relu() * z.relu() + 0.01)), **tol(dtype))


WINOGRAD = [  # (N, C, H, W), K, padding: float32 3x3 stride-1 layers that take the Winograd path
    ((1, 16, 22, 19), 16, 1),        # big enough for the rule; a tile column short of a multiple of 4
    ((1, 16, 9, 7), 16, 1),          # rows overhanging
    ((2, 17, 13, 10), 19, (1, 0)),   # odd channels, tiles across images, asymmetric padding
    ((1, 20, 6, 6), 24, 2),           # padding larger than the tile overlap
    ((3, 32, 12, 12), 16, 0),
]


@pytest.mark.parametrize("xs,k,padding", WINOGRAD)
@pytest.mark.parametrize("block", [512, 8])  # 8: blocks of two tile rows, the last one shorter
def test_conv2d_winograd(xs, k, padding, block, monkeypatch):
    from fastconv.numba import kernels
    from fastconv.numba.cpu import winograd
    monkeypatch.setattr(winograd, "WINO_TILE_BLOCK", block)
    monkeypatch.setattr(kernels, "WINO_MIN_SAVED", 0 if xs[2] < 20 else kernels.WINO_MIN_SAVED)  # small layers too
    x, w, b = randn(*xs), randn(k, xs[1], 3, 3) / (3 * xs[1] ** 0.5), randn(k)
    p, q = TF.conv2d(x, w, None, 1, padding).shape[2:]
    pads = (padding,) * 4 if isinstance(padding, int) else (padding[0],) * 2 + (padding[1],) * 2
    assert kernels.winograd(x.numpy(), w.numpy(), (1, 1), pads, (1, 1), 1, p, q)
    want = TF.conv2d(x.double(), w.double(), b.double(), 1, padding)
    y = fastconv.conv2d(x, w, b, 1, padding)
    scale = want.abs().max().item()
    torch.testing.assert_close(y.double(), want, rtol=0, atol=2e-5 * scale)  # F(4x4, 3x3) in float32
    r = randn(*y.shape)
    fused = fastconv.conv2d_fused(x, w, b, 1, padding, residual=r, combine="sort", relu=True)
    z = want.float()
    torch.testing.assert_close(fused, torch.relu(r + z + torch.sqrt(r.relu() * z.relu() + 0.01)),
                               rtol=1e-4, atol=1e-4 * scale)
    if block == 512:  # gradients: the input gradient through Winograd too (flipped weights, padding 2 - p)
        calls = []
        real = kernels._winograd_fwd
        monkeypatch.setattr(kernels, "_winograd_fwd", lambda *a: calls.append(a[2].shape) or real(*a))
        assert_same(lambda x, w: fastconv.conv2d(x, w, None, 1, padding),
                    lambda x, w: TF.conv2d(x, w, None, 1, padding), x, w, dtype=torch.float32)
        assert tuple(x.shape) in calls


def test_conv2d_winograd_switch_and_rule():
    from fastconv.numba import kernels
    gen = torch.Generator().manual_seed(5)
    x, w = torch.randn(1, 16, 20, 20, generator=gen), torch.randn(16, 16, 3, 3, generator=gen)
    before = kernels.set_winograd(False)
    try:
        assert not kernels.winograd(x.numpy(), w.numpy(), (1, 1), (1,) * 4, (1, 1), 1, 20, 20)
        direct = fastconv.conv2d(x, w, None, 1, 1)
    finally:
        kernels.set_winograd(before)
    assert kernels.winograd(x.numpy(), w.numpy(), (1, 1), (1,) * 4, (1, 1), 1, 20, 20)
    # Winograd's rounding follows the largest value in each tile: about 1e-5 of the output's scale
    scale = direct.abs().max().item()
    torch.testing.assert_close(fastconv.conv2d(x, w, None, 1, 1), direct, rtol=1e-4, atol=2e-5 * scale)
    # float64, strided, grouped, small channel counts and tiny outputs stay direct
    for args in [(x.double().numpy(), w.double().numpy(), (1, 1), (1,) * 4, (1, 1), 1, 20, 20),
                 (x.numpy(), w.numpy(), (2, 2), (1,) * 4, (1, 1), 1, 10, 10),
                 (x.numpy(), w[:, :8].numpy(), (1, 1), (1,) * 4, (1, 1), 2, 20, 20),
                 (x[:, :8].numpy(), w[:, :8].numpy(), (1, 1), (1,) * 4, (1, 1), 1, 20, 20),
                 (x.numpy(), w.numpy(), (1, 1), (1,) * 4, (2, 2), 1, 18, 18),
                 (x[..., :12, :12].numpy(), w.numpy(), (1, 1), (1,) * 4, (1, 1), 1, 12, 12)]:  # saves too little
        assert not kernels.winograd(*args)
    # a NaN spreads to its whole 4x4 output tile (documented), never beyond it
    xn = x.clone()
    xn[0, 3, 5, 6] = float("nan")
    bad = fastconv.conv2d(xn, w, None, 1, 1)[0, 0].isnan()
    assert bad[4:7, 5:8].all() and bad.sum() <= 16 and bad[4:8, 4:8].sum() == bad.sum()


POOLS = [((2, 3, 9, 11), 3, 2, 1, 1, False), ((1, 2, 8, 7), (2, 3), (3, 1), (1, 0), (2, 1), True),
         ((1, 1, 5, 5), 5, None, 2, 1, True), ((3, 2, 6, 6), 1, 2, 0, 1, False)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,s,p,d,ceil", POOLS)
def test_max_pool2d(shape, k, s, p, d, ceil, dtype):
    x = randn(*shape, dtype=dtype)
    x[0, 0, 1, 1] = float("nan")
    x[-1, -1, 2, 2] = float("-inf")
    y, i = fastconv.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
    ry, ri = TF.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
    torch.testing.assert_close(y, ry, equal_nan=True)
    assert torch.equal(i, ri)
    xf = torch.randn_like(x)  # gradients on NaN-free data
    assert_same(lambda x: fastconv.max_pool2d(x, k, s, p, d, ceil), lambda x: TF.max_pool2d(x, k, s, p, d, ceil),
                xf, dtype=dtype)


def pool_sweep(seed, count):
    """Random pooling geometries covering the kernels' literal-size spans (3x3 s2, 2x2 s2, 3x3 s1),
    their border columns and rows, dilation, ceil mode and inputs narrower than a window."""
    rng = np.random.default_rng(seed)
    fixed = [((3, 3), (2, 2), (1, 1), (1, 1)), ((2, 2), (2, 2), (0, 0), (1, 1)), ((3, 3), (1, 1), (1, 1), (1, 1)),
             ((3, 3), (2, 1), (0, 1), (1, 1)), ((2, 2), (2, 3), (1, 0), (1, 1))]
    for i in range(count):
        if i < len(fixed):
            k, s, p, d = fixed[i]
        else:
            k = tuple(int(v) for v in rng.integers(1, 5, 2))
            s = tuple(int(v) for v in rng.integers(1, 4, 2))
            d = tuple(int(v) for v in rng.integers(1, 3, 2))
            p = tuple(int(rng.integers(0, ((k[j] - 1) * d[j] + 1) // 2 + 1)) for j in range(2))
        h, w = (int(v) for v in rng.integers(1, 14, 2))
        ceil = bool(rng.integers(0, 2))
        try:
            TF.max_pool2d(torch.empty(1, 1, h, w), k, s, p, d, ceil)
        except RuntimeError:
            continue  # output too small: torch refuses, as fastconv does
        yield (int(rng.integers(1, 3)), int(rng.integers(1, 4)), h, w), k, s, p, d, ceil


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_sweep(dtype):
    """Values, indices (ties: integer-valued data; NaN and -inf) and the values-only op."""
    gen = torch.Generator().manual_seed(1)
    for shape, k, s, p, d, ceil in pool_sweep(0, 60):
        x = torch.randint(-3, 4, shape, generator=gen).to(dtype)
        x.view(-1)[torch.randint(0, x.numel(), (2,), generator=gen)] = float("nan")
        x.view(-1)[torch.randint(0, x.numel(), (2,), generator=gen)] = float("-inf")
        case = f"{shape} k{k} s{s} p{p} d{d} ceil={ceil}"
        y, i = fastconv.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
        ry, ri = TF.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
        torch.testing.assert_close(y, ry, equal_nan=True, msg=case)
        assert torch.equal(i, ri), case
        with torch.no_grad():
            torch.testing.assert_close(fastconv.max_pool2d(x, k, s, p, d, ceil), ry, equal_nan=True, msg=case)


@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool2d_sweep(dtype):
    gen = torch.Generator().manual_seed(2)
    for j, (shape, k, s, p, _, ceil) in enumerate(pool_sweep(1, 60)):
        x = torch.randn(shape, generator=gen, dtype=dtype)
        args = (k, s, p, ceil, j % 2 == 0, 3 if j % 5 == 4 else None)
        try:
            want = TF.avg_pool2d(x, *args)
        except RuntimeError:
            continue
        assert_same(lambda x: fastconv.avg_pool2d(x, *args), lambda x: TF.avg_pool2d(x, *args), x, dtype=dtype)
        assert want.shape == fastconv.avg_pool2d(x, *args).shape


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,s,p,ceil,cip,div", [((2, 3, 9, 11), 3, 2, 1, False, True, None),
                                                      ((1, 2, 8, 7), (2, 3), (3, 1), (1, 0), True, False, None),
                                                      ((1, 2, 7, 7), 3, 2, 1, True, True, 5)])
def test_avg_pool2d(shape, k, s, p, ceil, cip, div, dtype):
    args = (k, s, p, ceil, cip, div)
    assert_same(lambda x: fastconv.avg_pool2d(x, *args), lambda x: TF.avg_pool2d(x, *args),
                randn(*shape, dtype=dtype), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,out", [((2, 3, 9, 11), (4, 5)), ((1, 2, 7, 5), 1), ((1, 1, 3, 4), (6, None))])
def test_adaptive_avg_pool2d(shape, out, dtype):
    assert_same(lambda x: fastconv.adaptive_avg_pool2d(x, out), lambda x: TF.adaptive_avg_pool2d(x, out),
                randn(*shape, dtype=dtype), dtype=dtype)


def torch_sort(a, b, mode="sqrt", eps=0.01):
    return a + b + (torch.sqrt(a.relu() * b.relu() + eps) if mode == "sqrt" else a.relu() * b.relu())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (17,), (3, 1, 4)])
def test_elementwise(shape, dtype):
    a, b = randn(*shape, dtype=dtype), randn(*shape, dtype=dtype)
    assert_same(fastconv.relu, TF.relu, a, dtype=dtype)
    for mode in ("sqrt", "product"):
        assert_same(lambda a, b: fastconv.sort(a, b, mode), lambda a, b: torch_sort(a, b, mode), a, b, dtype=dtype)
    nan = torch.tensor([float("nan"), -1.0, 2.0], dtype=dtype)
    torch.testing.assert_close(fastconv.relu(nan), TF.relu(nan), equal_nan=True)


def test_channels_last_and_low_precision():
    x = randn(2, 4, 9, 8).contiguous(memory_format=torch.channels_last)
    w = randn(6, 4, 3, 3)
    y = fastconv.conv2d(x, w, None, 1, 1)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, TF.conv2d(x, w, None, 1, 1), rtol=1e-4, atol=1e-4)
    for fn in (fastconv.relu, lambda t: fastconv.max_pool2d(t, 2), lambda t: fastconv.sort(t, t)):
        assert fn(x).is_contiguous(memory_format=torch.channels_last)
    xb = x.to(torch.bfloat16)
    yb = fastconv.relu(xb)
    assert yb.dtype == torch.bfloat16 and torch.equal(yb, TF.relu(xb))


def test_empty_batch():
    x = randn(0, 3, 8, 8)
    assert fastconv.conv2d(x, randn(4, 3, 3, 3)).shape == (0, 4, 6, 6)
    assert fastconv.max_pool2d(x, 2).shape == (0, 3, 4, 4)
    assert fastconv.relu(x).shape == x.shape


def test_opcheck_and_compile():
    f64 = torch.float64
    x, w, b = randn(2, 3, 7, 6, dtype=f64), randn(4, 3, 3, 3, dtype=f64), randn(4, dtype=f64)
    ops = torch.ops.fastconv_numba
    torch.library.opcheck(ops.conv2d_fwd, (x, w, b, [1, 1], [1, 1, 0, 2], [1, 1], 1))
    fake_only = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.max_pool2d_fwd, (x, [2, 2], [2, 2], [0, 0], [1, 1], False), test_utils=fake_only)
    torch.library.opcheck(ops.sort_fwd, (x, torch.randn_like(x), 0, 0.01), test_utils=fake_only)
    torch.autograd.gradcheck(lambda x, w, b: fastconv.conv2d(x, w, b, 1, 1),
                             [t.clone().requires_grad_() for t in (x, w, b)])

    def block(x):
        y = fastconv.conv2d(x, w, b, padding=1)
        return fastconv.avg_pool2d(fastconv.sort(fastconv.relu(y), y), 2)

    torch._dynamo.reset()
    xr = x.clone().requires_grad_()
    out = torch.compile(block, fullgraph=True, backend="aot_eager")(xr)
    with fastconv.use_backend("numba"):
        want = block(x)
    torch.testing.assert_close(out, want)
    out.sum().backward()
    assert xr.grad is not None and xr.grad.shape == x.shape


@pytest.mark.parametrize("name,args", [
    ("conv2d_fwd", lambda x: (x, torch.randn(4, 2, 3, 3), None, [1, 1], [0, 0, 0, 0], [1, 1], 1)),
    ("conv2d_bwd_input", lambda x: (x, torch.randn(4, 3, 3, 3), [2, 3, 9, 9], [1, 1], [0, 0, 0, 0], [1, 1], 1)),
    ("max_pool2d_bwd", lambda x: (x, torch.zeros(2, 3, 8, 7, dtype=torch.int64), [2, 3, 16, 16])),
    ("max_pool2d_fwd", lambda x: (x, [2, 2], [2, 2], [3, 3], [1, 1], False)),
    ("sort_fwd", lambda x: (x, torch.randn(2, 3, 8, 7), 0, 0.01)),
    ("relu_bwd", lambda x: (x, torch.randn(5))),
    ("relu_bwd", lambda x: (x, x.double())),
    ("sort_fwd", lambda x: (x.contiguous(memory_format=torch.channels_last), torch.randn(3, 8, 8), 0, 0.01)),
    ("max_pool2d_fwd", lambda x: (x, [2], [2, 2], [0, 0], [1, 1], False)),
    ("max_pool2d_values", lambda x: (x, [2, 2], [], [0, 0], [1, 1], False)),
    ("avg_pool2d_fwd", lambda x: (x, [9, 9], [1, 1], [0, 0], False, True, None)),
    ("adaptive_avg_pool2d_fwd", lambda x: (x, [3])),
    ("adaptive_avg_pool2d_fwd", lambda x: (x[:, :, :0], [3, 3])),
])
@pytest.mark.parametrize("backend", ["native", "numba", "reference"])
def test_raw_ops_check_arguments(name, args, backend):
    """The kernels do no bounds checks: inconsistent raw-op arguments must be refused before them, by
    every backend alike, with an error that names fastconv (the Python backends: the operator)."""
    if not backends.available(backend):
        pytest.skip(f"backend {backend} not available here")
    with fastconv.use_backend(backend):
        ops = fastconv.functional._ops()
    where = r"fastconv\b" if backend == "native" else rf"fastconv\.{backend}\."
    with pytest.raises((ValueError, TypeError, RuntimeError, IndexError), match=where):
        getattr(ops, name)(*args(randn(2, 3, 8, 8)))


def test_raw_bias_grad_of_empty_output():
    db = torch.ops.fastconv_numba.conv2d_bwd_bias(torch.randn(3, 4, 0, 5))
    assert torch.equal(db, torch.zeros(4))


def test_numpy_entry_points():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    t = torch.from_numpy
    y = fnb.conv2d(x, w, None, 2, "valid")
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    torch.testing.assert_close(t(y), TF.conv2d(t(x), t(w), None, 2), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(t(fnb.conv2d(x[0], w, padding=1)), TF.conv2d(t(x[0]), t(w), padding=1),
                               rtol=1e-4, atol=1e-4)
    y, i = fnb.max_pool2d(x, 3, 2, 1, return_indices=True)
    ry, ri = TF.max_pool2d(t(x), 3, 2, 1, return_indices=True)
    assert torch.equal(t(y), ry) and torch.equal(t(i), ri)
    torch.testing.assert_close(t(fnb.avg_pool2d(x, 3, 2, 1, True, False)), TF.avg_pool2d(t(x), 3, 2, 1, True, False))
    torch.testing.assert_close(t(fnb.adaptive_avg_pool2d(x, (4, None))), TF.adaptive_avg_pool2d(t(x), (4, None)))
    torch.testing.assert_close(t(fnb.relu(x)), TF.relu(t(x)))
    torch.testing.assert_close(t(fnb.sort(x, x[::-1].copy(), "product")), torch_sort(t(x), t(x).flip(0), "product"))
    with pytest.raises(TypeError, match="'weight'"):
        fnb.conv2d(x, w.astype(np.float64))
    with pytest.raises(TypeError, match="NumPy array"):
        fnb.relu([1.0, 2.0])
    with pytest.raises(ValueError, match="groups"):
        fnb.conv2d(x, w, groups=2)
    with pytest.raises(ValueError, match="residual"):
        fnb.conv2d_fused(x, w, combine="add")


def test_output_pool(monkeypatch):
    """Output blocks of 1 MB and more are reused once nothing refers to them, never while a tensor or
    an array made from them lives; the limit holds and empty_cache frees the idle blocks."""
    pool = _outputs.OutputPool()
    monkeypatch.setattr(_outputs, "OUTPUTS", pool)
    pool.limit = 8 << 20
    x = randn(1, 16, 128, 128)  # 1 MB
    a = fastconv.relu(x)
    ptr = a.data_ptr()
    b = fastconv.relu(x)
    assert b.data_ptr() != ptr  # a still uses its block
    view = a[0, :2]
    del a
    c = fastconv.relu(-x)
    assert c.data_ptr() not in (ptr, b.data_ptr())  # a view keeps the block
    del view
    d = fastconv.sort(x, -x)
    assert d.data_ptr() == ptr  # reused, fully overwritten
    torch.testing.assert_close(d, torch_sort(x, -x))
    arr = _outputs.empty((4, 1 << 18), np.float32)  # NumPy callers of fastconv.numba get pooled arrays too
    assert pool.bytes <= pool.limit
    big = [_outputs.empty((1 << 20,), np.float32) for _ in range(3)]  # 12 MB more than the limit allows
    assert pool.bytes <= pool.limit and all(b_.shape == (1 << 20,) for b_ in big)
    del b, c, d, arr, big
    fastconv.empty_cache()
    assert pool.bytes == 0
    small = fastconv.relu(randn(4, 4))  # below 1 MB: not pooled
    assert pool.bytes == 0 and small.shape == (4, 4)


def test_cache_files_written():
    cache = ROOT / "fastconv" / "numba" / "cpu" / "__pycache__"
    names = [p.name for p in cache.glob("*.nbi")]
    assert any(n.startswith("gemm.conv2d_fwd") for n in names), names


REF_CALLS = {
    "conv2d": (lambda x, w, b: fastconv.conv2d(x, w, b, (2, 1), (1, 2), (1, 2), 1), (2, 3, 9, 8), (4, 3, 3, 2), (4,)),
    "conv2d_fused": (lambda x, w, b, r: fastconv.conv2d_fused(x, w, b, 1, 1, scale=b, shift=b, residual=r,
                                                               combine="sort", relu=True),
                     (1, 2, 6, 5), (3, 2, 3, 3), (3,), (1, 3, 6, 5)),
    "max_pool2d": (lambda x: fastconv.max_pool2d(x, 3, 2, 1, 2, True), (2, 3, 9, 8)),
    "avg_pool2d": (lambda x: fastconv.avg_pool2d(x, 3, 2, 1, True, False), (2, 3, 9, 8)),
    "adaptive_avg_pool2d": (lambda x: fastconv.adaptive_avg_pool2d(x, (4, 3)), (2, 3, 9, 8)),
    "relu": (fastconv.relu, (2, 3, 4, 5)),
    "sort": (lambda a, b: fastconv.sort(a, b, "sqrt", 0.05), (2, 3, 4, 5), (2, 3, 4, 5)),
}


@pytest.mark.parametrize("op", list(REF_CALLS))
def test_against_numpy_reference(op):
    if not backends.available("reference"):
        with pytest.raises(RuntimeError, match="reference"):
            backends.set_backend("reference")
        pytest.skip("fastconv/reference.py is not available")
    fn, *shapes = REF_CALLS[op]
    inputs = [randn(*s, dtype=torch.float64) for s in shapes]
    ours = grads(fn, *inputs)
    with fastconv.use_backend("reference"):
        ref = grads(fn, *inputs)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_schemas_match_native():
    if not backends.available("native"):
        pytest.skip("native extension not built")
    from fastconv.pyops import NATIVE_ONLY, SCHEMAS
    native_ops = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastconv::")}
    assert NATIVE_ONLY <= native_ops and not NATIVE_ONLY & set(SCHEMAS)
    native_ops -= NATIVE_ONLY
    assert native_ops == set(SCHEMAS), "csrc/ops.cpp and fastconv/pyops.py define different operators: " \
        f"{sorted(native_ops ^ set(SCHEMAS))}"  # both directions: an operator added to one table alone
    for name in SCHEMAS:
        native = getattr(torch.ops.fastconv, name).default._schema
        ours = getattr(torch.ops.fastconv_numba, name).default._schema
        assert str(native).split("(", 1)[1] == str(ours).split("(", 1)[1], name


def test_backend_selection():
    assert fastconv.get_backend() == "numba"
    assert fastconv.info()["backend"] == "numba"
    with fastconv.use_backend("numba"):
        assert backends.current_ops().ops is torch.ops.fastconv_numba
    with pytest.raises(ValueError, match="unknown backend"):
        fastconv.set_backend("nope")
    with pytest.raises(ValueError, match="unknown backend"):
        with fastconv.use_backend("nope"):
            pass
    assert fastconv.get_backend() == "numba"
    env = dict(os.environ, FASTCONV_BACKEND="numba", PYTHONPATH=str(ROOT))
    code = "import fastconv; print(fastconv.get_backend(), fastconv.info()['backend'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["numba", "numba"], out.stderr
    env["FASTCONV_BACKEND"] = "nope"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and "unknown backend" in out.stderr


def test_function_transforms_go_through_the_dispatcher():
    """Without a gradient the numba kernels are called directly, but never on functorch-wrapped
    tensors: vmap (the batched fallback) and functionalize work as on the native backend."""
    from torch.func import functionalize, vmap
    x, y = randn(3, 2, 4, 5), randn(3, 2, 4, 5)
    torch.testing.assert_close(vmap(fastconv.relu)(x), x.relu())
    torch.testing.assert_close(vmap(fastconv.sort)(x, y), torch_sort(x, y))
    torch.testing.assert_close(functionalize(fastconv.relu)(x), x.relu())
