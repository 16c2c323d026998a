"""fastcnn.models: torchvision state_dicts load unchanged and give torchvision's outputs; Xception works."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import relative_error

import fastcnn
import fastcnn.nn as fnn


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "vgg16"])
def test_zoo_model_loads_torchvision_weights(name, tmp_path):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    model = fastcnn.models.get_model(name, num_classes=10, weights=str(path)).eval()
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert any(isinstance(m, fnn.Conv2d) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref64 = reference.double()(x.double())
        reference.float()
        torch_err = relative_error(reference(x), ref64)
        err = relative_error(model(x), ref64)
    # float32 in both: fastcnn's error against the float64 run stays within a few times PyTorch's own.
    assert err <= max(1e-5, 4 * torch_err)


def test_state_dict_in_memory_and_mismatch_error():
    reference = torchvision.models.resnet18(weights=None, num_classes=7)
    model = fastcnn.models.resnet18(num_classes=7, weights=reference.state_dict())
    for k, v in reference.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    with pytest.raises(RuntimeError):
        fastcnn.models.resnet18(num_classes=1000, weights=reference.state_dict())
    with pytest.raises(ValueError, match="unknown model"):
        fastcnn.models.get_model("resnet9000")


def test_xception_is_depthwise_separable_and_trains():
    torch.manual_seed(0)
    model = fastcnn.models.xception(num_classes=5)
    depthwise = [m for m in model.modules() if isinstance(m, fnn.Conv2d) and m.groups == m.in_channels > 1]
    assert len(depthwise) >= 30, "Xception's separable convs should be depthwise"
    x = torch.randn(2, 3, 71, 71)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_xception_weights_round_trip(tmp_path):
    model = fastcnn.models.xception(num_classes=3).eval()
    torch.save(model.state_dict(), tmp_path / "x.pth")
    again = fastcnn.models.xception(num_classes=3, weights=tmp_path / "x.pth").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
