"""A seeded slice of the randomized convert campaign (tests/random_convnets.py): random torchvision,
timm and sequential convnets converted in eval and train mode agree with torch in float64 (logits,
input and parameter gradients)."""
import pytest

import random_convnets as rc

KINDS = ["torchvision resnet", "torchvision", "sequential"]
try:
    import timm  # noqa: F401
    KINDS.append("timm")
except ImportError:
    pass


@pytest.mark.parametrize("seed", range(24))
def test_random_convnet_converts_faithfully(seed):
    msg = rc.check(seed, KINDS)
    if msg == rc.SKIP:
        pytest.skip("a draw torch itself cannot run")
    assert msg is None, msg
