"""Time fastconv's CPU pooling / ReLU / SORT ops against torch in the same run.

    python benchmarks/pool_eltwise_cpu.py [--threads 2] [--reps 20] [--ops relu,sort,...]

Ours, torch eager and torch.compile of the same expression (the fair peer of an elementwise chain,
which eager runs op by op) are interleaved (fastconv.timing) and the best (or median) time of each is
reported, so noise from other processes on the machine hits all alike. GB/s counts the bytes an ideal kernel must move
(inputs read once, outputs written once)."""
import argparse
import sys
import time

import torch
import torch.nn.functional as F

import fastconv  # noqa: F401  (registers torch.ops.fastconv)
from fastconv import _C
from fastconv.bench import compiled_peer
from fastconv.timing import interleaved, table

ops = torch.ops.fastconv
CL = torch.channels_last


def cases():
    """(name, shape, layout, ours(x), torch(x), bytes(x)) per timed op."""
    def nbytes(*ts):
        return sum(t.numel() * t.element_size() for t in ts)

    mp = dict(k=[3, 3], s=[2, 2], p=[1, 1], d=[1, 1])
    for fmt in ("nchw", "cl"):
        yield (f"max_pool2d(3,2,1) fwd", (8, 64, 112, 112), fmt,
               lambda x: ops.max_pool2d_fwd(x, mp["k"], mp["s"], mp["p"], mp["d"], False),
               lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True),
               lambda x, y: nbytes(x, *y))
    for fmt in ("nchw", "cl"):
        def mk_bwd():
            state = {}
            def prep(x):
                y, i = F.max_pool2d(x, 3, 2, 1, return_indices=True)
                state["g"], state["i"] = torch.randn_like(y), i
            def ours(x):
                return ops.max_pool2d_bwd(state["g"], state["i"], list(x.shape))
            def ref(x):
                return torch.ops.aten.max_pool2d_with_indices_backward(state["g"], x, [3, 3], [2, 2], [1, 1], [1, 1],
                                                                       False, state["i"])
            return prep, ours, ref, lambda x, y: nbytes(state["g"], state["i"], y)
        prep, ours, ref, nb = mk_bwd()
        yield ("max_pool2d(3,2,1) bwd", (8, 64, 112, 112), fmt, ours, ref, nb, prep)
    for k, s, p in ((3, 1, 1), (2, 2, 0)):
        for fmt in ("nchw", "cl"):
            yield (f"avg_pool2d({k},{s},{p}) fwd", (8, 256, 28, 28), fmt,
                   lambda x, k=k, s=s, p=p: ops.avg_pool2d_fwd(x, [k, k], [s, s], [p, p], False, True, None),
                   lambda x, k=k, s=s, p=p: F.avg_pool2d(x, k, s, p), lambda x, y: nbytes(x, y))
            def mk(k=k, s=s, p=p):
                st = {}
                def prep(x):
                    st["g"] = torch.randn_like(F.avg_pool2d(x, k, s, p))
                ours = lambda x: ops.avg_pool2d_bwd(st["g"], list(x.shape), [k, k], [s, s], [p, p], False, True, None)
                ref = lambda x: torch.ops.aten.avg_pool2d_backward(st["g"], x, [k, k], [s, s], [p, p], False, True, None)
                return prep, ours, ref, lambda x, y: nbytes(st["g"], y)
            prep, ours, ref, nb = mk()
            yield (f"avg_pool2d({k},{s},{p}) bwd", (8, 256, 28, 28), fmt, ours, ref, nb, prep)
    for fmt in ("nchw", "cl"):
        yield ("adaptive_avg_pool2d(1) fwd", (8, 2048, 7, 7), fmt, lambda x: ops.adaptive_avg_pool2d_fwd(x, [1, 1]),
               lambda x: F.adaptive_avg_pool2d(x, 1), lambda x, y: nbytes(x, y))
        st = {}
        def prep(x, st=st):
            st["g"] = torch.randn(x.shape[0], x.shape[1], 1, 1).contiguous(memory_format=x_fmt(x))
        yield ("adaptive_avg_pool2d(1) bwd", (8, 2048, 7, 7), fmt,
               lambda x, st=st: ops.adaptive_avg_pool2d_bwd(st["g"], list(x.shape)),
               lambda x, st=st: torch.ops.aten._adaptive_avg_pool2d_backward(st["g"], x), lambda x, y, st=st: nbytes(st["g"], y), prep)
    shape = (8, 256, 56, 56)
    yield ("relu fwd", shape, "nchw", lambda x: ops.relu_fwd(x), lambda x: F.relu(x), lambda x, y: nbytes(x, y))
    st = {}
    def prep_r(x, st=st):
        st["g"], st["r"] = torch.randn_like(x), F.relu(x)
    yield ("relu bwd", shape, "nchw", lambda x, st=st: ops.relu_bwd(st["g"], st["r"]),
           lambda x, st=st: torch.ops.aten.threshold_backward(st["g"], st["r"], 0), lambda x, y, st=st: nbytes(st["g"], st["r"], y), prep_r)
    sb = {}
    def prep_s(x, sb=sb):
        sb["b"], sb["g"] = torch.randn_like(x), torch.randn_like(x)
    yield ("sort(sqrt) fwd", shape, "nchw", lambda x, sb=sb: ops.sort_fwd(x, sb["b"], 0, 0.01),
           lambda x, sb=sb: x + sb["b"] + torch.sqrt(F.relu(x) * F.relu(sb["b"]) + 0.01),
           lambda x, y, sb=sb: nbytes(x, sb["b"], y), prep_s)
    yield ("sort(product) fwd", shape, "nchw", lambda x, sb=sb: ops.sort_fwd(x, sb["b"], 1, 0.0),
           lambda x, sb=sb: x + sb["b"] + F.relu(x) * F.relu(sb["b"]),
           lambda x, y, sb=sb: nbytes(x, sb["b"], y), prep_s)

    @torch.enable_grad()
    def sort_ref_bwd(x, sb=sb):
        a = x.detach().requires_grad_()
        b = sb["b"].detach().requires_grad_()
        y = a + b + torch.sqrt(F.relu(a) * F.relu(b) + 0.01)
        return torch.autograd.grad(y, (a, b), sb["g"])
    yield ("sort(sqrt) bwd", shape, "nchw", lambda x, sb=sb: ops.sort_bwd(sb["g"], x, sb["b"], 0, 0.01),
           sort_ref_bwd, lambda x, y, sb=sb: nbytes(x, sb["b"], sb["g"], *y), prep_s)


