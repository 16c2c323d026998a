"""The ``--device`` choice every fastcnn program takes."""

from __future__ import annotations

import torch

from .. import cuda_available

__all__ = ["resolve_device"]

_KINDS = ("cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when fastcnn's CUDA kernels and a GPU are there, else the CPU; any other name is
    a torch device, which must be the CPU or a CUDA device fastcnn can run on (ValueError otherwise)."""
    if name == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    refusal = f"--device must be auto, cpu or cuda; got {name!r}"
    # torch.device() accepts any backend it knows of (tpu, mps, xla...) and raises a bare RuntimeError for
    # the rest, so the name is judged here before torch sees it.
    if name.split(":", 1)[0] not in _KINDS:
        raise ValueError(refusal)
    try:
        device = torch.device(name)
    except RuntimeError:  # "cuda:x", "cpu:-1"
        raise ValueError(refusal) from None
    if device.type == "cuda" and not cuda_available():
        raise ValueError("--device cuda needs a GPU and a CUDA build of fastcnn")
    return device
