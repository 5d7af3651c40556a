"""Shared test machinery: devices, CPU code paths (ISA), dtypes (tolerances: fastconv.tolerance),
layouts, a verbose comparator and `check_op`, which runs one fastconv op forward and backward and
compares it with torch.nn.functional and with the NumPy float64 reference (fastconv.reference)."""
import contextlib

import numpy as np
import pytest
import torch

import fastconv
from fastconv import tolerance

HALF = (torch.bfloat16, torch.float16)
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

# ---------------------------------------------------------------- devices, ISA paths
CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu,
                                              pytest.mark.skipif(not CUDA, reason="no CUDA device")])]
ISAS = ["portable", "avx2", "avx512"]


def _native():
    from fastconv import _ext
    return _ext.require_native()


@contextlib.contextmanager
def isa_path(name):
    """Force a CPU code path for the block; skips the test when the CPU lacks it."""
    C = _native()
    before = C.get_isa()
    if not C.set_isa(name):
        C.set_isa(before)
        pytest.skip(f"this CPU lacks the {name} code path")
    try:
        yield name
    finally:
        C.set_isa(before)


@contextlib.contextmanager
def winograd(on):
    """Winograd on (the default) or off for the native 3x3 float32 layers within the block."""
    C = _native()
    before = C.set_winograd(on)
    try:
        yield on
    finally:
        C.set_winograd(before)


@pytest.fixture(params=ISAS)
def isa(request):
    with isa_path(request.param) as name:
        yield name


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


BACKENDS = ["native", "numba", "reference"]


def skip_unless_backend(backend, device):
    """Skip the test where `backend` cannot run (numba not installed, no native build), and the NumPy
    reference backend on CUDA tensors (it runs them through host memory: nothing of the GPU tested)."""
    from fastconv import backends
    if not backends.available(backend) or (device == "cuda" and backend == "reference"):
        pytest.skip(f"backend {backend} not available here")


# ---------------------------------------------------------------- data and layouts
LAYOUTS = ["nchw", "channels_last", "sliced", "permuted"]


def rand(rng, shape, low=-2.0, high=2.0):
    """Random float64 values in [low, high), never all zeros."""
    return rng.uniform(low, high, size=shape)


def quantize(a, dtype):
    """The float64 values `a` takes once stored in `dtype`, so every reference sees the same inputs."""
    return torch.from_numpy(np.asarray(a, dtype=np.float64)).to(dtype).double().numpy()


def make(a, dtype, device="cpu", layout="nchw", requires_grad=False):
    """A tensor holding the values of array `a` in the given memory layout:
    nchw: contiguous; channels_last: dense NHWC strides (4-D only); sliced: a strided view into a
    larger buffer (every other column); permuted: a non-contiguous permute of a transposed buffer."""
    t = torch.from_numpy(np.array(a, dtype=np.float64, order="C")).to(dtype=dtype, device=device)
    if layout == "channels_last" and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced" and t.dim() >= 1:
        big = torch.full(t.shape[:-1] + (2 * t.shape[-1] + 1,), float("nan"), dtype=dtype, device=device)
        big[..., 1::2] = t
        t = big[..., 1::2]
    elif layout == "permuted" and t.dim() >= 2:
        t = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return t.requires_grad_(requires_grad)


def to_np(t):
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


# ---------------------------------------------------------------- comparison
def assert_close(actual, expected, dtype, reduction=1, what="output", atol=None, rtol=None):
    """Elementwise |a - e| <= atol + rtol |e| with NaN matching NaN and Inf matching Inf of the same
    sign; on failure reports shapes, counts, the worst and the first mismatching indices."""
    a = to_np(actual) if isinstance(actual, torch.Tensor) else np.asarray(actual, dtype=np.float64)
    e = to_np(expected) if isinstance(expected, torch.Tensor) else np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    d_atol, d_rtol = tolerance.tol(dtype, reduction)  # the one tolerance model
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    bad, err = (t.numpy() for t in tolerance.mismatches(torch.from_numpy(a), torch.from_numpy(e), atol, rtol))
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    inf_a, inf_e = np.isinf(a), np.isinf(e)
    finite = ~(nan_a | nan_e | inf_a | inf_e)
    if not bad.any():
        return
    idx = np.argwhere(bad)
    lines = [f"{what}: {len(idx)} of {a.size} elements differ (dtype {dtype}, atol {atol:.3g}, rtol {rtol:.3g}, "
             f"reduction length {reduction})"]
    if (nan_a != nan_e).any():
        lines.append(f"  NaN mismatch at {np.argwhere(nan_a != nan_e)[:5].tolist()} "
                     f"(actual NaNs {int(nan_a.sum())}, expected NaNs {int(nan_e.sum())})")
    if (inf_a != inf_e).any():
        lines.append(f"  Inf mismatch at {np.argwhere(inf_a != inf_e)[:5].tolist()}")
    if finite.any():
        worst = np.unravel_index(np.argmax(np.where(finite, err, -1)), a.shape)
        lines.append(f"  max abs error {err[worst]:.4g} at {tuple(int(i) for i in worst)}: "
                     f"actual {a[worst]!r}, expected {e[worst]!r}")
    for i in idx[:8]:
        i = tuple(int(v) for v in i)
        lines.append(f"  at {i}: actual {a[i]!r}, expected {e[i]!r}")
    pytest.fail("\n".join(lines))


