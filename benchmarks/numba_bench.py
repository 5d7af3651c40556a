"""Numba CPU backend against the native kernels (where built) and torch, timed in the same run,
interleaved. First-call cost is reported separately: compile (empty numba cache) and load (warm
cache), each measured in a fresh process.

  python benchmarks/numba_bench.py [--repeats 7] [--batch 1] [--quick] [--json out.json]
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as TF

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import fastconv  # noqa: E402
from fastconv import backends  # noqa: E402

CONVS = [  # name, C, H, K, R, stride, pad
    ("r50_l1_3x3", 64, 56, 64, 3, 1, 1),
    ("r50_l1_1x1", 64, 56, 256, 1, 1, 0),
    ("r50_l3_3x3", 256, 14, 256, 3, 1, 1),
    ("r50_conv1_7x7s2", 3, 224, 64, 7, 2, 3),
    ("alex_conv2_5x5", 64, 27, 192, 5, 1, 2),
]


def cases(batch, quick):
    g = torch.Generator().manual_seed(0)
    convs = CONVS[:2] if quick else CONVS
    for name, c, h, k, r, s, p in convs:
        x = torch.randn(batch, c, h, h, generator=g)
        w = torch.randn(k, c, r, r, generator=g) / (c * r * r) ** 0.5
        yield (f"conv2d {name}", lambda x=x, w=w, s=s, p=p: fastconv.conv2d(x, w, None, s, p),
               lambda x=x, w=w, s=s, p=p: TF.conv2d(x, w, None, s, p))
    x = torch.randn(batch, 64, 112, 112, generator=g)
    y = torch.randn(batch, 64, 112, 112, generator=g)
    yield ("max_pool2d 3x3s2", lambda: fastconv.max_pool2d(x, 3, 2, 1), lambda: TF.max_pool2d(x, 3, 2, 1))
    yield ("avg_pool2d 2x2s2", lambda: fastconv.avg_pool2d(x, 2), lambda: TF.avg_pool2d(x, 2))
    yield ("adaptive_avg_pool2d 1", lambda: fastconv.adaptive_avg_pool2d(x, 1), lambda: TF.adaptive_avg_pool2d(x, 1))
    yield ("relu", lambda: fastconv.relu(x), lambda: TF.relu(x))
    yield ("sort sqrt", lambda: fastconv.sort(x, y),
           lambda: x + y + torch.sqrt(x.relu() * y.relu() + 0.01))


def time_interleaved(fns, repeats, warmup=2):
    """Median seconds of each callable (None: skipped), round-robin so load drift hits all alike."""
    for _ in range(warmup):
        for f in fns:
            if f is not None:
                f()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for f, acc in zip(fns, times):
            if f is not None:
                t0 = time.perf_counter()
                f()
                acc.append(time.perf_counter() - t0)
    return [statistics.median(t) if t else None for t in times]


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
out = {{"import": t_import}}
for name, f in [("conv2d", lambda: fnb.conv2d(x, w, None, 1, 1)), ("max_pool2d", lambda: fnb.max_pool2d(x, 3, 2, 1)),
                ("avg_pool2d", lambda: fnb.avg_pool2d(x, 2)), ("relu", lambda: fnb.relu(x)),
                ("sort", lambda: fnb.sort(x, x))]:
    t0 = time.perf_counter(); f(); t1 = time.perf_counter(); f(); t2 = time.perf_counter()
    out[name] = (t1 - t0, t2 - t1)
print(repr(out))
"""


def first_call(dtype="float32"):
    """{'compile': {...}, 'cached': {...}}: first/second call seconds per op, fresh processes."""
    res = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        for label in ("compile", "cached"):
            out = subprocess.run([sys.executable, "-c", FIRST_CALL.format(dt=dtype)], env=env, cwd=ROOT,
                                 capture_output=True, text=True, check=True)
            res[label] = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 (our own repr output)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-first-call", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"native {'yes' if backends.available('native') else 'no'}")
    rows = []
    if not args.no_first_call:
        fc = first_call()
        print("\nfirst call, fresh process (s): op, compile (empty cache) 1st / 2nd call, cached 1st / 2nd call")
        print(f"  import fastconv.numba: {fc['compile']['import']:.2f} / cached {fc['cached']['import']:.2f}")
        for op in ("conv2d", "max_pool2d", "avg_pool2d", "relu", "sort"):
            c, w = fc["compile"][op], fc["cached"][op]
            print(f"  {op:12s} {c[0]:8.2f} / {c[1] * 1e3:7.2f} ms   {w[0]:8.3f} / {w[1] * 1e3:7.2f} ms")
        rows.append({"first_call": fc})
    print(f"\n{'op':28s} {'numba ms':>9s} {'native ms':>9s} {'torch ms':>9s} {'numba/native':>12s} {'numba/torch':>11s}")
    for name, fn, ref in cases(args.batch, args.quick):
        numba_fn = _under("numba", fn)
        native_fn = _under("native", fn) if _native_runs(fn) else None
        t_nb, t_nat, t_ref = time_interleaved([numba_fn, native_fn, ref], args.repeats)
        nat = f"{t_nat * 1e3:9.3f}" if t_nat else f"{'n/a':>9s}"
        r_nat = f"{t_nb / t_nat:12.2f}" if t_nat else f"{'n/a':>12s}"
        print(f"{name:28s} {t_nb * 1e3:9.3f} {nat} {t_ref * 1e3:9.3f} {r_nat} {t_nb / t_ref:11.2f}")
        rows.append({"op": name, "numba_ms": t_nb * 1e3, "native_ms": t_nat and t_nat * 1e3, "torch_ms": t_ref * 1e3})
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
