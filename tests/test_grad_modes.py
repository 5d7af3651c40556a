"""The public functions skip the autograd layer when no gradient can flow (grad mode off, or no input
requiring grad): same values, outputs that do not require grad, and gradients as usual otherwise.
Forward mode (torch.func.jvp, torch.autograd.forward_ad) gets true tangents, never a silent zero."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

import fastconv
from conftest import BACKENDS, skip_unless_backend


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
        "conv2d_fused_sort": ((x, w, b, r, b.flip(0).abs() + 0.5, b.flip(0)),
                              lambda x, w, b, r, s, t: fastconv.conv2d_fused(
                                  x, w, b, padding=1, scale=s, shift=t, residual=r, combine="sort", mode="product",
                                  relu=True),
                              lambda x, w, b, r, s, t: F.relu(_sort_product(r, (F.conv2d(x, w, None, 1, 1) * _c(s)
                                                                                 + _c(t) + _c(b))))),
        "max_pool2d_indices": ((x,), lambda x: fastconv.max_pool2d(x, 3, 2, 1, return_indices=True)[0],
                               lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True)[0]),
    }


def _c(t):
    return t.view(1, -1, 1, 1)


def _sort_product(a, b):
    return a + b + F.relu(a) * F.relu(b)


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(_cases()))
def test_forward_mode_matches_torch(name, backend):
    skip_unless_backend(backend, "cpu")
    args, ours, ref = _cases()[name]
    args = [a.double() for a in args]
    g = torch.Generator().manual_seed(1)
    tangents = [torch.randn(a.shape, generator=g, dtype=a.dtype) for a in args]
    with fastconv.use_backend(backend):
        for k in range(len(args)):  # a tangent on one argument, then on all
            t = [tangents[i] if i == k else torch.zeros_like(a) for i, a in enumerate(args)]
            want = torch.func.jvp(ref, tuple(args), tuple(t))
            got = torch.func.jvp(ours, tuple(args), tuple(t))
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
        want = torch.func.jvp(ref, tuple(args), tuple(tangents))
        with fwAD.dual_level():
            y = ours(*[fwAD.make_dual(a, t) for a, t in zip(args, tangents)])
            got = fwAD.unpack_dual(y)
            torch.testing.assert_close((got.primal, got.tangent), want, rtol=1e-9, atol=1e-9)


def test_forward_mode_window_without_input():
    """max_pool2d windows with no input tap have the constant value -inf: tangent 0."""
    x = torch.randn(2, 3, 1, 5, dtype=torch.float64)
    y, t = torch.func.jvp(lambda x: fastconv.max_pool2d(x, 2, 1, 1, dilation=2), (x,), (torch.ones_like(x),))
    want = F.max_pool2d(x, 2, 1, 1, dilation=2)
    assert (want == float("-inf")).any()
    torch.testing.assert_close(y, want)
    assert t.shape == y.shape and (t[y == float("-inf")] == 0).all() and (t[y > float("-inf")] == 1).all()


def test_forward_over_reverse_raises():
    """Tangents of gradients (forward-over-reverse) have no formula: a clear error, never a zero."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 8, 7, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    with fwAD.dual_level():
        loss = fastconv.conv2d(x, fwAD.make_dual(w, torch.ones_like(w)), None, 1, 1).relu().square().sum()
        with pytest.raises(NotImplementedError, match="jvp"):
            torch.autograd.grad(loss, w, create_graph=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_cpu_as_torch(backend):
    """Under torch.autocast("cpu") the convolutions and linear run in its dtype, as torch's; other ops keep their
    input's dtype; gradients reach float32 leaves; a converted Linear -> Conv2d model runs as torch's."""
    skip_unless_backend(backend, "cpu")
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 8, 10, 10, generator=g).requires_grad_()
    w = (torch.randn(12, 8, 3, 3, generator=g) * 0.1).requires_grad_()
    with fastconv.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        y = fastconv.conv2d(x, w, None, 1, 1)
        ref = F.conv2d(x, w, None, 1, 1)
        z = fastconv.conv2d_fused(x, w, padding=1, relu=True)
        p = fastconv.max_pool2d(y, 2)
        raw = torch.ops.fastconv.conv2d_fwd(x.detach(), w.detach(), None, [1, 1], [1, 1, 1, 1], [1, 1], 1)
        lin = fastconv.linear(p.flatten(1), torch.randn(5, 300, generator=g))  # a bfloat16 input, float32 weights
        assert fastconv.conv2d(x.double(), w.double()).dtype == torch.float64
    assert y.dtype == ref.dtype == z.dtype == p.dtype == raw.dtype == lin.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref.float(), rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert x.grad.dtype == w.grad.dtype == torch.float32
    net = torch.nn.Sequential(torch.nn.Flatten(0), torch.nn.Linear(160, 160), torch.nn.Unflatten(0, (1, 10, 4, 4)),
                              torch.nn.Conv2d(10, 6, 3), torch.nn.ReLU()).eval()
    fast = fastconv.convert(net)
    inp = torch.randn(1, 10, 4, 4, generator=g)
    with fastconv.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        got, want = fast(inp), net(inp)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_func_grad_and_vjp(backend):
    """torch.func.grad (also of a grad) and vjp through every public function match torch's."""
    skip_unless_backend(backend, "cpu")
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 8, 7, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)

    def net(conv, pool, relu, sort):
        return lambda x, w: pool(sort(relu(conv(x, w, None, 1, 1)), conv(x, w, None, 1, 1)), 2).square().sum()

    ours = net(fastconv.conv2d, fastconv.max_pool2d, fastconv.relu, fastconv.sort)
    ref = net(F.conv2d, F.max_pool2d, F.relu, lambda a, b: a + b + torch.sqrt(F.relu(a) * F.relu(b) + 0.01))
    with fastconv.use_backend(backend):
        got = torch.func.grad(ours, argnums=(0, 1))(x, w)
        gg = torch.func.grad(lambda w: torch.func.grad(ours)(x, w).square().sum())(w)
        y, vjp = torch.func.vjp(lambda x: fastconv.avg_pool2d(fastconv.adaptive_avg_pool2d(x, 3), 2, 1), x)
        (gv,) = vjp(torch.ones_like(y))
    want = torch.func.grad(ref, argnums=(0, 1))(x, w)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gg, torch.func.grad(lambda w: torch.func.grad(ref)(x, w).square().sum())(w),
                               rtol=1e-9, atol=1e-9)
    yr, vjp_r = torch.func.vjp(lambda x: F.avg_pool2d(F.adaptive_avg_pool2d(x, 3), 2, 1), x)
    torch.testing.assert_close(gv, vjp_r(torch.ones_like(yr))[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(_cases()))
def test_vmap_and_jacrev_match_torch(name, backend):
    """torch.func.vmap (every input batched, which loops over a batched weight; or only the first,
    at dim 1, which folds into N) and jacrev (vmap over the backward operators) match torch's, through
    fastconv's own batching rules (no per-example fallback warning)."""
    skip_unless_backend(backend, "cpu")
    args, ours, ref = _cases()[name]
    args = [a.double() for a in args]
    g = torch.Generator().manual_seed(5)
    stacked = [torch.stack([a, a + 0.25 * torch.randn(a.shape, generator=g, dtype=a.dtype)]) for a in args]
    first = stacked[0].movedim(0, 1)
    import warnings
    with fastconv.use_backend(backend), warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*batching rule.*")
        got_all = torch.func.vmap(ours)(*stacked)
        got_first = torch.func.vmap(lambda x0: ours(x0, *args[1:]), in_dims=1)(first)
        jac = torch.func.jacrev(lambda x0: ours(x0, *args[1:]))(args[0])
    torch.testing.assert_close(got_all, torch.func.vmap(ref)(*stacked), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_first, torch.func.vmap(lambda x0: ref(x0, *args[1:]), in_dims=1)(first),
                               rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(jac, torch.func.jacrev(lambda x0: ref(x0, *args[1:]))(args[0]), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_sample_gradients(backend):
    """vmap(grad) over a batch (per-sample gradients, as differential privacy trains) through a
    fastconv model equals torch's."""
    skip_unless_backend(backend, "cpu")
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(4, 2, 3, stride=2, bias=False)).double()
    ours = fastconv.convert(ref, fuse=False)
    x = torch.randn(3, 3, 9, 8, dtype=torch.float64)
    params = {k: v.detach() for k, v in ref.named_parameters()}

    def per_sample(model):
        def loss(p, xi):
            return torch.func.functional_call(model, p, (xi.unsqueeze(0),)).square().sum()
        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)
    with fastconv.use_backend(backend):
        got = per_sample(ours)
    torch.testing.assert_close(got, per_sample(ref), rtol=1e-9, atol=1e-9)
