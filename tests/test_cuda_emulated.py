"""The CUDA kernels of conv2d_kernels.cu, pool_kernels.cu and eltwise_kernels.cu run on the CPU under
the host emulation (tests/cuda_emu.py, csrc/tests/cuda_emu): real threads per block, a real
__syncthreads barrier, alignment checks on every 16-byte vector access, grid limits. Each call goes
through the kernel layer's launchers exactly as the torch hosts call them, on random awkward shapes in
every dtype and layout, against torch in float64; outputs are poisoned (NaN) and fenced by guard
elements, so an unwritten element or a write out of bounds fails. The tensor-core kernels run on both
engines (the emulated device's architecture picks one): an emulated WMMA (whole fragments per thread)
and an emulated wgmma (operands decoded from the shared-memory descriptors, read when issued and again
when retired), with cp.async copies that land only when their group is waited for: tiling, gathers,
swizzles, tails, the pipeline's waits and the epilogue are checked here, speed on the GPU."""
import ctypes
import math
import os
import random
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import HALF
from fastconv import tolerance

pytestmark = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="no C++ compiler")

DT = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
TENSOR_CORE = 0  # fastconv::cuda::ConvPath::kTensorCore
GUARD = 24       # elements fenced on each side of every output
SEEDS = range(int(os.environ.get("FASTCONV_EMU_SEEDS", "4")))  # random batches per test; more for a deeper sweep


@pytest.fixture(scope="module")
def emu():
    import cuda_emu
    return cuda_emu.load()


def call(emu, fn, *args):
    getattr(emu, fn)(*args)
    err = emu.emu_take_error().decode()
    assert not err, f"{fn}: {err}"


def t4(t):
    return (ctypes.c_int64 * 8)(*t.shape, *t.stride())


def ints(*v):
    return (ctypes.c_int64 * len(v))(*v)


def ptr(t):
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


class Buf:
    """A 4-D (or flat) tensor inside a larger buffer: `shift` elements off 16-byte alignment, guard
    elements on both sides holding `fill`; NCHW or channels_last."""

    def __init__(self, shape, dtype, cl=False, fill=float("nan"), data=None, shift=0):
        n = math.prod(shape)
        self.base = torch.full((n + 2 * GUARD + shift,), fill, dtype=dtype)
        self.lo, self.hi = GUARD + shift, GUARD + shift + n
        flat = self.base[self.lo:self.hi]
        if len(shape) == 4 and cl:
            N, C, H, W = shape
            self.t = flat.view(N, H, W, C).permute(0, 3, 1, 2)
        else:
            self.t = flat.view(shape)
        if data is not None:
            self.t.copy_(data)
        self.fill = fill

    def guards_intact(self):
        g = torch.cat([self.base[:self.lo], self.base[self.hi:]])
        return bool((torch.isnan(g) if math.isnan(self.fill) else g == self.fill).all())


def rand(shape, dtype, cl=False, shift=0, lo=-2.0, hi=2.0):
    data = torch.rand(shape, dtype=torch.float64) * (hi - lo) + lo
    return Buf(shape, dtype, cl, data=data.to(dtype), shift=shift)


def leaf(t):
    """A float64 copy of t that collects a gradient (t.double() of a float64 tensor is t itself)."""
    return t.detach().double().clone().requires_grad_()


def assert_close(got, ref, dtype, what, reduction=1, scale=1.0, atol=None):
    """fastconv.tolerance's model (dtype may be "tf32"; scale: see output_scale)."""
    e = tolerance.excess(got, ref, dtype, reduction, scale, atol=atol, rtol=None if atol is None else 0.0)
    assert e <= 1, f"{what}: error {e:.3g} x the tolerance of {dtype} (reduction length {reduction})"


def written(buf, what):
    """No write outside the tensor (unwritten elements inside stay NaN and fail the comparison)."""
    assert buf.guards_intact(), f"{what}: wrote outside the tensor"


# ---------------------------------------------------------------- convolution: SIMT, depthwise, direct
def conv_case(rng):
    """A random grouped / depthwise convolution that stays off the tensor-core path."""
    while True:
        dt = rng.choice(list(DT))
        depthwise = rng.random() < 0.3
        groups = rng.choice([1, 3, 4, 8]) if depthwise else rng.choice([1, 1, 2, 3])
        cg = 1 if depthwise else rng.choice([1, 2, 3, 5, 7, 16, 17])
        kg = rng.choice([1, 2, 3]) if depthwise else rng.choice([1, 2, 5, 9, 17, 70])
        if dt in HALF and cg % 8 == 0:
            continue  # tensor cores
        n, h, w = rng.choice([1, 2, 3]), rng.randint(1, 9), rng.randint(1, 9)
        r, s = rng.randint(1, 4), rng.randint(1, 4)
        stride, dil = (rng.randint(1, 3), rng.randint(1, 3)), (rng.randint(1, 2), rng.randint(1, 2))
        pad = [rng.randint(0, 2) for _ in range(4)]  # top, bottom, left, right
        p = (h + pad[0] + pad[1] - dil[0] * (r - 1) - 1) // stride[0] + 1
        q = (w + pad[2] + pad[3] - dil[1] * (s - 1) - 1) // stride[1] + 1
        if p < 1 or q < 1:
            continue
        return dict(dt=dt, groups=groups, x=(n, cg * groups, h, w), w=(kg * groups, cg, r, s), y=(n, kg * groups, p, q),
                    stride=stride, dil=dil, pad=pad, cl=[rng.random() < 0.5 for _ in range(3)])


