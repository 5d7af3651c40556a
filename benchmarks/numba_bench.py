"""Numba CPU backend against the native kernels (where built) and torch, timed in the same run,
interleaved. First-call cost is reported separately: compile (empty numba cache) and load (warm
cache), each measured in a fresh process.

  python benchmarks/numba_bench.py [--repeats 7] [--batch 1] [--threads N] [--quick] [--json out.json]
  python3 benchmarks/numba_bench.py --device cuda --batch 32   # numba.cuda against the native CUDA kernels

On CUDA every sample is timed to its completion (CUDA events), so the numba launch cost counts; float32
convolutions run with TF32 off (the native exact-float32 path, issue 6's peer).

On a shared machine use --threads 1: with more threads than free cores every parallel region waits
for its threads to be scheduled and all three implementations time at the scheduler's quantum.
"""
import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as TF

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import fastconv  # noqa: E402
from fastconv import backends  # noqa: E402
from fastconv.bench import LAYER_SUITE, write_results  # noqa: E402
from fastconv.timing import interleaved, table  # noqa: E402

# the layers of the one suite (fastconv.bench.LAYER_SUITE) this comparison runs
CONVS = ["r50_l1_3x3", "r50_l1_1x1", "r50_l3_3x3", "r50_conv1", "alex_conv2", "mb2_dw_112", "mb2_dw_56s2",
         "mb2_dw_7"]


def _train(f, *inputs):
    """Forward and backward of f on fresh leaves (what a training step runs): the gradient seed is
    fixed, made once."""
    seed = f(*inputs).detach().clone().normal_()
    leaves = [t.detach().requires_grad_() for t in inputs]

    def run():
        for t in leaves:
            t.grad = None
        f(*leaves).backward(seed)
    return run


