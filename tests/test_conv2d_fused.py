"""fastconv.conv2d_fused against the torch composite conv -> * scale + shift + bias -> add / sort -> relu
and the NumPy reference, forward and backward (including the gradients of scale, shift, bias and the
residual)."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _ext
from fastconv import reference as R
from conftest import DEVICES, DTYPES, check_op, conv_pads, isa_path, layout_args, rand, same_format, winograd

COMBINES = [None, "add", "sort"]
# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
GEOMETRIES = {
    "3x3": (2, 3, 9, 8, 4, 3, 3, 1, 1, 1, 1),
    "prime_strided": (1, 5, 13, 11, 7, 3, 5, (2, 1), (1, 2), 1, 1),
    "1x1": (2, 7, 5, 6, 3, 1, 1, 1, 0, 1, 1),
    "groups_dilated": (2, 6, 11, 9, 9, 3, 3, 1, 2, (2, 1), 3),
    "depthwise": (1, 5, 10, 7, 5, 3, 3, 2, 1, 1, 5),
    "same_even": (1, 3, 8, 7, 4, 4, 2, 1, "same", 1, 1),
    "11x11": (1, 2, 15, 14, 3, 11, 11, 3, 4, 1, 1),
}


def torch_fused(x, wt, b, stride, padding, dilation, groups, scale, shift, residual, combine, relu, mode, eps):
    """The composite in torch ops; its output takes the memory format of torch's convolution (the
    elementwise tail would otherwise let the residual's layout decide)."""
    z = F.conv2d(x, wt, None, stride, padding, dilation, groups)
    fmt = torch.channels_last if z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous() \
        else torch.contiguous_format
    if scale is not None:
        z = z * scale.view(1, -1, 1, 1)
    for t in (shift, b):
        if t is not None:
            z = z + t.view(1, -1, 1, 1)
    if combine == "add":
        z = z + residual
    elif combine == "sort":
        p = F.relu(residual) * F.relu(z)
        z = residual + z + (torch.sqrt(p + eps) if mode == "sqrt" else p)
    return (F.relu(z) if relu else z).contiguous(memory_format=fmt)


