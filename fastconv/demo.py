"""python -m fastconv demo: the end-to-end job.

1. trains cifar_resnet20 and its SORT variant on scikit-learn's bundled digits (8x8 grey images
   upsampled to 32x32; fixed stratified split 1437 train / 360 test, seed 0) for 5 epochs with
   fastconv ops, and reports their test accuracy (unfused and with the fused inference path);
2. times inference of ResNet-18, ResNet-50 and AlexNet: fastconv (torchvision net converted and
   fused by fastconv.convert) against torch eager, torch.compile and, on the CPU where installed
   (pip install fastconv[peers]), torch.compile with freezing, ONNX Runtime and OpenVINO
   (fastconv.peers), checking that logits agree
   (CPU defaults: float32, batch 8, 128x128 images, 5 interleaved repeats);
3. on the CPU, times training steps of ResNet-18 and ResNet-50 (112 px, batch as in 2.): fastconv
   against torch eager NCHW, eager channels_last and torch.compile, the first step's loss checked
   against torch's (fastconv.bench.train_rows; --quick: ResNet-18 only, no torch.compile);
4. writes <out>/report.md (tables, machine, versions), results.json and PNG plots.
"""
import argparse
import json
import os
import sys
import time

import torch

from fastconv import _cli, peers
from fastconv.bench import format_train_table, machine_info, randomize_bn, train_rows
from fastconv.timing import interleaved, sync, table

BENCH_MODELS = ("resnet18", "resnet50", "alexnet")
# the inference peers (fastconv.peers: ONNX Runtime, OpenVINO, torch.compile with freezing) run on the
# CPU in float32 where installed; elsewhere, or absent, they are skipped with a note
BACKENDS = ("fastconv", "torch eager", "torch.compile") + peers.INFERENCE_PEERS


def add_arguments(p):
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to train and benchmark (auto: cuda if available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="benchmark dtype (training is always float32; default float32)")
    p.add_argument("--batch", type=_cli.positive_int, default=None, help="benchmark batch size (default 8 on CPU, 32 on CUDA)")
    p.add_argument("--image-size", type=_cli.positive_int, default=None,
                   help="benchmark image side (default 128 on CPU, 224 on CUDA; AlexNet needs >= 63)")
    p.add_argument("--repeats", type=_cli.positive_int, default=None, help="timed forward passes per model and backend "
                   "(default 5 on CPU, 30 on CUDA), interleaved across backends")
    p.add_argument("--models", default=",".join(BENCH_MODELS),
                   help=f"comma-separated benchmark nets out of {', '.join(BENCH_MODELS)}")
    p.add_argument("--backends", default=None,
                   help=f"comma-separated out of {', '.join(BACKENDS)} (default all; --quick: no torch.compile)")
    p.add_argument("--epochs", type=_cli.positive_int, default=None,
                   help="training epochs per net (default 5; --quick 1)")
    p.add_argument("--train-size", type=_cli.positive_int, default=32,
                   help="side the 8x8 digits are upsampled to (default 32, the CIFAR size the nets are built for)")
    p.add_argument("--train-batch", type=_cli.positive_int, default=64, help="training batch size (default 64)")
    p.add_argument("--skip-train", action="store_true", help="benchmark only")
    p.add_argument("--skip-bench", action="store_true", help="train only")
    p.add_argument("--skip-train-bench", action="store_true",
                   help="no training-step benchmark (CPU: ResNet-18/50 train steps against torch)")
    p.add_argument("--out", default="fastconv-report", help="output directory (default fastconv-report)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run (< 1 min on 2 cores): 1 epoch on a 128-image subset, "
                        "benchmark ResNet-18/AlexNet at 64x64, batch 2, 2 repeats, no torch.compile")
    p.add_argument("--seed", type=int, default=0)
    return p


