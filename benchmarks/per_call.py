"""Per-call cost of fastcnn ops against PyTorch's: 1-element tensors, one thread, so the figure is the
dispatch, argument handling and autograd bookkeeping of a call rather than its arithmetic.

Run: python benchmarks/per_call.py [--json PATH]   (median of rounds x calls; µs per call)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date

import torch
import torch.nn.functional as F

from fastcnn import ops


def per_call_us(fn: Callable[[], object], calls: int, rounds: int) -> float:
    for _ in range(calls // 10):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def cases() -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    x = torch.randn(1, 1, 1, 1)
    w = torch.randn(1, 1, 1, 1)
    xg = x.clone().requires_grad_()
    wg = w.clone().requires_grad_()
    v = torch.randn(1)
    vg = v.clone().requires_grad_()

    def conv_step(conv):
        return lambda: conv(xg, wg).sum().backward()

    def relu_step(relu):
        return lambda: relu(vg).sum().backward()

    return {
        "conv2d forward": (lambda: ops.conv2d(x, w), lambda: F.conv2d(x, w)),
        "conv2d forward+backward": (conv_step(ops.conv2d), conv_step(F.conv2d)),
        "relu forward": (lambda: ops.relu(v), lambda: torch.relu(v)),
        "relu forward+backward": (relu_step(ops.relu), relu_step(torch.relu)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, (fast, reference) in cases().items():
        # Interleaved per round so that drift on a shared machine hits both alike.
        fast_us, torch_us = [], []
        for _ in range(args.rounds):
            fast_us.append(per_call_us(fast, args.calls, 1))
            torch_us.append(per_call_us(reference, args.calls, 1))
        row = {
            "case": name,
            "fastcnn_us": statistics.median(fast_us),
            "torch_us": statistics.median(torch_us),
        }
        row["ratio_fastcnn_over_torch"] = row["fastcnn_us"] / row["torch_us"]
        rows.append(row)
        print(
            f"{name:26s} fastcnn {row['fastcnn_us']:6.2f} µs  PyTorch {row['torch_us']:6.2f} µs  "
            f"ratio {row['ratio_fastcnn_over_torch']:.2f}"
        )
    if args.json:
        record = {
            "what": "per-call cost, 1-element tensors, 1 thread, median µs",
            "date": date.today().isoformat(),
            "host": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "cases": rows,
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
