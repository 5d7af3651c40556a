"""fastconv.convert / fuse / patch on torchvision nets: same outputs, state_dict, autograd, compile."""
import importlib
import io

import pytest
import torch
import torchvision

import fastconv
from fastconv import nn
from test_sort_modules import close, randomize_bn

TV = [("alexnet", {}, 63), ("resnet18", {}, 48), pytest.param("resnet34", {}, 32, marks=pytest.mark.slow),
      pytest.param("resnet50", {}, 32, marks=pytest.mark.slow),
      ("mobilenet_v2", {}, 32), ("googlenet", dict(aux_logits=False, init_weights=False), 40),
      pytest.param("vgg11", {}, 32, marks=pytest.mark.slow)]


def tv_net(name, **kw):
    torch.manual_seed(0)
    return randomize_bn(getattr(torchvision.models, name)(weights=None, **kw))


@pytest.mark.parametrize("name,kw,size", TV)
def test_convert_eval_fused_matches(name, kw, size):
    net = tv_net(name, **kw).eval()
    conv = fastconv.convert(net)
    assert conv is not net and type(net.features[0] if hasattr(net, "features") else net.conv1) is not nn.Conv2d
    assert list(conv.state_dict()) == list(net.state_dict())
    s = conv.fastconv_summary
    assert s.converted["Conv2d"] == sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    assert sum(s.fused.values()) > 0
    assert not any(type(m) is torch.nn.Conv2d for m in conv.modules())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = net(x)
        close(conv(x), ref)
        xc = x.to(memory_format=torch.channels_last)
        conv_cl = conv.to(memory_format=torch.channels_last)
        close(conv_cl(xc), ref)


def test_convert_training_keeps_bn_and_grads_match():
    net = tv_net("resnet18", num_classes=5).train().double()  # float64: BN on tiny batches amplifies rounding
    conv = fastconv.convert(net)
    s = conv.fastconv_summary
    assert not s.fused and s.kept["BatchNorm2d"] == 20
    assert conv.fastconv_summary.converted["BasicBlock"] == 8
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    close(conv(x), net(x))  # train mode: BN on batch statistics; also updates running stats alike
    close(conv.bn1.running_mean, net.bn1.running_mean)
    for m in (net, conv):
        m.zero_grad()
        m(x).square().sum().backward()
    for p, q in zip(net.parameters(), conv.parameters()):
        close(q.grad, p.grad, 1e-8)
    conv.eval()  # fusion was not asked for: eval runs the layers one by one
    with torch.no_grad():
        close(conv(x), net.eval()(x))


def test_convert_inplace_fuse_flag_and_report(capsys):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect", bias=False),
                              torch.nn.Conv2d(4, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU6(),
                              torch.nn.AvgPool2d(2), torch.nn.Flatten()).eval()
    randomize_bn(net)
    x = torch.randn(1, 3, 9, 9)
    ref = net(x).detach()
    out = fastconv.convert(net, inplace=True, fuse=False, verbose=True)
    assert out is net and isinstance(net[1], nn.Conv2d) and isinstance(net[4], nn.AvgPool2d)
    assert isinstance(net[0], nn.Conv2d)  # reflect padding: the input is padded first, as in torch
    assert not net.fused
    printed = capsys.readouterr().out
    assert "ReLU6" in printed
    assert net.fastconv_summary.kept == {"BatchNorm2d": 1, "ReLU6": 1, "Flatten": 1}
    fastconv.fuse(net)
    assert net.fastconv_summary.fused == {"Sequential conv groups": 1, "BatchNorm2d (folded)": 1}
    assert net.fused and net._plan[1] == (1, 2, 2, False)
    with torch.no_grad():
        close(net(x), ref)


def test_state_dict_save_load_roundtrip():
    net = tv_net("resnet18").eval()
    conv = fastconv.convert(net)
    buf = io.BytesIO()
    torch.save(conv.state_dict(), buf)
    buf.seek(0)
    fresh = torchvision.models.resnet18(weights=None).eval()
    fresh.load_state_dict(torch.load(buf), strict=True)
    again = fastconv.convert(torchvision.models.resnet18(weights=None).eval())
    again.load_state_dict(net.state_dict(), strict=True)  # fused path reads the loaded BN stats
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
        close(fresh(x), ref, 1e-6)
        close(again(x), ref)


def _small_net():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 8, 3, stride=2), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))


@pytest.mark.slow
@pytest.mark.parametrize("train", [False, True])
def test_torch_compile_fullgraph(train):
    net = randomize_bn(_small_net()).train(train)
    conv = fastconv.convert(net)
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")  # inductor: minutes on 2 cores
    x = torch.randn(2, 3, 12, 12, requires_grad=train)
    ref = net(x)
    got = compiled(x)
    close(got, ref)
    if train:
        g_ref = torch.autograd.grad(ref.sum(), x)[0]
        g = torch.autograd.grad(got.sum(), x)[0]
        close(g, g_ref, 1e-3)


