"""The benchmark cases: one registered builder per timed op, run over a table of shapes.

A case is one function registered with :func:`case`::

    @case("conv2d", "conv", table="conv")
    def conv2d(layer: dict, ctx: Context) -> Built:
        ...

Called with one row of its table and the :class:`Context` (batch, dtype and layout, device, compile mode),
it allocates its tensors and returns a :class:`Built`: the contenders over the same arguments and the work
one call does (FLOPs or bytes moved). ``--ops`` selects cases by op name or by group name. A table turns
the selected networks into rows: the conv layers of ``fastcnn/data/cnn_layers.json``, and the linear,
pooling and activation shapes of ``fastcnn/data/bench_shapes.json``. The tables run in the order they
are registered, and each row runs its cases in the order those were registered.

Adding a case is adding one registered function here (and, for new shapes, a table over a new entry of
``bench_shapes.json``); ``--ops``, ``--help`` and the kernel check pick it up from the registry.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.resources
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ... import ops
from .. import references as ref
from .config import RESIDUAL_NETWORKS, Config

__all__ = [
    "CASES",
    "OP_GROUPS",
    "TABLES",
    "Built",
    "Case",
    "Context",
    "Model",
    "Row",
    "Selection",
    "Spec",
    "all_ops",
    "case",
    "load_layers",
    "load_shapes",
    "nbytes",
    "op_contenders",
    "rand",
    "select_ops",
    "specs_for",
    "spread",
    "table",
]

_fc = torch.ops.fastcnn
#: Kernel codes of the epilogues timed: none, and the ReLU of the fused cases.
_NONE, _RELU = ops.NO_ACTIVATION.code, ops.activation_code("relu")


# --------------------------------------------------------------------------------------------------------
# What a case is
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


@dataclass(frozen=True)
class Context:
    """Where and how a case runs: one batch size, dtype and layout on one device."""

    batch: int
    config: Config
    device: torch.device
    compile_mode: str | None  # None: no torch.compile contender
    model_compile_mode: str | None = None  # the same for whole models (minutes of compiling)

    def rand(self, shape: Sequence[int], scale: float = 1.0) -> Tensor:
        """:func:`rand` in this context's dtype, layout and device."""
        return rand(shape, self.config, self.device, scale)

    def contenders(
        self, fastcnn_fn: Callable[..., object], torch_fn: Callable[..., object], args: tuple
    ) -> dict[str, Callable[[], object]]:
        """:func:`op_contenders` with this context's compile mode."""
        return op_contenders(fastcnn_fn, torch_fn, args, self.compile_mode)


@dataclass(frozen=True)
class Row:
    """One row of a shape table: its network, its label in the results and what the builder takes."""

    network: str
    label: str
    value: Any


@dataclass(frozen=True)
class Model:
    """A whole network the model cases time, with the fastcnn functions that convert it."""

    name: str
    convert: Callable[[torch.nn.Module], torch.nn.Module]
    fuse: Callable[[torch.nn.Module], torch.nn.Module] | None  # None: this fastcnn has no fuse


@dataclass(frozen=True)
class Selection:
    """What the command line selected, as the tables read it."""

    networks: Sequence[str]
    layers_per_network: int | None  # conv layers per network (None: all)
    shapes_per_op: int | None  # other shapes per op and network (None: all)
    models: Sequence[Model] = ()


@dataclass(frozen=True)
class Case:
    """A registered case: ``build(row.value, ctx)`` over the rows of ``table``."""

    op: str
    group: str
    table: str
    build: Callable[[Any, Context], Built]
    label_suffix: str = ""  # appended to the row's label (e.g. which activation)
    kernels: tuple[str, ...] = ()  # the fastcnn ops it runs (default: the op itself)
    networks: tuple[str, ...] | None = None  # only the rows of these networks (None: every row)


#: Every case, in registration order.
CASES: list[Case] = []
#: Every op name ``--ops`` accepts, by group (a group name selects all of its ops).
OP_GROUPS: dict[str, tuple[str, ...]] = {}
#: The shape tables, in run order: each turns a :class:`Selection` into rows.
TABLES: dict[str, Callable[[Selection], list[Row]]] = {}


