"""fastconv max_pool2d / avg_pool2d / adaptive_avg_pool2d forward and backward against
torch.nn.functional and the NumPy reference."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import reference as R
from conftest import (BACKENDS, DEVICES, DTYPES, assert_close, check_op, isa_path, make, quantize, rand, same_format,
                      skip_unless_backend)

LAYOUTS = ["nchw", "channels_last", "sliced", "permuted"]

# (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
MAX_CASES = {
    "basic": (2, 3, 8, 8, 2, None, 0, 1, False),
    "3x3s2p1": (2, 3, 9, 11, 3, 2, 1, 1, False),
    "ceil": (1, 5, 9, 11, 3, 2, 1, 1, True),
    "ceil_edge": (2, 3, 6, 6, 3, 2, 0, 1, True),  # ceil adds a last window that starts inside the input
    "prime_rect": (1, 7, 13, 17, (2, 5), (3, 2), (1, 2), 1, False),
    "1x1_stride3": (2, 3, 7, 7, 1, 3, 0, 1, False),
    "stride_gt_kernel": (1, 3, 15, 14, 2, 5, 1, 1, True),
    "dilation": (2, 3, 12, 13, 3, 1, 1, (2, 3), False),
    "dilation_ceil": (1, 2, 11, 10, (2, 3), 2, 1, 2, True),
    "11x11": (1, 3, 23, 21, 11, 4, 5, 1, True),
    "pad_limit": (1, 1, 5, 6, 5, 1, 2, 1, False),
    "window_eq_input": (3, 1, 5, 4, (5, 4), 1, 0, 1, False),
    "wide_channels": (1, 33, 5, 6, 3, 2, 1, 1, True),
}

# (N, C, H, W, kernel, stride, padding, ceil_mode)
AVG_CASES = {
    "basic": (2, 3, 8, 8, 2, None, 0, False),
    "3x3s2p1": (2, 3, 9, 11, 3, 2, 1, False),
    "ceil": (1, 5, 9, 11, 3, 2, 1, True),
    "ceil_edge": (2, 3, 6, 6, 3, 2, 0, True),
    "prime_rect": (1, 7, 13, 17, (3, 5), (3, 2), (1, 2), True),
    "1x1_stride3": (2, 3, 7, 7, 1, 3, 0, False),
    "stride_gt_kernel": (1, 3, 15, 14, 2, 5, 1, True),
    "11x11": (1, 3, 23, 21, 11, 4, 5, True),
    "pad_limit": (1, 1, 5, 6, (4, 5), 1, (2, 2), False),
    "wide_channels": (1, 33, 5, 6, 3, 2, 1, True),
}


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def run_max(case, dtype, device="cpu", layout="nchw", seed=0):
    n, c, h, w, k, s, p, d, ceil = case
    rng = np.random.default_rng(seed)
    x = rand(rng, (n, c, h, w))

    def fast(t):
        y, i = fastconv.max_pool2d(t, k, s, p, d, ceil, return_indices=True)
        fast.indices = i
        return y

    def ref(t):
        y, i = F.max_pool2d(t, k, s, p, d, ceil, return_indices=True)
        ref.indices = i
        return y

    def ref_fwd(a):
        y, i = R.max_pool2d_fwd(a, k, s, p, d, ceil)
        ref_fwd.indices = i
        return y

    def ref_bwd(g, a):
        return [R.max_pool2d_bwd(g, ref_fwd.indices, a.shape)]

    kh, kw = _pair(k)
    check_op(fast, ref, [x], dtype, device, layout, grad=[True], ref_fwd=ref_fwd, ref_bwd=ref_bwd,
             grad_reduction=kh * kw, rng=rng)
    assert fast.indices.dtype == torch.int64
    same_format(fast.indices, ref.indices, "indices")
    if dtype not in (torch.bfloat16, torch.float16):  # rounding to half precision creates ties
        np.testing.assert_array_equal(fast.indices.cpu().numpy(), ref.indices.cpu().numpy())
    np.testing.assert_array_equal(fast.indices.cpu().numpy(), ref_fwd.indices)


def run_avg(case, dtype, device="cpu", layout="nchw", count_include_pad=True, divisor_override=None, seed=0):
    n, c, h, w, k, s, p, ceil = case
    rng = np.random.default_rng(seed)
    x = rand(rng, (n, c, h, w))
    args = (k, s, p, ceil, count_include_pad, divisor_override)
    kh, kw = _pair(k)
    check_op(lambda t: fastconv.avg_pool2d(t, *args), lambda t: F.avg_pool2d(t, *args), [x], dtype, device,
             layout, grad=[True], ref_fwd=lambda a: R.avg_pool2d_fwd(a, *args),
             ref_bwd=lambda g, a: [R.avg_pool2d_bwd(g, a.shape, *args)], reduction=kh * kw,
             grad_reduction=kh * kw, rng=rng)


def run_adaptive(n, c, h, w, out, dtype, device="cpu", layout="nchw", seed=0):
    rng = np.random.default_rng(seed)
    x = rand(rng, (n, c, h, w))
    red = max(1, -(-h // (out[0] or h)) + 1) * max(1, -(-w // (out[1] or w)) + 1)
    check_op(lambda t: fastconv.adaptive_avg_pool2d(t, out), lambda t: F.adaptive_avg_pool2d(t, out), [x], dtype,
             device, layout, grad=[True], ref_fwd=lambda a: R.adaptive_avg_pool2d_fwd(a, out),
             ref_bwd=lambda g, a: [R.adaptive_avg_pool2d_bwd(g, a.shape)], reduction=red, grad_reduction=red,
             rng=rng)


# ---------------------------------------------------------------- max_pool2d
@pytest.mark.parametrize("name", list(MAX_CASES))
def test_max_cases_isa(name, isa):
    run_max(MAX_CASES[name], torch.float32)


@pytest.mark.parametrize("name", ["3x3s2p1", "ceil", "dilation", "prime_rect"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_max_layouts_dtypes(name, layout, dtype, device):
    run_max(MAX_CASES[name], dtype, device, layout)


@settings(deadline=None, max_examples=25)
@given(data=st.data())
def test_max_hypothesis(data):
    k = (data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5)))
    d = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    p = tuple(data.draw(st.integers(0, ki // 2)) for ki in k)  # torch's limit: half the kernel
    s = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    # the dilated window fits the input, so no window lies wholly in the padding (torch reports an
    # index outside the input there)
    h = (k[0] - 1) * d[0] + 1 + data.draw(st.integers(0, 10))
    w = (k[1] - 1) * d[1] + 1 + data.draw(st.integers(0, 10))
    case = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 5)), h, w, k, s, p, d, data.draw(st.booleans()))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), "dtype")
    with isa_path(data.draw(st.sampled_from(["avx2", "portable"]), "isa")):
        run_max(case, dtype, "cpu", data.draw(st.sampled_from(LAYOUTS), "layout"), seed=data.draw(st.integers(0, 999)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_max_nan_inf(device, layout):
    """A NaN anywhere in the window wins, as in torch; -inf windows and +inf values are kept."""
    x = np.array([[[[1.0, np.nan, 3.0, np.nan, 0.5, 0.1], [2.0, 2.0, -np.inf, -np.inf, 0.2, np.inf],
                    [5.0, 5.0, -np.inf, -np.inf, np.nan, 1.0], [np.inf, 0.0, 1.0, 1.0, 2.0, 3.0]]]])
    x = np.concatenate([x, x[:, :, ::-1, ::-1]], axis=1)
    t = make(x, torch.float32, device, layout, requires_grad=True)
    y, i = fastconv.max_pool2d(t, 2, 2, return_indices=True)
    e, ei = F.max_pool2d(t.detach(), 2, 2, return_indices=True)
    assert_close(y, e, torch.float32)
    ry, ridx = R.max_pool2d_fwd(x, 2, 2)
    assert_close(y, ry, torch.float32)
    assert torch.equal(i.cpu(), ei.cpu()), f"indices {i} vs torch {ei}"
    y.sum().backward()
    assert_close(t.grad, R.max_pool2d_bwd(np.ones(ry.shape), ridx, x.shape), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("device", DEVICES)
def test_max_window_without_input(backend, layout, device):
    """Dilation 2 and padding 1 put both tap rows of these windows (rows -1 and 1) outside a 1-row
    input: the output is -inf, and its index is torch's (the first tap moved down by the dilation,
    past the plane). The gradient of a constant is zero: every backend skips those indices. (torch's
    own backward writes them out of bounds, so it is not run here.)"""
    skip_unless_backend(backend, device)
    kw = dict(kernel_size=(2, 4), stride=(2, 3), padding=(1, 2), dilation=2, ceil_mode=True)
    x = make(rand(np.random.default_rng(3), (2, 3, 1, 18)), torch.float32, device, layout, True)
    y_ref, i_ref = F.max_pool2d(x.detach(), return_indices=True, **kw)
    assert (i_ref >= 18).all() and torch.isinf(y_ref).all()  # the case the test is about
    with fastconv.use_backend(backend):
        y, i = fastconv.max_pool2d(x, return_indices=True, **kw)
        assert torch.equal(y, y_ref) and torch.equal(i, i_ref)
        y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, torch.zeros_like(x))
    np.testing.assert_array_equal(R.max_pool2d_bwd(np.ones(y.shape), i.cpu().numpy(), x.shape), 0)


@pytest.mark.parametrize("device", DEVICES)
def test_max_ties_overlapping_windows(device):
    """Overlapping windows that pick the same input accumulate its gradient; ties keep the first."""
    x = np.ones((1, 2, 5, 5))
    x[0, 0, 2, 2] = 3.0
    t = make(x, torch.float64, device, requires_grad=True)
    y, i = fastconv.max_pool2d(t, 3, 1, return_indices=True)
    e, ei = F.max_pool2d(t.detach(), 3, 1, return_indices=True)
    assert torch.equal(i.cpu(), ei.cpu())
    g = torch.arange(1.0, 1 + y.numel(), dtype=torch.float64).reshape(y.shape).to(device)
    y.backward(g)
    assert_close(t.grad, R.max_pool2d_bwd(g.cpu().numpy(), ei.cpu().numpy(), x.shape), torch.float64)


# Inference calls (no gradient, no return_indices) take max_pool2d_values: no indices computed.
@pytest.mark.parametrize("name", list(MAX_CASES))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_max_values_only_isa(name, layout, isa):
    n, c, h, w, k, s, p, d, ceil = MAX_CASES[name]
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, c, h, w, generator=g).round()  # rounding makes ties
    x.view(-1)[::17] = float("nan")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = fastconv.max_pool2d(x, k, s, p, d, ceil)
    want = F.max_pool2d(x, k, s, p, d, ceil)
    same_format(y, want, "output")
    torch.testing.assert_close(y, want, equal_nan=True, rtol=0, atol=0)


def test_max_values_op_has_no_gradient():
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    y = torch.ops.fastconv.max_pool2d_values(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="no gradient"):
        y.sum().backward()


# Outputs past 8 MB (values plus int64 indices) leave through an L1 buffer with non-temporal stores;
# 24 channels leave a partial chunk at the end of every output row.
@pytest.mark.parametrize("c,h", [(64, 200), (24, 330)])
def test_max_streamed_channels_last(c, h, isa):
    x = torch.randn(2, c, h, h - 3, generator=torch.Generator().manual_seed(c)).contiguous(
        memory_format=torch.channels_last)
    y, i = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    ry, ri = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert y.numel() * 12 >= 8 << 20
    same_format(y, ry, "output")
    assert torch.equal(y, ry) and torch.equal(i, ri)


# ---------------------------------------------------------------- avg_pool2d
@pytest.mark.parametrize("name", list(AVG_CASES))
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("divisor_override", [None, 3])
def test_avg_cases_isa(name, count_include_pad, divisor_override, isa):
    run_avg(AVG_CASES[name], torch.float32, count_include_pad=count_include_pad, divisor_override=divisor_override)


@pytest.mark.parametrize("name", ["3x3s2p1", "ceil", "prime_rect"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_avg_layouts_dtypes(name, layout, dtype, device):
    run_avg(AVG_CASES[name], dtype, device, layout, count_include_pad=name != "ceil")


@settings(deadline=None, max_examples=25)
@given(data=st.data())
def test_avg_hypothesis(data):
    k = (data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5)))
    p = tuple(data.draw(st.integers(0, ki // 2)) for ki in k)
    s = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    h = max(1, k[0] - 2 * p[0]) + data.draw(st.integers(0, 10))
    w = max(1, k[1] - 2 * p[1]) + data.draw(st.integers(0, 10))
    case = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 5)), h, w, k, s, p, data.draw(st.booleans()))
    div = data.draw(st.sampled_from([None, None, 1, 7]))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), "dtype")
    with isa_path(data.draw(st.sampled_from(["avx2", "portable"]), "isa")):
        run_avg(case, dtype, "cpu", data.draw(st.sampled_from(LAYOUTS), "layout"), data.draw(st.booleans()), div,
                seed=data.draw(st.integers(0, 999)))


# ---------------------------------------------------------------- adaptive_avg_pool2d
ADAPTIVE_CASES = [(2, 3, 7, 9, (3, 4)), (1, 5, 13, 11, (5, 3)), (2, 3, 6, 8, (1, 1)), (1, 2, 5, 5, (5, 5)),
                  (1, 3, 4, 3, (7, 5)), (2, 1, 17, 10, (None, 3)), (1, 33, 7, 7, (2, 2)), (3, 3, 10, 10, (3, 3))]


@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=str)
def test_adaptive_cases_isa(case, isa):
    run_adaptive(*case, torch.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_adaptive_layouts_dtypes(layout, dtype, device):
    run_adaptive(2, 5, 11, 9, (4, 3), dtype, device, layout)


@settings(deadline=None, max_examples=25)
@given(n=st.integers(1, 3), c=st.integers(1, 5), h=st.integers(1, 14), w=st.integers(1, 14), oh=st.integers(1, 8),
       ow=st.integers(1, 8), layout=st.sampled_from(LAYOUTS), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_adaptive_hypothesis(n, c, h, w, oh, ow, layout, dtype):
    run_adaptive(n, c, h, w, (oh, ow), dtype, "cpu", layout)


# Global pooling of channels_last input has its own path (64-channel register blocks, then a loop for
# the rest; batch 1 splits the channels across threads): channel counts around those sizes.
@pytest.mark.parametrize("n,c", [(1, 1), (1, 64), (3, 17), (1, 130), (2, 200)])
def test_adaptive_global_channels_last_isa(n, c, isa):
    run_adaptive(n, c, 7, 5, (1, 1), torch.float32, "cpu", "channels_last")
    run_avg((n, c, 7, 5, (7, 5), 1, 0, False), torch.float64, "cpu", "channels_last")


# ---------------------------------------------------------------- shared
POOLS = {
    "max": (lambda x: fastconv.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1)),
    "avg": (lambda x: fastconv.avg_pool2d(x, 3, 2, 1, True, False), lambda x: F.avg_pool2d(x, 3, 2, 1, True, False)),
    "adaptive": (lambda x: fastconv.adaptive_avg_pool2d(x, (3, 2)), lambda x: F.adaptive_avg_pool2d(x, (3, 2))),
}


@pytest.mark.parametrize("op", list(POOLS))
@pytest.mark.parametrize("device", DEVICES)
def test_unbatched(op, device):
    fast, ref = POOLS[op]
    x = torch.randn(3, 9, 8, dtype=torch.float64, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, e = fast(x), ref(x2)
    assert y.shape == e.shape and y.dim() == 3
    assert_close(y, e, torch.float64)
    g = torch.randn_like(y)
    y.backward(g)
    e.backward(g)
    assert_close(x.grad, x2.grad, torch.float64)


@pytest.mark.parametrize("op", list(POOLS))
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_empty_batch(op, device, layout):
    fast, ref = POOLS[op]
    x = make(np.zeros((0, 3, 9, 8)), torch.float32, device, layout, requires_grad=True)
    y, e = fast(x), ref(x.detach())
    assert y.shape == e.shape and y.dtype == e.dtype
    same_format(y, e)
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("op", ["avg", "adaptive"])
@pytest.mark.parametrize("device", DEVICES)
def test_avg_nan_inf(op, device):
    x = np.random.default_rng(0).uniform(-1, 1, (1, 2, 9, 8))
    x[0, 0, 4, 4], x[0, 1, 0, 0], x[0, 1, 8, 7] = np.nan, np.inf, -np.inf
    fast, ref = POOLS[op]
    t = make(x, torch.float32, device)
    y, e = fast(t), ref(t)
    assert_close(y, e, torch.float32, 9)


@pytest.mark.parametrize("op,args", [
    ("max", (3, 2, 1, 1, True)), ("max", ((2, 3), 1, (1, 0), 2, False)),
    ("avg", (3, 2, 1, True, False, None)), ("avg", ((2, 3), (1, 2), (1, 1), False, True, 5)),
    ("adaptive", ((3, 2),)), ("adaptive", ((4, 5),))])
def test_gradcheck(op, args):
    fn = {"max": fastconv.max_pool2d, "avg": fastconv.avg_pool2d, "adaptive": fastconv.adaptive_avg_pool2d}[op]
    # distinct values keep max pooling away from ties, where it is not differentiable
    x = torch.randperm(2 * 2 * 6 * 5, generator=torch.Generator().manual_seed(0)).double().reshape(2, 2, 6, 5)
    x = (x / 10).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fn(t, *args), (x,))


def test_quantized_inputs_stay_exact():
    """float64 max pooling returns an input value exactly (no arithmetic on the path)."""
    x = quantize(np.random.default_rng(1).normal(size=(2, 3, 8, 8)), torch.float64)
    y = fastconv.max_pool2d(torch.from_numpy(x), 3, 2, 1)
    assert np.isin(y.numpy(), x).all()


@pytest.mark.slow
def test_large_index_range():
    """Element offsets beyond 2**31 (64-bit index arithmetic): a 4.1 GiB bfloat16 input of 33 planes of
    2**26 elements, the last one wholly past 2**31; a global max pool finds one value per plane and
    reports its index within the plane. (The cheapest public path: every op needs the full input.)"""
    side, planes = 8192, 33
    try:
        x = torch.zeros((1, planes, side, side), dtype=torch.bfloat16)
    except RuntimeError:
        pytest.skip("cannot allocate 4.1 GiB")
    rows = [side - 1 - (c % 7) for c in range(planes)]
    cols = [side - 1 - 3 * (c % 5) for c in range(planes)]
    vals = [float(c + 1) for c in range(planes)]
    for c in range(planes):
        x[0, c, rows[c], cols[c]] = vals[c]
    m, i = fastconv.max_pool2d(x, side, return_indices=True)
    assert m.flatten().float().tolist() == vals
    assert i.flatten().tolist() == [r * side + q for r, q in zip(rows, cols)]
