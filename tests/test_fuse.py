"""fastcnn.fuse: BatchNorm folding, activation and residual epilogues, fx and module-level paths."""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch
import torchvision
from conftest import CUDA
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import fastcnn
import fastcnn.nn as fnn
from fastcnn.fuse import FusedBasicBlock, FuseReport

tv = torchvision.models

# name -> (builder, input size, residual joins the fused model should have, BatchNorms it keeps): a
# BatchNorm that follows no conv (DenseNet's norm1, after a concatenation) cannot be folded; it stays a
# fastcnn BatchNorm2d with the ReLU after it in its pass.
MODELS = {
    "resnet18": (lambda: tv.resnet18(weights=None), 64, 8, 0),
    "resnet50": (lambda: tv.resnet50(weights=None), 64, 16, 0),
    "resnext50_32x4d": (lambda: tv.resnext50_32x4d(weights=None), 64, 16, 0),
    "wide_resnet50_2": (lambda: tv.wide_resnet50_2(weights=None), 64, 16, 0),
    "vgg16": (lambda: tv.vgg16(weights=None, num_classes=10), 32, 0, 0),
    "googlenet": (lambda: tv.googlenet(weights=None, init_weights=True), 64, 0, 0),
    "inception_v3": (lambda: tv.inception_v3(weights=None, aux_logits=False, init_weights=True), 80, 0, 0),
    "mobilenet_v2": (lambda: tv.mobilenet_v2(weights=None), 64, 10, 0),
    "mobilenet_v3_large": (lambda: tv.mobilenet_v3_large(weights=None), 64, 10, 0),
    # EfficientNet's residual adds take stochastic depth's output: not a conv's, so not fused.
    "efficientnet_b0": (lambda: tv.efficientnet_b0(weights=None), 64, 0, 0),
    "efficientnet_v2_s": (lambda: tv.efficientnet_v2_s(weights=None), 64, 0, 0),
    "regnet_y_400mf": (lambda: tv.regnet_y_400mf(weights=None), 64, 16, 0),
    "convnext_tiny": (lambda: tv.convnext_tiny(weights=None), 64, 0, 0),
    "densenet121": (lambda: tv.densenet121(weights=None), 64, 0, 62),
    "squeezenet1_1": (lambda: tv.squeezenet1_1(weights=None), 64, 0, 0),
    "shufflenet_v2_x1_0": (lambda: tv.shufflenet_v2_x1_0(weights=None), 64, 0, 0),
    "mnasnet1_0": (lambda: tv.mnasnet1_0(weights=None), 64, 10, 0),
    "alexnet": (lambda: tv.alexnet(weights=None, num_classes=10), 64, 0, 0),
    "fastcnn.resnet18": (lambda: fastcnn.models.resnet18(num_classes=10), 64, 8, 0),
    "fastcnn.xception": (lambda: fastcnn.models.xception(num_classes=10), 64, 12, 0),
}


def _randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Freshly initialised BatchNorms are the identity (mean 0, var 1, weight 1, bias 0), which would make
    folding trivial: give every one random statistics and affine parameters."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def _err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (
        torch.linalg.vector_norm(a.double() - ref.double()) / torch.linalg.vector_norm(ref.double())
    ).item()


@torch.no_grad()
def _check_fused_matches(model: nn.Module, x: torch.Tensor, **fuse_kwargs) -> nn.Module:
    """Fuses float64 and float32 copies of ``model`` and compares each with the unfused eval model.

    float64: folding is exact algebra (w * gamma / sqrt(var + eps), computed in float64), so the fused
    model agrees with the unfused one to float64 rounding: 1e-6 x PyTorch's float32 error (the
    conditioning of the network at this input; eps64/eps32 ~ 2e-9, so a 500x margin) plus 1e-10.
    float32: the fold rounds each folded weight and bias once more (<= 0.5 ulp, 6e-8 relative) and the
    conv accumulates in another order, a perturbation of the same size as float32 evaluation itself; so
    the fused float32 model's error against the float64 reference must be at most 8x the unfused
    float32 model's own error plus 1e-5 (about 100 ulps, for well-conditioned cases). The fused output
    is a continuous function of the weights (no argmax or kink is crossed by a forward rounding that
    does not also happen unfused), so no extra slack is needed.
    """
    model = copy.deepcopy(model).eval()
    ref64 = copy.deepcopy(model).double()(x.double())
    torch32 = model.float()(x.float())
    cond = _err(torch32, ref64)
    fused64 = fastcnn.fuse(model.double(), **fuse_kwargs)
    err64 = _err(fused64(x.double()), ref64)
    assert err64 <= 1e-6 * cond + 1e-10, f"float64: {err64:.3e} (torch fp32 error {cond:.3e})"
    fused32 = fastcnn.fuse(model.float(), **fuse_kwargs)
    err32 = _err(fused32(x.float()), ref64)
    assert err32 <= 8 * cond + 1e-5, f"float32: {err32:.3e} (torch fp32 error {cond:.3e})"
    return fused32