def case(
    op: str,
    group: str,
    table: str,
    *,
    label_suffix: str = "",
    kernels: Sequence[str] | None = None,
    networks: Sequence[str] | None = None,
    **bound: Any,
) -> Callable[[Callable[..., Built]], Callable[..., Built]]:
    """Registers a case builder ``build(row_value, ctx, **bound) -> Built`` for ``op`` in ``group``,
    run over the rows of ``table``. ``bound`` keyword arguments let one function serve several cases
    (one per activation, one per model)."""

    def register(build: Callable[..., Built]) -> Callable[..., Built]:
        CASES.append(
            Case(
                op,
                group,
                table,
                functools.partial(build, **bound) if bound else build,
                label_suffix,
                tuple(kernels) if kernels is not None else (op,),
                tuple(networks) if networks is not None else None,
            )
        )
        if op not in OP_GROUPS.get(group, ()):
            OP_GROUPS[group] = (*OP_GROUPS.get(group, ()), op)
        return build

    return register


def table(name: str) -> Callable[[Callable[[Selection], list[Row]]], Callable[[Selection], list[Row]]]:
    """Registers a shape table: ``rows(selection) -> list[Row]``."""

    def register(rows: Callable[[Selection], list[Row]]) -> Callable[[Selection], list[Row]]:
        TABLES[name] = rows
        return rows

    return register


def all_ops() -> tuple[str, ...]:
    """Every op name, group by group."""
    return tuple(op for group_ops in OP_GROUPS.values() for op in group_ops)


def select_ops(text: str | None) -> list[str]:
    """Expands --ops (comma-separated op names or group names) into op names."""
    known = all_ops()
    if not text:
        return list(known)
    chosen: list[str] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if item in OP_GROUPS:
            chosen += OP_GROUPS[item]
        elif item in known:
            chosen.append(item)
        else:
            raise ValueError(
                f"--ops: unknown op {item!r}; ops: {', '.join(known)}; groups: {', '.join(OP_GROUPS)}"
            )
    return list(dict.fromkeys(chosen))


def specs_for(selection: Selection, ops_: set[str], ctx: Context) -> list[Spec]:
    """The selected cases over their tables' rows, in run order, for one context."""
    specs = []
    for name, rows in TABLES.items():
        cases = [c for c in CASES if c.table == name and c.op in ops_]
        if not cases:
            continue  # a table no selected case runs over is not even read
        for row in rows(selection):
            for c in cases:
                if c.networks is None or row.network in c.networks:
                    build = functools.partial(c.build, row.value, ctx)
                    specs.append(
                        Spec(
                            c.op,
                            c.group,
                            row.network,
                            row.label + c.label_suffix,
                            ctx.batch,
                            ctx.config,
                            build,
                        )
                    )
    return specs


def _has_kernel(op: str, device: torch.device) -> bool:
    """Whether this build of fastcnn has a kernel on the device for every fastcnn op the case runs."""
    key = "CUDA" if device.type == "cuda" else "CPU"
    kernels = {k for c in CASES if c.op == op for k in c.kernels}
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"fastcnn::{k}", key) for k in kernels)


# --------------------------------------------------------------------------------------------------------
# Inputs and contenders
# --------------------------------------------------------------------------------------------------------


