"""``fastcnn bench``: time fastcnn against PyTorch eager and ``torch.compile`` on the same inputs.

Three contenders run every case on the same freshly drawn, non-zero random tensors:

* ``fastcnn``: fastcnn's own kernel (``torch.ops.fastcnn.*``, or a model converted with
  :func:`fastcnn.convert.convert`);
* ``eager``: PyTorch's eager op (cuDNN/cuBLAS on the GPU, oneDNN/MKL on the CPU);
* ``compile``: the same PyTorch code through ``torch.compile`` (``mode="max-autotune"`` on the GPU, the
  default mode on the CPU).

Cases: every op over the conv layers of ResNet-50, VGG-16 and MobileNetV2 (``cnn_layers.json``) and at
those networks' activation sizes (conv forward and backward, pooling, activations, the residual add,
linear); conv+bias+ReLU and conv+bias+residual+ReLU fused against the unfused eager sequence; and
ResNet-18/50 inference and one training step end to end. ``--networks resnet18,xception`` add those
networks' conv layers (conv and fused cases; ResNet-18's fused cases too); ``--layout both`` runs every
case in NCHW and in channels_last.

Timing. GPU: CUDA events around each call after a warm-up, the L2 cache overwritten before each call, the
contenders alternating call by call (in reversed order every other round) so that clock or thermal drift
hits all of them, and the median of many calls kept. CPU: ``torch.utils.benchmark`` (all of torch's
threads), the contenders taking turns block by block, the median over the blocks kept.

Reported per case: milliseconds per contender, ratios (PyTorch time / fastcnn time, so > 1 means fastcnn
is faster), achieved TFLOP/s (convs, linear) or GB/s (memory-bound ops, counting the fewest bytes the op
must move), and the share of the device's ceilings measured in the same run: a large device-to-device
copy (bytes read + written) for bandwidth and a large ``torch.mm`` for the FLOP rate. On the CPU a case
whose tensors fit in the caches can pass 100% of the (DRAM) copy bandwidth. The record's ``summary``
holds, per (op, dtype, layout), the geomean, min and max of the ratios against each contender.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib
import importlib.resources
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import fastcnn
from fastcnn import ops

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

#: Every case name ``--ops`` accepts, by group.
OP_GROUPS: dict[str, tuple[str, ...]] = {
    "conv": ("conv2d", "conv2d_backward"),
    "fused": ("conv_bias_relu", "conv_bias_residual_relu"),
    "linear": ("linear", "linear_backward"),
    "pool": (
        "max_pool2d",
        "max_pool2d_backward",
        "avg_pool2d",
        "avg_pool2d_backward",
        "adaptive_avg_pool2d",
        "adaptive_avg_pool2d_backward",
    ),
    "elementwise": ("relu", "sigmoid", "tanh", "activation_backward", "add"),
    "model": ("resnet18_inference", "resnet18_train_step", "resnet50_inference", "resnet50_train_step"),
}
ALL_OPS = tuple(op for ops in OP_GROUPS.values() for op in ops)


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
}


# --------------------------------------------------------------------------------------------------------
# Configurations and inputs
# --------------------------------------------------------------------------------------------------------


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


def rand(shape: Sequence[int], cfg: Config, device: torch.device, scale: float = 1.0) -> Tensor:
    """Fresh standard-normal values, never exactly zero (zeros hide unwritten outputs and can run faster)."""
    t = torch.randn(tuple(shape), device=device, dtype=torch.float32) * scale
    t = torch.where(t == 0, torch.full_like(t, 1e-3), t).to(cfg.dtype)
    if cfg.channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def nbytes(*tensors: Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def load_layers() -> dict[str, list[dict]]:
    """The conv layer shapes shipped with fastcnn (``fastcnn/data/cnn_layers.json``)."""
    text = importlib.resources.files("fastcnn").joinpath("data/cnn_layers.json").read_text()
    return json.loads(text)


def spread(items: Sequence[Any], count: int | None) -> list[Any]:
    """`count` items spread over the sequence (stem, middle, deep layers), or all of them."""
    if count is None or count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[i] for i in sorted({int(i * step) for i in range(count)})]


# --------------------------------------------------------------------------------------------------------
# The functions timed. PyTorch's side takes tensors and plain Python values only, so that torch.compile
# traces exactly the eager code (one graph per shape: compiled with dynamic=False).
# --------------------------------------------------------------------------------------------------------

_fc = torch.ops.fastcnn
_aten = torch.ops.aten
#: Kernel codes of the epilogues timed: none, and the ReLU of the fused cases.
_NONE, _RELU = ops.NO_ACTIVATION.code, ops.activation_code("relu")


def torch_conv(x, w, b, stride, padding, dilation, groups):
    return F.conv2d(x, w, b, stride, padding, dilation, groups)


def torch_conv_backward(go, x, w, bias_sizes, stride, padding, dilation, groups, mask):
    return _aten.convolution_backward(
        go, x, w, bias_sizes, stride, padding, dilation, False, [0, 0], groups, mask
    )


def torch_conv_bias_relu(x, w, b, stride, padding, dilation, groups):
    return F.relu(F.conv2d(x, w, b, stride, padding, dilation, groups))


def torch_conv_bias_residual_relu(x, w, b, r, stride, padding, dilation, groups):
    return F.relu(F.conv2d(x, w, b, stride, padding, dilation, groups) + r)


def torch_linear(x, w, b):
    return F.linear(x, w, b)


def torch_linear_backward(go, x, w):
    return go.mm(w), go.t().mm(x), go.sum(0)


def torch_max_pool(x, kernel, stride, padding):
    return _aten.max_pool2d_with_indices(x, kernel, stride, padding, [1, 1], False)


def torch_max_pool_backward(go, x, idx, kernel, stride, padding):
    return _aten.max_pool2d_with_indices_backward(go, x, kernel, stride, padding, [1, 1], False, idx)


def torch_avg_pool(x, kernel, stride, padding):
    return F.avg_pool2d(x, kernel, stride, padding)


def torch_avg_pool_backward(go, x, kernel, stride, padding):
    return _aten.avg_pool2d_backward(go, x, kernel, stride, padding, False, True, None)


def torch_adaptive_avg_pool(x, size):
    return _aten._adaptive_avg_pool2d(x, size)


def torch_adaptive_avg_pool_backward(go, x):
    return _aten._adaptive_avg_pool2d_backward(go, x)


def torch_add_relu(a, b):
    return torch.relu(a + b)


def torch_activation(
    act: ops.Activation,
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]:
    """PyTorch's forward and backward of a registry activation, as Python functions: torch.compile
    traces a Python function's code, while a builtin op handed to it directly would run uncompiled."""
    reference, reference_backward = act.reference, act.reference_backward

    def forward(x):
        return reference(x)

    def backward(go, y):
        return reference_backward(go, y)

    forward.__name__, backward.__name__ = f"torch_{act.name}", f"torch_{act.name}_backward"
    return forward, backward


