"""ResNet-18/34/50 (He et al., 2016) on fastcnn layers, with torchvision's state_dict keys.

The residual join ``relu(bn(conv(x)) + identity)`` is one :class:`fastcnn.nn.ResidualAdd` pass while
training (BatchNorm sits between the conv and the add); :func:`fastcnn.fuse` folds the BatchNorm for
inference and moves the join into the conv's epilogue (``conv(x, residual=identity)`` with ReLU).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import nn as fnn
from ._weights import Weights, load_weights

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> fnn.Conv2d:
    return fnn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> fnn.Conv2d:
    return fnn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs and the identity (or a strided 1x1 conv + BN) joined by a fused add + ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = fnn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.join = fnn.ResidualAdd(activation="relu")

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.join(self.bn2(self.conv2(out)), identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, as torchvision's "ResNet v1.5"), 1x1 expand (x4), fused add + ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = fnn.ReLU()
        self.downsample = downsample
        self.join = fnn.ResidualAdd(activation="relu")

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.join(self.bn3(self.conv3(out)), identity)


class ResNet(nn.Module):
    """ResNet: 7x7 stem, max-pool, four stages of residual blocks, global average pool, linear head."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = fnn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = fnn.ReLU()
        self.maxpool = fnn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = fnn.AdaptiveAvgPool2d((1, 1))
        self.fc = fnn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each block starts as the identity (Goyal et al., 2017)
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _resnet(block, layers, num_classes, weights, zero_init_residual) -> ResNet:
    model = ResNet(block, layers, num_classes=num_classes, zero_init_residual=zero_init_residual)
    return load_weights(model, weights)


def resnet18(
    num_classes: int = 1000, weights: Weights | None = None, *, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-18 on fastcnn layers. ``weights``: a path or state_dict with torchvision's keys (e.g.
    ``torchvision.models.resnet18().state_dict()``); ``num_classes`` must match them."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, weights, zero_init_residual)


def resnet34(
    num_classes: int = 1000, weights: Weights | None = None, *, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-34 on fastcnn layers; ``weights`` as for :func:`resnet18`."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, weights, zero_init_residual)


def resnet50(
    num_classes: int = 1000, weights: Weights | None = None, *, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-50 (torchvision's v1.5: stride in the 3x3 conv) on fastcnn layers; ``weights`` as for
    :func:`resnet18`."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, weights, zero_init_residual)