def rand(shape: Sequence[int], cfg: Config, device: torch.device, scale: float = 1.0) -> Tensor:
    """Fresh standard-normal values, never exactly zero (zeros hide unwritten outputs and can run faster)."""
    t = torch.randn(tuple(shape), device=device, dtype=torch.float32) * scale
    t = torch.where(t == 0, torch.full_like(t, 1e-3), t).to(cfg.dtype)
    if cfg.channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def nbytes(*tensors: Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


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


# --------------------------------------------------------------------------------------------------------
# Shape tables
# --------------------------------------------------------------------------------------------------------


@functools.cache
def _data(name: str) -> dict:
    return json.loads(importlib.resources.files("fastcnn").joinpath(f"data/{name}").read_text())


def load_layers() -> dict[str, list[dict]]:
    """The conv layer shapes shipped with fastcnn (``fastcnn/data/cnn_layers.json``)."""
    return copy.deepcopy(_data("cnn_layers.json"))


def load_shapes() -> dict[str, dict[str, list]]:
    """The other shapes the cases time, per table and network (``fastcnn/data/bench_shapes.json``)."""
    return copy.deepcopy(_data("bench_shapes.json"))


def spread(items: Sequence[Any], count: int | None) -> list[Any]:
    """`count` items spread evenly over the sequence, first and last included, or all of them.

    One item is the middle one: a network's first layer (the RGB stem, three input channels) is the
    least typical of its layers, so a single pick must not be it.
    """
    if count is not None and count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if count is None or count >= len(items):
        return list(items)
    if count == 1:
        return [items[(len(items) - 1) // 2]]
    last = len(items) - 1
    return [items[i] for i in sorted({round(i * last / (count - 1)) for i in range(count)})]


def _chw(size: Sequence[int]) -> str:
    return "[N," + ",".join(str(s) for s in size) + "]"


def _conv_label(layer: dict) -> str:
    kh, kw, s, g = layer["kernel_h"], layer["kernel_w"], layer["stride_h"], layer["groups"]
    label = (
        f"{layer['in_channels']}->{layer['out_channels']} {layer['height']}x{layer['width']} k{kh}x{kw} s{s}"
    )
    return label + (f" g{g}" if g > 1 else "")


def _per_network(selection: Selection, name: str, label: Callable[[Any], str]) -> list[Row]:
    """Up to ``shapes_per_op`` rows of bench_shapes.json's table ``name`` per selected network."""
    shapes = _data("bench_shapes.json")[name]
    return [
        Row(net, label(entry), entry)
        for net in selection.networks
        for entry in spread(shapes.get(net, []), selection.shapes_per_op)
    ]


def _pool_label(entry: dict) -> str:
    return f"{_chw(entry['size'])} k{entry['kernel']} s{entry['stride']}"


@table("conv")
def _conv_rows(selection: Selection) -> list[Row]:
    layers = _data("cnn_layers.json")
    return [
        Row(net, _conv_label(layer), layer)
        for net in selection.networks
        for layer in spread(layers[net], selection.layers_per_network)
    ]


@table("fused")
def _fused_rows(selection: Selection) -> list[Row]:
    networks = [n for n in selection.networks if n in RESIDUAL_NETWORKS] or ["resnet50"]
    return _conv_rows(dataclasses.replace(selection, networks=networks))


@table("linear")
def _linear_rows(selection: Selection) -> list[Row]:
    return _per_network(selection, "linear", lambda e: f"[N,{e['in_features']}]->{e['out_features']}")


@table("max_pool2d")
def _max_pool_rows(selection: Selection) -> list[Row]:
    return _per_network(selection, "max_pool2d", lambda e: f"{_pool_label(e)} p{e['padding']}")


@table("avg_pool2d")
def _avg_pool_rows(selection: Selection) -> list[Row]:
    return _per_network(selection, "avg_pool2d", lambda e: f"{_pool_label(e)} (ResNet-D)")


@table("adaptive_avg_pool2d")
def _adaptive_pool_rows(selection: Selection) -> list[Row]:
    rows = [
        Row(net, f"{_chw(e['size'])} -> {e['output_size']}x{e['output_size']}", e)
        for net, entries in _data("bench_shapes.json")["adaptive_avg_pool2d"].items()
        if net in selection.networks
        for e in entries
    ]
    # Not per network: one shape in all, unless every shape is asked for.
    return rows if selection.shapes_per_op is None else rows[:1]


@table("activation")
def _activation_rows(selection: Selection) -> list[Row]:
    return _per_network(selection, "activation", _chw)


@table("residual")
def _residual_rows(selection: Selection) -> list[Row]:
    return _per_network(selection, "residual", _chw)


@table("model")
def _model_rows(selection: Selection) -> list[Row]:
    return [Row(model.name, "[N,3,224,224]", model) for model in selection.models]


# --------------------------------------------------------------------------------------------------------
# The cases. PyTorch's side (fastcnn.tools.references) takes tensors and plain Python values only, so that
# torch.compile traces exactly the eager code.
# --------------------------------------------------------------------------------------------------------


def _conv_params(layer: dict) -> tuple[list[int], list[int], list[int], int]:
    return (
        [layer["stride_h"], layer["stride_w"]],
        [layer["pad_h"], layer["pad_w"]],
        [layer["dilation_h"], layer["dilation_w"]],
        layer["groups"],
    )


def _conv_tensors(layer: dict, ctx: Context, bias: bool):
    cin, cout, groups = layer["in_channels"], layer["out_channels"], layer["groups"]
    kh, kw = layer["kernel_h"], layer["kernel_w"]
    x = ctx.rand((ctx.batch, cin, layer["height"], layer["width"]))
    w = ctx.rand((cout, cin // groups, kh, kw), scale=1.0 / math.sqrt(cin // groups * kh * kw))
    b = ctx.rand((cout,)) if bias else None
    stride, padding, dilation, _ = _conv_params(layer)
    oh, ow = (
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, p, d, k, s in zip(
            (layer["height"], layer["width"]), padding, dilation, (kh, kw), stride, strict=True
        )
    )
    flops = 2.0 * ctx.batch * cout * oh * ow * (cin // groups) * kh * kw
    return x, w, b, (ctx.batch, cout, oh, ow), flops


@case("conv2d", "conv", "conv")
def conv2d(layer: dict, ctx: Context) -> Built:
    """conv2d forward over each network's distinct conv layers."""
    x, w, b, _, flops = _conv_tensors(layer, ctx, layer["bias"])
    args = (x, w, b, *_conv_params(layer))
    fast = lambda *a: _fc.conv2d(*a, _NONE, None)  # noqa: E731
    return Built(ctx.contenders(fast, ref.torch_conv, args), flops=flops)


@case("conv2d_backward", "conv", "conv")
def conv2d_backward(layer: dict, ctx: Context) -> Built:
    """conv2d backward (input, weight and bias gradients) over the same layers."""
    x, w, b, out_shape, flops = _conv_tensors(layer, ctx, layer["bias"])
    go = ctx.rand(out_shape)
    mask = [True, True, b is not None]
    bias_sizes = [w.shape[0]] if b is not None else None
    args = (go, x, w, bias_sizes, *_conv_params(layer), mask)

    def fast(go, x, w, bias_sizes, stride, padding, dilation, groups, mask):
        return _fc.conv2d_backward(go, x, w, None, stride, padding, dilation, groups, _NONE, mask)

    # grad_input and grad_weight: each as many multiply-adds as the forward.
    return Built(ctx.contenders(fast, ref.torch_conv_backward, args), flops=2 * flops)


@case("conv_bias_relu", "fused", "fused", kernels=("conv2d",))
def conv_bias_relu(layer: dict, ctx: Context) -> Built:
    """conv+bias+ReLU over residual networks' conv layers: one fastcnn kernel, two eager ones."""
    x, w, b, _, flops = _conv_tensors(layer, ctx, True)
    args = (x, w, b, *_conv_params(layer))
    fast = lambda *a: _fc.conv2d(*a, _RELU, None)  # noqa: E731
    return Built(ctx.contenders(fast, ref.torch_conv_bias_relu, args), flops=flops)


@case("conv_bias_residual_relu", "fused", "fused", kernels=("conv2d",))
def conv_bias_residual_relu(layer: dict, ctx: Context) -> Built:
    """conv+bias+residual+ReLU, the ResNet join, over the same layers."""
    x, w, b, out_shape, flops = _conv_tensors(layer, ctx, True)
    r = ctx.rand(out_shape)
    args = (x, w, b, r, *_conv_params(layer))

    def fast(x, w, b, r, stride, padding, dilation, groups):
        return _fc.conv2d(x, w, b, stride, padding, dilation, groups, _RELU, r)

    return Built(ctx.contenders(fast, ref.torch_conv_bias_residual_relu, args), flops=flops)


def _linear_tensors(entry: dict, ctx: Context) -> tuple[Tensor, Tensor, Tensor, float]:
    fin, fout = entry["in_features"], entry["out_features"]
    x = ctx.rand((ctx.batch, fin))
    w = ctx.rand((fout, fin), scale=fin**-0.5)
    return x, w, ctx.rand((fout,)), 2.0 * ctx.batch * fin * fout


@case("linear", "linear", "linear")
def linear(entry: dict, ctx: Context) -> Built:
    """linear forward at the classifier layers of the networks."""
    x, w, b, flops = _linear_tensors(entry, ctx)
    fast = lambda x, w, b: _fc.linear(x, w, b, _NONE)  # noqa: E731
    return Built(ctx.contenders(fast, ref.torch_linear, (x, w, b)), flops=flops)


@case("linear_backward", "linear", "linear")
def linear_backward(entry: dict, ctx: Context) -> Built:
    """linear backward (input, weight and bias gradients) at the same layers."""
    x, w, _, flops = _linear_tensors(entry, ctx)
    go = ctx.rand((ctx.batch, entry["out_features"]))
    fast = lambda go, x, w: _fc.linear_backward(go, x, w, None, _NONE, [True, True, True])  # noqa: E731
    return Built(ctx.contenders(fast, ref.torch_linear_backward, (go, x, w)), flops=2 * flops)


def _pool_args(entry: dict) -> tuple[list[int], list[int], list[int]]:
    k, s, p = entry["kernel"], entry["stride"], entry["padding"]
    return [k, k], [s, s], [p, p]


@case("max_pool2d", "pool", "max_pool2d")
def max_pool2d(entry: dict, ctx: Context) -> Built:
    """max pooling forward at the networks' activation sizes."""
    x = ctx.rand((ctx.batch, *entry["size"]))
    y, idx = ref.torch_max_pool(x, *_pool_args(entry))
    fast = lambda x, kk, ss, pp: _fc.max_pool2d(x, kk, ss, pp, [1, 1], False)  # noqa: E731
    args = (x, *_pool_args(entry))
    return Built(ctx.contenders(fast, ref.torch_max_pool, args), bytes=nbytes(x, y, idx))


@case("max_pool2d_backward", "pool", "max_pool2d")
def max_pool2d_backward(entry: dict, ctx: Context) -> Built:
    """max pooling backward at the same sizes."""
    x = ctx.rand((ctx.batch, *entry["size"]))
    y, idx = ref.torch_max_pool(x, *_pool_args(entry))
    go = ctx.rand(y.shape)
    fast = lambda go, x, idx, kk, ss, pp: _fc.max_pool2d_backward(go, x, idx)  # noqa: E731
    args = (go, x, idx, *_pool_args(entry))
    # Reads grad_output and the indices, writes grad_input.
    return Built(ctx.contenders(fast, ref.torch_max_pool_backward, args), bytes=nbytes(go, idx, x))


@case("avg_pool2d", "pool", "avg_pool2d")
def avg_pool2d(entry: dict, ctx: Context) -> Built:
    """average pooling forward (ResNet-D's 2x2 shortcut pool)."""
    x = ctx.rand((ctx.batch, *entry["size"]))
    y = ref.torch_avg_pool(x, *_pool_args(entry))
    fast = lambda x, kk, ss, pp: _fc.avg_pool2d(x, kk, ss, pp, False, True, None)  # noqa: E731
    args = (x, *_pool_args(entry))
    return Built(ctx.contenders(fast, ref.torch_avg_pool, args), bytes=nbytes(x, y))


@case("avg_pool2d_backward", "pool", "avg_pool2d")
def avg_pool2d_backward(entry: dict, ctx: Context) -> Built:
    """average pooling backward at the same sizes."""
    x = ctx.rand((ctx.batch, *entry["size"]))
    go = ctx.rand(ref.torch_avg_pool(x, *_pool_args(entry)).shape)
    fast = lambda go, x, kk, ss, pp: _fc.avg_pool2d_backward(go, x, kk, ss, pp, False, True, None)  # noqa: E731
    args = (go, x, *_pool_args(entry))
    return Built(ctx.contenders(fast, ref.torch_avg_pool_backward, args), bytes=nbytes(go, x))


@case("adaptive_avg_pool2d", "pool", "adaptive_avg_pool2d")
def adaptive_avg_pool2d(entry: dict, ctx: Context) -> Built:
    """adaptive average pooling forward (the global pool before the classifier)."""
    out = [entry["output_size"]] * 2
    x = ctx.rand((ctx.batch, *entry["size"]))
    y = ref.torch_adaptive_avg_pool(x, out)
    contenders = ctx.contenders(_fc.adaptive_avg_pool2d, ref.torch_adaptive_avg_pool, (x, out))
    return Built(contenders, bytes=nbytes(x, y))


@case("adaptive_avg_pool2d_backward", "pool", "adaptive_avg_pool2d")
def adaptive_avg_pool2d_backward(entry: dict, ctx: Context) -> Built:
    """adaptive average pooling backward at the same sizes."""
    x = ctx.rand((ctx.batch, *entry["size"]))
    go = ctx.rand(ref.torch_adaptive_avg_pool(x, [entry["output_size"]] * 2).shape)
    contenders = ctx.contenders(
        _fc.adaptive_avg_pool2d_backward, ref.torch_adaptive_avg_pool_backward, (go, x)
    )
    return Built(contenders, bytes=nbytes(go, x))


def _activation(size: list[int], ctx: Context, act: ops.Activation) -> Built:
    """An activation's own elementwise op at the networks' activation sizes."""
    x = ctx.rand((ctx.batch, *size))
    eager, _ = ref.torch_activation(act)
    kernel = getattr(_fc, act.name)
    fast = kernel if act.parameter is None else lambda x: kernel(x, act.parameter)
    return Built(ctx.contenders(fast, eager, (x,)), bytes=2 * nbytes(x))


def _activation_backward(size: list[int], ctx: Context, act: ops.Activation) -> Built:
    """activation_backward of an activation (through its saved output, or input), at the same sizes."""
    eager, eager_backward = ref.torch_activation(act)
    go, x = ctx.rand((ctx.batch, *size)), ctx.rand((ctx.batch, *size))
    saved = eager(x) if act.grad_from_output else x
    code = act.code
    fast = lambda go, s: _fc.activation_backward(go, s, code)  # noqa: E731
    return Built(ctx.contenders(fast, eager_backward, (go, saved)), bytes=3 * nbytes(go))


# One forward and one backward case per activation of the registry, each size timing them in turn.
for _name, _act in ops.ACTIVATIONS.items():
    case(_name, "elementwise", "activation", act=_act)(_activation)
    case("activation_backward", "elementwise", "activation", label_suffix=f" {_name}", act=_act)(
        _activation_backward
    )


def _batch_norm_tensors(size: list[int], ctx: Context):
    channels = size[0]
    x = ctx.rand((ctx.batch, *size))
    reduced = x.dtype in (torch.float16, torch.bfloat16)
    stats = dict(device=x.device, dtype=torch.float32 if reduced else x.dtype)
    w, b = torch.rand(channels, **stats) + 0.5, torch.randn(channels, **stats)
    return x, w, b, torch.zeros(channels, **stats), torch.ones(channels, **stats)


@case("batch_norm", "norm", "activation", label_suffix=" train +relu")
def batch_norm(size: list[int], ctx: Context) -> Built:
    """Training-mode BatchNorm2d fused with its ReLU (batch statistics; running statistics updated) at
    the networks' activation sizes, where their BatchNorm + ReLU pairs run. Bytes: the two passes a
    batch norm needs at least (statistics, then normalise): x read twice, y written once."""
    x, w, b, rm, rv = _batch_norm_tensors(size, ctx)

    def fast(x, w, b, rm, rv):
        return ops.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5, activation="relu")

    return Built(ctx.contenders(fast, ref.torch_batch_norm_relu, (x, w, b, rm, rv)), bytes=3 * nbytes(x))


@case("batch_norm_backward", "norm", "activation", label_suffix=" train +relu")
def batch_norm_backward(size: list[int], ctx: Context) -> Built:
    """The backward of training-mode BatchNorm2d + ReLU: the ReLU's mask from the output, the two
    per-channel sums, then grad_input. Bytes: its two passes at least (grad_output, x and y read by each,
    grad_input written once)."""
    x, w, b, rm, rv = _batch_norm_tensors(size, ctx)
    y, mean, var = _fc.batch_norm(x, w, b, None, None, True, 1e-5, _RELU)
    invstd = torch.rsqrt(var + 1e-5)
    go = ctx.rand(y.shape)

    def fast(go, x, w, y, mean, var):
        return _fc.batch_norm_backward(go, x, w, mean, var, y, True, 1e-5, _RELU, [True, True, True])

    def eager(go, x, w, y, mean, var):
        return ref.torch_batch_norm_relu_backward(go, x, w, y, mean, invstd)

    return Built(ctx.contenders(fast, eager, (go, x, w, y, mean, var)), bytes=7 * nbytes(x))


@case("add", "elementwise", "residual", label_suffix=" +relu")
def add(size: list[int], ctx: Context) -> Built:
    """The residual add with its ReLU at the networks' residual-join sizes."""
    a, b = ctx.rand((ctx.batch, *size)), ctx.rand((ctx.batch, *size))
    fast = lambda a, b: _fc.add(a, b, _RELU)  # noqa: E731
    # Eager runs the add and the ReLU as two kernels; fastcnn (and compile) fuse them.
    return Built(ctx.contenders(fast, ref.torch_add_relu, (a, b)), bytes=3 * nbytes(a))


def _make_model(model: Model, ctx: Context) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    fmt = torch.channels_last if ctx.config.channels_last else torch.contiguous_format
    return getattr(torchvision.models, model.name)(weights=None).to(ctx.device, memory_format=fmt)


def _inference(model: Model, ctx: Context) -> Built:
    """Inference of the torchvision network against its fastcnn conversion (fused where fuse exists)."""
    net = _make_model(model, ctx).to(ctx.config.dtype).eval()
    x = ctx.rand((ctx.batch, 3, 224, 224))
    # fuse folds BatchNorm and the ReLU/residual joins into fastcnn's conv epilogue.
    fast_net = model.fuse(net) if model.fuse is not None else model.convert(net).eval()
    contenders: dict[str, Callable[[], object]] = {
        "fastcnn": torch.no_grad()(lambda: fast_net(x)),
        "eager": torch.no_grad()(lambda: net(x)),
    }
    if ctx.model_compile_mode is not None:
        compiled = _compile(net, ctx.model_compile_mode)
        contenders["compile"] = torch.no_grad()(lambda: compiled(x))
    return Built(contenders, extra={"images": ctx.batch, "fused": model.fuse is not None})


def _train_step(model: Model, ctx: Context) -> Built:
    """One SGD step of the torchvision network against its fastcnn conversion."""
    base = _make_model(model, ctx).train()
    x = rand((ctx.batch, 3, 224, 224), Config("fp32", ctx.config.channels_last), ctx.device)
    target = torch.randint(0, 1000, (ctx.batch,), device=ctx.device)
    nets = {"fastcnn": model.convert(copy.deepcopy(base)), "eager": copy.deepcopy(base)}
    if ctx.model_compile_mode is not None:
        nets["compile"] = _compile(copy.deepcopy(base), ctx.model_compile_mode)
    half = ctx.config.dtype in (torch.float16, torch.bfloat16)
    contenders = {}
    for key, net in nets.items():
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)

        def step(net=net, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            # Half types train as AMP does: fp32 weights, convs and linears in the half type.
            with torch.autocast(ctx.device.type, dtype=ctx.config.dtype, enabled=half):
                loss = F.cross_entropy(net(x), target)
            loss.backward()
            optimizer.step()

        contenders[key] = step
    return Built(contenders, compare=False, extra={"images": ctx.batch})


#: The fastcnn ops a converted ResNet needs before its model cases can run.
_MODEL_KERNELS = ("conv2d", "linear", "max_pool2d")
# torchvision inference (ResNet-18/50, MobileNetV2) and one SGD training step (the ResNets); --preset
# picks which networks run.
for _name in ("resnet18", "resnet50", "mobilenet_v2"):
    case(f"{_name}_inference", "model", "model", kernels=_MODEL_KERNELS, networks=(_name,))(_inference)
for _name in ("resnet18", "resnet50"):
    case(
        f"{_name}_train_step",
        "model",
        "model",
        label_suffix=" SGD",
        kernels=_MODEL_KERNELS,
        networks=(_name,),
    )(_train_step)
del _name, _act
