"""python -m fastconv check: randomized cross-checks of every operator against torch in float64.

Random awkward shapes (odd sizes, groups, depthwise, strides, dilations, asymmetric and "same"
padding, ceil mode, NCHW / channels_last / non-contiguous operands) run through the active backend
on the chosen device; outputs and gradients are compared with torch.nn.functional evaluated in
float64 on the CPU from the same (rounded) values. One line per operator: cases, failures and the
worst error as a fraction of its tolerance; exit status 1 on any failure. Run it on a new machine,
build or GPU before trusting it (`--device cuda` checks every CUDA dtype, TF32 on and off)."""
import argparse
import math
import random
import sys
import warnings

import torch
import torch.nn.functional as F

import fastconv
from fastconv import _cli, tolerance




def _layout(t, kind):
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "strided":  # every other column of a wider tensor
        wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        view = wide[..., ::2]
        view.copy_(t)
        return view
    return t.contiguous()


def _err(got, ref, dtype, reduction):
    """The error over what fastconv.tolerance allows, at the reference's scale (inputs of every
    magnitude, rounded before the sums)."""
    if got.shape != ref.shape:
        return math.inf
    return tolerance.excess(got, ref, dtype, reduction, tolerance.output_scale(ref))


class _Case:
    """Inputs made once in float64, rounded to `dtype`; `ours` are on the device in their layouts and
    collect gradients, `refs` are float64 CPU copies of the same values."""

    def __init__(self, rng, dtype, device, shapes, grad=True, reduction=1, grad_reduction=None):
        # the longest sums behind an output element and behind each input's gradient
        self.gen, self.grad, self.reduction = rng["gen"], grad, reduction
        self.grad_reduction = grad_reduction or [reduction] * len(shapes)
        self.ours, self.refs = [], []
        for shape in shapes:
            if shape is None:
                self.ours.append(None)
                self.refs.append(None)
                continue
            base = torch.randn(shape, dtype=torch.float64, generator=rng["gen"]).to(dtype)
            kind = rng["py"].choice(["contiguous", "channels_last", "strided"]) if len(shape) == 4 else "contiguous"
            self.refs.append(base.double().clone().requires_grad_(grad))  # its own leaf, whatever the dtype
            self.ours.append(_layout(base.to(device), kind).requires_grad_(grad))

    def compare(self, run, reference, dtype):
        """Worst error / tolerance over the output(s) and, with gradients, every input gradient
        (dtype: the computation's, or "tf32")."""
        out = run(*self.ours)
        ref = reference(*self.refs)
        outs = out if isinstance(out, tuple) else (out,)
        refs = ref if isinstance(ref, tuple) else (ref,)
        worst = max(_err(o, r, dtype, self.reduction) for o, r in zip(outs, refs))
        if not self.grad or not torch.isfinite(refs[0]).all():  # no gradient through -inf windows
            return worst
        g = torch.randn(refs[0].shape, dtype=torch.float64, generator=self.gen).to(outs[0].dtype)
        outs[0].backward(g.to(outs[0].device))
        refs[0].backward(g.double())
        for o, r, length in zip(self.ours, self.refs, self.grad_reduction):
            if o is not None and r.grad is not None:  # a missing gradient of ours fails
                worst = max(worst, math.inf if o.grad is None else _err(o.grad, r.grad, dtype, length))
        return worst


def _sort_reference(a, b, mode, eps):
    """SORT as torch ops: a + b + sqrt(relu(a) relu(b) + eps), or + relu(a) relu(b)."""
    prod = F.relu(a) * F.relu(b)
    return a + b + (torch.sqrt(prod + eps) if mode == "sqrt" else prod)


def _conv_geometry(r):
    while True:
        groups = r.choice([1, 1, 2, 3, "depthwise"])
        if groups == "depthwise":
            groups = r.choice([4, 8, 16])
            cg, kg = 1, r.choice([1, 2])
        else:
            cg, kg = r.choice([1, 3, 8, 16, 24]), r.choice([1, 5, 8, 16, 32])
        k = (r.choice([1, 2, 3, 5]), r.choice([1, 3, 5, 7]))
        stride, dil = (r.choice([1, 1, 2]), r.choice([1, 2, 3])), (r.choice([1, 1, 2]), r.choice([1, 2]))
        pad = "same" if stride == (1, 1) and r.random() < 0.15 else (r.randint(0, 3), r.randint(0, 3))
        n, h, w = r.choice([1, 2, 3]), r.randint(1, 19), r.randint(1, 23)
        g = dict(x=(n, cg * groups, h, w), w=(kg * groups, cg, *k), stride=stride, padding=pad, dilation=dil,
                 groups=groups)
        try:  # torch's own shape rules decide (output size >= 1), on shape-only tensors
            g["y"] = tuple(F.conv2d(torch.empty(g["x"], device="meta"), torch.empty(g["w"], device="meta"), None,
                                    stride, pad, dil, groups).shape)
        except RuntimeError:
            continue
        return g


