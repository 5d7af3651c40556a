"""`python -m fastconv bench`: fastconv against torch on the ResNet-50 / AlexNet layer suite and the
memory-bound ops, timed in the same run, interleaved. Prints: op, shape, fastconv ms, torch ms,
ratio (torch time / fastconv time; > 1 means fastconv is faster) and GFLOP/s or GB/s."""
import json
import sys
import time

import torch
import torch.nn.functional as TF

import fastconv
from fastconv import _args as A
from fastconv import peers
from fastconv.timing import Timed, interleaved, table

# The layer suite, defined once for every benchmark (fastconv bench, benchmarks/conv2d_cpu.py,
# benchmarks/gpu_bench.py): name -> (C, H, K, R, stride, pad, groups), square images and kernels; the
# ResNet-50 / AlexNet layers of benchmarks/BASELINES.md and MobileNetV2's depthwise layers. N is set
# per device.
LAYER_SUITE = {
    "r50_conv1": (3, 224, 64, 7, 2, 3, 1),
    "r50_l1_3x3": (64, 56, 64, 3, 1, 1, 1),
    "r50_l1_1x1": (64, 56, 256, 1, 1, 0, 1),
    "r50_l2_3x3": (128, 28, 128, 3, 1, 1, 1),
    "r50_l3_3x3": (256, 14, 256, 3, 1, 1, 1),
    "r50_l4_3x3": (512, 7, 512, 3, 1, 1, 1),
    "r50_l3_1x1": (1024, 14, 256, 1, 1, 0, 1),
    "alex_conv1": (3, 224, 64, 11, 4, 2, 1),
    "alex_conv2": (64, 27, 192, 5, 1, 2, 1),
    "alex_conv3": (192, 13, 384, 3, 1, 1, 1),
    "mb2_dw_112": (32, 112, 32, 3, 1, 1, 32),
    "mb2_dw_56s2": (144, 56, 144, 3, 2, 1, 144),
    "mb2_dw_7": (960, 7, 960, 3, 1, 1, 960),
}
# (name, C, H, K, R, stride, pad) of the dense layers, which `fastconv bench` times
LAYERS = [(name,) + v[:6] for name, v in LAYER_SUITE.items() if v[6] == 1]
QUICK_LAYERS = ("r50_l1_3x3", "r50_l3_1x1", "alex_conv1")


def time_pair(f_ours, f_peer, device, repeats, warmup=2, scrub=False):
    """(ours, peer) as Timed, interleaved (fastconv.timing's loop; scrub: caches reset between calls,
    for memory-bound ops)."""
    return interleaved([f_ours, f_peer], device, repeats, warmup, scrub=scrub)


def _row(op, shape, t_ours, t_peer, work, unit):
    row = {"op": op, "shape": shape, "fastconv_ms": t_ours * 1e3, "torch_ms": t_peer * 1e3,
           "ratio": t_peer / t_ours, "rate": work / t_ours / 1e9, "unit": unit}
    for key, t in (("fastconv_ms_quartiles", t_ours), ("torch_ms_quartiles", t_peer)):
        if isinstance(t, Timed):
            row[key] = t.quartiles_ms()
    return row


def machine_info(device):
    """The machine, versions and fastconv build a result was measured on."""
    import os
    import platform
    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "logical cores": os.cpu_count(), "torch threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import torchvision
        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    try:
        fi = fastconv.info()
        info.update({"fastconv": fi.get("version"), "fastconv isa": fi.get("isa"),
                     "fastconv omp threads": fi.get("omp_threads"), "fastconv cuda built": fi.get("cuda_built")})
    except RuntimeError as exc:
        info["fastconv"] = f"unavailable: {exc}"
    return info


