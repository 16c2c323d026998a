"""fastcnn's compiled extension: loading it, and what it was built with.

Importing this module loads the extension, which registers ``torch.ops.fastcnn.*``: ``fastcnn._C`` (the
C++ kernels serve CPU tensors, and the CUDA kernels CUDA tensors when it was built with them), or, with
``FASTCNN_BACKEND=cuda-emu`` set before import, ``fastcnn._C_emu``, whose CPU tensors are served by the
CUDA kernels run by fastcnn's SIMT emulator (built with ``make build-emu``). ``FASTCNN_EMU_EXTENSION``
names a sanitizer build of the emulator (``make emu-asan`` / ``emu-tsan``) to load in place of _C_emu.

Library modules import this module, not the package root, so that whichever is imported first, the ops
they call are registered, and no module of the package has to climb to ``fastcnn/__init__.py``.
"""

from __future__ import annotations

import importlib
import os

import torch

__all__ = ["backend", "built_with_cuda", "cuda_available"]

_BACKENDS = {"cpu": "_C", "cuda-emu": os.environ.get("FASTCNN_EMU_EXTENSION", "_C_emu")}
_backend = os.environ.get("FASTCNN_BACKEND", "cpu").strip().lower() or "cpu"


def _load() -> None:
    """Imports the extension the backend names; ImportError saying how to build it when it fails."""
    if _backend not in _BACKENDS:
        raise ImportError(f"FASTCNN_BACKEND must be one of {sorted(_BACKENDS)}, got {_backend!r}")
    try:
        # Importing the extension registers torch.ops.fastcnn.* (and torch.ops.fastcnn_emu.* for _C_emu).
        importlib.import_module(f".{_BACKENDS[_backend]}", __package__)
    except ImportError as exc:  # pragma: no cover - only hit on a broken install
        how = "make build-emu" if _backend == "cuda-emu" else "make build"
        raise ImportError(
            f"fastcnn's compiled extension (fastcnn.{_BACKENDS[_backend]}) failed to load: {exc}. Build it "
            f"with `{how}` against the torch you run (this is torch {torch.__version__})."
        ) from exc


_load()


def backend() -> str:
    """Which kernels serve CPU tensors: ``"cpu"`` (the C++ kernels) or ``"cuda-emu"`` (the CUDA kernels,
    run by fastcnn's SIMT emulator; chosen with ``FASTCNN_BACKEND=cuda-emu`` before import)."""
    return _backend


def built_with_cuda() -> bool:
    """True when fastcnn._C contains CUDA kernels (whether or not a GPU is present)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastcnn::relu", "CUDA")


def cuda_available() -> bool:
    """True when fastcnn was built with its CUDA kernels and a CUDA GPU is present."""
    return built_with_cuda() and torch.cuda.is_available()
