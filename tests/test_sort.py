"""fastconv.sort forward and backward against the torch composite a + b + sqrt(relu(a) relu(b) + eps)
(or a + b + relu(a) relu(b)) and the NumPy reference."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import reference as R
from conftest import BACKENDS, DEVICES, DTYPES, assert_close, check_op, isa_path, make, rand, skip_unless_backend

MODES = ["sqrt", "product"]
LAYOUTS = ["nchw", "channels_last", "sliced", "permuted"]
SHAPES = [(2, 3, 7, 9), (1, 1, 1, 1), (1, 5, 13, 17), (3, 33, 4, 5), (2, 16, 8, 8), (1000,), (7, 11), (2, 3, 5)]


def torch_sort(a, b, mode="sqrt", eps=0.01):
    p = F.relu(a) * F.relu(b)
    return a + b + (torch.sqrt(p + eps) if mode == "sqrt" else p)


def run_sort(shape, dtype, device="cpu", layout="nchw", mode="sqrt", eps=0.01, seed=0, layouts=None, arrays=None):
    rng = np.random.default_rng(seed)
    arrays = arrays or [rand(rng, shape), rand(rng, shape)]
    check_op(lambda a, b: fastconv.sort(a, b, mode, eps), lambda a, b: torch_sort(a, b, mode, eps), arrays, dtype,
             device, layout, grad=[True, True], ref_fwd=lambda a, b: R.sort_fwd(a, b, mode, eps),
             ref_bwd=lambda g, a, b: list(R.sort_bwd(g, a, b, mode, eps)), rng=rng, layouts=layouts)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_shapes_isa(shape, mode, isa):
    run_sort(shape, torch.float32, mode=mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_layouts_dtypes(mode, layout, dtype, device):
    run_sort((2, 5, 7, 9), dtype, device, layout, mode)


@pytest.mark.parametrize("layouts", [("nchw", "channels_last"), ("channels_last", "nchw"), ("sliced", "permuted")],
                         ids=str)
def test_mixed_layouts(layouts):
    """a and b in different layouts: the output follows a's format."""
    run_sort((2, 5, 7, 9), torch.float32, layouts=list(layouts))


@pytest.mark.parametrize("eps", [0.0, 1e-8, 1e-3, 0.01, 1.0, 100.0])
@pytest.mark.parametrize("device", DEVICES)
def test_eps(eps, device):
    rng = np.random.default_rng(2)
    # positive values keep the derivative finite at eps = 0 (see test_eps0_gradient_off_the_quadrant)
    arrays = [rng.uniform(0.1, 2, (2, 3, 5, 7)), rng.uniform(0.1, 2, (2, 3, 5, 7))] if eps == 0 else None
    run_sort((2, 3, 5, 7), torch.float64, device, eps=eps, arrays=arrays)


@settings(deadline=None, max_examples=30)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=5).map(tuple), mode=st.sampled_from(MODES),
       eps=st.sampled_from([1e-6, 0.01, 0.5]), dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
       layout=st.sampled_from(LAYOUTS), isa=st.sampled_from(["avx2", "portable"]), seed=st.integers(0, 999))
def test_hypothesis(shape, mode, eps, dtype, layout, isa, seed):
    with isa_path(isa):
        run_sort(shape, dtype, "cpu", layout, mode, eps, seed)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device", DEVICES)
def test_values_near_zero(mode, device):
    """Around a = 0 and b = 0 the [a > 0] gates switch; exact zeros and tiny values of both signs."""
    v = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 1e-3, -1e-3, 1.0, -1.0])
    a, b = np.meshgrid(v, v)
    run_sort(a.shape, torch.float64, device, mode=mode, eps=1e-6, arrays=[a, b])
    run_sort(a.shape, torch.float32, device, mode=mode, eps=1e-6, arrays=[a, b])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device", DEVICES)
def test_nan_inf(mode, device):
    a = np.array([np.nan, 1.0, np.inf, -np.inf, 2.0, np.inf, -1.0])
    b = np.array([1.0, np.nan, 2.0, 1.0, -np.inf, np.inf, np.inf])
    ta, tb = make(a, torch.float32, device), make(b, torch.float32, device)
    y = fastconv.sort(ta, tb, mode)
    assert_close(y, torch_sort(ta, tb, mode), torch.float32)
    assert_close(y, R.sort_fwd(a, b, mode), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (0,), (2, 0, 5)], ids=str)
def test_empty(device, shape):
    a = torch.randn(shape, device=device, requires_grad=True)
    b = torch.randn(shape, device=device, requires_grad=True)
    y = fastconv.sort(a, b)
    assert y.shape == a.shape
    y.sum().backward()
    assert a.grad.shape == a.shape and b.grad.shape == b.shape


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("eps", [1e-4, 0.01, 10.0])
def test_gradcheck(mode, eps):
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=gen)
    b = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=gen)
    # values near (but not at) zero, where sqrt's derivative is steepest for small eps
    a[0, 0, 0] = torch.tensor([1e-2, -1e-2, 3e-2, 0.5, -0.5], dtype=torch.float64)
    b[0, 0, 0] = torch.tensor([2e-2, 2e-2, -3e-2, 1e-2, 1e-2], dtype=torch.float64)
    a.requires_grad_(), b.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: fastconv.sort(x, y, mode, eps), (a, b), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device", DEVICES)
def test_eps0_gradient_off_the_quadrant(device, backend, dtype):
    """eps = 0, a > 0 >= b: y = a + b near there, so dy/da = dy/db... = 1 (torch's autograd of the
    composite gives 0 * inf = NaN; every backend's fused backward is expected to give the true
    derivative)."""
    skip_unless_backend(backend, device)
    a = torch.tensor([1.0, 2.0, 0.5, -1.0], dtype=dtype, device=device, requires_grad=True)
    b = torch.tensor([-1.0, 0.0, -0.5, -2.0], dtype=dtype, device=device, requires_grad=True)
    with fastconv.use_backend(backend):
        fastconv.sort(a, b, "sqrt", 0.0).sum().backward()
    assert torch.equal(a.grad, torch.ones_like(a)), a.grad
    assert torch.equal(b.grad[[0, 2, 3]], torch.ones(3, dtype=dtype, device=device)), b.grad
