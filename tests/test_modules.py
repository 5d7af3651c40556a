"""fastconv.nn modules load the state_dicts of their torch.nn namesakes (strict, both ways) and give
the same outputs."""
import pytest
import torch

import fastconv
import fastconv.nn as fnn
from conftest import DEVICES, assert_close

MODULES = [
    ("Conv2d", dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1)),
    ("Conv2d", dict(in_channels=6, out_channels=6, kernel_size=(2, 4), padding="same", groups=3, bias=False)),
    ("Conv2d", dict(in_channels=4, out_channels=8, kernel_size=5, dilation=2, padding="valid")),
    ("MaxPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("MaxPool2d", dict(kernel_size=2, dilation=2)),
    ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ("AvgPool2d", dict(kernel_size=2, ceil_mode=True, divisor_override=3)),
    ("AdaptiveAvgPool2d", dict(output_size=(3, 5))),
    ("AdaptiveAvgPool2d", dict(output_size=1)),
    ("ReLU", dict()),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,kw", MODULES, ids=[f"{m[0]}-{i}" for i, m in enumerate(MODULES)])
def test_module_matches_torch(name, kw, device):
    torch.manual_seed(0)
    ours = getattr(fnn, name)(**kw).to(device)
    theirs = getattr(torch.nn, name)(**kw).to(device)
    assert isinstance(ours, getattr(torch.nn, name))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    c = kw.get("in_channels", 4)
    x = torch.randn(2, c, 11, 13, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, e = ours(x), theirs(x2)
    red = c * 25 if name == "Conv2d" else 9
    assert_close(y, e, torch.float32, red)
    g = torch.randn_like(y)
    y.backward(g)
    e.backward(g)
    assert_close(x.grad, x2.grad, torch.float32, red)
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert n1 == n2
        assert_close(p1.grad, p2.grad, torch.float32, 2 * 11 * 13, what=f"grad of {n1}")


def test_conv_weights_loaded_are_used():
    theirs = torch.nn.Conv2d(3, 5, 3, padding=1)
    ours = fnn.Conv2d(3, 5, 3, padding=1)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 8, 8)
    assert_close(ours(x), theirs(x), torch.float32, 27)


def test_maxpool_return_indices_and_unbatched():
    m, t = fnn.MaxPool2d(3, 2, 1, return_indices=True), torch.nn.MaxPool2d(3, 2, 1, return_indices=True)
    x = torch.randn(3, 9, 10)
    (y, i), (e, ei) = m(x), t(x)
    assert torch.equal(y, e) and torch.equal(i, ei)


def test_relu_inplace_module():
    x = torch.randn(2, 3, 4, 4)
    e = torch.relu(x)
    fnn.ReLU(inplace=True)(x)
    assert torch.equal(x, e)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding,stride", [(1, 1), ((2, 1), 2), ("same", 1)])
def test_conv_padding_modes(mode, padding, stride):
    """Padding modes other than zeros pad the input first, as torch.nn.Conv2d does."""
    torch.manual_seed(0)
    t = torch.nn.Conv2d(3, 4, (3, 4) if padding == "same" else 3, stride, padding, padding_mode=mode)
    m = fnn.Conv2d(3, 4, (3, 4) if padding == "same" else 3, stride, padding, padding_mode=mode)
    m.load_state_dict(t.state_dict())
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    t, m = t.double(), m.double()
    ya, yb = t(xa), m(xb)
    torch.testing.assert_close(yb, ya)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad)
    torch.testing.assert_close(m.weight.grad, t.weight.grad)


def test_sequential_model():
    torch.manual_seed(1)
    t = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                            torch.nn.Conv2d(8, 8, 3, groups=2), torch.nn.AvgPool2d(2, ceil_mode=True),
                            torch.nn.AdaptiveAvgPool2d(1))
    f = torch.nn.Sequential(fnn.Conv2d(3, 8, 3, padding=1), fnn.ReLU(), fnn.MaxPool2d(2),
                            fnn.Conv2d(8, 8, 3, groups=2), fnn.AvgPool2d(2, ceil_mode=True), fnn.AdaptiveAvgPool2d(1))
    f.load_state_dict(t.state_dict(), strict=True)
    x = torch.randn(2, 3, 19, 17)
    assert_close(f(x), t(x), torch.float32, 72)
    assert fastconv.get_backend()
