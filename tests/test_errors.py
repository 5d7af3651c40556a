"""Bad arguments raise ValueError / TypeError / RuntimeError whose message names the argument; what
torch accepts is accepted, with torch's result, on every backend."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
from conftest import BACKENDS, skip_unless_backend

x4 = torch.randn(2, 4, 8, 8)
w4 = torch.randn(6, 4, 3, 3)

CONV_ERRORS = [
    # (description, kwargs overriding conv2d(x4, w4), exception, match)
    ("input 2-D", dict(input=torch.randn(8, 8)), ValueError, "input"),
    ("input 5-D", dict(input=torch.randn(1, 2, 4, 8, 8)), ValueError, "input"),
    ("weight 3-D", dict(weight=torch.randn(6, 4, 3)), ValueError, "weight"),
    ("channel mismatch", dict(weight=torch.randn(6, 3, 3, 3)), ValueError, "weight"),
    ("groups not dividing input channels", dict(weight=torch.randn(6, 1, 3, 3), groups=3), ValueError, "groups"),
    ("groups not dividing output channels", dict(weight=torch.randn(5, 2, 3, 3), groups=2), ValueError, "groups"),
    ("groups zero", dict(groups=0), ValueError, "groups"),
    ("stride zero", dict(stride=0), ValueError, "stride"),
    ("stride negative", dict(stride=(1, -2)), ValueError, "stride"),
    ("stride float", dict(stride=1.5), TypeError, "stride"),
    ("dilation zero", dict(dilation=0), ValueError, "dilation"),
    ("padding negative", dict(padding=-1), ValueError, "padding"),
    ("padding bad string", dict(padding="full"), ValueError, "padding"),
    ("same with stride", dict(padding="same", stride=2), ValueError, "same"),
    ("output size <= 0", dict(input=torch.randn(1, 4, 2, 2)), ValueError, "output size"),
    ("integer input", dict(input=torch.ones(2, 4, 8, 8, dtype=torch.int32)), TypeError, "input"),
    ("integer weight", dict(weight=torch.ones(6, 4, 3, 3, dtype=torch.int64)), TypeError, "weight"),
    ("dtype mismatch", dict(weight=torch.randn(6, 4, 3, 3, dtype=torch.float64)), TypeError, "weight"),
    ("bias wrong shape", dict(bias=torch.randn(5)), ValueError, "bias"),
    ("bias 2-D", dict(bias=torch.randn(6, 1)), ValueError, "bias"),
    ("bias dtype", dict(bias=torch.randn(6, dtype=torch.float64)), TypeError, "bias"),
    ("input not a tensor", dict(input=[[1.0]]), TypeError, "input"),
]


@pytest.mark.parametrize("desc,kw,exc,match", CONV_ERRORS, ids=[c[0] for c in CONV_ERRORS])
def test_conv2d(desc, kw, exc, match):
    args = dict(input=x4, weight=w4, bias=None, stride=1, padding=0, dilation=1, groups=1)
    args.update(kw)
    with pytest.raises(exc, match=match):
        fastconv.conv2d(**args)


FUSED_ERRORS = [
    ("bad combine", dict(combine="mul", residual=torch.randn(2, 6, 6, 6)), ValueError, "combine"),
    ("bad mode", dict(combine="sort", residual=torch.randn(2, 6, 6, 6), mode="cube"), ValueError, "mode"),
    ("combine without residual", dict(combine="add"), ValueError, "residual"),
    ("residual without combine", dict(residual=torch.randn(2, 6, 6, 6)), ValueError, "residual"),
    ("residual wrong shape", dict(combine="add", residual=torch.randn(2, 6, 8, 8)), ValueError, "residual"),
    ("residual dtype", dict(combine="add", residual=torch.randn(2, 6, 6, 6, dtype=torch.float64)), TypeError,
     "residual"),
    ("scale wrong shape", dict(scale=torch.randn(4)), ValueError, "scale"),
    ("shift 2-D", dict(shift=torch.randn(6, 1)), ValueError, "shift"),
    ("negative eps", dict(combine="sort", residual=torch.randn(2, 6, 6, 6), eps=-1.0), ValueError, "eps"),
    ("eps not a number", dict(eps="small"), TypeError, "eps"),
    ("relu not bool", dict(relu="yes"), TypeError, "relu"),
    ("channel mismatch", dict(weight=torch.randn(6, 3, 3, 3)), ValueError, "weight"),
]


@pytest.mark.parametrize("desc,kw,exc,match", FUSED_ERRORS, ids=[c[0] for c in FUSED_ERRORS])
def test_conv2d_fused(desc, kw, exc, match):
    args = dict(input=x4, weight=w4)
    args.update(kw)
    with pytest.raises(exc, match=match):
        fastconv.conv2d_fused(**args)


POOL_ERRORS = [
    ("max", dict(input=torch.randn(8, 8)), ValueError, "input"),
    ("max", dict(kernel_size=0), ValueError, "kernel_size"),
    ("max", dict(stride=0), ValueError, "stride"),
    ("max", dict(padding=-1), ValueError, "padding"),
    ("max", dict(kernel_size=3, padding=2), ValueError, "padding"),
    ("max", dict(dilation=0), ValueError, "dilation"),
    ("max", dict(input=torch.randn(1, 2, 2, 2), kernel_size=3), ValueError, "output size"),
    ("max", dict(input=torch.ones(1, 2, 8, 8, dtype=torch.int64)), TypeError, "input"),
    ("avg", dict(input=torch.randn(1, 2, 3, 4, 5)), ValueError, "input"),
    ("avg", dict(kernel_size=(2, -1)), ValueError, "kernel_size"),
    ("avg", dict(kernel_size=4, padding=3), ValueError, "padding"),
    ("avg", dict(divisor_override=0), ValueError, "divisor_override"),
    ("avg", dict(input=torch.randn(1, 2, 2, 2), kernel_size=4, stride=1, padding=0), ValueError, "output size"),
    ("avg", dict(input=torch.ones(1, 2, 8, 8, dtype=torch.uint8)), TypeError, "input"),
    ("adaptive", dict(input=torch.randn(8)), ValueError, "input"),
    ("adaptive", dict(output_size=None), TypeError, "output_size"),
    ("max", dict(kernel_size=torch.tensor(2.0)), TypeError, "kernel_size"),
    ("max", dict(kernel_size=torch.tensor([2, 2])), TypeError, "kernel_size"),
    ("adaptive", dict(output_size=(2, -1)), ValueError, "output_size"),
    ("adaptive", dict(output_size="big"), TypeError, "output_size"),
    ("adaptive", dict(output_size=(2,)), ValueError, "output_size"),
    ("adaptive", dict(input=torch.ones(1, 2, 8, 8, dtype=torch.int32)), TypeError, "input"),
]


@pytest.mark.parametrize("op,kw,exc,match", POOL_ERRORS, ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(POOL_ERRORS)])
def test_pool(op, kw, exc, match):
    if op == "adaptive":
        args = dict(input=x4, output_size=2)
        fn = fastconv.adaptive_avg_pool2d
    else:
        args = dict(input=x4, kernel_size=2)
        fn = fastconv.max_pool2d if op == "max" else fastconv.avg_pool2d
    args.update(kw)
    with pytest.raises(exc, match=match):
        fn(**args)


def test_relu():
    with pytest.raises(TypeError, match="input"):
        fastconv.relu(torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="input"):
        fastconv.relu([1.0, -1.0])


SORT_ERRORS = [
    (dict(b=torch.randn(2, 4, 8, 7)), ValueError, "'a' and 'b'"),
    (dict(b=torch.randn(2, 4, 8, 8, dtype=torch.float64)), TypeError, "'b'"),
    (dict(a=torch.ones(2, 4, 8, 8, dtype=torch.int32)), TypeError, "'a'"),
    (dict(mode="cube"), ValueError, "mode"),
    (dict(mode=0), ValueError, "mode"),
    (dict(eps=-0.5), ValueError, "eps"),
    (dict(eps=None), TypeError, "eps"),
]


@pytest.mark.parametrize("kw,exc,match", SORT_ERRORS, ids=[c[2] for c in SORT_ERRORS])
def test_sort(kw, exc, match):
    args = dict(a=x4, b=x4.clone())
    args.update(kw)
    with pytest.raises(exc, match=match):
        fastconv.sort(**args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_different_devices():
    with pytest.raises(RuntimeError, match="weight"):
        fastconv.conv2d(x4.cuda(), w4)
    with pytest.raises(RuntimeError, match="bias"):
        fastconv.conv2d(x4, w4, torch.randn(6, device="cuda"))
    with pytest.raises(RuntimeError, match="'b'"):
        fastconv.sort(x4, x4.cuda())
    with pytest.raises(RuntimeError, match="residual"):
        fastconv.conv2d_fused(x4, w4, residual=torch.randn(2, 6, 6, 6, device="cuda"), combine="add")


@pytest.mark.parametrize("name,args", [
    ("conv2d_fwd", lambda: (torch.randn(2, 4, 8), w4, None, [1, 1], [0, 0, 0, 0], [1, 1], 1)),
    ("conv2d_fwd", lambda: (x4, w4, None, [0, 1], [0, 0, 0, 0], [1, 1], 1)),
    ("conv2d_fwd", lambda: (x4, w4, None, [1, 1], [-1, 0, 0, 0], [1, 1], 1)),
    ("conv2d_fwd", lambda: (x4, torch.randn(6, 3, 3, 3), None, [1, 1], [0, 0, 0, 0], [1, 1], 1)),
    ("max_pool2d_fwd", lambda: (x4, [0, 2], [2, 2], [0, 0], [1, 1], False)),
    ("avg_pool2d_fwd", lambda: (x4, [2, 2], [2, 0], [0, 0], False, True, None)),
    ("adaptive_avg_pool2d_fwd", lambda: (x4, [0, 2])),
    ("adaptive_avg_pool2d_fwd", lambda: (torch.randn(2, 3, 0, 5), [2, 2])),  # nothing to average
    ("sort_fwd", lambda: (x4, torch.randn(2, 4, 8, 7), 0, 0.01)),
    ("sort_fwd", lambda: (x4, x4, 5, 0.01)),
    ("relu_bwd", lambda: (x4, torch.randn(2, 4, 8, 7))),
])
def test_raw_ops_check_arguments(name, args):
    """The registered operators check their arguments too (they are callable without the Python layer)."""
    import fastconv.ops  # noqa: F401
    with pytest.raises((RuntimeError, ValueError, TypeError, IndexError)):
        getattr(torch.ops.fastconv, name)(*args())


def test_adaptive_no_channels():
    """torch pools an input without channels (an empty result); only empty spatial sizes are errors."""
    x = torch.randn(2, 0, 4, 5, requires_grad=True)
    y = fastconv.adaptive_avg_pool2d(x, 2)
    assert y.shape == (2, 0, 2, 2)
    y.sum().backward()
    assert x.grad.shape == x.shape
    with pytest.raises(ValueError, match="spatial"):
        fastconv.adaptive_avg_pool2d(torch.randn(2, 3, 4, 0), 2)


def _grads(fn, *ts):
    ts = [t.detach().clone().requires_grad_() for t in ts]
    y = fn(*ts)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype)
    return [y] + list(torch.autograd.grad(y, ts, g, allow_unused=True))


ACCEPTED = {
    "negative divisor_override": (lambda f, x: f.avg_pool2d(x, 3, 2, 1, divisor_override=-4), (2, 3, 7, 6)),
    "0-d tensor kernel_size": (lambda f, x: f.max_pool2d(x, torch.tensor(3), torch.tensor(2)), (2, 3, 7, 6)),
    "0-d tensors in pairs": (lambda f, x: f.avg_pool2d(x, (torch.tensor(2), 3), padding=torch.tensor(1,
                                                                                                  dtype=torch.int8)),
                             (2, 3, 7, 6)),
    "adaptive output height 0": (lambda f, x: f.adaptive_avg_pool2d(x, (0, 3)), (2, 3, 7, 6)),
    "adaptive output 0": (lambda f, x: f.adaptive_avg_pool2d(x, 0), (2, 3, 7, 6)),
    "conv without input channels": (lambda f, x: f.conv2d(x, x.new_ones(4, 0, 3, 3), x.new_ones(4), 2, 1),
                                    (2, 0, 7, 6)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(ACCEPTED))
def test_accepted_as_torch(case, backend):
    skip_unless_backend(backend, "cpu")
    fn, shape = ACCEPTED[case]
    x = torch.randn(shape, dtype=torch.float64)
    with fastconv.use_backend(backend):
        got = _grads(lambda x: fn(fastconv, x), x)
    try:
        want = _grads(lambda x: fn(F, x), x)
    except RuntimeError:  # torch has no backward for an empty adaptive pooling: the gradient is 0
        want = [fn(F, x), torch.zeros_like(x)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_conv_without_input_channels_gradients():
    """torch's conv of an input without channels: an empty result, zero weight and bias gradients."""
    x = torch.randn(2, 0, 5, 5, requires_grad=True)
    w = torch.randn(4, 0, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    y = fastconv.conv2d(x, w, b)
    assert y.shape == F.conv2d(x, w, b).shape == (2, 0, 3, 3)
    y.sum().backward()
    assert x.grad.shape == x.shape and (w.grad == 0).all() and w.grad.shape == w.shape and (b.grad == 0).all()
    with pytest.raises(ValueError, match="input channel"):
        fastconv.conv2d_fused(x, w, b, relu=True)
    import fastconv.numba as fnb
    assert fnb.conv2d(x.detach().numpy(), w.detach().numpy()).shape == (2, 0, 3, 3)
    assert fnb.adaptive_avg_pool2d(torch.randn(2, 3, 4, 4).numpy(), (2, 0)).shape == (2, 3, 2, 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_relu_keeps_negative_zero(backend, dtype):
    skip_unless_backend(backend, "cpu")
    if backend != "native" and dtype not in (torch.float32, torch.float64):
        pytest.skip("the Python backends take float32 and float64")
    x = torch.tensor([-0.0, 0.0, -1.0, 2.0, float("nan"), float("-inf")] * 11, dtype=dtype)
    with fastconv.use_backend(backend):
        got = fastconv.relu(x)
        want = torch.relu(x)
        torch.testing.assert_close(got, want, equal_nan=True)
        num = ~want.isnan()  # the sign of a NaN means nothing
        assert torch.equal(got.signbit()[num], want.signbit()[num])
        fastconv.relu(x, inplace=True)
        assert torch.equal(x.signbit()[num], want.signbit()[num])


def test_pool_arguments_accepted_alike_by_every_backend_and_torch():
    """The raw pooling operators of every backend accept and refuse the same arguments, as torch does
    (padding at most half the undilated kernel, also with dilation; output sizes positive)."""
    from fastconv import backends
    import itertools
    ops = {b: backends.load(b) for b in BACKENDS if backends.available(b)}
    x = torch.randn(1, 2, 7, 6)
    disagree = []
    for k, s, p, d, ceil in itertools.product((1, 2, 3), (1, 2), (0, 1, 2), (1, 2, 3), (False, True)):
        verdicts = {}
        for b, o in ops.items():
            for name, args in (("max_pool2d_values", ([k, k], [s, s], [p, p], [d, d], ceil)),
                               ("avg_pool2d_fwd", ([k, k], [s, s], [p, p], ceil, True, None))):
                try:
                    getattr(o, name)(x, *args)
                    verdicts[(b, name)] = True
                except (RuntimeError, ValueError):
                    verdicts[(b, name)] = False
        try:
            F.max_pool2d(x, k, s, p, d, ceil)
            verdicts["torch"] = True
        except RuntimeError:
            verdicts["torch"] = False
        if len({v for key, v in verdicts.items() if key == "torch" or key[1] == "max_pool2d_values"}) > 1 or \
                len({v for key, v in verdicts.items() if key != "torch" and key[1] == "avg_pool2d_fwd"}) > 1:
            disagree.append(((k, s, p, d, ceil), verdicts))
    assert not disagree, disagree[:3]
