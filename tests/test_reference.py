"""The NumPy float64 reference itself agrees with torch.nn.functional in float64, so the two
references the suite compares fastconv with are consistent."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastconv import reference as R
from conftest import assert_close, rand

f64 = torch.float64


def T(a, grad=False):
    return torch.from_numpy(np.array(a, dtype=np.float64)).requires_grad_(grad)


def torch_pad(x, padding):
    pt, pb, pl, pr = padding
    return F.pad(x, (pl, pr, pt, pb))


CONV_CASES = [
    # N, C, H, W, K, R, S, stride, padding(t,b,l,r), dilation, groups
    (2, 3, 7, 9, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 4, 11, 13, 6, 2, 4, (1, 1), (0, 1, 1, 2), (1, 1), 2),
    (3, 6, 10, 10, 6, 3, 3, (2, 3), (1, 1, 2, 2), (2, 1), 6),
    (1, 1, 5, 5, 1, 1, 1, (4, 4), (0, 0, 0, 0), (1, 1), 1),
    (2, 5, 17, 11, 3, 11, 5, (3, 1), (5, 5, 2, 2), (1, 2), 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(case):
    n, c, h, w, k, r, s, stride, padding, dilation, groups = case
    rng = np.random.default_rng(1)
    x, wt, b = rand(rng, (n, c, h, w)), rand(rng, (k, c // groups, r, s)), rand(rng, (k,))
    xt, wtt, bt = T(x, True), T(wt, True), T(b, True)
    y = F.conv2d(torch_pad(xt, padding), wtt, bt, stride, 0, dilation, groups)
    ry = R.conv2d_fwd(x, wt, b, stride, padding, dilation, groups)
    assert_close(ry, y, f64, what="fwd")
    g = rand(rng, y.shape)
    y.backward(T(g))
    assert_close(R.conv2d_bwd_input(g, wt, x.shape, stride, padding, dilation, groups), xt.grad, f64, what="dx")
    assert_close(R.conv2d_bwd_weight(g, x, wt.shape, stride, padding, dilation, groups), wtt.grad, f64, what="dw")
    assert_close(R.conv2d_bwd_bias(g), bt.grad, f64, what="db")


@pytest.mark.parametrize("combine", [None, "add", "sort"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("mode", ["sqrt", "product"])
def test_conv2d_fused(combine, relu, mode):
    rng = np.random.default_rng(2)
    x, wt = rand(rng, (2, 4, 6, 7)), rand(rng, (6, 2, 3, 3))
    b, sc, sh = rand(rng, (6,)), rand(rng, (6,)), rand(rng, (6,))
    stride, padding, dilation, groups = (1, 2), (1, 0, 2, 1), (1, 1), 2
    ts = [T(v, True) for v in (x, wt, b, sc, sh)]
    z = F.conv2d(torch_pad(ts[0], padding), ts[1], None, stride, 0, dilation, groups)
    z = z * ts[3].view(1, -1, 1, 1) + ts[4].view(1, -1, 1, 1) + ts[2].view(1, -1, 1, 1)
    res = rand(rng, z.shape) if combine else None
    rt = T(res, True) if combine else None
    if combine == "add":
        z = z + rt
    elif combine == "sort":
        pr = F.relu(rt) * F.relu(z)
        z = rt + z + (torch.sqrt(pr + 0.01) if mode == "sqrt" else pr)
    y = F.relu(z) if relu else z
    kw = dict(scale=sc, shift=sh, residual=res, combine=combine, relu=relu, mode=mode, eps=0.01)
    assert_close(R.conv2d_fused(x, wt, b, stride, padding, dilation, groups, **kw), y, f64)
    g = rand(rng, y.shape)
    y.backward(T(g))
    grads = R.conv2d_fused_bwd(g, x, wt, b, stride, padding, dilation, groups, **kw)
    for name, t in zip(("input", "weight", "bias", "scale", "shift"), ts):
        assert_close(grads[name], t.grad, f64, what=name)
    if combine:
        assert_close(grads["residual"], rt.grad, f64, what="residual")


POOL_CASES = [
    # H, W, kernel, stride, padding, dilation, ceil_mode
    (7, 9, (3, 3), (2, 2), (1, 1), (1, 1), False),
    (7, 9, (3, 3), (2, 2), (1, 1), (1, 1), True),
    (10, 11, (2, 4), (3, 1), (1, 2), (2, 1), True),
    (5, 5, (1, 1), (3, 3), (0, 0), (1, 1), False),
    (13, 6, (5, 2), (4, 2), (2, 1), (1, 2), True),
    (8, 8, (2, 2), None, (0, 0), (1, 1), True),
]


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d(case):
    h, w, k, s, p, d, ceil = case
    rng = np.random.default_rng(3)
    x = rand(rng, (2, 3, h, w))
    xt = T(x, True)
    y, idx = F.max_pool2d(xt, k, s, p, d, ceil_mode=ceil, return_indices=True)
    ry, ridx = R.max_pool2d_fwd(x, k, s, p, d, ceil)
    assert_close(ry, y, f64)
    np.testing.assert_array_equal(ridx, idx.numpy())
    g = rand(rng, y.shape)
    y.backward(T(g))
    assert_close(R.max_pool2d_bwd(g, ridx, x.shape), xt.grad, f64)


def test_max_pool2d_nan_inf_and_ties():
    x = np.array([[[[1.0, np.nan, 3.0, np.nan], [2.0, 2.0, -np.inf, -np.inf], [5.0, 5.0, -np.inf, -np.inf],
                    [np.inf, 0.0, 1.0, 1.0]]]])
    y, idx = F.max_pool2d(T(x), 2, 2, 0, return_indices=True)
    ry, ridx = R.max_pool2d_fwd(x, 2, 2, 0)
    assert_close(ry, y, f64)
    np.testing.assert_array_equal(ridx, idx.numpy())


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("divisor_override", [None, 5])
def test_avg_pool2d(case, count_include_pad, divisor_override):
    h, w, k, s, p, d, ceil = case
    if d != (1, 1) or any(pi > ki // 2 for pi, ki in zip(p, k)):
        pytest.skip("avg_pool2d has no dilation; padding at most half the kernel")
    rng = np.random.default_rng(4)
    x = rand(rng, (2, 3, h, w))
    xt = T(x, True)
    y = F.avg_pool2d(xt, k, s, p, ceil, count_include_pad, divisor_override)
    assert_close(R.avg_pool2d_fwd(x, k, s, p, ceil, count_include_pad, divisor_override), y, f64)
    g = rand(rng, y.shape)
    y.backward(T(g))
    assert_close(R.avg_pool2d_bwd(g, x.shape, k, s, p, ceil, count_include_pad, divisor_override), xt.grad, f64)


@pytest.mark.parametrize("hw,out", [((7, 9), (3, 4)), ((5, 5), (5, 5)), ((11, 3), (4, 5)), ((6, 8), (1, 1)),
                                    ((13, 7), (None, 2))])
def test_adaptive_avg_pool2d(hw, out):
    rng = np.random.default_rng(5)
    x = rand(rng, (2, 3) + hw)
    xt = T(x, True)
    y = F.adaptive_avg_pool2d(xt, out)
    assert_close(R.adaptive_avg_pool2d_fwd(x, out), y, f64)
    g = rand(rng, y.shape)
    y.backward(T(g))
    assert_close(R.adaptive_avg_pool2d_bwd(g, x.shape), xt.grad, f64)


def test_relu():
    rng = np.random.default_rng(6)
    x = rand(rng, (3, 4, 5))
    x[0, 0, :3] = [np.nan, np.inf, -np.inf]
    xt = T(x, True)
    y = F.relu(xt)
    assert_close(R.relu_fwd(x), y, f64)
    g = rand(rng, x.shape)
    y.backward(T(g))
    assert_close(R.relu_bwd(g, R.relu_fwd(x)), xt.grad, f64)


@pytest.mark.parametrize("mode", ["sqrt", "product"])
@pytest.mark.parametrize("eps", [1e-6, 0.01, 1.0])
def test_sort(mode, eps):
    rng = np.random.default_rng(7)
    a, b = rand(rng, (2, 3, 4, 5)), rand(rng, (2, 3, 4, 5))
    at, bt = T(a, True), T(b, True)
    p = F.relu(at) * F.relu(bt)
    y = at + bt + (torch.sqrt(p + eps) if mode == "sqrt" else p)
    assert_close(R.sort_fwd(a, b, mode, eps), y, f64)
    g = rand(rng, a.shape)
    y.backward(T(g))
    ga, gb = R.sort_bwd(g, a, b, mode, eps)
    assert_close(ga, at.grad, f64)
    assert_close(gb, bt.grad, f64)


def test_reference_has_no_torch():
    import inspect
    assert "import torch" not in inspect.getsource(R)
