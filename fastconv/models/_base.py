import torch

from fastconv.nn import Named, cache_weights, fuse_module


class FusableNet(Named, torch.nn.Module):
    def fuse(self):
        """Turn on the fused inference path of every block (in place; taken in eval mode only)."""
        for m in self.modules():
            fuse_module(m)
        cache_weights(self)
        return self


def init_resnet(model, zero_init_residual=False):
    """torchvision's ResNet initialization (kaiming fan_out for convs, unit BN)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
            torch.nn.init.constant_(m.weight, 1)
            torch.nn.init.constant_(m.bias, 0)
    if zero_init_residual:
        for m in model.modules():
            last = getattr(m, "bn3", None) if hasattr(m, "conv3") else getattr(m, "bn2", None)
            if hasattr(m, "downsample") and last is not None and last.weight is not None:
                torch.nn.init.constant_(last.weight, 0)
