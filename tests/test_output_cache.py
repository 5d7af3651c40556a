"""Large CPU outputs come from a cache of freed blocks (csrc/cpu/output_cache.cpp): a freed output's
block serves the next output of a similar size, every value of the new output is written (the old
contents never show), and the tensors behave as any CPU tensor (resize, views, other ops, pickling)."""
import gc
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv import _ext

pytestmark = pytest.mark.skipif(not _ext.native_available(), reason="native extension not built")


def _info():
    return _ext._C.output_cache_info()


def test_freed_output_block_is_reused_and_overwritten():
    fastconv.empty_cache()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 64, 64, generator=g)
    w = torch.randn(64, 16, 1, 1, generator=g)
    y = fastconv.conv2d(x, w)  # 2 MB
    ptr = y.data_ptr()
    y.fill_(float("nan"))  # poison the block before handing it back
    del y
    gc.collect()
    assert _info()["bytes"] >= 2 * 64 * 64 * 64 * 4
    y2 = fastconv.relu(torch.randn(2, 64, 64, 64, generator=g) - 0.5)
    assert y2.data_ptr() == ptr and not y2.isnan().any()
    z = fastconv.conv2d(x, w, padding=0)
    torch.testing.assert_close(z, F.conv2d(x, w), rtol=1e-4, atol=1e-4)
    fastconv.empty_cache()
    assert _info()["bytes"] == 0


def test_pooled_outputs_are_ordinary_tensors():
    x = torch.randn(4, 8, 96, 96).contiguous(memory_format=torch.channels_last)
    y = fastconv.max_pool2d(x, 2)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, F.max_pool2d(x, 2))
    v = y[:, 2:5].sum(dim=1)
    torch.testing.assert_close(v, F.max_pool2d(x, 2)[:, 2:5].sum(dim=1))
    assert torch.equal(pickle.loads(pickle.dumps(y)), y)
    y.resize_(10, 10).fill_(1.0)
    y.resize_(4, 8, 96, 96).fill_(2.0)  # grows: reallocated through the same cache
    assert y.sum().item() == 2.0 * y.numel()


def test_cache_off_by_environment():
    code = ("import torch, fastconv; from fastconv import _ext; "
            "y = fastconv.relu(torch.randn(1 << 20)); del y; "
            "i = _ext._C.output_cache_info(); assert i == {'bytes': 0, 'limit_bytes': 0}, i")
    env = dict(os.environ, FASTCONV_OUTPUT_CACHE_MB="0")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