def test_patch_routes_functional_calls_and_restores():
    net = randomize_bn(_small_net()).eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        ref = net(x)
        with fastconv.patch() as p:
            got = net(x)
            y = torch.nn.functional.avg_pool2d(x, 3, stride=2, padding=1)
            yi = torch.nn.functional.relu(torch.arange(-3, 3))  # integer: torch
            y5 = torch.nn.functional.max_pool2d(x, 2, return_indices=True)[1]
        close(got, ref)
        close(y, torch.nn.functional.avg_pool2d(x, 3, stride=2, padding=1))
        assert yi.tolist() == [0, 0, 0, 0, 1, 2]
        assert y5.equal(torch.nn.functional.max_pool2d(x, 2, return_indices=True)[1])
    routed = {k: v for k, v in p.counts.items() if not k.startswith("fallback")}
    assert routed == {"conv2d": 2, "relu": 2, "max_pool2d": 1, "max_pool2d_with_indices": 1,
                      "adaptive_avg_pool2d": 1, "avg_pool2d": 1}
    assert p.counts["fallback:relu"] == 1
    before = dict(p.counts)
    net(x)
    assert dict(p.counts) == before  # the mode is gone after the with block


def test_patch_autograd():
    net = _small_net().train()
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    g_ref = torch.autograd.grad(net(x).square().sum(), x)[0]
    with fastconv.patch():
        g = torch.autograd.grad(net(x).square().sum(), x)[0]
    close(g, g_ref, 1e-3)


def test_googlenet_blocks_become_fused_conv_bn_relu():
    gn = importlib.import_module("torchvision.models.googlenet")
    net = tv_net("googlenet", aux_logits=False, init_weights=False).eval()
    n = sum(isinstance(m, gn.BasicConv2d) for m in net.modules())
    conv = fastconv.convert(net)
    assert sum(isinstance(m, nn.ConvBNReLU) for m in conv.modules()) == n
    assert conv.fastconv_summary.fused["ConvBNReLU"] == n


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_convert_padding_modes_fused(mode):
    """conv (any padding mode) -> bn -> relu folds into one conv2d_fused call on the padded input."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, padding_mode=mode), torch.nn.BatchNorm2d(8),
                              torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, 2, 2, padding_mode=mode)).eval()
    randomize_bn(net)
    x = torch.randn(2, 3, 11, 10)
    with torch.no_grad():
        ref = net(x)
        conv = fastconv.convert(net)
        assert conv.fused and conv.fastconv_summary.fused["BatchNorm2d (folded)"] == 1
        close(conv(x), ref)
        close(conv(x.contiguous(memory_format=torch.channels_last)), ref)


@pytest.mark.parametrize("train", [False, True])
def test_fx_trace_and_feature_extraction(train):
    """torch.fx.symbolic_trace and torchvision's create_feature_extractor see fastconv's calls as graph
    nodes (the public functions follow __torch_function__), fused or not; print(model) names them."""
    from torchvision.models.feature_extraction import create_feature_extractor
    net = tv_net("resnet18", num_classes=5).train(train).double()
    conv = fastconv.convert(net)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    gm = torch.fx.symbolic_trace(conv)
    called = {n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"
              and getattr(n.target, "__module__", "").startswith("fastconv")}
    assert called >= ({"conv2d", "max_pool2d", "relu"} if train else {"conv2d_fused", "max_pool2d"})
    nodes = {"layer1": "l1", "layer3": "l3", "fc": "logits"}  # a fused BN is no node: it was folded
    fast_fe, ref_fe = create_feature_extractor(conv, nodes), create_feature_extractor(net, nodes)
    with torch.no_grad():
        close(gm(x), net(x), 1e-9)
        got, want = fast_fe(x), ref_fe(x)
    for k in nodes.values():
        close(got[k], want[k], 1e-9)
    text = str(conv)
    assert "fastconv.Conv2d(" in text and ("fastconv.BasicBlock (fused)" in text) != train


def test_unconvert_gives_the_torch_model_back():
    """unconvert: the torch / torchvision classes again (same state_dict, same outputs), for tools that
    know only torch's operators; exportable to ONNX where the exporter is installed."""
    net = tv_net("resnet18", num_classes=5).eval()
    fast = fastconv.convert(net)
    back = fastconv.unconvert(fast)
    assert back is not fast and type(back) is torchvision.models.ResNet
    assert {type(m).__module__.split(".")[0] for m in back.modules()} == {"torch", "torchvision"}
    assert list(back.state_dict()) == list(net.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        close(back(x), net(x))
    with pytest.raises(ValueError, match="no torch twin"):
        fastconv.unconvert(fastconv.models.cifar_resnet20(sort=True))
    try:
        import onnx  # noqa: F401
    except ImportError:
        return
    f = io.BytesIO()
    torch.onnx.export(back, (x,), f, dynamo=False)
    assert f.getbuffer().nbytes > 0