def _settle(args):
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = dev == "cuda"
    q = args.quick
    args.device = torch.device(dev)
    args.batch = args.batch or (2 if q else 32 if cuda else 8)
    args.image_size = args.image_size or (64 if q else 224 if cuda else 128)
    args.repeats = args.repeats or (2 if q else 30 if cuda else 5)
    args.epochs = args.epochs if args.epochs is not None else (1 if q else 5)
    if q:
        if args.models == ",".join(BENCH_MODELS):
            args.models = "resnet18,alexnet"
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in args.models:
        if m not in BENCH_MODELS:
            raise SystemExit(f"demo: unknown model {m!r}; choose from {', '.join(BENCH_MODELS)}")
    backends = args.backends or ("fastconv,torch eager" if q else ",".join(BACKENDS))
    args.backends = [b.strip() for b in backends.split(",") if b.strip()]
    for b in args.backends:
        if b not in BACKENDS:
            raise SystemExit(f"demo: unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    return args


# ---------------------------------------------------------------- 1. training
def digits_split(size, device, seed=0, limit=None):
    """Digits as (N, 1, size, size) float tensors in [-1, 1]; fixed stratified 1437/360 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target)
    tr, te = train_test_split(range(len(y)), test_size=360, random_state=seed, stratify=d.target)
    if limit:
        tr, te = tr[:limit], te[:max(limit // 4, 10)]
    tr, te = torch.tensor(tr), torch.tensor(te)
    return (x[tr].to(device), y[tr].to(device)), (x[te].to(device), y[te].to(device))


@torch.no_grad()
def accuracy(model, x, y, batch=256):
    model.eval()
    correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(y), batch))
    return correct / len(y)


def train_one(name, sort, train, test, epochs, batch, device, seed):
    from tqdm import tqdm

    from fastconv import models
    torch.manual_seed(seed)
    model = models.cifar_resnet20(sort=sort, num_classes=10, in_channels=1).to(device)
    xtr, ytr = train
    steps = epochs * ((len(ytr) + batch - 1) // batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.25)
    g = torch.Generator().manual_seed(seed)
    history, t0, c0 = [], time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=g).to(device)
        bar = tqdm(range(0, len(ytr), batch), desc=f"{name} epoch {epoch + 1}/{epochs}", unit="batch",
                   file=sys.stdout, dynamic_ncols=True, mininterval=1.0)
        for i in bar:
            idx = perm[i:i + batch]
            xb = xtr[idx]
            # light augmentation: random shifts of up to 2 pixels (digits are centred)
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(xb), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.close()
        acc = accuracy(model, *test)
        history.append(acc)
        print(f"  {name}: epoch {epoch + 1} test accuracy {acc:.4f}", flush=True)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    acc = history[-1] if history else accuracy(model, *test)
    model.fuse()
    acc_fused = accuracy(model, *test)
    return dict(model=name, sort=sort, epochs=epochs, train_seconds=train_s, train_cpu_seconds=train_cpu,
                test_accuracy=acc,
                test_accuracy_fused=acc_fused, history=history, params=sum(p.numel() for p in model.parameters()))


# ---------------------------------------------------------------- 2. benchmark
def bench_model(name, args, dtype):
    import torchvision

    import fastconv
    torch.manual_seed(args.seed)
    ref = randomize_bn(getattr(torchvision.models, name)(weights=None)).eval()
    ref = ref.to(args.device, dtype)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=args.device, dtype=dtype)
    cuda = args.device.type == "cuda"
    if cuda:  # on the GPU every backend runs channels_last (tensor-core layout; benchmarks/BASELINES.md's setting)
        ref = ref.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fns, compile_s = {}, {}
    for b in args.backends:
        if b in peers.INFERENCE_PEERS:
            why = ("runs on the CPU in float32 only" if cuda or dtype != torch.float32
                   else peers.missing([b]).get(b))
            if why:
                print(f"  ({b} skipped: {why})", flush=True)
                continue
            t0 = time.perf_counter()
            try:
                fns[b] = peers.runner(b, ref, x)
            except Exception as exc:  # noqa: BLE001 - an export the peer cannot take (ONNX's adaptive pooling)
                print(f"  ({b} skipped: {peers.reason(exc)})", flush=True)
                continue
            compile_s[b] = time.perf_counter() - t0
        elif b == "torch eager":
            fns[b] = ref
        elif b == "fastconv":
            # Activations channels_last, the layout fastconv's kernels read and write without
            # transposes (on the CPU the input stays NCHW; the first conv switches layout).
            fns[b] = fastconv.convert(ref, channels_last=True)
        else:
            fns[b] = torch.compile(ref)
    out = {}
    with torch.inference_mode():
        for b, f in fns.items():  # first call: warm-up, and compilation for torch.compile
            t0 = time.perf_counter()
            out[b] = f(x).float()
            sync(args.device)
            if b.startswith("torch.compile") or b in peers.INFERENCE_PEERS:  # build + first call
                compile_s[b] = compile_s.get(b, 0.0) + time.perf_counter() - t0
        # interleaved, so drifting machine load hits every backend alike
        times = interleaved({b: (lambda f=f: f(x)) for b, f in fns.items()}, args.device, args.repeats, warmup=1)
    base = out.get("torch eager", next(iter(out.values())))
    scale = base.abs().max().item()
    rows = []
    for b in fns:
        med = float(times[b])
        rows.append(dict(model=name, backend=b, batch=args.batch, image_size=args.image_size, dtype=str(dtype),
                         ms_median=med * 1e3, ms_min=times[b].min * 1e3, ms_quartiles=times[b].quartiles_ms(),
                         images_per_s=args.batch / med,
                         max_abs_diff=(out[b] - base).abs().max().item(), logit_scale=scale,
                         agree=torch.allclose(out[b], base, rtol=2e-2 if dtype != torch.float32 else 1e-3,
                                              atol=(5e-2 if dtype != torch.float32 else 1e-3) * max(scale, 1)),
                         compile_seconds=compile_s.get(b)))
    eager = next((r["ms_median"] for r in rows if r["backend"] == "torch eager"), None)
    for r in rows:
        r["speedup_vs_eager"] = eager / r["ms_median"] if eager else None
    return rows


# ---------------------------------------------------------------- 3. report
def _table(rows, cols):
    return table(rows, [(head, fmt, "") for head, fmt in cols], markdown=True)


def plot(results, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []
    bench = results.get("benchmark") or []
    if bench:
        models = list(dict.fromkeys(r["model"] for r in bench))
        backends = list(dict.fromkeys(r["backend"] for r in bench))
        fig, ax = plt.subplots(figsize=(7, 4))
        w = 0.8 / len(backends)
        for i, b in enumerate(backends):
            vals = [next((r["images_per_s"] for r in bench if r["model"] == m and r["backend"] == b), 0)
                    for m in models]
            ax.bar([j + i * w for j in range(len(models))], vals, w, label=b)
        ax.set_xticks([j + w * (len(backends) - 1) / 2 for j in range(len(models))], models)
        ax.set_ylabel("images / s (higher is better)")
        r0 = bench[0]
        ax.set_title(f"Inference throughput, {results['machine']['device']}, batch {r0['batch']}, "
                     f"{r0['image_size']}x{r0['image_size']}, {r0['dtype'].replace('torch.', '')}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "throughput.png"), dpi=110)
        plt.close(fig)
        files.append("throughput.png")
    train = results.get("training") or []
    if train and any(t["history"] for t in train):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for t in train:
            ax.plot(range(1, len(t["history"]) + 1), t["history"], marker="o", label=t["model"])
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy")
        ax.set_title("digits (360 test images)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "accuracy.png"), dpi=110)
        plt.close(fig)
        files.append("accuracy.png")
    return files


def write_report(results, out, plots):
    lines = ["# fastconv demo report", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by "
             f"`python -m fastconv demo {' '.join(results['argv'])}` in {results['total_seconds']:.0f} s.", ""]
    lines += ["## Machine and versions", "", _table(list(results["machine"].items()),
                                                   [("item", lambda r: r[0]), ("value", lambda r: str(r[1]))]), ""]
    train = results.get("training")
    if train:
        s = results["train_setup"]
        lines += ["## Training: cifar_resnet20 on scikit-learn digits", "",
                  f"{s['train']} train / {s['test']} test images (8x8 upsampled to {s['size']}x{s['size']}, "
                  f"1 channel, stratified split, seed {s['seed']}); SGD+Nesterov, OneCycle lr 0.1, batch "
                  f"{s['batch']}, random shifts of up to 2 px; all convolutions, ReLUs, SORT and pooling run "
                  "on fastconv (BatchNorm and the final Linear on torch).", "",
                  _table(train, [("model", lambda r: r["model"]), ("params", lambda r: f"{r['params']:,}"),
                                 ("epochs", lambda r: str(r["epochs"])),
                                 ("train time (s)", lambda r: f"{r['train_seconds']:.1f}"),
                                 ("CPU time (s)", lambda r: f"{r['train_cpu_seconds']:.1f}"),
                                 ("test accuracy", lambda r: f"{r['test_accuracy']:.4f}"),
                                 ("test accuracy, fused inference", lambda r: f"{r['test_accuracy_fused']:.4f}")]),
                  ""]
    bench = results.get("benchmark")
    if bench:
        r0 = bench[0]
        lines += ["## Inference benchmark", "",
                  f"torchvision nets (weights=None, eval, BatchNorm running stats randomized), batch {r0['batch']}, "
                  f"{r0['image_size']}x{r0['image_size']}, {r0['dtype']}, device {results['machine']['device']}; "
                  f"median of {results['bench_setup']['repeats']} forward passes interleaved across backends "
                  "after one warm-up. fastconv = `fastconv.convert(model)` (convs, pools, ReLUs, fully connected layers on fastconv; "
                  "BatchNorm folded; conv->bn->(add)->relu as one fused kernel; `channels_last=True`: "
                  "activations channels_last from the first conv on; on the CPU the input and torch's nets "
                  "as given, NCHW; on CUDA every backend and the input channels_last). Logits are compared with "
                  "torch eager (max |diff| relative to the largest logit). The inference peers, each set up as "
                  "its documentation recommends at the same thread count (fastconv.peers): torch.compile with "
                  "freezing (channels_last), ONNX Runtime and OpenVINO (the model exported to ONNX; float32). "
                  "'first call' is the build and first call of torch.compile (short when the inductor cache is "
                  "warm from an earlier run) and of the peers (export, session).", "",
                  _table(bench, [("model", lambda r: r["model"]), ("backend", lambda r: r["backend"]),
                                 ("ms / batch (median)", lambda r: f"{r['ms_median']:.1f}"),
                                 ("ms (min)", lambda r: f"{r['ms_min']:.1f}"),
                                 ("images / s", lambda r: f"{r['images_per_s']:.1f}"),
                                 ("vs eager", lambda r: f"{r['speedup_vs_eager']:.2f}x" if r["speedup_vs_eager"]
                                  else "-"),
                                 ("logits agree", lambda r: f"{'yes' if r['agree'] else 'NO'} "
                                  f"({r['max_abs_diff'] / max(r['logit_scale'], 1e-30):.1e})"),
                                 ("first call (s)", lambda r: f"{r['compile_seconds']:.0f}"
                                  if r["compile_seconds"] else "-")]), ""]
    steps = results.get("train_benchmark")
    if steps:
        lines += ["## Training steps (CPU)", "",
                  "torchvision nets in train mode, 112x112, 100 classes: forward, cross-entropy, backward, SGD "
                  "with momentum. fastconv = `fastconv.convert(model, channels_last=True)`; the peers are the "
                  "same net in torch eager (NCHW and channels_last) and under torch.compile, all in one process, "
                  f"interleaved, median of {results['bench_setup']['repeats']} steps after one; the first step's "
                  "loss matches torch eager's (checked). 'vs fastest' = the fastest peer's time / fastconv's.", "",
                  format_train_table(steps, markdown=True), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))


def _missing(modules):
    """The names among `modules` that cannot be imported."""
    import importlib
    missing = []
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            missing.append(m)
    return missing


def main(args):
    t_start = time.perf_counter()
    argv = getattr(args, "argv", None) or sys.argv[2:]
    args = _settle(args)
    needed = [] if args.skip_train else ["sklearn", "tqdm"]  # the digits data set, progress bars
    missing = _missing(needed)
    if missing:
        print(f"fastconv demo: training needs {', '.join(missing)}: pip install scikit-learn tqdm "
              "(or fastconv[demo]), or pass --skip-train", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    results = {"argv": argv, "machine": machine_info(args.device)}
    print(f"fastconv demo on {args.device} ({results['machine']['cpu']}, {torch.get_num_threads()} threads); "
          f"report in {args.out}/", flush=True)
    if not args.skip_train:
        train, test = digits_split(args.train_size, args.device, args.seed, limit=128 if args.quick else None)
        results["train_setup"] = dict(train=len(train[1]), test=len(test[1]), size=args.train_size, seed=args.seed,
                                      batch=args.train_batch)
        print(f"[1/4] training on digits: {len(train[1])} train / {len(test[1])} test, "
              f"{args.train_size}x{args.train_size}, {args.epochs} epochs", flush=True)
        results["training"] = [train_one(name, sort, train, test, args.epochs, args.train_batch, args.device,
                                         args.seed)
                               for name, sort in (("cifar_resnet20", False), ("cifar_resnet20-SORT", True))]
        for r in results["training"]:
            print(f"  {r['model']:20s} test accuracy {r['test_accuracy']:.4f} (fused inference "
                  f"{r['test_accuracy_fused']:.4f}), {r['train_seconds']:.0f} s", flush=True)
    if not args.skip_bench:
        dtype = getattr(torch, args.dtype)
        results["bench_setup"] = dict(repeats=args.repeats, batch=args.batch, image_size=args.image_size)
        print(f"[2/4] inference benchmark: {', '.join(args.models)} x {', '.join(args.backends)}; batch "
              f"{args.batch}, {args.image_size}x{args.image_size}, {args.dtype}, {args.repeats} repeats", flush=True)
        results["benchmark"] = []
        for name in args.models:
            rows = bench_model(name, args, dtype)
            results["benchmark"] += rows
            for r in rows:
                print(f"  {name:9s} {r['backend']:22s} {r['ms_median']:9.1f} ms  {r['images_per_s']:8.1f} img/s  "
                      f"agree={r['agree']}", flush=True)
    if not args.skip_bench and not args.skip_train_bench and args.device.type == "cpu":
        models = ("resnet18",) if args.quick else ("resnet18", "resnet50")
        compile_peer = "torch.compile" in args.backends
        print(f"[3/4] training steps: {', '.join(models)}, batch {args.batch}, 112x112, against torch eager"
              f"{' and torch.compile' if compile_peer else ''}", flush=True)
        results["train_benchmark"] = train_rows([args.batch], args.repeats, compile_peer=compile_peer, memory=False,
                                                models=models)
    print("[4/4] writing the report", flush=True)
    results["total_seconds"] = time.perf_counter() - t_start
    with open(os.path.join(args.out, "results.json"), "w") as f:  # the results first: plotting may fail
        json.dump(results, f, indent=1, default=str)
    plots = []
    if _missing(["matplotlib"]):
        print("fastconv demo: no plots (matplotlib is not installed: pip install matplotlib, or "
              "fastconv[demo]); the report has the tables", file=sys.stderr)
    else:
        plots = plot(results, args.out)
    write_report(results, args.out, plots)
    print(f"done in {results['total_seconds']:.0f} s: {args.out}/report.md", flush=True)
    bad = [r for r in results.get("benchmark", []) if not r["agree"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(add_arguments(argparse.ArgumentParser(description=__doc__)).parse_args()))
