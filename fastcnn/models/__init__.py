"""fastcnn model zoo: VGG-16, ResNet-18/34/50 and Xception built from :mod:`fastcnn.nn` layers.

VGG and ResNet keep torchvision's ``state_dict`` keys, so torchvision weights load unchanged::

    model = fastcnn.models.resnet50(weights="resnet50.pth")  # a path, or a state_dict

Nothing is downloaded: ``weights`` is a local file written by ``torch.save`` or a state_dict in memory.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ._weights import Weights, load_weights, read_state_dict
from .resnet import ResNet, resnet18, resnet34, resnet50
from .vgg import VGG, vgg16
from .xception import Xception, xception

__all__ = [
    "VGG",
    "ResNet",
    "Weights",
    "Xception",
    "get_model",
    "list_models",
    "load_weights",
    "read_state_dict",
    "resnet18",
    "resnet34",
    "resnet50",
    "vgg16",
    "xception",
]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "vgg16": vgg16,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "xception": xception,
}


def list_models() -> list[str]:
    """Names accepted by :func:`get_model` (and ``fastcnn train --model``)."""
    return list(_BUILDERS)


def get_model(name: str, num_classes: int = 1000, weights: Weights | None = None) -> nn.Module:
    """Builds the zoo model ``name`` (see :func:`list_models`) with ``num_classes`` outputs."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(_BUILDERS)}")
    return _BUILDERS[name](num_classes=num_classes, weights=weights)
