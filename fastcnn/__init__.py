"""fastcnn: hand-written CPU and CUDA kernels for CNN layers, usable as drop-in PyTorch ops and modules."""

from __future__ import annotations

import torch

__version__ = "0.1.0"

try:
    from . import _C  # noqa: F401  (importing registers torch.ops.fastcnn.*)
except ImportError as exc:  # pragma: no cover - only hit on a broken install
    raise ImportError(
        "fastcnn's compiled extension (fastcnn._C) failed to load: "
        f"{exc}. Build it with `pip install --no-build-isolation -e .` against the torch you run "
        f"(this is torch {torch.__version__})."
    ) from exc

from . import augment, metrics, models, nn, ops, transfer  # noqa: E402
from .convert import ConvertReport, convert  # noqa: E402
from .fuse import FuseReport, fuse  # noqa: E402


def cuda_available() -> bool:
    """True when fastcnn was built with its CUDA kernels and a CUDA GPU is present."""
    return built_with_cuda() and torch.cuda.is_available()


def built_with_cuda() -> bool:
    """True when fastcnn._C contains CUDA kernels (whether or not a GPU is present)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastcnn::relu", "CUDA")


__all__ = [
    "ConvertReport",
    "FuseReport",
    "__version__",
    "augment",
    "built_with_cuda",
    "convert",
    "cuda_available",
    "fuse",
    "metrics",
    "models",
    "nn",
    "ops",
    "transfer",
]
