"""`python -m fastconv bench`: fastconv against torch on the ResNet-50 / AlexNet layer suite and the
memory-bound ops, timed in the same run, interleaved. Prints: op, shape, fastconv ms, torch ms,
ratio (torch time / fastconv time; > 1 means fastconv is faster) and GFLOP/s or GB/s."""
import json
import statistics
import time

import torch
import torch.nn.functional as TF

import fastconv

# (name, N, C, H, K, R, stride, pad): ../shared/BASELINES.md layer suite; N is set per device.
LAYERS = [
    ("r50_conv1_7x7s2", 3, 224, 64, 7, 2, 3),
    ("r50_l1_3x3", 64, 56, 64, 3, 1, 1),
    ("r50_l1_1x1", 64, 56, 256, 1, 1, 0),
    ("r50_l2_3x3", 128, 28, 128, 3, 1, 1),
    ("r50_l3_3x3", 256, 14, 256, 3, 1, 1),
    ("r50_l4_3x3", 512, 7, 512, 3, 1, 1),
    ("r50_l3_1x1", 1024, 14, 256, 1, 1, 0),
    ("alex_conv1_11x11s4", 3, 224, 64, 11, 4, 2),
    ("alex_conv2_5x5", 64, 27, 192, 5, 1, 2),
    ("alex_conv3_3x3", 192, 13, 384, 3, 1, 1),
]
QUICK_LAYERS = ("r50_l1_3x3", "r50_l3_1x1", "alex_conv1_11x11s4")


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_pair(f_ours, f_peer, device, repeats, warmup=2, min_time=0.0):
    """Median seconds of each, interleaved so drift and neighbours hit both alike."""
    for _ in range(warmup):
        f_ours(), f_peer()
    _sync(device)
    ours, peer = [], []
    for _ in range(repeats):
        for f, acc in ((f_ours, ours), (f_peer, peer)):
            t0 = time.perf_counter()
            f()
            _sync(device)
            acc.append(time.perf_counter() - t0)
    return statistics.median(ours), statistics.median(peer)


def _row(op, shape, t_ours, t_peer, work, unit):
    return {"op": op, "shape": shape, "fastconv_ms": t_ours * 1e3, "torch_ms": t_peer * 1e3,
            "ratio": t_peer / t_ours, "rate": work / t_ours / 1e9, "unit": unit}


def conv_rows(device, dtype, batch, layers, layout, repeats, backward=False):
    rows = []
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    for name, c, h, k, r, s, p in layers:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, c, h, h, generator=g).to(device, dtype).contiguous(memory_format=fmt)
        w = (torch.randn(k, c, r, r, generator=g) / (c * r * r) ** 0.5).to(device, dtype).contiguous(memory_format=fmt)
        out = (h + 2 * p - r) // s + 1
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