def conv_ref(x, w, c):
    pad = c["pad"]
    xp = F.pad(x, (pad[2], pad[3], pad[0], pad[1]))
    return F.conv2d(xp, w, None, c["stride"], 0, c["dil"], c["groups"])


def epilogue_ref(z, bias, scale, shift, res, combine, mode, relu, eps=0.01):
    """conv2d_fused's epilogue in float64: z*scale + shift + bias, combined with the residual (add, or
    sort(residual, z)), relu."""
    per_k = (1, -1, 1, 1)
    if scale:
        z = z * scale.t.double().view(per_k)
    if shift:
        z = z + shift.t.double().view(per_k)
    if bias:
        z = z + bias.t.double().view(per_k)
    if combine == 1:
        z = z + res.t.double()
    elif combine == 2:
        r = res.t.double()
        prod = r.clamp(min=0) * z.clamp(min=0)
        z = r + z + (torch.sqrt(prod + eps) if mode == 0 else prod)
    return z.clamp(min=0) if relu else z


@pytest.mark.parametrize("seed", SEEDS)
def test_conv_kernels_emulated(emu, seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    emu.emu_set_arch(80)  # no wgmma: exact float32 stays on the CUDA-core kernels tested here
    for _ in range(10):
        c = conv_case(rng)
        dt, (clx, clw, cly) = c["dt"], c["cl"]
        x, w = rand(c["x"], dt, clx), rand(c["w"], dt, clw)
        y = Buf(c["y"], dt, cly)
        geo = ints(c["groups"], *c["stride"], c["pad"][0], c["pad"][2], *c["dil"])
        info = str(c)
        if emu.emu_conv_path(DT[dt], t4(x.t), t4(w.t), t4(y.t), geo, 0) == TENSOR_CORE:
            continue
        k = c["y"][1]
        bias, scale, shift = [rand((k,), dt) if rng.random() < 0.4 else None for _ in range(3)]
        combine, mode, relu = rng.choice([0, 0, 1, 2]), rng.choice([0, 1]), rng.random() < 0.5
        res = rand(c["y"], dt, cly) if combine else None
        call(emu, "emu_conv_fwd", DT[dt], ptr(x.t), t4(x.t), ptr(w.t), t4(w.t), ptr(y.t), t4(y.t), geo,
             *[ptr(v.t if v else None) for v in (bias, scale, shift, res)], combine, mode, 0.01, int(relu), 0, 132)
        xr = leaf(x.t)
        wr = leaf(w.t)
        out = conv_ref(xr, wr, c)
        ref = epilogue_ref(out.detach(), bias, scale, shift, res, combine, mode, relu)
        written(y, "forward " + info)
        n, cg, kh, kw = c["x"][0], c["w"][1], c["w"][2], c["w"][3]
        npq = n * c["y"][2] * c["y"][3]
        assert_close(y.t, ref, dt, "forward " + info, reduction=cg * kh * kw)

        dy = rand(c["y"], dt, cly)
        out.backward(dy.t.double())
        dx = Buf(c["x"], dt, clx)
        call(emu, "emu_conv_bwd_input", DT[dt], ptr(dy.t), t4(dy.t), ptr(w.t), t4(w.t), ptr(dx.t), t4(dx.t), geo)
        written(dx, "grad_input " + info)
        assert_close(dx.t, xr.grad, dt, "grad_input " + info, reduction=c["w"][0] // c["groups"] * kh * kw)

        sms = rng.choice([1, 132])  # few SMs: one split; many: the reduction split across blocks
        nbytes = emu.emu_conv_bwd_weight_workspace(DT[dt], t4(x.t), t4(w.t), t4(dy.t), geo, 0, sms)
        ws = torch.full((nbytes // 4 + 1,), float("nan"), dtype=torch.float32)  # poisoned: every partial written
        dw = Buf(c["w"], dt, clw)
        call(emu, "emu_conv_bwd_weight", DT[dt], ptr(dy.t), t4(dy.t), ptr(x.t), t4(x.t), ptr(dw.t), t4(dw.t), geo,
             ptr(ws), 0, sms)
        written(dw, "grad_weight " + info)
        assert_close(dw.t, wr.grad, dt, "grad_weight " + info, reduction=npq)

        nbytes = emu.emu_conv_bwd_bias_workspace(DT[dt], t4(dy.t), sms)
        ws = torch.full((nbytes // 4 + 1,), float("nan"), dtype=torch.float32)
        db = Buf((k,), dt)
        call(emu, "emu_conv_bwd_bias", DT[dt], ptr(dy.t), t4(dy.t), ptr(db.t), ptr(ws), sms)
        written(db, "grad_bias " + info)
        assert_close(db.t, dy.t.double().sum((0, 2, 3)), dt, "grad_bias " + info, reduction=npq)
    emu.emu_set_arch(90)


# ---------------------------------------------------------------- convolution: tensor cores (WMMA)
TC_DTYPES = [torch.float16, torch.bfloat16, torch.float32]  # float32 as TF32


def tc_check(got, ref, dt, what, reduction, atol=None):
    """A tensor-core result against float64: the operands are rounded before the sum (float32 as
    TF32), so the error follows the output's scale (fastconv.tolerance.output_scale)."""
    scale = tolerance.output_scale(ref)
    assert_close(got, ref, "tf32" if dt == torch.float32 else dt, what, reduction, scale,
                 None if atol is None else atol * scale)


def tc_conv(emu, dt, xs, ws, stride=(1, 1), pad=(0, 0, 0, 0), dil=(1, 1), groups=1, y_cl=True, epilogue=None,
            sms=1, tf32=1, tol=None):
    """One forward on the tensor-core path (asserted), compared with torch in float64; returns (x, w)."""
    x, w = rand(xs, dt, True), rand(ws, dt, True, lo=-0.5, hi=0.5)
    c = dict(pad=list(pad), stride=stride, dil=dil, groups=groups)
    ref = conv_ref(x.t.double(), w.t.double(), c)
    y = Buf(tuple(ref.shape), dt, y_cl)
    geo = ints(groups, *stride, pad[0], pad[2], *dil)
    assert emu.emu_conv_path(DT[dt], t4(x.t), t4(w.t), t4(y.t), geo, tf32) == TENSOR_CORE
    bias, scale, shift, res, combine, mode, relu = epilogue or (None, None, None, None, 0, 0, False)
    call(emu, "emu_conv_fwd", DT[dt], ptr(x.t), t4(x.t), ptr(w.t), t4(w.t), ptr(y.t), t4(y.t), geo,
         *[ptr(v.t if v else None) for v in (bias, scale, shift, res)], combine, mode, 0.01, int(relu), tf32, sms)
    ref = epilogue_ref(ref, bias, scale, shift, res, combine, mode, relu)
    written(y, f"tensor-core forward {dt} {xs} {ws}")
    tc_check(y.t, ref, dt, f"tensor-core forward {dt} x {xs} w {ws}", ws[1] * ws[2] * ws[3], atol=tol)
    return x, w, y, geo


# The tensor-core forward has two engines: WMMA (any GPU from sm_80) and wgmma (sm_90a builds on a
# compute capability 9.0 device), chosen by the device's architecture, which the emulator sets.
ENGINES = {"wmma": 80, "wgmma": 90}


@pytest.fixture(params=list(ENGINES))
def engine(request, emu):
    emu.emu_set_arch(ENGINES[request.param])
    yield request.param
    emu.emu_set_arch(90)


@pytest.mark.parametrize("dt", TC_DTYPES)
def test_tensor_core_tiles_in_one_process(emu, dt, engine):
    """The three forward tile configurations, smallest first: each opts in to its own dynamic shared
    memory above 48 KB (a flag shared by the configurations of one type left the larger ones at the
    default, and the emulator, like the GPU, refuses that launch)."""
    # WMMA: 64x64, 128x64, 128x128 tiles (Kg <= 32, <= 64, > 64); wgmma: 128 x 64 / 128 / 256
    for k in (24, 48, 136) if engine == "wmma" else (24, 72, 136):
        tc_conv(emu, dt, (2, 16, 9, 11), (k, 16, 3, 3), pad=(1, 1, 1, 1))


@pytest.mark.parametrize("dt", TC_DTYPES)
def test_tensor_core_ring_wraps(emu, dt, engine):
    """A reduction long enough (R*S*C = 9*80) for every tile configuration's ring of shared-memory
    stages to wrap around several times: a stage refilled while the tensor cores may still read it,
    or read before its copies landed, fails here."""
    for k in (24, 48, 136) if engine == "wmma" else (24, 72, 136):
        tc_conv(emu, dt, (1, 80, 5, 7), (k, 80, 3, 3), pad=(1, 1, 1, 1))


def tc_weight_grad(emu, dt, x, wt, dy, geo, ref, sms, what):
    """grad_weight through the kernel layer (tensor cores where eligible) into a poisoned workspace and a
    guarded output, compared with the float64 reference at the tensor-core tolerance."""
    nbytes = emu.emu_conv_bwd_weight_workspace(DT[dt], t4(x.t), t4(wt.t), t4(dy.t), geo, 1, sms)
    ws = torch.full((nbytes // 4 + 1,), float("nan"), dtype=torch.float32)
    dw = Buf(tuple(wt.t.shape), dt, True)
    call(emu, "emu_conv_bwd_weight", DT[dt], ptr(dy.t), t4(dy.t), ptr(x.t), t4(x.t), ptr(dw.t), t4(dw.t), geo,
         ptr(ws), 1, sms)
    written(dw, "tensor-core grad_weight")
    tc_check(dw.t, ref, dt, f"tensor-core grad_weight {dt} {what}", dy.t.shape[0] * dy.t.shape[2] * dy.t.shape[3])


@pytest.mark.parametrize("dt", TC_DTYPES)
def test_tensor_core_weight_gradient_ring_wraps(emu, dt, engine):
    """grad_weight on tensor cores (wgmma for 16-bit types where it runs: both operands MN-major) over
    a reduction of 2*19*23 pixels, enough to wrap the ring of stages, with two output-channel tiles
    (both warpgroups' halves, a tail) and two filter-column tiles, in one split and in several."""
    v = 4 if dt == torch.float32 else 8
    x, wt = rand((2, 2 * v, 19, 23), dt, True), rand((136, 2 * v, 3, 3), dt, True, lo=-0.5, hi=0.5)
    geo = ints(1, 1, 1, 1, 1, 1, 1)
    c = dict(pad=[1, 1, 1, 1], stride=(1, 1), dil=(1, 1), groups=1)
    dy = rand((2, 136, 19, 23), dt, True)
    wr = leaf(wt.t)
    conv_ref(x.t.double(), wr, c).backward(dy.t.double())
    for sms in (1, 132):
        tc_weight_grad(emu, dt, x, wt, dy, geo, wr.grad, sms, f"sms {sms}")


@pytest.mark.parametrize("seed", SEEDS)
def test_exact_float32_as_split_tf32(emu, seed):
    """float32 without TF32 on the wgmma engine: each operand split into hi + lo TF32 parts, three
    products per term; float32-level error (TF32 alone: ~1e-3) on both tile widths, a ring that
    wraps, every epilogue, and an NCHW output; on a pre-Hopper device the path is the CUDA cores'."""
    rng = random.Random(300 + seed)
    torch.manual_seed(seed)
    for k in (24, 72):  # 128 x 64 and 128 x 128 split tiles
        combine = rng.choice([0, 1, 2])
        y_cl = rng.random() < 0.6
        epi = (rand((k,), torch.float32), rand((k,), torch.float32), None,
               rand((2, k, 5, 7), torch.float32, y_cl) if combine else None, combine, rng.choice([0, 1]),
               rng.random() < 0.5)
        tc_conv(emu, torch.float32, (2, 44, 5, 7), (k, 44, 3, 3), pad=(1, 1, 1, 1), y_cl=y_cl, epilogue=epi,
                tf32=0, tol=2e-6)
    emu.emu_set_arch(80)
    try:
        x, w, y = rand((1, 8, 4, 4), torch.float32, True), rand((8, 8, 3, 3), torch.float32, True), \
            Buf((1, 8, 2, 2), torch.float32, True)
        assert emu.emu_conv_path(DT[torch.float32], t4(x.t), t4(w.t), t4(y.t), ints(1, 1, 1, 0, 0, 1, 1), 0) != TENSOR_CORE
    finally:
        emu.emu_set_arch(90)


@pytest.mark.parametrize("seed", SEEDS)
def test_tensor_core_kernels_emulated(emu, seed, engine):
    rng = random.Random(200 + seed)
    torch.manual_seed(seed)
    for _ in range(5):
        dt = rng.choice(TC_DTYPES)
        v = 4 if dt == torch.float32 else 8
        groups = rng.choice([1, 1, 2])
        cg, kg = v * rng.choice([1, 2, 3]), rng.choice([5, 8, 16, 24, 40, 72])
        n, h, w = rng.choice([1, 2]), rng.randint(3, 10), rng.randint(3, 10)
        r, s = rng.randint(1, 3), rng.randint(1, 3)
        stride, dil = (rng.randint(1, 2), rng.randint(1, 2)), (rng.randint(1, 2), 1)
        pad = [rng.randint(0, 1) for _ in range(4)]
        if h + pad[0] + pad[1] < dil[0] * (r - 1) + 1 or w + pad[2] + pad[3] < s:
            continue
        k = kg * groups
        p_ = (h + pad[0] + pad[1] - dil[0] * (r - 1) - 1) // stride[0] + 1
        q_ = (w + pad[2] + pad[3] - dil[1] * (s - 1) - 1) // stride[1] + 1
        y_cl = rng.random() < 0.7
        combine = rng.choice([0, 1, 2])
        epi = (rand((k,), dt), rand((k,), dt) if rng.random() < 0.5 else None, None,
               rand((n, k, p_, q_), dt, y_cl) if combine else None, combine, rng.choice([0, 1]), rng.random() < 0.5)
        x, wt, _, geo = tc_conv(emu, dt, (n, cg * groups, h, w), (k, cg, r, s), stride, pad, dil, groups, y_cl, epi,
                                sms=rng.choice([1, 132]))
        # grad_weight on tensor cores (needs Kg and Cg multiples of the vector; dense NHWC operands)
        if kg % v:
            continue
        dy = rand((n, k, p_, q_), dt, True)
        c = dict(pad=pad, stride=stride, dil=dil, groups=groups)
        wr = leaf(wt.t)
        conv_ref(x.t.double(), wr, c).backward(dy.t.double())
        tc_weight_grad(emu, dt, x, wt, dy, geo, wr.grad, rng.choice([1, 132]),
                       f"x {tuple(x.t.shape)} w {tuple(wt.t.shape)}")


def phase(ph, stride, pad, size, taps):
    """One stride phase of an input gradient, as csrc/cuda/conv2d.cpp computes it: the first input row
    of the phase, how many rows, how many filter taps reach it, and its first grad_out row."""
    first = (ph - pad) % stride
    count = (size - first + stride - 1) // stride if first < size else 0
    ntaps = (taps - ph + stride - 1) // stride if ph < taps else 0
    return first, count, ntaps, (first + pad - ph) // stride


def input_gradient_by_phases(emu, dt, dy, wt, dx, stride, pad, dil, groups):
    """The host's input gradient on tensor cores (csrc/cuda/conv2d.cpp), step for step: per stride
    phase a forward of grad_out with that phase's taps turned 180 degrees, K and C swapped per group,
    into a strided view of grad_input; zeros first where a phase has no tap."""
    k, cg, r, s = wt.shape
    kg = k // groups
    n, c, h, w = dx.t.shape
    wg = wt.reshape(groups, kg, cg, r, s).transpose(1, 2)
    phases = [(phase(a, stride[0], pad[0], h, r), phase(b, stride[1], pad[2], w, s))
              for a in range(stride[0]) for b in range(stride[1])]
    if any(fh[1] and fw[1] and not (fh[2] and fw[2]) for fh, fw in phases):
        dx.t.zero_()
    for (fh, fw), (a, b) in zip(phases, [(a, b) for a in range(stride[0]) for b in range(stride[1])]):
        if not (fh[1] and fw[1] and fh[2] and fw[2]):
            continue
        sub = (wg[:, :, :, a::stride[0], b::stride[1]].flip(3, 4).reshape(c, kg, fh[2], fw[2])
               .contiguous(memory_format=torch.channels_last))
        out = dx.t[:, :, fh[0]::stride[0], fw[0]::stride[1]]
        geo = ints(groups, 1, 1, dil[0] * (fh[2] - 1) - fh[3], dil[1] * (fw[2] - 1) - fw[3], *dil)
        assert emu.emu_conv_path(DT[dt], t4(dy), t4(sub), t4(out), geo, 1) == TENSOR_CORE
        call(emu, "emu_conv_fwd", DT[dt], ptr(dy), t4(dy), ptr(sub), t4(sub), ptr(out), t4(out), geo,
             None, None, None, None, 0, 0, 0.01, 0, 1, 1)


@pytest.mark.parametrize("dt", TC_DTYPES)
def test_tensor_core_input_gradient_by_stride_phases(emu, dt, engine):
    """The host's input gradient on tensor cores: stride 1 as one flipped forward (leading padding
    dil*(R-1) - pad, negative when the padding exceeds the kernel's reach); larger strides as one
    forward per stride phase into a strided view of grad_input, channels_last (vector stores at
    decoded pixel offsets) and NCHW; a 1x1 stride-2 filter leaves phases without taps (zeros)."""
    v = 4 if dt == torch.float32 else 8
    cases = [  # n, cg, kg, groups, h, w, r, s, stride, pad, dil, dx channels_last
        (2, 16, v, 1, 7, 6, 3, 3, (1, 1), (1, 1), (1, 1), True),
        (1, 8, 2 * v, 2, 6, 9, 3, 2, (1, 1), (2, 0), (2, 1), False),
        (2, 16, v, 1, 5, 5, 1, 1, (1, 1), (1, 1), (1, 1), True),  # pad 1 > reach 0
        (2, 16, v, 1, 9, 8, 3, 3, (2, 2), (1, 1), (1, 1), True),
        (1, 8, v, 1, 11, 10, 7, 7, (2, 2), (3, 3), (1, 1), False),
        (2, 16, 2 * v, 1, 7, 8, 1, 1, (2, 2), (0, 0), (1, 1), True),  # phases without taps
        (1, 8, v, 2, 10, 9, 3, 2, (3, 2), (2, 1), (1, 1), True),
        (1, 16, v, 1, 13, 12, 5, 4, (4, 3), (2, 1), (1, 1), False),
    ]
    for (n, cg, kg, groups, h, w, r, s, stride, pad, dil, cl) in cases:
        x, wt = rand((n, cg * groups, h, w), dt, True), rand((kg * groups, cg, r, s), dt, lo=-0.5, hi=0.5)
        xr = leaf(x.t)
        out = F.conv2d(xr, wt.t.double(), None, stride, pad, dil, groups)
        dy = rand(tuple(out.shape), dt, True)
        out.backward(dy.t.double())
        dx = Buf((n, cg * groups, h, w), dt, cl)
        input_gradient_by_phases(emu, dt, dy.t, wt.t, dx, stride, (pad[0], pad[0], pad[1], pad[1]), dil, groups)
        written(dx, "tensor-core grad_input")
        tc_check(dx.t, xr.grad, dt, f"tensor-core grad_input {dt} stride {stride} pad {pad} dil {dil}", kg * r * s)


# ---------------------------------------------------------------- pooling
def pool_input(rng, shape, dt, cl, shift):
    x = rand(shape, dt, cl, shift)
    if rng.random() < 0.3:  # ties
        x.t.copy_(torch.randint(-2, 3, shape).to(dt))
    if rng.random() < 0.2:
        x.t[tuple(rng.randrange(s) for s in shape)] = float("nan")
    return x


def test_fast_division(emu):
    """The multiply-shift division the pooling kernels split indices with: exact for every dividend
    below 2^31 (random ones and the edges of every multiple near them) and divisors 1 .. 2^31."""
    rng = random.Random(5)
    divisors = [1, 2, 3, 5, 7, 8, 24, 56, 112, 255, 3136, 65535, 65536, 2**31 - 1, 2**31]
    divisors += [rng.randint(1, 2**31) for _ in range(40)] + [rng.randint(1, 4096) for _ in range(40)]
    for d in divisors:
        assert emu.emu_fastdiv_check(d, 2000) == 0, d


@pytest.mark.parametrize("dt", list(DT))
@pytest.mark.parametrize("cl", [False, True])
def test_max_pool_window_without_input_emulated(emu, dt, cl):
    """Dilation 2 and padding 1 leave these windows no tap row inside a 1-row input: the kernel reports
    -inf at torch's index (past the plane), and the backward passes nothing on and writes nothing
    outside grad_input (torch's own CPU backward writes out of bounds here, so the reference is zero)."""
    n, c, h, w = 2, 8, 1, 18
    x = rand((n, c, h, w), dt, cl)
    ry, ri = F.max_pool2d(x.t.double(), (2, 4), (2, 3), (1, 2), 2, True, True)
    assert torch.isinf(ry).all() and (ri >= h * w).all()
    y, idx = Buf(tuple(ry.shape), dt, cl), Buf(tuple(ry.shape), torch.int64, cl, fill=-7)
    k = ints(2, 4, 2, 3, 1, 2, 2, 2, 1, 0)
    call(emu, "emu_max_pool_fwd", DT[dt], ptr(x.t), t4(x.t), ptr(y.t), t4(y.t), ctypes.c_void_p(idx.t.data_ptr()), k)
    written(y, "max fwd")
    assert idx.guards_intact() and torch.equal(idx.t, ri) and torch.equal(y.t.double(), ry)
    gy = rand(tuple(ry.shape), dt, cl)
    half = dt in HALF
    gx = Buf((n, c, h, w), dt, cl, data=None if half else torch.zeros(n, c, h, w))
    acc = Buf((n, c, h, w), torch.float32, cl, data=torch.zeros(n, c, h, w)) if half else None
    call(emu, "emu_max_pool_bwd", DT[dt], ptr(gy.t), t4(gy.t), ctypes.c_void_p(idx.t.data_ptr()), ptr(gx.t),
         t4(gx.t), ctypes.c_void_p(acc.t.data_ptr() if half else 0))
    written(gx, "max bwd")
    assert (acc if half else gx).guards_intact() and torch.equal(gx.t.double(), torch.zeros(n, c, h, w, dtype=torch.float64))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("index", ["32", "64"])
def test_pool_kernels_emulated(emu, seed, index, monkeypatch):
    """Every pooling kernel, with the flat index split by 32-bit multiply-shift division (what any tensor
    under 2^31 elements takes) and by 64-bit division (forced: FASTCONV_POOL_INDEX64)."""
    if index == "64":
        monkeypatch.setenv("FASTCONV_POOL_INDEX64", "1")
    rng = random.Random(100 + seed)
    torch.manual_seed(seed)
    done = 0
    while done < 25:
        dt = rng.choice(list(DT))
        n, c, h, w = rng.choice([1, 2]), rng.choice([1, 2, 3, 8, 16, 24]), rng.randint(1, 10), rng.randint(1, 10)
        kh, kw = rng.randint(1, 4), rng.randint(1, 4)
        sh, sw = rng.randint(1, 3), rng.randint(1, 3)
        ph, pw = rng.randint(0, kh // 2), rng.randint(0, kw // 2)
        dh, dw = rng.randint(1, 2), rng.randint(1, 2)
        ceil, cl = rng.random() < 0.5, rng.random() < 0.6
        shift = 1 if rng.random() < 0.2 else 0  # off 16-byte alignment: the scalar paths
        info = dict(dt=dt, x=(n, c, h, w), k=(kh, kw), s=(sh, sw), p=(ph, pw), d=(dh, dw), ceil=ceil, cl=cl, shift=shift)
        x = pool_input(rng, (n, c, h, w), dt, cl, shift)
        try:
            ry, ri = F.max_pool2d(x.t.double(), (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil, True)
        except RuntimeError:
            continue  # torch rejects the window (output size < 1)
        if torch.isinf(ry).any():
            continue  # a window wholly in the padding: torch's CPU backward scatters out of bounds there
        done += 1
        yshape = tuple(ry.shape)
        # max_pool2d
        y = Buf(yshape, dt, cl, shift=shift)
        idx = Buf(yshape, torch.int64, cl, fill=-7)
        k = ints(kh, kw, sh, sw, ph, pw, dh, dw, 1, 0)
        call(emu, "emu_max_pool_fwd", DT[dt], ptr(x.t), t4(x.t), ptr(y.t), t4(y.t), ctypes.c_void_p(idx.t.data_ptr()), k)
        written(y, f"max fwd {info}")
        assert idx.guards_intact(), f"max fwd indices {info}"
        assert_close(y.t, ry, dt, f"max fwd {info}")
        assert torch.equal(idx.t, ri), f"max fwd indices {info}"
        yv = Buf(yshape, dt, cl, shift=shift)  # the values alone (inference): no indices tracked or written
        call(emu, "emu_max_pool_fwd", DT[dt], ptr(x.t), t4(x.t), ptr(yv.t), t4(yv.t), ctypes.c_void_p(0), k)
        written(yv, f"max fwd values {info}")
        assert torch.equal(yv.t.nan_to_num(7.0), y.t.nan_to_num(7.0)), f"max fwd values {info}"
        gy = rand(yshape, dt, cl, shift)
        xr = leaf(x.t)
        F.max_pool2d(xr, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil).backward(gy.t.double())
        half = dt in HALF  # the host: an fp32 accumulator (zeroed) in the layout of grad_input; else grad_input zeroed
        gx = Buf((n, c, h, w), dt, cl, fill=float("nan"), data=None if half else torch.zeros(n, c, h, w))
        acc = Buf((n, c, h, w), torch.float32, cl, data=torch.zeros(n, c, h, w)) if half else None
        call(emu, "emu_max_pool_bwd", DT[dt], ptr(gy.t), t4(gy.t), ctypes.c_void_p(idx.t.data_ptr()), ptr(gx.t),
             t4(gx.t), ctypes.c_void_p(acc.t.data_ptr() if half else 0))
        written(gx, f"max bwd {info}")
        assert_close(gx.t, xr.grad, dt, f"max bwd {info}")
        # avg_pool2d (no dilation; torch's windows and divisors)
        if dh != 1 or dw != 1:
            continue
        cip, div = rng.random() < 0.5, rng.choice([0, 0, 5])
        ref = F.avg_pool2d(x.t.double(), (kh, kw), (sh, sw), (ph, pw), ceil, cip, div or None)
        y = Buf(tuple(ref.shape), dt, cl, shift=shift)
        k = ints(kh, kw, sh, sw, ph, pw, 1, 1, int(cip), div)
        call(emu, "emu_avg_pool_fwd", DT[dt], ptr(x.t), t4(x.t), ptr(y.t), t4(y.t), k)
        written(y, f"avg fwd {info}")
        assert_close(y.t, ref, dt, f"avg fwd {info}")
        gy = rand(tuple(ref.shape), dt, cl, shift)
        xr = leaf(x.t)
        F.avg_pool2d(xr, (kh, kw), (sh, sw), (ph, pw), ceil, cip, div or None).backward(gy.t.double())
        gx = Buf((n, c, h, w), dt, cl, shift=shift)
        call(emu, "emu_avg_pool_bwd", DT[dt], ptr(gy.t), t4(gy.t), ptr(gx.t), t4(gx.t), k)
        written(gx, f"avg bwd {info}")
        assert_close(gx.t, xr.grad, dt, f"avg bwd {info}")
        # adaptive_avg_pool2d: output sizes below, at and above the input's
        out = (rng.randint(1, h + 2), rng.randint(1, w + 2))
        ref = F.adaptive_avg_pool2d(x.t.double(), out)
        y = Buf(tuple(ref.shape), dt, cl, shift=shift)
        call(emu, "emu_adaptive_fwd", DT[dt], ptr(x.t), t4(x.t), ptr(y.t), t4(y.t))
        written(y, f"adaptive fwd {out} {info}")
        assert_close(y.t, ref, dt, f"adaptive fwd {out} {info}")
        gy = rand(tuple(ref.shape), dt, cl, shift)
        xr = leaf(x.t)
        F.adaptive_avg_pool2d(xr, out).backward(gy.t.double())
        gx = Buf((n, c, h, w), dt, cl, shift=shift)
        call(emu, "emu_adaptive_bwd", DT[dt], ptr(gy.t), t4(gy.t), ptr(gx.t), t4(gx.t))
        written(gx, f"adaptive bwd {out} {info}")
        assert_close(gx.t, xr.grad, dt, f"adaptive bwd {out} {info}")


# ---------------------------------------------------------------- relu, sort
@pytest.mark.parametrize("dt", list(DT))
def test_eltwise_kernels_emulated(emu, dt):
    torch.manual_seed(0)
    for n in (1, 7, 8, 9, 33, 1000):
        for shift in (0, 1):  # 16-byte vectors, and the scalar path for a misaligned pointer
            x = rand((n,), dt, shift=shift)
            x.t[0] = float("nan")
            y = Buf((n,), dt, shift=shift)
            call(emu, "emu_relu_fwd", DT[dt], ptr(x.t), ptr(y.t), n)
            written(y, "relu fwd")
            assert_close(y.t, F.relu(x.t.double()), dt, "relu fwd")
            g, gx = rand((n,), dt, shift=shift), Buf((n,), dt, shift=shift)
            call(emu, "emu_relu_bwd", DT[dt], ptr(g.t), ptr(y.t), ptr(gx.t), n)
            written(gx, "relu bwd")
            assert_close(gx.t, torch.ops.aten.threshold_backward(g.t.double(), y.t.double(), 0), dt, "relu bwd")
            for mode in (0, 1):
                for eps in (0.01, 0.0):
                    a, b = rand((n,), dt, shift=shift), rand((n,), dt, shift=shift)
                    if n > 4:  # zeros on and off the quadrant, where sqrt's derivative is steep
                        a.t[1], b.t[2], a.t[3], b.t[3] = 0, 0, 1, 0
                    y = Buf((n,), dt, shift=shift)
                    call(emu, "emu_sort_fwd", DT[dt], ptr(a.t), ptr(b.t), ptr(y.t), n, mode, ctypes.c_double(eps))
                    ar, br = leaf(a.t), leaf(b.t)
                    prod = ar.clamp(min=0) * br.clamp(min=0)
                    ref = ar + br + (torch.sqrt(prod + eps) if mode == 0 else prod)
                    written(y, "sort fwd")
                    assert_close(y.t, ref.detach(), dt, f"sort fwd mode {mode} eps {eps}")
                    ref.backward(g.t.double())
                    ga, gb = Buf((n,), dt, shift=shift), Buf((n,), dt, shift=shift)
                    call(emu, "emu_sort_bwd", DT[dt], ptr(g.t), ptr(a.t), ptr(b.t), ptr(ga.t), ptr(gb.t), n, mode,
                         ctypes.c_double(eps))
                    written(ga, "sort bwd")
                    written(gb, "sort bwd")
                    # torch's own derivative of sqrt at 0 is inf (0 * inf = NaN off the quadrant);
                    # the defined value there is the limit, 1 + 0.
                    for got, want in ((ga, ar.grad), (gb, br.grad)):
                        want = torch.where(torch.isnan(want), g.t.double(), want)
                        assert_close(got.t, want, dt, f"sort bwd mode {mode} eps {eps}")
