"""No memory leak over many forward/backward iterations, on the normal and on the error paths.

A small CNN built from every fastcnn op runs forward and backward N times; the process's resident set
(VmRSS from /proc/self/status) after a warm-up must not grow by more than LEAK_BUDGET. The per-iteration
input is LEAK_UNIT bytes, so a kernel that leaks even one input-sized buffer per iteration grows RSS by
N * LEAK_UNIT, several times the budget: test_leak_detector_catches_a_per_iteration_leak checks that this
detector does flag exactly such a leak. The CI variant runs 2,000 iterations; the 10,000-iteration one is
marked slow. On CUDA, the caching allocator's allocated bytes must return to the same value.
"""

from __future__ import annotations

import ctypes
import gc
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import EMULATED

import fastcnn.nn
from fastcnn import ops

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")

INPUT_SHAPE = (2, 4, 32, 32)  # 8192 fp32 elements: LEAK_UNIT = 32 KiB
LEAK_UNIT = 4 * 2 * 4 * 32 * 32
LEAK_BUDGET = 16 * 2**20  # 2,000 iterations leaking one input each would add 64 MiB


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # pragma: no cover - not glibc
    _LIBC = None


def rss_bytes() -> int:
    """Resident bytes, after handing freed heap back to the OS (glibc keeps freed memory resident, and a
    leak that reuses it would not show)."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class TinyNet(torch.nn.Module):
    """Every fastcnn op once: conv (+bias, residual, activations), pools, add, linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = fastcnn.nn.Conv2d(4, 8, 3, padding=1, activation="relu")
        self.conv2 = fastcnn.nn.Conv2d(8, 8, 3, padding=1, groups=8, activation="tanh")
        self.conv3 = fastcnn.nn.Conv2d(8, 8, 1)
        self.fc = fastcnn.nn.Linear(8, 10, activation="sigmoid")

    def forward(self, x):
        y = self.conv1(x)
        y = ops.max_pool2d(y, 3, stride=2, padding=1)
        z = self.conv2(y)
        y = self.conv3(z, residual=y)
        y = ops.add(y, z, activation="relu")
        y = ops.avg_pool2d(y, 2)
        y = ops.adaptive_avg_pool2d(y, 1).flatten(1)
        return self.fc(ops.relu(y))


def run_iterations(model, iterations, device="cpu", leak=None):
    gen = torch.Generator().manual_seed(0)
    x_cpu = torch.randn(INPUT_SHAPE, generator=gen)
    for i in range(iterations):
        x = x_cpu.to(device).requires_grad_()
        loss = model(x).square().mean()
        loss.backward()
        if leak is not None:
            leak.append(x.detach().clone())
        if i % 256 == 0:
            for p in model.parameters():
                p.grad = None


def rss_growth(model, iterations, leak=None):
    run_iterations(model, 300, leak=None)  # warm-up: allocator pools, thread pools, lazy init
    gc.collect()
    before = rss_bytes()
    run_iterations(model, iterations, leak=leak)
    gc.collect()
    return rss_bytes() - before


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: CI runs tests two at a time on two cores, where a second OpenMP thread only
    spins (40 ms instead of 0.6 ms an iteration). Threaded paths are exercised by test_threads.py."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_no_leak_over_2000_iterations():
    growth = rss_growth(TinyNet(), 2000)
    assert growth < LEAK_BUDGET, f"RSS grew by {growth / 2**20:.1f} MiB over 2,000 iterations"


@pytest.mark.slow
def test_no_leak_over_10000_iterations():
    growth = rss_growth(TinyNet(), 10_000)
    assert growth < LEAK_BUDGET, f"RSS grew by {growth / 2**20:.1f} MiB over 10,000 iterations"


def test_leak_detector_catches_a_per_iteration_leak():
    """The detector itself: keeping one input-sized tensor per iteration must exceed the budget."""
    leak = []
    growth = rss_growth(TinyNet(), 2000, leak=leak)
    assert len(leak) * LEAK_UNIT >= 3 * LEAK_BUDGET
    assert growth >= LEAK_BUDGET, f"a {len(leak) * LEAK_UNIT / 2**20:.0f} MiB leak went unnoticed"


def test_no_leak_on_error_paths():
    """Rejected calls (each raises through TORCH_CHECK after some checks) release what they allocated."""
    x = torch.randn(INPUT_SHAPE)
    w_bad = torch.randn(8, 3, 3, 3)
    bad_calls = [
        lambda: ops.conv2d(x, w_bad),
        lambda: ops.max_pool2d(x, 3, padding=2),
        lambda: ops.linear(torch.randn(3, 5), torch.randn(4, 6)),
        lambda: ops.add(x, x[:, :2]),
    ]
    if not EMULATED:  # the CUDA kernel skips out-of-range indices instead of rejecting them
        bad_calls.append(lambda: torch.ops.fastcnn.max_pool2d_backward(x, x, torch.full(INPUT_SHAPE, 10**6)))

    def churn(n):
        for _ in range(n):
            for call in bad_calls:
                with pytest.raises((RuntimeError, ValueError)):
                    call()

    churn(200)
    gc.collect()
    before = rss_bytes()
    churn(2000)
    gc.collect()
    growth = rss_bytes() - before
    assert growth < LEAK_BUDGET, f"RSS grew by {growth / 2**20:.1f} MiB over 10,000 rejected calls"


@pytest.mark.gpu
@pytest.mark.parametrize("iterations", [2000, pytest.param(10_000, marks=pytest.mark.slow)])
def test_cuda_allocator_flat(iterations):
    model = TinyNet().cuda()
    run_iterations(model, 100, "cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    run_iterations(model, iterations, "cuda")
    torch.cuda.synchronize()
    after = torch.cuda.memory_allocated()
    # Parameter .grad buffers are the only state carried between iterations; they are in `before` too.
    assert after - before <= 0, f"CUDA allocated memory grew by {after - before} bytes"
    stats = torch.cuda.memory_stats()
    assert stats["active_bytes.all.current"] == after


def test_reference_model_matches_torch():
    """The leak model computes what it should (a leak test on a broken model would prove little)."""
    model = TinyNet().double()
    x = torch.randn(INPUT_SHAPE, dtype=torch.float64)
    m = model
    y = F.relu(F.conv2d(x, m.conv1.weight, m.conv1.bias, padding=1))
    y = F.max_pool2d(y, 3, stride=2, padding=1)
    z = torch.tanh(F.conv2d(y, m.conv2.weight, m.conv2.bias, padding=1, groups=8))
    y = F.conv2d(z, m.conv3.weight, m.conv3.bias) + y
    y = F.relu(y + z)
    y = F.adaptive_avg_pool2d(F.avg_pool2d(y, 2), 1).flatten(1)
    ref = torch.sigmoid(F.linear(F.relu(y), m.fc.weight, m.fc.bias))
    torch.testing.assert_close(model(x), ref, rtol=1e-10, atol=1e-12)
