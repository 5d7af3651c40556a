"""CPU convolution timing: fastconv vs torch F.conv2d (oneDNN) over the ResNet-50 / AlexNet layer suite.

Per layer: ours ms, torch ms, ratio (torch time / ours; > 1 means fastconv is faster), our GFLOP/s,
for the forward in NCHW and channels_last, and the backward (grad input + grad weight). Ours and the
peer are timed interleaved in the same run (the machine is shared), median of the repeats.

  python benchmarks/conv2d_cpu.py [--threads 2] [--repeats 7] [--batch 8] [--only fwd|bwd] [--layers r50_l1_3x3,...]
"""
import argparse
import math
import sys

import torch
import torch.nn.functional as F

import fastconv  # noqa: F401  (registers torch.ops.fastconv)
import fastconv._C
from fastconv.bench import LAYER_SUITE
from fastconv.timing import interleaved, table

ops = torch.ops.fastconv

LAYERS = LAYER_SUITE  # name: (C, H, K, R, stride, pad, groups); N is --batch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--only", choices=["fwd", "bwd"], default=None)
    ap.add_argument("--layers", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = args.layers.split(",") if args.layers else list(LAYERS)
    print(f"threads={args.threads} batch={args.batch} isa={fastconv._C.get_isa()} torch={torch.__version__}")
    ratios, rows = {}, []
    for name in names:
        c, h, k, r, st, pad, gr = LAYERS[name]
        n = args.batch
        x0 = torch.randn(n, c, h, h)
        w0 = torch.randn(k, c // gr, r, r) / math.sqrt(c // gr * r * r)
        p = (h + 2 * pad - r) // st + 1
        flops = 2.0 * n * k * p * p * (c // gr) * r * r
        passes = []
        if args.only in (None, "fwd"):
            passes += [("fwd_nchw", torch.contiguous_format), ("fwd_nhwc", torch.channels_last)]
        if args.only in (None, "bwd"):
            passes += [("bwd_nchw", torch.contiguous_format), ("bwd_nhwc", torch.channels_last)]
        for pname, fmt in passes:
            x, w = x0.contiguous(memory_format=fmt), w0.contiguous(memory_format=fmt)
            pads = [pad] * 4
            if pname.startswith("fwd"):
                def ours():
                    ops.conv2d_fwd(x, w, None, [st, st], pads, [1, 1], gr)

                def peer():
                    F.conv2d(x, w, None, st, pad, 1, gr)
                f = flops
            else:
                g = torch.randn(n, k, p, p).contiguous(memory_format=fmt)

                def ours():
                    ops.conv2d_bwd_input(g, w, list(x.shape), [st, st], pads, [1, 1], gr)
                    ops.conv2d_bwd_weight(g, x, list(w.shape), [st, st], pads, [1, 1], gr)

                def peer():
                    torch.ops.aten.convolution_backward(g, x, w, None, [st, st], [pad, pad], [1, 1], False,
                                                        [0, 0], gr, [True, True, False])
                f = 2 * flops
            mo, mp = (t * 1e3 for t in interleaved([ours, peer], repeats=args.repeats))
            ratios.setdefault(pname, []).append(mp / mo)
            rows.append(dict(layer=name, pass_=pname, ours=mo, torch=mp, ratio=mp / mo, gflops=f / mo / 1e6))
            print(f"  {name} {pname}: {mp / mo:.2f}x", file=sys.stderr, flush=True)
    print(table(rows, [("layer", "layer", ""), ("pass", "pass_", ""), ("ours ms", "ours", ".2f"),
                       ("torch ms", "torch", ".2f"), ("ratio", "ratio", ".2f"), ("GFLOP/s", "gflops", ".1f")]))
    for pname, rs in ratios.items():
        print(f"geomean ratio {pname}: {math.exp(sum(map(math.log, rs)) / len(rs)):.3f}")


if __name__ == "__main__":
    main()
