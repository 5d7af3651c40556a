"""Randomized differential campaign of fastconv.convert: random torchvision-style and timm convnets
(activations, blocks, padding modes, groups, dilation, BatchNorm placements, subclasses of the layers
convert knows), converted in eval mode (fused) and train mode, compared with torch in float64: logits,
and the gradients of the input and of every parameter.

    python tests/random_convnets.py [--models 200] [--seed 0]    # the campaign, one line per failure

tests/test_convert_random.py runs a seeded slice of it in CI."""
import argparse
import random
import sys

import torch
import torchvision

import fastconv
from fastconv.bench import randomize_bn

RN = torchvision.models.resnet
ACTS = [lambda: torch.nn.ReLU(), lambda: torch.nn.ReLU(inplace=True), torch.nn.ReLU6, lambda: torch.nn.LeakyReLU(0.1),
        torch.nn.SiLU, torch.nn.GELU, torch.nn.Hardswish, torch.nn.Tanh, torch.nn.Identity]
PADDING_MODES = ["zeros", "reflect", "replicate", "circular"]
TIMM = ["resnet10t", "resnet18d", "resnet26t", "seresnext26d_32x4d", "resnetv2_50", "regnetx_002", "regnety_002",
        "efficientnet_b0", "mobilenetv3_small_050", "ghostnet_050", "dla34", "densenet121", "cspresnet50",
        "darknet17", "mixnet_s", "rexnet_100", "selecsls42b", "dpn48b", "skresnet18", "res2net50_14w_8s",
        "ese_vovnet19b_slim_dw", "lcnet_050", "tinynet_e", "fbnetc_100", "semnasnet_050", "gernet_s", "repvgg_a0",
        "resnest14d", "nf_resnet26", "cs3darknet_focus_s"]


