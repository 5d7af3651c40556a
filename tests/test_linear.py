"""fastconv.linear and fastconv.nn.Linear (a fully connected layer as a 1x1 convolution) against
torch.nn.functional.linear and the NumPy float64 reference: awkward shapes on both sides of the
few-row kernel (at most 8 rows, reductions not a multiple of the vector width), every CPU code path,
strided inputs, 1-D weights and 0-D biases, gradients, and the errors of bad arguments."""
import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import fastconv
from conftest import DTYPES, check_op, isa_path, rand

# (leading dims of the input, in_features, out_features): up to 8 rows take the few-row kernel
SHAPES = [((), 7, 5), ((1,), 1, 3), ((3,), 33, 37), ((8,), 130, 19), ((2, 3), 16, 4), ((9,), 45, 70),
          ((4, 5), 17, 33), ((0,), 6, 3)]


def _ref(x, w, b=None):
    y = x @ w.T
    return y + b if b is not None else y


def _ref_bwd(g, x, w, b=None):
    g2, x2 = g.reshape(-1, w.shape[0]), x.reshape(-1, w.shape[1])
    grads = [(g2 @ w).reshape(x.shape), g2.T @ x2]
    return grads + ([g2.sum(0)] if b is not None else [])


@pytest.mark.parametrize("lead,c,k", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_matches_torch(lead, c, k, dtype):
    rng = np.random.default_rng(c * 31 + k)
    arrays = [rand(rng, lead + (c,)), rand(rng, (k, c)), rand(rng, (k,))]
    check_op(fastconv.linear, TF.linear, arrays, dtype, grad=[True, True, True], ref_fwd=_ref, ref_bwd=_ref_bwd,
             reduction=c, grad_reduction=max(c, int(np.prod(lead, dtype=np.int64)), 1), rng=rng)


@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512"])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8])
def test_few_rows_kernel_every_isa(isa, rows):
    """The few-row kernel on each code path: weight-row blocks of 1-4 (K = 4q + 1..3) and pixel
    blocks of up to 4 (2 on AVX2), reductions with and without a vector tail; float32 and float64."""
    rng = np.random.default_rng(rows)
    for c, k in ((1, 1), (16, 4), (47, 23), (300, 66)):
        for dtype in (torch.float32, torch.float64):
            with isa_path(isa):
                check_op(fastconv.linear, TF.linear, [rand(rng, (rows, c)), rand(rng, (k, c)), rand(rng, (k,))],
                         dtype, ref_fwd=_ref, reduction=c)


@pytest.mark.parametrize("layout", ["sliced", "permuted"])
def test_strided_inputs(layout):
    rng = np.random.default_rng(3)
    check_op(fastconv.linear, TF.linear, [rand(rng, (6, 40)), rand(rng, (24, 40)), rand(rng, (24,))],
             torch.float32, layout=layout, grad=[True, True, False], ref_fwd=_ref, reduction=40)


def test_no_bias_1d_weight_and_0d_bias():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 4, 10, generator=g, dtype=torch.float64), torch.randn(6, 10, generator=g, dtype=torch.float64)
    torch.testing.assert_close(fastconv.linear(x, w), TF.linear(x, w))
    b0 = torch.tensor(0.5, dtype=torch.float64)
    torch.testing.assert_close(fastconv.linear(x, w, b0), TF.linear(x, w, b0))
    v = torch.randn(10, generator=g, dtype=torch.float64)
    torch.testing.assert_close(fastconv.linear(x, v), TF.linear(x, v))
    torch.testing.assert_close(fastconv.linear(x, v, b0), TF.linear(x, v, b0))
    torch.testing.assert_close(fastconv.linear(x[0, 0], w), TF.linear(x[0, 0], w))  # 1-D input


def test_every_output_written():
    """A freed block poisoned with NaN serves the next output of its size (the output cache): the
    few-row kernel writes every element of it."""
    fastconv.empty_cache()
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(8, 17, generator=g), torch.randn(32771, 17, generator=g)
    y = fastconv.linear(x, w)
    ptr = y.data_ptr()
    y.fill_(float("nan"))
    del y
    gc.collect()
    z = fastconv.linear(x, w)
    assert z.data_ptr() == ptr and not z.isnan().any()
    torch.testing.assert_close(z, TF.linear(x, w), rtol=1e-5, atol=1e-5)


def test_module_and_convert():
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 9), torch.nn.ReLU(), torch.nn.Linear(9, 4))
    m = fastconv.convert(ref)
    assert type(m[1]) is fastconv.nn.Linear and m.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(5, 3, 2, 2, requires_grad=True)
    y = m(x)
    y.sum().backward()
    x_ref = x.detach().requires_grad_()
    ref(x_ref).sum().backward()
    torch.testing.assert_close(y, ref(x))
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert type(fastconv.unconvert(m)[1]) is torch.nn.Linear


@pytest.mark.parametrize("args,err,match", [
    ((torch.randn(2, 5), torch.randn(3, 4)), ValueError, r"'input' must have shape \(\*, 4\)"),
    ((torch.randn(()), torch.randn(3, 4)), ValueError, "'input' must have shape"),
    ((torch.randn(2, 4), torch.randn(3, 4, 1)), ValueError, "'weight' must be 1-D or 2-D"),
    ((torch.randn(2, 4), torch.randn(3, 4), torch.randn(4)), ValueError, r"'bias' must have shape \(3,\)"),
    ((torch.randn(2, 4), torch.randn(4), torch.randn(1)), ValueError, "the weight is 1-D"),
    ((torch.randn(2, 4), torch.randn(3, 4, dtype=torch.float64)), TypeError, "same dtype"),
    ((torch.randint(0, 3, (2, 4)), torch.randn(3, 4)), TypeError, "'input' must be a floating-point"),
    (([1.0, 2.0], torch.randn(3, 2)), TypeError, "'input' must be a torch.Tensor"),
])
def test_bad_arguments(args, err, match):
    with pytest.raises(err, match=match):
        fastconv.linear(*args)
