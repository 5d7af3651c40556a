"""Gradients come out in the memory format torch gives them (the forward input's; a 1x1 adaptive
pooling's is contiguous), for every op, every input layout and every layout of the incoming gradient,
on every backend: a gradient in another layout than its activation makes every later op of the
backward read mixed layouts (in a channels_last ResNet, all BatchNorm backwards ran on NCHW
gradients against channels_last inputs, 4x slower)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastconv
from conftest import BACKENDS, make, rand, same_format, skip_unless_backend

LAYOUTS = ["nchw", "channels_last", "sliced"]


def _sort(a, b):
    return a + b + torch.sqrt(F.relu(a) * F.relu(b) + 0.01)


OPS = {  # name: (fastconv, torch), each of (x, other) -> y
    "conv2d": (lambda x, w: fastconv.conv2d(x, w, None, 1, 1), lambda x, w: F.conv2d(x, w, None, 1, 1)),
    "conv2d_fused": (lambda x, w: fastconv.conv2d_fused(x, w, padding=1, residual=x[:, :4], combine="add", relu=True),
                     lambda x, w: F.relu(F.conv2d(x, w, None, 1, 1) + x[:, :4])),
    "max_pool2d": (lambda x, w: fastconv.max_pool2d(x, 3, 2, 1), lambda x, w: F.max_pool2d(x, 3, 2, 1)),
    "max_pool2d_to_1x1": (lambda x, w: fastconv.max_pool2d(x, 7), lambda x, w: F.max_pool2d(x, 7)),
    "avg_pool2d": (lambda x, w: fastconv.avg_pool2d(x, 3, 2, 1), lambda x, w: F.avg_pool2d(x, 3, 2, 1)),
    "adaptive_avg_pool2d": (lambda x, w: fastconv.adaptive_avg_pool2d(x, 3),
                            lambda x, w: F.adaptive_avg_pool2d(x, 3)),
    "adaptive_avg_pool2d_1x1": (lambda x, w: fastconv.adaptive_avg_pool2d(x, 1),
                                lambda x, w: F.adaptive_avg_pool2d(x, 1)),
    "relu": (lambda x, w: fastconv.relu(x), lambda x, w: F.relu(x)),
    "relu_inplace": (lambda x, w: fastconv.relu(x * 1.0, inplace=True), lambda x, w: F.relu(x * 1.0, inplace=True)),
    "sort": (lambda x, w: fastconv.sort(x, x.flip(0)), lambda x, w: _sort(x, x.flip(0))),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grad_layout", LAYOUTS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", list(OPS))
def test_gradient_memory_format_is_torchs(op, layout, grad_layout, backend):
    skip_unless_backend(backend, "cpu")
    rng = np.random.default_rng(0)
    x0, w0 = rand(rng, (2, 4, 7, 7)), rand(rng, (4, 4, 3, 3))
    g0 = None
    grads = []
    for i, (fn, label) in enumerate(zip(OPS[op], ("fastconv", "torch"))):
        x = make(x0, torch.float64, "cpu", layout, True)
        w = make(w0, torch.float64, "cpu", layout, True)
        with fastconv.use_backend(backend):
            y = fn(x, w)
            if g0 is None:
                g0 = rand(rng, tuple(y.shape))
            # autograd.grad, not .backward: a leaf's .grad is laid out like the leaf whatever the
            # gradient's own layout
            grads.append(torch.autograd.grad(y, (x, w), make(g0, torch.float64, "cpu", grad_layout),
                                             allow_unused=True))
    (dx, dw), (dx_ref, dw_ref) = grads
    torch.testing.assert_close(dx, dx_ref)
    same_format(dx, dx_ref, f"{op} grad_input ({layout} input, {grad_layout} grad)")
    if dw_ref is not None:
        same_format(dw, dw_ref, f"{op} grad_weight ({layout} input, {grad_layout} grad)")


def test_channels_last_resnet_backward_keeps_channels_last():
    """A converted ResNet in training, channels_last: every BatchNorm backward reads a gradient in
    its input's layout (as in torch's own channels_last model)."""
    torchvision = pytest.importorskip("torchvision")
    from torch.utils._python_dispatch import TorchDispatchMode

    class Formats(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.mixed = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.native_batch_norm_backward.default:
                g, x = args[0], args[1]
                cl = torch.channels_last
                if g.is_contiguous(memory_format=cl) != x.is_contiguous(memory_format=cl):
                    self.mixed.append((tuple(g.stride()), tuple(x.stride())))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    net = fastconv.convert(torchvision.models.resnet18(num_classes=5).train(), channels_last=True)
    loss = F.cross_entropy(net(torch.randn(2, 3, 64, 64)), torch.tensor([1, 3]))
    with Formats() as f:
        loss.backward()
    assert not f.mixed, f"BatchNorm backward on mixed layouts: {f.mixed[:3]}"
