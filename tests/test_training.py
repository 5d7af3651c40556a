"""Training through fastconv follows torch: SGD steps of a converted ResNet-18 (train mode, BatchNorm
on batch statistics, momentum, weight decay) give torch's loss trajectory: twenty steps in float64
to 1e-10 relative; in float32, where rounding differences grow from step to step as they do between
torch's own layouts (NCHW against channels_last: 5e-4 by the fifth step here), the first five to
2e-3 on the direct kernels, and to 2e-2 with Winograd's 3x3 layers, whose float32 rounding (about
1e-4 relative a layer, README) the steps amplify."""
import copy

import pytest
import torch
import torch.nn.functional as F

import fastconv

from conftest import winograd as winograd_set

torchvision = pytest.importorskip("torchvision")


def _trajectory(model, x, t, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    losses = []
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[i % len(x)]), t[i % len(t)])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(params=["direct", "winograd"])
def winograd(request):
    """Winograd on (the default) or off for the 3x3 layers."""
    with winograd_set(request.param == "winograd") as on:
        yield on


@pytest.mark.parametrize("dtype,rtol,steps", [(torch.float64, 1e-10, 20), (torch.float32, 2e-3, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_sgd_steps_follow_torch(dtype, rtol, steps, channels_last, winograd):
    if winograd and dtype == torch.float32:
        rtol = 2e-2
    elif not winograd and (dtype == torch.float64 or not channels_last):
        pytest.skip("float64 runs the same kernels either way; one float32 layout on the direct path")
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=7).to(dtype).train()
    ours = fastconv.convert(copy.deepcopy(ref), channels_last=channels_last)
    g = torch.Generator().manual_seed(1)
    x = [torch.randn(6, 3, 48, 48, generator=g, dtype=dtype) for _ in range(4)]
    t = [torch.randint(0, 7, (6,), generator=g) for _ in range(4)]
    want = _trajectory(ref, x, t, steps)
    got = _trajectory(ours, x, t, steps)
    for i, (a, b) in enumerate(zip(got, want)):
        assert abs(a - b) <= rtol * abs(b), f"step {i}: loss {a} against torch's {b} ({got} vs {want})"
