"""Xception (Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions", CVPR 2017) on
fastcnn layers.

Every separable conv is a depthwise 3x3 conv (``groups == in_channels``) followed by a pointwise 1x1 conv,
with no non-linearity between them, as in the paper. Entry flow (3 strided blocks), middle flow (8
blocks of three separable convs at 728 channels) and exit flow, each block joined to a 1x1 projection
or the identity by :class:`fastcnn.nn.ResidualAdd`. The input is 299x299 by default; any size from about
64x64 works (global average pooling before the classifier). Module names follow the widely used PyTorch
port (``block1.skip``, ``block1.rep.<i>``, ``conv3.pointwise``, ``fc``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import nn as fnn
from ._weights import Weights, load_weights

__all__ = ["Block", "SeparableConv2d", "Xception", "xception"]


class SeparableConv2d(nn.Module):
    """Depthwise ``kernel_size`` conv then pointwise 1x1 conv (no bias, no activation in between)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = fnn.Conv2d(
            in_channels, in_channels, kernel_size, stride, padding, dilation, groups=in_channels, bias=False
        )
        self.pointwise = fnn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.conv1(x))


class Block(nn.Module):
    """``reps`` x (ReLU, separable conv, BN), a 3x3 stride-2 max-pool when strided, plus the skip path."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        reps: int,
        stride: int = 1,
        start_with_relu: bool = True,
        grow_first: bool = True,
    ) -> None:
        super().__init__()
        if out_channels != in_channels or stride != 1:
            self.skip = fnn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(out_channels)
        else:
            self.skip = None
            self.skipbn = None
        # Channels along the rep path: grow to out_channels at the first separable conv, or at the last.
        if grow_first:
            widths = [in_channels] + [out_channels] * reps
        else:
            widths = [in_channels] * reps + [out_channels]
        rep: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            rep += [fnn.ReLU(), SeparableConv2d(cin, cout), nn.BatchNorm2d(cout)]
        if not start_with_relu:
            rep = rep[1:]
        if stride != 1:
            rep.append(fnn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*rep)
        self.join = fnn.ResidualAdd()

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.skip is None else self.skipbn(self.skip(x))
        return self.join(self.rep(x), skip)


class Xception(nn.Module):
    """Xception: entry flow, 8 middle-flow blocks, exit flow, global average pool and a linear head."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = fnn.Conv2d(in_channels, 32, 3, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = fnn.ReLU()
        self.conv2 = fnn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu2 = fnn.ReLU()
        self.block1 = Block(64, 128, 2, 2, start_with_relu=False)
        self.block2 = Block(128, 256, 2, 2)
        self.block3 = Block(256, 728, 2, 2)
        for i in range(4, 12):
            self.add_module(f"block{i}", Block(728, 728, 3, 1))
        self.block12 = Block(728, 1024, 2, 2, grow_first=False)
        self.conv3 = SeparableConv2d(1024, 1536)
        self.bn3 = nn.BatchNorm2d(1536)
        self.relu3 = fnn.ReLU()
        self.conv4 = SeparableConv2d(1536, 2048)
        self.bn4 = nn.BatchNorm2d(2048)
        self.relu4 = fnn.ReLU()
        self.avgpool = fnn.AdaptiveAvgPool2d((1, 1))
        self.fc = fnn.Linear(2048, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """The 2048-channel feature map before pooling."""
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        for i in range(1, 13):
            x = getattr(self, f"block{i}")(x)
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.relu4(self.bn4(self.conv4(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


def xception(num_classes: int = 1000, weights: Weights | None = None, *, in_channels: int = 3) -> Xception:
    """Xception on fastcnn layers (299x299 inputs by default; any size from about 64x64 works).
    ``weights``: a path or state_dict saved from this model."""
    return load_weights(Xception(num_classes=num_classes, in_channels=in_channels), weights)
