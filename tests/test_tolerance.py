"""fastconv.tolerance: the one tolerance model (growth with the reduction length, scale, NaN/inf)."""
import math

import pytest
import torch

from fastconv import tolerance


def test_growth_with_reduction_and_scale():
    atol1, rtol = tolerance.tol(torch.float32)
    atol100, rtol100 = tolerance.tol(torch.float32, reduction=100, scale=3.0)
    assert atol100 == pytest.approx(atol1 * 10 * 3) and rtol100 == rtol
    assert tolerance.tol(torch.float64, reduction=10 ** 6) == tolerance.TOLERANCES[torch.float64]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16, "tf32"])
def test_rounding_passes_and_a_real_error_fails(dtype):
    ref = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rounded = ref.to(dtype if dtype != "tf32" else torch.float16).double()  # TF32 keeps float16's mantissa
    assert tolerance.excess(rounded, ref, dtype) <= 1
    wrong = rounded.clone()
    wrong[17] += 0.05  # one element off by more than any dtype's rounding of a value ~1 (bfloat16: ~0.004)
    assert tolerance.excess(wrong, ref, dtype) > 1


def test_nan_and_inf_must_match():
    ref = torch.tensor([1.0, float("nan"), float("inf"), -float("inf")], dtype=torch.float64)
    assert tolerance.excess(ref.clone(), ref, torch.float32) == 0.0
    for i, v in ((0, float("nan")), (1, 1.0), (2, -float("inf")), (3, 3.0)):
        got = ref.clone()
        got[i] = v
        assert tolerance.excess(got, ref, torch.float32) == math.inf
    assert tolerance.excess(ref[:2], ref, torch.float32) == math.inf  # shapes differ


def test_output_scale_and_overrides():
    ref = torch.tensor([0.5, -40.0, float("inf")])
    assert tolerance.output_scale(ref) == 40.0 and tolerance.output_scale(torch.zeros(3)) == 1.0
    got = ref + torch.tensor([1e-5, 0.0, 0.0])
    assert tolerance.excess(got, ref, torch.float32) < 1
    assert tolerance.excess(got, ref, torch.float32, atol=1e-6, rtol=0.0) > 1
