"""A converted model trains under DistributedDataParallel (gloo, 2 CPU processes): one step's
gradients equal those of one process on the concatenated batch. Winograd is off on both sides: it
is chosen by geometry, batch size included, so the halves and the whole batch could take different
paths, whose float32 rounding the SORT network below amplifies past the comparison's 1e-4."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastconv

from conftest import winograd

pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make(kind):
    torch.manual_seed(0)
    if kind == "chain":  # no BN: DDP's per-rank statistics would differ from the full batch's
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                  torch.nn.Conv2d(6, 8, 3, stride=2), torch.nn.ReLU(),
                                  torch.nn.AvgPool2d(2, ceil_mode=True), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(8, 4))
        return fastconv.convert(net.train())
    # SORT ResNet with frozen (eval) BN on the fused path: exercises conv2d_fused's backward
    return fastconv.models.cifar_resnet20(sort=True, num_classes=4).eval().fuse()


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 10, 10, generator=g), torch.randint(0, 4, (8,), generator=g)


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


KINDS = ("chain", "sort_resnet_fused")


def _worker(rank, world, port, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        grads = {}
        with winograd(False):
            for kind in KINDS:
                model = torch.nn.parallel.DistributedDataParallel(_make(kind))
                x, y = _batch()
                n = x.shape[0] // world
                part = slice(rank * n, (rank + 1) * n)
                torch.nn.functional.cross_entropy(model(x[part]), y[part]).backward()
                grads[kind] = _grads(model.module)
        torch.save(grads, f"{path}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_process_gradients_match_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for kind in KINDS:
        model = _make(kind)
        x, y = _batch()
        with winograd(False):
            torch.nn.functional.cross_entropy(model(x), y).backward()
        for ref, g0, g1 in zip(_grads(model), per_rank[0][kind], per_rank[1][kind], strict=True):
            torch.testing.assert_close(g0, g1)  # DDP averaged them across ranks
            torch.testing.assert_close(g0, ref, rtol=1e-4, atol=1e-5)
