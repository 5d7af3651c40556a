"""Fused models stay equal to torch under every way a user changes a model after converting it:
assigning children, parameters or buffers, load_state_dict, .data writes (with clear_weight_cache),
in-place edits under no_grad, to(dtype), to(memory_format), requires_grad_ toggles, train()/eval(),
hooks. Each change is made to a torch model and its converted copy after both ran once (so every
cache is warm); then both must agree. Also: convert fuses only the activations a block really
computes, and conv2d_fused's backward refuses tensors changed in place after the forward."""
import pytest
import torch
import torch.nn.utils.prune
import torchvision

import fastconv
from fastconv import nn
from random_convnets import StdConv2d
from test_sort_modules import close, randomize_bn

RN = torchvision.models.resnet


class ScaledBN(torch.nn.BatchNorm2d):
    def forward(self, x):
        return super().forward(x) * 2


def _tiny_resnet(block=RN.BasicBlock, seed=0):
    torch.manual_seed(seed)
    return randomize_bn(RN.ResNet(block, [1, 1, 1, 1], num_classes=7), seed).eval()


def _pair(block=RN.BasicBlock):
    ref = _tiny_resnet(block)
    fast = fastconv.convert(ref)
    return ref, fast


def _agree(ref, fast, x, rel=1e-4):
    with torch.no_grad():
        close(fast(x), ref(x), rel)


def _both(ref, fast, change):
    for m in (ref, fast):
        change(m)


def _new_stats(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b.shape, generator=g) + 0.5 for b in (m.layer1[0].bn1.running_var, m.bn1.weight)]


def _data_writes(m):
    v, w = _new_stats(m)
    m.layer1[0].bn1.running_var.data.copy_(v)
    m.layer2[0].bn2.running_mean.data.add_(0.3)
    m.bn1.weight.data.copy_(w)
    m.layer3[0].downsample[1].bias.data.sub_(0.2)
    m.layer1[0].conv2.weight.data.mul_(-2)
    fastconv.clear_weight_cache()  # the documented remedy after writes that bypass version counters


def _no_grad_edits(m):
    v, w = _new_stats(m)
    with torch.no_grad():
        m.layer1[0].bn1.running_var.copy_(v)
        m.bn1.weight.copy_(w)
        m.layer4[0].conv1.weight.mul_(0.5)
        m.layer2[0].bn1.eps = 0.1


def _load_state_dict(m):
    m.load_state_dict(_tiny_resnet(seed=3).state_dict())


def _new_buffers(m):
    v, w = _new_stats(m)
    for _ in range(3):  # freed buffers' addresses may be reused with the same version counter
        m.layer1[0].bn1.running_var = v.clone()
        m.bn1.running_mean = torch.zeros_like(w)


def _new_parameters(m):
    g = torch.Generator().manual_seed(4)
    conv, bn = m.layer2[0].conv2, m.layer2[0].bn2
    conv.weight = torch.nn.Parameter(torch.randn(conv.weight.shape, generator=g) * 0.05)
    bn.weight = torch.nn.Parameter(torch.rand(bn.num_features, generator=g) + 0.5)


def _assign_children(m):
    torch.manual_seed(5)
    m.relu = torch.nn.LeakyReLU(0.3)
    m.layer1[0].relu = torch.nn.SiLU()
    m.layer2[0].downsample[1] = torch.nn.Identity()
    conv = m.layer3[0].conv1
    std = StdConv2d(conv.in_channels, conv.out_channels, 3, conv.stride, 1, bias=False)
    std.weight.data.copy_(conv.weight)
    m.layer3[0].conv1 = std
    bn = m.layer4[0].bn2
    m.layer4[0].bn2 = ScaledBN(bn.num_features).eval()
    m.layer4[0].bn2.load_state_dict(bn.state_dict())


def _train_step_then_eval(m):
    m.train()
    torch.manual_seed(7)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(torch.randn(4, 3, 24, 24)).square().mean().backward()
    opt.step()
    m.eval()


def _requires_grad_toggle(m):
    m.requires_grad_(False)
    with torch.no_grad():
        m.layer1[0].bn2.weight.mul_(1.5)
    m.requires_grad_(True)


def _hooks(m):
    """Hooks that a fused call would skip: pruning (a forward pre-hook recomputing the weight), a
    forward hook changing a BatchNorm's output, a backward hook on a convolution."""
    torch.nn.utils.prune.l1_unstructured(m.layer1[0].conv1, "weight", amount=0.5)
    m.layer2[0].bn1.register_forward_hook(lambda mod, inp, out: out * 0.5)
    m.layer3[0].conv2.register_full_backward_hook(lambda mod, gin, gout: None)
    with torch.no_grad():
        m.layer1[0].conv1.weight_orig.mul_(-1)  # the pre-hook recomputes the weight from it