def _count(model: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("name", list(MODELS))
def test_fused_matches_eval_model(name):
    build, size, residuals, kept_batchnorms = MODELS[name]
    torch.manual_seed(0)
    model = _randomize_batchnorm(build())
    model.train()
    x = torch.randn(2, 3, size, size)
    fused = _check_fused_matches(model, x)
    report = fused.fastcnn_fuse_report
    assert isinstance(report, FuseReport) and report.method == "fx", report.trace_error
    kept = [m for m in fused.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(kept) == kept_batchnorms, "every BatchNorm that follows a conv should be folded"
    assert all(type(m) is fnn.BatchNorm2d and m.activation == "relu" for m in kept)
    assert (
        len(report.folded_batchnorm)
        == _count(model, nn.BatchNorm2d) - _aux_batchnorms(model) - kept_batchnorms
    )
    assert len(report.fused_residual) == residuals
    assert not fused.training


def _aux_batchnorms(model: nn.Module) -> int:
    # GoogLeNet's auxiliary heads run only in train mode: the eval graph drops them.
    return sum(_count(m, nn.BatchNorm2d) for n, m in model.named_children() if n.startswith("aux"))


def test_input_model_is_untouched():
    model = tv.resnet18(weights=None).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fastcnn.fuse(model)
    assert model.training and type(model.conv1) is nn.Conv2d and _count(model, nn.BatchNorm2d) == 20
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_fused_resnet_uses_conv_residual_epilogue():
    model = _randomize_batchnorm(tv.resnet18(weights=None))
    fused = fastcnn.fuse(model)
    code = fused.code
    assert "residual = " in code  # conv(x, residual=identity)
    conv2 = fused.get_submodule("layer1.0.conv2")
    assert type(conv2) is fnn.Conv2d and conv2.activation == "relu" and conv2.bias is not None
    assert fused.get_submodule("layer1.0.conv1").activation == "relu"
    assert (
        "fused_activation" in repr(fused.fastcnn_fuse_report)
        and "folded" in fused.fastcnn_fuse_report.summary()
    )


def test_module_fallback_on_torchvision_resnet():
    model = _randomize_batchnorm(tv.resnet50(weights=None))
    fused = _check_fused_matches(model, torch.randn(2, 3, 64, 64), use_fx=False)
    report = fused.fastcnn_fuse_report
    assert report.method == "module" and report.trace_error is None
    assert type(fused) is tv.ResNet
    assert len(report.fused_residual) == 16
    assert _count(fused, nn.BatchNorm2d) == 1  # the stem's BN sits outside any block or Sequential


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = tv.resnet.BasicBlock(8, 8)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4), nn.Tanh())

    def forward(self, x):
        x = self.block(self.stem(x))
        if x.mean() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 2
        return self.head(x)


def test_untraceable_model_falls_back_to_module_fusion():
    model = _randomize_batchnorm(_Untraceable())
    fused = _check_fused_matches(model, torch.randn(2, 3, 16, 16))
    report = fused.fastcnn_fuse_report
    assert report.method == "module" and "TraceError" in report.trace_error
    assert type(fused.block) is FusedBasicBlock
    assert type(fused.stem[0]) is fnn.Conv2d and fused.stem[0].activation == "relu"
    assert isinstance(fused.stem[1], nn.Identity) and isinstance(fused.stem[2], nn.Identity)
    assert fused.head[2].activation == "tanh"
    assert len(report.folded_batchnorm) == 3 and len(report.fused_residual) == 1


