"""What ``fastcnn bench`` runs: the networks, dtypes and memory formats, the presets, the compile mode."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "ALL_NETWORKS",
    "CONTENDERS",
    "DTYPES",
    "NETWORKS",
    "PRESETS",
    "RATIO_MEANING",
    "RESIDUAL_NETWORKS",
    "RESULTS_DIR",
    "SCHEMA",
    "Config",
    "Preset",
    "configs_for",
    "resolve_compile_mode",
]

SCHEMA = "fastcnn-bench/1"
CONTENDERS = ("fastcnn", "eager", "compile")
NETWORKS = ("resnet50", "vgg16", "mobilenet_v2")  # the default selection
#: Every network --networks accepts: conv layers come from cnn_layers.json; pooling, elementwise and
#: linear cases exist for the NETWORKS only (the others contribute conv and fused cases).
ALL_NETWORKS = (*NETWORKS, "resnet18", "xception")
#: Networks whose conv layers carry a residual add: the fused conv+bias(+residual)+ReLU cases.
RESIDUAL_NETWORKS = ("resnet50", "resnet18")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
RATIO_MEANING = "PyTorch time / fastcnn time: > 1 means fastcnn is faster"
RESULTS_DIR = Path("benchmarks") / "results"


@dataclass(frozen=True)
class Preset:
    """How much a preset times: layers per network, batches per device, repeats, which models."""

    layers_per_network: int | None  # None: every distinct layer
    shapes_per_op: int | None  # activation-size shapes per op and network (None: all)
    batch_cpu: tuple[int, ...]
    batch_cuda: tuple[int, ...]
    models: tuple[str, ...]
    compile_models: bool  # torch.compile whole models (minutes of compile time on a CPU)
    cpu_rounds: int
    cpu_block_time: float  # seconds per timed block
    cuda_runs: int
    cuda_warmup: int


PRESETS = {
    "quick": Preset(2, 1, (2,), (32,), ("resnet18",), False, 5, 0.01, 20, 3),
    "full": Preset(None, None, (8,), (32, 128), ("resnet18", "resnet50"), True, 15, 0.05, 50, 5),
    # Whole networks at three batch sizes (with --ops model): converted + fused inference against eager
    # and torch.compile, and the ResNets' training step.
    "models": Preset(
        None, None, (1, 8, 32), (1, 8, 32), ("resnet18", "resnet50", "mobilenet_v2"), True, 5, 0.05, 20, 3
    ),
}


@dataclass(frozen=True)
class Config:
    """A dtype and memory format under test."""

    dtype_name: str
    channels_last: bool

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def layout(self) -> str:
        return "channels_last" if self.channels_last else "nchw"


def configs_for(args: argparse.Namespace, device: torch.device, preset_name: str) -> list[Config]:
    """The dtype x layout configurations that --dtype and --layout select (defaults per device)."""
    if args.dtype:
        names = [d.strip() for d in args.dtype.split(",") if d.strip()]
    elif device.type == "cuda":
        names = ["fp16"] if preset_name == "quick" else ["fp16", "bf16", "fp32"]
    else:
        names = ["fp32"]
    configs = []
    for name in names:
        if name not in DTYPES:
            raise ValueError(f"--dtype: unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
        if device.type == "cpu" and name in ("fp16", "bf16"):
            raise ValueError(f"--dtype {name}: fastcnn's CPU kernels take fp32 and fp64 only")
        layouts = {
            "auto": [name in ("fp16", "bf16")],
            "nchw": [False],
            "channels_last": [True],
            "both": [False, True],
        }[args.layout]
        configs += [Config(name, channels_last) for channels_last in layouts]
    return configs


def resolve_compile_mode(mode: str, device: torch.device) -> str | None:
    """The torch.compile mode for the device: "auto" is max-autotune on the GPU, the default on the CPU."""
    if mode == "none":
        return None
    if mode == "auto":
        return "max-autotune" if device.type == "cuda" else "default"
    return mode
