"""The public functions skip the autograd layer when no gradient can flow (grad mode off, or no input
requiring grad): same values, outputs that do not require grad, and gradients as usual otherwise."""
import pytest
import torch
import torch.nn.functional as F

import fastconv


def _cases():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 9, 8, generator=g)
    w = torch.randn(6, 5, 3, 3, generator=g)
    b = torch.randn(6, generator=g)
    r = torch.randn(2, 6, 9, 8, generator=g)
    return {
        "conv2d": ((x, w, b), lambda x, w, b: fastconv.conv2d(x, w, b, 1, 1),
                   lambda x, w, b: F.conv2d(x, w, b, 1, 1)),
        "conv2d_fused": ((x, w, b, r), lambda x, w, b, r: fastconv.conv2d_fused(x, w, b, padding=1, residual=r,
                                                                                 combine="add", relu=True),
                         lambda x, w, b, r: F.relu(F.conv2d(x, w, b, 1, 1) + r)),
        "max_pool2d": ((x,), lambda x: fastconv.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1)),
        "avg_pool2d": ((x,), lambda x: fastconv.avg_pool2d(x, 3, 2, 1), lambda x: F.avg_pool2d(x, 3, 2, 1)),
        "adaptive_avg_pool2d": ((x,), lambda x: fastconv.adaptive_avg_pool2d(x, 1),
                                lambda x: F.adaptive_avg_pool2d(x, 1)),
        "relu": ((x,), fastconv.relu, F.relu),
        "sort": ((x, x.flip(0)), fastconv.sort,
                 lambda a, b: a + b + torch.sqrt(F.relu(a) * F.relu(b) + 0.01)),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_no_grad_paths_match(name):
    args, ours, ref = _cases()[name]
    want = ref(*args)
    with torch.no_grad():
        y = ours(*args)
    assert not y.requires_grad
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    y = ours(*args)  # grad mode on, nothing requires grad
    assert not y.requires_grad and y.grad_fn is None
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(ours(*args), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(_cases()))
def test_grad_flows_when_one_input_requires_it(name):
    args, ours, ref = _cases()[name]
    for k in range(len(args)):  # only argument k requires grad
        a = [t.clone().requires_grad_(i == k) for i, t in enumerate(args)]
        r = [t.clone().requires_grad_(i == k) for i, t in enumerate(args)]
        y, want = ours(*a), ref(*r)
        assert y.requires_grad
        g = torch.randn_like(want)
        (ga,) = torch.autograd.grad(y, a[k], g)
        (gr,) = torch.autograd.grad(want, r[k], g)
        torch.testing.assert_close(ga, gr, rtol=1e-4, atol=1e-4)