# --------------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------------


@dataclass
class Built:
    """A case's tensors and its contenders, ready to time."""

    contenders: dict[str, Callable[[], object]]
    flops: float = 0.0
    bytes: float = 0.0
    compare: bool = True  # compare fastcnn's output with eager's (False for training steps)
    extra: dict = field(default_factory=dict)


@dataclass
class Spec:
    """A case before its tensors exist: building is deferred so that filtered-out cases cost nothing."""

    op: str
    group: str
    network: str
    shape: str
    batch: int
    config: Config
    build: Callable[[], Built]


def op_contenders(
    fastcnn_fn: Callable[..., object], torch_fn: Callable[..., object], args: tuple, compile_mode: str | None
) -> dict[str, Callable[[], object]]:
    """fastcnn, eager and (unless compile_mode is None) torch.compile'd contenders over the same args."""
    contenders: dict[str, Callable[[], object]] = {
        "fastcnn": lambda: fastcnn_fn(*args),
        "eager": lambda: torch_fn(*args),
    }
    if compile_mode is not None:
        compiled = _compile(torch_fn, compile_mode)
        contenders["compile"] = lambda: compiled(*args)
    return contenders


def _compile(fn: Callable, mode: str) -> Callable:
    return torch.compile(fn, dynamic=False, mode=None if mode == "default" else mode)


def _conv_params(layer: dict) -> tuple[list[int], list[int], list[int], int]:
    return (
        [layer["stride_h"], layer["stride_w"]],
        [layer["pad_h"], layer["pad_w"]],
        [layer["dilation_h"], layer["dilation_w"]],
        layer["groups"],
    )


def _conv_label(layer: dict) -> str:
    kh, kw, s, g = layer["kernel_h"], layer["kernel_w"], layer["stride_h"], layer["groups"]
    label = (
        f"{layer['in_channels']}->{layer['out_channels']} {layer['height']}x{layer['width']} k{kh}x{kw} s{s}"
    )
    return label + (f" g{g}" if g > 1 else "")


