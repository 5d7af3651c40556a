"""pytest-benchmark suites: each op, fastconv and torch side by side in one group.

    .venv/bin/python -m pytest benchmarks --benchmark-group-by=group --benchmark-columns=median,ops

Ratios are read across the pair in a group (same run); nothing here asserts on time.
"""
import pytest
import torch
import torch.nn.functional as TF

import fastconv
from fastconv.bench import LAYERS

IMPLS = {"fastconv": fastconv, "torch": TF}


def _rand(*shape, cl=False):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    return t.contiguous(memory_format=torch.channels_last) if cl else t


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("layer", LAYERS, ids=[l[0] for l in LAYERS])
def test_conv2d_fwd(benchmark, impl, layer):
    name, c, h, k, r, s, p = layer
    x, w = _rand(8, c, h, h), _rand(k, c, r, r)
    benchmark.group = f"conv2d_fwd {name}"
    benchmark(IMPLS[impl].conv2d, x, w, None, s, p)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_max_pool2d(benchmark, impl, cl):
    x = _rand(8, 64, 112, 112, cl=cl)
    benchmark.group = f"max_pool2d {'nhwc' if cl else 'nchw'}"
    benchmark(IMPLS[impl].max_pool2d, x, 3, 2, 1)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_avg_pool2d(benchmark, impl):
    x = _rand(8, 256, 28, 28, cl=True)
    benchmark.group = "avg_pool2d"
    benchmark(IMPLS[impl].avg_pool2d, x, 3, 1, 1)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_adaptive_avg_pool2d(benchmark, impl):
    x = _rand(8, 2048, 7, 7, cl=True)
    benchmark.group = "adaptive_avg_pool2d"
    benchmark(IMPLS[impl].adaptive_avg_pool2d, x, 1)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_relu(benchmark, impl):
    x = _rand(8, 256, 56, 56)
    benchmark.group = "relu"
    benchmark(IMPLS[impl].relu, x)


def _torch_sort(a, b, eps=0.01):
    return a + b + torch.sqrt(TF.relu(a) * TF.relu(b) + eps)


@pytest.mark.parametrize("impl", ["fastconv", "torch"])
def test_sort(benchmark, impl):
    a, b = _rand(8, 256, 56, 56), _rand(8, 256, 56, 56)
    benchmark.group = "sort"
    benchmark(fastconv.sort if impl == "fastconv" else _torch_sort, a, b)