def randomize_bn(model, seed=0):
    """Give every BatchNorm of `model` non-trivial running statistics and affine parameters (in
    place; returns the model), so that folding BN into a convolution is really exercised: the
    benchmarks, the demo and the tests use it on freshly built nets (weights=None)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.8 + 0.4)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c, generator=g) * 0.8 + 0.6)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model


def write_results(path, device, **payload):
    """Write a benchmark's results as JSON with what they were measured on: the time, the command
    line and machine_info(device) (CPU, threads, versions, fastconv build), then the payload."""
    with open(path, "w") as f:
        json.dump({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:],
                   "machine": machine_info(device), **payload}, f, indent=1, default=str)


def conv_rows(device, dtype, batch, layers, layout, repeats, backward=False):
    rows = []
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    for name, c, h, k, r, s, p in layers:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, c, h, h, generator=g).to(device, dtype).contiguous(memory_format=fmt)
        w = (torch.randn(k, c, r, r, generator=g) / (c * r * r) ** 0.5).to(device, dtype).contiguous(memory_format=fmt)
        out = A.conv_out_size(h, p, p, 1, r, s)
        flops = 2.0 * batch * k * out * out * c * r * r
        if not backward:
            t_o, t_p = time_pair(lambda: fastconv.conv2d(x, w, None, s, p), lambda: TF.conv2d(x, w, None, s, p),
                                 device, repeats)
            rows.append(_row(f"conv2d_fwd[{layout}]", name, t_o, t_p, flops, "GFLOP/s"))
        else:
            xo, wo = x.clone().requires_grad_(), w.clone().requires_grad_()
            xp, wp = x.clone().requires_grad_(), w.clone().requires_grad_()
            go = torch.randn(batch, k, out, out, generator=g).to(device, dtype).contiguous(memory_format=fmt)

            def bwd(fn, xi, wi):
                return lambda: torch.autograd.grad(fn(xi, wi, None, s, p), (xi, wi), go)
            t_o, t_p = time_pair(bwd(fastconv.conv2d, xo, wo), bwd(TF.conv2d, xp, wp), device, repeats)
            rows.append(_row(f"conv2d_fwd+bwd[{layout}]", name, t_o, t_p, 3 * flops, "GFLOP/s"))
    return rows


def compiled_peer(fn):
    """torch.compile(fn), compiled by a first call (the fair peer of a memory-bound op or an elementwise
    chain, which eager runs op by op); None (with one line saying why) where it cannot run."""
    try:
        c = torch.compile(fn)
        c()
        return c
    except Exception as exc:  # noqa: BLE001 - a missing compiler toolchain, an unsupported device
        print(f"  (no torch.compile peer: {type(exc).__name__}: {str(exc).splitlines()[0][:120]})", flush=True)
        return None


def memory_rows(device, dtype, quick, repeats, compile_peer=True):
    """Memory-bound ops against torch eager and, with compile_peer, against torch.compile of the same
    expression (the fair peer for elementwise chains such as SORT, which eager runs op by op)."""
    n = 8 if device == "cpu" else 128
    esize = torch.empty((), dtype=dtype).element_size()
    rows = []
    g = torch.Generator().manual_seed(1)

    def rnd(*shape, cl=True):
        t = torch.randn(*shape, generator=g).to(device, dtype)
        return t.contiguous(memory_format=torch.channels_last) if cl and t.dim() == 4 else t

    def add(op, shape, ours, peer, nbytes):
        t_o, t_p = time_pair(ours, peer, device, repeats, scrub=True)
        row = _row(op, shape, t_o, t_p, nbytes, "GB/s")
        compiled = compiled_peer(peer) if compile_peer else None
        if compiled is not None:
            t_o2, t_c = time_pair(ours, compiled, device, repeats, scrub=True)
            row.update(compile_ms=t_c * 1e3, ratio_compile=t_c / t_o2)
        rows.append(row)

    x = rnd(n, 64, 112, 112)
    out = x.shape[0] * 64 * 56 * 56
    add("max_pool2d(3,2,1)[nhwc]", tuple(x.shape), lambda: fastconv.max_pool2d(x, 3, 2, 1),
        lambda: TF.max_pool2d(x, 3, 2, 1), (x.numel() + out) * esize)
    xn = x.contiguous()
    add("max_pool2d(3,2,1)[nchw]", tuple(x.shape), lambda: fastconv.max_pool2d(xn, 3, 2, 1),
        lambda: TF.max_pool2d(xn, 3, 2, 1), (x.numel() + out) * esize)
    a, b = rnd(n, 256, 56, 56), rnd(n, 256, 56, 56)
    add("relu", tuple(a.shape), lambda: fastconv.relu(a), lambda: TF.relu(a), 2 * a.numel() * esize)
    add("sort(sqrt)", tuple(a.shape), lambda: fastconv.sort(a, b),
        lambda: a + b + torch.sqrt(TF.relu(a) * TF.relu(b) + 0.01), 3 * a.numel() * esize)
    if not quick:
        y = rnd(n, 256, 28, 28)
        add("avg_pool2d(3,1,1)[nhwc]", tuple(y.shape), lambda: fastconv.avg_pool2d(y, 3, 1, 1),
            lambda: TF.avg_pool2d(y, 3, 1, 1), 2 * y.numel() * esize)
        z = rnd(n, 2048, 7, 7)
        add("adaptive_avg_pool2d(1)[nhwc]", tuple(z.shape), lambda: fastconv.adaptive_avg_pool2d(z, 1),
            lambda: TF.adaptive_avg_pool2d(z, 1), z.numel() * esize)
    return rows


def block_rows(device, dtype, batch, repeats):
    """A SORT-ResNet-50 bottleneck (layer1: 256 -> 64 -> 256 channels, 56x56) for inference: fastconv's
    fused block (three conv2d_fused calls, BN folded, SORT + ReLU in the last epilogue) against the
    same block in torch eager ops (conv -> bn -> relu ..., conv -> bn -> sort -> relu); and its last
    convolution alone, conv2d_fused(combine='sort', relu=True) against conv -> bn -> sort -> relu."""
    from fastconv import nn as fnn
    torch.manual_seed(0)
    blk = randomize_bn(fnn.SORTBottleneck(256, 64)).to(device, dtype).eval()
    fused = fastconv.fuse(blk, inplace=False)
    eps = blk.eps
    x = torch.randn(batch, 256, 56, 56, device=device, dtype=dtype)

    def sort_relu(r, z):
        return TF.relu(r + z + torch.sqrt(TF.relu(r) * TF.relu(z) + eps))

    def eager_mid(x):  # the first two convolutions
        out = TF.relu(blk.bn1(TF.conv2d(x, blk.conv1.weight)))
        return TF.relu(blk.bn2(TF.conv2d(out, blk.conv2.weight, None, 1, 1)))

    def eager_block(x):
        return sort_relu(x, blk.bn3(TF.conv2d(eager_mid(x), blk.conv3.weight)))

    rows = []
    flops = 2.0 * batch * 56 * 56 * (256 * 64 + 64 * 64 * 9 + 64 * 256)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), eager_block(x), rtol=1e-3, atol=1e-3)
        t_o, t_p = time_pair(lambda: fused(x), lambda: eager_block(x), device, repeats)
        rows.append(_row("sort_bottleneck[fused]", f"{batch}x256x56x56", t_o, t_p, flops, "GFLOP/s"))
        mid = eager_mid(x)
        from fastconv.nn import bn_scale_shift
        scale, shift = bn_scale_shift(blk.bn3)
        w3 = fused.conv3.weight

        def ours():
            return fastconv.conv2d_fused(mid, w3, scale=scale, shift=shift, residual=x, combine="sort", relu=True)

        def peer():
            return sort_relu(x, blk.bn3(TF.conv2d(mid, blk.conv3.weight)))
        torch.testing.assert_close(ours(), peer(), rtol=1e-3, atol=1e-3)
        t_o, t_p = time_pair(ours, peer, device, repeats)
        rows.append(_row("conv1x1+bn+sort+relu", f"{batch}x64x56x56->256", t_o, t_p,
                         2.0 * batch * 56 * 56 * 64 * 256, "GFLOP/s"))
    return rows


def resnet_1x1_layers(name="resnet50", size=112):
    """The distinct 1x1 convolutions of a torchvision ResNet at size x size px, in order of first use:
    [(C, H, K, stride, count)] with the input's channels and side, read from the model itself."""
    import torchvision
    seen = {}
    model = getattr(torchvision.models, name)(weights=None)

    def hook(mod, inp, out):
        if mod.kernel_size == (1, 1):
            key = (mod.in_channels, inp[0].shape[-1], mod.out_channels, mod.stride[0])
            seen[key] = seen.get(key, 0) + 1
    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return [k + (n,) for k, n in seen.items()]