def _conv_reductions(g, n_inputs):
    """The longest sums behind a convolution's results: (an output element: C/groups * R * S terms;
    per input, its gradient: K/groups * R * S for the input, N * P * Q for the weight and every
    per-channel vector, the residual's none)."""
    k, cg, r, s = g["w"]
    n, _, p, q = g["y"]
    per_input = [k // g["groups"] * r * s] + [n * p * q] * (n_inputs - 1)
    if n_inputs == 6:  # conv2d_fused's residual: elementwise
        per_input[-1] = 1
    return dict(reduction=cg * r * s, grad_reduction=per_input)


def _conv(rng, dtype, device):
    g = _conv_geometry(rng["py"])
    bias = (g["w"][0],) if rng["py"].random() < 0.5 else None
    case = _Case(rng, dtype, device, [g["x"], g["w"], bias], **_conv_reductions(g, 3))
    args = (g["stride"], g["padding"], g["dilation"], g["groups"])
    return case, (lambda x, w, b: fastconv.conv2d(x, w, b, *args)), (lambda x, w, b: F.conv2d(x, w, b, *args))


def _fused(rng, dtype, device):
    r = rng["py"]
    g = _conv_geometry(r)
    k = g["w"][0]
    combine = r.choice([None, "add", "sort"])
    vec = [(k,) if r.random() < 0.5 else None for _ in range(3)]  # bias, scale, shift
    relu, mode, eps = r.random() < 0.5, r.choice(["sqrt", "product"]), r.choice([0.01, 1.0])
    # In half precision the ReLU inside the epilogue (relu, or SORT's relu(z)) sees the rounded z: where
    # z is within rounding of 0 its mask may differ from the float64 one, and the gradient with it
    # (by the whole incoming gradient, not by a rounding error): there the outputs alone are compared.
    half = dtype in (torch.float16, torch.bfloat16)
    grad = not (half and (relu or combine == "sort"))
    case = _Case(rng, dtype, device, [g["x"], g["w"], *vec, g["y"] if combine else None], grad,
                 **_conv_reductions(g, 6))
    args = (g["stride"], g["padding"], g["dilation"], g["groups"])

    def ours(x, w, b, scale, shift, res):
        return fastconv.conv2d_fused(x, w, b, *args, scale=scale, shift=shift, residual=res, combine=combine,
                                     relu=relu, mode=mode, eps=eps)

    def reference(x, w, b, scale, shift, res):
        z = F.conv2d(x, w, None, *args)
        per_k = (1, -1, 1, 1)
        for v, op in ((scale, torch.mul), (shift, torch.add), (b, torch.add)):
            z = z if v is None else op(z, v.view(per_k))
        if combine == "add":
            z = z + res
        elif combine == "sort":
            z = _sort_reference(res, z, mode, eps)
        return F.relu(z) if relu else z
    return case, ours, reference


def _pool_args(r, dilation=True):
    """A pooling input shape and window that torch accepts (output size >= 1)."""
    while True:
        shape = (r.choice([1, 2, 3]), r.choice([1, 3, 8, 17, 32]), r.randint(1, 25), r.randint(1, 25))
        kh, kw = r.randint(1, 5), r.randint(1, 5)
        stride = None if r.random() < 0.2 else (r.randint(1, 3), r.randint(1, 3))
        pad = (r.randint(0, kh // 2), r.randint(0, kw // 2))
        dil = (r.randint(1, 2), r.randint(1, 2)) if dilation else (1, 1)
        ceil = r.random() < 0.4
        try:
            F.max_pool2d(torch.empty(shape, device="meta"), (kh, kw), stride, pad, dil, ceil)
        except RuntimeError:
            continue
        return shape, (kh, kw), stride, pad, dil, ceil


def _max_pool(rng, dtype, device):
    r = rng["py"]
    shape, k, s, p, d, ceil = _pool_args(r)
    # Rounding to half precision makes ties, which kernels may break in another order than torch's
    # CPU loop: there the values alone are compared.
    half = dtype in (torch.float16, torch.bfloat16)
    with_idx = not half and r.random() < 0.5
    case = _Case(rng, dtype, device, [shape], grad=not half)

    def ours(x):
        y = fastconv.max_pool2d(x, k, s, p, d, ceil, return_indices=with_idx)
        return (y[0], y[1].double()) if with_idx else y

    def reference(x):
        y = F.max_pool2d(x, k, s, p, d, ceil, return_indices=with_idx)
        return (y[0], y[1].double()) if with_idx else y
    return case, ours, reference


def _avg_pool(rng, dtype, device):
    r = rng["py"]
    shape, k, s, p, _, ceil = _pool_args(r, dilation=False)
    cip, div = r.random() < 0.5, r.choice([None, None, 3])
    case = _Case(rng, dtype, device, [shape], reduction=k[0] * k[1])
    return (case, lambda x: fastconv.avg_pool2d(x, k, s, p, ceil, cip, div),
            lambda x: F.avg_pool2d(x, k, s, p, ceil, cip, div))


def _adaptive(rng, dtype, device):
    r = rng["py"]
    shape = (r.choice([1, 2]), r.choice([1, 3, 16, 33]), r.randint(1, 20), r.randint(1, 20))
    out = (r.choice([1, 2, 3, 5, 7, None]), r.choice([1, 2, 4, 6]))
    window = [-(-i // o) + 1 if o else 1 for i, o in zip(shape[2:], out)]  # the widest window
    case = _Case(rng, dtype, device, [shape], reduction=window[0] * window[1])
    return case, lambda x: fastconv.adaptive_avg_pool2d(x, out), lambda x: F.adaptive_avg_pool2d(x, out)


def _relu(rng, dtype, device):
    shape = rng["py"].choice([(7,), (3, 5), (2, 3, 9, 11), (2, 32, 8, 8)])
    return _Case(rng, dtype, device, [shape]), fastconv.relu, F.relu


def _sort(rng, dtype, device):
    r = rng["py"]
    shape = r.choice([(7,), (3, 5), (2, 3, 9, 11), (2, 32, 8, 8)])
    mode, eps = r.choice(["sqrt", "product"]), r.choice([0.01, 1e-3, 1.0])
    case = _Case(rng, dtype, device, [shape, shape])
    return case, lambda a, b: fastconv.sort(a, b, mode, eps), lambda a, b: _sort_reference(a, b, mode, eps)


OPS = {"conv2d": _conv, "conv2d_fused": _fused, "max_pool2d": _max_pool, "avg_pool2d": _avg_pool,
       "adaptive_avg_pool2d": _adaptive, "relu": _relu, "sort": _sort}


def _dtypes(device):
    """(label, dtype, allow_tf32) per computation the device offers."""
    if device.type == "cuda":
        return [("float64", torch.float64, False), ("float32", torch.float32, False),
                ("tf32", torch.float32, True), ("float16", torch.float16, False), ("bfloat16", torch.bfloat16, False)]
    return [("float64", torch.float64, False), ("float32", torch.float32, False),
            ("float16", torch.float16, False), ("bfloat16", torch.bfloat16, False)]


def run(device="cpu", backend=None, cases=30, seed=0, ops=None, out=sys.stdout):
    """Check every operator in `ops` (default: all) on `cases` random cases per dtype; returns the rows
    (op, dtype, cases, failures, worst error / tolerance) and prints them."""
    device = torch.device(device)
    ops = ops or list(OPS)
    rows = []
    tf32_before = torch.backends.cudnn.allow_tf32
    try:
        with fastconv.use_backend(backend or fastconv.get_backend()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on "same" padding with even kernels
            print(f"fastconv check: backend {fastconv.get_backend()}, device {device}, {cases} cases per "
                  f"operator and dtype, seed {seed}", file=out)
            print(f"{'operator':22s} {'dtype':9s} {'cases':>5s} {'failed':>6s} {'worst/tol':>9s}", file=out)
            for name in ops:
                for label, dtype, tf32 in _dtypes(device):
                    torch.backends.cudnn.allow_tf32 = tf32
                    key = "tf32" if tf32 else dtype
                    gen = torch.Generator().manual_seed(seed)
                    rng = {"py": random.Random(f"{seed}-{name}-{label}"), "gen": gen}
                    worst, failed = 0.0, 0
                    for _ in range(cases):
                        case, ours, reference = OPS[name](rng, dtype, device)
                        try:
                            e = case.compare(ours, reference, key)
                        except Exception as exc:  # a refused valid case is a failure too
                            e = math.inf
                            print(f"  {name} {label}: {type(exc).__name__}: {exc}"[:300], file=out)
                        worst = max(worst, e)
                        failed += e > 1
                    rows.append((name, label, cases, failed, worst))
                    print(f"{name:22s} {label:9s} {cases:5d} {failed:6d} {worst:9.3f}", file=out)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32_before
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastconv check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return main_args(parser.parse_args(argv))


def add_arguments(parser):
    parser.add_argument("--device", default="cpu", type=_cli.device, help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--backend", default=None, type=_cli.backend,
                        help="native, numba or reference (default: the active one)")
    parser.add_argument("--cases", type=_cli.positive_int, default=30,
                        help="random cases per operator and dtype (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ops", default=None, help=f"comma-separated subset of {', '.join(OPS)}")


def main_args(args):
    ops = args.ops.split(",") if args.ops else None
    unknown = [o for o in ops or [] if o not in OPS]
    if unknown:
        print(f"fastconv check: unknown operator(s) {', '.join(unknown)}; choose from {', '.join(OPS)}",
              file=sys.stderr)
        return 2
    rows = run(args.device, args.backend, args.cases, args.seed, ops)
    failed = sum(r[3] for r in rows)
    print(f"{'FAILED' if failed else 'ok'}: {failed} of {sum(r[2] for r in rows)} cases outside tolerance")
    return 1 if failed else 0
