"""torch.compile(fullgraph=True) over a CNN built from fastcnn.nn: no graph break, same results as eager.

fullgraph=True makes any graph break an error, so compiling at all proves dynamo traces every fastcnn op
through its fake kernel; the backward pass goes through the registered autograd formulas.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, EMULATED, assert_close
from torch import nn

import fastcnn.nn as fnn
from fastcnn import ops


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = fnn.Conv2d(3, 8, 3, padding=1, activation="relu")
        self.pool = fnn.MaxPool2d(2)
        self.conv1 = fnn.Conv2d(8, 8, 3, padding=1, activation="relu")
        self.conv2 = fnn.Conv2d(8, 8, 3, padding=1, activation="relu")
        self.down = fnn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.dw = fnn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8, activation="sigmoid")
        self.join = fnn.ResidualAdd("relu")
        self.avg = fnn.AvgPool2d(2, ceil_mode=True)
        self.gap = fnn.AdaptiveAvgPool2d(1)
        self.flatten = fnn.Flatten()
        self.fc = fnn.Linear(16, 10, activation="tanh")
        self.act = fnn.Tanh()

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = self.conv2(self.conv1(x), residual=x)  # residual fused into the conv epilogue
        x = self.join(self.dw(x), self.down(x))  # residual through ResidualAdd
        x = self.gap(self.avg(x))
        return self.act(self.fc(self.flatten(x)))


def _check_compiled_matches_eager(backend, device, dtype, channels_last):
    torch._dynamo.reset()
    model = SmallCNN().to(device, dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 3, 12, 11, device=device, dtype=dtype).contiguous(memory_format=fmt)
    compiled = torch.compile(model, backend=backend, fullgraph=True)

    out = model(x)
    out.square().sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    out_c = compiled(x)
    out_c.square().sum().backward()
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert_close(out_c, out.detach(), rtol=tol)
    for (name, p), g in zip(model.named_parameters(), eager_grads, strict=True):
        assert_close(p.grad, g, rtol=tol, name=f"grad of {name}")


@pytest.mark.parametrize("device", DEVICES)
def test_compile_inductor(device):
    _check_compiled_matches_eager("inductor", device, torch.float32, channels_last=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_compile_aot_eager(channels_last, device):
    _check_compiled_matches_eager("aot_eager", device, torch.float64, channels_last)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_functional_ops_unbatched_and_padding(device):
    """The Python-side argument handling (unbatched input, "same" padding, default pool stride) traces too."""
    torch._dynamo.reset()
    w = torch.randn(4, 3, 4, 4, device=device, dtype=torch.float64)
    fc = torch.randn(5, 4 * 3 * 3, device=device, dtype=torch.float64)

    def fn(x):
        y = ops.conv2d(x, w, None, padding="same", activation="tanh")
        y = ops.max_pool2d(y, 2, ceil_mode=True)
        y = ops.adaptive_avg_pool2d(y, (3, None))
        y = ops.avg_pool2d(y, 1)
        y = ops.add(y, ops.sigmoid(y), activation="relu")
        return ops.linear(ops.relu(y).flatten(), fc, activation="sigmoid")

    x = torch.randn(3, 6, 5, device=device, dtype=torch.float64, requires_grad=True)
    out = torch.compile(fn, backend="aot_eager", fullgraph=True)(x)
    ref = fn(x)
    assert_close(out, ref.detach())
    (g,) = torch.autograd.grad(out.sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    assert_close(g, g_ref)


def test_compile_dynamic_shapes():
    """With dynamic shapes the fake kernels' shape arithmetic runs on symbolic sizes."""
    torch._dynamo.reset()
    model = SmallCNN().double()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    for shape in ((2, 3, 12, 11), (3, 3, 16, 9)):
        x = torch.randn(shape, dtype=torch.float64)
        assert_close(compiled(x), model(x).detach())