def _geometry(m):
    conv = m.layer1[0].conv2  # 3x3: dilated, with the padding that keeps the map's size
    conv.dilation, conv.padding = (2, 2), (2, 2)


CHANGES = {
    "geometry": _geometry,
    "data_writes": _data_writes,
    "no_grad_edits": _no_grad_edits,
    "load_state_dict": _load_state_dict,
    "new_buffers": _new_buffers,
    "new_parameters": _new_parameters,
    "assign_children": _assign_children,
    "train_step_then_eval": _train_step_then_eval,
    "requires_grad_toggle": _requires_grad_toggle,
    "to_float64": lambda m: m.to(torch.float64),
    "to_channels_last": lambda m: m.to(memory_format=torch.channels_last),
    "hooks": _hooks,
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_fused_model_follows_change(change):
    ref, fast = _pair()
    x = torch.randn(2, 3, 24, 24)
    _agree(ref, fast, x)  # warm every cache
    with torch.inference_mode():
        fast(x)
    _both(ref, fast, CHANGES[change])
    if change == "train_step_then_eval":  # float32 training steps differ by rounding: compare the states
        ref.load_state_dict(fast.state_dict())
    if change == "to_float64":
        x = x.double()
    if change == "to_channels_last":
        x = x.to(memory_format=torch.channels_last)
    _agree(ref, fast, x)
    with torch.inference_mode():
        close(fast(x), ref(x))
    # with gradients: the fused path gives autograd the same function
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    gr = torch.autograd.grad(ref(xr).square().sum(), xr)[0]
    gf = torch.autograd.grad(fast(xf).square().sum(), xf)[0]
    close(gf, gr, 1e-3)


@pytest.mark.parametrize("block", [RN.BasicBlock, RN.Bottleneck])
def test_fused_blocks_replay_their_calls(block, monkeypatch):
    """Inference calls after the first repeat each fused block's recorded kernel calls (nn._Block's
    replay) with the checked path's result; another input shape, a hooked child, autocast or
    gradients take the checked path."""
    ref, fast = _pair(block)
    x = torch.randn(2, 3, 24, 24)
    replayed = []
    replay = nn._Block._replay
    monkeypatch.setattr(nn._Block, "_replay", lambda self, x: replayed.append(replay(self, x)) or replayed[-1])
    with torch.inference_mode():
        first = fast(x)
        assert replayed == [None] * 4  # nothing recorded yet
        replayed.clear()
        again = fast(x)
        assert len(replayed) == 4 and all(r is not None for r in replayed)
        assert torch.equal(again, first)
        close(again, ref(x))
        replayed.clear()
        fast(x[:1])  # another shape: checked, then recorded for it (a block keeps one record)
        assert replayed == [None] * 4
        fast(x)
        for m in (ref, fast):
            m.layer2[0].conv1.register_forward_pre_hook(lambda mod, inp: (inp[0] * 2,))
        replayed.clear()
        close(fast(x), ref(x))
        assert replayed[1] is None and None not in replayed[:1] + replayed[2:]
    replayed.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast(x)
    x.requires_grad_()
    fast(x).sum().backward()
    assert replayed == []


@pytest.mark.parametrize("block", ["BasicBlock", "Bottleneck"])
@pytest.mark.parametrize("train", [False, True])
def test_convert_keeps_other_activations(block, train):
    ref = _tiny_resnet(getattr(RN, block))
    ref.relu = torch.nn.LeakyReLU(0.2)
    for layer in (ref.layer1, ref.layer3):
        layer[0].relu = torch.nn.SiLU()
    ref.train(train)
    fast = fastconv.convert(ref)
    s = fast.fastconv_summary
    assert s.converted[block] == 2 and s.converted["ResNet"] == 0
    assert s.kept["SiLU"] == 2 and s.kept["LeakyReLU"] == 1
    assert type(fast.layer1[0]) is getattr(RN, block) and type(fast.layer2[0]) is getattr(nn, block)
    x = torch.randn(2, 3, 24, 24)
    if not train:
        _agree(ref, fast, x)
        return
    for m in (ref, fast):  # float64: BN on batch statistics of tiny batches amplifies rounding
        m.double()
    x = x.double()
    close(fast(x), ref(x))
    for m in (ref, fast):
        m.zero_grad()
        m(x).square().sum().backward()
    for p, q in zip(ref.parameters(), fast.parameters()):
        close(q.grad, p.grad, 1e-8)


def test_fastconv_blocks_apply_their_own_activation():
    """A fastconv BasicBlock / ResNet whose relu child is replaced computes what torchvision's would."""
    torch.manual_seed(0)
    ours = randomize_bn(fastconv.models.resnet18(num_classes=5)).eval()
    ref = RN.resnet18(num_classes=5).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 32, 32)
    for m in (ours, ref):
        m.relu = torch.nn.Hardtanh()
        m.layer2[1].relu = torch.nn.GELU()
    for fused in (False, True):
        if fused:
            ours.fuse()
        _agree(ref, ours, x)