class _Adds(nn.Module):
    """Adds that are not residual joins (a broadcast parameter, a constant) or that cannot absorb
    neighbours (a conv called twice), all followed by ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.offset = nn.Parameter(torch.randn(1, 4, 1, 1))
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv3 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        a = torch.relu(self.conv1(x) + self.offset)
        b = torch.relu(self.conv2(a) + 1.0)
        c = self.bn(self.conv3(b)) + self.conv3(a)  # conv3 is shared: nothing may be folded into it
        return torch.relu(c)


def test_non_residual_adds_and_shared_convs_are_left_alone():
    model = _randomize_batchnorm(_Adds())
    fused = _check_fused_matches(model, torch.randn(2, 4, 8, 8))
    report = fused.fastcnn_fuse_report
    assert report.fused_residual == [] and report.folded_batchnorm == [] and report.fused_activation == []


def test_residual_fusion_can_be_turned_off():
    model = _randomize_batchnorm(tv.resnet18(weights=None))
    fused = _check_fused_matches(model, torch.randn(2, 3, 32, 32), residual=False)
    assert fused.fastcnn_fuse_report.fused_residual == []
    assert len(fused.fastcnn_fuse_report.folded_batchnorm) == 20


def test_frozen_batchnorm_is_folded():
    bn = FrozenBatchNorm2d(6)
    g = torch.Generator().manual_seed(1)
    for name in ("weight", "bias", "running_mean"):
        getattr(bn, name).copy_(torch.randn(6, generator=g))
    bn.running_var.copy_(torch.rand(6, generator=g) + 0.5)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), bn, nn.Sigmoid())
    fused = _check_fused_matches(model, torch.randn(2, 3, 10, 10))
    assert len(fused.fastcnn_fuse_report.folded_batchnorm) == 1
    assert fused.fastcnn_fuse_report.fused_activation == ["0"]


@pytest.mark.cuda
def test_fused_matches_on_cuda():
    model = _randomize_batchnorm(tv.resnet18(weights=None)).to(CUDA).eval()
    x = torch.randn(2, 3, 64, 64, device=CUDA)
    with torch.no_grad():
        ref64 = copy.deepcopy(model).double()(x.double())
        torch32 = model(x)
        fused = fastcnn.fuse(model)(x)
    assert _err(fused, ref64) <= 8 * _err(torch32, ref64) + 1e-5


class _LeakyFunctional(nn.Module):
    """LeakyReLU spelled every way fuse recognises: module, F.leaky_relu with a positional or keyword
    slope, and one it must leave alone (its slope is a tensor, not a number)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.LeakyReLU(0.1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.conv4 = nn.Conv2d(8, 4, 1)
        self.register_buffer("slope", torch.tensor(0.3))

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = torch.nn.functional.leaky_relu(self.conv2(x), 0.2)
        x = torch.nn.functional.leaky_relu(self.conv3(x), negative_slope=-0.5)
        return self.conv4(x) * self.slope


def test_leaky_relu_is_fused_with_its_slope():
    torch.manual_seed(0)
    model = _randomize_batchnorm(_LeakyFunctional())
    fused = _check_fused_matches(model, torch.randn(2, 3, 12, 12))
    assert fused.fastcnn_fuse_report.method == "fx"
    assert fused.conv1.activation == "leaky_relu(0.1)"
    assert fused.conv2.activation == "leaky_relu(0.2)"
    assert fused.conv3.activation == "leaky_relu(-0.5)"
    assert fused.conv4.activation is None
    assert "leaky_relu" not in fused.code


def test_fuse_of_a_converted_model_reports_once_and_lists_what_stays_on_torch(caplog):
    frozen = FrozenBatchNorm2d(4)  # convert leaves it on torch; fuse folds it
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), frozen, nn.ReLU(), nn.AdaptiveMaxPool2d(4), nn.AdaptiveMaxPool2d(1), nn.Flatten()
    )
    converted = fastcnn.convert(model)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fastcnn"):
        fused = fastcnn.fuse(converted)
    messages = [r.getMessage() for r in caplog.records]
    assert [r.name for r in caplog.records] == ["fastcnn.fuse"], messages  # no convert line
    assert "0 layers converted" not in messages[0] and "FrozenBatchNorm2d" not in messages[0]
    report = fused.fastcnn_fuse_report
    assert report.folded_batchnorm == ["0"] and report.on_torch == {"AdaptiveMaxPool2d": 2}
    assert "still on PyTorch: 2 AdaptiveMaxPool2d" in report.summary()
    assert fused.fastcnn_convert_report is report.convert
    assert report.convert.counts() == {"Conv2d": 1, "ReLU": 1, "Flatten": 1}
    assert {s.kind for s in report.convert.skipped} == {"AdaptiveMaxPool2d"}
    assert "no layer left on PyTorch" in fastcnn.fuse(tv.resnet18(weights=None)).fastcnn_fuse_report.summary()


@pytest.mark.parametrize("use_fx", [True, False])
def test_training_a_fused_model_warns_once(use_fx):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    fused = fastcnn.fuse(model, use_fx=use_fx)
    assert len(fused.fastcnn_fuse_report.folded_batchnorm) == 1
    with pytest.warns(UserWarning, match="folded its BatchNorm.*fastcnn.convert") as record:
        fused.train()
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused.train()  # once per model
        fused.eval()
        fastcnn.fuse(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())).train()  # nothing folded: trains as is
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(fused(x), fused(x)) and fused(x).shape == (2, 4 * 6 * 6)
    if not use_fx:
        assert len(fused) == 4  # the container's own layers only
    twice = fastcnn.fuse(fused)  # fusing again: nothing new, nothing reported as left on torch
    assert twice.fastcnn_fuse_report.on_torch == {} and not twice.fastcnn_convert_report.skipped
