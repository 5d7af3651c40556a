"""Whole-net and SORT measurements for the GPU bars (issues 4 and 5), in one process:

  models     ResNet-18, ResNet-50, AlexNet inference, batch 256, fp16, channels_last: fastconv
             (convert + fuse) against torch eager and torch.compile, logits checked (images/s);
  sort_cost  SORT-ResNet-50 against ResNet-50, both fastconv (fused, channels_last): inference time
             and a training step's peak memory (torch.cuda.max_memory_allocated);
  sort_block a SORT-ResNet-50 bottleneck (256 -> 64 -> 256, 56x56) through conv2d_fused against cuDNN
             convolutions + eager elementwise ops and against torch.compile of that eager block.

  python3 benchmarks/gpu_models.py [--parts models,sort_cost,sort_block] [--batch 256] [--quick]
  python3 benchmarks/gpu_models.py --device cpu --quick     # a smoke run of every code path

Timing: fastconv.timing.interleaved (CUDA events after warm-up; the wall clock on the CPU), median. The
table is printed last; JSON (with the machine) goes to $OUT/models.json.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastconv  # noqa: E402
from fastconv import demo  # noqa: E402
from fastconv.bench import randomize_bn, write_results  # noqa: E402
from fastconv.timing import interleaved, time_one  # noqa: E402


def models(args, rows):
    """Issue 5: fastconv >= 1.0x torch.compile on ResNet-50, ResNet-18, AlexNet."""
    ns = argparse.Namespace(device=args.device, batch=args.batch, image_size=args.image_size, seed=0,
                            repeats=args.repeats, backends=["fastconv", "torch eager", "torch.compile"])
    for name in args.models:
        res = demo.bench_model(name, ns, args.dtype)
        by = {r["backend"]: r for r in res}
        fc, comp, eager = by["fastconv"], by["torch.compile"], by["torch eager"]
        rows.append(dict(part="models", name=name, batch=args.batch,
                         fastconv_img_s=fc["images_per_s"], eager_img_s=eager["images_per_s"],
                         compile_img_s=comp["images_per_s"], vs_compile=comp["ms_median"] / fc["ms_median"],
                         vs_eager=eager["ms_median"] / fc["ms_median"], compile_s=comp["compile_seconds"],
                         logits_agree=all(r["agree"] for r in res),
                         max_abs_diff=fc["max_abs_diff"], logit_scale=fc["logit_scale"]))
        print(rows[-1], flush=True)


def _net(sort, args):
    return randomize_bn(fastconv.models.resnet50(sort=sort)).to(args.device, args.dtype)


def sort_cost(args, rows):
    """Issue 4: SORT-ResNet-50 inference at most 2% slower than ResNet-50 (fastconv both), and a
    training step's peak memory at most 2% higher."""
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=args.device, dtype=args.dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    nets = {s: fastconv.convert(_net(s, args).eval(), channels_last=True) for s in (False, True)}
    with torch.inference_mode():
        t = interleaved({s: (lambda s=s: nets[s](x)) for s in nets}, args.device, args.repeats)
    rows.append(dict(part="sort_cost", name="inference", batch=args.batch, resnet50_ms=t[False] * 1e3,
                     sort_resnet50_ms=t[True] * 1e3, sort_over_plain=t[True] / t[False]))
    print(rows[-1], flush=True)
    # Training step (forward, backward, SGD) in fp32 with autocast on the GPU, as one trains.
    tb = args.train_batch
    xt = torch.randn(tb, 3, args.image_size, args.image_size, device=args.device)
    xt = xt.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (tb,), device=args.device)
    peak, step_s = {}, {}
    for s in (False, True):
        net = fastconv.models.resnet50(sort=s).to(args.device).to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(args.device.type, dtype=torch.float16 if args.device.type == "cuda" else torch.bfloat16,
                                enabled=args.device.type == "cuda"):
                loss = F.cross_entropy(net(xt), target)
            loss.backward()
            opt.step()
        step()  # optimizer state exists from here on: the steady-state peak
        if args.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        step()
        if args.device.type == "cuda":
            torch.cuda.synchronize()
            peak[s] = torch.cuda.max_memory_allocated() - base
        step_s[s] = time_one(step, args.device, repeats=max(3, args.repeats // 4), warmup=0)
        del net, opt
    row = dict(part="sort_cost", name="training step", batch=tb, resnet50_ms=step_s[False] * 1e3,
               sort_resnet50_ms=step_s[True] * 1e3, sort_over_plain=step_s[True] / step_s[False])
    if peak:
        row.update(resnet50_peak_mb=peak[False] / 2**20, sort_resnet50_peak_mb=peak[True] / 2**20,
                   peak_ratio=peak[True] / peak[False])
    rows.append(row)
    print(rows[-1], flush=True)


def sort_block(args, rows):
    """Issue 4: the SORT bottleneck in conv2d_fused >= 1.5x cuDNN + eager elementwise, and not slower
    than torch.compile of the eager block."""
    from fastconv import nn as fnn
    torch.manual_seed(0)
    blk = randomize_bn(fnn.SORTBottleneck(256, 64)).to(args.device, args.dtype).eval()
    blk = blk.to(memory_format=torch.channels_last)
    fused = fastconv.fuse(blk, inplace=False)
    eps = blk.eps
    x = torch.randn(args.block_batch, 256, 56, 56, device=args.device, dtype=args.dtype)
    x = x.contiguous(memory_format=torch.channels_last)

    def eager(x):  # cuDNN convolutions, eager batch-norm / ReLU / SORT
        out = F.relu(blk.bn1(F.conv2d(x, blk.conv1.weight)))
        out = F.relu(blk.bn2(F.conv2d(out, blk.conv2.weight, None, 1, 1)))
        z = blk.bn3(F.conv2d(out, blk.conv3.weight))
        return F.relu(x + z + torch.sqrt(F.relu(x) * F.relu(z) + eps))

    compiled = torch.compile(eager)
    with torch.inference_mode():
        want = eager(x).float()
        t0 = time.perf_counter()
        got_c = compiled(x).float()
        compile_s = time.perf_counter() - t0
        got = fused(x).float()
        scale = want.abs().max().item()
        tol = 2e-2 if args.dtype != torch.float32 else 1e-3
        agree = bool(torch.allclose(got, want, rtol=tol, atol=tol * scale)
                     and torch.allclose(got_c, want, rtol=tol, atol=tol * scale))
        t = interleaved({"fastconv": lambda: fused(x), "eager": lambda: eager(x), "compile": lambda: compiled(x)},
                        args.device, args.repeats)
    flops = 2.0 * args.block_batch * 56 * 56 * (256 * 64 + 64 * 64 * 9 + 64 * 256)
    rows.append(dict(part="sort_block", name="SORT bottleneck 256-64-256 56x56", batch=args.block_batch,
                     fastconv_ms=t["fastconv"] * 1e3, eager_ms=t["eager"] * 1e3, compile_ms=t["compile"] * 1e3,
                     vs_eager=t["eager"] / t["fastconv"], vs_compile=t["compile"] / t["fastconv"],
                     tflops=flops / t["fastconv"] / 1e12, compile_s=compile_s, agree=agree,
                     max_abs_diff=(got - want).abs().max().item()))
    print(rows[-1], flush=True)


def table(rows):
    out = []
    for r in rows:
        if r["part"] == "models":
            out.append(f"{r['name']:10s} b{r['batch']}: fastconv {r['fastconv_img_s']:9.0f} img/s, eager "
                       f"{r['eager_img_s']:9.0f}, compile {r['compile_img_s']:9.0f}; vs compile "
                       f"{r['vs_compile']:.2f}x (bar 1.0), vs eager {r['vs_eager']:.2f}x; logits agree "
                       f"{r['logits_agree']}")
        elif r["part"] == "sort_cost":
            line = (f"SORT-R50 / R50 {r['name']} b{r['batch']}: {r['sort_resnet50_ms']:.2f} / "
                    f"{r['resnet50_ms']:.2f} ms = {r['sort_over_plain']:.3f} (bar 1.02)")
            if "peak_ratio" in r:
                line += (f"; peak memory {r['sort_resnet50_peak_mb']:.0f} / {r['resnet50_peak_mb']:.0f} MB = "
                         f"{r['peak_ratio']:.3f} (bar 1.02)")
            out.append(line)
        elif r["part"] == "sort_block":
            out.append(f"SORT block b{r['batch']}: fastconv {r['fastconv_ms']:.3f} ms, eager {r['eager_ms']:.3f}, "
                       f"compile {r['compile_ms']:.3f}; vs eager {r['vs_eager']:.2f}x (bar 1.5), vs compile "
                       f"{r['vs_compile']:.2f}x (bar 1.0); {r['tflops']:.0f} TFLOP/s; agree {r['agree']}")
        else:
            out.append(str(r))
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--parts", default="models,sort_cost,sort_block")
    ap.add_argument("--models", default="resnet50,resnet18,alexnet")
    ap.add_argument("--batch", type=int, default=None, help="inference batch (default 256; --quick 2)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every code path")
    args = ap.parse_args(argv)
    args.device = torch.device(args.device)
    q = args.quick
    args.batch = args.batch or (2 if q else 256)
    args.train_batch = 2 if q else 64
    args.block_batch = 2 if q else 128
    args.image_size = 64 if q else 224
    args.repeats = 2 if q else 20
    args.dtype = torch.float16 if args.device.type == "cuda" else torch.float32
    args.models = [m for m in args.models.split(",") if m]
    if q:
        args.models = args.models[:1]
    rows = []
    t0 = time.time()
    failed = False
    for part in [p for p in args.parts.split(",") if p]:
        t = time.time()
        try:
            {"models": models, "sort_cost": sort_cost, "sort_block": sort_block}[part](args, rows)
        except Exception as exc:  # keep the other parts
            import traceback
            traceback.print_exc()
            rows.append(dict(part="error", name=part, error=f"{type(exc).__name__}: {str(exc)[:300]}"))
            failed = True
        print(f"[{part}] {time.time() - t:.1f} s", flush=True)
    out = os.environ.get("OUT", ".")
    try:
        write_results(os.path.join(out, "models.json"), args.device, rows=rows)
    except OSError:
        pass
    print(f"total {time.time() - t0:.1f} s\n")
    print(table(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
