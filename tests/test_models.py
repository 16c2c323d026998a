"""fastcnn.models: torchvision state_dicts load unchanged and give the same outputs; Xception builds."""

from __future__ import annotations

import pytest
import torch
import torchvision

import fastcnn
import fastcnn.nn as fnn
from fastcnn import models


def _err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (
        torch.linalg.vector_norm(a.double() - ref.double()) / torch.linalg.vector_norm(ref.double())
    ).item()


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "resnet34", "resnet50"])
def test_torchvision_state_dict_loads_and_matches(name, tmp_path):
    torch.manual_seed(0)
    kwargs = {"num_classes": 10}
    reference = getattr(torchvision.models, name)(weights=None, **kwargs).double().eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)  # stands in for a downloaded torchvision checkpoint
    model = getattr(models, name)(weights=path, **kwargs).double().eval()
    assert list(model.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert _err(model(x), reference(x)) < 1e-10
    # ... and back: the fastcnn model's state_dict loads into torchvision's
    back = getattr(torchvision.models, name)(weights=None, **kwargs).double().eval()
    back.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(back(x), reference(x))


def test_weights_forms_and_errors(tmp_path):
    reference = torchvision.models.resnet18(weights=None, num_classes=5)
    state = reference.state_dict()
    for weights in (
        state,
        {"state_dict": state, "epoch": 3},  # a fastcnn train checkpoint
        {f"module.{k}": v for k, v in state.items()},  # saved from DataParallel
    ):
        model = models.resnet18(num_classes=5, weights=weights)
        assert torch.equal(model.fc.weight, reference.fc.weight)
    with pytest.raises(RuntimeError, match="replace_head"):
        models.resnet18(num_classes=7, weights=state)
    with pytest.raises(TypeError, match="path or a state_dict"):
        models.resnet18(weights=42)


@pytest.mark.parametrize("name", models.list_models())
def test_zoo_forward_backward(name):
    model = models.get_model(name, num_classes=7)
    assert all(type(m) is not torch.nn.Conv2d for m in model.modules())  # every conv runs on fastcnn
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())


def test_xception_architecture():
    model = models.xception()
    # 22,855,952 parameters, the figure of the reference PyTorch port of Chollet's Keras model.
    assert sum(p.numel() for p in model.parameters()) == 22_855_952
    depthwise = [m for m in model.modules() if isinstance(m, fnn.Conv2d) and m.groups == m.in_channels > 1]
    assert len(depthwise) == 34  # entry 3x2, middle 8x3, block12 2, exit flow 2
    assert models.xception(num_classes=3).eval()(torch.randn(1, 3, 71, 71)).shape == (1, 3)
    with pytest.raises(ValueError, match="unknown model"):
        models.get_model("alexnet")


def test_fused_zoo_resnet_equals_unfused():
    torch.manual_seed(0)
    model = models.resnet34(num_classes=4).double().eval()
    fused = fastcnn.fuse(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert _err(fused(x), model(x)) < 1e-10
    assert len(fused.fastcnn_fuse_report.fused_residual) == 16


def test_xception_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    model = models.xception(num_classes=5).eval()
    path = tmp_path / "xception.pth"
    torch.save(model.state_dict(), path)
    loaded = models.xception(num_classes=5, weights=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
