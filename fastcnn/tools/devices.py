"""The ``--device`` choice every fastcnn program takes."""

from __future__ import annotations

import torch

from .. import cuda_available

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when fastcnn's CUDA kernels and a GPU are there, else the CPU; any other name is
    a torch device, which must be the CPU or a CUDA device fastcnn can run on (ValueError otherwise)."""
    if name == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not cuda_available():
        raise ValueError("--device cuda needs a GPU and a CUDA build of fastcnn")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda; got {name!r}")
    return device
