"""GPU verification and benchmark of the fastconv CUDA operators against torch (cuDNN).

Run on a CUDA machine after building the extension (benchmarks/gpu_check.sh does both):
  python3 benchmarks/gpu_bench.py                 # verify, conv fwd, conv bwd, memory-bound ops
  python3 benchmarks/gpu_bench.py --smoke         # every op once on small shapes (compute-sanitizer)
  python3 benchmarks/gpu_bench.py --device cpu    # dry run of every code path at tiny sizes (CI, no GPU)
Environment:
  FASTCONV_BENCH_PARTS   comma list of verify,fwd,bwd,fused,mem (default all)
  FASTCONV_BENCH_LAYERS  comma list of layer names (default the benchmarks/BASELINES.md suite)
  FASTCONV_BENCH_DTYPES  comma list of fp16,bf16,fp32,tf32 (default fp16,bf16,fp32)
  FASTCONV_BENCH_BATCH   batch size (default 128; --device cpu 2)
  FASTCONV_BENCH_OUT     folder for bench.json (default $OUT or .)
  FASTCONV_BENCH_COMPILE 0: no torch.compile peer for the memory-bound ops (it compiles each, seconds apiece)
  FASTCONV_BENCH_BUDGET  seconds: past it, the remaining cases and layers are skipped (and said so),
                         so that an outer timeout never costs the table (default: none)
Timing: fastconv.timing (CUDA events around back-to-back calls after warm-up, median of the samples).
--device cpu runs the CPU kernels with the wall clock, few layers and cases, no TF32 / cuDNN /
allocator poisoning: its numbers mean nothing, it is there so that a Python error does not cost GPU time.
Correctness of every timed config is checked first against F.conv2d in higher precision.
The compact table is printed last.
"""
import argparse
import contextlib
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastconv  # noqa: E402
from fastconv import tolerance  # noqa: E402
from fastconv import _args as A  # noqa: E402
from fastconv.bench import LAYER_SUITE, compiled_peer, write_results  # noqa: E402
from fastconv.timing import table, time_one  # noqa: E402

ops = None  # torch.ops.fastconv, bound in main()
SKIPPED = []  # what the budget cut, named in the table
COMPILE = os.environ.get("FASTCONV_BENCH_COMPILE", "1") != "0"  # torch.compile peer of the memory-bound ops
DEADLINE = math.inf  # time.time() past which the remaining work is skipped (FASTCONV_BENCH_BUDGET)
WGMMA = False  # the build has the wgmma tensor-core forward (sm_90a) and the GPU runs it; set in main()
DEV = "cuda"  # --device, bound in main()
PEAK_TFLOPS = 778.0  # dense bf16/fp16 matmul measured on the H100 of benchmarks/BASELINES.md
COPY_GBS = 2930.0    # device-to-device copy (read + write) of benchmarks/BASELINES.md

# name: (C, H, K, R, stride, pad): the dense layers of the one layer suite (fastconv.bench.LAYER_SUITE)
LAYERS = {name: v[:6] for name, v in LAYER_SUITE.items() if v[6] == 1}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "tf32": torch.float32}
CPU_LAYERS = ["r50_l4_3x3", "alex_conv1"]  # --device cpu: a 3x3 and a strided large-kernel first layer


def env_list(name, default):
    v = os.environ.get(name, "").strip()
    return [s.strip() for s in v.split(",") if s.strip()] if v else list(default)


def set_tf32(on):
    if DEV != "cuda":  # TF32 is a CUDA math mode
        return
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def cudnn_benchmark():
    if DEV == "cuda":
        torch.backends.cudnn.benchmark = True


def out_of_time(what):
    """True (and says what is skipped) once FASTCONV_BENCH_BUDGET has run out."""
    if time.time() < DEADLINE:
        return False
    print(f"  budget spent: skipping {what}", flush=True)
    SKIPPED.append(what)
    return True


@contextlib.contextmanager
def wmma_engine():
    """The tensor-core kernels' WMMA engine for the calls inside (FASTCONV_WGMMA is read at every call)."""
    os.environ["FASTCONV_WGMMA"] = "0"
    try:
        yield
    finally:
        os.environ.pop("FASTCONV_WGMMA")


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def bench(fn, warmup=3, samples=15, budget_s=1.5):
    """(median ms per call, (max - min) / median) of fn: fastconv.timing's loop, CUDA events around
    enough calls for ~1 ms per sample, no new sample after budget_s."""
    if DEV != "cuda":  # dry run: single calls, few samples (the numbers mean nothing)
        warmup, samples = min(warmup, 1), min(samples, 3)
    t = time_one(fn, DEV, repeats=samples, warmup=warmup, number="auto", deadline=time.time() + budget_s)
    return t * 1e3, (t.samples[-1] - t.samples[0]) / max(float(t), 1e-12)


def tol_key(dtype, tf32):
    """fastconv.tolerance's key for a computation: "tf32" for float32 on TF32 tensor cores."""
    return "tf32" if (dtype == torch.float32 and tf32) else dtype


