"""fastcnn: hand-written CPU and CUDA kernels for CNN layers, usable as drop-in PyTorch ops and modules.

Set ``FASTCNN_BACKEND=cuda-emu`` before importing to run every op on CPU tensors through fastcnn's CUDA
kernels, executed by its SIMT emulator (the ``fastcnn._C_emu`` extension, built with
``make build-emu``): a way to run and test the CUDA code without a GPU. :func:`backend` says which
kernels serve CPU tensors.
"""

from __future__ import annotations

import importlib
import os

import torch

__version__ = "0.1.0"

# FASTCNN_EMU_EXTENSION: a sanitizer build of the emulator (make emu-asan / emu-tsan) in place of _C_emu.
_BACKENDS = {"cpu": "_C", "cuda-emu": os.environ.get("FASTCNN_EMU_EXTENSION", "_C_emu")}
_backend = os.environ.get("FASTCNN_BACKEND", "cpu").strip().lower() or "cpu"
if _backend not in _BACKENDS:
    raise ImportError(f"FASTCNN_BACKEND must be one of {sorted(_BACKENDS)}, got {_backend!r}")
try:
    # Importing the extension registers torch.ops.fastcnn.* (and torch.ops.fastcnn_emu.* for _C_emu).
    importlib.import_module(f".{_BACKENDS[_backend]}", __name__)
except ImportError as exc:  # pragma: no cover - only hit on a broken install
    how = "make build-emu" if _backend == "cuda-emu" else "make build"
    raise ImportError(
        f"fastcnn's compiled extension (fastcnn.{_BACKENDS[_backend]}) failed to load: {exc}. Build it with "
        f"`{how}` against the torch you run (this is torch {torch.__version__})."
    ) from exc

from . import augment, metrics, models, nn, ops, transfer  # noqa: E402
from .convert import ConvertReport, convert  # noqa: E402
from .fuse import FuseReport, fuse  # noqa: E402


def backend() -> str:
    """Which kernels serve CPU tensors: ``"cpu"`` (the C++ kernels) or ``"cuda-emu"`` (the CUDA kernels,
    run by fastcnn's SIMT emulator; chosen with ``FASTCNN_BACKEND=cuda-emu`` before import)."""
    return _backend


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
    "backend",
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