def pointwise_rows(batches, repeats):
    """Every 1x1 layer of ResNet-50 at 112 px, channels_last, forward + both gradients: fastconv's
    conv2d_fwd, conv2d_bwd_input and conv2d_bwd_weight against torch's convolution and its joint
    input + weight convolution_backward (oneDNN), the five calls interleaved in one loop; medians
    summed per side. ratio = torch / fastconv."""
    F, aten, cl = torch.ops.fastconv, torch.ops.aten, torch.channels_last
    rows = []
    for n in batches:
        for c, h, k, s, count in resnet_1x1_layers():
            g = torch.Generator().manual_seed(0)
            p = (h - 1) // s + 1
            x = torch.randn(n, c, h, h, generator=g).contiguous(memory_format=cl)
            w = (torch.randn(k, c, 1, 1, generator=g) / c ** 0.5).contiguous(memory_format=cl)
            dy = torch.randn(n, k, p, p, generator=g).contiguous(memory_format=cl)
            st, z4 = [s, s], [0, 0, 0, 0]
            fns = {"fwd": lambda: F.conv2d_fwd(x, w, None, st, z4, [1, 1], 1),
                   "bwd_input": lambda: F.conv2d_bwd_input(dy, w, list(x.shape), st, z4, [1, 1], 1),
                   "bwd_weight": lambda: F.conv2d_bwd_weight(dy, x, list(w.shape), st, z4, [1, 1], 1),
                   "torch_fwd": lambda: TF.conv2d(x, w, None, s),
                   "torch_bwd": lambda: aten.convolution_backward(dy, x, w, None, st, [0, 0], [1, 1], False, [0, 0],
                                                                  1, [True, True, False])}
            t = interleaved(fns, "cpu", repeats, 2)
            ours, peer = t["fwd"] + t["bwd_input"] + t["bwd_weight"], t["torch_fwd"] + t["torch_bwd"]
            row = _row("conv1x1 fwd+bwd[nhwc]", f"b{n} {c}x{h}x{h}->{k} s{s} (x{count})", ours, peer,
                       3 * 2.0 * n * p * p * c * k, "GFLOP/s")
            row["parts_ms"] = {key: v * 1e3 for key, v in t.items()}
            rows.append(row)
    return rows


