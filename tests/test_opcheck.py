"""torch.library.opcheck on every operator in torch.ops.fastconv (schema, fake/meta kernel, autograd
registration, AOT dispatch), on sample inputs including channels_last and requires_grad variants."""
import pytest
import torch
import torch.nn.functional as F

import fastconv.ops  # noqa: F401  (fake + autograd registrations)
from conftest import DEVICES

ops = torch.ops.fastconv


def _t(*shape, device="cpu", cl=False, grad=False, dtype=torch.float32):
    t = torch.randn(*shape, device=device, dtype=dtype)
    if cl:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(grad)


def samples(device):
    """{op name: [(id, args)]}; args built fresh for every call."""
    d = dict(device=device)
    conv = [1, 1], [1, 1, 1, 1], [1, 1], 1
    conv_g = [2, 1], [0, 1, 2, 1], [1, 2], 2
    x_idx = torch.randn(2, 3, 9, 8, device=device)
    _, idx = F.max_pool2d(x_idx, 3, 2, 1, return_indices=True)
    _, idx_cl = F.max_pool2d(x_idx.contiguous(memory_format=torch.channels_last), 3, 2, 1, return_indices=True)
    return {
        "conv2d_fwd": [
            ("nchw", lambda: (_t(2, 3, 7, 6, **d), _t(4, 3, 3, 3, **d), _t(4, **d), *conv)),
            ("cl_grad", lambda: (_t(2, 3, 7, 6, cl=True, grad=True, **d), _t(4, 3, 3, 3, grad=True, **d),
                                 _t(4, grad=True, **d), *conv)),
            ("groups_grad", lambda: (_t(1, 4, 9, 7, grad=True, **d), _t(6, 2, 2, 3, grad=True, **d), None, *conv_g)),
        ],
        "conv2d_bwd_input": [
            ("nchw", lambda: (_t(2, 4, 7, 6, **d), _t(4, 3, 3, 3, **d), [2, 3, 7, 6], *conv)),
            ("cl", lambda: (_t(2, 4, 7, 6, cl=True, **d), _t(4, 3, 3, 3, **d), [2, 3, 7, 6], *conv)),
        ],
        "conv2d_bwd_weight": [
            ("nchw", lambda: (_t(2, 4, 7, 6, **d), _t(2, 3, 7, 6, **d), [4, 3, 3, 3], *conv)),
            ("cl_groups", lambda: (_t(1, 6, 5, 6, cl=True, **d), _t(1, 4, 9, 7, cl=True, **d), [6, 2, 2, 3], *conv_g)),
        ],
        "conv2d_bwd_bias": [("nchw", lambda: (_t(2, 4, 5, 6, **d),)), ("cl", lambda: (_t(2, 4, 5, 6, cl=True, **d),))],
        "conv2d_fused_fwd": [
            ("plain", lambda: (_t(2, 3, 7, 6, **d), _t(4, 3, 3, 3, **d), None, *conv, None, None, None, 0, False, 0,
                               0.01)),
            ("sort_grad", lambda: (_t(2, 3, 7, 6, grad=True, **d), _t(4, 3, 3, 3, grad=True, **d),
                                   _t(4, grad=True, **d), *conv, _t(4, grad=True, **d), _t(4, grad=True, **d),
                                   _t(2, 4, 7, 6, grad=True, **d), 2, True, 0, 0.01)),
            ("add_cl_grad", lambda: (_t(2, 3, 7, 6, cl=True, grad=True, **d), _t(4, 3, 3, 3, grad=True, **d), None,
                                     *conv, None, _t(4, grad=True, **d), _t(2, 4, 7, 6, cl=True, grad=True, **d), 1,
                                     False, 0, 0.01)),
            ("product_groups_grad", lambda: (_t(1, 4, 9, 7, grad=True, **d), _t(6, 2, 2, 3, grad=True, **d), None,
                                             *conv_g, _t(6, grad=True, **d), None, _t(1, 6, 5, 6, grad=True, **d), 2,
                                             True, 1, 0.5)),
        ],
        "max_pool2d_values": [
            ("nchw", lambda: (_t(2, 3, 9, 8, **d), [3, 3], [2, 2], [1, 1], [1, 1], False)),
            ("cl_ceil", lambda: (_t(2, 3, 9, 8, cl=True, **d), [3, 2], [2, 2], [1, 1], [1, 2], True)),
        ],
        "max_pool2d_fwd": [
            ("grad", lambda: (_t(2, 3, 9, 8, grad=True, **d), [3, 3], [2, 2], [1, 1], [1, 1], False)),
            ("cl_ceil_grad", lambda: (_t(2, 3, 9, 8, cl=True, grad=True, **d), [3, 2], [2, 2], [1, 1], [1, 2],
                                      True)),
        ],
        "max_pool2d_bwd": [
            ("nchw", lambda: (_t(*idx.shape, **d), idx.clone(), [2, 3, 9, 8])),
            ("cl", lambda: (_t(*idx.shape, cl=True, **d), idx_cl.clone(), [2, 3, 9, 8])),
        ],
        "avg_pool2d_fwd": [
            ("grad", lambda: (_t(2, 3, 9, 8, grad=True, **d), [3, 3], [2, 2], [1, 1], True, False, None)),
            ("cl_div_grad", lambda: (_t(2, 3, 9, 8, cl=True, grad=True, **d), [2, 3], [1, 2], [1, 1], False, True,
                                     5)),
        ],
        "avg_pool2d_bwd": [
            ("nchw", lambda: (_t(2, 3, 5, 5, **d), [2, 3, 9, 8], [3, 3], [2, 2], [1, 1], True, False, None)),
            ("cl", lambda: (_t(2, 3, 10, 4, cl=True, **d), [2, 3, 9, 8], [2, 3], [1, 2], [1, 1], False, True, 5)),
        ],
        "adaptive_avg_pool2d_fwd": [
            ("grad", lambda: (_t(2, 3, 9, 8, grad=True, **d), [4, 3])),
            ("cl_grad", lambda: (_t(2, 3, 9, 8, cl=True, grad=True, **d), [2, 5])),
        ],
        "adaptive_avg_pool2d_bwd": [
            ("nchw", lambda: (_t(2, 3, 4, 3, **d), [2, 3, 9, 8])),
            ("cl", lambda: (_t(2, 3, 2, 5, cl=True, **d), [2, 3, 9, 8])),
        ],
        "relu_fwd": [
            ("grad", lambda: (_t(2, 3, 5, 4, grad=True, **d),)),
            ("cl_grad", lambda: (_t(2, 3, 5, 4, cl=True, grad=True, **d),)),
            ("1d_grad", lambda: (_t(17, grad=True, **d),)),
        ],
        "relu_bwd": [
            ("nchw", lambda: (_t(2, 3, 5, 4, **d), F.relu(_t(2, 3, 5, 4, **d)))),
            ("cl", lambda: (_t(2, 3, 5, 4, cl=True, **d), F.relu(_t(2, 3, 5, 4, cl=True, **d)))),
        ],
        "sort_fwd": [
            ("sqrt_grad", lambda: (_t(2, 3, 5, 4, grad=True, **d), _t(2, 3, 5, 4, grad=True, **d), 0, 0.01)),
            ("product_cl_grad", lambda: (_t(2, 3, 5, 4, cl=True, grad=True, **d),
                                         _t(2, 3, 5, 4, cl=True, grad=True, **d), 1, 0.01)),
            ("3d_grad", lambda: (_t(3, 5, 4, grad=True, **d), _t(3, 5, 4, grad=True, **d), 0, 1.0)),
        ],
        "bn_relu_train_fwd": [
            ("cl_residual_grad", lambda: (_t(2, 3, 5, 4, cl=True, grad=True, **d), _t(3, grad=True, **d),
                                          _t(3, grad=True, **d), _t(2, 3, 5, 4, cl=True, grad=True, **d), 1e-5)),
            ("nchw_float64_grad", lambda: (_t(3, 4, 3, 2, grad=True, dtype=torch.float64, **d), None, None, None,
                                           1e-3)),
        ],
        "bn_relu_train_bwd": [
            ("cl_residual", lambda: (_t(2, 3, 5, 4, cl=True, **d), _t(2, 3, 5, 4, cl=True, **d),
                                     F.relu(_t(2, 3, 5, 4, cl=True, **d)), _t(3, **d), _t(3, **d),
                                     _t(3, **d).abs() + 0.5, True)),
            ("nchw", lambda: (_t(2, 3, 5, 4, **d), _t(2, 3, 5, 4, **d), F.relu(_t(2, 3, 5, 4, **d)), None,
                              _t(3, **d), _t(3, **d).abs() + 0.5, False)),
        ],
        "sort_bwd": [
            ("sqrt", lambda: (_t(2, 3, 5, 4, **d), _t(2, 3, 5, 4, **d), _t(2, 3, 5, 4, **d), 0, 0.01)),
            ("product_cl", lambda: (_t(2, 3, 5, 4, cl=True, **d), _t(2, 3, 5, 4, cl=True, **d),
                                    _t(2, 3, 5, 4, cl=True, **d), 1, 0.01)),
        ],
    }


def registered_ops():
    return sorted({n.split("::")[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names()
                   if n.startswith("fastconv::")})


def test_every_op_has_samples():
    assert set(registered_ops()) == set(samples("cpu"))


CASES = [(op, sid) for op, lst in samples("cpu").items() for sid, _ in lst]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,sid", CASES, ids=[f"{o}-{s}" for o, s in CASES])
def test_opcheck(op, sid, device):
    if op.startswith("bn_relu_train") and device != "cpu":
        pytest.skip("the training-mode batch norm operator is CPU-only")
    torch.manual_seed(0)
    make = dict(samples(device)[op])[sid]
    torch.library.opcheck(getattr(ops, op).default, make())
