"""Where a training step's time goes: torch.profiler's self CPU time per op for a torchvision network
converted to fastcnn and for the same network on PyTorch, side by side in one run.

Run: python benchmarks/profile_step.py [--model resnet18] [--batch 8] [--steps 3] [--top 12]
"""

from __future__ import annotations

import argparse
import copy
from collections import defaultdict

import torch
import torch.nn.functional as F
import torchvision
from torch.profiler import ProfilerActivity, profile

import fastcnn


def step_fn(net: torch.nn.Module, x: torch.Tensor, target: torch.Tensor):
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), target).backward()
        optimizer.step()

    return step


def self_times_ms(step, steps: int) -> dict[str, float]:
    step()  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        totals[event.key] += event.self_cpu_time_total / 1e3 / steps
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    base = getattr(torchvision.models, args.model)(weights=None).train().to(memory_format=fmt)
    x = torch.randn(args.batch, 3, 224, 224).to(memory_format=fmt)
    target = torch.randint(0, 1000, (args.batch,))
    runs = {
        "fastcnn": self_times_ms(step_fn(fastcnn.convert(copy.deepcopy(base)), x, target), args.steps),
        "torch": self_times_ms(step_fn(copy.deepcopy(base), x, target), args.steps),
    }
    for name, times in runs.items():
        total = sum(times.values())
        print(f"\n{name}: {total:.1f} ms per step (self CPU time, {args.model}, batch {args.batch})")
        for key, ms in sorted(times.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  {ms:8.1f} ms  {100 * ms / total:5.1f}%  {key}")


if __name__ == "__main__":
    main()
