"""Behaviours only the CUDA operators have: device checks, CUDA-graph capture, non-default streams,
autocast, the TF32 switch, unaligned views, fake-tensor consistency on CUDA. Skipped without CUDA."""
import pytest
import torch
import torch.nn.functional as F

import fastconv

CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="no CUDA device")]


@pytest.fixture(autouse=True)
def _cuda_built():
    info = fastconv.info()
    if not info.get("cuda_built"):
        pytest.skip("fastconv was built without CUDA")
    ops = torch.ops.fastconv
    prev = torch.backends.cudnn.allow_tf32
    yield ops
    torch.backends.cudnn.allow_tf32 = prev


def rnd(*shape, dtype=torch.float32, cl=False, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    t = (torch.rand(shape, generator=g, device="cuda") * 4 - 2).to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if cl else t


def rel_err(a, b):
    a, b = a.double(), b.double()
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


# ---------------------------------------------------------------- device mismatches raise
def test_cpu_weight_with_cuda_input_raises():
    ops = torch.ops.fastconv
    x = rnd(2, 8, 6, 6)
    w = torch.randn(4, 8, 3, 3)
    with pytest.raises(RuntimeError, match="device"):
        fastconv.conv2d(x, w)
    with pytest.raises(RuntimeError, match="device"):
        ops.conv2d_fwd(x, w, None, [1, 1], [0, 0, 0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="device"):
        ops.conv2d_fwd(x, w.cuda(), torch.randn(4), [1, 1], [0, 0, 0, 0], [1, 1], 1)
    y = ops.conv2d_fwd(x, w.cuda(), None, [1, 1], [0, 0, 0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="device"):
        ops.conv2d_fused_fwd(x, w.cuda(), None, [1, 1], [0, 0, 0, 0], [1, 1], 1, None, None, y.cpu(), 1, False, 0, 0.01)
    with pytest.raises(RuntimeError, match="device"):
        ops.conv2d_bwd_input(y, w, [2, 8, 6, 6], [1, 1], [0, 0, 0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="device"):
        ops.conv2d_bwd_weight(y, x.cpu(), [4, 8, 3, 3], [1, 1], [0, 0, 0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="device"):
        ops.relu_bwd(y, y.cpu())
    with pytest.raises(RuntimeError, match="device"):
        ops.sort_fwd(y, y.cpu(), 0, 0.01)
    p, i = ops.max_pool2d_fwd(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="device"):
        ops.max_pool2d_bwd(p, i.cpu(), list(x.shape))


@pytest.mark.skipif(CUDA and torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device_guard():
    x = rnd(2, 16, 9, 9).to("cuda:1")
    w = torch.randn(8, 16, 3, 3, device="cuda:1")
    y = fastconv.conv2d(x, w, padding=1)
    assert y.device == x.device
    assert rel_err(y, F.conv2d(x.double(), w.double(), padding=1)) < 3e-3


# ---------------------------------------------------------------- graphs and streams
def _workload(x, w, b, r):
    y = fastconv.conv2d_fused(x, w, b, padding=1, residual=r, combine="sort", relu=True)
    y = fastconv.max_pool2d(y, 3, 2, 1)
    y = fastconv.avg_pool2d(y, 2, 2)
    y = fastconv.relu(y)
    y = fastconv.sort(y, y * 0.5)
    return fastconv.adaptive_avg_pool2d(y, 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_cuda_graph_capture_and_replay(dtype):
    x = rnd(4, 32, 16, 16, dtype=dtype, cl=True)
    w = rnd(32, 32, 3, 3, dtype=dtype, cl=True, seed=1) * 0.1
    b = rnd(32, dtype=dtype, seed=2)
    r = rnd(4, 32, 16, 16, dtype=dtype, cl=True, seed=3)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up outside capture (allocations, one-time attributes)
        _workload(x, w, b, r)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _workload(x, w, b, r)
    x.copy_(rnd(4, 32, 16, 16, dtype=dtype, cl=True, seed=9))
    graph.replay()
    torch.cuda.synchronize()
    ref = _workload(x, w, b, r)
    torch.testing.assert_close(out, ref)


def test_cuda_graph_backward():
    x = rnd(2, 16, 12, 12, dtype=torch.float16, cl=True).requires_grad_()
    w = (rnd(24, 16, 3, 3, dtype=torch.float16, cl=True, seed=1) * 0.1).requires_grad_()
    gy = rnd(2, 24, 12, 12, dtype=torch.float16, cl=True, seed=2)
    ops = torch.ops.fastconv
    args = ([1, 1], [1, 1, 1, 1], [1, 1], 1)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ops.conv2d_bwd_input(gy, w, list(x.shape), *args)
        ops.conv2d_bwd_weight(gy, x, list(w.shape), *args)
        ops.conv2d_bwd_bias(gy)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gx = ops.conv2d_bwd_input(gy, w, list(x.shape), *args)
        gw = ops.conv2d_bwd_weight(gy, x, list(w.shape), *args)
        gb = ops.conv2d_bwd_bias(gy)
    gy.copy_(rnd(2, 24, 12, 12, dtype=torch.float16, cl=True, seed=5))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(gx, ops.conv2d_bwd_input(gy, w, list(x.shape), *args))
    torch.testing.assert_close(gw, ops.conv2d_bwd_weight(gy, x, list(w.shape), *args))
    torch.testing.assert_close(gb, ops.conv2d_bwd_bias(gy))


def test_non_default_stream():
    x = rnd(8, 64, 28, 28, dtype=torch.float16, cl=True)
    w = rnd(64, 64, 3, 3, dtype=torch.float16, cl=True, seed=1) * 0.05
    ref = fastconv.conv2d(x, w, padding=1)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        y = fastconv.conv2d(x, w, padding=1)
        z = fastconv.max_pool2d(fastconv.relu(y), 2)
    s.synchronize()
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(z, F.max_pool2d(F.relu(ref), 2))


# ---------------------------------------------------------------- autocast
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_runs_convs_in_low_precision(dtype):
    x = rnd(2, 16, 10, 10).requires_grad_()
    w = (rnd(24, 16, 3, 3, seed=1) * 0.1).requires_grad_()
    b = rnd(24, seed=2).requires_grad_()
    with torch.autocast("cuda", dtype=dtype):
        y = fastconv.conv2d(x, w, b, padding=1)
        ref = F.conv2d(x, w, b, padding=1)
        z = fastconv.conv2d_fused(x, w, b, padding=1, relu=True)
        p = fastconv.max_pool2d(y, 2)  # not an autocast op: keeps its input dtype
    assert y.dtype == ref.dtype == dtype
    assert z.dtype == dtype and p.dtype == dtype
    assert rel_err(y, ref) < (1e-2 if dtype == torch.float16 else 3e-2)
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32 and b.grad.dtype == torch.float32


def test_autocast_leaves_float64():
    x = rnd(1, 8, 6, 6, dtype=torch.float64)
    w = rnd(4, 8, 3, 3, dtype=torch.float64, seed=1)
    with torch.autocast("cuda"):
        assert fastconv.conv2d(x, w).dtype == torch.float64


# ---------------------------------------------------------------- fp32 paths, alignment, fakes
@pytest.mark.parametrize("engine", ["wgmma", "wmma"])
def test_tf32_switch_selects_exact_or_tensor_core_path(engine, monkeypatch):
    """allow_tf32=False gives float32 accuracy: split TF32 on the wgmma engine (three tensor-core
    products per term; the tensor cores' own fp32 accumulation rounds differently from FMA chains,
    as cuDNN's Winograd and FFT algorithms do), CUDA-core FMAs otherwise; TF32 alone is ~1e-3."""
    if engine == "wmma":
        monkeypatch.setenv("FASTCONV_WGMMA", "0")
    x = rnd(4, 64, 20, 20, cl=True)
    w = rnd(96, 64, 3, 3, cl=True, seed=1)
    ref = F.conv2d(x.double(), w.double(), padding=1)
    torch.backends.cudnn.allow_tf32 = False
    exact = rel_err(fastconv.conv2d(x, w, padding=1), ref)
    torch.backends.cudnn.allow_tf32 = True
    tf32 = rel_err(fastconv.conv2d(x, w, padding=1), ref)
    assert exact < (1e-6 if engine == "wmma" else 1e-5), exact
    assert tf32 < 3e-3, tf32


def test_unaligned_views():
    base = rnd(1 + 2 * 16 * 9 * 9, dtype=torch.float16)
    x = base[1:].view(2, 16, 9, 9)  # storage offset of one element: 2-byte aligned only
    assert x.data_ptr() % 16 != 0
    torch.testing.assert_close(fastconv.relu(x), F.relu(x))
    torch.testing.assert_close(fastconv.sort(x, x, mode="product"),
                               (lambda a: a + a + F.relu(a) * F.relu(a))(x.float()).half(), atol=1e-2, rtol=1e-3)
    torch.testing.assert_close(fastconv.max_pool2d(x, 3, 2, 1), F.max_pool2d(x, 3, 2, 1))
    w = rnd(8, 16, 3, 3, dtype=torch.float16, seed=1) * 0.1
    assert rel_err(fastconv.conv2d(x, w, padding=1), F.conv2d(x.float(), w.float(), padding=1)) < 3e-3


@pytest.mark.parametrize("cl", [False, True])
def test_output_formats_follow_torch(cl):
    x = rnd(2, 16, 8, 8, dtype=torch.float16, cl=cl)
    w = rnd(8, 16, 3, 3, dtype=torch.float16, seed=1)
    fmt = torch.channels_last if cl else torch.contiguous_format
    assert fastconv.conv2d(x, w).is_contiguous(memory_format=fmt)
    assert fastconv.max_pool2d(x, 2).is_contiguous(memory_format=fmt)
    assert fastconv.relu(x).is_contiguous(memory_format=fmt)


def test_opcheck_on_cuda():
    ops = torch.ops.fastconv
    x = rnd(2, 16, 9, 9, dtype=torch.float32, cl=True).requires_grad_()
    w = (rnd(8, 16, 3, 3, seed=1) * 0.1).requires_grad_()
    b = rnd(8, seed=2).requires_grad_()
    tests = ["test_schema", "test_faketensor", "test_autograd_registration"]
    torch.library.opcheck(ops.conv2d_fwd, (x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1), test_utils=tests)
    torch.library.opcheck(ops.max_pool2d_fwd, (x, [3, 3], [2, 2], [1, 1], [1, 1], False), test_utils=tests)
    torch.library.opcheck(ops.sort_fwd, (x, x.detach() * 2, 0, 0.01), test_utils=tests)


def test_empty_batch_and_nan():
    x = torch.randn(0, 16, 8, 8, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 16, 3, 3, device="cuda", dtype=torch.float16)
    assert fastconv.conv2d(x, w, padding=1).shape == (0, 8, 8, 8)
    y = rnd(1, 8, 5, 5, dtype=torch.float16, cl=True)
    y[0, 3, 2, 2] = float("nan")
    m = fastconv.max_pool2d(y, 3, 1, 1)[0, 3]
    assert torch.isnan(m[1:4, 1:4]).all() and not torch.isnan(m[0, 0]) and not torch.isnan(m[4, 4])
    assert torch.isnan(fastconv.relu(y)[0, 3, 2, 2])


# ---------------------------------------------------------------- tensor-core launch regressions
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("cl", [False, True])
def test_few_input_channels_padded_to_tensor_cores(dtype, cl):
    """RGB first layers: C = 3 is zero-padded to the vector width in dense channels_last copies
    (a padded copy in NCHW order, read as NHWC by the kernel, gave garbage without an error)."""
    torch.backends.cudnn.allow_tf32 = True
    x = rnd(2, 3, 33, 31, dtype=dtype, cl=cl)
    w = rnd(16, 3, 7, 7, dtype=dtype, seed=1) * 0.2
    ref = F.conv2d(x.double(), w.double(), stride=2, padding=3)
    assert rel_err(fastconv.conv2d(x, w, stride=2, padding=3), ref) < 3e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_every_tile_configuration_in_one_process(dtype):
    """Each tile configuration raises its own dynamic shared-memory limit: launching a small tile
    first must not leave the larger ones at the 48 KB default (one flag per element type did)."""
    torch.backends.cudnn.allow_tf32 = True
    # 64x64 tiles (few output channels), then 128x64, then 128x128 (M = 8*40*40 = 12800 rows, enough
    # blocks for every SM): the largest needs 80 KB of shared memory.
    x = rnd(8, 64, 40, 40, dtype=dtype, cl=True)
    for k in (32, 64, 256, 64, 32):
        w = rnd(k, 64, 3, 3, dtype=dtype, cl=True, seed=k) * 0.05
        ref = F.conv2d(x.double(), w.double(), padding=1)
        assert rel_err(fastconv.conv2d(x, w, padding=1), ref) < 3e-3, k


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("engine", ["wgmma", "wmma"])
def test_tensor_core_engines(dtype, engine, monkeypatch):
    """Both tensor-core forward engines (wgmma where built for sm_90a and the GPU is compute
    capability 9.0; FASTCONV_WGMMA=0 selects WMMA) on each of their tile widths, deep reductions that
    wrap the shared-memory ring, a fused epilogue and an NCHW output; M = 4*23*19 rows leave a tail."""
    if engine == "wmma":
        monkeypatch.setenv("FASTCONV_WGMMA", "0")
    torch.backends.cudnn.allow_tf32 = True
    x = rnd(4, 96, 23, 19, dtype=dtype, cl=True)
    for k in (40, 72, 136, 264):
        w = rnd(k, 96, 3, 3, dtype=dtype, cl=True, seed=k) * 0.05
        b, r = rnd(k, dtype=dtype, seed=1), rnd(4, k, 23, 19, dtype=dtype, cl=True, seed=2)
        ref = F.conv2d(x.double(), w.double(), b.double(), padding=1)
        assert rel_err(fastconv.conv2d(x, w, b, padding=1), ref) < 3e-3, k
        assert rel_err(fastconv.conv2d(x.contiguous(), w, b, padding=1), ref) < 3e-3, k
        fused = fastconv.conv2d_fused(x, w, b, padding=1, residual=r, combine="add", relu=True)
        assert rel_err(fused, torch.relu(ref + r.double())) < 3e-3, k


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("cl", [False, True])
def test_input_gradient_by_stride_phases(dtype, cl):
    """grad_input of strided convolutions on tensor cores: one forward per stride phase into a strided
    view (channels_last: vector stores at decoded pixel offsets); a 1x1 stride-2 filter leaves phases
    that receive zeros; exact float32 and TF32."""
    ops = torch.ops.fastconv
    for (c, k, h, w, r, s, st, pad, groups) in [(32, 16, 17, 14, 3, 3, (2, 2), (1, 1), 1),
                                                 (16, 24, 15, 15, 1, 1, (2, 2), (0, 0), 1),
                                                 (16, 64, 23, 21, 7, 7, (2, 2), (3, 3), 1),
                                                 (32, 32, 13, 16, 3, 2, (3, 2), (2, 1), 2)]:
        for tf32 in ((False, True) if dtype == torch.float32 else (True,)):
            torch.backends.cudnn.allow_tf32 = tf32
            wt = rnd(k, c // groups, r, s, dtype=dtype, cl=cl, seed=1) * 0.2
            xr = rnd(3, c, h, w, dtype=torch.float64, seed=2).requires_grad_()
            out = F.conv2d(xr, wt.double(), None, st, pad, 1, groups)
            gy = rnd(*out.shape, dtype=dtype, cl=cl, seed=3)
            out.backward(gy.double())
            gx = ops.conv2d_bwd_input(gy, wt, [3, c, h, w], list(st), [pad[0], pad[0], pad[1], pad[1]], [1, 1],
                                      groups)
            assert rel_err(gx, xr.grad) < (1e-5 if dtype == torch.float32 and not tf32 else 3e-3), (r, st, tf32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_one_by_one_spatial_channels_last(dtype):
    """N x C x 1 x 1 tensors (classifier convs, squeeze-excitation) are dense channels_last whatever
    their size-1 strides; forward, both gradients and max_pool2d's backward layout."""
    torch.backends.cudnn.allow_tf32 = True
    x = rnd(4, 64, 1, 1, dtype=dtype, cl=True).requires_grad_()
    w = (rnd(32, 64, 1, 1, dtype=dtype, cl=True, seed=1) * 0.1).requires_grad_()
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    y, yr = fastconv.conv2d(x, w), F.conv2d(xr, wr)
    g = rnd(*y.shape, dtype=dtype, seed=2)
    y.backward(g)
    yr.backward(g.double())
    assert rel_err(y, yr) < 3e-3
    assert rel_err(x.grad, xr.grad) < 3e-3 and rel_err(w.grad, wr.grad) < 3e-3
    z = rnd(2, 16, 9, 9, dtype=dtype, cl=True).requires_grad_()
    fastconv.max_pool2d(z, 3, 2, 1).sum().backward()
    assert z.grad.is_contiguous(memory_format=torch.channels_last)
    zr = z.detach().clone().requires_grad_()
    F.max_pool2d(zr, 3, 2, 1).sum().backward()
    torch.testing.assert_close(z.grad, zr.grad)
