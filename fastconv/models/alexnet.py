"""AlexNet with torchvision's layout (state_dicts interchange); sort=True: AlexNet-SORT, whose
conv2..conv5 are two-branch convolutions fused by SORT (fastconv.nn.SORTConv2d)."""
import torch

from fastconv import nn
from fastconv.models._base import FusableNet


class AlexNet(FusableNet):
    """AlexNet (torchvision's layout and state_dict); sort=True: conv2..conv5 as SORTConv2d."""

    def __init__(self, num_classes=1000, dropout=0.5, sort=False, mode="sqrt", eps=0.01):
        super().__init__()

        def conv(cin, cout, k, stride=1, padding=0, first=False):
            if sort and not first:
                return nn.SORTConv2d(cin, cout, k, stride, padding, mode=mode, eps=eps)
            return nn.Conv2d(cin, cout, k, stride, padding)

        self.features = nn.Sequential(
            conv(3, 64, 11, 4, 2, first=True), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            conv(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            conv(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            conv(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            conv(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            torch.nn.Dropout(dropout), torch.nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            torch.nn.Dropout(dropout), torch.nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            torch.nn.Linear(4096, num_classes))

    def forward(self, x):
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def alexnet(sort=False, num_classes=1000, **kw):
    """AlexNet, or AlexNet-SORT with sort=True (kw: dropout, mode, eps)."""
    return AlexNet(num_classes=num_classes, sort=sort, **kw)
