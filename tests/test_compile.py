"""A small network built from fastconv ops compiles with torch.compile(fullgraph=True) (no graph
breaks: every op has a fake kernel) and matches eager mode, forward and backward."""
import pytest
import torch

import fastconv
from conftest import DEVICES


class Net(torch.nn.Module):
    """conv -> relu -> maxpool -> conv(groups) -> avgpool -> adaptive -> flatten, plus a fused block."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(8, 3, 3, 3, generator=g) * 0.3)
        self.b1 = torch.nn.Parameter(torch.randn(8, generator=g) * 0.1)
        self.w2 = torch.nn.Parameter(torch.randn(12, 2, 3, 3, generator=g) * 0.3)
        self.w3 = torch.nn.Parameter(torch.randn(12, 12, 1, 1, generator=g) * 0.3)
        self.scale = torch.nn.Parameter(torch.rand(12, generator=g) + 0.5)

    def forward(self, x):
        x = fastconv.conv2d(x, self.w1, self.b1, padding=1)
        x = fastconv.relu(x)
        x = fastconv.max_pool2d(x, 3, 2, 1)
        x = fastconv.conv2d(x, self.w2, None, padding="same", groups=4)
        x = fastconv.conv2d_fused(x, self.w3, scale=self.scale, residual=x, combine="sort", relu=True)
        x = fastconv.avg_pool2d(x, 2, ceil_mode=True, count_include_pad=False)
        x = fastconv.adaptive_avg_pool2d(x, (3, 2))
        return torch.flatten(x, 1)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_compile_matches_eager(device, channels_last):
    torch._dynamo.reset()
    net = Net().to(device)
    x = torch.randn(2, 3, 17, 15, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    eager_x = x.clone().requires_grad_()
    comp_x = x.clone().requires_grad_()
    eager = net(eager_x)
    eager.square().sum().backward()
    eager_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    # inductor once; aot_eager (same tracing, fake kernels and autograd, no code generation) for the other
    compiled = torch.compile(net, fullgraph=True, dynamic=False, backend="aot_eager" if channels_last else "inductor")
    out = compiled(comp_x)
    assert out.shape == eager.shape == (2, 12 * 3 * 2)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    torch.testing.assert_close(comp_x.grad, eager_x.grad, atol=1e-5, rtol=1e-5)
    for p, g in zip(net.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-5)


def test_compiled_inference_takes_the_values_only_max_pool():
    """Traced where no gradient can flow (no_grad), max_pool2d is the values-only operator, as in eager
    mode; traced for training it keeps the indices its backward needs."""
    torch._dynamo.reset()
    net = Net()
    x = torch.randn(2, 3, 17, 15)
    graphs = []

    def backend(gm, inputs):
        graphs.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return gm.forward

    compiled = torch.compile(net, fullgraph=True, backend=backend)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x))
    assert "fastconv.max_pool2d_values" in graphs[-1] and "fastconv.max_pool2d_fwd" not in graphs[-1]
    compiled(x).sum().backward()
    assert "fastconv.max_pool2d_fwd" in graphs[-1]
