"""Thread safety: fastcnn ops called from several Python threads at once give PyTorch's results.

Each worker thread runs a different op (forward and backward) on its own inputs, many times, while the
others run theirs; some workers also share one set of weights. The kernels keep no global mutable state:
scratch buffers are per call, so concurrent calls must not see each other's data. Both 1 and 2 intra-op
threads are covered (2 makes the calls share ATen's OpenMP pool).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES

from fastcnn import ops

ITERATIONS = 50


def _conv_case(gen, device, shared):
    x = torch.randn(2, 8, 17, 15, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w, b = shared["conv"]

    def fast():
        return ops.conv2d(x, w, b, stride=2, padding=1, activation="relu")

    def ref():
        return F.relu(F.conv2d(x, w, b, stride=2, padding=1))

    return fast, ref, [x, w, b]


def _depthwise_case(gen, device, shared):
    x = torch.randn(2, 8, 16, 16, generator=gen, dtype=torch.float64).to(device)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(16, 1, 3, 3, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    return (
        lambda: ops.conv2d(x, w, None, padding=1, groups=8, activation="tanh"),
        lambda: torch.tanh(F.conv2d(x, w, None, padding=1, groups=8)),
        [x, w],
    )


def _linear_case(gen, device, shared):
    x = torch.randn(33, 40, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w, b = shared["linear"]
    return (
        lambda: ops.linear(x, w, b, activation="sigmoid"),
        lambda: torch.sigmoid(F.linear(x, w, b)),
        [x, w, b],
    )


def _pool_case(gen, device, shared):
    x = torch.randn(2, 6, 21, 19, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    return (
        lambda: ops.avg_pool2d(ops.max_pool2d(x, 3, stride=2, padding=1), 2, ceil_mode=True),
        lambda: F.avg_pool2d(F.max_pool2d(x, 3, stride=2, padding=1), 2, ceil_mode=True),
        [x],
    )


def _adaptive_add_case(gen, device, shared):
    x = torch.randn(2, 6, 13, 11, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    y = torch.randn(2, 6, 5, 4, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    return (
        lambda: ops.add(ops.adaptive_avg_pool2d(x, (5, 4)), y, activation="relu"),
        lambda: F.relu(F.adaptive_avg_pool2d(x, (5, 4)) + y),
        [x, y],
    )


CASES = [_conv_case, _depthwise_case, _linear_case, _pool_case, _adaptive_add_case]


def _shared_weights(device):
    gen = torch.Generator().manual_seed(7)

    def param(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()

    return {"conv": (param(12, 8, 3, 3), param(12)), "linear": (param(24, 40), param(24))}


def _worker(index, device, shared, barrier):
    case = CASES[index % len(CASES)]
    gen = torch.Generator().manual_seed(100 + index)
    fast, ref, leaves = case(gen, device, shared)
    expected_out = ref()
    expected_grads = torch.autograd.grad(expected_out, leaves, torch.ones_like(expected_out))
    barrier.wait()  # start together, so calls overlap as much as possible
    for _ in range(ITERATIONS):
        out = fast()
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        torch.testing.assert_close(out, expected_out, rtol=1e-10, atol=1e-12)
        for g, e in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    return index


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("intra_op_threads", [1, 2])
def test_ops_from_many_python_threads_match_torch(intra_op_threads, device):
    saved = torch.get_num_threads()
    torch.set_num_threads(intra_op_threads)
    try:
        workers = 2 * len(CASES)
        shared = _shared_weights(device)
        barrier = threading.Barrier(workers)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_worker, i, device, shared, barrier) for i in range(workers)]
            assert sorted(f.result(timeout=120) for f in futures) == list(range(workers))
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("device", DEVICES)
def test_one_module_shared_by_threads_trains_like_a_serial_loop(device):
    """Threads computing gradients of one fastcnn model on different inputs: the sum of their gradients
    equals the serial loop's (gradients are taken with autograd.grad, so no .grad races)."""
    import fastcnn.nn

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        fastcnn.nn.Conv2d(3, 8, 3, padding=1, activation="relu"),
        fastcnn.nn.MaxPool2d(2),
        fastcnn.nn.AdaptiveAvgPool2d(1),
        fastcnn.nn.Flatten(),
        fastcnn.nn.Linear(8, 4),
    ).to(device, torch.float64)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(2, 3, 12, 12, generator=gen, dtype=torch.float64).to(device) for _ in range(8)]

    def grads_of(x):
        return torch.autograd.grad(model(x).square().sum(), params)

    serial = [grads_of(x) for x in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(grads_of, inputs))
    for s, t in zip(serial, threaded, strict=True):
        for a, b in zip(s, t, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
