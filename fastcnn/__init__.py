"""fastcnn: hand-written CPU and CUDA kernels for CNN layers, usable as drop-in PyTorch ops and modules.

Set ``FASTCNN_BACKEND=cuda-emu`` before importing to run every op on CPU tensors through fastcnn's CUDA
kernels, executed by its SIMT emulator (the ``fastcnn._C_emu`` extension, built with
``make build-emu``): a way to run and test the CUDA code without a GPU. :func:`backend` says which
kernels serve CPU tensors.

The library is this package's modules (``ops``, ``nn``, ``convert``, ``fuse``, ``models``, ``augment``,
``metrics``, ``transfer``); the programs built on it (``fastcnn check``, ``demo``, ``bench``, ``train``)
live in :mod:`fastcnn.tools`, which the library never imports.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import augment, metrics, models, nn, ops, transfer
from ._extension import backend, built_with_cuda, cuda_available
from .convert import ConvertReport, convert
from .fuse import FuseReport, fuse

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
