"""fastconv.conv2d forward and backward against torch.nn.functional.conv2d and the NumPy reference."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import reference as R
from conftest import (DEVICES, DTYPES, ISAS, assert_close, check_op, conv_pads, isa_path, layout_args, make, rand,
                      same_format, skip_unless_backend)

# (N, C, H, W, K, R, S, stride, padding, dilation, groups, bias)
CASES = {
    "basic3x3": (2, 3, 9, 9, 4, 3, 3, 1, 1, 1, 1, True),
    "prime": (1, 5, 13, 11, 7, 3, 5, (2, 1), (1, 2), 1, 1, True),
    "1x1": (2, 7, 5, 6, 3, 1, 1, 1, 0, 1, 1, False),
    "1x1_stride2": (1, 4, 7, 7, 6, 1, 1, 2, 0, 1, 1, True),
    # channels-last 1x1 weight gradient as one GEMM over the pixels (C >= 16, K a multiple of kv)
    "1x1_gemm": (3, 40, 21, 19, 64, 1, 1, 1, 0, 1, 1, True),  # >= 1024 pixels
    "1x1_gemm_stride2": (6, 24, 29, 27, 32, 1, 1, 2, 0, 1, 1, False),
    "11x11": (1, 3, 19, 17, 5, 11, 11, 4, 2, 1, 1, True),
    "stride_gt_kernel": (2, 3, 17, 15, 4, 2, 2, 5, 1, 1, 1, True),
    "dilation": (1, 4, 15, 13, 3, 3, 3, 1, 2, (2, 3), 1, False),
    "groups": (2, 6, 8, 9, 9, 3, 3, 1, 1, 1, 3, True),
    "depthwise": (1, 5, 10, 7, 5, 3, 3, (1, 2), 1, 1, 5, True),
    "depthwise_mult": (2, 3, 9, 9, 6, 5, 5, 2, 2, 1, 3, False),
    "channels1": (3, 1, 12, 12, 1, 3, 3, 1, 0, 1, 1, True),
    "pad_limit": (1, 3, 4, 5, 2, 3, 3, 1, 2, 1, 1, True),  # padding = kernel - 1: border rows see one tap
    "pad_exceeds": (1, 2, 3, 3, 2, 3, 3, 2, 3, 1, 1, True),  # padding beyond the kernel: pure-bias rows
    "same_even": (2, 3, 8, 7, 4, 4, 2, 1, "same", 1, 1, True),  # asymmetric: extra row/col bottom/right
    "same_dilated": (1, 3, 9, 10, 2, 4, 3, 1, "same", (2, 3), 1, True),
    "valid": (2, 3, 9, 8, 4, 3, 5, 1, "valid", 1, 1, True),
    "kernel_eq_input": (2, 3, 5, 4, 3, 5, 4, 1, 0, 1, 1, True),
    "wide_channels": (1, 33, 6, 6, 17, 3, 3, 1, 1, 1, 1, True),
    # input channels in blocks (weight panel past L1), no bias: channels-last tiles accumulate in y
    "channel_blocks": (2, 300, 7, 6, 40, 3, 3, 2, 1, 1, 1, False),
    # strided input gradients by stride phase (>= 16 input channels per group; a phase with no tap)
    "phases_3x3_s2": (2, 24, 11, 10, 32, 3, 3, 2, 1, 1, 1, True),
    "phases_s3_groups": (1, 32, 13, 14, 8, 5, 2, (3, 4), (2, 0), 1, 2, False),
    # a small weight gradient over many dy rows: per-thread copies of dw over fixed shares of the rows
    # (dy read in place where channels-last with whole kv panels: K = 32)
    "stem_like": (4, 3, 40, 44, 32, 7, 7, 2, 3, 1, 1, False),
    "small_dw_gather": (4, 16, 30, 26, 20, 3, 3, 2, 1, 1, 1, True),
    "small_dw_gather_k32": (4, 16, 30, 26, 32, 3, 3, 2, 1, 1, 1, False),
}


def run_conv(case, dtype, device="cpu", layout="nchw", grad=True, seed=0):
    n, c, h, w, k, r, s, stride, padding, dilation, groups, bias = case
    rng = np.random.default_rng(seed)
    arrays = [rand(rng, (n, c, h, w)), rand(rng, (k, c // groups, r, s))] + ([rand(rng, (k,))] if bias else [])
    sp = (stride, stride) if isinstance(stride, int) else stride
    dp = (dilation, dilation) if isinstance(dilation, int) else dilation
    pads = conv_pads(padding, (r, s), dp)

    def fast(x, wt, b=None):
        return fastconv.conv2d(x, wt, b, stride, padding, dilation, groups)

    def ref(x, wt, b=None):
        return F.conv2d(x, wt, b, stride, padding, dilation, groups)

    def ref_fwd(x, wt, b=None):
        return R.conv2d_fwd(x, wt, b, sp, pads, dp, groups)

    def ref_bwd(g, x, wt, b=None):
        out = [R.conv2d_bwd_input(g, wt, x.shape, sp, pads, dp, groups),
               R.conv2d_bwd_weight(g, x, wt.shape, sp, pads, dp, groups)]
        return out + ([R.conv2d_bwd_bias(g)] if b is not None else [])

    p = (h + pads[0] + pads[1] - dp[0] * (r - 1) - 1) // sp[0] + 1
    q = (w + pads[2] + pads[3] - dp[1] * (s - 1) - 1) // sp[1] + 1
    red = (c // groups) * r * s
    return check_op(fast, ref, arrays, dtype, device, layout, grad=[grad] * len(arrays), ref_fwd=ref_fwd,
                    ref_bwd=ref_bwd, reduction=red, grad_reduction=max(red, n * p * q, (k // groups) * r * s),
                    rng=rng, layouts=layout_args(layout, len(arrays)))


@pytest.mark.parametrize("name", list(CASES))
def test_cases_isa(name, isa):
    run_conv(CASES[name], torch.float32)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("device", DEVICES)
def test_cases_float64(name, device):
    run_conv(CASES[name], torch.float64, device)


LAYOUT_CASES = ["prime", "groups", "same_even", "1x1", "depthwise", "1x1_gemm_stride2", "phases_3x3_s2",
                "stem_like", "small_dw_gather", "small_dw_gather_k32"]


@pytest.mark.parametrize("name", ["1x1_gemm", "1x1_gemm_stride2"])
@pytest.mark.parametrize("layout", ["channels_last", "x_cl"])
def test_pointwise_channels_last_isa(name, layout, isa):
    run_conv(CASES[name], torch.float32, "cpu", layout)


@pytest.mark.parametrize("name", ["stem_like", "small_dw_gather", "small_dw_gather_k32", "phases_3x3_s2"])
def test_weight_grad_channels_last_isa(name, isa):
    """The general weight gradient on channels-last data: per-thread copies of a small dw over fixed
    shares of dy's rows (all but the last) or one task per tap; dy read in place (K = 32: whole
    panels on every ISA) or packed (K = 20)."""
    run_conv(CASES[name], torch.float32, "cpu", "channels_last")


@pytest.mark.parametrize("name", ["channel_blocks", "1x1", "1x1_gemm_stride2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_channels_last_plain_output_isa(name, dtype, isa):
    """Without bias or epilogue the channels-last forward (and the input gradient) write the
    micro-kernel's tiles straight into the output: full panels there, a partial panel (K = 40) through
    the row buffer, channel blocks accumulating in place."""
    run_conv(CASES[name], dtype, "cpu", "channels_last")


@pytest.mark.parametrize("case", [
    (2, 1024, 5, 7, 48, 1, 1, 1, 0, 1, 1, True),  # the forward's pixels 4 KB apart: read from a wider-pitch copy
    (2, 1024, 7, 6, 40, 1, 1, 2, 0, 1, 1, False),  # strided: the gathered pixels take the wider pitch
    (3, 40, 5, 7, 1024, 1, 1, 1, 0, 1, 1, False),  # the input gradient reads dY at 4 KB a pixel
    (2, 40, 7, 6, 1024, 1, 1, 2, 0, 1, 1, True),  # strided: rows of 3 pixels, dY read in place
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_pointwise_pixel_pitch_isa(case, dtype, isa):
    """1x1 layers whose channel count takes a multiple of 4 KB per pixel (with the AVX-512 kernel's
    12-row tiles all of a tile's rows in one L1 set): the GEMM reads a copy with a wider pixel pitch;
    forward and both gradients, every ISA."""
    run_conv(case, dtype, "cpu", "channels_last")


@pytest.mark.parametrize("c, k, n, h, w, stride", [
    (520, 512, 1, 33, 32, 1),  # six blocks of dW^T: 180, 180 and 160 input channels (a partial tile)
    (520, 512, 4, 33, 32, 2),
    (520, 256, 2, 17, 31, 1),  # three blocks for two threads: the pixels split too
    (520, 512, 2, 4, 5, 1),  # a few pixels (ResNet's last stage at a small batch)
    (96, 64, 3, 19, 23, 1),  # one block, per-thread partial sums over the pixels
])
def test_pointwise_channels_last_wide_weight_grad(c, k, n, h, w, stride, isa):
    """The channels-last 1x1 weight gradient: dW^T in blocks that stay in L2 over all the pixels, on
    wide layers (rows 2 KB or more apart: X and dY are packed per chunk), channel counts that leave
    partial tiles, against torch in float64."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    p, q = (h - 1) // stride + 1, (w - 1) // stride + 1
    dy = torch.randn(n, k, p, q, generator=g).contiguous(memory_format=torch.channels_last)
    got = torch.ops.fastconv.conv2d_bwd_weight(dy, x, [k, c, 1, 1], [stride] * 2, [0] * 4, [1, 1], 1)
    want = torch.ops.aten.convolution_backward(dy.double(), x.double(), torch.empty(k, c, 1, 1).double(), None,
                                               [stride] * 2, [0, 0], [1, 1], False, [0, 0], 1,
                                               [False, True, False])[1]
    assert_close(got, want, torch.float32, n * p * q)


@pytest.mark.parametrize("c, k, n, h, w, r, stride, pad, dil", [
    (40, 64, 3, 15, 13, 3, 2, 1, 1),  # ResNet's strided 3x3 (partial channel tiles; 9 taps, 1 block)
    (520, 512, 2, 7, 6, 3, 2, 1, 1),  # dW^T per tap in 256 x 256 blocks
    (24, 32, 2, 5, 5, 3, 1, 0, 1),  # a 3x3 map out (Winograd does not take it): X read in place
    (16, 96, 3, 14, 11, 5, 2, 2, 2),  # 5x5, dilated
    (32, 64, 1, 12, 13, 2, 3, 0, 1),  # stride above the kernel: pixels no tap reads
    (64, 64, 8, 64, 63, 3, 2, 1, 1),  # 8.6 MB of padded input: every tap on each chunk in turn
])
def test_taps_weight_grad_channels_last(c, k, n, h, w, r, stride, pad, dil, isa):
    """The channels-last weight gradient of a kernel larger than 1x1 as one 1x1 gradient per tap,
    over the padded input shifted by the tap, all taps in one parallel loop; against torch in
    float64."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    p, q = ((d + 2 * pad - dil * (r - 1) - 1) // stride + 1 for d in (h, w))
    dy = torch.randn(n, k, p, q, generator=g).contiguous(memory_format=torch.channels_last)
    args = ([stride] * 2, [pad] * 4, [dil] * 2, 1)
    got = torch.ops.fastconv.conv2d_bwd_weight(dy, x, [k, c, r, r], *args)
    want = torch.ops.aten.convolution_backward(dy.double(), x.double(), torch.empty(k, c, r, r).double(), None,
                                               [stride] * 2, [pad] * 2, [dil] * 2, False, [0, 0], 1,
                                               [False, True, False])[1]
    same_format(got, want)
    assert_close(got, want, torch.float32, n * p * q)


@pytest.mark.parametrize("name", LAYOUT_CASES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "x_cl", "w_cl", "sliced", "permuted"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_layouts_dtypes(name, layout, dtype, device):
    if dtype == torch.float16 and device == "cpu" and layout != "nchw" and name != "prime":
        pytest.skip("float16 on CPU: one case per layout is enough")
    run_conv(CASES[name], dtype, device, layout)


@settings(deadline=None, max_examples=30)
@given(data=st.data())
def test_hypothesis(data):
    groups = data.draw(st.sampled_from([1, 1, 2, 3]), "groups")
    cpg, kpg = data.draw(st.integers(1, 4), "cpg"), data.draw(st.integers(1, 4), "kpg")
    r, s = data.draw(st.integers(1, 5), "r"), data.draw(st.integers(1, 5), "s")
    stride = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    dilation = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    if stride == (1, 1) and data.draw(st.booleans(), "same"):
        padding = "same"
    else:
        padding = (data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3)))
    pads = conv_pads(padding, (r, s), dilation)
    h = max(1, dilation[0] * (r - 1) + 1 - pads[0] - pads[1]) + data.draw(st.integers(0, 12), "h_extra")
    w = max(1, dilation[1] * (s - 1) + 1 - pads[2] - pads[3]) + data.draw(st.integers(0, 12), "w_extra")
    n = data.draw(st.integers(1, 3), "n")
    case = (n, cpg * groups, h, w, kpg * groups, r, s, stride, padding, dilation, groups, data.draw(st.booleans()))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), "dtype")
    layout = data.draw(st.sampled_from(["nchw", "channels_last", "x_cl", "sliced", "permuted"]), "layout")
    with isa_path(data.draw(st.sampled_from(["avx2", "portable"]), "isa")):
        run_conv(case, dtype, "cpu", layout, seed=data.draw(st.integers(0, 2**16)))


@pytest.mark.parametrize("device", DEVICES)
def test_unbatched(device):
    rng = np.random.default_rng(1)
    x = make(rand(rng, (3, 10, 9)), torch.float32, device, requires_grad=True)
    wt = make(rand(rng, (4, 3, 3, 2)), torch.float32, device, requires_grad=True)
    y = fastconv.conv2d(x, wt, None, 2, "valid")
    x2, w2 = x.detach().clone().requires_grad_(), wt.detach().clone().requires_grad_()
    e = F.conv2d(x2, w2, None, 2, "valid")
    assert y.shape == e.shape == (4, 4, 4)
    assert_close(y, e, torch.float32, 18)
    g = torch.randn_like(y)
    y.backward(g)
    e.backward(g)
    assert_close(x.grad, x2.grad, torch.float32, 12)
    assert_close(wt.grad, w2.grad, torch.float32, 20)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_empty_batch(device, channels_last):
    x = torch.randn(0, 3, 8, 7, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(5, 3, 3, 3, device=device)
    b = torch.randn(5, device=device)
    x.requires_grad_(), wt.requires_grad_(), b.requires_grad_()
    y = fastconv.conv2d(x, wt, b, 1, 1)
    e = F.conv2d(x, wt, b, 1, 1)
    assert y.shape == e.shape == (0, 5, 8, 7) and y.dtype == e.dtype
    same_format(y, e)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(wt.grad, torch.zeros_like(wt)) and torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize("device", DEVICES)
def test_nan_inf_propagate(device):
    rng = np.random.default_rng(3)
    x = rand(rng, (1, 2, 7, 7))
    x[0, 0, 3, 3] = np.nan
    x[0, 1, 0, 6] = np.inf
    wt = rand(rng, (3, 2, 3, 3))
    xt, wtt = make(x, torch.float32, device), make(wt, torch.float32, device)
    y = fastconv.conv2d(xt, wtt, None, 1, 1)
    e = F.conv2d(xt, wtt, None, 1, 1)
    assert torch.equal(torch.isnan(y), torch.isnan(e)), "NaN positions differ from torch"
    assert torch.equal(torch.isinf(y), torch.isinf(e)), "Inf positions differ from torch"
    finite = torch.isfinite(e)
    assert_close(y[finite], e[finite], torch.float32, 18)


SPECIAL_GEOMS = {  # n, c, h, w, k, r, s, stride, padding, dilation, groups
    "winograd": (1, 16, 16, 16, 16, 3, 3, 1, 1, 1, 1), "strided": (2, 8, 9, 7, 6, 3, 3, 2, 1, 1, 1),
    "depthwise": (1, 8, 9, 9, 8, 3, 3, 1, 1, 1, 8), "depthwise_strided": (1, 8, 9, 9, 8, 3, 3, 2, 1, 1, 8),
    "pointwise": (1, 5, 7, 7, 6, 1, 1, 1, 0, 1, 1), "dilated": (1, 6, 11, 10, 4, 3, 3, 1, 2, 2, 1),
    "grouped_5x5": (1, 4, 8, 8, 6, 5, 5, 1, 2, 1, 2), "stem_7x7": (1, 3, 12, 12, 8, 7, 7, 2, 3, 1, 1),
    "strided_taps": (2, 16, 9, 7, 32, 3, 3, 2, 1, 1, 1),  # channels-last weight gradient tap by tap
}


@pytest.mark.parametrize("geom", list(SPECIAL_GEOMS))
def test_special_values_match_reference(geom, isa):
    """NaN and infinities in the input, the weight or grad_out (one at a corner, next to the padding):
    the places of NaN and infinities in the output and both gradients are the float64 reference's,
    in both layouts and dtypes (padding is part of the zero-padded input: 0 * inf = NaN in the
    forward and weight gradient; the input gradient sums over existing outputs only)."""
    _special_values_match_reference(geom, "native")


@pytest.mark.parametrize("geom", list(SPECIAL_GEOMS))
def test_special_values_match_reference_numba(geom):
    skip_unless_backend("numba", "cpu")
    _special_values_match_reference(geom, "numba")


def _special_values_match_reference(geom, backend):
    n, c, h, w, k, r, s, stride, pad, dil, groups = SPECIAL_GEOMS[geom]
    g = torch.Generator().manual_seed(5)
    for where, val, fmt, dtype in itertools.product("xwg", [float("nan"), float("inf"), -float("inf")],
                                                    [torch.contiguous_format, torch.channels_last],
                                                    [torch.float32, torch.float64]):
        x = torch.randn(n, c, h, w, generator=g, dtype=dtype).contiguous(memory_format=fmt)
        wt = torch.randn(k, c // groups, r, s, generator=g, dtype=dtype).contiguous(memory_format=fmt)
        gy = torch.randn(F.conv2d(x, wt, None, stride, pad, dil, groups).shape, generator=g, dtype=dtype)
        t = {"x": x, "w": wt, "g": gy}[where]
        t[tuple(int(torch.randint(0, d, (), generator=g)) for d in t.shape)] = val
        t[0, 0, 0, 0] = val
        got, want = [], []
        for name, out in ((backend, got), ("reference", want)):
            xr, wr = x.clone().requires_grad_(), wt.clone().requires_grad_()
            with fastconv.use_backend(name):
                y = fastconv.conv2d(xr, wr, None, stride, pad, dil, groups)
                out += [y.detach()] + list(torch.autograd.grad(y, (xr, wr), gy))
        for name, a, b in zip(("output", "input gradient", "weight gradient"), got, want):
            case = f"{name}, {val} in {where}, {fmt}, {dtype}"
            assert torch.equal(a.isnan(), b.isnan()), f"NaN places differ: {case}"
            assert torch.equal(a.isinf(), b.isinf()) and torch.equal(a[a.isinf()], b[b.isinf()]), case


@pytest.mark.parametrize("case", [(1, 2, 5, 6, 3, 3, 2, 1, 1, 1, 1, True), (1, 4, 6, 5, 2, 2, 3, 2, (1, 0), (1, 2), 2, True),
                                  (1, 3, 5, 5, 3, 3, 3, 1, "same", 1, 3, False), (1, 2, 6, 6, 2, 4, 4, 1, "same", 1, 1, True)])
def test_gradcheck(case):
    n, c, h, w, k, r, s, stride, padding, dilation, groups, bias = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=gen, requires_grad=True)
    wt = torch.randn(k, c // groups, r, s, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(k, dtype=torch.float64, generator=gen, requires_grad=True) if bias else None
    args = (x, wt, b) if bias else (x, wt)
    assert torch.autograd.gradcheck(
        lambda *a: fastconv.conv2d(a[0], a[1], a[2] if bias else None, stride, padding, dilation, groups), args)


def test_isa_paths_agree():
    """Every available code path gives the same result up to float32 rounding on one larger case."""
    rng = np.random.default_rng(9)
    x = make(rand(rng, (2, 16, 23, 19)), torch.float32)
    wt = make(rand(rng, (24, 16, 3, 3)), torch.float32)
    outs = {}
    for name in ISAS:
        C = __import__("fastconv._C", fromlist=["_C"])
        before = C.get_isa()
        if C.set_isa(name):
            outs[name] = fastconv.conv2d(x, wt, None, 1, 1)
        C.set_isa(before)
    base = F.conv2d(x, wt, None, 1, 1)
    for name, y in outs.items():
        assert_close(y, base, torch.float32, 16 * 9, what=f"isa {name}")