GROUPS = ("conv", "conv_bwd", "memory", "block", "models", "train", "peers", "pointwise")  # --ops; default: the first four
MODEL_FLOPS = {"resnet18": 1.82e9, "resnet50": 4.11e9}  # multiply-adds x 2 per 224x224 image


def model_rows(device, dtype, batches, repeats):
    """torchvision ResNet-18/50 inference at 224x224: fastconv.convert (fused; NCHW, and with
    channels_last=True) against torch eager as users run it (NCHW) and torch eager channels_last,
    interleaved; logits checked against eager."""
    import torchvision
    rows = []
    for name in ("resnet18", "resnet50"):
        torch.manual_seed(0)
        ref = getattr(torchvision.models, name)(weights=None).to(device, dtype).eval()
        ref_cl = getattr(torchvision.models, name)(weights=None).to(device, dtype).eval()
        ref_cl.load_state_dict(ref.state_dict())
        ref_cl.to(memory_format=torch.channels_last)
        ours = {"nchw": fastconv.convert(ref), "channels_last": fastconv.convert(ref, channels_last=True)}
        for batch in batches:
            x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
            with torch.inference_mode():
                want = ref(x)
                for layout, m in ours.items():
                    torch.testing.assert_close(m(x), want, rtol=1e-3, atol=1e-3 * max(1.0, want.abs().max().item()))
                eager_peers = {"torch eager": lambda: ref(x), "torch eager channels_last": lambda: ref_cl(x)}
                for layout, m in ours.items():
                    for peer_name, peer in eager_peers.items():
                        if layout == "nchw" and peer_name != "torch eager":
                            continue
                        t_o, t_p = time_pair(lambda: m(x), peer, device, repeats, warmup=1)
                        row = _row(f"{name}[{layout}] vs {peer_name}", f"{batch}x3x224x224", t_o, t_p,
                                   MODEL_FLOPS[name] * batch, "GFLOP/s")
                        rows.append(row)
    # SORT's cost on fastconv: SORT-ResNet-50 against ResNet-50, both fastconv models fused
    # (channels_last); the ratio is plain time / SORT time (the paper claims < 5% extra).
    from fastconv import models
    nets = {s: fastconv.convert(models.resnet50(sort=s).to(device, dtype).eval(), channels_last=True)
            for s in (False, True)}
    for batch in batches:
        x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
        with torch.inference_mode():
            t_o, t_p = time_pair(lambda: nets[True](x), lambda: nets[False](x), device, repeats, warmup=1)
        rows.append(_row("sort_resnet50 vs resnet50 (both fastconv)", f"{batch}x3x224x224", t_o, t_p,
                         MODEL_FLOPS["resnet50"] * batch, "GFLOP/s"))
    return rows


