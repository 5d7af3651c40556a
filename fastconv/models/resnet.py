"""ResNet-18/34/50 with torchvision's layout (state_dicts interchange); sort=True: SORT-ResNet."""
import torch

from fastconv import nn
from fastconv.models._base import FusableNet, init_resnet


class ResNet(nn.Fusable, FusableNet):
    """torchvision's ResNet (same children and state_dict) built from fastconv modules; combine='sort'
    fuses each residual by SORT."""

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, combine="add",
                 mode="sqrt", eps=0.01):
        super().__init__()
        self.inplanes = 64
        self.dilation = 1
        self.groups, self.base_width = 1, 64
        self._block_kw = dict(combine=combine, mode=mode, eps=eps)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = torch.nn.Linear(512 * block.expansion, num_classes)
        init_resnet(self, zero_init_residual)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride,
                                                 bias=False),
                                       torch.nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, **self._block_kw)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **self._block_kw) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = nn.conv_bn_act(self.conv1, self.bn1, x, act=self.relu, fuse=self._use_fused())
        x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _resnet(block, layers, sort, num_classes, mode, eps, **kw):
    return ResNet(block, layers, num_classes=num_classes, combine="sort" if sort else "add", mode=mode, eps=eps,
                  **kw)


def resnet18(sort=False, num_classes=1000, mode="sqrt", eps=0.01, **kw):
    """ResNet-18 (torchvision's state_dict); sort=True: SORT-ResNet-18."""
    return _resnet(nn.BasicBlock, [2, 2, 2, 2], sort, num_classes, mode, eps, **kw)


def resnet34(sort=False, num_classes=1000, mode="sqrt", eps=0.01, **kw):
    """ResNet-34 (torchvision's state_dict); sort=True: SORT-ResNet-34."""
    return _resnet(nn.BasicBlock, [3, 4, 6, 3], sort, num_classes, mode, eps, **kw)


def resnet50(sort=False, num_classes=1000, mode="sqrt", eps=0.01, **kw):
    """ResNet-50 (torchvision's state_dict, v1.5); sort=True: SORT-ResNet-50."""
    return _resnet(nn.Bottleneck, [3, 4, 6, 3], sort, num_classes, mode, eps, **kw)
