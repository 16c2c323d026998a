"""fastcnn.convert on torchvision models: outputs, gradients and state_dicts match the original."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torchvision
from conftest import relative_error

import fastcnn
import fastcnn.nn as fnn

# name -> (constructor kwargs, input side); inputs are as small as each network accepts.
MODELS = {
    "resnet18": ({}, 64),
    "resnet50": ({}, 64),
    "vgg16": ({}, 32),
    "mobilenet_v2": ({}, 64),
    "googlenet": ({"aux_logits": False, "init_weights": True}, 64),
    "inception_v3": ({"aux_logits": False, "init_weights": True}, 75),
}


def build(name: str, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.Tensor]:
    kwargs, side = MODELS[name]
    model = getattr(torchvision.models, name)(weights=None, **kwargs).to(dtype)
    # Batch 4: train-mode BatchNorm over the 1x1 maps at the end of Inception normalises over the batch
    # alone, and over only 2 values it amplifies rounding differences ~100x.
    return model, torch.randn(4, 3, side, side, dtype=dtype)


def forward_backward(model: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor | None = None):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks for the original and the converted model
    out = model(x)
    grad = torch.randn_like(out) if grad is None else grad
    out.backward(grad)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grad, grads


def check_against(name, dtype, training):
    """fastcnn's error vs a float64 run of the original must be no worse than PyTorch's own in `dtype`."""
    torch.manual_seed(0)
    model, x = build(name, dtype)
    model.train(training)
    converted = fastcnn.convert(model)
    assert isinstance(converted.fastcnn_convert_report, fastcnn.convert.__globals__["ConvertReport"])
    assert any(isinstance(m, fnn.Conv2d) for m in converted.modules())
    assert not any(type(m) is torch.nn.Conv2d for m in converted.modules())
    assert converted.training == training

    ref_out, grad, ref_grads = forward_backward(model, x)
    out, _, grads = forward_backward(converted, x, grad)
    assert grads.keys() == ref_grads.keys()
    if dtype == torch.float64:
        # Both runs are float64: only summation order differs, far below 1e-10.
        tolerance = {k: 1e-10 for k in ["out", *grads]}
    else:
        # float32 rounding accumulates over 20-60 layers in both implementations; bound fastcnn's error
        # against a float64 run of the same weights by PyTorch's own float32 error (x4, plus 1e-5 floor).
        model64 = copy.deepcopy(model).double()
        out64, _, grads64 = forward_backward(model64, x.double(), grad.double())
        tolerance = {"out": max(1e-5, 4 * relative_error(ref_out, out64))}
        tolerance |= {k: max(1e-5, 4 * relative_error(ref_grads[k], grads64[k])) for k in grads}
        ref_out, ref_grads = out64, grads64
    assert torch.isfinite(out).all()
    assert relative_error(out, ref_out) <= tolerance["out"], "output"
    # Some gradients are zero up to rounding (a BN bias feeding another train-mode BN): judge each
    # parameter's error on the scale of the largest gradient too, not only on its own ~1e-13 norm.
    floor = 1e-3 * max(ref_grads[k].norm().item() for k in grads)
    for k in grads:
        err = (grads[k] - ref_grads[k]).norm().item() / max(ref_grads[k].norm().item(), floor)
        assert err <= tolerance[k], f"grad of {k}: {err:.2e}"


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", [n for n in MODELS if n != "vgg16"])
def test_converted_model_matches_fp64(name, training):
    check_against(name, torch.float64, training)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
# MobileNetV2 runs in float64 above only: in float32 its ReLU6 clamps flip for elements within rounding of
# 0 or 6, which moves whole gradient entries and makes a float32 gradient comparison ill-conditioned.
@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_converted_model_matches_fp32(name, training):
    check_against(name, torch.float32, training)


def test_convert_keeps_parameters_and_state_dict_both_ways():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.fc.weight.requires_grad_(False)
    converted = fastcnn.convert(model)
    assert converted.state_dict().keys() == model.state_dict().keys()
    for (n, p), (n2, q) in zip(model.named_parameters(), converted.named_parameters(), strict=True):
        assert n == n2 and torch.equal(p, q) and p.requires_grad == q.requires_grad
        assert p.data_ptr() != q.data_ptr(), "inplace=False must not share storage with the original"
    # torch -> fastcnn and fastcnn -> torch through torch.save / torch.load
    for source, target in (
        (model, fastcnn.convert(torchvision.models.resnet18())),
        (converted, torchvision.models.resnet18()),
    ):
        buffer = io.BytesIO()
        torch.save(source.state_dict(), buffer)
        buffer.seek(0)
        target.load_state_dict(torch.load(buffer), strict=True)
        for k, v in source.state_dict().items():
            assert torch.equal(v, target.state_dict()[k]), k


def test_convert_inplace_keeps_parameter_objects():
    model = torchvision.models.resnet18(weights=None)
    params = list(model.parameters())
    converted = fastcnn.convert(model, inplace=True)
    assert converted is model
    assert all(a is b for a, b in zip(params, converted.parameters(), strict=True))


def test_convert_reports_what_it_leaves():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(inplace=True),
        torch.nn.AdaptiveMaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 4),
    )
    converted = fastcnn.convert(model)
    report = converted.fastcnn_convert_report
    assert {c.name for c in report.converted} == {"0", "2", "4", "5"}
    assert {s.name for s in report.skipped} == {"1", "3"}
    assert all(s.reason for s in report.skipped)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(converted(x), model(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="AdaptiveMaxPool2d"):
        fastcnn.convert(model, strict=True)


def test_compile_fullgraph_converted_resnet18():
    # aot_eager traces the whole model through the fake kernels and autograd formulas without the
    # minutes inductor's C++ codegen would take on 2 cores; fullgraph=True fails on any graph break.
    torch.manual_seed(0)
    model = fastcnn.convert(torchvision.models.resnet18(weights=None)).eval()
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_converted_resnet18_autocast_cuda(dtype):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).cuda().eval()
    converted = fastcnn.convert(model)
    x = torch.randn(4, 3, 64, 64, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out, ref = converted(x), model(x)
    assert out.dtype == ref.dtype == dtype
    with torch.no_grad():
        ref64 = model.double()(x.double())
    assert relative_error(out.float(), ref64) <= 1e-2