def test_sequential_plan_follows_children():
    torch.manual_seed(1)
    ref = randomize_bn(torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6),
                                           torch.nn.ReLU(), torch.nn.Conv2d(6, 4, 1), torch.nn.ReLU())).eval()
    fast = fastconv.convert(ref)
    assert fast.fastconv_summary.fused["Sequential conv groups"] == 2
    x = torch.randn(2, 3, 7, 9)
    _agree(ref, fast, x)
    _both(ref, fast, lambda m: m.__setitem__(2, torch.nn.Identity()))  # same count of children
    _agree(ref, fast, x)
    _both(ref, fast, lambda m: m.__setitem__(4, torch.nn.Tanh()))
    _agree(ref, fast, x)
    bn = ScaledBN(6).eval()
    bn.load_state_dict(ref[1].state_dict())
    _both(ref, fast, lambda m: m.__setitem__(1, bn))
    _agree(ref, fast, x)
    _both(ref, fast, lambda m: m.__setitem__(1, torch.nn.BatchNorm2d(6).eval()))
    _both(ref, fast, lambda m: m.__setitem__(2, torch.nn.ReLU()))
    _agree(ref, fast, x)
    _both(ref, fast, lambda m: m.__delitem__(1))  # fewer children
    _agree(ref, fast, x)


@pytest.mark.parametrize("name", ["input", "weight", "bias", "scale", "shift", "residual"])
def test_fused_backward_refuses_inplace_changes(name):
    torch.manual_seed(2)
    t = dict(input=torch.randn(2, 3, 6, 5), weight=torch.randn(4, 3, 3, 3), bias=torch.randn(4),
             scale=torch.rand(4) + 0.5, shift=torch.randn(4), residual=torch.randn(2, 4, 4, 3))
    for v in t.values():
        v.requires_grad_()
    leaves = dict(t)
    t = {k: v * 1 for k, v in t.items()}  # non-leaves: in-place changes are allowed on them
    y = fastconv.conv2d_fused(t["input"], t["weight"], t["bias"], scale=t["scale"], shift=t["shift"],
                              residual=t["residual"], combine="sort", relu=True)
    with torch.no_grad():
        t[name].mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(y.sum(), list(leaves.values()))



def test_global_hooks_and_backward_hooks_run():
    ref, fast = _pair()
    x = torch.randn(2, 3, 24, 24)
    _agree(ref, fast, x)
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda mod, inp, out: seen.append(type(mod)))
    try:
        with torch.no_grad():
            ref(x)
            n_ref = len(seen)
            seen.clear()
            fast(x)
    finally:
        handle.remove()
    assert len(seen) == n_ref  # every module's hook ran, as in torch
    calls = []
    fast.layer1[0].bn2.register_full_backward_hook(lambda mod, gin, gout: calls.append(1))
    xf = x.clone().requires_grad_()
    fast(xf).sum().backward()
    assert calls == [1]


def test_sort_conv_then_batchnorm_is_not_folded_into_a_branch():
    """bn(sort(a, b)) cannot be an epilogue of branch b: the Sequential plan leaves that BN alone."""
    torch.manual_seed(8)
    seq = randomize_bn(nn.Sequential(nn.SORTConv2d(3, 5, 3, padding=1), torch.nn.BatchNorm2d(5), nn.ReLU(),
                                     nn.SORTConv2d(5, 4, 3), nn.ReLU())).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = seq(x)
        assert seq.fuse() == 1 and seq._plan == ((0, 1, None, False), (1, 1, None, False), (2, 1, None, False),
                                                 (3, 2, None, True))
        close(seq(x), ref)
        close(nn.conv_bn_act(seq[0], seq[1], x, act=seq[2]), seq[2](seq[1](seq[0](x))))


def test_hooks_registered_before_convert_fire():
    ref = _tiny_resnet()
    seen = []
    for name in ("conv1", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu", "layer2.0.downsample.1"):
        ref.get_submodule(name).register_forward_hook(lambda mod, inp, out, name=name: seen.append(name))
    fast = fastconv.convert(ref)
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        want = ref(x)
        n_ref = list(seen)
        seen.clear()
        close(fast(x), want)
    assert seen == n_ref and len(seen) >= 5
