"""Determinism: with torch.use_deterministic_algorithms(True), every op gives bit-identical outputs and
gradients run to run (on the CPU with 2 intra-op threads as well as 1).

The CPU kernels never use atomics: reductions split across threads go through per-slot partial buffers
summed in slot order. On CUDA, max_pool2d_backward's default scatter uses atomicAdd (overlapping windows
add into the same input element in any order); with deterministic algorithms on it switches to a warp
per plane that adds in a fixed order, which the CUDA cases check.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import CUDA

import fastcnn.nn
from fastcnn import ops


@pytest.fixture
def deterministic():
    saved = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(saved)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    saved = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(saved)


def _conv(x, w, b):
    return ops.conv2d(x, w, b, stride=1, padding=1, activation="relu")


# Each case: (name, input shapes, fn). Sizes are big enough that the kernels split work across threads
# and, for the weight gradients, across partial-sum slots.
CASES = {
    "conv2d": ([(8, 16, 20, 20), (24, 16, 3, 3), (24,)], _conv),
    "conv2d_channels_last": (
        [(8, 16, 20, 20, "cl"), (24, 16, 3, 3), (24,)],
        lambda x, w, b: ops.conv2d(x, w, b, stride=2, padding=1, activation="tanh"),
    ),
    "conv2d_depthwise": (
        [(8, 32, 24, 24), (32, 1, 3, 3), (32,)],
        lambda x, w, b: ops.conv2d(x, w, b, padding=1, groups=32, activation="sigmoid"),
    ),
    "linear": ([(256, 192), (96, 192), (96,)], lambda x, w, b: ops.linear(x, w, b, activation="relu")),
    "max_pool2d_overlapping": ([(8, 16, 33, 33)], lambda x: ops.max_pool2d(x, 3, stride=2, padding=1)),
    "max_pool2d_channels_last": ([(8, 16, 33, 33, "cl")], lambda x: ops.max_pool2d(x, 3, stride=1)),
    "avg_pool2d_overlapping": ([(8, 16, 33, 33)], lambda x: ops.avg_pool2d(x, 3, stride=2, padding=1)),
    "adaptive_avg_pool2d": ([(8, 16, 33, 33)], lambda x: ops.adaptive_avg_pool2d(x, (5, 7))),
    "add_relu": ([(8, 16, 33, 33), (8, 16, 33, 33)], lambda x, y: ops.add(x, y, activation="relu")),
    "tanh": ([(8, 16, 33, 33)], ops.tanh),
    "batch_norm_relu": (
        [(8, 16, 33, 33), (16,), (16,)],
        lambda x, w, b: ops.batch_norm(x, None, None, w, b, training=True, activation="relu"),
    ),
    "layer_norm_rows": ([(512, 96), (96,), (96,)], lambda x, w, b: ops.layer_norm(x, 96, w, b)),
    "layer_norm2d": ([(8, 16, 33, 33), (16,), (16,)], lambda x, w, b: ops.layer_norm2d(x, w, b)),
    "batch_norm_channels_last": (
        [(8, 16, 33, 33, "cl"), (16,), (16,)],
        lambda x, w, b: ops.batch_norm(x, None, None, w, b, training=True),
    ),
}


def _inputs(shapes, device, dtype):
    gen = torch.Generator().manual_seed(1234)
    tensors = []
    for shape in shapes:
        channels_last = shape[-1] == "cl"
        shape = shape[:-1] if channels_last else shape
        t = torch.randn(shape, generator=gen, dtype=dtype).to(device)
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        tensors.append(t.requires_grad_())
    grad_gen = torch.Generator().manual_seed(99)
    return tensors, grad_gen


def _run(fn, shapes, device, dtype):
    tensors, grad_gen = _inputs(shapes, device, dtype)
    out = fn(*tensors)
    grad = torch.randn(out.shape, generator=grad_gen, dtype=dtype).to(device)
    grads = torch.autograd.grad(out, tensors, grad)
    return [out.detach(), *grads]


def _assert_bit_identical(first, second, name):
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        what = "output" if i == 0 else f"gradient {i - 1}"
        assert torch.equal(a, b), f"{name}: {what} differs between two identical runs"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", list(CASES))
def test_cpu_ops_are_bit_identical_run_to_run(name, dtype, threads, deterministic):
    shapes, fn = CASES[name]
    first = _run(fn, shapes, "cpu", dtype)
    for _ in range(2):
        _assert_bit_identical(first, _run(fn, shapes, "cpu", dtype), name)


def test_deterministic_training_steps_are_bit_identical(deterministic):
    """A few SGD steps of a small CNN give bit-identical parameters twice over."""

    def train():
        torch.manual_seed(0)
        model = fastcnn.nn.Conv2d(3, 8, 3, padding=1, activation="relu")
        head = fastcnn.nn.Linear(8, 10)
        opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
        gen = torch.Generator().manual_seed(5)
        for _ in range(3):
            x = torch.randn(4, 3, 16, 16, generator=gen)
            y = ops.max_pool2d(model(x), 3, stride=2, padding=1)
            logits = head(ops.adaptive_avg_pool2d(y, 1).flatten(1))
            loss = F.cross_entropy(logits, torch.arange(4))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [p.detach().clone() for p in [*model.parameters(), *head.parameters()]]

    _assert_bit_identical(train(), train(), "training")


# ----------------------------------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_cuda_max_pool2d_backward_deterministic_path(dtype, deterministic):
    """Overlapping 3x3/stride-1 windows: every input element receives up to 9 atomic-prone adds."""
    shapes, fn = [(16, 64, 56, 56)], lambda x: ops.max_pool2d(x, 3, stride=1, padding=1)
    first = _run(fn, shapes, CUDA, dtype)
    for _ in range(5):
        _assert_bit_identical(first, _run(fn, shapes, CUDA, dtype), "max_pool2d (cuda)")
    # The deterministic path also agrees with a float64 scatter of the same gradients through the
    # forward's indices (which test_max_pool2d checks against PyTorch's). PyTorch's own float16 backward
    # is no reference here: it accumulates in float16, and on the CPU it breaks ties between equal
    # float16 maxima differently.
    (x,), _ = _inputs(shapes, CUDA, dtype)
    _, indices = torch.ops.fastcnn.max_pool2d(x.detach(), [3, 3], [1, 1], [1, 1], [1, 1], False)
    grad = torch.randn(indices.shape, generator=torch.Generator().manual_seed(99), dtype=dtype).to(CUDA)
    planes = x.shape[0] * x.shape[1]
    ref = torch.zeros(planes, x.shape[2] * x.shape[3], dtype=torch.float64, device=x.device)
    ref.scatter_add_(1, indices.reshape(planes, -1), grad.double().reshape(planes, -1))
    # fp32 sums of <= 9 terms, then one rounding to the output dtype.
    rtol = 1e-3 if dtype == torch.float16 else 1e-6
    torch.testing.assert_close(first[1].double(), ref.view(x.shape), rtol=rtol, atol=1e-5)


@pytest.mark.cuda
def test_cuda_max_pool2d_backward_default_path_matches_torch():
    """Deterministic algorithms off: the atomicAdd scatter, correct up to fp32 reordering."""
    assert not torch.are_deterministic_algorithms_enabled()
    (x,), grad_gen = _inputs([(16, 64, 56, 56)], CUDA, torch.float32)
    out = ops.max_pool2d(x, 3, stride=1, padding=1)
    grad = torch.randn(out.shape, generator=grad_gen).to(CUDA)
    (got,) = torch.autograd.grad(out, [x], grad)
    x64 = x.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad(F.max_pool2d(x64, 3, stride=1, padding=1), [x64], grad.double())
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(CASES))
def test_cuda_ops_are_bit_identical_run_to_run(name, deterministic):
    shapes, fn = CASES[name]
    first = _run(fn, shapes, CUDA, torch.float32)
    for _ in range(2):
        _assert_bit_identical(first, _run(fn, shapes, CUDA, torch.float32), name)
