"""fastcnn.transfer: head replacement, freezing, parameter groups, and a fine-tuning run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits
from torch import nn

import fastcnn
import fastcnn.nn as fnn
from fastcnn import models, transfer

tv = torchvision.models


@pytest.mark.parametrize(
    ("build", "head"),
    [
        (lambda: models.vgg16(num_classes=10), "classifier.6"),
        (lambda: models.resnet18(num_classes=10), "fc"),
        (lambda: models.xception(num_classes=10), "fc"),
        (lambda: tv.resnet18(weights=None), "fc"),
        (lambda: tv.mobilenet_v2(weights=None), "classifier.1"),
        (lambda: tv.googlenet(weights=None, init_weights=True), "fc"),
        (lambda: tv.inception_v3(weights=None, init_weights=True), "fc"),
        (lambda: fastcnn.convert(tv.vgg16(weights=None, num_classes=10)), "classifier.6"),
    ],
)
def test_replace_head_finds_last_linear(build, head):
    model = build()
    assert transfer.find_head(model)[0] == head
    new = transfer.replace_head(model, 3)
    assert model.get_submodule(head) is new and type(new) is fnn.Linear and new.out_features == 3
    assert new.weight.requires_grad


def test_replace_head_keeps_dtype_and_names():
    model = models.resnet18(num_classes=10).double()
    new = transfer.replace_head(model, 4, name="fc")
    assert new.weight.dtype == torch.float64
    assert model.eval()(torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 4)
    with pytest.raises(TypeError, match="not an nn.Linear"):
        transfer.replace_head(model, 4, name="layer1")
    with pytest.raises(ValueError, match="no nn.Linear"):
        transfer.replace_head(nn.Sequential(nn.Conv2d(1, 1, 1)), 2)
    x = models.xception(num_classes=10)
    transfer.replace_head(x, 2)
    assert x.num_classes == 2


def test_freeze_unfreeze_and_param_groups():
    model = models.resnet18(num_classes=10)
    frozen = transfer.freeze(model, "layer1")
    assert frozen and all(n.startswith("layer1.") for n in frozen)
    assert not model.layer1[0].conv1.weight.requires_grad and model.layer2[0].conv1.weight.requires_grad
    transfer.unfreeze(model)
    frozen = transfer.freeze(model, depth=5)  # conv1, bn1, relu, maxpool, layer1
    assert {n.split(".")[0] for n in frozen} == {"conv1", "bn1", "layer1"}
    frozen = transfer.freeze(model, "*.bn*.weight", exclude="layer4")
    assert all(n.endswith(".weight") and ".bn" in n and not n.startswith("layer4") for n in frozen)
    transfer.unfreeze(model)
    frozen = transfer.freeze_backbone(model)
    assert "fc.weight" not in frozen and model.fc.weight.requires_grad
    assert transfer.trainable_parameters(model) == [model.fc.weight, model.fc.bias]
    assert transfer.eval_frozen_batchnorm(model.train()) == 20 and not model.bn1.training
    transfer.unfreeze(model, ["layer4"])
    groups = transfer.param_groups(model, 0.1, backbone_lr_mult=0.01, weight_decay=1e-4)
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", pytest.approx(0.001)), ("head", 0.1)]
    assert sum(len(g["params"]) for g in groups) == len(transfer.trainable_parameters(model))
    assert {id(p) for p in groups[1]["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    torch.optim.SGD(groups, lr=0.1)  # accepted as is
    transfer.freeze(model)
    with pytest.raises(ValueError, match="everything is frozen"):
        transfer.param_groups(model, 0.1)


class _SmallNet(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            fnn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            fnn.ReLU(),
            fnn.Conv2d(16, 32, 3, padding=1, activation="relu"),
            fnn.MaxPool2d(2),
            fnn.Flatten(),
        )
        self.head = fnn.Linear(32 * 4 * 4, classes)

    def forward(self, x):
        return self.head(self.features(x))


def _fit(model, x, y, epochs: int, lr: float) -> None:
    optimizer = torch.optim.Adam(transfer.trainable_parameters(model), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        transfer.eval_frozen_batchnorm(model)
        for idx in torch.randperm(len(x), generator=g).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()


@torch.no_grad()
def _accuracy(model, x, y) -> float:
    return (model.eval()(x).argmax(1) == y).float().mean().item()


def test_fine_tune_new_task_with_frozen_backbone():
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    task_a, task_b = y < 5, y >= 5  # digits 0-4, then 5-9 as a new 5-class task
    xa, ya = x[task_a], y[task_a]
    xb, yb = x[task_b], y[task_b] - 5
    split = len(xb) // 2
    torch.manual_seed(0)
    model = _SmallNet(5)
    _fit(model, xa, ya, epochs=4, lr=3e-3)
    assert _accuracy(model, xa, ya) > 0.9

    transfer.replace_head(model, 5)
    frozen = transfer.freeze_backbone(model)
    assert frozen and all(n.startswith("features.") for n in frozen)
    before = {k: v.clone() for k, v in model.features.state_dict().items()}  # parameters and BN stats
    untrained = _accuracy(model, xb[split:], yb[split:])
    _fit(model, xb[:split], yb[:split], epochs=6, lr=1e-2)
    tuned = _accuracy(model, xb[split:], yb[split:])

    for k, v in model.features.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed although frozen"
    assert tuned > untrained + 0.3 and tuned > 0.75, (untrained, tuned)
