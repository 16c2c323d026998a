"""How much of each torchvision classifier ``fastcnn.convert`` puts on fastcnn's kernels.

Counts leaf layers that compute (``nn.Identity``, dropout, ``StochasticDepth``, ``Permute`` and empty
containers left out): converted ones are those whose class is a fastcnn.nn class after conversion. Prints
one line per model and the layer kinds that stayed on torch, and writes the table as JSON.

    python scripts/convert_coverage.py [--out benchmarks/results/convert-coverage.json] [models...]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torchvision
from torch import nn
from torchvision.ops.misc import Permute
from torchvision.ops.stochastic_depth import StochasticDepth

import fastcnn
import fastcnn.nn as fnn

MODELS = [
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

_PASSIVE = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout, StochasticDepth, Permute)
_FASTCNN = {v for k, v in vars(fnn).items() if isinstance(v, type) and issubclass(v, nn.Module)}


def _counted(model: nn.Module):
    for name, module in model.named_modules():
        if next(module.children(), None) is not None or isinstance(module, _PASSIVE):
            continue
        if type(module) in (nn.Sequential, nn.ModuleList):  # empty containers
            continue
        yield name, module


def coverage(name: str) -> dict:
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = getattr(torchvision.models, name)(weights=None, **kwargs)
    total = sum(1 for _ in _counted(model))
    converted = fastcnn.convert(model)
    left = Counter(type(m).__name__ for _, m in _counted(converted) if type(m) not in _FASTCNN)
    on_fastcnn = total - sum(left.values())
    return {"model": name, "layers": total, "on_fastcnn": on_fastcnn, "left_on_torch": dict(left)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=MODELS)
    parser.add_argument("--out", help="write the table as JSON here")
    args = parser.parse_args()
    rows = [coverage(m) for m in args.models]
    for r in rows:
        share = 100 * r["on_fastcnn"] / r["layers"]
        counts = f"{r['on_fastcnn']:5d} / {r['layers']:5d} ({share:5.1f}%)"
        print(f"{r['model']:20s} {counts}  {r['left_on_torch']}")
    total = sum(r["layers"] for r in rows)
    done = sum(r["on_fastcnn"] for r in rows)
    left = sum((Counter(r["left_on_torch"]) for r in rows), Counter())
    print(f"{'all':20s} {done:5d} / {total:5d} ({100 * done / total:5.1f}%)  {dict(left)}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"models": rows, "layers": total, "on_fastcnn": done}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
