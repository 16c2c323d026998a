"""fastcnn.convert on torchvision models and on single layers: outputs, gradients, report, state_dict."""

from __future__ import annotations

import copy
import functools
import io
import logging

import pytest
import torch
import torchvision
from conftest import CUDA
from torch import nn
from torchvision.ops.stochastic_depth import StochasticDepth

import fastcnn
import fastcnn.nn as fnn
from fastcnn.convert import ConvertReport

tv = torchvision.models

# name -> (builder, input size). Small inputs keep the suite fast on a CPU; each is the smallest size the
# model takes comfortably (Inception-v3 needs >= 75). Dropout is switched off (see _no_dropout) and the
# auxiliary heads of GoogLeNet/Inception-v3 are left out here (GoogLeNet's has its own test below).
MODELS = {
    "vgg16": (lambda: tv.vgg16(weights=None, num_classes=10), 32),
    "resnet18": (lambda: tv.resnet18(weights=None), 64),
    "resnet50": (lambda: tv.resnet50(weights=None), 64),
    "resnext50_32x4d": (lambda: tv.resnext50_32x4d(weights=None), 64),
    "wide_resnet50_2": (lambda: tv.wide_resnet50_2(weights=None), 64),
    "googlenet": (lambda: tv.googlenet(weights=None, aux_logits=False, init_weights=True), 64),
    "inception_v3": (lambda: tv.inception_v3(weights=None, aux_logits=False, init_weights=True), 80),
    "mobilenet_v2": (lambda: tv.mobilenet_v2(weights=None), 64),
    "mobilenet_v3_large": (lambda: tv.mobilenet_v3_large(weights=None), 64),
    "efficientnet_b0": (lambda: tv.efficientnet_b0(weights=None), 64),
    "efficientnet_v2_s": (lambda: tv.efficientnet_v2_s(weights=None), 64),
    "regnet_y_400mf": (lambda: tv.regnet_y_400mf(weights=None), 64),
    "convnext_tiny": (lambda: tv.convnext_tiny(weights=None), 32),
    "densenet121": (lambda: tv.densenet121(weights=None), 32),
    "squeezenet1_1": (lambda: tv.squeezenet1_1(weights=None), 64),
    "shufflenet_v2_x1_0": (lambda: tv.shufflenet_v2_x1_0(weights=None), 64),
    "mnasnet1_0": (lambda: tv.mnasnet1_0(weights=None), 64),
    "alexnet": (lambda: tv.alexnet(weights=None, num_classes=10), 64),
}


@functools.cache
def _base(name: str) -> nn.Module:
    torch.manual_seed(0)
    return _no_dropout(MODELS[name][0]())


def _no_dropout(model: nn.Module) -> nn.Module:
    # Dropout and stochastic depth stay torch's and draw random masks; with p=0 train mode is
    # deterministic, so the float32 and float64 runs see the same network.
    for m in model.modules():
        if isinstance(m, (nn.Dropout, StochasticDepth)):
            m.p = 0.0
    return model


def _outputs(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple) else [out]


def _run(model: nn.Module, x: torch.Tensor, train: bool):
    """Forward and backward of a fixed scalar loss; returns (outputs, input grad, {param: grad})."""
    model.train(train)
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    outs = _outputs(model(x))
    g = torch.Generator().manual_seed(1)
    loss = sum(
        (o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device, o.dtype)).sum() for o in outs
    )
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], x.grad.detach(), grads


