"""fastconv.relu forward and backward against torch.nn.functional.relu and the NumPy reference."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import reference as R
from conftest import DEVICES, DTYPES, assert_close, check_op, isa_path, make, rand, same_format

SHAPES = [(2, 3, 7, 9), (1, 1, 1, 1), (1, 5, 13, 17), (3, 33, 4, 5), (2, 16, 8, 8), (1000,), (7, 11), (2, 3, 5),
          (2, 3, 4, 5, 6), ()]
LAYOUTS = ["nchw", "channels_last", "sliced", "permuted"]


def run_relu(shape, dtype, device="cpu", layout="nchw", seed=0):
    rng = np.random.default_rng(seed)
    x = rand(rng, shape)
    check_op(fastconv.relu, F.relu, [x], dtype, device, layout, grad=[True], ref_fwd=R.relu_fwd,
             ref_bwd=lambda g, a: [R.relu_bwd(g, R.relu_fwd(a))], rng=rng)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_shapes_isa(shape, isa):
    run_relu(shape, torch.float32)


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 17, 5, 3), (3, 5, 11)], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_layouts_dtypes(shape, layout, dtype, device):
    run_relu(shape, dtype, device, layout)


@settings(deadline=None, max_examples=30)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=5).map(tuple),
       dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS), isa=st.sampled_from(["avx2", "portable"]),
       seed=st.integers(0, 999))
def test_hypothesis(shape, dtype, layout, isa, seed):
    with isa_path(isa):
        run_relu(shape, dtype, "cpu", layout, seed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_inf_signed_zero(device, dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 3.5, -2.0] * 5)
    t = make(x, dtype, device, requires_grad=True)
    y = fastconv.relu(t)
    e = F.relu(t.detach())
    assert torch.equal(torch.isnan(y), torch.isnan(e)), "relu(NaN) must be NaN"
    ok = ~torch.isnan(e)
    assert torch.equal(y[ok], e[ok])
    g = torch.arange(1.0, 1 + x.size, dtype=dtype, device=device)
    y.backward(g)
    t2 = t.detach().clone().requires_grad_()
    F.relu(t2).backward(g)
    assert_close(t.grad, t2.grad, dtype, what="grad (torch passes the gradient where the result is NaN)")


@pytest.mark.parametrize("device", DEVICES)
def test_inplace(device):
    x = torch.randn(2, 3, 5, 4, device=device)
    e = F.relu(x)
    y = fastconv.relu(x, inplace=True)
    assert y.data_ptr() == x.data_ptr() and torch.equal(x, e)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (0,), (2, 0, 5)], ids=str)
def test_empty(device, shape):
    x = torch.randn(shape, device=device, requires_grad=True)
    y = fastconv.relu(x)
    assert y.shape == x.shape
    same_format(y, F.relu(x.detach()))
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_expanded_input():
    """A stride-0 (expanded) view reads every logical element."""
    base = torch.randn(1, 3, 1, 5)
    x = base.expand(4, 3, 6, 5)
    assert_close(fastconv.relu(x), F.relu(x), torch.float32)


def test_gradcheck():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = torch.where(x.abs() < 1e-3, x + 0.1, x).requires_grad_()  # stay away from the kink at 0
    assert torch.autograd.gradcheck(fastconv.relu, (x,))