def _conv_tensors(layer: dict, batch: int, cfg: Config, device: torch.device, bias: bool):
    cin, cout, groups = layer["in_channels"], layer["out_channels"], layer["groups"]
    kh, kw = layer["kernel_h"], layer["kernel_w"]
    x = rand((batch, cin, layer["height"], layer["width"]), cfg, device)
    w = rand((cout, cin // groups, kh, kw), cfg, device, scale=1.0 / math.sqrt(cin // groups * kh * kw))
    b = rand((cout,), cfg, device) if bias else None
    stride, padding, dilation, _ = _conv_params(layer)
    oh, ow = (
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, p, d, k, s in zip(
            (layer["height"], layer["width"]), padding, dilation, (kh, kw), stride, strict=True
        )
    )
    flops = 2.0 * batch * cout * oh * ow * (cin // groups) * kh * kw
    return x, w, b, (batch, cout, oh, ow), flops


def conv_specs(
    layers: dict[str, list[dict]],
    networks: Sequence[str],
    per_network: int | None,
    batch: int,
    cfg: Config,
    device: torch.device,
    compile_mode: str | None,
) -> list[Spec]:
    """conv2d forward and backward over each network's distinct conv layers."""
    specs = []
    for net in networks:
        for layer in spread(layers[net], per_network):
            stride, padding, dilation, groups = _conv_params(layer)

            def forward(layer=layer, stride=stride, padding=padding, dilation=dilation, groups=groups):
                x, w, b, _, flops = _conv_tensors(layer, batch, cfg, device, layer["bias"])
                args = (x, w, b, stride, padding, dilation, groups)
                return Built(
                    op_contenders(lambda *a: _fc.conv2d(*a, _NONE, None), torch_conv, args, compile_mode),
                    flops=flops,
                )

            def backward(layer=layer, stride=stride, padding=padding, dilation=dilation, groups=groups):
                x, w, b, out_shape, flops = _conv_tensors(layer, batch, cfg, device, layer["bias"])
                go = rand(out_shape, cfg, device)
                mask = [True, True, b is not None]
                bias_sizes = [w.shape[0]] if b is not None else None
                args = (go, x, w, bias_sizes, stride, padding, dilation, groups, mask)

                def fast(go, x, w, bias_sizes, stride, padding, dilation, groups, mask):
                    return _fc.conv2d_backward(go, x, w, None, stride, padding, dilation, groups, _NONE, mask)

                # grad_input and grad_weight: each as many multiply-adds as the forward.
                return Built(op_contenders(fast, torch_conv_backward, args, compile_mode), flops=2 * flops)

            label = _conv_label(layer)
            specs.append(Spec("conv2d", "conv", net, label, batch, cfg, forward))
            specs.append(Spec("conv2d_backward", "conv", net, label, batch, cfg, backward))
    return specs


def fused_specs(
    layers: dict[str, list[dict]],
    networks: Sequence[str],
    per_network: int | None,
    batch: int,
    cfg: Config,
    device: torch.device,
    compile_mode: str | None,
) -> list[Spec]:
    """conv+bias+ReLU and conv+bias+residual+ReLU (fastcnn: one kernel) over residual networks' conv
    layers."""
    specs = []
    for net, layer in [(n, layer) for n in networks for layer in spread(layers[n], per_network)]:
        stride, padding, dilation, groups = _conv_params(layer)

        def bias_relu(layer=layer, stride=stride, padding=padding, dilation=dilation, groups=groups):
            x, w, b, _, flops = _conv_tensors(layer, batch, cfg, device, True)
            args = (x, w, b, stride, padding, dilation, groups)
            fast = lambda *a: _fc.conv2d(*a, _RELU, None)  # noqa: E731
            return Built(op_contenders(fast, torch_conv_bias_relu, args, compile_mode), flops=flops)

        def residual_relu(layer=layer, stride=stride, padding=padding, dilation=dilation, groups=groups):
            x, w, b, out_shape, flops = _conv_tensors(layer, batch, cfg, device, True)
            r = rand(out_shape, cfg, device)
            args = (x, w, b, r, stride, padding, dilation, groups)

            def fast(x, w, b, r, stride, padding, dilation, groups):
                return _fc.conv2d(x, w, b, stride, padding, dilation, groups, _RELU, r)

            return Built(op_contenders(fast, torch_conv_bias_residual_relu, args, compile_mode), flops=flops)

        label = _conv_label(layer)
        specs.append(Spec("conv_bias_relu", "fused", net, label, batch, cfg, bias_relu))
        specs.append(Spec("conv_bias_residual_relu", "fused", net, label, batch, cfg, residual_relu))
    return specs


#: Fully connected layers: (network, in_features, out_features).
LINEAR_LAYERS = [
    ("resnet50", 2048, 1000),
    ("mobilenet_v2", 1280, 1000),
    ("vgg16", 4096, 4096),
    ("vgg16", 25088, 4096),
    ("vgg16", 4096, 1000),
]


def linear_specs(
    networks: Sequence[str],
    per_network: int | None,
    batch: int,
    cfg: Config,
    device: torch.device,
    compile_mode: str | None,
) -> list[Spec]:
    """linear forward and backward at the classifier layers of the networks."""
    specs = []
    for net in networks:
        for _, fin, fout in spread([entry for entry in LINEAR_LAYERS if entry[0] == net], per_network):

            def tensors(fin=fin, fout=fout):
                x = rand((batch, fin), cfg, device)
                w = rand((fout, fin), cfg, device, scale=fin**-0.5)
                return x, w, rand((fout,), cfg, device), 2.0 * batch * fin * fout

            def forward(tensors=tensors):
                x, w, b, flops = tensors()
                fast = lambda x, w, b: _fc.linear(x, w, b, _NONE)  # noqa: E731
                return Built(op_contenders(fast, torch_linear, (x, w, b), compile_mode), flops=flops)

            def backward(tensors=tensors, fout=fout):
                x, w, _, flops = tensors()
                go = rand((batch, fout), cfg, device)
                fast = lambda go, x, w: _fc.linear_backward(go, x, w, None, _NONE, [True, True, True])  # noqa: E731
                return Built(
                    op_contenders(fast, torch_linear_backward, (go, x, w), compile_mode), flops=2 * flops
                )

            label = f"[N,{fin}]->{fout}"
            specs.append(Spec("linear", "linear", net, label, batch, cfg, forward))
            specs.append(Spec("linear_backward", "linear", net, label, batch, cfg, backward))
    return specs


#: Pooling layers at the networks' activation sizes: (network, op, [C, H, W], kernel, stride, padding).
#: None of the three networks has a 2x2 average pool: ResNet-D's downsampling shortcut stands in.
MAX_POOLS = [
    ("resnet50", (64, 112, 112), 3, 2, 1),
    ("vgg16", (64, 224, 224), 2, 2, 0),
    ("vgg16", (128, 112, 112), 2, 2, 0),
    ("vgg16", (256, 56, 56), 2, 2, 0),
    ("vgg16", (512, 28, 28), 2, 2, 0),
    ("vgg16", (512, 14, 14), 2, 2, 0),
]
AVG_POOLS = [("resnet50", (256, 56, 56), 2, 2, 0), ("resnet50", (512, 28, 28), 2, 2, 0)]
ADAPTIVE_POOLS = [
    ("resnet50", (2048, 7, 7), 1),
    ("mobilenet_v2", (1280, 7, 7), 1),
    ("vgg16", (512, 14, 14), 7),
]
#: Activation sizes [C, H, W] where each network applies its activations / residual adds.
ACTIVATION_SIZES = {
    "resnet50": [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)],
    "vgg16": [(64, 224, 224), (128, 112, 112), (256, 56, 56), (512, 28, 28)],
    "mobilenet_v2": [(96, 112, 112), (144, 56, 56), (192, 28, 28), (960, 7, 7)],
}
RESIDUAL_SIZES = {
    "resnet50": ACTIVATION_SIZES["resnet50"],
    "mobilenet_v2": [(24, 56, 56), (32, 28, 28), (64, 14, 14), (96, 14, 14), (160, 7, 7)],
}


def _chw(size: Sequence[int]) -> str:
    return "[N," + ",".join(str(s) for s in size) + "]"


def pool_specs(
    networks: Sequence[str],
    per_network: int | None,
    batch: int,
    cfg: Config,
    device: torch.device,
    compile_mode: str | None,
) -> list[Spec]:
    """max / avg / adaptive-avg pooling forward and backward at the networks' activation sizes."""
    specs = []

    def pick(table):
        return [e for net in networks for e in spread([e for e in table if e[0] == net], per_network)]

    for net, size, k, s, p in pick(MAX_POOLS):
        kernel, stride, padding = [k, k], [s, s], [p, p]

        def forward(size=size, kernel=kernel, stride=stride, padding=padding):
            x = rand((batch, *size), cfg, device)
            y, idx = torch_max_pool(x, kernel, stride, padding)
            args = (x, kernel, stride, padding)
            fast = lambda x, kk, ss, pp: _fc.max_pool2d(x, kk, ss, pp, [1, 1], False)  # noqa: E731
            return Built(op_contenders(fast, torch_max_pool, args, compile_mode), bytes=nbytes(x, y, idx))

        def backward(size=size, kernel=kernel, stride=stride, padding=padding):
            x = rand((batch, *size), cfg, device)
            y, idx = torch_max_pool(x, kernel, stride, padding)
            go = rand(y.shape, cfg, device)
            fast = lambda go, x, idx, kk, ss, pp: _fc.max_pool2d_backward(go, x, idx)  # noqa: E731
            args = (go, x, idx, kernel, stride, padding)
            # Reads grad_output and the indices, writes grad_input.
            return Built(
                op_contenders(fast, torch_max_pool_backward, args, compile_mode), bytes=nbytes(go, idx, x)
            )

        label = f"{_chw(size)} k{k} s{s} p{p}"
        specs.append(Spec("max_pool2d", "pool", net, label, batch, cfg, forward))
        specs.append(Spec("max_pool2d_backward", "pool", net, label, batch, cfg, backward))

    for net, size, k, s, p in pick(AVG_POOLS):
        kernel, stride, padding = [k, k], [s, s], [p, p]

        def forward(size=size, kernel=kernel, stride=stride, padding=padding):
            x = rand((batch, *size), cfg, device)
            y = torch_avg_pool(x, kernel, stride, padding)
            fast = lambda x, kk, ss, pp: _fc.avg_pool2d(x, kk, ss, pp, False, True, None)  # noqa: E731
            args = (x, kernel, stride, padding)
            return Built(op_contenders(fast, torch_avg_pool, args, compile_mode), bytes=nbytes(x, y))

        def backward(size=size, kernel=kernel, stride=stride, padding=padding):
            x = rand((batch, *size), cfg, device)
            go = rand(torch_avg_pool(x, kernel, stride, padding).shape, cfg, device)
            fast = lambda go, x, kk, ss, pp: _fc.avg_pool2d_backward(go, x, kk, ss, pp, False, True, None)  # noqa: E731
            args = (go, x, kernel, stride, padding)
            return Built(
                op_contenders(fast, torch_avg_pool_backward, args, compile_mode), bytes=nbytes(go, x)
            )

        label = f"{_chw(size)} k{k} s{s} (ResNet-D)"
        specs.append(Spec("avg_pool2d", "pool", net, label, batch, cfg, forward))
        specs.append(Spec("avg_pool2d_backward", "pool", net, label, batch, cfg, backward))

    for net, size, out in [e for e in ADAPTIVE_POOLS if e[0] in networks][
        : None if per_network is None else 1
    ]:

        def forward(size=size, out=out):
            x = rand((batch, *size), cfg, device)
            y = torch_adaptive_avg_pool(x, [out, out])
            return Built(
                op_contenders(
                    _fc.adaptive_avg_pool2d, torch_adaptive_avg_pool, (x, [out, out]), compile_mode
                ),
                bytes=nbytes(x, y),
            )

        def backward(size=size, out=out):
            x = rand((batch, *size), cfg, device)
            go = rand(torch_adaptive_avg_pool(x, [out, out]).shape, cfg, device)
            return Built(
                op_contenders(
                    _fc.adaptive_avg_pool2d_backward, torch_adaptive_avg_pool_backward, (go, x), compile_mode
                ),
                bytes=nbytes(go, x),
            )

        label = f"{_chw(size)} -> {out}x{out}"
        specs.append(Spec("adaptive_avg_pool2d", "pool", net, label, batch, cfg, forward))
        specs.append(Spec("adaptive_avg_pool2d_backward", "pool", net, label, batch, cfg, backward))
    return specs


def elementwise_specs(
    networks: Sequence[str],
    per_network: int | None,
    batch: int,
    cfg: Config,
    device: torch.device,
    compile_mode: str | None,
) -> list[Spec]:
    """relu / sigmoid / tanh, their backward, and the residual add (+ReLU) at activation sizes."""
    specs = []
    unary = [
        (name, act.code, getattr(_fc, name), *torch_activation(act)) for name, act in ops.ACTIVATIONS.items()
    ]
    for net in networks:
        for size in spread(ACTIVATION_SIZES.get(net, []), per_network):
            label = _chw(size)
            for name, code, fast, eager, eager_backward in unary:

                def forward(size=size, fast=fast, eager=eager):
                    x = rand((batch, *size), cfg, device)
                    return Built(op_contenders(fast, eager, (x,), compile_mode), bytes=2 * nbytes(x))

                def backward(size=size, code=code, eager=eager, eager_backward=eager_backward):
                    go, y = rand((batch, *size), cfg, device), eager(rand((batch, *size), cfg, device))
                    fast = lambda go, y: _fc.activation_backward(go, y, code)  # noqa: E731
                    return Built(
                        op_contenders(fast, eager_backward, (go, y), compile_mode), bytes=3 * nbytes(go)
                    )

                specs.append(Spec(name, "elementwise", net, label, batch, cfg, forward))
                specs.append(
                    Spec("activation_backward", "elementwise", net, f"{label} {name}", batch, cfg, backward)
                )
        for size in spread(RESIDUAL_SIZES.get(net, []), per_network):

            def add(size=size):
                a, b = rand((batch, *size), cfg, device), rand((batch, *size), cfg, device)
                fast = lambda a, b: _fc.add(a, b, _RELU)  # noqa: E731
                # Eager runs the add and the ReLU as two kernels; fastcnn (and compile) fuse them.
                return Built(op_contenders(fast, torch_add_relu, (a, b), compile_mode), bytes=3 * nbytes(a))

            specs.append(Spec("add", "elementwise", net, _chw(size) + " +relu", batch, cfg, add))
    return specs


def _load_convert() -> tuple[Callable | None, Callable | None, str]:
    """fastcnn.convert.convert and fastcnn.fuse.fuse when this fastcnn has them."""
    try:
        convert = importlib.import_module("fastcnn.convert").convert
    except (ImportError, AttributeError) as exc:
        return None, None, f"fastcnn.convert is not available ({exc})"
    try:
        fuse = importlib.import_module("fastcnn.fuse").fuse
    except (ImportError, AttributeError):
        fuse = None
    return convert, fuse, ""


def model_specs(
    models: Sequence[str],
    batch: int,
    cfg: Config,
    device: torch.device,
    compile_mode: str | None,
    skipped: list[dict],
) -> list[Spec]:
    """ResNet-18/50 (torchvision) inference and one SGD training step, against the fastcnn conversion."""
    convert, fuse, reason = _load_convert()
    try:
        import torchvision
    except ImportError as exc:
        convert, reason = None, f"torchvision is not installed ({exc})"
    if convert is None:
        for name in models:
            for kind in ("inference", "train_step"):
                skipped.append({"op": f"{name}_{kind}", "reason": reason})
        return []
    specs = []
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    half = cfg.dtype in (torch.float16, torch.bfloat16)
    for name in models:

        def make_model(name=name) -> torch.nn.Module:
            torch.manual_seed(0)
            return getattr(torchvision.models, name)(weights=None).to(device, memory_format=fmt)

        def inference(make_model=make_model):
            model = make_model().to(cfg.dtype).eval()
            x = rand((batch, 3, 224, 224), cfg, device)
            # fuse folds BatchNorm and the ReLU/residual joins into fastcnn's conv epilogue.
            fast_model = fuse(model) if fuse is not None else convert(model).eval()
            contenders: dict[str, Callable[[], object]] = {
                "fastcnn": torch.no_grad()(lambda: fast_model(x)),
                "eager": torch.no_grad()(lambda: model(x)),
            }
            if compile_mode is not None:
                compiled = _compile(model, compile_mode)
                contenders["compile"] = torch.no_grad()(lambda: compiled(x))
            return Built(contenders, extra={"images": batch, "fused": fuse is not None})

        def train_step(make_model=make_model):
            base = make_model().train()
            x = rand((batch, 3, 224, 224), Config("fp32", cfg.channels_last), device)
            target = torch.randint(0, 1000, (batch,), device=device)
            models_by_name = {"fastcnn": convert(copy.deepcopy(base)), "eager": copy.deepcopy(base)}
            if compile_mode is not None:
                models_by_name["compile"] = _compile(copy.deepcopy(base), compile_mode)
            contenders = {}
            for key, model in models_by_name.items():
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

                def step(model=model, optimizer=optimizer):
                    optimizer.zero_grad(set_to_none=True)
                    # Half types train as AMP does: fp32 weights, convs and linears in the half type.
                    with torch.autocast(device.type, dtype=cfg.dtype, enabled=half):
                        loss = F.cross_entropy(model(x), target)
                    loss.backward()
                    optimizer.step()

                contenders[key] = step
            return Built(contenders, compare=False, extra={"images": batch})

        specs.append(Spec(f"{name}_inference", "model", name, "[N,3,224,224]", batch, cfg, inference))
        specs.append(Spec(f"{name}_train_step", "model", name, "[N,3,224,224] SGD", batch, cfg, train_step))
    return specs


# --------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------

_l2_flush: Tensor | None = None


def flush_l2(device: torch.device) -> None:
    """Overwrites the L2 cache (twice its size) so that no contender finds the other's data resident."""
    global _l2_flush
    if _l2_flush is None or _l2_flush.device != device:
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 2**26
        _l2_flush = torch.empty(2 * l2, dtype=torch.int8, device=device)
    _l2_flush.random_()


def time_cuda(
    fns: Sequence[Callable[[], object]],
    warmup: int,
    runs: int,
    device: torch.device,
    reduce: Callable[[list[float]], float] = statistics.median,
) -> list[float]:
    """Median (or ``reduce``) milliseconds per contender from CUDA events; the contenders alternate call
    by call, each call from a cold L2."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    torch.cuda.synchronize(device)
    events = [
        [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in fns]
        for _ in range(runs)
    ]
    for r in range(runs):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            flush_l2(device)
            start, end = events[r][i]
            start.record()
            fns[i]()
            end.record()
    torch.cuda.synchronize(device)
    return [
        reduce([events[r][i][0].elapsed_time(events[r][i][1]) for r in range(runs)]) for i in range(len(fns))
    ]


def time_cpu(
    fns: Sequence[Callable[[], object]],
    rounds: int,
    block_time: float,
    reduce: Callable[[list[float]], float] = statistics.median,
) -> list[float]:
    """Median (or ``reduce``) milliseconds per contender over alternating rounds of torch.utils.benchmark
    blocks.

    Each contender's block repeats its call for about ``block_time`` seconds (at least once), with all of
    torch's threads; the contenders take turns block by block, in reversed order every other round.
    """
    from torch.utils import benchmark

    threads = torch.get_num_threads()
    numbers = []
    slow = False
    for fn in fns:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        numbers.append(max(1, int(block_time / max(elapsed, 1e-7))))
        slow = slow or elapsed > 0.25
    if slow:
        rounds = min(rounds, 3)  # calls of a quarter second or more (whole models): fewer, longer rounds
    timers = [benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads) for fn in fns]
    per: list[list[float]] = [[] for _ in fns]
    for r in range(rounds):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            per[i].append(timers[i].timeit(numbers[i]).median * 1e3)
    return [reduce(p) for p in per]


def measure_ceilings(device: torch.device, dtypes: Sequence[str], settings: Preset) -> dict:
    """The device's memory bandwidth (a large device-to-device copy, bytes read + written) and matmul rate
    per dtype (a large torch.mm), each from its fastest timed run."""
    cuda = device.type == "cuda"
    copy_bytes = 2**30 if cuda else 2**28

    # A ceiling is the best the device did: the fastest run, not the median.
    def timed(fn: Callable[[], object]) -> float:
        if cuda:
            return time_cuda([fn], settings.cuda_warmup, settings.cuda_runs, device, reduce=min)[0]
        fn()
        return time_cpu([fn], 2 * settings.cpu_rounds, 2 * settings.cpu_block_time, reduce=min)[0]

    src = torch.randn(copy_bytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src))
    src = dst = None  # free the copy buffers before the matmuls
    ceilings: dict[str, Any] = {
        "copy_gbs": 2 * copy_bytes / ms / 1e6,
        "copy_bytes": copy_bytes,
        "matmul_tflops": {},
        "matmul_n": {},
    }
    for name in dtypes:
        n = 8192 if cuda else 2048
        a = torch.randn(n, n, device=device).to(DTYPES[name])
        b = torch.randn(n, n, device=device).to(DTYPES[name])
        ms = timed(lambda a=a, b=b: torch.mm(a, b))
        ceilings["matmul_tflops"][name] = 2.0 * n**3 / ms / 1e9
        ceilings["matmul_n"][name] = n
    return ceilings


# --------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------


def relative_error(a: object, b: object) -> float | None:
    """‖a − b‖ / ‖b‖ in float64; the largest over the tensors of a tuple (empty or None entries skipped)."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        errors = [relative_error(x, y) for x, y in zip(a, b, strict=False)]
        errors = [e for e in errors if e is not None]
        return max(errors) if errors else None
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.numel() == 0 or b.numel() == 0:
        return None
    if a.shape != b.shape:
        return float("inf")
    a64, b64 = a.detach().double(), b.detach().double()
    scale = b64.norm().item()
    return (a64 - b64).norm().item() / (scale if scale > 0 else 1.0)


def run_spec(spec: Spec, device: torch.device, preset: Preset, repeats: int | None) -> dict:
    """Builds and times one case; returns its JSON record (with "error" set if it failed)."""
    record: dict[str, Any] = {
        "op": spec.op,
        "group": spec.group,
        "network": spec.network,
        "shape": spec.shape,
        "batch": spec.batch,
        "dtype": spec.config.dtype_name,
        "layout": spec.config.layout,
    }
    built = spec.build()
    names = list(built.contenders)
    fns = [built.contenders[n] for n in names]
    # First calls outside the timing: torch.compile compiles (and autotunes) here.
    compile_s = None
    outputs = {}
    for name, fn in zip(names, fns, strict=True):
        start = time.perf_counter()
        outputs[name] = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if name == "compile":
            compile_s = time.perf_counter() - start
    record["rel_error"] = relative_error(outputs["fastcnn"], outputs["eager"]) if built.compare else None
    del outputs
    if device.type == "cuda":
        runs = repeats or preset.cuda_runs
        times = time_cuda(fns, min(preset.cuda_warmup, runs), runs, device)
    else:
        times = time_cpu(fns, repeats or preset.cpu_rounds, preset.cpu_block_time)
    ms = dict(zip(names, times, strict=True))
    record["times_ms"] = ms
    record["ratios"] = {n: ms[n] / ms["fastcnn"] for n in names if n != "fastcnn"}
    record["tflops"] = {n: built.flops / t / 1e9 for n, t in ms.items()} if built.flops else None
    record["gbs"] = {n: built.bytes / t / 1e6 for n, t in ms.items()} if built.bytes else None
    if built.flops:
        record["flops"] = built.flops
    if built.bytes:
        record["bytes"] = built.bytes
    if "images" in built.extra:
        record["images_per_s"] = {n: built.extra["images"] / t * 1e3 for n, t in ms.items()}
    if "fused" in built.extra:
        record["fastcnn_fused"] = built.extra["fused"]
    record["compile_s"] = compile_s
    return record


def add_ceiling_fractions(record: dict, ceilings: dict) -> None:
    """The share of the measured FLOP-rate or bandwidth ceiling each contender reached."""
    if record.get("tflops"):
        peak = ceilings["matmul_tflops"].get(record["dtype"])
        if peak:
            record["of_ceiling"] = {n: v / peak for n, v in record["tflops"].items()}
    elif record.get("gbs"):
        record["of_ceiling"] = {n: v / ceilings["copy_gbs"] for n, v in record["gbs"].items()}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        }
    return {"type": "cpu", "name": cpu_name(), "threads": torch.get_num_threads()}


def host_info() -> dict:
    return {
        "hostname": platform.node(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def default_json_path(device: dict, date: datetime.date) -> Path:
    """benchmarks/results/<device-slug>-<YYYY-MM-DD>.json, where committed results live."""
    return RESULTS_DIR / f"{slug(device['name'])}-{date.isoformat()}.json"


def configs_for(args: argparse.Namespace, device: torch.device, preset_name: str) -> list[Config]:
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


def select_ops(text: str | None) -> list[str]:
    """Expands --ops (comma-separated op names or group names) into op names."""
    if not text:
        return list(ALL_OPS)
    chosen: list[str] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if item in OP_GROUPS:
            chosen += OP_GROUPS[item]
        elif item in ALL_OPS:
            chosen.append(item)
        else:
            raise ValueError(
                f"--ops: unknown op {item!r}; ops: {', '.join(ALL_OPS)}; groups: {', '.join(OP_GROUPS)}"
            )
    return list(dict.fromkeys(chosen))


def build_specs(
    args: argparse.Namespace, device: torch.device, preset: Preset, preset_name: str, skipped: list[dict]
) -> list[Spec]:
    """Every case the arguments select, in run order, before any tensor is allocated."""
    ops = set(select_ops(args.ops))
    networks = [n.strip() for n in args.networks.split(",")] if args.networks else list(NETWORKS)
    for net in networks:
        if net not in ALL_NETWORKS:
            raise ValueError(f"--networks: unknown network {net!r}; choose from {', '.join(ALL_NETWORKS)}")
    per_network = args.max_shapes if args.max_shapes is not None else preset.layers_per_network
    shapes_per_op = args.max_shapes if args.max_shapes is not None else preset.shapes_per_op
    batches = args.batch or list(preset.batch_cuda if device.type == "cuda" else preset.batch_cpu)
    compile_mode = resolve_compile_mode(args.compile_mode, device)
    model_compile = compile_mode if preset.compile_models or args.compile_models else None
    if compile_mode is not None and model_compile is None and ops & set(OP_GROUPS["model"]):
        skipped.append(
            {
                "op": "model (torch.compile)",
                "reason": f"--preset {preset_name}: torch.compile of whole models skipped (minutes of "
                "compile time); --compile-models or --preset full times it",
            }
        )
    layers = load_layers()
    specs: list[Spec] = []
    for batch in batches:
        for cfg in configs_for(args, device, preset_name):
            specs += conv_specs(layers, networks, per_network, batch, cfg, device, compile_mode)
            fused_networks = [n for n in networks if n in RESIDUAL_NETWORKS] or ["resnet50"]
            specs += fused_specs(layers, fused_networks, per_network, batch, cfg, device, compile_mode)
            specs += linear_specs(networks, shapes_per_op, batch, cfg, device, compile_mode)
            specs += pool_specs(networks, shapes_per_op, batch, cfg, device, compile_mode)
            specs += elementwise_specs(networks, shapes_per_op, batch, cfg, device, compile_mode)
            if ops & set(OP_GROUPS["model"]):
                specs += model_specs(preset.models, batch, cfg, device, model_compile, skipped)
    return [s for s in specs if s.op in ops]


def resolve_compile_mode(mode: str, device: torch.device) -> str | None:
    """The torch.compile mode for the device: "auto" is max-autotune on the GPU, the default on the CPU."""
    if mode == "none":
        return None
    if mode == "auto":
        return "max-autotune" if device.type == "cuda" else "default"
    return mode


def run(args: argparse.Namespace, progress: bool = True) -> dict:
    """Runs the benchmark the arguments describe and returns the JSON record (see the module docstring)."""
    preset_name = args.preset
    preset = PRESETS[preset_name]
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 1024
    else:  # pragma: no cover - older torch
        torch._dynamo.config.cache_size_limit = 1024
    torch.manual_seed(args.seed)
    skipped: list[dict] = []
    specs = build_specs(args, device, preset, preset_name, skipped)
    dtypes = sorted({s.config.dtype_name for s in specs}) or ["fp32"]
    today = datetime.date.today()
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "device": device_info(device),
        "host": host_info(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "fastcnn": fastcnn.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "preset": preset_name,
            "ops": args.ops,
            "networks": args.networks,
            "batches": sorted({s.batch for s in specs}),
            "dtypes": dtypes,
            "compile_mode": resolve_compile_mode(args.compile_mode, device),
            "repeats": args.repeats,
            "timer": "cuda-events" if device.type == "cuda" else "torch.utils.benchmark",
        },
        "ratio_meaning": RATIO_MEANING,
    }
    start = time.perf_counter()
    record["ceilings"] = measure_ceilings(device, dtypes, preset)
    cases, failed = [], []
    bar = _progress(progress)
    with bar:
        task = bar.add_task("fastcnn bench", total=len(specs))
        for spec in specs:
            bar.update(task, description=f"{spec.op} {spec.shape}"[:60])
            if not _has_kernel(spec.op, device):
                skipped.append({"op": spec.op, "reason": f"no fastcnn {device.type} kernel in this build"})
            else:
                try:
                    case = run_spec(spec, device, preset, args.repeats)
                    add_ceiling_fractions(case, record["ceilings"])
                    cases.append(case)
                except Exception as exc:  # noqa: BLE001 - a failing case is reported, the rest still run
                    failed.append(
                        {
                            "op": spec.op,
                            "network": spec.network,
                            "shape": spec.shape,
                            "dtype": spec.config.dtype_name,
                            "layout": spec.config.layout,
                            "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                        }
                    )
            if device.type == "cuda":
                torch.cuda.empty_cache()
            bar.advance(task)
    record["seconds"] = round(time.perf_counter() - start, 1)
    record["cases"] = cases
    record["skipped"] = _dedupe(skipped)
    record["failed"] = failed
    record["summary"] = summarize(cases)
    record["default_json"] = str(default_json_path(record["device"], today))
    return record


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summarize(cases: Sequence[dict]) -> list[dict]:
    """Per (op, dtype, layout): the geomean, min and max of the ratios against each PyTorch contender."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for case in cases:
        groups.setdefault((case["op"], case["dtype"], case["layout"]), []).append(case)
    rows = []
    for (op, dtype, layout), members in groups.items():
        row: dict[str, Any] = {"op": op, "dtype": dtype, "layout": layout, "cases": len(members)}
        for key in ("eager", "compile"):
            ratios = [c["ratios"][key] for c in members if c["ratios"].get(key)]
            if ratios:
                row[key] = {"geomean": geomean(ratios), "min": min(ratios), "max": max(ratios)}
        rows.append(row)
    return rows


def _dedupe(items: list[dict]) -> list[dict]:
    seen, out = set(), []
    for item in items:
        key = json.dumps(item, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


_MODEL_OPS = set(OP_GROUPS["model"])
_FUSED_KERNEL = {"conv_bias_relu": "conv2d", "conv_bias_residual_relu": "conv2d"}


def _has_kernel(op: str, device: torch.device) -> bool:
    if op in _MODEL_OPS:
        return all(_has_kernel(o, device) for o in ("conv2d", "linear", "max_pool2d"))
    name = _FUSED_KERNEL.get(op, op)
    key = "CUDA" if device.type == "cuda" else "CPU"
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastcnn::{name}", key)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if fastcnn.cuda_available() else "cpu")
    if name == "cuda" and not fastcnn.cuda_available():
        raise ValueError("--device cuda needs a CUDA GPU and a CUDA build of fastcnn")
    return torch.device(name)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description:<60}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        disable=not enabled,
    )


# --------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    text = f"{value:.2f}x"
    return f"[green]{text}[/green]" if value >= 1 else f"[red]{text}[/red]"


def print_report(record: dict, console: Any = None) -> None:
    """The results as a rich table: times, ratios, achieved rate and its share of the ceiling."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 160)
    dev, ceil = record["device"], record["ceilings"]
    peaks = ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in ceil["matmul_tflops"].items())
    console.print(
        f"fastcnn bench on {dev['name']} ({dev['type']}) | torch {record['torch']} CUDA {record['cuda']} "
        f"cuDNN {record['cudnn']} | ceilings: copy {ceil['copy_gbs']:.1f} GB/s, matmul {peaks}"
    )
    table = Table(title=f"fastcnn vs PyTorch ({RATIO_MEANING})")
    for column, justify in (
        ("op", "left"),
        ("net", "left"),
        ("shape", "left"),
        ("N", "right"),
        ("dtype", "left"),
        ("fastcnn ms", "right"),
        ("eager ms", "right"),
        ("compile ms", "right"),
        ("vs eager", "right"),
        ("vs compile", "right"),
        ("fastcnn rate", "right"),
        ("of ceiling", "right"),
    ):
        table.add_column(column, justify=justify)
    for case in record["cases"]:
        times, ratios = case["times_ms"], case["ratios"]
        if case.get("tflops"):
            rate = f"{case['tflops']['fastcnn']:.3f} TF/s"
        elif case.get("gbs"):
            rate = f"{case['gbs']['fastcnn']:.1f} GB/s"
        elif case.get("images_per_s"):
            rate = f"{case['images_per_s']['fastcnn']:.1f} img/s"
        else:
            rate = "-"
        share = case.get("of_ceiling", {}).get("fastcnn")
        layout = "cl" if case["layout"] == "channels_last" else "nchw"
        table.add_row(
            case["op"],
            case["network"],
            case["shape"],
            str(case["batch"]),
            f"{case['dtype']} {layout}",
            _fmt_ms(times.get("fastcnn")),
            _fmt_ms(times.get("eager")),
            _fmt_ms(times.get("compile")),
            _fmt_ratio(ratios.get("eager")),
            _fmt_ratio(ratios.get("compile")),
            rate,
            "-" if share is None else f"{100 * share:.0f}%",
        )
    console.print(table)
    if len(record.get("summary", [])) > 1:
        summary = Table(title="geomean PyTorch time / fastcnn time per op (min-max)")
        for column in ("op", "dtype layout", "cases", "vs eager", "vs compile"):
            summary.add_column(column)

        def cell(row: dict, key: str) -> str:
            if key not in row:
                return "-"
            return f"{row[key]['geomean']:.2f}x ({row[key]['min']:.2f}-{row[key]['max']:.2f})"

        for row in record["summary"]:
            summary.add_row(
                row["op"],
                f"{row['dtype']} {row['layout']}",
                str(row["cases"]),
                cell(row, "eager"),
                cell(row, "compile"),
            )
        console.print(summary)
    for key in ("eager", "compile"):
        ratios = [c["ratios"][key] for c in record["cases"] if key in c["ratios"]]
        if ratios:
            console.print(f"geomean PyTorch {key} / fastcnn over {len(ratios)} cases: {geomean(ratios):.2f}x")
    for item in record["skipped"]:
        console.print(f"[yellow]skipped[/yellow] {item['op']}: {item['reason']}")
    for item in record["failed"]:
        console.print(f"[red]FAILED[/red] {item['op']} {item['shape']} ({item['dtype']}): {item['error']}")
    console.print(
        f"{len(record['cases'])} cases timed, {len(record['failed'])} failed, in {record['seconds']:.0f} s"
    )


def write_plot(record: dict, path: str | Path) -> None:
    """A PNG with one panel per op: per-shape ratio bars vs PyTorch eager (and compile) on a log scale,
    a line at 1.0 (above it fastcnn is faster)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_op: dict[str, list[dict]] = {}
    for case in record["cases"]:
        by_op.setdefault(case["op"], []).append(case)
    panels = max(len(by_op), 1)
    ncols = min(3, panels)
    nrows = math.ceil(panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.axis("off")
    if not by_op:
        axes[0][0].text(0.5, 0.5, "no cases", ha="center", va="center")
    several_configs = len({(c["dtype"], c["layout"], c["batch"]) for c in record["cases"]}) > 1
    for ax, (op, cases) in zip(axes.flat, by_op.items(), strict=False):
        labels = []
        for c in cases:
            label = f"{c['network']} {c['shape']}"
            if several_configs:
                label += f" N={c['batch']} {c['dtype']} {'cl' if c['layout'] == 'channels_last' else 'nchw'}"
            labels.append(label)
        xs = range(len(cases))
        keys = [k for k in ("eager", "compile") if any(k in c["ratios"] for c in cases)]
        width = 0.8 / max(len(keys), 1)
        for j, key in enumerate(keys):
            values = [c["ratios"].get(key, float("nan")) for c in cases]
            ax.bar([x + (j - (len(keys) - 1) / 2) * width for x in xs], values, width, label=f"vs {key}")
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_yscale("log")  # 2x faster and 2x slower look alike
        ax.set_title(op)
        ax.set_ylabel("PyTorch time / fastcnn time")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.legend(fontsize=7)
    dev = record["device"]
    fig.suptitle(f"fastcnn vs PyTorch on {dev['name']} ({record['date'][:10]}): > 1 means fastcnn is faster")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(record: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return path


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``fastcnn bench``."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="quick (default) or full")
    parser.add_argument(
        "--ops", metavar="LIST", help=f"comma-separated ops or groups ({', '.join(OP_GROUPS)}); default all"
    )
    parser.add_argument(
        "--networks",
        metavar="LIST",
        help=f"comma-separated, from {', '.join(ALL_NETWORKS)} (default: {','.join(NETWORKS)}; "
        "resnet18/xception add conv and fused cases only)",
    )
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes (default: the preset's)")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: the GPU if any"
    )
    parser.add_argument(
        "--dtype",
        metavar="LIST",
        help="comma-separated fp32,fp16,bf16,fp64 (default fp32 on the CPU; fp16,bf16,fp32 on the GPU)",
    )
    parser.add_argument(
        "--layout",
        choices=["auto", "nchw", "channels_last", "both"],
        default="auto",
        help="memory format (auto: channels_last for fp16/bf16, else NCHW; both: each case in each)",
    )
    parser.add_argument(
        "--max-shapes", type=int, help="conv layers / shapes per network and op (default: preset)"
    )
    parser.add_argument("--repeats", type=int, help="timed rounds (CPU) or calls (GPU) per contender")
    parser.add_argument(
        "--compile-mode",
        choices=["auto", "default", "max-autotune", "none"],
        default="auto",
        help="torch.compile contender: auto = max-autotune on the GPU, default on the CPU; none skips it",
    )
    parser.add_argument(
        "--compile-models",
        action="store_true",
        help="also torch.compile the end-to-end models (quick preset)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="auto",
        metavar="PATH",
        help="write the results as JSON (no PATH: benchmarks/results/<device>-<date>.json)",
    )
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of the ratios, one panel per op")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")


def main(args: argparse.Namespace) -> int:
    """Entry point of ``fastcnn bench``: 0 when every case ran, 1 when any failed, 2 on bad arguments."""
    try:
        select_ops(args.ops)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TF32.*")
            record = run(args, progress=sys.stderr.isatty())
    except ValueError as exc:
        print(f"fastcnn bench: {exc}", file=sys.stderr)
        return 2
    print_report(record)
    if args.json:
        path = write_json(record, record["default_json"] if args.json == "auto" else args.json)
        print(f"wrote {path}")
    if args.plot:
        write_plot(record, args.plot)
        print(f"wrote {args.plot}")
    return 1 if record["failed"] else 0
