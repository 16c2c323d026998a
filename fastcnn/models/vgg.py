"""VGG-16 (Simonyan & Zisserman, 2015) on fastcnn layers, with torchvision's state_dict keys."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from .. import nn as fnn
from ._weights import Weights, load_weights

__all__ = ["VGG", "vgg16"]

# Channels of each 3x3 conv, "M" a 2x2 max-pool: configuration "D" of the paper.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _features(config: list[int | str]) -> nn.Sequential:
    # torchvision numbers conv, ReLU and pool alike; the ReLU runs in the conv's epilogue here, so its
    # index is skipped and the conv/pool keep theirs: "features.<i>.weight" matches torchvision's.
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    index, channels = 0, 3
    for item in config:
        if item == "M":
            layers[str(index)] = fnn.MaxPool2d(kernel_size=2, stride=2)
            index += 1
        else:
            layers[str(index)] = fnn.Conv2d(channels, int(item), 3, padding=1, activation="relu")
            channels = int(item)
            index += 2
    return nn.Sequential(layers)


class VGG(nn.Module):
    """VGG: conv features, a 7x7 adaptive average pool and a three-layer classifier.

    ``state_dict`` keys are torchvision's (``features.<i>``, ``classifier.{0,3,6}``), so torchvision VGG
    weights load unchanged. The ReLUs run in the conv/linear epilogues.
    """

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.avgpool = fnn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("0", fnn.Linear(512 * 7 * 7, 4096, activation="relu")),
                    ("2", nn.Dropout(p=dropout)),
                    ("3", fnn.Linear(4096, 4096, activation="relu")),
                    ("5", nn.Dropout(p=dropout)),
                    ("6", fnn.Linear(4096, num_classes)),
                ]
            )
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16(num_classes: int = 1000, weights: Weights | None = None, *, dropout: float = 0.5) -> VGG:
    """VGG-16 on fastcnn layers. ``weights``: a path or state_dict, e.g. torchvision's ``vgg16`` weights
    saved with ``torch.save(model.state_dict(), path)`` (``num_classes`` must match them)."""
    return load_weights(VGG(_features(_VGG16), num_classes=num_classes, dropout=dropout), weights)
