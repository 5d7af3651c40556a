"""The one tolerance model of every correctness check: the tests, `fastconv check` and the GPU
verification (benchmarks/gpu_bench.py) all compare a result computed in `dtype` with a float64
reference by this rule, element by element:

    |got - ref| <= atol(dtype) * sqrt(L) * S + rtol(dtype) * |ref|

- L, the reduction length: how many rounded terms are summed into the element (C*R*S/groups for a
  convolution's output, N*P*Q for its weight gradient, the window for pooling, 1 for elementwise
  ops). Rounding errors of a sum of L terms grow like sqrt(L) times the terms' size; float64 is
  given no growth (its errors stay far below its tolerance).
- S, the scale: 1 where the values are of magnitude ~1 (the tests' random data), or
  `output_scale(ref)` = max(1, max |ref|) where the operands are rounded before they are summed
  (tensor cores, TF32, Winograd's transforms, inputs of unknown magnitude): the error then follows
  the size of the terms, not of each element.
- NaN must stand where the reference has NaN, and an infinity where it has the same infinity.
"""
import math

import torch

__all__ = ["TOLERANCES", "tol", "output_scale", "mismatches", "excess"]

# (atol, rtol) at reduction length 1 and scale 1. "tf32": float32 inputs rounded to TF32 (10-bit
# mantissa, as float16) by the GPU's tensor cores.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-4),
    "tf32": (1e-3, 1e-3),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}


def tol(dtype, reduction=1, scale=1.0):
    """(atol, rtol) for results computed in dtype (or "tf32") with reduction length `reduction` and
    value scale `scale`."""
    atol, rtol = TOLERANCES[dtype]
    growth = 1.0 if dtype == torch.float64 else math.sqrt(max(1, reduction))
    return atol * growth * scale, rtol


def output_scale(ref):
    """max(1, largest finite |ref|): the scale S of a result whose terms were rounded before the sum."""
    ref = ref.detach()
    finite = ref[torch.isfinite(ref)]
    return max(1.0, finite.abs().max().item()) if finite.numel() else 1.0


def mismatches(got, ref, atol, rtol):
    """(bad, err): a boolean mask of the elements outside |got - ref| <= atol + rtol |ref| or whose
    NaN / infinity does not match the reference's, and |got - ref| (0 where not both finite); float64
    CPU tensors."""
    a = got.detach().to("cpu", torch.float64)
    e = ref.detach().to("cpu", torch.float64)
    nan_a, nan_e, inf_a, inf_e = a.isnan(), e.isnan(), a.isinf(), e.isinf()
    finite = ~(nan_a | nan_e | inf_a | inf_e)
    err = torch.where(finite, (a - e).abs(), torch.zeros_like(a))
    bad = (nan_a != nan_e) | (inf_a != inf_e) | (inf_a & inf_e & (a.sign() != e.sign()))
    bad |= finite & (err > atol + rtol * e.abs())
    return bad, err


def excess(got, ref, dtype, reduction=1, scale=1.0, atol=None, rtol=None):
    """The worst error as a fraction of what the model allows (<= 1 passes): max over the elements of
    |got - ref| / (atol + rtol |ref|); inf where a NaN or infinity does not match, or shapes differ.
    atol / rtol replace the model's (a check that a path is more exact than its dtype requires)."""
    if tuple(got.shape) != tuple(ref.shape):
        return math.inf
    m_atol, m_rtol = tol(dtype, reduction, scale)
    atol, rtol = (m_atol if atol is None else atol), (m_rtol if rtol is None else rtol)
    bad, err = mismatches(got, ref, atol, rtol)
    if (bad & (err == 0)).any():  # a NaN or infinity out of place
        return math.inf
    if err.numel() == 0:
        return 0.0
    e = ref.detach().to("cpu", torch.float64)
    allowed = atol + rtol * torch.where(e.isfinite(), e.abs(), torch.zeros_like(e))
    ratio = torch.where(err == 0, torch.zeros_like(err), err / allowed)  # allowed 0: any error is inf
    return ratio.max().item()
