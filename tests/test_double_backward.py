"""Second derivatives (create_graph=True: gradient penalties, Hessian-vector products) of every op on
every backend, by gradgradcheck in float64: the backward operators are differentiable themselves.
Before they were, a double backward through a fastconv conv returned zeros with only a warning."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
from conftest import BACKENDS, skip_unless_backend


@pytest.fixture(params=BACKENDS)
def backend(request):
    skip_unless_backend(request.param, "cpu")
    with fastconv.use_backend(request.param):
        yield request.param


def away_from_zero(*shape, seed=0):
    """float64 leaves with |x| >= 0.2: relu's and sort's kinks stay outside the finite differences,
    and no two values of a pooling window tie."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=torch.float64) * 1.8 + 0.2
    x = x * (torch.randint(0, 2, shape, generator=g) * 2 - 1)
    return (x + torch.arange(x.numel(), dtype=torch.float64).view(shape) * 1e-3).requires_grad_()


def check(fn, *inputs):
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("stride,padding,groups", [(1, 1, 1), (2, 0, 2)])
def test_conv2d(backend, stride, padding, groups):
    x, w, b = away_from_zero(2, 4, 6, 5), away_from_zero(6, 4 // groups, 3, 2, seed=1), away_from_zero(6, seed=2)
    check(lambda x, w, b: fastconv.conv2d(x, w, b, stride, padding, 1, groups), x, w, b)


@pytest.mark.parametrize("combine,relu", [("add", True), ("sort", False), ("sort", True)])
def test_conv2d_fused(backend, combine, relu):
    x, w = away_from_zero(1, 3, 5, 5), away_from_zero(4, 3, 3, 3, seed=1)
    scale, shift, res = away_from_zero(4, seed=2), away_from_zero(4, seed=3), away_from_zero(1, 4, 5, 5, seed=4)
    check(lambda x, w, s, t, r: fastconv.conv2d_fused(x, w, None, 1, 1, scale=s, shift=t, residual=r, combine=combine,
                                                      relu=relu), x, w, scale, shift, res)


@pytest.mark.parametrize("op", [lambda t: fastconv.max_pool2d(t, 3, 2, 1), lambda t: fastconv.avg_pool2d(t, 3, 2, 1),
                                lambda t: fastconv.adaptive_avg_pool2d(t, (2, 3)), fastconv.relu],
                         ids=["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "relu"])
def test_pool_and_relu(backend, op):
    check(op, away_from_zero(2, 3, 7, 6))


@pytest.mark.parametrize("mode", ["sqrt", "product"])
@pytest.mark.parametrize("eps", [0.01, 1.0])
def test_sort(backend, mode, eps):
    check(lambda a, b: fastconv.sort(a, b, mode, eps), away_from_zero(2, 3, 4, 4), away_from_zero(2, 3, 4, 4, seed=1))


def test_gradient_penalty_matches_torch(backend):
    """A WGAN-GP style penalty through conv -> relu -> max_pool: the parameters' gradient equals
    torch's (it came out as zeros, with a warning, when the backward ops had no derivative)."""
    x = away_from_zero(2, 3, 8, 8)
    w = away_from_zero(5, 3, 3, 3, seed=1)

    def penalty(conv, relu, pool, w):
        y = pool(relu(conv(x, w)))
        (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad(g.pow(2).sum(), w)
        return gw

    ours = penalty(lambda x, w: fastconv.conv2d(x, w, padding=1), fastconv.relu, lambda t: fastconv.max_pool2d(t, 2), w)
    ref = penalty(lambda x, w: F.conv2d(x, w, padding=1), F.relu, lambda t: F.max_pool2d(t, 2), w)
    torch.testing.assert_close(ours, ref)
