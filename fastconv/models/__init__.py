"""Nets built from fastconv modules. With sort=False their state_dicts are those of the torchvision
nets of the same name (load either way, strictly); sort=True swaps residual additions (or single
convs, for AlexNet) for SORT. `model.fuse()` turns on the fused inference path (eval mode)."""
from fastconv.models.alexnet import AlexNet, alexnet
from fastconv.models.cifar import CifarResNet, cifar_resnet20, cifar_resnet32, cifar_resnet56
from fastconv.models.resnet import ResNet, resnet18, resnet34, resnet50

__all__ = ["ResNet", "resnet18", "resnet34", "resnet50", "AlexNet", "alexnet", "CifarResNet",
           "cifar_resnet20", "cifar_resnet32", "cifar_resnet56"]