def poison_allocator():
    """Fill freed blocks of the caching allocator with NaN, so the next outputs start out as NaN and
    an element a kernel forgets to write shows up as NaN instead of as a stale plausible value."""
    if DEV != "cuda":  # no caching allocator to poison
        return
    blocks = [torch.full((1 << 16,), float("nan"), device=DEV) for _ in range(64)]  # small pool
    blocks.append(torch.full((16 << 20,), float("nan"), device=DEV))  # large pool
    del blocks


def leaf(t):
    """A fresh float64 leaf copy of t (t.double() would alias a float64 t and accumulate its grads)."""
    return t.detach().double().clone().requires_grad_()


def set_nan(t):
    """One NaN in t (any layout), so NaN propagation is checked."""
    t[(0,) * (t.dim() - 1) + (1,)] = float("nan")
    return t


# ---------------------------------------------------------------- verification
class Checker:
    def __init__(self):
        self.rows = []
        self.failed = 0

    def check(self, name, out, ref, dtype, reduction=1):
        """out against the float64 (or float32) reference by fastconv.tolerance's model at the
        reference's scale, for results of `dtype` (or "tf32") summing `reduction` terms; dtype
        "exact": equal, NaN for NaN. Records (name, max abs error, error / tolerance, ok)."""
        if dtype == "exact":
            e = tolerance.excess(out, ref, torch.float64, atol=0.0, rtol=0.0)
        else:
            e = tolerance.excess(out, ref, dtype, reduction, tolerance.output_scale(ref))
        d = (out.double() - ref.double()).abs()
        d = d[torch.isfinite(d)]
        mx = d.max().item() if d.numel() else 0.0
        ok = e <= 1
        self.rows.append((name, mx, e, ok))
        if not ok:
            self.failed += 1
            print(f"  FAIL {name}: max abs {mx:.3e}, {e:.3g} x the tolerance", flush=True)
        return ok

    def flag(self, name, ok):
        self.rows.append((name, 0.0, 0.0, bool(ok)))
        if not ok:
            self.failed += 1
            print(f"  FAIL {name}", flush=True)
        return ok


def ref_conv(x, w, b, stride, pads, dil, groups):
    """F.conv2d in float64 with fastconv's 4-value padding (top, bottom, left, right)."""
    xd = F.pad(x.double(), (pads[2], pads[3], pads[0], pads[1]))
    return F.conv2d(xd, w.double(), None if b is None else b.double(), stride, 0, dil, groups)


