"""Transfer-learning helpers: replace a classifier head, freeze/unfreeze layers, per-part learning rates.

They work on any ``nn.Module`` whose classifier is its last ``nn.Linear`` (registration order): fastcnn's
model zoo, torchvision's classification models (VGG, ResNet, GoogLeNet, Inception-v3, MobileNetV2, ...),
and models converted with :func:`fastcnn.convert`.

Typical use::

    model = fastcnn.models.resnet50(weights="resnet50.pth")
    fastcnn.transfer.replace_head(model, num_classes=5)
    fastcnn.transfer.freeze_backbone(model)
    optimizer = torch.optim.SGD(fastcnn.transfer.param_groups(model, lr=0.01), momentum=0.9)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from torch import nn

from . import nn as fnn
from .convert import supported_dtypes

__all__ = [
    "eval_batchnorm",
    "eval_frozen_batchnorm",
    "find_head",
    "freeze",
    "freeze_backbone",
    "param_groups",
    "replace_head",
    "trainable_parameters",
    "unfreeze",
]

Patterns = str | Sequence[str]


def find_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The qualified name and module of the classifier head: the last ``nn.Linear`` registered in
    ``model`` (``fc`` of a ResNet, ``classifier.6`` of a VGG, ``classifier.1`` of a MobileNetV2)."""
    found: tuple[str, nn.Linear] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to use as its classifier head")
    return found


def replace_head(model: nn.Module, num_classes: int, *, name: str | None = None) -> nn.Linear:
    """Replaces the classifier head (the last ``nn.Linear``, or the layer called ``name``) by a freshly
    initialised linear layer with ``num_classes`` outputs, in place, and returns the new layer.

    The new layer is a :class:`fastcnn.nn.Linear` (a plain ``nn.Linear`` where fastcnn's kernels do not
    take the old layer's dtype/device), on the old layer's device and dtype, trainable, with a bias when
    the old one had one. An ``int`` attribute ``num_classes`` on the model is updated too.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if name is None:
        name, old = find_head(model)
    else:
        old = model.get_submodule(name)
        if not isinstance(old, nn.Linear):
            raise TypeError(f"{name!r} is a {type(old).__name__}, not an nn.Linear")
    if not name:
        raise ValueError("model is itself a Linear layer: build a new one instead of replacing its head")
    weight = old.weight
    cls = fnn.Linear if weight.dtype in supported_dtypes(weight.device) else nn.Linear
    head = cls(
        old.in_features, num_classes, bias=old.bias is not None, device=weight.device, dtype=weight.dtype
    )
    head.train(old.training)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, head)
    if isinstance(getattr(model, "num_classes", None), int):
        model.num_classes = num_classes
    return head


def _as_list(patterns: Patterns | None) -> list[str]:
    if patterns is None:
        return []
    return [patterns] if isinstance(patterns, str) else list(patterns)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    # A pattern is an fnmatch glob on the parameter name ("layer1.*", "*.bn*.weight"); a plain module
    # name ("layer1", "features.0") also matches everything under that module.
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


def _select(
    model: nn.Module, patterns: Patterns | None, depth: int | None, exclude: Patterns | None
) -> list[tuple[str, nn.Parameter]]:
    include = _as_list(patterns)
    if depth is not None:
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        include += [name for name, _ in list(model.named_children())[:depth]]
    everything = patterns is None and depth is None
    skip = _as_list(exclude)
    return [
        (name, p)
        for name, p in model.named_parameters()
        if (everything or _matches(name, include)) and not _matches(name, skip)
    ]


def freeze(
    model: nn.Module,
    patterns: Patterns | None = None,
    *,
    depth: int | None = None,
    exclude: Patterns | None = None,
) -> list[str]:
    """Sets ``requires_grad=False`` on the selected parameters and returns their names.

    Selection: ``patterns`` (fnmatch globs on parameter names, or module names such as ``"layer1"``),
    and/or ``depth`` (the first ``depth`` top-level children, in registration order: ``depth=5`` on a
    ResNet is the stem and ``layer1``), minus ``exclude``. With neither ``patterns`` nor ``depth``,
    every parameter. BatchNorm running statistics still update in train mode: see
    :func:`eval_frozen_batchnorm`.
    """
    selected = _select(model, patterns, depth, exclude)
    for _, p in selected:
        p.requires_grad_(False)
    return [name for name, _ in selected]


def unfreeze(
    model: nn.Module,
    patterns: Patterns | None = None,
    *,
    depth: int | None = None,
    exclude: Patterns | None = None,
) -> list[str]:
    """Sets ``requires_grad=True`` on the selected parameters (selection as in :func:`freeze`; with no
    ``patterns`` and no ``depth``, every parameter) and returns their names."""
    selected = _select(model, patterns, depth, exclude)
    for _, p in selected:
        p.requires_grad_(True)
    return [name for name, _ in selected]


def freeze_backbone(model: nn.Module, head: Patterns | None = None) -> list[str]:
    """Freezes everything except the head (the last ``nn.Linear``, or the modules/globs in ``head``) and
    makes sure the head is trainable. Returns the names of the frozen parameters."""
    head_patterns = _as_list(head) if head is not None else [find_head(model)[0]]
    unfreeze(model, head_patterns)
    return freeze(model, exclude=head_patterns)


def eval_frozen_batchnorm(model: nn.Module) -> int:
    """Puts every BatchNorm layer whose parameters are all frozen into eval mode, so that training the
    rest of the model leaves its running statistics untouched; returns how many. Call it after each
    ``model.train()`` (which sets them back to train mode)."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
                count += 1
    return count


def eval_batchnorm(model: nn.Module) -> int:
    """Puts every BatchNorm layer into eval mode: it normalises by its running statistics and leaves
    them untouched (fine-tuning with frozen statistics), while its affine parameters keep training;
    returns how many. Call it after each ``model.train()``."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            count += 1
    return count


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters with ``requires_grad=True``."""
    return [p for p in model.parameters() if p.requires_grad]


def param_groups(
    model: nn.Module,
    lr: float,
    *,
    backbone_lr_mult: float = 0.1,
    head: Patterns | None = None,
    weight_decay: float = 0.0,
) -> list[dict]:
    """Optimizer parameter groups: the head at ``lr``, the rest (the backbone) at
    ``lr * backbone_lr_mult``. Frozen parameters are left out; empty groups are dropped.

    ``head`` names the head's modules or globs (default: the last ``nn.Linear``). Each group carries
    ``name`` ("head"/"backbone"), ``lr`` and ``weight_decay``; pass the list to any ``torch.optim``
    optimizer.
    """
    head_patterns = _as_list(head) if head is not None else [find_head(model)[0]]
    head_params, backbone_params = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head_params if _matches(name, head_patterns) else backbone_params).append(p)
    groups = [
        {"name": "backbone", "params": backbone_params, "lr": lr * backbone_lr_mult},
        {"name": "head", "params": head_params, "lr": lr},
    ]
    groups = [dict(g, weight_decay=weight_decay) for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters: everything is frozen")
    return groups
