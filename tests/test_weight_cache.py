"""The native CPU convolution keeps packed weights of models fused for inference. Every change made
through torch ops (in-place ops, optimizer steps, load_state_dict) must be seen; weights that were
never registered, or whose storage is gone, never hit it."""
import gc

import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv import _ext

pytestmark = pytest.mark.skipif(not _ext.native_available(), reason="native extension not built")


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(5, 24, 3, padding=1), torch.nn.BatchNorm2d(24), torch.nn.ReLU(),
        torch.nn.Conv2d(24, 40, 3, stride=2, padding=1, bias=False), torch.nn.ReLU(),
        torch.nn.Conv2d(40, 16, 1)).eval()


def _info():
    return _ext._C.weight_cache_info()


def _check(fast, ref, x):
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cached_weights_follow_every_change(layout):
    fastconv.clear_weight_cache()
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    ref = _net()
    fast = fastconv.convert(ref)  # eval: fused, convolutions registered
    x = torch.randn(2, 5, 11, 9).contiguous(memory_format=fmt)
    _check(fast, ref, x)
    assert _info()["entries"] >= 3 and _info()["bytes"] > 0
    _check(fast, ref, x)  # served from the cache
    with torch.no_grad():  # in-place change of both models' weights
        for m in (ref, fast):
            m[0].weight.mul_(-1.5)
            m[3].weight.add_(0.25)
    _check(fast, ref, x)
    with torch.inference_mode():
        for m in (ref, fast):
            m[5].weight.copy_(torch.full_like(m[5].weight, 0.01))
    _check(fast, ref, x)
    # load_state_dict copies in place
    other = _net(seed=1)
    ref.load_state_dict(other.state_dict())
    fast.load_state_dict(other.state_dict())
    _check(fast, ref, x)
    # an optimizer step (training mode), then back to inference
    fast.train()
    ref.train()
    for m in (fast, ref):
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        m(x).square().mean().backward()
        opt.step()
    fast.eval()
    ref.eval()
    _check(fast, ref, x)


def test_data_writes_need_clear():
    ref = _net()
    fast = fastconv.convert(ref)
    x = torch.randn(1, 5, 8, 8)
    _check(fast, ref, x)
    for m in (ref, fast):
        m[3].weight.data.mul_(3.0)  # bypasses the version counter: documented
    fastconv.clear_weight_cache()
    _check(fast, ref, x)


def test_unregistered_and_freed_weights_never_hit():
    fastconv.clear_weight_cache()
    x = torch.randn(2, 6, 9, 9)
    w = torch.randn(7, 6, 3, 3)
    with torch.no_grad():
        fastconv.conv2d(x, w, padding=1)
    assert _info()["entries"] == 0  # plain calls do not register
    for seed in range(4):  # models come and go; new weights may reuse freed addresses
        ref = _net(seed)
        fast = fastconv.convert(ref)
        _check(fast, ref, torch.randn(1, 5, 7, 6))
        del fast, ref
        gc.collect()


def test_gradient_calls_ignore_the_cache():
    ref = _net()
    fast = fastconv.convert(ref)
    x = torch.randn(2, 5, 8, 8)
    _check(fast, ref, x)
    w = fast[3].weight
    g_fast = torch.autograd.grad(fastconv.conv2d(x.new_ones(2, 24, 8, 8), w, None, 2, 1).sum(), w)[0]
    g_ref = torch.autograd.grad(F.conv2d(x.new_ones(2, 24, 8, 8), ref[3].weight, None, 2, 1).sum(), ref[3].weight)[0]
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-4)