def _err(a: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    diff = torch.linalg.vector_norm((a.double() - ref.double()).flatten()).item()
    return diff / max(torch.linalg.vector_norm(ref.double().flatten()).item(), floor, 1e-300)


def _compare(fast, torch64, torch32, label: str, dtype: torch.dtype) -> None:
    """Checks fastcnn's run against PyTorch's, using PyTorch's own float32 error against float64 as the
    measure of how well conditioned the computation is (BatchNorm over 2 samples of a 2x2 map is not).

    * float64, every output, the input gradient and each parameter's gradient: both should agree to
      about eps64/eps32 (~2e-9) times PyTorch's float32 error; we allow 1e-6 times it (500x margin) plus
      1e-10. This is the check that pins the kernels and gradient formulas down.
    * float32 outputs: fastcnn accumulates in another order than ATen/oneDNN, so its rounding differs,
      but its error against float64 must be of the order of PyTorch's: at most 8x it, plus 1e-5 (about
      100 float32 ulps) for well-conditioned cases where both are tiny.
    * float32 gradients, judged together (all parameters and the input, norm-wise): the same, plus 3e-2.
      A ReLU/ReLU6/max-pool decision whose input lies within float32 rounding of the kink routes the
      gradient another way, which no accumulation order avoids; measured: one VGG-16 pre-activation
      (-4e-8 in float64, +2e-7 in float32) moves the gradients by 7e-4, MobileNetV2's train mode
      (ReLU6, BatchNorm over tiny batches) by 1e-2, while PyTorch's float32 happened to decide as
      float64 did.

    Gradients that are zero in exact arithmetic (a parameter feeding only a per-channel constant into a
    train-mode BatchNorm) are judged on the scale of the largest gradient (floor = 1e-3 of it).
    """
    outs, gx, grads = fast
    outs64, gx64, grads64 = torch64
    outs32, gx32, grads32 = torch32
    assert set(grads) == set(grads64) == set(grads32)
    outputs = [(f"output {i}", outs[i], outs64[i], outs32[i]) for i in range(len(outs64))]
    if dtype == torch.float64:
        floor = 1e-3 * max(torch.linalg.vector_norm(g).item() for g in grads64.values())
        pairs = [(w, a, r, t, 0.0) for w, a, r, t in outputs] + [("input grad", gx, gx64, gx32, 0.0)]
        pairs += [(f"grad {n}", grads[n], grads64[n], grads32[n], floor) for n in grads64]
        for what, a, r64, t32, fl in pairs:
            cond = _err(t32, r64, fl)
            err, bound = _err(a, r64, fl), 1e-6 * cond + 1e-10
            assert err <= bound, f"{label} {what}: error {err:.3e} > {bound:.3e} (torch fp32: {cond:.3e})"
        return

    def flat(gi, gp):
        return torch.cat([gi.double().flatten()] + [gp[n].double().flatten() for n in sorted(grads64)])

    checks = [(w, a, r, t, 1e-5) for w, a, r, t in outputs]
    checks.append(("gradients", flat(gx, grads), flat(gx64, grads64), flat(gx32, grads32), 3e-2))
    for what, a, r64, t32, slack in checks:
        cond = _err(t32, r64)
        err, bound = _err(a, r64), 8 * cond + slack
        assert err <= bound, f"{label} {what}: error {err:.3e} > {bound:.3e} (torch fp32: {cond:.3e})"


@pytest.mark.parametrize("name", list(MODELS))
def test_converted_matches_torchvision(name):
    """Same weights, random input: outputs, input gradient and parameter gradients match the original
    model in float64 and float32, in train mode (BatchNorm batch statistics) and eval mode."""
    size = MODELS[name][1]
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    runs = {}
    for dtype in (torch.float64, torch.float32):
        # One copy per dtype, run on torch layers, then converted in place (the same Parameters; this
        # also halves the memory VGG-16 needs). BatchNorm's running statistics are put back in between so
        # that both see the same ones.
        model = copy.deepcopy(_base(name)).to(dtype)
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        torch_runs = [_run(model, x.to(dtype), train) for train in (True, False)]
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
        fastcnn.convert(model, inplace=True)
        assert not model.fastcnn_convert_report.skipped, model.fastcnn_convert_report.summary()
        runs[dtype] = ([_run(model, x.to(dtype), train) for train in (True, False)], torch_runs)
        del model
    for i, mode in enumerate(("train", "eval")):
        (fast64, torch64), (fast32, torch32) = [
            (f[i], t[i]) for f, t in (runs[torch.float64], runs[torch.float32])
        ]
        _compare(fast64, torch64, torch32, f"{name} {mode} float64", torch.float64)
        _compare(fast32, torch64, torch32, f"{name} {mode} float32", torch.float32)


_WITHOUT_BATCHNORM = ("vgg16", "squeezenet1_1", "alexnet", "convnext_tiny")


@pytest.mark.parametrize("name", [n for n in MODELS if n not in _WITHOUT_BATCHNORM])
def test_running_statistics_match_after_three_training_passes(name):
    """Three train-mode passes in float64 over different batches: every BatchNorm's running mean,
    running variance and num_batches_tracked equal the torchvision model's: rtol 1e-9, plus 1e-6 times
    PyTorch's own float32 error on that buffer where a statistic is ill-conditioned (a BatchNorm over
    2 samples of a 1x1 map), and a running mean judged on the scale of its channel's standard deviation,
    since many are 0 in exact arithmetic (a BatchNorm after a linear map of another's zero-mean output).
    (Parameter gradients are compared by test_converted_matches_torchvision; SGD steps on these tiny
    inputs would amplify rounding chaotically.)"""
    size = MODELS[name][1]
    original = copy.deepcopy(_base(name)).double().train()
    single = copy.deepcopy(_base(name)).float().train()
    converted = fastcnn.convert(original)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(2, 3, size, size, generator=gen, dtype=torch.float64)
            original(x)
            converted(x)
            single(x.float())
    ref, ours, ref32 = (dict(m.named_buffers()) for m in (original, converted, single))
    assert list(ref) == list(ours)
    for key, value in ref.items():
        if not value.is_floating_point():
            assert torch.equal(ours[key], value), key  # num_batches_tracked
            continue
        floor = ref[key[: -len("mean")] + "var"].sqrt().norm().item() if key.endswith("running_mean") else 0.0
        err, bound = _err(ours[key], value, floor), 1e-9 + 1e-6 * _err(ref32[key], value, floor)
        assert err <= bound, f"{name} {key}: error {err:.3e} > {bound:.3e} after 3 passes"


def test_googlenet_aux_heads_train():
    """GoogLeNet's auxiliary heads apply F.relu(..., inplace=True) to a linear output: fastcnn's linear
    must return a fresh tensor, not a view, or autograd refuses the in-place op."""
    torch.manual_seed(0)
    original = _no_dropout(tv.googlenet(weights=None, aux_logits=True, init_weights=True)).double()
    converted = fastcnn.convert(original)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    torch.manual_seed(3)  # the auxiliary heads call F.dropout; the same seed gives the same masks
    fast = _run(converted, x, True)
    torch.manual_seed(3)
    ref = _run(original, x, True)
    assert len(fast[0]) == 3
    for a, r in zip(fast[0] + [fast[1]], ref[0] + [ref[1]], strict=True):
        assert _err(a, r) < 1e-9


def test_report_lists_converted_and_skipped():
    model = fastcnn.convert(tv.resnet18(weights=None))
    report = model.fastcnn_convert_report
    assert isinstance(report, ConvertReport)
    assert report.counts() == {
        "Conv2d": 20,
        "BatchNorm2d": 20,
        "ReLU": 9,
        "MaxPool2d": 1,
        "AdaptiveAvgPool2d": 1,
        "Linear": 1,
    }
    assert not report.skipped
    assert type(model.layer1[0].conv1) is fnn.Conv2d and type(model.fc) is fnn.Linear
    assert type(model.bn1) is fnn.BatchNorm2d
    skipped = fastcnn.convert(nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm3d(2))).fastcnn_convert_report
    assert [s.kind for s in skipped.skipped] == ["BatchNorm3d"]
    assert "left on torch: BatchNorm3d" in skipped.summary()