def x_fmt(x):
    return CL if (x.dim() == 4 and not x.is_contiguous()) else torch.contiguous_format


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stat", choices=("min", "median"), default="min",
                    help="min is robust when other processes share the cores; median is typical")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time (for --threads 1 on a loaded machine, immune to descheduling)")
    ap.add_argument("--no-compile", action="store_true",
                    help="skip the torch.compile peer (the same expression compiled; seconds per op to compile)")
    ap.add_argument("--ops", default=None, help="substring filter on the op names (comma-separated)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, fastconv isa {_C.get_isa()}, "
          f"{args.stat} of {args.rounds}x{args.reps} {args.clock}-clock runs")
    rows = []
    filt = args.ops.split(",") if args.ops else None
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for case in cases():
        name, shape, fmt, ours, ref, nbytes = case[:6]
        prep = case[6] if len(case) > 6 else None
        if filt and not any(f in name for f in filt):
            continue
        x = torch.randn(shape)
        if fmt == "cl":
            x = x.contiguous(memory_format=CL)
        if prep:
            prep(x)
        with torch.no_grad():
            y = ours(x)
            ref(x)
            # interleaved, so drifting machine load hits both alike
            compiled = None if args.no_compile else compiled_peer(lambda: ref(x))
            to, tt, tc = interleaved([lambda: ours(x), lambda: ref(x), compiled], repeats=args.rounds * args.reps,
                                     warmup=0, clock=clock)
        mo, mt, mc = (None if t is None else (t.min if args.stat == "min" else float(t)) * 1e3 for t in (to, tt, tc))
        rows.append(dict(op=name, shape="x".join(map(str, shape)), layout=fmt, ours=mo, torch=mt, ratio=mt / mo,
                         gbs=nbytes(x, y) / (mo * 1e-3) / 1e9, compile=mc, vs_compile=mc / mo if mc else None))
        print(f"  {name} {fmt}: {mt / mo:.2f}x", file=sys.stderr, flush=True)
    print(table(rows, [("op", "op", ""), ("shape", "shape", ""), ("layout", "layout", ""), ("ours ms", "ours", ".3f"),
                       ("torch ms", "torch", ".3f"), ("ratio", "ratio", ".2f"), ("GB/s", "gbs", ".1f"),
                       ("compile ms", "compile", ".3f"), ("vs compile", "vs_compile", ".2f")]))


if __name__ == "__main__":
    main()
