"""SORT modules: fastconv.nn.SORT, SORT/plain ResNet blocks, SORTConv2d, their fused inference path."""
import pytest
import torch
import torchvision

import fastconv
from fastconv import nn
from fastconv.bench import randomize_bn  # noqa: F401  (test_models, test_convert, test_model_changes import it from here)


def close(actual, expected, rel=1e-4):
    """Equal up to float32 reassociation, relative to the magnitude of the result."""
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * max(1.0, expected.abs().max().item()))


def sort_ref(a, b, mode="sqrt", eps=0.01):
    p = a.relu() * b.relu()
    return a + b + (torch.sqrt(p + eps) if mode == "sqrt" else p)


@pytest.mark.parametrize("mode", ["sqrt", "product"])
def test_sort_module_matches_formula_and_grad(mode):
    torch.manual_seed(0)
    a = torch.randn(2, 5, 7, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 5, 7, 3, dtype=torch.float64, requires_grad=True)
    m = nn.SORT(mode, eps=0.05)
    y = m(a, b)
    close(y, sort_ref(a, b, mode, 0.05), 1e-10)
    g = torch.randn_like(y)
    ga, gb = torch.autograd.grad(y, (a, b), g)
    ra, rb = torch.autograd.grad(sort_ref(a, b, mode, 0.05), (a, b), g)
    close(ga, ra, 1e-10)
    close(gb, rb, 1e-10)
    assert "mode='%s'" % mode in repr(m)
    with pytest.raises(ValueError, match="mode"):
        nn.SORT("cube")


def _tv_block(cls, *args):
    tv = getattr(torchvision.models.resnet, cls)(*args)
    return randomize_bn(tv).eval()


@pytest.mark.parametrize("cls,args,shape", [
    ("BasicBlock", (8, 8), (2, 8, 9, 7)),
    ("Bottleneck", (16, 4), (1, 16, 6, 5)),
])
@pytest.mark.parametrize("combine", ["add", "sort"])
def test_block_matches_torchvision_layout(cls, args, shape, combine):
    torch.manual_seed(1)
    tv = _tv_block(cls, *args)
    block = getattr(nn, cls)(*args, combine=combine).eval()
    block.load_state_dict(tv.state_dict(), strict=True)
    assert list(block.state_dict()) == list(tv.state_dict())
    x = torch.randn(shape)
    with torch.no_grad():
        unfused = block(x)
        block.fused = True
        fused = block(x)
        if combine == "add":
            expected = tv(x)
        else:  # the torchvision block's branch, fused by SORT instead of addition
            tv.relu = torch.nn.ReLU()
            branch = tv.bn1(tv.conv1(x)).relu()
            if cls == "Bottleneck":
                branch = tv.bn2(tv.conv2(branch)).relu()
                branch = tv.bn3(tv.conv3(branch))
            else:
                branch = tv.bn2(tv.conv2(branch))
            expected = sort_ref(x, branch).relu()
    close(unfused, expected)
    close(fused, expected)


@pytest.mark.parametrize("cls", ["SORTBasicBlock", "SORTBottleneck"])
def test_sort_block_downsample_fused_and_grad(cls):
    torch.manual_seed(2)
    block_cls = getattr(nn, cls)
    expansion = block_cls.expansion
    down = nn.Sequential(nn.Conv2d(6, 4 * expansion, 1, stride=2, bias=False), torch.nn.BatchNorm2d(4 * expansion))
    block = randomize_bn(block_cls(6, 4, stride=2, downsample=down, mode="product"))
    assert block.combine == "sort" and block.mode == "product"
    x = torch.randn(2, 6, 11, 10, requires_grad=True)
    block.train()
    y = block(x)
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in block.parameters())
    block.eval()
    with torch.no_grad():
        ref = block(x)
        fastconv.fuse(block)
        assert block.fused and block.downsample.fused
        close(block(x), ref)
    # eval mode with fusion still differentiates (frozen-BN fine-tuning)
    xg = x.detach().clone().requires_grad_()
    ref_g = torch.autograd.grad(_unfused(block, xg).sum(), xg)[0]
    xg2 = x.detach().clone().requires_grad_()
    got_g = torch.autograd.grad(block(xg2).sum(), xg2)[0]
    close(got_g, ref_g, 1e-3)


def _unfused(module, x):
    fused = [(m, m.fused) for m in module.modules() if isinstance(m, nn.Fusable)]
    for m, _ in fused:
        m.fused = False
    try:
        return module(x)
    finally:
        for m, f in fused:
            m.fused = f


def test_sort_conv2d_and_sequential_fusion():
    torch.manual_seed(3)
    seq = nn.Sequential(nn.SORTConv2d(3, 5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(5, 7, 3, stride=2, bias=False), torch.nn.BatchNorm2d(7), nn.ReLU(),
                        nn.Conv2d(7, 4, 1), torch.nn.BatchNorm2d(4)).eval()
    randomize_bn(seq)
    x = torch.randn(2, 3, 13, 11)
    sc = seq[0]
    with torch.no_grad():
        close(sc(x), sort_ref(sc.branch_a(x), sc.branch_b(x)))
        ref = seq(x)
        assert seq.fuse() == 3
        assert seq._plan == ((0, 2, None, True), (2, 1, None, False), (3, 3, 4, True), (6, 2, 7, False))
        close(seq(x), ref)
        close(seq(x.to(memory_format=torch.channels_last)), ref)
    seq.train()  # training runs the layers one by one (BN on batch statistics)
    y = seq(x)
    assert y.shape == ref.shape


def test_conv_bn_relu_matches_googlenet_basic_conv():
    gn = __import__("importlib").import_module("torchvision.models.googlenet")
    torch.manual_seed(4)
    tv = randomize_bn(gn.BasicConv2d(3, 6, kernel_size=3, stride=2, padding=1)).eval()
    m = nn.ConvBNReLU(3, 6, bn_eps=0.001, kernel_size=3, stride=2, padding=1).eval()
    m.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 15, 15)
    with torch.no_grad():
        ref = tv(x)
        close(m(x), ref)
        m.fused = True
        close(m(x), ref)


def test_unfoldable_bn_is_not_folded():
    torch.manual_seed(5)
    conv, bn = nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, track_running_stats=False).eval()
    x = torch.randn(2, 3, 8, 8)
    assert not nn.foldable(bn)
    close(nn.conv_bn_act(conv, bn, x, act=torch.nn.ReLU()), bn(conv(x)).relu())


def test_folded_bn_cache_follows_updates():
    torch.manual_seed(6)
    seq = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), nn.ReLU())).eval()
    seq.fuse()
    x = torch.randn(1, 3, 6, 6)
    with torch.inference_mode():
        seq(x)
    with torch.no_grad():
        seq[1].running_mean.add_(0.5)  # in place: the cached fold must notice
        seq[1].weight.mul_(2)
        want = seq[1](seq[0](x)).relu()
        close(seq(x), want)
    seq.load_state_dict(randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)), seed=9).state_dict(),
                        strict=False)
    with torch.no_grad():
        close(seq(x), seq[1](seq[0](x)).relu())
    seq[1].weight.requires_grad_(True)
    seq(x).sum().backward()  # grad mode with trainable BN affine: folded inside the autograd graph
    assert seq[1].weight.grad is not None and seq[0].weight.grad is not None
