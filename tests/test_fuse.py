"""fastcnn.fuse: BatchNorm folded, activations and residual joins in the conv epilogue, same outputs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import relative_error

import fastcnn
import fastcnn.nn as fnn

CASES = {
    "resnet18": (torchvision.models.resnet18, 64),
    "resnet50": (torchvision.models.resnet50, 64),
    "vgg11_bn": (torchvision.models.vgg11_bn, 32),
    "mobilenet_v2": (torchvision.models.mobilenet_v2, 64),
}


def randomize_batchnorm(model: torch.nn.Module) -> None:
    """Fresh models have BN statistics 0/1 and affine 1/0, which would make the fold trivially exact."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("use_fx", [True, False], ids=["fx", "module"])
@pytest.mark.parametrize("name", list(CASES))
def test_fused_matches_eval_model(name, use_fx):
    torch.manual_seed(0)
    build, side = CASES[name]
    model = build(weights=None).double().eval()
    randomize_batchnorm(model)
    x = torch.randn(2, 3, side, side, dtype=torch.float64)
    fused = fastcnn.fuse(model, use_fx=use_fx)
    report = fused.fastcnn_fuse_report
    assert report.folded_batchnorm, "no BatchNorm was folded"
    if use_fx:
        # fx sees the call order, so every conv->bn pair folds; module-level fusion only rewrites
        # Sequentials and known blocks (a stem called from forward(), like ResNet's bn1, stays).
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    if name.startswith("resnet"):
        assert report.fused_residual, "no residual join was fused"
    with torch.no_grad():
        ref, out = model(x), fused(x)
    # float64 throughout: folding reorders the arithmetic only, so the difference is rounding (~1e-14).
    assert relative_error(out, ref) <= 1e-10


def test_fuse_float32_within_float32_rounding():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    randomize_batchnorm(model)
    x = torch.randn(2, 3, 64, 64)
    fused = fastcnn.fuse(model)
    with torch.no_grad():
        ref64 = model.double()(x.double())
        model.float()
        torch_err = relative_error(model(x), ref64)
        fused_err = relative_error(fused(x), ref64)
    # The fold rounds the scaled weights once more; fastcnn's error stays within a few times PyTorch's own.
    assert fused_err <= max(1e-5, 4 * torch_err)


class Untraceable(torch.nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so fuse must fall back to modules."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU()
        )

    def forward(self, x):
        if x.sum() > -1e9:  # always true, but fx cannot know
            return self.body(x)
        return x


def test_fuse_falls_back_when_fx_cannot_trace():
    torch.manual_seed(0)
    model = Untraceable().double().eval()
    randomize_batchnorm(model)
    fused = fastcnn.fuse(model)
    report = fused.fastcnn_fuse_report
    assert report.method == "module" and report.trace_error
    convs = [m for m in fused.modules() if isinstance(m, fnn.Conv2d)]
    assert len(convs) == 1 and convs[0].activation == "relu"
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        assert relative_error(fused(x), model(x)) <= 1e-10