def cases(batch, quick, backward=True, device="cpu"):
    """(name, fastconv callable, torch callable) per timed row: forward, then forward + backward."""
    g = torch.Generator().manual_seed(0)
    convs = CONVS[:2] if quick else CONVS

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device)
    for name in convs:
        c, h, k, r, s, p, grp = LAYER_SUITE[name]
        x = randn(batch, c, h, h)
        w = randn(k, c // grp, r, r) / (c // grp * r * r) ** 0.5
        yield (f"conv2d {name}", lambda x=x, w=w, s=s, p=p, grp=grp: fastconv.conv2d(x, w, None, s, p, 1, grp),
               lambda x=x, w=w, s=s, p=p, grp=grp: TF.conv2d(x, w, None, s, p, 1, grp))
    x = randn(batch, 64, 112, 112)
    y = randn(batch, 64, 112, 112)
    pools = [("max_pool2d 3x3s2", lambda t, F: F.max_pool2d(t, 3, 2, 1)),
             ("avg_pool2d 2x2s2", lambda t, F: F.avg_pool2d(t, 2)),
             ("adaptive_avg_pool2d 1", lambda t, F: F.adaptive_avg_pool2d(t, 1)),
             ("relu", lambda t, F: F.relu(t))]
    for name, f in pools:
        yield name, lambda f=f: f(x, fastconv), lambda f=f: f(x, TF)
    yield ("sort sqrt", lambda: fastconv.sort(x, y), lambda: x + y + torch.sqrt(x.relu() * y.relu() + 0.01))
    if not backward:
        return
    for name, c, h, k, r, s, p in convs[:1] + convs[2:3]:
        x = randn(batch, c, h, h)
        w = randn(k, c, r, r) / (c * r * r) ** 0.5
        yield (f"fwd+bwd conv2d {name}", _train(lambda x, w, s=s, p=p: fastconv.conv2d(x, w, None, s, p), x, w),
               _train(lambda x, w, s=s, p=p: TF.conv2d(x, w, None, s, p), x, w))
    x = randn(batch, 64, 112, 112)
    for name, f in pools:
        yield (f"fwd+bwd {name}", _train(lambda t, f=f: f(t, fastconv), x), _train(lambda t, f=f: f(t, TF), x))
    yield ("fwd+bwd sort sqrt", _train(fastconv.sort, x, y),
           _train(lambda a, b: a + b + torch.sqrt(a.relu() * b.relu() + 0.01), x, y))


def _under(backend, fn):
    def run():
        with fastconv.use_backend(backend):
            return fn()
    return run


def _native_runs(fn):
    if not backends.available("native"):
        return False
    try:
        _under("native", fn)()
        return True
    except (NotImplementedError, RuntimeError):  # op declared but no CPU kernel yet
        return False


FIRST_CALL = """
import time, torch, numpy as np
t0 = time.perf_counter()
import fastconv.numba as fnb
from fastconv.numba import kernels
t_import = time.perf_counter() - t0
x = np.random.rand(1, 8, 16, 16).astype(np.{dt}); w = np.random.rand(8, 8, 3, 3).astype(np.{dt})
sync = lambda: None
if "{device}" == "cuda":  # CUDA arrays (torch tensors): the numba.cuda kernels
    x, w = torch.from_numpy(x).cuda(), torch.from_numpy(w).cuda()
    sync = torch.cuda.synchronize
out = {{"import": t_import}}
for name, f in [("conv2d", lambda: fnb.conv2d(x, w, None, 1, 1)), ("max_pool2d", lambda: fnb.max_pool2d(x, 3, 2, 1)),
                ("avg_pool2d", lambda: fnb.avg_pool2d(x, 2)), ("relu", lambda: fnb.relu(x)),
                ("sort", lambda: fnb.sort(x, x))]:
    t0 = time.perf_counter(); f(); sync(); t1 = time.perf_counter(); f(); sync(); t2 = time.perf_counter()
    out[name] = (t1 - t0, t2 - t1)
print(repr(out))
"""


def first_call(dtype="float32", device="cpu"):
    """{'compile': {...}, 'cached': {...}}: first/second call seconds per op, fresh processes."""
    res = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        for label in ("compile", "cached"):
            out = subprocess.run([sys.executable, "-c", FIRST_CALL.format(dt=dtype, device=device)], env=env,
                                 cwd=ROOT, capture_output=True, text=True, check=True)
            res[label] = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 (our own repr output)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-first-call", action="store_true")
    ap.add_argument("--no-backward", action="store_true", help="forward rows only")
    ap.add_argument("--threads", type=int, help="threads for numba, torch and the native kernels (OpenMP)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise SystemExit("numba_bench: --device cuda but torch sees no CUDA device")
        torch.backends.cudnn.allow_tf32 = False  # exact float32 everywhere (fastconv follows this flag)
        torch.backends.cuda.matmul.allow_tf32 = False
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"native {'yes' if backends.available('native') else 'no'}")
    rows = []
    if not args.no_first_call:
        fc = first_call(device=args.device)
        print("\nfirst call, fresh process (s): op, compile (empty cache) 1st / 2nd call, cached 1st / 2nd call")
        print(f"  import fastconv.numba: {fc['compile']['import']:.2f} / cached {fc['cached']['import']:.2f}")
        for op in ("conv2d", "max_pool2d", "avg_pool2d", "relu", "sort"):
            c, w = fc["compile"][op], fc["cached"][op]
            print(f"  {op:12s} {c[0]:8.2f} / {c[1] * 1e3:7.2f} ms   {w[0]:8.3f} / {w[1] * 1e3:7.2f} ms")
        rows.append({"first_call": fc})
    print("\nmedian (min) ms per call; ratios of the medians (of the minima)")

    def ms(key):
        return lambda r: f"{r[key][0] * 1e3:.2f} ({r[key][1] * 1e3:.2f})" if r[key] else None

    def ratio(a, b):
        return lambda r: f"{r[a][0] / r[b][0]:.2f} ({r[a][1] / r[b][1]:.2f})" if r[a] and r[b] else None

    timed_rows = []
    for name, fn, ref in cases(args.batch, args.quick, not args.no_backward, args.device):
        native_fn = _under("native", fn) if _native_runs(fn) else None
        timed = interleaved([_under("numba", fn), native_fn, ref], "cuda" if cuda else "cpu", args.repeats)
        t_nb, t_nat, t_ref = ((float(t), t.min) if t is not None else None for t in timed)
        timed_rows.append({"op": name, "numba_s": t_nb, "native_s": t_nat, "torch_s": t_ref})
        print(f"  {name}", file=sys.stderr, flush=True)
    print(table(timed_rows, [("op", "op", ""), ("numba", ms("numba_s"), ""), ("native", ms("native_s"), ""),
                             ("torch", ms("torch_s"), ""), ("numba/native", ratio("numba_s", "native_s"), ""),
                             ("numba/torch", ratio("numba_s", "torch_s"), "")]))
    rows += timed_rows
    if args.json:
        write_results(args.json, args.device, rows=rows)


if __name__ == "__main__":
    main()
