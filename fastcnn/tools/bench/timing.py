"""Timing contenders against each other, and the device ceilings their rates are measured against.

* :func:`time_cuda`: CUDA events around each call after a warm-up, the L2 cache overwritten before each
  call, the contenders alternating call by call (in reversed order every other round) so that clock or
  thermal drift hits all of them, and the median of many calls kept.
* :func:`time_cpu`: ``torch.utils.benchmark`` (all of torch's threads), the contenders taking turns
  block by block, the median over the blocks kept.
* :func:`time_wall`: wall-clock time of whole calls, each between two device synchronisations, the
  contenders alternating call by call; for work the host drives step by step (a training step, an
  augmentation pipeline), where per-kernel events would miss the host's share.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .config import DTYPES, Preset

__all__ = ["flush_l2", "measure_ceilings", "synchronize", "time_cpu", "time_cuda", "time_wall"]

_l2_flush: Tensor | None = None


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flush_l2(device: torch.device) -> None:
    """Overwrites the L2 cache (twice its size) so that no contender finds the other's data resident."""
    global _l2_flush
    if _l2_flush is None or _l2_flush.device != device:
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 2**26
        _l2_flush = torch.empty(2 * l2, dtype=torch.int8, device=device)
    _l2_flush.random_()


def time_cuda(
    fns: Sequence[Callable[[], object]],
    warmup: int,
    runs: int,
    device: torch.device,
    reduce: Callable[[list[float]], float] = statistics.median,
) -> list[float]:
    """Median (or ``reduce``) milliseconds per contender from CUDA events; the contenders alternate call
    by call, each call from a cold L2."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    torch.cuda.synchronize(device)
    events = [
        [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in fns]
        for _ in range(runs)
    ]
    for r in range(runs):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            flush_l2(device)
            start, end = events[r][i]
            start.record()
            fns[i]()
            end.record()
    torch.cuda.synchronize(device)
    return [
        reduce([events[r][i][0].elapsed_time(events[r][i][1]) for r in range(runs)]) for i in range(len(fns))
    ]


def time_cpu(
    fns: Sequence[Callable[[], object]],
    rounds: int,
    block_time: float,
    reduce: Callable[[list[float]], float] = statistics.median,
) -> list[float]:
    """Median (or ``reduce``) milliseconds per contender over alternating rounds of torch.utils.benchmark
    blocks.

    Each contender's block repeats its call for about ``block_time`` seconds (at least once), with all of
    torch's threads; the contenders take turns block by block, in reversed order every other round.
    """
    from torch.utils import benchmark

    threads = torch.get_num_threads()
    numbers = []
    slow = False
    for fn in fns:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        numbers.append(max(1, int(block_time / max(elapsed, 1e-7))))
        slow = slow or elapsed > 0.25
    if slow:
        rounds = min(rounds, 3)  # calls of a quarter second or more (whole models): fewer, longer rounds
    timers = [benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads) for fn in fns]
    per: list[list[float]] = [[] for _ in fns]
    for r in range(rounds):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            per[i].append(timers[i].timeit(numbers[i]).median * 1e3)
    return [reduce(p) for p in per]


def time_wall(
    fns: Sequence[Callable[[], object]], device: torch.device, runs: int, warmup: int = 0
) -> list[float]:
    """Median wall-clock milliseconds per contender over ``runs`` calls after ``warmup`` untimed ones,
    each call between two synchronisations of ``device``; the contenders alternate call by call, so that
    all of them see the same machine load."""
    samples: list[list[float]] = [[] for _ in fns]
    for r in range(warmup + runs):
        for fn, times in zip(fns, samples, strict=True):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if r >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(times) for times in samples]


def measure_ceilings(device: torch.device, dtypes: Sequence[str], settings: Preset) -> dict:
    """The device's memory bandwidth (a large device-to-device copy, bytes read + written) and matmul rate
    per dtype (a large torch.mm), each from its fastest timed run."""
    cuda = device.type == "cuda"
    copy_bytes = 2**30 if cuda else 2**28

    # A ceiling is the best the device did: the fastest run, not the median.
    def timed(fn: Callable[[], object]) -> float:
        if cuda:
            return time_cuda([fn], settings.cuda_warmup, settings.cuda_runs, device, reduce=min)[0]
        fn()
        return time_cpu([fn], 2 * settings.cpu_rounds, 2 * settings.cpu_block_time, reduce=min)[0]

    src = torch.randn(copy_bytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src))
    src = dst = None  # free the copy buffers before the matmuls
    ceilings: dict[str, Any] = {
        "copy_gbs": 2 * copy_bytes / ms / 1e6,
        "copy_bytes": copy_bytes,
        "matmul_tflops": {},
        "matmul_n": {},
    }
    for name in dtypes:
        n = 8192 if cuda else 2048
        a = torch.randn(n, n, device=device).to(DTYPES[name])
        b = torch.randn(n, n, device=device).to(DTYPES[name])
        ms = timed(lambda a=a, b=b: torch.mm(a, b))
        ceilings["matmul_tflops"][name] = 2.0 * n**3 / ms / 1e9
        ceilings["matmul_n"][name] = n
    return ceilings
