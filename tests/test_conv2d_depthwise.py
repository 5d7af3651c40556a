"""Depthwise convolution (groups == input channels), which runs its own CPU kernels: forward, fused
epilogue and both gradients against torch.nn.functional.conv2d in float64 on every ISA path."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
from conftest import ISAS, isa_path

# (N, C, H, W, multiplier, R, S, stride, padding, dilation)
CASES = [
    (2, 32, 15, 13, 1, 3, 3, 1, 1, 1),
    (1, 67, 12, 11, 1, 3, 3, 2, 1, 1),       # block of 64 channels + tail, stride 2
    (3, 5, 9, 14, 3, 3, 5, (2, 3), (2, 1), (2, 1)),
    (1, 70, 8, 9, 1, 5, 3, 1, (3, 0), (1, 2)),
    (1, 9, 7, 6, 1, 1, 1, 3, 0, 1),         # stride > kernel
    (1, 130, 7, 7, 2, 3, 3, 1, 1, 1),
    (2, 3, 5, 6, 1, 3, 3, 1, 4, 1),          # padding wider than the kernel
    (2, 20, 11, 10, 1, 5, 5, 2, 2, 1),       # 5x5 row kernel: two vectors + a 4-channel tail, stride 2
    (1, 16, 13, 12, 1, 3, 3, 1, 2, 2),       # dilated
    (1, 8, 3, 2, 1, 3, 3, 1, 1, 1),          # narrower than the window: border outputs only
    (1, 40, 6, 23, 1, 3, 3, (1, 3), (0, 1), 1),  # unequal strides, no row padding
    (1, 12, 17, 40, 1, 3, 3, (2, 1), 1, 1),  # NCHW planes: runs of two vectors, one vector, scalar tail
    (1, 8, 9, 70, 1, 3, 3, 2, 1, 1),         # NCHW planes at column stride 2 (even lanes of two loads)
    (2, 16, 10, 36, 1, 5, 5, 1, (1, 3), 1),  # stride 1: the input gradient as a flipped-window forward
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=[f"c{i}" for i in range(len(CASES))])
def test_depthwise_matches_torch(case, dtype, layout, isa):
    n, c, h, w, m, r, s, stride, padding, dilation = case
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(c * m, 1, r, s, generator=g, dtype=torch.float64)
    b = torch.randn(c * m, generator=g, dtype=torch.float64)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    xs, ws, bs = (t.detach().clone().to(dtype).requires_grad_() for t in (x.contiguous(memory_format=fmt),
                                                         wt.contiguous(memory_format=fmt), b))
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, wt, b))
    with_bias = CASES.index(case) % 2 == 0  # without one, a channels-last output is written in place
    ref = F.conv2d(xr, wr, br if with_bias else None, stride, padding, dilation, c)
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref.backward(gy)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    with isa_path(isa):
        y = fastconv.conv2d(xs, ws, bs if with_bias else None, stride, padding, dilation, c)
        y.backward(gy.to(dtype).contiguous(memory_format=fmt))
    assert y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y.double(), ref.detach(), **tol)
    torch.testing.assert_close(xs.grad.double(), xr.grad, **tol)
    torch.testing.assert_close(ws.grad.double(), wr.grad, **tol)
    if with_bias:
        torch.testing.assert_close(bs.grad.double(), br.grad, **tol)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("combine", [None, "add", "sort"])
def test_depthwise_fused_epilogue(layout, combine):
    g = torch.Generator().manual_seed(2)
    n, c, h, w = 2, 24, 9, 40  # 20 outputs a row: NCHW without a residual takes the plane kernel
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64).contiguous(memory_format=fmt)
    x[0, 1, 4, 7] = float("nan")  # stays NaN through the ReLU, as in torch
    wt = torch.randn(c, 1, 3, 3, generator=g, dtype=torch.float64)
    scale, shift, bias = (torch.randn(c, generator=g, dtype=torch.float64) for _ in range(3))
    res = torch.randn(n, c, 5, 20, generator=g, dtype=torch.float64).contiguous(memory_format=fmt)
    y = fastconv.conv2d_fused(x, wt, bias, 2, 1, 1, c, scale=scale, shift=shift,
                              residual=res if combine else None, combine=combine, relu=True)
    z = F.conv2d(x, wt, None, 2, 1, 1, c) * scale[:, None, None] + (shift + bias)[:, None, None]
    if combine == "add":
        z = res + z
    elif combine == "sort":
        z = res + z + torch.sqrt(res.relu() * z.relu() + 0.01)
    torch.testing.assert_close(y, z.relu(), rtol=1e-10, atol=1e-10, equal_nan=True)
    assert y.isnan().any()