@pytest.mark.gpu
def test_compile_cuda_autocast():
    torch._dynamo.reset()
    model = SmallCNN().cuda()
    x = torch.randn(2, 3, 12, 11, device="cuda")
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_c, out = compiled(x), model(x)
    assert out_c.dtype == out.dtype
    torch.testing.assert_close(out_c.float(), out.float(), rtol=1e-2, atol=1e-2)


def test_compile_matches_torch_network():
    """The compiled fastcnn network computes what the same network written with torch.nn computes."""
    torch._dynamo.reset()
    model = SmallCNN().double()
    x = torch.randn(2, 3, 12, 11, dtype=torch.float64)

    def reference(x):
        m = model
        h = m.pool(F.relu(F.conv2d(x, m.stem.weight, m.stem.bias, padding=1)))
        h = F.relu(
            F.conv2d(
                F.relu(F.conv2d(h, m.conv1.weight, m.conv1.bias, padding=1)),
                m.conv2.weight,
                m.conv2.bias,
                padding=1,
            )
            + h
        )
        a = torch.sigmoid(F.conv2d(h, m.dw.weight, m.dw.bias, stride=2, padding=1, groups=8))
        h = F.relu(a + F.conv2d(h, m.down.weight, None, stride=2))
        h = F.adaptive_avg_pool2d(F.avg_pool2d(h, 2, ceil_mode=True), 1)
        return torch.tanh(torch.tanh(F.linear(h.flatten(1), m.fc.weight, m.fc.bias)))

    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert_close(compiled(x), reference(x))


# The 17 torchvision classifiers of the model tests, converted: each compiles whole (fullgraph=True) in
# train mode, forward and backward, batch-norm running statistics included, and matches eager.
ZOO = [
    "resnet50",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "regnet_y_400mf",
    "convnext_tiny",
    "densenet121",
    "googlenet",
    "inception_v3",
    "vgg16",
    "squeezenet1_1",
    "shufflenet_v2_x1_0",
    "mnasnet1_0",
    "alexnet",
]


def _converted(name):
    import torchvision

    import fastcnn

    kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, **kwargs)
    for m in model.modules():  # dropout draws different masks in eager and compiled runs
        if isinstance(m, nn.Dropout) or type(m).__name__ == "StochasticDepth":
            m.p = 0.0
    return fastcnn.convert(model)


# Tracing does not depend on the backend; under emulation test_convert_cuda runs models on the kernels.
_NOT_EMULATED = pytest.mark.skipif(EMULATED, reason="whole models under emulation: see test_convert_cuda")


@_NOT_EMULATED
@pytest.mark.parametrize("name", ZOO)
def test_converted_zoo_compiles_without_graph_breaks(name):
    import copy

    torch._dynamo.reset()
    eager = _converted(name).train()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 80 if name == "inception_v3" else 64, 64 if name != "inception_v3" else 80)
    ours, ref = compiled(x), eager(x)
    assert_close(ours, ref.detach(), rtol=1e-4)
    ours.square().sum().backward()
    ref.square().sum().backward()
    for (n, p), (_, q) in zip(compiled_model.named_parameters(), eager.named_parameters(), strict=True):
        scale = max(q.grad.norm().item(), 1e-3 * max(r.grad.norm().item() for r in eager.parameters()))
        assert (p.grad - q.grad).norm().item() <= 1e-3 * scale, f"grad of {n}"
    for (n, b), (_, c) in zip(compiled_model.named_buffers(), eager.named_buffers(), strict=True):
        assert torch.allclose(b.double(), c.double(), rtol=1e-4, atol=1e-6), n


@_NOT_EMULATED
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "convnext_tiny"])
def test_converted_models_export(name):
    """torch.export of the converted model in eval mode: every fastcnn op has a fake kernel, and the
    exported program computes what the model does."""
    model = _converted(name).eval()
    x = torch.randn(2, 3, 64, 64)
    program = torch.export.export(model, (x,))
    assert any("fastcnn" in str(node.target) for node in program.graph.nodes)
    assert torch.equal(program.module()(x), model(x))