class StdConv2d(torch.nn.Conv2d):
    """Weight-standardized convolution (timm's StdConv2d): a Conv2d subclass with its own forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return torch.nn.functional.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BNAct(torch.nn.BatchNorm2d):
    """BatchNorm2d followed by an activation in one module (timm's BatchNormAct2d)."""

    def __init__(self, c, act):
        super().__init__(c)
        self.act = act

    def forward(self, x):
        return self.act(super().forward(x))


def _randomize(model, rng):
    """Non-trivial BatchNorm statistics and affine parameters."""
    return randomize_bn(model, rng.randrange(1 << 30))


def _tv_resnet(rng):
    block = rng.choice([RN.BasicBlock, RN.Bottleneck])
    kw = {}
    if block is RN.Bottleneck:
        kw = dict(groups=rng.choice([1, 2, 4]), width_per_group=rng.choice([16, 32, 64]),
                  replace_stride_with_dilation=[rng.random() < 0.3 for _ in range(3)])
    m = RN.ResNet(block, [rng.randint(1, 2) for _ in range(4)], num_classes=5,
                  zero_init_residual=rng.random() < 0.2, **kw)
    for mod in list(m.modules()):  # other activations in some blocks and the stem
        if hasattr(mod, "relu") and rng.random() < 0.3:
            mod.relu = rng.choice(ACTS)()
    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size != (1, 1) and rng.random() < 0.15:
            mod.padding_mode = rng.choice(PADDING_MODES[1:])
            mod._reversed_padding_repeated_twice = [p for p in reversed(mod.padding) for _ in range(2)]
    return m, 32


def _tv_other(rng):
    name = rng.choice(["mobilenet_v2", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5", "googlenet",
                       "mnasnet0_5", "regnet_x_400mf", "efficientnet_b0"])
    kw = dict(num_classes=5)
    if name == "googlenet":
        kw.update(aux_logits=False, init_weights=False)
    if name == "mobilenet_v2":
        kw.update(width_mult=rng.choice([0.25, 0.5]))
    return getattr(torchvision.models, name)(weights=None, **kw), 64 if name == "squeezenet1_1" else 40


def _timm(rng):
    import timm
    return timm.create_model(rng.choice(TIMM), pretrained=False, num_classes=5), 40


def _conv(rng, cin, size):
    k = rng.choice([1, 2, 3, 3, 5])
    cout = rng.choice([4, 6, 8, 12, 16])
    divisors = [g for g in (1, 2, 3, 4, 6, 8, 12, 16) if cin % g == 0 and cout % g == 0]
    groups = cin if rng.random() < 0.15 and cout % cin == 0 else rng.choice(divisors)
    dil = rng.choice([1, 1, 2])
    stride = rng.choice([1, 1, 2]) if size >= 8 else 1
    ext = dil * (k - 1)
    pad = rng.choice([0, ext // 2, "same"] if stride == 1 else [0, ext // 2])
    mode = rng.choice(PADDING_MODES) if pad != 0 else "zeros"
    if mode != "zeros" and (pad == "same" or pad >= size):
        mode = "zeros"
    cls = StdConv2d if rng.random() < 0.1 else torch.nn.Conv2d
    conv = cls(cin, cout, k, stride, pad, dil, groups, bias=rng.random() < 0.5, padding_mode=mode)
    p = ext // 2 if pad == "same" else pad
    out = (size + (ext if pad == "same" else 2 * p) - ext - 1) // stride + 1
    return conv, cout, out


def _sequential(rng):
    """A chain of random layers (the shapes tracked so that every one is valid)."""
    layers, c, size = [], 3, rng.choice([16, 24, 33])
    in_size = size
    for _ in range(rng.randint(3, 12)):
        kind = rng.choices(["conv", "bn", "act", "pool", "block", "bnact"], [6, 3, 3, 2, 2, 1])[0]
        if kind == "conv" or (kind == "bn" and not layers):
            conv, c2, s2 = _conv(rng, c, size)
            if s2 < 2:
                continue
            layers.append(conv)
            c, size = c2, s2
        elif kind == "bn":
            layers.append(torch.nn.BatchNorm2d(c, affine=rng.random() < 0.8, track_running_stats=rng.random() < 0.9))
        elif kind == "bnact":
            layers.append(BNAct(c, rng.choice(ACTS)()))
        elif kind == "act":
            layers.append(rng.choice(ACTS)())
        elif kind == "pool" and size >= 6:
            k = rng.choice([2, 3])
            s = rng.choice([1, 2])
            p = rng.randint(0, k // 2)
            ceil = rng.random() < 0.3
            if rng.random() < 0.5:
                pool = torch.nn.MaxPool2d(k, s, p, dilation=rng.choice([1, 2]) if k == 2 else 1, ceil_mode=ceil)
            else:
                pool = torch.nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=rng.random() < 0.5,
                                          divisor_override=rng.choice([None, None, 3]))
            with torch.no_grad():
                size = pool(torch.zeros(1, 1, size, size)).shape[-1]
            layers.append(pool)
        elif kind == "block":
            conv, c2, s2 = _conv(rng, c, size)
            if s2 < 2:
                continue
            layers.append(torch.nn.Sequential(conv, torch.nn.BatchNorm2d(c2), rng.choice(ACTS)()))
            c, size = c2, s2
    out = rng.choice([1, 2, (2, 1)])
    layers += [torch.nn.AdaptiveAvgPool2d(out), torch.nn.Flatten(), torch.nn.LazyLinear(5)]
    return torch.nn.Sequential(*layers), in_size


GENERATORS = {"torchvision resnet": _tv_resnet, "torchvision": _tv_other, "timm": _timm, "sequential": _sequential}


def make(seed, kinds=None):
    """(description, float64 torch model with random BN state, input) for a seed; None for a draw that
    torch itself cannot run."""
    rng = random.Random(seed)
    kinds = kinds or list(GENERATORS)
    kind = rng.choice(kinds)
    torch.manual_seed(seed)
    model, size = GENERATORS[kind](rng)
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    model = model.double()
    try:
        with torch.no_grad():
            model.eval()(x)  # materializes LazyLinear
    except RuntimeError:  # a draw torch itself cannot run (reflect padding wider than a late feature map)
        return None
    return f"{kind} {type(model).__name__} (seed {seed})", _randomize(model, rng), x


SKIP = "skip"


def check(seed, kinds=None, rel=1e-7):
    """None if the converted model agrees with torch in eval and train mode, SKIP for a draw torch
    cannot run (forward or backward), else what differed."""
    made = make(seed, kinds)
    if made is None:
        return SKIP
    name, ref, x = made
    for train in (False, True):
        ref.train(train)
        torch.manual_seed(seed)
        try:
            fast = fastconv.convert(ref)
        except Exception as e:  # noqa: BLE001 - any failure is a finding
            return f"{name}: convert raised {type(e).__name__}: {e}"
        if train:  # the same starting state: BN running statistics move in both
            fast.load_state_dict(ref.state_dict())
        out = []
        for m in (ref, fast):
            xi = x.clone().requires_grad_()
            try:
                torch.manual_seed(seed)
                y = m(xi)
                grads = torch.autograd.grad(y.square().sum(), [xi] + [p for p in m.parameters()], allow_unused=True)
            except Exception as e:  # noqa: BLE001
                if m is ref:  # e.g. an in-place ReLU after an op that saves its output
                    return SKIP
                return f"{name} train={train}: fastconv raised {type(e).__name__}: {e}"
            out.append([y.detach()] + list(grads))
        for i, (a, b) in enumerate(zip(*out)):
            if (a is None) != (b is None):
                return f"{name} train={train}: gradient {i} missing on one side"
            if a is None:
                continue
            scale = max(1.0, a.abs().max().item())
            err = (a - b).abs().max().item() if a.numel() else 0.0
            if not err <= rel * scale:
                what = "logits" if i == 0 else "input gradient" if i == 1 else f"gradient of parameter {i - 2}"
                return f"{name} train={train}: {what} differs by {err:.3g} (scale {scale:.3g})"
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    failures = skipped = 0
    for seed in range(a.seed, a.seed + a.models):
        msg = check(seed)
        if msg == SKIP:
            skipped += 1
        elif msg:
            failures += 1
            print("FAIL", msg[:300], flush=True)
    print(f"{a.models - skipped} models tried ({skipped} draws that torch cannot run skipped), {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