def test_inplace_keeps_parameter_objects_and_copy_does_not():
    model = tv.resnet18(weights=None)
    params = dict(model.named_parameters())
    copied = fastcnn.convert(model)
    assert copied is not model and type(model.conv1) is nn.Conv2d  # original untouched
    assert all(copied.get_parameter(n) is not p for n, p in params.items())
    assert all(torch.equal(copied.get_parameter(n), p) for n, p in params.items())
    same = fastcnn.convert(model, inplace=True)
    assert same is model and type(model.conv1) is fnn.Conv2d
    assert all(model.get_parameter(n) is p for n, p in params.items())


def test_keeps_keys_requires_grad_buffers_mode_and_dtype():
    model = tv.resnet18(weights=None).double()
    model.layer1.requires_grad_(False)
    model.layer2.eval()
    hook_calls = []
    model.conv1.register_forward_hook(lambda *a: hook_calls.append(1))
    converted = fastcnn.convert(model)
    assert list(converted.state_dict()) == list(model.state_dict())
    for (n, p), (_, q) in zip(model.named_parameters(), converted.named_parameters(), strict=True):
        assert p.requires_grad == q.requires_grad and p.dtype == q.dtype == torch.float64, n
    for (n, b), (_, c) in zip(model.named_buffers(), converted.named_buffers(), strict=True):
        assert torch.equal(b, c), n
    assert [m.training for m in model.modules()] == [m.training for m in converted.modules()]
    converted.eval()(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    assert hook_calls == [1]


LAYER_CASES = [
    nn.Conv2d(4, 6, 3, padding=1),
    nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
    nn.Conv2d(4, 6, 3, padding=(2, 1), padding_mode="replicate", stride=2),
    nn.Conv2d(4, 6, 3, padding=2, padding_mode="circular", dilation=2, groups=2, bias=False),
    nn.Conv2d(4, 8, (3, 2), padding="same", groups=4),
    nn.Conv2d(4, 6, 2, padding="valid", stride=(2, 1)),
    nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True), nn.ReLU(inplace=True)),
    nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), nn.Sigmoid()),
    nn.Sequential(nn.AvgPool2d(2, divisor_override=3), nn.Tanh()),
    nn.Sequential(nn.AdaptiveAvgPool2d((3, None)), nn.Flatten(), nn.Linear(4 * 3 * 9, 5), nn.ReLU()),
]