def memory_rows(device, dtype, quick, repeats):
    n = 8 if device == "cpu" else 128
    esize = torch.empty((), dtype=dtype).element_size()
    rows = []
    g = torch.Generator().manual_seed(1)

    def rnd(*shape, cl=True):
        t = torch.randn(*shape, generator=g).to(device, dtype)
        return t.contiguous(memory_format=torch.channels_last) if cl and t.dim() == 4 else t

    x = rnd(n, 64, 112, 112)
    out = x.shape[0] * 64 * 56 * 56
    t_o, t_p = time_pair(lambda: fastconv.max_pool2d(x, 3, 2, 1), lambda: TF.max_pool2d(x, 3, 2, 1), device, repeats)
    rows.append(_row("max_pool2d(3,2,1)[nhwc]", tuple(x.shape), t_o, t_p, (x.numel() + out) * esize, "GB/s"))
    xn = x.contiguous()
    t_o, t_p = time_pair(lambda: fastconv.max_pool2d(xn, 3, 2, 1), lambda: TF.max_pool2d(xn, 3, 2, 1), device, repeats)
    rows.append(_row("max_pool2d(3,2,1)[nchw]", tuple(x.shape), t_o, t_p, (x.numel() + out) * esize, "GB/s"))
    a, b = rnd(n, 256, 56, 56), rnd(n, 256, 56, 56)
    t_o, t_p = time_pair(lambda: fastconv.relu(a), lambda: TF.relu(a), device, repeats)
    rows.append(_row("relu", tuple(a.shape), t_o, t_p, 2 * a.numel() * esize, "GB/s"))
    t_o, t_p = time_pair(lambda: fastconv.sort(a, b), lambda: a + b + torch.sqrt(TF.relu(a) * TF.relu(b) + 0.01),
                         device, repeats)
    rows.append(_row("sort(sqrt)", tuple(a.shape), t_o, t_p, 3 * a.numel() * esize, "GB/s"))
    if not quick:
        y = rnd(n, 256, 28, 28)
        t_o, t_p = time_pair(lambda: fastconv.avg_pool2d(y, 3, 1, 1), lambda: TF.avg_pool2d(y, 3, 1, 1), device, repeats)
        rows.append(_row("avg_pool2d(3,1,1)[nhwc]", tuple(y.shape), t_o, t_p, 2 * y.numel() * esize, "GB/s"))
        z = rnd(n, 2048, 7, 7)
        t_o, t_p = time_pair(lambda: fastconv.adaptive_avg_pool2d(z, 1), lambda: TF.adaptive_avg_pool2d(z, 1),
                             device, repeats)
        rows.append(_row("adaptive_avg_pool2d(1)[nhwc]", tuple(z.shape), t_o, t_p, z.numel() * esize, "GB/s"))
    return rows


def format_table(rows):
    lines = [f"{'op':28s} {'shape':22s} {'fastconv ms':>11s} {'torch ms':>9s} {'ratio':>6s} {'rate':>14s}"]
    for r in rows:
        shape = r["shape"] if isinstance(r["shape"], str) else "x".join(map(str, r["shape"]))
        lines.append(f"{r['op']:28s} {shape:22s} {r['fastconv_ms']:11.3f} {r['torch_ms']:9.3f} "
                     f"{r['ratio']:6.2f} {r['rate']:8.1f} {r['unit']}")
    return "\n".join(lines)


def geomean(xs):
    xs = list(xs)
    return float(torch.tensor(xs, dtype=torch.float64).log().mean().exp()) if xs else float("nan")


def main(args):
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("fastconv bench: --device cuda asked for but torch sees no CUDA device")
    dtype = torch.float32 if device == "cpu" else torch.float16
    batch = 8 if device == "cpu" else 128
    quick = args.quick
    layers = [l for l in LAYERS if not quick or l[0] in QUICK_LAYERS]
    repeats = 5 if quick else 10
    ops = set(args.ops.split(",")) if args.ops else {"conv", "conv_bwd", "memory"}
    if device == "cpu":
        torch.set_num_threads(torch.get_num_threads())
    info = fastconv.info()
    print(f"fastconv {info.get('version')} isa={info.get('isa')} threads={info.get('omp_threads')} "
          f"torch {torch.__version__} device={device} dtype={str(dtype).replace('torch.', '')} batch={batch}")
    rows = []
    if "conv" in ops:
        for layout in ("nchw", "nhwc"):
            rows += conv_rows(device, dtype, batch, layers, layout, repeats)
    if "conv_bwd" in ops and not quick:
        rows += conv_rows(device, dtype, batch, layers, "nchw", max(3, repeats // 2), backward=True)
    if "memory" in ops:
        rows += memory_rows(device, dtype, quick, repeats)
    print(format_table(rows))
    for prefix in ("conv2d_fwd[nchw]", "conv2d_fwd[nhwc]", "conv2d_fwd+bwd[nchw]"):
        sel = [r["ratio"] for r in rows if r["op"] == prefix]
        if sel:
            print(f"geomean ratio {prefix}: {geomean(sel):.2f}x over {len(sel)} layers (min {min(sel):.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "torch": torch.__version__, "device": device, "rows": rows}, f, indent=1)
    return 0
