"""numba.cuda kernels of fastconv.numba.gpu against the CPU kernels: under the CUDA simulator (a
separate process, NUMBA_ENABLE_CUDASIM=1, small shapes) everywhere, and for real on a GPU with
torch tensors and CuPy arrays on a non-default stream."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
import torch

pytest.importorskip("numba")

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECK = ROOT / "tests" / "_numba_cudasim_check.py"


def _run(kind, simulate):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if simulate:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    out = subprocess.run([sys.executable, str(CHECK), kind], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0 and "ALL OK" in out.stdout, out.stdout[-3000:] + out.stderr[-5000:]


def test_cuda_kernels_in_simulator():
    _run("numba", simulate=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("kind", ["numba", "torch", "cupy"])
def test_cuda_kernels_on_gpu(kind):
    if kind == "cupy" and importlib.util.find_spec("cupy") is None:
        pytest.skip("CuPy is not installed")
    _run(kind, simulate=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_numba_backend_on_gpu_autograd():
    import fastconv
    import torch.nn.functional as TF
    x = torch.randn(2, 3, 9, 8, device="cuda", dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device="cuda", dtype=torch.float64, requires_grad=True)
    with fastconv.use_backend("numba"):
        y = fastconv.max_pool2d(fastconv.relu(fastconv.conv2d(x, w, None, 1, 1)), 2)
    y.sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    TF.max_pool2d(TF.relu(TF.conv2d(x, w, None, 1, 1)), 2).sum().backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, w.grad)