@pytest.mark.parametrize("layer", LAYER_CASES, ids=[str(i) for i in range(len(LAYER_CASES))])
def test_layer_variants_match(layer):
    layer = layer.double()
    converted = fastcnn.convert(layer)
    assert not converted.fastcnn_convert_report.skipped
    assert all(type(m).__module__ == "fastcnn.nn" for m in converted.modules() if not list(m.children()))
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    fast, ref = _run(converted, x, True), _run(layer, x, True)
    assert fast[2].keys() == ref[2].keys()
    for a, r in zip([*fast[0], fast[1], *fast[2].values()], [*ref[0], ref[1], *ref[2].values()], strict=True):
        assert _err(a, r) < 1e-12


class _OwnForwardConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


def test_unsupported_layers_are_left_and_reported(caplog):
    pool = nn.MaxPool2d(2, return_indices=True)
    model = nn.ModuleDict(
        {
            "adaptive_max": nn.AdaptiveMaxPool2d(2),
            "pool_with_indices": pool,
            "unpool": nn.MaxUnpool2d(2),
            "conv1d": nn.Conv1d(2, 2, 3),
            "conv3d": nn.Conv3d(2, 2, 3),
            "transposed": nn.ConvTranspose2d(2, 2, 3),
            "own_forward": _OwnForwardConv(2, 2, 3),
            "fp16": nn.Conv2d(2, 2, 3).half(),
            "lazy": nn.LazyConv2d(2, 3),
            "parametrized": torch.nn.utils.parametrizations.weight_norm(nn.Conv2d(2, 2, 3)),
            "ok": nn.Conv2d(2, 2, 3),
            "dropout": nn.Dropout(),
        }
    )
    with caplog.at_level(logging.INFO, logger="fastcnn.convert"):
        converted = fastcnn.convert(model)
    report = converted.fastcnn_convert_report
    skipped = {s.name: s.reason for s in report.skipped}
    assert [c.name for c in report.converted] == ["ok"]
    expected = {"adaptive_max", "pool_with_indices", "unpool", "conv1d", "conv3d", "transposed"}
    expected |= {"own_forward", "fp16", "lazy", "parametrized"}
    assert expected <= set(skipped) and "dropout" not in skipped
    assert "return_indices" in skipped["pool_with_indices"]
    assert "float16" in skipped["fp16"] and "lazy" in skipped["lazy"]
    assert "subclass" in skipped["own_forward"] and "parametrized" in skipped["parametrized"]
    for name in expected:
        assert type(converted[name]) is type(model[name]), name
    assert any(r.levelno == logging.WARNING and "AdaptiveMaxPool2d" in r.getMessage() for r in caplog.records)
    # Unpooling still works with the torch pool's indices, and the subclass keeps its own forward.
    x = torch.randn(1, 2, 6, 6)
    out, idx = converted["pool_with_indices"](x)
    assert torch.equal(converted["unpool"](out, idx), model["unpool"](*pool(x)))
    assert torch.equal(converted["own_forward"](x), model["own_forward"](x))
    with pytest.raises(ValueError, match="strict"):
        fastcnn.convert(model, strict=True)