CONV_CASES = [
    # (N, C, H, W, K, R, S, stride, pads(t,b,l,r), dil, groups)
    (2, 16, 9, 11, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (3, 32, 13, 7, 40, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (2, 64, 15, 15, 72, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),
    (1, 24, 17, 19, 8, 5, 3, (1, 2), (2, 1, 0, 2), (2, 1), 1),
    (2, 3, 23, 21, 16, 7, 7, (2, 2), (3, 3, 3, 3), (1, 1), 1),
    (2, 5, 12, 10, 7, 3, 2, (1, 1), (1, 0, 0, 1), (1, 2), 1),
    (2, 32, 10, 10, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 4),
    (2, 48, 9, 9, 96, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 3),
    (2, 32, 11, 11, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 32),
    (2, 16, 11, 13, 48, 5, 5, (2, 2), (2, 2, 2, 2), (1, 1), 16),
    (1, 1, 9, 9, 6, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (1, 8, 6, 6, 8, 11, 11, (3, 3), (5, 5, 5, 5), (1, 1), 1),
    (2, 256, 7, 7, 130, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 16, 8, 8, 16, 3, 3, (4, 4), (1, 1, 1, 1), (1, 1), 1),
    # big enough for the 128x128 and 128x64 tensor-core tiles (ragged M and N edges)
    (8, 64, 37, 41, 200, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (8, 48, 33, 35, 96, 3, 3, (1, 1), (1, 2, 2, 1), (1, 1), 1),
]


def verify(chk, quick=False):
    """Every op against torch in float64 on awkward shapes, every dtype, both layouts."""
    gen = torch.Generator(device=DEV).manual_seed(0)
    dev = DEV

    def rnd(*shape, dtype=torch.float32):
        return (torch.rand(shape, generator=gen, device=dev) * 4 - 2).to(dtype)

    cases = CONV_CASES[:4] if quick else CONV_CASES
    tf32s = (False, True) if DEV == "cuda" else (False,)
    if DEV != "cuda":
        print("  verify: TF32 cases skipped (CUDA only)", flush=True)
    for ci, (N, C, H, W, K, R, S, st, pads, dil, g) in enumerate(cases):
        if out_of_time(f"verify cases {ci}..{len(cases) - 1}"):
            break
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            for tf32 in (tf32s if dtype == torch.float32 else (False,)):
                for cl in (False, True):
                    set_tf32(tf32)
                    poison_allocator()
                    tag = f"conv{ci} {str(dtype)[6:]}{'/tf32' if tf32 else ''} {'cl' if cl else 'nchw'}"
                    fmt = torch.channels_last if cl else torch.contiguous_format
                    x = rnd(N, C, H, W, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
                    w = rnd(K, C // g, R, S, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
                    b = rnd(K, dtype=dtype).requires_grad_()
                    y = ops.conv2d_fwd(x, w, b, list(st), list(pads), list(dil), g)
                    ref = ref_conv(x, w, b, st, pads, dil, g)
                    key = tol_key(dtype, tf32)
                    P, Q = y.shape[2], y.shape[3]
                    chk.check(tag + " fwd", y, ref, key, C // g * R * S)
                    chk.flag(tag + " fwd format", y.is_contiguous(memory_format=A.memory_format(x, w)))
                    gy = rnd(*y.shape, dtype=dtype).contiguous(memory_format=fmt)
                    gx = ops.conv2d_bwd_input(gy, w, list(x.shape), list(st), list(pads), list(dil), g)
                    gw = ops.conv2d_bwd_weight(gy, x, list(w.shape), list(st), list(pads), list(dil), g)
                    gb = ops.conv2d_bwd_bias(gy)
                    xr, wr, br = leaf(x), leaf(w), leaf(b)
                    ref_conv(xr, wr, br, st, pads, dil, g).backward(gy.double())
                    chk.check(tag + " bwd_input", gx, xr.grad, key, K // g * R * S)
                    chk.check(tag + " bwd_weight", gw, wr.grad, key, N * P * Q)
                    chk.check(tag + " bwd_bias", gb, br.grad, key, N * P * Q)
    set_tf32(False)

    # fused epilogue, every combine / relu / mode, fp16 (tensor cores) and fp32 (exact) in both layouts
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for cl in (False, True):
            fmt = torch.channels_last if cl else torch.contiguous_format
            x = rnd(2, 32, 10, 9, dtype=dtype).contiguous(memory_format=fmt)
            w = rnd(40, 32, 3, 3, dtype=dtype).contiguous(memory_format=fmt) * 0.2
            b, sc, sh = rnd(40, dtype=dtype), rnd(40, dtype=dtype), rnd(40, dtype=dtype)
            for combine in (0, 1, 2):
                for relu in (False, True):
                    for mode in ((0, 1) if combine == 2 else (0,)):
                        res = rnd(2, 40, 10, 9, dtype=dtype).contiguous(memory_format=fmt) if combine else None
                        y = ops.conv2d_fused_fwd(x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, sc, sh, res, combine,
                                                 relu, mode, 0.01)
                        z = ref_conv(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1) * sc.double().view(1, -1, 1, 1) \
                            + sh.double().view(1, -1, 1, 1) + b.double().view(1, -1, 1, 1)
                        if combine == 1:
                            z = z + res.double()
                        elif combine == 2:
                            r = res.double()
                            p = r.relu() * z.relu()
                            z = r + z + ((p + 0.01).sqrt() if mode == 0 else p)
                        if relu:
                            z = z.relu()
                        chk.check(f"fused {str(dtype)[6:]} {'cl' if cl else 'nchw'} c{combine} r{int(relu)} m{mode}", y,
                                  z, dtype, 32 * 9)

    # pooling, relu, sort (with NaN) in every dtype and layout
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for cl in (False, True):
            fmt = torch.channels_last if cl else torch.contiguous_format
            tag = f"{str(dtype)[6:]} {'cl' if cl else 'nchw'}"
            for C in (16, 3):
                x = rnd(2, C, 13, 11, dtype=dtype).contiguous(memory_format=fmt)
                set_nan(x)
                for (k, s, p, d, ceil) in [((3, 3), (2, 2), (1, 1), (1, 1), False), ((2, 3), (1, 2), (0, 1), (2, 1), True),
                                           ((3, 3), (3, 3), (0, 0), (1, 1), True)]:
                    y, idx = ops.max_pool2d_fwd(x, list(k), list(s), list(p), list(d), ceil)
                    yr, ir = F.max_pool2d(x.double(), k, s, p, d, ceil, return_indices=True)
                    chk.check(f"maxpool {tag} C{C} k{k}", y, yr, "exact")
                    chk.check(f"maxpool idx {tag} C{C} k{k}", idx, ir, "exact")
                    gy = rnd(*y.shape, dtype=dtype).contiguous(memory_format=fmt)
                    gx = ops.max_pool2d_bwd(gy, idx, list(x.shape))
                    gref = torch.zeros(x.shape, dtype=torch.float64, device=dev).view(2, C, -1)
                    gref.scatter_add_(2, idx.reshape(2, C, -1), gy.double().reshape(2, C, -1))
                    chk.check(f"maxpool bwd {tag} C{C} k{k}", gx, gref.view(x.shape), dtype, k[0] * k[1])
                xa = rnd(2, C, 13, 11, dtype=dtype).contiguous(memory_format=fmt)
                for (k, s, p, ceil, cip, div) in [((3, 3), (2, 2), (1, 1), False, True, None),
                                                  ((3, 2), (2, 1), (1, 1), True, False, None),
                                                  ((2, 2), (2, 2), (0, 0), True, True, 3)]:
                    xr = leaf(xa)
                    yr = F.avg_pool2d(xr, k, s, p, ceil, cip, div)
                    y = ops.avg_pool2d_fwd(xa, list(k), list(s), list(p), ceil, cip, div)
                    chk.check(f"avgpool {tag} C{C} k{k} cip{int(cip)}", y, yr, dtype, k[0] * k[1])
                    gy = rnd(*y.shape, dtype=dtype).contiguous(memory_format=fmt)
                    yr.backward(gy.double())
                    gx = ops.avg_pool2d_bwd(gy, list(xa.shape), list(k), list(s), list(p), ceil, cip, div)
                    chk.check(f"avgpool bwd {tag} C{C} k{k}", gx, xr.grad, dtype, k[0] * k[1])
                for osz in ((1, 1), (5, 4), (13, 11), (20, 3)):
                    xr = leaf(xa)
                    yr = F.adaptive_avg_pool2d(xr, osz)
                    y = ops.adaptive_avg_pool2d_fwd(xa, list(osz))
                    chk.check(f"adaptive {tag} C{C} {osz}", y, yr, dtype, 13 * 11)
                    gy = rnd(*y.shape, dtype=dtype).contiguous(memory_format=fmt)
                    yr.backward(gy.double())
                    gx = ops.adaptive_avg_pool2d_bwd(gy, list(xa.shape))
                    chk.check(f"adaptive bwd {tag} C{C} {osz}", gx, xr.grad, dtype, 13 * 11)
            for shape in ((2, 16, 7, 9), (1001,), (3, 5, 7)):
                a = rnd(*shape, dtype=dtype)
                b = rnd(*shape, dtype=dtype)
                if len(shape) == 4:
                    a, b = a.contiguous(memory_format=fmt), b.contiguous(memory_format=fmt)
                set_nan(a)
                y = ops.relu_fwd(a)
                chk.check(f"relu {tag} {shape}", y, a.double().relu(), "exact")
                g = rnd(*shape, dtype=dtype)
                chk.check(f"relu bwd {tag} {shape}", ops.relu_bwd(g, b),
                          torch.where(b.double() <= 0, 0.0, g.double()), "exact")
                for mode in (0, 1):
                    a2 = rnd(*shape, dtype=dtype)
                    ar, br = leaf(a2), leaf(b)
                    p = ar.relu() * br.relu()
                    yr = ar + br + ((p + 0.01).sqrt() if mode == 0 else p)
                    y = ops.sort_fwd(a2, b, mode, 0.01)
                    chk.check(f"sort {tag} {shape} m{mode}", y, yr, dtype)
                    yr.backward(g.double())
                    ga, gb = ops.sort_bwd(g, a2, b, mode, 0.01)
                    chk.check(f"sort bwd a {tag} {shape} m{mode}", ga, ar.grad, dtype)
                    chk.check(f"sort bwd b {tag} {shape} m{mode}", gb, br.grad, dtype)
    sync()


# ---------------------------------------------------------------- conv benchmarks
def conv_flops(N, C, H, K, R, stride, pad):
    P = A.conv_out_size(H, pad, pad, 1, R, stride)
    return 2.0 * N * K * P * P * C * R * R


def bench_fwd(layers, dtypes, batch, results, chk):
    cudnn_benchmark()
    for name in layers:
        if out_of_time(f"fwd from {name}"):
            break
        C, H, K, R, st, pad = LAYERS[name]
        fl = conv_flops(batch, C, H, K, R, st, pad)
        for dname in dtypes:
            dtype = DTYPES[dname]
            tf32 = dname == "tf32"
            if tf32 and DEV != "cuda":
                print(f"  fwd {name:11s} tf32: skipped (CUDA only)", flush=True)
                continue
            set_tf32(tf32)
            fmt = torch.contiguous_format if dtype == torch.float32 else torch.channels_last
            x = torch.randn(batch, C, H, H, device=DEV, dtype=dtype).contiguous(memory_format=fmt)
            w = (torch.randn(K, C, R, R, device=DEV, dtype=dtype) / math.sqrt(C * R * R)).contiguous(memory_format=fmt)
            args = ([st, st], [pad] * 4, [1, 1], 1)
            y = ops.conv2d_fwd(x, w, None, *args)
            # The tensor-core forward's other engine (WMMA) where the wgmma one is built in: checked, timed.
            engines = WGMMA and (dtype != torch.float32 or tf32)
            if engines:
                with wmma_engine():
                    y2 = ops.conv2d_fwd(x, w, None, *args)
            # correctness first: cuDNN in fp32 (exact) on the same rounded inputs; fp32 checked in fp64 on 8 images
            set_tf32(False)
            rows = slice(0, 8) if dtype == torch.float32 else slice(None)
            if dtype == torch.float32:
                ref = F.conv2d(x[rows].double(), w.double(), None, st, pad)
                if not tf32:  # cuDNN's own float32 error, to read ours against (its Winograd/FFT round too)
                    chk.check(f"bench {name} fp32 cuDNN", F.conv2d(x[rows], w, None, st, pad), ref, dtype,
                              C * R * R)
            else:
                ref = F.conv2d(x.float(), w.float(), None, st, pad)
            ok = chk.check(f"bench {name} {dname}", y[rows], ref, tol_key(dtype, tf32), C * R * R)
            mx, rel = chk.rows[-1][1], chk.rows[-1][2]
            if engines:
                ok = chk.check(f"bench {name} {dname} wmma", y2[rows], ref, tol_key(dtype, tf32), C * R * R) and ok
                del y2
            set_tf32(tf32)
            del y, ref
            t_ours, spread = bench(lambda: ops.conv2d_fwd(x, w, None, *args))
            t_cudnn, _ = bench(lambda: F.conv2d(x, w, None, st, pad))
            t_wmma = float("nan")
            if engines:
                with wmma_engine():
                    t_wmma, _ = bench(lambda: ops.conv2d_fwd(x, w, None, *args))
            results.append(dict(part="fwd", layer=name, dtype=dname, ms=t_ours, cudnn_ms=t_cudnn,
                                tflops=fl / t_ours / 1e9, cudnn_tflops=fl / t_cudnn / 1e9, ratio=t_cudnn / t_ours,
                                peak_pct=100 * fl / t_ours / 1e9 / PEAK_TFLOPS, max_abs=mx, err_over_tol=rel, ok=ok,
                                spread=spread, wmma_ms=t_wmma))
            print(f"  fwd {name:11s} {dname}: ours {t_ours:.3f} ms ({fl / t_ours / 1e9:.1f} TFLOP/s) cuDNN "
                  f"{t_cudnn:.3f} ms ratio {t_cudnn / t_ours:.2f}  err/tol {rel:.2f}  wmma {t_wmma:.3f} ms", flush=True)
            del x, w
    set_tf32(False)


def bench_bwd(layers, batch, results, chk):
    cudnn_benchmark()
    set_tf32(False)
    for name in layers:
        if out_of_time(f"bwd from {name}"):
            break
        C, H, K, R, st, pad = LAYERS[name]
        fl = 2 * conv_flops(batch, C, H, K, R, st, pad)  # grad_input + grad_weight
        dtype = torch.float16
        fmt = torch.channels_last
        x = torch.randn(batch, C, H, H, device=DEV, dtype=dtype).contiguous(memory_format=fmt)
        w = (torch.randn(K, C, R, R, device=DEV, dtype=dtype) / math.sqrt(C * R * R)).contiguous(memory_format=fmt)
        args = ([st, st], [pad] * 4, [1, 1], 1)
        P = (H + 2 * pad - R) // st + 1
        gy = torch.randn(batch, K, P, P, device=DEV, dtype=dtype).contiguous(memory_format=fmt)

        def ours():
            ops.conv2d_bwd_input(gy, w, list(x.shape), *args)
            ops.conv2d_bwd_weight(gy, x, list(w.shape), *args)

        def cudnn():
            torch.ops.aten.convolution_backward(gy, x, w, None, [st, st], [pad, pad], [1, 1], False, [0, 0], 1,
                                                [True, True, False])

        gx = ops.conv2d_bwd_input(gy, w, list(x.shape), *args)
        gw = ops.conv2d_bwd_weight(gy, x, list(w.shape), *args)
        rx, rw, _ = torch.ops.aten.convolution_backward(gy.float(), x.float(), w.float(), None, [st, st], [pad, pad],
                                                        [1, 1], False, [0, 0], 1, [True, True, False])
        ok = chk.check(f"bench bwd_input {name}", gx, rx, dtype, K * R * R)
        ok = chk.check(f"bench bwd_weight {name}", gw, rw, dtype, batch * P * P) and ok
        mx, rel = max(chk.rows[-1][1], chk.rows[-2][1]), max(chk.rows[-1][2], chk.rows[-2][2])
        del gx, gw
        t_ours, spread = bench(ours)
        t_cudnn, _ = bench(cudnn)
        t_wmma = float("nan")
        if WGMMA:  # the WMMA engine's backward, checked and timed beside the default one
            with wmma_engine():
                ok = chk.check(f"bench bwd_input {name} wmma", ops.conv2d_bwd_input(gy, w, list(x.shape), *args), rx,
                               dtype, K * R * R) and ok
                ok = chk.check(f"bench bwd_weight {name} wmma", ops.conv2d_bwd_weight(gy, x, list(w.shape), *args), rw,
                               dtype, batch * P * P) and ok
                t_wmma, _ = bench(ours)
        del rx, rw
        results.append(dict(part="bwd", layer=name, dtype="fp16", ms=t_ours, cudnn_ms=t_cudnn, tflops=fl / t_ours / 1e9,
                            cudnn_tflops=fl / t_cudnn / 1e9, ratio=t_cudnn / t_ours,
                            peak_pct=100 * fl / t_ours / 1e9 / PEAK_TFLOPS, max_abs=mx, err_over_tol=rel, ok=ok, spread=spread,
                            wmma_ms=t_wmma))
        print(f"  bwd {name:11s} fp16: ours {t_ours:.3f} ms cuDNN {t_cudnn:.3f} ms ratio {t_cudnn / t_ours:.2f}  "
              f"err/tol {rel:.2f}  wmma {t_wmma:.3f} ms", flush=True)
        del x, w, gy


def bench_fused(batch, results, chk):
    """The SORT residual block: 1x1 conv (64 -> 256 on 56x56) + scale/shift + sort with the residual + relu,
    fused in one fastconv kernel vs cuDNN conv followed by torch eager elementwise ops."""
    cudnn_benchmark()
    set_tf32(False)
    dt, cl = torch.float16, torch.channels_last
    C, H, K = 64, 56, 256
    x = torch.randn(batch, C, H, H, device=DEV, dtype=dt).contiguous(memory_format=cl)
    w = (torch.randn(K, C, 1, 1, device=DEV, dtype=dt) / 8).contiguous(memory_format=cl)
    res = torch.randn(batch, K, H, H, device=DEV, dtype=dt).contiguous(memory_format=cl)
    sc = torch.rand(K, device=DEV, dtype=dt) + 0.5
    sh = torch.randn(K, device=DEV, dtype=dt) * 0.1

    def ours():
        return ops.conv2d_fused_fwd(x, w, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, sc, sh, res, 2, True, 0, 0.01)

    def theirs():
        z = F.conv2d(x, w) * sc.view(1, -1, 1, 1) + sh.view(1, -1, 1, 1)
        return F.relu(res + z + torch.sqrt(F.relu(res) * F.relu(z) + 0.01))

    zr = F.conv2d(x.float(), w.float()) * sc.float().view(1, -1, 1, 1) + sh.float().view(1, -1, 1, 1)
    r = res.float()
    ref = F.relu(r + zr + torch.sqrt(F.relu(r) * F.relu(zr) + 0.01))
    ok = chk.check("bench fused sort block", ours(), ref, dt, C)
    t_o, spread = bench(ours)
    t_t, _ = bench(theirs)
    fl = conv_flops(batch, C, H, K, 1, 1, 0)
    nbytes = (x.numel() + 2 * res.numel()) * 2
    results.append(dict(part="mem", layer="conv1x1+sort+relu", dtype="fp16", ms=t_o, cudnn_ms=t_t, ratio=t_t / t_o,
                        gbs=nbytes / t_o / 1e6, torch_gbs=nbytes / t_t / 1e6,
                        copy_pct=100 * nbytes / t_o / 1e6 / COPY_GBS, ok=ok, spread=spread))
    print(f"  fused conv1x1+sort+relu: ours {t_o:.3f} ms ({fl / t_o / 1e9:.0f} TFLOP/s) cuDNN+eager {t_t:.3f} ms "
          f"ratio {t_t / t_o:.2f}", flush=True)


def bench_mem(batch, results, chk):
    dt = torch.float16
    cl = torch.channels_last
    x = torch.randn(batch, 64, 112, 112, device=DEV, dtype=dt).contiguous(memory_format=cl)
    a = torch.randn(batch, 256, 56, 56, device=DEV, dtype=dt).contiguous(memory_format=cl)
    b = torch.randn_like(a)
    big = torch.randn(batch, 2048, 7, 7, device=DEV, dtype=dt).contiguous(memory_format=cl)
    eb = x.element_size()
    mp_out = x.numel() // 4

    def sort_torch():
        return F.relu(a + b + torch.sqrt(F.relu(a) * F.relu(b) + 0.01))

    cases = [
        ("relu", lambda: ops.relu_fwd(x), lambda: F.relu(x), 2 * x.numel() * eb),
        ("sort_fwd", lambda: ops.sort_fwd(a, b, 0, 0.01), lambda: a + b + torch.sqrt(F.relu(a) * F.relu(b) + 0.01),
         3 * a.numel() * eb),
        ("sort+relu (2 ops)", lambda: ops.relu_fwd(ops.sort_fwd(a, b, 0, 0.01)), sort_torch, 3 * a.numel() * eb),
        ("max_pool 3/2/1", lambda: ops.max_pool2d_fwd(x, [3, 3], [2, 2], [1, 1], [1, 1], False),
         lambda: F.max_pool2d(x, 3, 2, 1, return_indices=True), x.numel() * eb + mp_out * (eb + 8)),
        # inference: fastconv.max_pool2d without indices runs the values-only op; torch's F.max_pool2d
        # computes its indices anyway (the 0.466 ms of benchmarks/BASELINES.md, against a 0.088 ms floor)
        ("max_pool values", lambda: ops.max_pool2d_values(x, [3, 3], [2, 2], [1, 1], [1, 1], False),
         lambda: F.max_pool2d(x, 3, 2, 1), x.numel() * eb + mp_out * eb),
        ("avg_pool 3/2/1", lambda: ops.avg_pool2d_fwd(x, [3, 3], [2, 2], [1, 1], False, True, None),
         lambda: F.avg_pool2d(x, 3, 2, 1), x.numel() * eb + mp_out * eb),
        ("adaptive 7->1", lambda: ops.adaptive_avg_pool2d_fwd(big, [1, 1]), lambda: F.adaptive_avg_pool2d(big, 1),
         big.numel() * eb),
    ]
    for name, ours, theirs, nbytes in cases:
        if ours is None:
            t, _ = bench(theirs)
            print(f"  mem {name:16s}: torch {t:.3f} ms", flush=True)
            continue
        t_o, spread = bench(ours)
        t_t, _ = bench(theirs)
        row = dict(part="mem", layer=name, dtype="fp16", ms=t_o, cudnn_ms=t_t, ratio=t_t / t_o,
                   gbs=nbytes / t_o / 1e6, torch_gbs=nbytes / t_t / 1e6,
                   copy_pct=100 * nbytes / t_o / 1e6 / COPY_GBS, ok=True, spread=spread)
        # torch.compile of the same expression, the fair peer of a memory-bound op (the dry run
        # compiles only the first case, to run the code path)
        compiled = None
        if COMPILE and (DEV != "cpu" or name == cases[0][0]) and not out_of_time(
                f"torch.compile peer of {name}"):
            compiled = compiled_peer(theirs)
        if compiled is not None:
            row["compile_ms"], _ = bench(compiled)
            row["vs_compile"] = row["compile_ms"] / t_o
        results.append(row)
        print(f"  mem {name:16s}: ours {t_o:.3f} ms ({nbytes / t_o / 1e6:.0f} GB/s) torch {t_t:.3f} ms "
              f"ratio {t_t / t_o:.2f}" + (f" compile {row['compile_ms']:.3f} ms" if compiled else ""), flush=True)
    # correctness of the timed memory-bound ops
    chk.check("bench relu", ops.relu_fwd(x), F.relu(x).double(), "exact")
    y, i = ops.max_pool2d_fwd(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
    yr, ir = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    chk.check("bench max_pool", y, yr, "exact")
    chk.flag("bench max_pool indices", torch.equal(i, ir))
    chk.check("bench max_pool values", ops.max_pool2d_values(x, [3, 3], [2, 2], [1, 1], [1, 1], False), yr, "exact")
    chk.check("bench sort", ops.sort_fwd(a, b, 0, 0.01), (lambda ad, bd: ad + bd + (ad.relu() * bd.relu() + 0.01).sqrt())(
        a.double(), b.double()), dt)


def smoke():
    """Each op once on small shapes, every dtype (FASTCONV_SMOKE_DTYPES: a comma list of fp16, bf16, fp32,
    fp64 to run fewer, for racecheck's slower instrumentation): the compute-sanitizer workload."""
    dev = DEV
    names = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
    for dtype in [names[d] for d in env_list("FASTCONV_SMOKE_DTYPES", list(names))]:
        for cl in (False, True):
            fmt = torch.channels_last if cl else torch.contiguous_format
            for tf32 in ((False, True) if dtype == torch.float32 and dev == "cuda" else (False,)):
                set_tf32(tf32)
                for (C, K, g, R, st) in ((16, 24, 1, 3, 1), (3, 8, 1, 3, 2), (16, 16, 16, 3, 1), (16, 32, 2, 1, 2)):
                    x = torch.randn(2, C, 9, 7, device=dev, dtype=dtype).contiguous(memory_format=fmt)
                    w = torch.randn(K, C // g, R, R, device=dev, dtype=dtype).contiguous(memory_format=fmt)
                    bias = torch.randn(K, device=dev, dtype=dtype)
                    y = ops.conv2d_fwd(x, w, bias, [st, st], [1, 1, 1, 1], [1, 1], g)
                    r = torch.randn_like(y)
                    ops.conv2d_fused_fwd(x, w, bias, [st, st], [1, 1, 1, 1], [1, 1], g, bias, bias, r, 2, True, 0, 0.01)
                    ops.conv2d_bwd_input(y, w, list(x.shape), [st, st], [1, 1, 1, 1], [1, 1], g)
                    ops.conv2d_bwd_weight(y, x, list(w.shape), [st, st], [1, 1, 1, 1], [1, 1], g)
                    ops.conv2d_bwd_bias(y)
            x = torch.randn(2, 16, 9, 7, device=dev, dtype=dtype).contiguous(memory_format=fmt)
            y, i = ops.max_pool2d_fwd(x, [3, 3], [2, 2], [1, 1], [1, 1], True)
            ops.max_pool2d_values(x, [3, 3], [2, 2], [1, 1], [1, 1], True)
            ops.max_pool2d_bwd(y, i, list(x.shape))
            y = ops.avg_pool2d_fwd(x, [3, 3], [2, 2], [1, 1], True, False, None)
            ops.avg_pool2d_bwd(y, list(x.shape), [3, 3], [2, 2], [1, 1], True, False, None)
            y = ops.adaptive_avg_pool2d_fwd(x, [4, 3])
            ops.adaptive_avg_pool2d_bwd(y, list(x.shape))
            ops.relu_bwd(x, ops.relu_fwd(x))
            ops.sort_bwd(x, x, ops.sort_fwd(x, x, 0, 0.01), 1, 0.01)
    # the big tensor-core tile configs
    for K in (64, 128, 256):  # M = 12800: 64x64, 128x64 and 128x128 tiles respectively
        x = torch.randn(8, 64, 40, 40, device=dev, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        w = torch.randn(K, 64, 3, 3, device=dev, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        ops.conv2d_fwd(x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1)
    sync()
    print("smoke: every op ran")


def summary(results, chk):
    lines = []
    fails = [r for r in chk.rows if not r[3]]
    if SKIPPED:
        lines.append("NOT RUN (FASTCONV_BENCH_BUDGET spent): " + "; ".join(SKIPPED))
    lines.append(f"verification: {len(chk.rows) - len(fails)}/{len(chk.rows)} checks passed"
                 + (f"; FAILED: {', '.join(r[0] for r in fails[:12])}" + (" ..." if len(fails) > 12 else "") if fails else ""))
    conv = [r for r in results if r["part"] in ("fwd", "bwd")]
    if conv:
        lines.append(table(conv, [("part", "part", ""), ("layer", "layer", ""), ("dtype", "dtype", ""),
                                  ("ours ms", "ms", ".3f"), ("cuDNN ms", "cudnn_ms", ".3f"), ("TFLOP/s", "tflops", ".1f"),
                                  ("cuDNN", "cudnn_tflops", ".1f"), ("ratio", "ratio", ".2f"),
                                  ("%peak", "peak_pct", ".1f"), ("err/tol", "err_over_tol", ".2f"),
                                  ("ok", lambda r: "y" if r["ok"] else "N", ""), ("wmma ms", "wmma_ms", ".3f")]))
    mem = [r for r in results if r["part"] == "mem"]
    if mem:
        lines.append(table(mem, [("memory-bound (fp16 CL)", "layer", ""), ("ours ms", "ms", ".3f"),
                                 ("torch ms", "cudnn_ms", ".3f"), ("GB/s", "gbs", ".0f"), ("%copy", "copy_pct", ".1f"),
                                 ("ratio", "ratio", ".2f"), ("compile ms", "compile_ms", ".3f"),
                                 ("vs compile", "vs_compile", ".2f")]))
    return "\n".join(lines)


def main():
    global ops, DEV, WGMMA, DEADLINE
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer verification cases")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: dry run of every code path at tiny sizes on the CPU kernels")
    args = ap.parse_args()
    DEV = args.device
    cpu = DEV == "cpu"
    if not cpu and not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA device")
    from fastconv import ops as _  # noqa: F401  (fake/autograd registrations; loads the extension)
    ops = torch.ops.fastconv
    info = fastconv.info()
    # the dry run takes the engine comparison's code path too (the CPU kernels ignore FASTCONV_WGMMA)
    WGMMA = cpu or ("tc=wgmma" in str(info.get("build_flags", "")) and torch.cuda.get_device_capability() == (9, 0))
    if cpu:
        print(f"device: cpu (dry run: CPU kernels, tiny sizes, no TF32/cuDNN/allocator poisoning, wall-clock "
              f"timings)  torch {torch.__version__}  fastconv cuda_built={info.get('cuda_built')}", flush=True)
    else:
        print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  cuDNN {torch.backends.cudnn.version()}  "
              f"fastconv cuda_built={info.get('cuda_built')} tensor-core forward: {'wgmma' if WGMMA else 'wmma'}",
              flush=True)
    if args.smoke:
        smoke()
        return 0
    parts = env_list("FASTCONV_BENCH_PARTS", ["verify", "fwd", "bwd", "fused", "mem"])
    layers = env_list("FASTCONV_BENCH_LAYERS", CPU_LAYERS if cpu else LAYERS)
    dtypes = env_list("FASTCONV_BENCH_DTYPES", ["fp16", "bf16", "fp32"])
    batch = int(os.environ.get("FASTCONV_BENCH_BATCH", "2" if cpu else "128"))
    out_dir = os.environ.get("FASTCONV_BENCH_OUT", os.environ.get("OUT", "."))
    # a misspelt name would silently skip a part, or crash it after minutes of GPU time: refuse it up front
    for var, given, known in (("PARTS", parts, ("verify", "fwd", "bwd", "fused", "mem")), ("LAYERS", layers, LAYERS),
                              ("DTYPES", dtypes, DTYPES)):
        bad = [v for v in given if v not in known]
        if bad:
            sys.exit(f"gpu_bench: error: unknown FASTCONV_BENCH_{var} {','.join(bad)} (known: {','.join(known)})")
    chk = Checker()
    results = []
    t0 = time.time()
    if os.environ.get("FASTCONV_BENCH_BUDGET"):
        DEADLINE = t0 + float(os.environ["FASTCONV_BENCH_BUDGET"])
    for part in parts:
        t = time.time()
        if part in ("fused", "mem") and out_of_time(part):
            continue
        try:
            if part == "verify":
                verify(chk, args.quick or cpu)
            elif part == "fwd":
                bench_fwd(layers, dtypes, batch, results, chk)
            elif part == "bwd":
                bench_bwd(layers, batch, results, chk)
            elif part == "mem":
                bench_mem(batch, results, chk)
            elif part == "fused":
                bench_fused(batch, results, chk)
        except Exception as exc:  # keep the other parts and the table
            import traceback
            traceback.print_exc()
            chk.rows.append((f"{part} crashed: {type(exc).__name__}: {str(exc)[:200]}", 0, 0, False))
            chk.failed += 1
            try:  # after a CUDA fault this raises again: it must not cost the JSON and the table
                sync()
            except Exception:
                pass
        print(f"[{part}] {time.time() - t:.1f} s", flush=True)
    try:
        os.makedirs(out_dir, exist_ok=True)
        write_results(os.path.join(out_dir, "bench.json"), DEV, results=results, checks=chk.rows)
    except OSError as exc:  # the table below still has the numbers
        print(f"bench.json not written: {exc}", flush=True)
    print(f"total {time.time() - t0:.1f} s\n")
    print(summary(results, chk))
    return 1 if chk.failed else 0


if __name__ == "__main__":
    sys.exit(main())