TRAIN_PEERS = ("torch eager", "torch eager channels_last", "torch.compile")


def _train_setup(name, batch, impl, image=112, classes=100, seed=0):
    """(step function, first-step loss) of a training step (forward, cross-entropy, backward, SGD with
    momentum) of torchvision `name` in train mode, run as `impl`: fastconv (convert, channels_last)
    or one of TRAIN_PEERS; the same weights and data for every impl."""
    import copy

    import torchvision
    torch.manual_seed(seed)
    ref = getattr(torchvision.models, name)(num_classes=classes).train()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 3, image, image, generator=g)
    target = torch.randint(0, classes, (batch,), generator=g)
    model = copy.deepcopy(ref)
    if impl == "fastconv":
        model = fastconv.convert(model, channels_last=True)
    elif impl != "torch eager":
        model = model.to(memory_format=torch.channels_last)
    run = torch.compile(model) if impl == "torch.compile" else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = TF.cross_entropy(run(x), target)
        loss.backward()
        opt.step()
        return loss
    return step, float(step().detach())


def _peak_mb(code):
    """Peak resident memory (MB) of a fresh python running `code` (which has `from fastconv import
    bench` done) and then nothing else; None if it failed. VmHWM, not getrusage's ru_maxrss: Linux
    carries ru_maxrss over fork and exec from the parent."""
    import subprocess
    code = ("from fastconv import bench; " + code + "; "
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _peak_rss_mb(name, batch, impl):
    """Peak resident memory (MB) of a fresh process that builds the model and runs three training
    steps as `impl` (the same libraries loaded for every impl, so the peaks compare)."""
    return _peak_mb(f"step, _ = bench._train_setup({name!r}, {batch}, {impl!r}); step(); step()")


def train_rows(batches, repeats, compile_peer=True, memory=True, models=("resnet18", "resnet50")):
    """Training steps of torchvision ResNet-18/50 (112 px, 100 classes, SGD with momentum) on the CPU:
    fastconv (convert, channels_last) against torch eager NCHW, eager channels_last and torch.compile,
    interleaved in one process; the first step's loss checked against torch eager's; the peak
    resident memory of each in a fresh process."""
    rows = []
    train_peers = [p for p in TRAIN_PEERS if compile_peer or p != "torch.compile"]
    for name in models:
        for batch in batches:
            steps, losses = {}, {}
            for impl in ("fastconv", *train_peers):
                try:
                    steps[impl], losses[impl] = _train_setup(name, batch, impl)
                except Exception as exc:  # noqa: BLE001 - a compiler toolchain missing for torch.compile
                    print(f"  ({impl} skipped: {peers.reason(exc)})", flush=True)
            ref = losses["torch eager"]
            if abs(losses["fastconv"] - ref) > 1e-3 * max(1.0, abs(ref)):
                raise AssertionError(f"fastconv bench: {name} first-step loss {losses['fastconv']} != torch's {ref}")
            times = interleaved(steps, "cpu", repeats, warmup=1)
            fastest = min(float(times[p]) for p in times if p != "fastconv")
            row = {"op": f"train {name}", "shape": f"{batch}x3x112x112", "fastconv_ms": times["fastconv"] * 1e3,
                   "torch_ms": times["torch eager"] * 1e3, "ratio": float(times["torch eager"] / times["fastconv"]),
                   "rate": batch / float(times["fastconv"]), "unit": "img/s",
                   "peer_ms": {p: float(times[p]) * 1e3 for p in times if p != "fastconv"},
                   "ratio_fastest": fastest / float(times["fastconv"]), "loss": losses}
            for impl in times:
                row.setdefault("quartiles_ms", {})[impl] = times[impl].quartiles_ms()
            if memory:
                row["peak_rss_mb"] = {impl: _peak_rss_mb(name, batch, impl) for impl in times}
            rows.append(row)
            print(f"  train {name} b{batch}: fastconv {row['fastconv_ms']:.0f} ms, " +
                  ", ".join(f"{p} {v:.0f}" for p, v in row["peer_ms"].items()) +
                  f"; vs fastest {row['ratio_fastest']:.2f}x", file=sys.stderr, flush=True)
    return rows


def format_train_table(rows, markdown=False):
    """The training group: ms per step of fastconv and each peer, fastest peer / fastconv, peak RSS
    (where measured); markdown=True for the demo's report."""
    names = list(dict.fromkeys(p for r in rows for p in r["peer_ms"]))
    cols = [("model", "op", ""), ("batch", "shape", ""), ("fastconv ms", "fastconv_ms", ".0f")]
    cols += [(f"{p} ms", (lambda r, p=p: r["peer_ms"].get(p)), ".0f") for p in names]
    cols += [("vs fastest", "ratio_fastest", ".2f"),
             ("peak MB fastconv / eager cl", lambda r: (f"{r['peak_rss_mb'].get('fastconv'):.0f} / "
                                                         f"{r['peak_rss_mb'].get('torch eager channels_last'):.0f}")
              if r.get("peak_rss_mb") and r["peak_rss_mb"].get("fastconv") and
              r["peak_rss_mb"].get("torch eager channels_last") else None, "")]
    if not any(r.get("peak_rss_mb") for r in rows):
        cols = cols[:-1]
    return table(rows, cols, markdown=markdown)


PEER_MODELS = ("resnet18", "resnet50", "alexnet")
PEER_LOGIT_TOL = 1e-4  # fastconv's logits against torch eager's, relative to their largest magnitude


def inference_model(name, seed=0):
    """torchvision `name` (weights=None, seeded; BatchNorm statistics randomized) in eval mode: the
    same weights in every process that asks."""
    import torchvision
    torch.manual_seed(seed)
    return randomize_bn(getattr(torchvision.models, name)(weights=None), seed).eval()


def inference_runner(impl, model, x, onnx_path=None):
    """x -> logits of `model` run as `impl`: "fastconv" (convert, channels_last), "torch eager", or a
    fastconv.peers peer (the ONNX ones from `onnx_path` when given)."""
    if impl in peers.INFERENCE_PEERS:
        return peers.runner(impl, model, x, onnx_path=onnx_path)
    m = fastconv.convert(model, channels_last=True) if impl == "fastconv" else model

    def run(xx):
        with torch.inference_mode():
            return m(xx)
    return run


def _peer_peak_mb(name, batch, impl, image, onnx_path):
    """Peak RSS (MB) of a fresh process that builds `impl`'s runner for torchvision `name` (the ONNX
    peers load the file the parent exported, as a deployment would) and runs three batches."""
    return _peak_mb(f"import torch; m = bench.inference_model({name!r}); x = torch.randn({batch}, 3, {image}, {image}); "
                    f"run = bench.inference_runner({impl!r}, m, x, {onnx_path!r}); [run(x) for _ in range(3)]")


def peer_rows(batches, repeats, models=PEER_MODELS, image=224, memory=True, peers_wanted=None):
    """Whole-network CPU inference of torchvision `models` at 224x224, float32: fastconv (convert,
    channels_last) against ONNX Runtime, OpenVINO and torch.compile with freezing (fastconv.peers),
    interleaved in one process, each peer at the same thread count; every impl's logits compared
    with torch eager's (fastconv's must agree within PEER_LOGIT_TOL of their scale); the peak
    resident memory of each in a fresh process. Peers that cannot run here are skipped with a note
    (row["skipped"])."""
    import os
    import tempfile

    wanted = tuple(peers_wanted or peers.INFERENCE_PEERS)
    skipped = peers.missing(wanted)
    for p, why in skipped.items():
        print(f"  ({p} skipped: {why})", file=sys.stderr, flush=True)
    rows = []
    for name in models:
        model = inference_model(name)
        for batch in batches:
            x = torch.randn(batch, 3, image, image, generator=torch.Generator().manual_seed(batch))
            with tempfile.TemporaryDirectory(prefix="fastconv-bench-") as tmp:
                onnx_path = None
                if any(p in peers.ONNX_PEERS for p in wanted if p not in skipped):
                    try:
                        onnx_path = peers.export_onnx(model, x, os.path.join(tmp, f"{name}.onnx"))
                    except Exception:  # noqa: BLE001 - each ONNX peer then tries (and reports) its own export
                        onnx_path = None
                runs, build_s, failed = {}, {}, {}
                for impl in ("fastconv", "torch eager") + tuple(p for p in wanted if p not in skipped):
                    t0 = time.perf_counter()
                    try:
                        runs[impl] = inference_runner(impl, model, x, onnx_path)
                        runs[impl](x)  # the first call compiles (torch.compile) or plans
                    except Exception as exc:  # noqa: BLE001 - a peer that cannot take this model
                        if impl in ("fastconv", "torch eager"):
                            raise
                        failed[impl] = peers.reason(exc)
                        print(f"  ({impl} skipped for {name}: {failed[impl]})", file=sys.stderr, flush=True)
                        runs.pop(impl, None)
                        continue
                    build_s[impl] = time.perf_counter() - t0
                with torch.no_grad():
                    want = runs["torch eager"](x)
                    scale = max(float(want.abs().max()), 1e-30)
                    diff = {impl: float((run(x).float() - want).abs().max()) / scale for impl, run in runs.items()}
                if diff["fastconv"] > PEER_LOGIT_TOL:
                    raise AssertionError(f"fastconv bench: {name} b{batch} logits differ from torch eager's by "
                                         f"{diff['fastconv']:.2e} of their scale (> {PEER_LOGIT_TOL})")
                timed = {impl: run for impl, run in runs.items() if impl != "torch eager"}
                with torch.no_grad():
                    # settle: the peers' pools (OpenVINO's, ONNX Runtime's) can leave threads spinning
                    # after a call; each timed call starts with them idle
                    times = interleaved({impl: (lambda r=r: r(x)) for impl, r in timed.items()}, "cpu", repeats,
                                        warmup=1, settle=0.01)
                peer_ms = {p: float(times[p]) * 1e3 for p in times if p != "fastconv"}
                row = {"op": f"infer {name}", "shape": f"{batch}x3x{image}x{image}",
                       "fastconv_ms": float(times["fastconv"]) * 1e3, "peer_ms": peer_ms,
                       "ratio_fastest": min(peer_ms.values()) / (float(times["fastconv"]) * 1e3) if peer_ms else None,
                       "rel_diff": diff, "build_s": build_s, "skipped": {**skipped, **failed},
                       "quartiles_ms": {impl: times[impl].quartiles_ms() for impl in times}}
                if memory:
                    row["peak_rss_mb"] = {impl: _peer_peak_mb(name, batch, impl, image, onnx_path) for impl in times}
            rows.append(row)
            print(f"  infer {name} b{batch}: fastconv {row['fastconv_ms']:.1f} ms, " +
                  ", ".join(f"{p} {v:.1f}" for p, v in peer_ms.items()) +
                  (f"; vs fastest {row['ratio_fastest']:.2f}x" if peer_ms else ""), file=sys.stderr, flush=True)
    return rows


def format_peer_table(rows, markdown=False):
    """Inference against the peers: ms per batch of fastconv and each peer, fastest peer / fastconv,
    peak RSS per impl (where measured)."""
    impls = ["fastconv"] + list(dict.fromkeys(p for r in rows for p in r["peer_ms"]))
    cols = [("model", "op", ""), ("batch", "shape", ""), ("fastconv ms", "fastconv_ms", ".1f")]
    cols += [(f"{p} ms", (lambda r, p=p: r["peer_ms"].get(p)), ".1f") for p in impls[1:]]
    cols += [("vs fastest", "ratio_fastest", ".2f")]
    if any(r.get("peak_rss_mb") for r in rows):
        cols += [("peak MB " + " / ".join(impls),
                  lambda r: " / ".join(f"{r['peak_rss_mb'][i]:.0f}" if r.get("peak_rss_mb", {}).get(i) else "-"
                                       for i in impls), "")]
    return table(rows, cols, markdown=markdown)


def format_table(rows):
    """ratio = torch eager time / fastconv time (> 1: fastconv faster); "vs compile" the same against
    torch.compile of the eager expression, where measured."""
    def shape(r):
        return r["shape"] if isinstance(r["shape"], str) else "x".join(map(str, r["shape"]))
    return table(rows, [("op", "op", ""), ("shape", shape, ""), ("fastconv ms", "fastconv_ms", ".3f"),
                        ("torch ms", "torch_ms", ".3f"), ("ratio", "ratio", ".2f"), ("rate", "rate", ".1f"),
                        ("unit", "unit", ""), ("compile ms", "compile_ms", ".3f"),
                        ("vs compile", "ratio_compile", ".2f")])


def geomean(xs):
    xs = list(xs)
    return float(torch.tensor(xs, dtype=torch.float64).log().mean().exp()) if xs else float("nan")


def main(args):
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("fastconv bench: --device cuda asked for but torch sees no CUDA device")
    dtype = torch.float32 if device == "cpu" else torch.float16
    batch = args.batch or (8 if device == "cpu" else 128)
    quick = args.quick
    layers = [l for l in LAYERS if not quick or l[0] in QUICK_LAYERS]
    repeats = 5 if quick else 10
    ops = set(args.ops.split(",")) if args.ops else set(GROUPS) - {"models", "train", "peers", "pointwise"}
    unknown = ops - set(GROUPS)
    if unknown:
        print(f"fastconv bench: unknown --ops {', '.join(sorted(unknown))}; choose from {', '.join(GROUPS)}",
              file=sys.stderr)
        return 2
    if device == "cpu":
        torch.set_num_threads(torch.get_num_threads())
    info = fastconv.info()
    print(f"fastconv {info.get('version')} isa={info.get('isa')} threads={info.get('omp_threads')} "
          f"torch {torch.__version__} device={device} dtype={str(dtype).replace('torch.', '')} batch={batch}")
    rows = []

    def progress(group, what):
        print(f"[{group}] {what} ...", file=sys.stderr, flush=True)

    if "conv" in ops:
        progress("conv", f"{len(layers)} layers x 2 layouts, forward")
        for layout in ("nchw", "nhwc"):
            rows += conv_rows(device, dtype, batch, layers, layout, repeats)
    if "conv_bwd" in ops and not quick:
        progress("conv_bwd", f"{len(layers)} layers, forward + backward")
        rows += conv_rows(device, dtype, batch, layers, "nchw", max(3, repeats // 2), backward=True)
    if "memory" in ops:
        progress("memory", "pooling, relu, sort against eager and torch.compile")
        # ms-scale ops: more samples for a steady median
        rows += memory_rows(device, dtype, quick, 3 * repeats, compile_peer=not args.no_compile)
    if "block" in ops:
        progress("block", "the fused SORT bottleneck")
        rows += block_rows(device, dtype, batch, repeats)
    if "pointwise" in ops:
        if device != "cpu":
            print("fastconv bench: --ops pointwise runs on the CPU only", file=sys.stderr)
            return 2
        progress("pointwise", "ResNet-50's 1x1 layers, forward + both gradients, channels_last, batch 8 and 32")
        rows += pointwise_rows((8,) if quick else (8, 32), repeats)
    if "models" in ops:
        progress("models", "ResNet-18/50 end to end")
        rows += model_rows(device, dtype, sorted({1, batch}), max(3, repeats // 2))
    train = []
    if "train" in ops:
        if device != "cpu":
            print("fastconv bench: --ops train runs on the CPU only", file=sys.stderr)
            return 2
        progress("train", "ResNet-18/50 training steps at batch 8 and 32 (and peak memory, in fresh processes)")
        train = train_rows((8,) if quick else (8, 32), 3 if quick else 5, compile_peer=not args.no_compile,
                           memory=not quick, models=("resnet18",) if quick else ("resnet18", "resnet50"))
    peer = []
    if "peers" in ops:
        if device != "cpu":
            print("fastconv bench: --ops peers runs on the CPU only", file=sys.stderr)
            return 2
        models = tuple(args.models.split(",")) if getattr(args, "models", None) else PEER_MODELS
        progress("peers", f"{', '.join(models)} inference against ONNX Runtime, OpenVINO, torch.compile freezing")
        peer = peer_rows(sorted({1, batch}), 5 if quick else 10, models=models, memory=not quick)
    if rows:
        print(format_table(rows))
    if train:
        print(format_train_table(train))
        print(f"geomean vs the fastest peer (training): {geomean(r['ratio_fastest'] for r in train):.2f}x")
    if peer:
        print(format_peer_table(peer))
        ratios = [r["ratio_fastest"] for r in peer if r["ratio_fastest"]]
        if ratios:
            print(f"geomean vs the fastest peer (inference): {geomean(ratios):.2f}x over {len(ratios)} cases")
    rows += train + peer
    for prefix in ("conv2d_fwd[nchw]", "conv2d_fwd[nhwc]", "conv2d_fwd+bwd[nchw]", "conv1x1 fwd+bwd[nhwc]"):
        sel = [r["ratio"] for r in rows if r["op"] == prefix]
        if sel:
            print(f"geomean ratio {prefix}: {geomean(sel):.2f}x over {len(sel)} layers (min {min(sel):.2f}x)")
    if args.json:
        write_results(args.json, device, info=info, rows=rows)
    return 0