def test_half_model_on_cpu_is_left_whole():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2)).half()
    converted = fastcnn.convert(model)
    assert not converted.fastcnn_convert_report.converted
    assert len(converted.fastcnn_convert_report.skipped) == 3


def test_root_layer_and_shared_modules():
    conv = fastcnn.convert(nn.Conv2d(3, 4, 3))
    assert type(conv) is fnn.Conv2d and conv.activation is None
    shared = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 3, 1), shared, nn.Conv2d(3, 3, 1), shared)
    converted = fastcnn.convert(model, inplace=True)
    assert converted[1] is converted[3] and type(converted[1]) is fnn.ReLU
    assert len(converted.fastcnn_convert_report.converted) == 3


def test_state_dict_round_trip_both_ways(tmp_path):
    torch.manual_seed(0)
    original = tv.resnet18(weights=None, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = original(x)
    # torch -> file -> converted model built separately
    path = tmp_path / "torch.pt"
    torch.save(original.state_dict(), path)
    converted = fastcnn.convert(tv.resnet18(weights=None, num_classes=7)).eval()
    converted.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        assert _err(converted(x), expected) < 1e-5
    # converted -> bytes -> plain torch model
    buffer = io.BytesIO()
    torch.save(converted.state_dict(), buffer)
    buffer.seek(0)
    back = tv.resnet18(weights=None, num_classes=7).eval()
    back.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        assert torch.equal(back(x), expected)


def test_compile_fullgraph_converted_resnet18():
    # backend="aot_eager": traces the whole model through fastcnn's fake kernels and autograd formulas
    # (AOTAutograd) without Inductor's C++ code generation, which would take minutes on a small CPU.
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = fastcnn.convert(tv.resnet18(weights=None, num_classes=10)).eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = compiled(x)
    ref = model(x_ref)
    assert _err(out, ref) < 1e-5
    out.sum().backward()
    ref.sum().backward()
    assert _err(x.grad, x_ref.grad) < 1e-5


def test_timm_models_if_installed():
    timm = pytest.importorskip("timm")
    for name in ("resnet18", "efficientnet_b0"):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=10).double().eval()
        converted = fastcnn.convert(model)
        assert converted.fastcnn_convert_report.converted
        x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
        with torch.no_grad():
            assert _err(converted(x), model(x)) < 1e-9, name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_converted_matches_under_cuda_autocast(dtype):
    torch.manual_seed(0)
    original = tv.resnet18(weights=None, num_classes=10).cuda().eval()
    converted = fastcnn.convert(original)
    x = torch.randn(4, 3, 64, 64, device="cuda")
    with torch.no_grad():
        reference = original.double()(x.double())
        original.float()
        with torch.autocast("cuda", dtype=dtype):
            fast, torch_amp = converted(x), original(x)
    # Both run the convs in `dtype`: fastcnn's error against float64 must be of the order of PyTorch's.
    assert _err(fast, reference) <= 4 * _err(torch_amp, reference) + 1e-3


@pytest.mark.cuda
def test_converted_train_step_matches_on_cuda():
    torch.manual_seed(0)
    original = tv.resnet18(weights=None, num_classes=10).to(CUDA)
    converted = fastcnn.convert(original)
    x = torch.randn(4, 3, 64, 64, device=CUDA)
    fast, ref = _run(converted, x, True), _run(original, x, True)
    assert _err(fast[0][0], ref[0][0]) < 1e-4
    assert _err(fast[1], ref[1]) < 1e-3