def same_format(actual, expected, what="output"):
    """The output's memory format matches torch's: channels_last where torch's is channels_last only,
    contiguous where torch's is contiguous only; where torch's is both (size-1 dims) either will do,
    and where it is neither (torch keeps other dense strides for elementwise ops) fastconv may give
    either of its two formats."""
    if actual.dim() != 4:
        return
    cl = torch.channels_last
    a_cl, a_c = actual.is_contiguous(memory_format=cl), actual.is_contiguous()
    e_cl, e_c = expected.is_contiguous(memory_format=cl), expected.is_contiguous()
    if e_cl != e_c:
        ok = a_cl if e_cl else a_c
    else:
        ok = a_cl or a_c
    assert ok, (f"{what}: memory format differs from torch's: strides {actual.stride()} (channels_last {a_cl}, "
                f"contiguous {a_c}) vs torch {expected.stride()} (channels_last {e_cl}, contiguous {e_c})")


def check_op(fast_fn, torch_fn, arrays, dtype, device="cpu", layout="nchw", grad=None, ref_fwd=None,
             ref_bwd=None, reduction=1, grad_reduction=None, rng=None, check_format=True, layouts=None):
    """Run `fast_fn(*tensors)` and `torch_fn(*tensors)` on the same values and compare outputs, output
    memory format and (for the arrays flagged in `grad`) input gradients; also compare with the
    float64 NumPy reference: `ref_fwd(*arrays) -> array`, `ref_bwd(grad_out, *arrays) -> list of
    grads for the flagged arrays`. Half-precision results are compared with torch's float32 result on
    the same (rounded) values. `layouts` gives a layout per array (default: `layout` for 4-D ones)."""
    rng = rng or np.random.default_rng(0)
    grad = grad or [False] * len(arrays)
    arrays = [quantize(a, dtype) for a in arrays]
    layouts = layouts or [layout] * len(arrays)
    want_grad = any(grad) and dtype is not None
    ours_in = [make(a, dtype, device, lay, g) for a, lay, g in zip(arrays, layouts, grad)]
    ref_dtype = torch.float32 if dtype in HALF else dtype
    theirs_in = [make(a, ref_dtype, device, lay, g) for a, lay, g in zip(arrays, layouts, grad)]
    ours = fast_fn(*ours_in)
    theirs = torch_fn(*theirs_in)
    assert ours.dtype == dtype, f"output dtype {ours.dtype}, expected {dtype}"
    assert ours.device.type == torch.device(device).type
    if check_format:
        same_format(ours, theirs)
    # Outputs are fully determined: a second run gives the same bits.
    again = fast_fn(*ours_in)
    assert torch.equal(ours.detach(), again.detach()) or (
        torch.isnan(ours).any() and torch.equal(torch.nan_to_num(ours.detach()), torch.nan_to_num(again.detach()))), \
        "two runs on the same input differ"
    assert_close(ours, theirs, dtype, reduction, "output vs torch")
    ref_y = None
    if ref_fwd is not None:
        ref_y = ref_fwd(*arrays)
        assert_close(ours, ref_y, dtype, reduction, "output vs NumPy reference")
        if not np.isnan(ref_y).any():
            assert not torch.isnan(ours).any(), "NaN in the output where the reference has none"
    if not want_grad or ours.numel() == 0 and not ours.requires_grad:
        return ours
    g = rand(rng, tuple(ours.shape))
    g = quantize(g, dtype)
    ours.backward(make(g, dtype, device, layout))
    theirs.backward(make(g, ref_dtype, device, layout))
    red = grad_reduction or reduction
    ref_grads = ref_bwd(g, *arrays) if ref_bwd is not None else None
    k = 0
    for i, flag in enumerate(grad):
        if not flag:
            continue
        got, exp = ours_in[i].grad, theirs_in[i].grad
        assert got is not None, f"no gradient for argument {i}"
        assert got.dtype == dtype
        assert_close(got, exp, dtype, red, f"grad of argument {i} vs torch")
        if ref_grads is not None:
            assert_close(got, ref_grads[k], dtype, red, f"grad of argument {i} vs NumPy reference")
        k += 1
    return ours


def conv_pads(padding, kernel, dilation=(1, 1)):
    """torch's conv2d padding argument -> (top, bottom, left, right), computed here independently of
    fastconv: 'same' puts the odd extra row/column at the bottom/right."""
    dilation = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        out = []
        for k, d in zip(kernel, dilation):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]
        return tuple(out)
    ph, pw = (padding, padding) if isinstance(padding, int) else tuple(padding)
    return (ph, ph, pw, pw)


def layout_args(layout, n):
    """Per-argument layouts for a conv-like op from one test layout name: 'x_cl' / 'w_cl' put only
    the input / only the weight in channels_last."""
    if layout == "x_cl":
        return ["channels_last"] + ["nchw"] * (n - 1)
    if layout == "w_cl":
        return ["nchw", "channels_last"] + ["nchw"] * (n - 2)
    return [layout] * n
