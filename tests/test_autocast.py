"""fastcnn ops under torch.autocast on the CPU: torch layers hand fastcnn layers bfloat16 (or float16)
activations, which fastcnn computes in float32 (its CPU kernels have no reduced types). CUDA autocast is
tested beside each op (test_conv2d.py, test_linear.py, test_activation.py)."""

import copy

import pytest
import torch
from conftest import EMULATED, assert_close

import fastcnn
import fastcnn.nn as fnn
from fastcnn import ops

pytestmark = pytest.mark.skipif(
    EMULATED, reason="CPU autocast is the CPU extension's; the emulated CUDA kernels take reduced types"
)

AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]


def test_every_op_has_a_cpu_autocast_kernel():
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastcnn::")]
    assert len(names) > 20
    missing = [n for n in names if not torch._C._dispatch_has_kernel_for_dispatch_key(n, "AutocastCPU")]
    assert missing == []


def _layers(nn):
    torch.manual_seed(0)
    return [
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        nn.Linear(8, 4),
    ]


class _Float64(torch.nn.Module):
    def forward(self, x):
        return x.double()


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=["bf16", "fp16"])
def test_torch_then_fastcnn_layers_under_cpu_autocast(dtype):
    """A torch conv, which autocast runs in `dtype`, feeds fastcnn layers, which take its reduced output
    and compute in float32: the same as torch's layers in float64 on that output, forward and backward
    (the torch conv's own gradients in `dtype` on both sides)."""
    torch.manual_seed(1)
    stem = torch.nn.Conv2d(3, 8, 3, padding=1)
    model = torch.nn.Sequential(stem, *_layers(fnn))
    reference = torch.nn.Sequential(copy.deepcopy(stem), _Float64(), *_layers(torch.nn)).double()
    reference[0].float()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a.double(), b.double())
    x = torch.randn(4, 3, 12, 12)
    weights = torch.randn(4, 4, dtype=torch.float64)
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
        ref = reference(x)
    assert out.dtype == torch.float32 and ref.dtype == torch.float64
    assert_close(out, ref)
    (out.double() * weights).sum().backward()  # outside the region, as AMP recommends
    (ref * weights).sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        # The stem's gradient comes from its backward in `dtype` (a reduced-precision GEMM on both sides).
        assert_close(p.grad, q.grad, dtype=dtype if name.startswith("0.") else None, name=f"{name}.grad")
    # The running statistics stayed float32 and were updated in place.
    bn = model[2]
    assert bn.running_mean.dtype == torch.float32 and int(bn.num_batches_tracked) == 1
    assert_close(bn.running_var, reference[3].running_var.float(), name="running_var")


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=["bf16", "fp16"])
def test_op_with_reduced_input_under_cpu_autocast(dtype):
    x = torch.randn(2, 4, 5, 5).to(dtype)
    w = torch.randn(6, 4, 3, 3)
    with torch.autocast("cpu", dtype=dtype):
        y = ops.conv2d(x, w, padding=1, activation="relu")
        z = ops.gelu(x)
        s = ops.add(x, x.float())
    ref = torch.nn.functional.conv2d(x.double(), w.double(), padding=1).relu()
    assert y.dtype == torch.float32
    assert_close(y, ref, dtype=dtype)
    assert_close(z, torch.nn.functional.gelu(x.double()), dtype=dtype)
    assert_close(s, 2 * x.double(), dtype=dtype)


def test_reduced_input_outside_autocast_still_names_the_argument():
    with pytest.raises((RuntimeError, ValueError), match="input"):
        ops.relu(torch.randn(3).bfloat16())


def test_cpu_autocast_leaves_float64_alone():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.conv2d(x, w)
    assert y.dtype == torch.float64
    assert_close(y, torch.nn.functional.conv2d(x, w))


def test_converted_model_under_cpu_autocast():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    fast = fastcnn.convert(net).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x)
    with torch.no_grad():
        ref = net.double()(x.double())
    assert_close(out.float(), ref, dtype=torch.bfloat16)
