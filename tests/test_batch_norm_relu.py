"""Training-mode BatchNorm + (residual add) + ReLU as one operator (functional.batch_norm_relu_train,
the path converted models take in train mode) against torch's BatchNorm2d followed by the add and
relu_: outputs, gradients of the input, weight, bias and residual, the running statistics and
num_batches_tracked, and the gradients' memory format, in every layout, float32 and float64, on each
ISA path; double backward; the cases it leaves to torch."""
import copy

import numpy as np
import pytest
import torch

import fastconv
from fastconv import _ext
from fastconv import functional as FF
from conftest import assert_close, isa_path, make, rand, same_format

pytestmark = pytest.mark.skipif(not _ext.native_available(), reason="native extension not built")


def _pair(c, dtype, affine=True, momentum=0.1, track=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    bn = torch.nn.BatchNorm2d(c, affine=affine, momentum=momentum, track_running_stats=track).to(dtype).train()
    with torch.no_grad():
        if affine:
            bn.weight.copy_(torch.rand(c, generator=g, dtype=dtype) + 0.5)
            bn.bias.copy_(torch.rand(c, generator=g, dtype=dtype) - 0.5)
        if track:
            bn.running_mean.copy_(torch.randn(c, generator=g, dtype=dtype))
            bn.running_var.copy_(torch.rand(c, generator=g, dtype=dtype) + 0.5)
    return bn, copy.deepcopy(bn)


def run(shape, dtype, layout="nchw", residual=False, steps=2, seed=0, **bn_kw):
    rng = np.random.default_rng(seed)
    ours, ref = _pair(shape[1], dtype, seed=seed, **bn_kw)
    for step in range(steps):  # the running statistics accumulate over calls
        x = rand(rng, shape) * 1.5 + 0.3
        r = rand(rng, shape) if residual else None
        g = rand(rng, shape)
        x1, x2 = make(x, dtype, "cpu", layout, True), make(x, dtype, "cpu", layout, True)
        r1 = make(r, dtype, "cpu", layout, True) if residual else None
        r2 = make(r, dtype, "cpu", layout, True) if residual else None
        y1 = FF.batch_norm_relu_train(x1, ours, r1)
        assert y1 is not None, "the fused operator did not apply"
        y2 = ref(x2)
        y2 = torch.relu(y2 + r2 if residual else y2)
        m = shape[0] * shape[2] * shape[3]
        assert_close(y1, y2, dtype, m)
        same_format(y1, y2)
        gt = make(g, dtype, "cpu", layout)
        y1.backward(gt)
        y2.backward(gt)
        assert_close(x1.grad, x2.grad, dtype, m, "grad_input")
        if layout in ("nchw", "channels_last"):  # (a leaf's .grad takes the leaf's strides in any case)
            same_format(x1.grad, x2.grad, "grad_input")
        if residual:
            assert_close(r1.grad, r2.grad, dtype, 1, "grad_residual")
        if ours.affine:
            assert_close(ours.weight.grad, ref.weight.grad, dtype, m, "grad_weight")
            assert_close(ours.bias.grad, ref.bias.grad, dtype, m, "grad_bias")
        if ours.track_running_stats:
            assert_close(ours.running_mean, ref.running_mean, dtype, m, f"running_mean after {step + 1}")
            assert_close(ours.running_var, ref.running_var, dtype, m, f"running_var after {step + 1}")
            assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1


SHAPES = [(2, 5, 7, 6), (3, 33, 4, 5), (1, 16, 9, 11), (4, 70, 2, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced"])
@pytest.mark.parametrize("residual", [False, True])
def test_matches_torch_isa(shape, layout, residual, isa):
    run(shape, torch.float32, layout, residual)


@pytest.mark.parametrize("shape", SHAPES[:2], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "permuted"])
@pytest.mark.parametrize("residual", [False, True])
def test_matches_torch_float64(shape, layout, residual):
    run(shape, torch.float64, layout, residual)


@pytest.mark.parametrize("bn_kw", [dict(affine=False), dict(momentum=None, steps=3), dict(track=False)],
                         ids=["no_affine", "cumulative_average", "no_running_stats"])
def test_batch_norm_variants(bn_kw):
    run((2, 6, 5, 4), torch.float64, "channels_last", residual=True, **bn_kw)


def test_isa_paths_agree():
    """The AVX-512, AVX2 and portable loops give the same values (sums in double, in a fixed order)."""
    x = torch.randn(3, 40, 5, 7).contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    outs = []
    for name in ("avx512", "avx2", "portable"):
        try:
            with isa_path(name):
                y, mean, invstd, _ = torch.ops.fastconv.bn_relu_train_fwd(x, None, None, None, 1e-5)
                outs.append((y, torch.ops.fastconv.bn_relu_train_bwd(g, x, y, None, mean, invstd, False)[0]))
        except pytest.skip.Exception:
            continue
    for y, dx in outs[1:]:
        torch.testing.assert_close(y, outs[0][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(dx, outs[0][1], rtol=1e-5, atol=1e-6)


def test_double_backward_matches_torch():
    """create_graph=True: the backward in differentiable torch ops, so a gradient penalty through the
    block equals torch's."""
    def penalty(block, bn, x, w):
        y = block(x)
        (gx,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), [x, bn.weight, bn.bias], allow_unused=True,
                                   materialize_grads=True)

    torch.manual_seed(0)
    ours, ref = _pair(4, torch.float64)
    x = (torch.randn(3, 4, 5, 5, dtype=torch.float64) + 0.2).requires_grad_()
    w = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    got = penalty(lambda t: FF.batch_norm_relu_train(t, ours), ours, x, w)
    want = penalty(lambda t: torch.relu(ref(t)), ref, x, w)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_gradcheck_operator():
    torch.manual_seed(1)
    x = (torch.randn(2, 3, 4, 3, dtype=torch.float64) + 0.5).requires_grad_()
    w = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64).requires_grad_()
    r = torch.randn(2, 3, 4, 3, dtype=torch.float64).requires_grad_()
    torch.autograd.gradcheck(lambda *t: torch.ops.fastconv.bn_relu_train_fwd(*t, 1e-3)[0], (x, w, b, r))


def test_left_to_torch():
    """None (the caller runs torch's modules) where the operator does not apply."""
    bn = torch.nn.BatchNorm2d(3).train()
    x = torch.randn(2, 3, 4, 4)
    assert FF.batch_norm_relu_train(x.half(), bn.half()) is None  # dtype
    bn.float()
    assert FF.batch_norm_relu_train(torch.randn(1, 3, 1, 1), bn) is None  # one value per channel: torch's error
    assert FF.batch_norm_relu_train(x, bn.eval()) is None  # running statistics: folded elsewhere
    bn.train()
    with fastconv.use_backend("reference"):
        assert FF.batch_norm_relu_train(x, bn) is None


def test_operator_errors():
    op = torch.ops.fastconv.bn_relu_train_fwd
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        op(torch.randn(1, 3, 1, 1), None, None, None, 1e-5)
    with pytest.raises(ValueError, match="'weight' must have shape"):
        op(torch.randn(2, 3, 4, 4), torch.ones(4), None, None, 1e-5)
    with pytest.raises(TypeError, match="float32 or float64"):
        op(torch.randn(2, 3, 4, 4).half(), None, None, None, 1e-5)
    with pytest.raises(ValueError, match="'eps' must be > 0"):
        op(torch.randn(2, 3, 4, 4), None, None, None, 0.0)