def run_fused(geom, dtype, device="cpu", layout="nchw", combine="sort", relu=True, mode="sqrt", eps=0.01,
              bias=True, scale=True, shift=True, seed=0, grad=True):
    n, c, h, w, k, r, s, stride, padding, dilation, groups = geom
    sp = (stride, stride) if isinstance(stride, int) else stride
    dp = (dilation, dilation) if isinstance(dilation, int) else dilation
    pads = conv_pads(padding, (r, s), dp)
    p = (h + pads[0] + pads[1] - dp[0] * (r - 1) - 1) // sp[0] + 1
    q = (w + pads[2] + pads[3] - dp[1] * (s - 1) - 1) // sp[1] + 1
    rng = np.random.default_rng(seed)
    names = ["input", "weight"] + [nm for nm, on in (("bias", bias), ("scale", scale), ("shift", shift),
                                                       ("residual", combine is not None)) if on]
    shapes = {"input": (n, c, h, w), "weight": (k, c // groups, r, s), "bias": (k,), "scale": (k,), "shift": (k,),
              "residual": (n, k, p, q)}
    arrays = [rand(rng, shapes[nm]) for nm in names]
    if "scale" in names:  # keep scales away from 0 so each term matters
        arrays[names.index("scale")] = rng.uniform(0.5, 1.5, k) * rng.choice([-1, 1], k)

    def kwargs(vals):
        d = dict(zip(names, vals))
        return d["input"], d["weight"], d.get("bias"), dict(scale=d.get("scale"), shift=d.get("shift"),
                                                           residual=d.get("residual"))

    def fast(*vals):
        x, wt, b, kw = kwargs(vals)
        return fastconv.conv2d_fused(x, wt, b, stride, padding, dilation, groups, combine=combine, relu=relu,
                                     mode=mode, eps=eps, **kw)

    def ref(*vals):
        x, wt, b, kw = kwargs(vals)
        return torch_fused(x, wt, b, stride, padding, dilation, groups, kw["scale"], kw["shift"], kw["residual"],
                           combine, relu, mode, eps)

    def ref_fwd(*vals):
        x, wt, b, kw = kwargs(vals)
        return R.conv2d_fused(x, wt, b, sp, pads, dp, groups, combine=combine, relu=relu, mode=mode, eps=eps, **kw)

    def ref_bwd(g, *vals):
        x, wt, b, kw = kwargs(vals)
        grads = R.conv2d_fused_bwd(g, x, wt, b, sp, pads, dp, groups, combine=combine, relu=relu, mode=mode,
                                   eps=eps, **kw)
        return [grads[nm] for nm in names]

    red = (c // groups) * r * s
    lay = layout_args(layout, len(names))
    if "residual" in names and layout in ("x_cl", "w_cl"):
        lay[-1] = "channels_last" if layout == "x_cl" else "nchw"
    return check_op(fast, ref, arrays, dtype, device, layout, grad=[grad] * len(names), ref_fwd=ref_fwd,
                    ref_bwd=ref_bwd, reduction=red, grad_reduction=max(red, n * p * q, (k // groups) * r * s),
                    rng=rng, layouts=lay)


EPILOGUES = [dict(combine=cb, relu=rl, mode=md, bias=b, scale=sc, shift=sh)
             for cb, rl, md in itertools.product(COMBINES, [False, True], ["sqrt", "product"])
             if cb == "sort" or md == "sqrt"
             for b, sc, sh in [(True, True, True), (False, False, False), (True, False, False), (False, True, True)]]


def _id(e):
    return "-".join(f"{k}={v}" for k, v in e.items())


@pytest.mark.parametrize("epilogue", EPILOGUES, ids=_id)
def test_epilogues_isa(epilogue, isa):
    run_fused(GEOMETRIES["3x3"], torch.float32, **epilogue)


# Whole panels of output channels (70 = 2 x 32 + 6, 4 x 16 + 6) into a channels_last output: the
# micro-kernel applies the epilogue in registers as it stores the last channel block's tiles.
@pytest.mark.parametrize("epilogue", [e for e in EPILOGUES if e["combine"] != "sort" or e["relu"]], ids=_id)
@pytest.mark.parametrize("geom", [(2, 5, 7, 9, 70, 3, 3, 1, 1, 1, 1), (1, 40, 6, 5, 70, 1, 1, 1, 0, 1, 1)],
                         ids=["3x3", "1x1"])
def test_epilogues_in_registers_isa(epilogue, geom, isa):
    with winograd(False):
        run_fused(geom, torch.float32, layout="channels_last", grad=False, **epilogue)


# Whole panels only (64 and 2 x 64 output channels on every ISA) and inputs small enough for one
# tile's pixels to stay in L1: a task takes an output row and computes each tile for every panel in
# turn, the epilogue in registers; the plain convolution and input gradient take it too.
@pytest.mark.parametrize("epilogue", [e for e in EPILOGUES if e["combine"] != "sort"], ids=_id)
@pytest.mark.parametrize("geom", [(2, 5, 7, 9, 64, 3, 3, 1, 1, 1, 1), (3, 40, 6, 5, 64, 1, 1, 1, 0, 1, 1),
                                  (1, 24, 9, 8, 128, 3, 3, 2, 1, 1, 2)], ids=["3x3", "1x1", "groups_strided"])
def test_tile_outer_isa(epilogue, geom, isa):
    with winograd(False):
        run_fused(geom, torch.float32, layout="channels_last", grad=epilogue["combine"] is None, **epilogue)


def test_epilogue_in_registers_special_values(isa):
    """NaN and infinities of the residual pass the in-register add and ReLU as torch's do."""
    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(1, 8, 5, 6, generator=g).contiguous(memory_format=cl)
    w = torch.randn(64, 8, 1, 1, generator=g).contiguous(memory_format=cl)
    r = torch.randn(1, 64, 5, 6, generator=g).contiguous(memory_format=cl)
    r[0, 3, 1, 2], r[0, 40, 4, 5], r[0, 63, 0, 0] = float("nan"), float("inf"), float("-inf")
    b = torch.randn(64, generator=g)
    y = fastconv.conv2d_fused(x, w, b, residual=r, combine="add", relu=True)
    want = F.relu(F.conv2d(x, w, b) + r)
    torch.testing.assert_close(y, want, equal_nan=True, rtol=1e-5, atol=1e-5)
    assert y[0, 3, 1, 2].isnan() and y[0, 40, 4, 5] == float("inf") and y[0, 63, 0, 0] == 0


# The 1x1 paths: NCHW as weights x packed pixel panels (reduction sliced past 256 channels), dense
# channels_last as one flat GEMM over N*H*W pixels (rows of a divisor of it, or the image rows when
# none fits), strided channels_last through a gathered copy. Awkward pixel counts and channel counts.
POINTWISE = {
    "flat_189px": (3, 7, 7, 9, 13, 1, 1, 1, 0, 1, 1),
    "prime_97px": (1, 5, 1, 97, 6, 1, 1, 1, 0, 1, 1),
    "wide_c300": (2, 300, 5, 3, 17, 1, 1, 1, 0, 1, 1),
    "stride2": (2, 9, 11, 8, 19, 1, 1, 2, 0, 1, 1),
    "stride_2x3": (1, 33, 9, 10, 8, 1, 1, (2, 3), 0, 1, 1),
}


# Outputs past 24 MB are written with non-temporal stores (both 1x1 paths and the general one).
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("r", [1, 3])
def test_streamed_outputs(layout, r):
    g = torch.Generator().manual_seed(r)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 8, 256, 200, generator=g).contiguous(memory_format=fmt)
    w = torch.randn(64, 8, r, r, generator=g).contiguous(memory_format=fmt)
    res = torch.randn(2, 64, 256, 200, generator=g).contiguous(memory_format=fmt)
    b = torch.randn(64, generator=g)
    with torch.no_grad():
        y = fastconv.conv2d_fused(x, w, b, padding=r // 2, residual=res, combine="add", relu=True)
    assert y.numel() * 4 >= 24 << 20
    want = F.relu(F.conv2d(x, w, b, padding=r // 2) + res)
    same_format(y, want, "output")
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("geom", list(POINTWISE))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_pointwise_paths_isa(geom, layout, isa):
    run_fused(POINTWISE[geom], torch.float32, layout=layout, combine="sort", relu=True, grad=False)
    run_fused(POINTWISE[geom], torch.float32, layout=layout, combine="add", relu=False, scale=False, shift=False)


@pytest.mark.parametrize("geom", list(GEOMETRIES))
@pytest.mark.parametrize("combine", COMBINES)
@pytest.mark.parametrize("device", DEVICES)
def test_geometries(geom, combine, device):
    run_fused(GEOMETRIES[geom], torch.float64, device, combine=combine)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "x_cl", "w_cl", "sliced", "permuted"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_layouts_dtypes(layout, dtype, device):
    # In half precision the rounded pre-activations fall on the other side of the relu / sort gates
    # than float32's now and then, and each flip moves whole gradient terms: the backward is compared
    # on the continuous epilogue (add, no relu) there; the forward on all.
    half = dtype in (torch.bfloat16, torch.float16)
    run_fused(GEOMETRIES["prime_strided"], dtype, device, layout, combine="sort", relu=True, grad=not half)
    if half:
        run_fused(GEOMETRIES["prime_strided"], dtype, device, layout, combine="add", relu=False)


@settings(deadline=None, max_examples=25)
@given(data=st.data())
def test_hypothesis(data):
    groups = data.draw(st.sampled_from([1, 1, 2]))
    r, s = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    stride = data.draw(st.integers(1, 2))
    padding = data.draw(st.integers(0, 2))
    h = max(1, r - 2 * padding) + data.draw(st.integers(0, 8))
    w = max(1, s - 2 * padding) + data.draw(st.integers(0, 8))
    geom = (data.draw(st.integers(1, 2)), groups * data.draw(st.integers(1, 3)), h, w,
            groups * data.draw(st.integers(1, 3)), r, s, stride, padding, 1, groups)
    ep = data.draw(st.sampled_from(EPILOGUES))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    layout = data.draw(st.sampled_from(["nchw", "channels_last", "x_cl", "sliced"]))
    with isa_path(data.draw(st.sampled_from(["avx2", "portable"]))):
        run_fused(geom, dtype, "cpu", layout, eps=data.draw(st.sampled_from([1e-4, 0.01, 1.0])),
                  seed=data.draw(st.integers(0, 999)), **ep)


@pytest.mark.parametrize("device", DEVICES)
def test_unbatched(device):
    x = torch.randn(3, 9, 8, dtype=torch.float64, device=device)
    wt = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device)
    res = torch.randn(4, 9, 8, dtype=torch.float64, device=device)
    y = fastconv.conv2d_fused(x, wt, padding=1, residual=res, combine="sort", relu=True)
    e = torch_fused(x, wt, None, 1, 1, 1, 1, None, None, res, "sort", True, "sqrt", 0.01)
    assert y.shape == e.shape == (4, 9, 8)
    torch.testing.assert_close(y, e, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("combine", COMBINES)
def test_empty_batch(device, combine):
    x = torch.randn(0, 3, 8, 7, device=device, requires_grad=True)
    wt = torch.randn(5, 3, 3, 3, device=device, requires_grad=True)
    res = torch.randn(0, 5, 8, 7, device=device) if combine else None
    y = fastconv.conv2d_fused(x, wt, padding=1, residual=res, combine=combine, relu=True)
    e = torch_fused(x, wt, None, 1, 1, 1, 1, None, None, res, combine, True, "sqrt", 0.01)
    assert y.shape == e.shape == (0, 5, 8, 7)
    same_format(y, e)
    y.sum().backward()
    assert torch.equal(wt.grad, torch.zeros_like(wt))


@pytest.mark.parametrize("combine,relu,mode", [(None, False, "sqrt"), (None, True, "sqrt"), ("add", False, "sqrt"),
                                               ("add", True, "sqrt"), ("sort", False, "sqrt"), ("sort", True, "sqrt"),
                                               ("sort", False, "product"), ("sort", True, "product")])
@pytest.mark.parametrize("eps", [1e-3, 1.0])
def test_gradcheck(combine, relu, mode, eps):
    if eps != 1e-3 and combine != "sort":
        pytest.skip("eps only matters for sort")
    gen = torch.Generator().manual_seed(4)

    def t(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_()

    x, wt, b, sc, sh = t(1, 4, 5, 6), t(4, 2, 3, 2), t(4), t(4), t(4)
    res = t(1, 4, 3, 7) if combine else None
    args = (x, wt, b, sc, sh) + ((res,) if combine else ())

    def fn(x, wt, b, sc, sh, res=None):
        return fastconv.conv2d_fused(x, wt, b, (1, 1), (0, 1), (1, 1), 2, scale=sc, shift=sh, residual=res,
                                     combine=combine, relu=relu, mode=mode, eps=eps)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5, fast_mode=True)


def test_matches_plain_conv():
    """No epilogue: the fused op is the plain convolution."""
    x, wt, b = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 3, 3), torch.randn(4)
    torch.testing.assert_close(fastconv.conv2d_fused(x, wt, b, 2, 1), fastconv.conv2d(x, wt, b, 2, 1),
                               atol=1e-5, rtol=1e-5)


# Winograd F(4x4, 3x3) and F(2x2, 5x5) (float32, stride 1, large enough layers): outputs that overhang
# the tiles (P, Q not multiples of the tile), channel counts off the vector width, reductions past the
# 256-channel slice, tile blocks across images, output-channel groups sharing transformed inputs or
# not, padding 0 to 3. Backward runs the stride-1 bwd_input through it as well (the 5x5 weight
# gradient takes the GEMM path).
WINOGRAD = {
    "17x18_c19_k21": (1, 19, 17, 18, 21, 3, 3, 1, 1, 1, 1),
    "small_images_n8": (8, 16, 6, 7, 24, 3, 3, 1, 1, 1, 1),
    "c300_pad0": (4, 300, 10, 10, 18, 3, 3, 1, 0, 1, 1),
    "40x40_k16_pad2": (1, 17, 38, 37, 16, 3, 3, 1, 2, 1, 1),
    "5x5_27x27_c19_k21": (1, 19, 27, 27, 21, 5, 5, 1, 2, 1, 1),
    "5x5_small_images_n3_pad0": (3, 16, 9, 11, 40, 5, 5, 1, 0, 1, 1),
    "5x5_c300_k33_pad1": (1, 300, 12, 12, 33, 5, 5, 1, 1, 1, 1),
    "5x5_30x29_pad3": (1, 17, 30, 29, 16, 5, 5, 1, 3, 1, 1),
}


def _conv_pair(geom, layout, seed=0):
    n, c, h, w, k, r, s, stride, padding, dilation, groups = geom
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=fmt)
    wt = (torch.randn(k, c, r, s, generator=g) / (c * r * s) ** 0.5).contiguous(memory_format=fmt)
    return x, wt, padding


@pytest.mark.parametrize("geom", list(WINOGRAD))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_winograd_isa(geom, layout, isa):
    with winograd(True):
        run_fused(WINOGRAD[geom], torch.float32, layout=layout, combine="sort", relu=True, grad=False)
        run_fused(WINOGRAD[geom], torch.float32, layout=layout, combine="add", relu=False, scale=False, shift=False)
        # The path is taken: its rounding differs from the direct sum's (both within tolerance above).
        x, wt, pad = _conv_pair(WINOGRAD[geom], layout)
        y = fastconv.conv2d(x, wt, None, 1, pad)
        with winograd(False):
            y_direct = fastconv.conv2d(x, wt, None, 1, pad)
        assert not torch.equal(y, y_direct)
        torch.testing.assert_close(y, y_direct, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("geom", ["17x18_c19_k21", "5x5_27x27_c19_k21"])
@pytest.mark.parametrize("layout", ["x_cl", "w_cl", "sliced", "permuted"])
def test_winograd_layouts(layout, geom):
    """Mixed layouts and strided views: the padded input copy and the weight transform read any strides."""
    with winograd(True):
        run_fused(WINOGRAD[geom], torch.float32, layout=layout, combine="sort", relu=True, grad=False)
        run_fused(WINOGRAD[geom], torch.float32, layout=layout, combine="add", relu=True)


def test_winograd_weight_grad_in_tile_chunks():
    """The weight gradient sums over tiles in chunks of about 16 MB of transforms (3721 tiles here
    take two), accumulating between them."""
    x, wt, pad = _conv_pair((1, 16, 244, 244, 16, 3, 3, 1, 1, 1, 1), "nchw")
    g = torch.randn(1, 16, 244, 244, generator=torch.Generator().manual_seed(3))
    xr, wr = x.double().requires_grad_(), wt.double().requires_grad_()
    want_x, want_w = torch.autograd.grad(F.conv2d(xr, wr, None, 1, pad), (xr, wr), g.double())
    xf, wf = x.clone().requires_grad_(), wt.clone().requires_grad_()
    with winograd(True):
        got_x, got_w = torch.autograd.grad(fastconv.conv2d(xf, wf, None, 1, pad), (xf, wf), g)
    scale = want_w.abs().max().item()
    assert (got_w.double() - want_w).abs().max().item() < 1e-4 * scale  # measured 2e-5 (direct: 7e-6)
    torch.testing.assert_close(got_x.double(), want_x, rtol=1e-4, atol=1e-4)


def _special(case, x, wt, g):
    """Plant the special values of `case` into copies of input, weight and grad_out."""
    x, wt, g = x.clone(), wt.clone(), g.clone()
    if case == "huge":  # finite outputs near FLT_MAX: Winograd's intermediates would overflow
        x *= 3e37 / F.conv2d(x, wt, None, 1, 1).abs().max()
        g *= 1e-2  # the weight gradient (a sum over 256 pixels) well below FLT_MAX
    elif case == "inf_weight":
        wt[2, 5, 1, 1] = float("inf")
        wt[7, 0, 0, 2] = float("-inf")
    elif case == "nan_weight_on_padding":  # a tap that reads only padding at the top row
        wt[4, 3, 0, 1] = float("nan")
    elif case == "nan_input_on_tile_edge":
        x[0, 3, 7, 8] = float("nan")
    elif case == "inf_grad_out":
        g[0, 5, 3, 11] = float("inf")
        g[0, 6, 12, 0] = float("-inf")
    return x, wt, g


@pytest.mark.parametrize("case", ["huge", "inf_weight", "nan_weight_on_padding", "nan_input_on_tile_edge",
                                  "inf_grad_out"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("kernel", [3, 5])
def test_winograd_special_values_match_torch(case, layout, kernel, isa):
    """Where Winograd would give NaN for torch's finite or infinite values (overflowing intermediates,
    infinities mixed by the transforms, a NaN spread over its tile), the layer is recomputed on the
    direct path: values, gradients and the places of NaN and infinities are the direct path's, and for
    these 3x3 cases torch's. (With 5x5 kernels torch's CPU kernel skips the padding taps, where an
    infinite weight meets zero padding; the direct path follows the zero-padded definition, NaN there.)"""
    x, wt, pad = _conv_pair((1, 16, 16, 16, 16, kernel, kernel, 1, kernel // 2, 1, 1), layout)
    g = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(4))
    x, wt, g = _special(case, x, wt, g)
    if kernel == 3:
        want = _grads(F.conv2d, x, wt, g, pad)
    else:
        with winograd(False):
            want = _grads(fastconv.conv2d, x, wt, g, pad)
    with winograd(True):
        got = _grads(fastconv.conv2d, x, wt, g, pad)
        if case == "huge":  # the fused epilogue too
            y = fastconv.conv2d_fused(x, wt, None, 1, pad, relu=True)
            torch.testing.assert_close(y, want[0].relu(), rtol=1e-4, atol=1e-4 * y.abs().max().item())
    for a, b in zip(got, want):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())
        fin = b.isfinite()
        torch.testing.assert_close(a[fin], b[fin], rtol=1e-4, atol=1e-4 * b[fin].abs().max().item())


def _grads(conv, x, wt, g, pad):
    xr, wr = x.clone().requires_grad_(), wt.clone().requires_grad_()
    y = conv(xr, wr, None, 1, pad)
    return (y.detach(),) + torch.autograd.grad(y, (xr, wr), g)


# Winograd rounding against float64, where it is largest: (geometry, layout, bound on Winograd's error,
# bound on the direct sum's), both relative to the output scale.
WINOGRAD_ERROR = {
    # F(4x4, 3x3) at a ResNet-50 layer 4 shape (512 channels, Winograd from batch 2 at 7x7):
    # measured 1.05e-5, direct 2.5e-6
    "3x3_c512": ((2, 512, 7, 7, 64, 3, 3, 1, 1, 1, 1), "nchw", 2e-5, 1e-5),
    # F(2x2, 5x5) at AlexNet's conv2 (64 -> 192 channels, 27x27, batch 1): measured 4e-6, direct 1.4e-6
    "5x5_alexnet_conv2": ((1, 64, 27, 27, 192, 5, 5, 1, 2, 1, 1), "channels_last", 1e-5, 5e-6),
}


@pytest.mark.parametrize("case", list(WINOGRAD_ERROR))
def test_winograd_error_against_float64(case):
    """Winograd's rounding stays within a few times the direct sum's."""
    geom, layout, bound_w, bound_d = WINOGRAD_ERROR[case]
    x, wt, pad = _conv_pair(geom, layout)
    ref = F.conv2d(x.double(), wt.double(), None, 1, pad)
    scale = ref.abs().max().item()
    with winograd(True):
        err_w = (fastconv.conv2d(x, wt, None, 1, pad).double() - ref).abs().max().item()
    with winograd(False):
        err_d = (fastconv.conv2d(x, wt, None, 1, pad).double() - ref).abs().max().item()
    assert err_w != err_d  # the Winograd path is taken
    assert err_w < bound_w * scale and err_d < bound_d * scale, (err_w, err_d, scale)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_winograd_cached_weights(layout):
    """Registered weights keep their Winograd transform; the cached form follows in-place changes and
    switching Winograd off and on."""
    x, wt, pad = _conv_pair((1, 32, 14, 14, 48, 3, 3, 1, 1, 1, 1), layout)
    conv = torch.nn.Conv2d(32, 48, 3, padding=1, bias=False).eval()
    with torch.no_grad():
        conv.weight.copy_(wt)
    fast = fastconv.convert(conv, channels_last=layout == "channels_last")
    with torch.no_grad(), winograd(True):
        torch.testing.assert_close(fast(x), F.conv2d(x, wt, None, 1, pad), rtol=1e-4, atol=1e-4)
        cached = _ext.require_native().weight_cache_info()["bytes"]
        assert cached >= 36 * 48 * 32 * 4
        fast.weight.mul_(-2)
        torch.testing.assert_close(fast(x), F.conv2d(x, -2 * wt, None, 1, pad), rtol=1e-4, atol=1e-4)
        with winograd(False):
            torch.testing.assert_close(fast(x), F.conv2d(x, -2 * wt, None, 1, pad), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast(x), F.conv2d(x, -2 * wt, None, 1, pad), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", [1, 3])
def test_streamed_output_epilogue_isa(kernel, isa):
    """Outputs past the streaming threshold (24 MB) are stored non-temporally, from the micro-kernel's
    registers where whole panels allow (70 channels: two 32-wide panels and a partial one)."""
    g = torch.Generator().manual_seed(kernel)
    cl = torch.channels_last
    c = 8 if kernel == 1 else 3
    x = torch.randn(1, c, 300, 340, generator=g).contiguous(memory_format=cl)
    w = torch.randn(70, c, kernel, kernel, generator=g).contiguous(memory_format=cl)
    r = torch.randn(1, 70, 300, 340, generator=g).contiguous(memory_format=cl)
    b = torch.randn(70, generator=g)
    with winograd(False):
        y = fastconv.conv2d_fused(x, w, b, padding=kernel // 2, residual=r, combine="add", relu=True)
    assert y.numel() * 4 >= 24 << 20 and y.is_contiguous(memory_format=cl)
    torch.testing.assert_close(y, F.relu(F.conv2d(x, w, b, padding=kernel // 2) + r), rtol=1e-4, atol=1e-4)
