"""ONNX export of models on fastconv's native operators, by both exporters (torch.onnx.export with
dynamo=False, and dynamo=True through fastconv.onnx.export's translations): the graph holds standard
ONNX operators only, and ONNX's reference evaluator reproduces torch's outputs."""
import io

import pytest
import torch
import torchvision

import fastconv
import fastconv.onnx
from fastconv import _ext

onnx = pytest.importorskip("onnx")
pytestmark = pytest.mark.skipif(not _ext.native_available(), reason="native extension not built")


EXPORTERS = ["torchscript", "dynamo"]


def _export(exporter, model, *xs):
    from onnx.reference import ReferenceEvaluator
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
        m = fastconv.onnx.export(model, xs, verbose=False).model_proto
    else:
        f = io.BytesIO()
        torch.onnx.export(model, xs, f, dynamo=False, opset_version=17)
        m = onnx.load_from_string(f.getvalue())
    assert all(n.domain in ("", "ai.onnx") for n in m.graph.node), {n.domain for n in m.graph.node}
    feeds = {i.name: x.numpy() for i, x in zip(m.graph.input, xs)}
    return [torch.from_numpy(o) for o in ReferenceEvaluator(m).run(None, feeds)]


class Pools(torch.nn.Module):
    def __init__(self, F=fastconv):
        super().__init__()
        self.F = F

    def forward(self, x):
        F = self.F
        y, idx = F.max_pool2d(x, 3, 2, 1, return_indices=True, ceil_mode=True)
        z = F.avg_pool2d(F.relu(x), 3, 2, 1, ceil_mode=True, count_include_pad=False)
        s = z + z.flip(1) + F.relu(z) * F.relu(z.flip(1)) if F is torch.nn.functional else \
            F.sort(z, z.flip(1), mode="product")
        return y, idx, z, F.adaptive_avg_pool2d(z, (3, 1)), s


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["resnet18_fused", "sort_resnet20_fused", "alexnet_sort", "pools"])
def test_export_matches_torch(name, exporter):
    torch.manual_seed(0)
    if name == "resnet18_fused":
        model, x = fastconv.convert(torchvision.models.resnet18(num_classes=5).eval()), torch.randn(1, 3, 32, 32)
    elif name == "sort_resnet20_fused":
        model, x = fastconv.models.cifar_resnet20(sort=True).eval().fuse(), torch.randn(2, 3, 16, 16)
    elif name == "alexnet_sort":  # adaptive pooling from 1x1 up to 6x6
        model, x = fastconv.models.alexnet(sort=True, num_classes=5).eval().fuse(), torch.randn(1, 3, 64, 64)
    else:
        model, x = Pools(), torch.randn(2, 3, 10, 8)  # z: 6x5
    with torch.no_grad():
        want = model(x)
    want = list(want) if isinstance(want, tuple) else [want]
    if name == "pools":  # ONNX's reference evaluator numbers MaxPool indices its own way: compare the
        want[1] = _export(exporter, Pools(torch.nn.functional), x)[1]  # indices with torch's own export there
    for a, b in zip(_export(exporter, model, x), want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()), check_dtype=False)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_export_refuses_what_onnx_cannot_express(exporter):
    class Div(torch.nn.Module):
        def forward(self, x):
            return fastconv.avg_pool2d(x, 2, divisor_override=3)

    with pytest.raises(Exception, match="divisor_override"):
        _export(exporter, Div(), torch.randn(1, 2, 4, 4))