def test_fuse_activations_moves_activations_into_batch_norm():
    torch.manual_seed(0)
    original = _no_dropout(tv.mobilenet_v3_small(weights=None)).double()
    converted = fastcnn.convert(original, fuse_activations=True)
    report = converted.fastcnn_convert_report
    assert report.fused_activations, "Conv2dNormActivation blocks end in BatchNorm2d + activation"
    for bn_name, act_name in report.fused_activations:
        assert converted.get_submodule(bn_name).activation is not None
        assert type(converted.get_submodule(act_name)) is nn.Identity
    assert "activations fused" in report.summary()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    for train in (True, False):
        fast, ref = _run(converted, x, train), _run(original, x, train)
        for a, r in zip(fast[0] + [fast[1]], ref[0] + [ref[1]], strict=True):
            assert _err(a, r) < 1e-9
        assert set(fast[2]) == set(ref[2])
        # Gradients zero in exact arithmetic (a bias feeding a train-mode BatchNorm) on the largest's scale.
        floor = 1e-3 * max(g.norm().item() for g in ref[2].values())
        for name in ref[2]:
            assert _err(fast[2][name], ref[2][name], floor) < 1e-9, name


class _Darknet(nn.Module):
    """Darknet/YOLO-style blocks (conv, BatchNorm, LeakyReLU(0.1)), a GAN-style LeakyReLU(0.2) after a
    bias conv, and a negative-slope LeakyReLU before the head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(8, 6, 1, bias=False),
            nn.BatchNorm2d(6),
            nn.LeakyReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.LeakyReLU(-0.3), nn.Linear(6 * 8 * 8, 5))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("fuse_activations", [False, True])
def test_leaky_relu_models_convert_with_their_slopes(fuse_activations):
    torch.manual_seed(0)
    original = _Darknet().double()
    converted = fastcnn.convert(original, fuse_activations=fuse_activations)
    report = converted.fastcnn_convert_report
    assert not report.skipped
    slopes = [m.negative_slope for m in original.modules() if isinstance(m, nn.LeakyReLU)]
    assert slopes == [0.1, 0.2, 0.01, -0.3]
    if fuse_activations:
        assert converted.features[1].activation == "leaky_relu(0.1)"
        assert converted.features[6].activation == "leaky_relu"
        assert type(converted.features[2]) is nn.Identity
    else:
        kept = [m for m in converted.modules() if isinstance(m, nn.LeakyReLU)]
        assert all(type(m) is fnn.LeakyReLU for m in kept)
        assert [m.negative_slope for m in kept] == slopes
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    for train in (True, False):
        fast, ref = _run(converted, x, train), _run(original, x, train)
        assert _err(fast[0][0], ref[0][0]) < 1e-9 and _err(fast[1], ref[1]) < 1e-9
        assert set(fast[2]) == set(ref[2])
        for name in ref[2]:
            assert _err(fast[2][name], ref[2][name]) < 1e-9, name


def test_channels_last_model_keeps_every_layer_channels_last_and_matches_torch():
    torch.manual_seed(0)
    base = torchvision.models.resnet18(weights=None).double().eval()
    model = fastcnn.convert(base, memory_format=torch.channels_last)
    seen = []
    for m in model.modules():
        if isinstance(m, fnn.Conv2d):
            m.register_forward_pre_hook(
                lambda mod, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
            )
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    y, ref = model(x), base(xr)
    assert len(seen) == 20 and all(seen)
    torch.testing.assert_close(y, ref)
    y.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    assert x.grad.is_contiguous()  # the caller's layout, back at the edge
    # A 4-D result leaves in the default layout too; converting twice adds no second pair of hooks.
    feat = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).double()
    feat = fastcnn.convert(feat, memory_format=torch.channels_last, inplace=True)
    fastcnn.convert(feat, memory_format=torch.channels_last, inplace=True)
    assert len(feat._forward_pre_hooks) == 1 and len(feat._forward_hooks) == 1
    assert feat[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert feat(x.detach()).is_contiguous()
    with pytest.raises(ValueError, match="memory_format"):
        fastcnn.convert(base, memory_format=torch.preserve_format)
