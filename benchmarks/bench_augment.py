"""Throughput of fastcnn.augment against torchvision.transforms.v2 (images per second).

The same augmentation each way: random resized crop, horizontal flip, rotation (bilinear), conversion
to float and normalisation, on a uint8 batch:

* fastcnn       RandomAffineAugment: per-sample parameters, one fused kernel per batch;
* tv2 per image a v2.Compose applied image by image (per-sample parameters, as a DataLoader does);
* tv2 per batch the same Compose applied once to the whole batch (ONE set of parameters shared by every
                image: cheaper, but not the same augmentation).

Run: ``python benchmarks/bench_augment.py [--batch 256 --size 64 --out-size 56 --device cpu]``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
import torchvision.transforms.v2 as T
from torchvision.transforms import InterpolationMode

import fastcnn
from fastcnn.augment import RandomAffineAugment
from fastcnn.tools.bench.timing import time_wall

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def measure(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    return time_wall([fn], device, repeats, warmup)[0] / 1e3


def bench(device: torch.device, batch: int, size: int, out_size: int, repeats: int) -> dict[str, float]:
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    fast = RandomAffineAugment(
        out_size, hflip=0.5, crop_scale=(0.5, 1.0), degrees=15.0, mean=MEAN, std=STD, seed=0
    )
    tv = T.Compose(
        [
            T.RandomResizedCrop(out_size, scale=(0.5, 1.0), antialias=False),
            T.RandomHorizontalFlip(),
            T.RandomRotation(15.0, interpolation=InterpolationMode.BILINEAR),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(MEAN, STD),
        ]
    )

    def tv_per_image():
        return torch.stack([tv(img) for img in images])

    results = {
        "fastcnn": measure(lambda: fast(images), device, repeats),
        "tv2 per image": measure(tv_per_image, device, max(3, repeats // 4)),
        "tv2 per batch": measure(lambda: tv(images), device, repeats),
    }
    return {name: batch / seconds for name, seconds in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=64, help="input height = width")
    parser.add_argument("--out-size", type=int, default=56, help="output height = width")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args()

    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("all", "cuda") and fastcnn.cuda_available():
        devices.append(torch.device("cuda"))
    print(
        f"batch {args.batch} x 3 x {args.size} x {args.size} uint8 -> float32 "
        f"{args.out_size} x {args.out_size}, "
        f"torch threads {torch.get_num_threads()}"
    )
    report = {}
    for device in devices:
        figures = bench(device, args.batch, args.size, args.out_size, args.repeats)
        report[str(device)] = figures
        base = figures["tv2 per image"]
        for name, ips in figures.items():
            print(f"{device.type:>4}  {name:<14} {ips:>12,.0f} images/s  ({ips / base:6.1f}x tv2 per image)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
