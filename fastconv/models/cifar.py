"""CIFAR-style ResNet-20/32/56 (He et al. 2016, sec. 4.2): 3x3 stem of 16 channels, three stages of
n BasicBlocks with 16/32/64 channels (stride 2 at stages 2 and 3), global average pool, linear.
Shortcuts that change shape are a strided 1x1 conv + BN (option B); sort=True fuses each residual
by SORT instead of addition, as in the SORT paper's CIFAR ResNets."""
import torch

from fastconv import nn
from fastconv.models._base import FusableNet, init_resnet


class CifarResNet(nn.Fusable, FusableNet):
    """CIFAR-style ResNet of depth 6n + 2; sort=True fuses each residual by SORT."""

    def __init__(self, depth=20, num_classes=10, in_channels=3, sort=False, mode="sqrt", eps=0.01):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CifarResNet: 'depth' must be 6n+2 (20, 32, 56, ...), got {depth}")
        n = (depth - 2) // 6
        kw = dict(combine="sort" if sort else "add", mode=mode, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        cin, stages = 16, []
        for i, width in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                down = None
                if stride != 1 or cin != width:
                    down = nn.Sequential(nn.Conv2d(cin, width, 1, stride=stride, bias=False),
                                         torch.nn.BatchNorm2d(width))
                blocks.append(nn.BasicBlock(cin, width, stride, down, **kw))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = torch.nn.Linear(64, num_classes)
        init_resnet(self)

    def forward(self, x):
        x = nn.conv_bn_act(self.conv1, self.bn1, x, act=self.relu, fuse=self._use_fused())
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cifar_resnet20(sort=False, num_classes=10, **kw):
    """CIFAR ResNet-20 (kw: in_channels, mode, eps); sort=True: SORT-ResNet-20."""
    return CifarResNet(20, num_classes, sort=sort, **kw)


def cifar_resnet32(sort=False, num_classes=10, **kw):
    """CIFAR ResNet-32 (kw: in_channels, mode, eps); sort=True: SORT-ResNet-32."""
    return CifarResNet(32, num_classes, sort=sort, **kw)


def cifar_resnet56(sort=False, num_classes=10, **kw):
    """CIFAR ResNet-56 (kw: in_channels, mode, eps); sort=True: SORT-ResNet-56."""
    return CifarResNet(56, num_classes, sort=sort, **kw)
