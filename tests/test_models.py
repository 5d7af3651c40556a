"""fastconv.models: torchvision state_dict interchange and identical logits, SORT variants, fuse()."""
import pytest
import torch
import torchvision

from fastconv import models
from test_sort_modules import close, randomize_bn

TV_NETS = [("resnet18", 64), ("resnet34", 64), ("resnet50", 64), ("alexnet", 63)]


@pytest.mark.parametrize("name,size", TV_NETS)
def test_state_dict_interchange_and_logits(name, size):
    torch.manual_seed(0)
    tv = randomize_bn(getattr(torchvision.models, name)(weights=None)).eval()
    ours = getattr(models, name)(sort=False).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(tv.state_dict())
    back = getattr(torchvision.models, name)(weights=None).eval()
    back.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ref = tv(x)
        close(ours(x), ref)
        assert ours.fuse() is ours
        close(ours(x), ref)
        close(ours(x.to(memory_format=torch.channels_last)), ref)
        close(back(x), ref, 1e-6)


@pytest.mark.parametrize("name,size,train", [("resnet18", 32, True), ("resnet50", 32, False), ("alexnet", 63, False)])
def test_sort_variants_fuse_and_train(name, size, train):
    torch.manual_seed(1)
    net = randomize_bn(getattr(models, name)(sort=True, num_classes=7))
    with torch.device("meta"):
        tv_keys = set(getattr(torchvision.models, name)(weights=None, num_classes=7).state_dict())
    if name == "alexnet":  # conv2..conv5 became two-branch SORT convs
        assert any(".branch_a." in k for k in net.state_dict())
    else:  # same parameters as the plain net, only the residual fusion differs
        assert set(net.state_dict()) == tv_keys
    x = torch.randn(2, 3, size, size)
    if train:
        net.train()
        net(x).logsumexp(1).sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    net.eval()
    with torch.no_grad():
        ref = net(x)
        assert ref.shape == (2, 7)
        net.fuse()
        close(net(x), ref)


@pytest.mark.parametrize("depth,sort", [(20, False), (20, True), (32, True), (56, False)])
def test_cifar_resnets(depth, sort):
    torch.manual_seed(2)
    net = randomize_bn(getattr(models, f"cifar_resnet{depth}")(sort=sort))
    n = (depth - 2) // 6
    assert [len(net.layer1), len(net.layer2), len(net.layer3)] == [n, n, n]
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == depth - 1 + 2  # depth-1 weighted convs + 2 projection shortcuts
    assert {m.out_channels for m in convs} == {16, 32, 64}
    x = torch.randn(3, 3, 16, 16)
    net.eval()
    with torch.no_grad():
        ref = net(x)
        assert ref.shape == (3, 10)
        net.fuse()
        close(net(x), ref)
    with pytest.raises(ValueError, match="6n\\+2"):
        models.CifarResNet(depth=21)


def test_fused_net_trains_unfused():
    """fuse() is an inference path: train() runs BN on batch statistics, as an unfused net does."""
    torch.manual_seed(3)
    a = models.cifar_resnet20(sort=True)
    b = models.cifar_resnet20(sort=True)
    b.load_state_dict(a.state_dict())
    b.fuse()
    x = torch.randn(4, 3, 12, 12)
    close(b.train()(x), a.train()(x))
    for m in (a, b):
        m.zero_grad()
        m(x).sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        close(pb.grad, pa.grad, 1e-3)
