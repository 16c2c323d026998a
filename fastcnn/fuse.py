"""``fastcnn.fuse``: an inference copy of a model with BatchNorm, activations and residual adds fused into
fastcnn's conv epilogue.

Three rewrites, each removing a full pass over an activation tensor:

* ``bn(conv(x))`` -> one conv whose weight and bias absorb the BatchNorm's affine transform (eval mode
  uses the running statistics, so ``bn`` is a per-channel ``a * y + b`` that the conv can apply itself);
* ``act(conv(x))`` and ``act(linear(x))`` -> one fastcnn layer with ``activation=...``;
* ``act(conv(x) + identity)`` (the ResNet join) -> ``conv(x, residual=identity)`` with the activation in
  the same epilogue.

The rewrite runs on a ``torch.fx`` graph (:func:`torch.fx.symbolic_trace`, with fastcnn layers kept as
leaves). A model fx cannot trace (data-dependent control flow, unsupported Python) falls back to
module-level fusion: ``Conv2d -> BatchNorm2d -> activation`` runs inside ``nn.Sequential`` containers, and
blocks recognised by type (torchvision's ``BasicBlock``/``Bottleneck``/``BasicConv2d``, and fastcnn's own
model-zoo blocks).

The result carries a :class:`FuseReport` (``.fastcnn_fuse_report``: the rewrites, and the layers still
running PyTorch's code by type) and the :class:`~fastcnn.convert.ConvertReport` of its conversion
(``.fastcnn_convert_report``). With BatchNorm folded it is an inference model: ``.train()`` warns.
"""

from __future__ import annotations

import copy
import logging
import math
import operator
import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn

from . import nn as fnn
from . import ops
from .convert import ConvertReport, _convert_layers

__all__ = ["FuseReport", "FusedBasicBlock", "FusedBottleneck", "fold_batchnorm", "fuse"]

logger = logging.getLogger(__name__)


# What fuse recognises as an activation, by the name the fused layers take: the torch.nn and fastcnn.nn
# modules, the torch / torch.nn.functional / fastcnn.ops functions and the Tensor methods of each.
_module_activation = fnn.activation_of


_ACTIVATION_FUNCTIONS: dict[object, str] = {
    fn: name for name, act in ops.ACTIVATIONS.items() for fn in (*act.functions, getattr(ops, name))
}
_ACTIVATION_METHODS: dict[str, str] = {
    method: name for name, act in ops.ACTIVATIONS.items() for method in act.methods
}


def _function_activation(act: ops.Activation, args: tuple, kwargs: dict) -> str | None:
    """The ``activation=`` of a call ``fn(x, *args, **kwargs)`` of one of act's functions: the plain ones
    take only ``inplace``; a parametrised one (F.leaky_relu) its parameter and then ``inplace``. None when
    the call passes anything else (or a parameter that is not a number)."""
    kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
    if act.parameter_name is None:
        return act.name if not kwargs and len(args) <= 1 else None
    positional = list(args)
    value = positional.pop(0) if positional else act.default_parameter
    value = kwargs.pop(act.parameter_name, value)
    if kwargs or len(positional) > 1 or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return None
    return act.with_parameter(value).spec


_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")


@dataclass
class FuseReport:
    """What :func:`fuse` did: ``method`` is "fx" or "module" (the fallback, with fx's error in
    ``trace_error``); the lists name the conv/linear layers (qualified names) each rewrite changed."""

    method: str = "fx"
    folded_batchnorm: list[str] = field(default_factory=list)
    fused_activation: list[str] = field(default_factory=list)
    fused_residual: list[str] = field(default_factory=list)
    trace_error: str | None = None
    #: The conversion to fastcnn layers before the rewrites (also the fused model's
    #: ``.fastcnn_convert_report``): the layers converted, here or by an earlier :func:`fastcnn.convert`
    #: of the input, and those left on torch that are still in the fused model.
    convert: ConvertReport | None = None
    #: Layers of the fused model still running PyTorch's code, by class name: ``{"Hardswish": 19}``.
    on_torch: dict[str, int] = field(default_factory=dict)
    _touched: set[int] = field(default_factory=set, repr=False, compare=False)

    def summary(self) -> str:
        """A one-line account of the rewrites and of the layers left on PyTorch, for logs."""
        line = (
            f"fastcnn.fuse ({self.method}): {len(self.folded_batchnorm)} BatchNorm folded, "
            f"{len(self.fused_activation)} activations and {len(self.fused_residual)} residual adds "
            "fused into conv/linear epilogues"
        )
        if not self.on_torch:
            return line + "; no layer left on PyTorch"
        left = ", ".join(
            f"{count} {kind}" for kind, count in sorted(self.on_torch.items(), key=lambda kv: -kv[1])
        )
        return f"{line}; still on PyTorch: {left}"


# ----------------------------------------------------------------------------------------------------------
# BatchNorm folding
# ----------------------------------------------------------------------------------------------------------


def _is_batchnorm(module: nn.Module) -> bool:
    if type(module) is nn.BatchNorm2d or (type(module) is fnn.BatchNorm2d and module.activation is None):
        return module.track_running_stats and module.running_mean is not None
    # torchvision.ops.FrozenBatchNorm2d: always running statistics, always affine.
    cls = type(module)
    return cls.__name__ == "FrozenBatchNorm2d" and cls.__module__.startswith("torchvision")


def fold_batchnorm(conv: nn.Conv2d, bn: nn.Module) -> None:
    """Folds an eval-mode ``bn`` (BatchNorm2d with running statistics, or FrozenBatchNorm2d) into the
    preceding ``conv`` in place: ``conv'(x) = bn(conv(x))``. The conv gains a bias if it had none.

    The fold is computed in float64 and rounded once to the conv's dtype, so it adds one rounding per
    weight and per bias to what the unfused model computes.
    """
    if conv.out_channels != bn.running_mean.numel():
        raise ValueError(
            f"cannot fold: conv has {conv.out_channels} output channels, BatchNorm {bn.running_mean.numel()}"
        )
    with torch.no_grad():
        var = bn.running_var.to(torch.float64)
        scale = torch.rsqrt(var + bn.eps)
        if getattr(bn, "weight", None) is not None:
            scale = scale * bn.weight.to(torch.float64)
        shift = -bn.running_mean.to(torch.float64) * scale
        if getattr(bn, "bias", None) is not None:
            shift = shift + bn.bias.to(torch.float64)
        weight = conv.weight.to(torch.float64) * scale.view(-1, 1, 1, 1)
        bias = shift if conv.bias is None else conv.bias.to(torch.float64) * scale + shift
        dtype, device = conv.weight.dtype, conv.weight.device
        requires_grad = conv.weight.requires_grad
        conv.weight = nn.Parameter(weight.to(device, dtype), requires_grad=requires_grad)
        conv.bias = nn.Parameter(bias.to(device, dtype), requires_grad=requires_grad)


# ----------------------------------------------------------------------------------------------------------
# fx path
# ----------------------------------------------------------------------------------------------------------

_FASTCNN_LEAVES = (
    fnn.Conv2d,
    fnn.Linear,
    fnn.MaxPool2d,
    fnn.AvgPool2d,
    fnn.AdaptiveAvgPool2d,
    fnn.BatchNorm2d,
    fnn.BatchNorm1d,
    fnn.LayerNorm,
    fnn.LayerNorm2d,
    *fnn.ACTIVATION_MODULES.values(),
    fnn.Flatten,
    fnn.ResidualAdd,
)


class _Tracer(fx.Tracer):
    """Keeps fastcnn layers (whose Python wrappers check real tensors) and BatchNorms as graph leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if type(m) in _FASTCNN_LEAVES or _is_batchnorm(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)


class _FxFuser:
    def __init__(self, gm: fx.GraphModule, report: FuseReport, residual: bool) -> None:
        self.gm = gm
        self.graph = gm.graph
        self.modules = dict(gm.named_modules())
        self.report = report
        self.residual = residual
        # A module called from two places cannot absorb a neighbour of one call only.
        self.calls = Counter(n.target for n in self.graph.nodes if n.op == "call_module")

    def module(self, node: object) -> nn.Module | None:
        if isinstance(node, fx.Node) and node.op == "call_module":
            return self.modules[node.target]
        return None

    def plain_layer(self, node: object, kinds: tuple[type[nn.Module], ...]) -> bool:
        """A single-use, single-call fastcnn conv/linear with no epilogue yet."""
        module = self.module(node)
        return (
            type(module) in kinds
            and module.activation is None
            and len(node.args) == 1
            and not node.kwargs
            and len(node.users) == 1
            and self.calls[node.target] == 1
        )

    def activation_of(self, node: fx.Node) -> str | None:
        """The activation a node applies to its first argument, or None when it is not one."""
        if node.op == "call_module":
            return _module_activation(self.modules[node.target])
        if node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS:
            act = ops.ACTIVATIONS[_ACTIVATION_FUNCTIONS[node.target]]
            return _function_activation(act, node.args[1:], node.kwargs)
        if node.op == "call_method" and node.target in _ACTIVATION_METHODS:
            return _ACTIVATION_METHODS[node.target] if len(node.args) == 1 and not node.kwargs else None
        return None

    def fold_batchnorms(self) -> None:
        for node in list(self.graph.nodes):
            bn = self.module(node)
            if bn is None or not _is_batchnorm(bn) or len(node.args) != 1:
                continue
            conv_node = node.args[0]
            if not self.plain_layer(conv_node, (fnn.Conv2d,)):
                continue
            fold_batchnorm(self.modules[conv_node.target], bn)
            node.replace_all_uses_with(conv_node)
            self.graph.erase_node(node)
            self.report.folded_batchnorm.append(conv_node.target)

    def fuse_residuals(self) -> None:
        for node in list(self.graph.nodes):
            operands, activation = self.residual_add(node)
            if operands is None:
                continue
            for i in (0, 1):
                conv_node, identity = operands[i], operands[1 - i]
                if self.plain_layer(conv_node, (fnn.Conv2d,)) and identity is not conv_node:
                    break
            else:
                continue
            out_node = node
            if activation is None and len(node.users) == 1:
                (user,) = node.users
                activation = self.activation_of(user)
                if activation is not None:
                    out_node = user
            with self.graph.inserting_before(node):
                fused = self.graph.call_module(
                    conv_node.target, args=(conv_node.args[0],), kwargs={"residual": identity}
                )
            self.modules[conv_node.target].activation = activation
            out_node.replace_all_uses_with(fused)
            if out_node is not node:
                self.graph.erase_node(out_node)
            self.graph.erase_node(node)
            self.graph.erase_node(conv_node)
            self.report.fused_residual.append(conv_node.target)

    def residual_add(self, node: fx.Node) -> tuple[tuple[fx.Node, fx.Node] | None, str | None]:
        """(operands, activation) when ``node`` is a same-shape residual add of two computed tensors."""
        if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
            if len(node.args) != 2 or node.kwargs:  # torch.add(..., alpha=) is not a plain add
                return None, None
            operands, activation = tuple(node.args), None
        elif node.op == "call_method" and node.target in _ADD_METHODS:
            if len(node.args) != 2 or node.kwargs:
                return None, None
            operands, activation = tuple(node.args), None
        elif type(self.module(node)) is fnn.ResidualAdd and len(node.args) == 2 and not node.kwargs:
            operands, activation = tuple(node.args), self.modules[node.target].activation
        else:
            return None, None
        # Constants and parameters (get_attr) may broadcast; two computed feature maps joined by a plain
        # add are a residual join (fastcnn's conv checks that the residual has the output's shape).
        if not all(isinstance(o, fx.Node) and o.op != "get_attr" for o in operands):
            return None, None
        return operands, activation

    def fuse_activations(self) -> None:
        for node in list(self.graph.nodes):
            activation = self.activation_of(node)
            if activation is None or not node.args:
                continue
            layer_node = node.args[0]
            # A BatchNorm that could not be folded (DenseNet's, after a concatenation) still takes the
            # activation after it into its own pass.
            if not self.plain_layer(layer_node, (fnn.Conv2d, fnn.Linear, fnn.BatchNorm2d, fnn.BatchNorm1d)):
                continue
            self.modules[layer_node.target].activation = activation
            node.replace_all_uses_with(layer_node)
            self.graph.erase_node(node)
            self.report.fused_activation.append(layer_node.target)

    def run(self) -> fx.GraphModule:
        self.fold_batchnorms()
        if self.residual:
            self.fuse_residuals()
        self.fuse_activations()
        self.graph.lint()
        self.gm.delete_all_unused_submodules()
        self.gm.recompile()
        return self.gm


def _fuse_fx(model: nn.Module, report: FuseReport, residual: bool) -> fx.GraphModule:
    graph = _Tracer().trace(model)
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    return _FxFuser(gm, report, residual).run()


# ----------------------------------------------------------------------------------------------------------
# module-level fallback
# ----------------------------------------------------------------------------------------------------------


class FusedBasicBlock(nn.Module):
    """A ResNet basic block after fusion: ``conv2(conv1(x), residual=downsample(x))``, with BatchNorm
    folded and ReLU in both convs' epilogues."""

    def __init__(self, conv1: fnn.Conv2d, conv2: fnn.Conv2d, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1, self.conv2, self.downsample = conv1, conv2, downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv2(self.conv1(x), residual=identity)


class FusedBottleneck(nn.Module):
    """A ResNet bottleneck block after fusion: three convs, the last with the residual+ReLU epilogue."""

    def __init__(
        self, conv1: fnn.Conv2d, conv2: fnn.Conv2d, conv3: fnn.Conv2d, downsample: nn.Module | None
    ) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3, self.downsample = conv1, conv2, conv3, downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv3(self.conv2(self.conv1(x)), residual=identity)


def _foldable(conv: object, bn: object, report: FuseReport) -> bool:
    return (
        type(conv) is fnn.Conv2d
        and id(conv) not in report._touched
        and conv.activation is None
        and isinstance(bn, nn.Module)
        and _is_batchnorm(bn)
    )


def _fold_with_activation(
    conv: fnn.Conv2d, bn: nn.Module, activation: str | None, report: FuseReport, name: str
) -> fnn.Conv2d:
    fold_batchnorm(conv, bn)
    report._touched.add(id(conv))
    report.folded_batchnorm.append(name)
    if activation is not None:
        conv.activation = activation
        report.fused_activation.append(name)
    return conv


def _known_block(module: nn.Module, name: str, report: FuseReport) -> nn.Module | None:
    """The fused replacement of a block recognised by type, or None."""
    cls = type(module)
    qual = f"{cls.__module__}.{cls.__name__}"
    prefix = f"{name}." if name else ""
    if qual in ("torchvision.models.googlenet.BasicConv2d", "torchvision.models.inception.BasicConv2d"):
        if _foldable(module.conv, module.bn, report):
            return _fold_with_activation(module.conv, module.bn, "relu", report, prefix + "conv")
        return None
    basic = qual in ("torchvision.models.resnet.BasicBlock", "fastcnn.models.resnet.BasicBlock")
    bottleneck = qual in ("torchvision.models.resnet.Bottleneck", "fastcnn.models.resnet.Bottleneck")
    if not (basic or bottleneck):
        return None
    pairs = [("conv1", "bn1"), ("conv2", "bn2")] + ([("conv3", "bn3")] if bottleneck else [])
    if not all(_foldable(getattr(module, c), getattr(module, b), report) for c, b in pairs):
        return None
    downsample = module.downsample
    if downsample is not None:
        _fuse_modules(downsample, prefix + "downsample", report)
    convs = []
    for i, (c, b) in enumerate(pairs):
        last = i == len(pairs) - 1
        convs.append(
            _fold_with_activation(
                getattr(module, c), getattr(module, b), None if last else "relu", report, prefix + c
            )
        )
    convs[-1].activation = "relu"
    report.fused_residual.append(prefix + pairs[-1][0])
    fused = FusedBasicBlock(*convs, downsample) if basic else FusedBottleneck(*convs, downsample)
    return fused.train(module.training)


def _fuse_modules(module: nn.Module, prefix: str, report: FuseReport) -> None:
    for name, child in list(module.named_children()):
        qual = f"{prefix}.{name}" if prefix else name
        replacement = _known_block(child, qual, report)
        if replacement is not None:
            module._modules[name] = replacement
        else:
            _fuse_modules(child, qual, report)
    if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
        return
    names = list(module._modules)
    i = 0
    while i + 1 < len(names):
        layer, after = module._modules[names[i]], module._modules[names[i + 1]]
        qual = f"{prefix}.{names[i]}" if prefix else names[i]
        if id(layer) in report._touched:  # shared with another container: already rewritten there
            i += 1
        elif _foldable(layer, after, report):
            act_module = module._modules[names[i + 2]] if i + 2 < len(names) else None
            activation = _module_activation(act_module)
            _fold_with_activation(layer, after, activation, report, qual)
            module._modules[names[i + 1]] = nn.Identity()
            if activation is not None:
                module._modules[names[i + 2]] = nn.Identity()
            i += 3 if activation is not None else 2
        elif (
            type(layer) in (fnn.Conv2d, fnn.Linear)
            and layer.activation is None
            and _module_activation(after) is not None
        ):
            layer.activation = _module_activation(after)
            report._touched.add(id(layer))
            report.fused_activation.append(qual)
            module._modules[names[i + 1]] = nn.Identity()
            i += 2
        else:
            i += 1


# ----------------------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------------------


class _InferenceOnly(nn.Module):
    """Rides along in a fused model whose BatchNorms were folded, to warn (once) when the model is put in
    training mode: ``Module.train`` reaches every submodule, and the model's own class is left as it
    was. It is never called; if a container runs it, it is the identity."""

    _fastcnn_passive = True  # convert and fuse's report pass over it

    def __init__(self, stacklevel: int) -> None:
        super().__init__()
        self.warned = False
        self.stacklevel = stacklevel

    def train(self, mode: bool = True) -> _InferenceOnly:
        if mode and not self.warned:
            self.warned = True
            warnings.warn(
                "this model comes from fastcnn.fuse, which folded its BatchNorm layers into the convs "
                "for inference: in training mode there is no batch normalisation left, so train the "
                "model fastcnn.convert returns (and fuse it afterwards) instead",
                UserWarning,
                stacklevel=self.stacklevel,
            )
        return super().train(mode)

    def forward(self, input: Tensor) -> Tensor:
        return input


def _report_layers(
    fused: nn.Module, prior: ConvertReport | None, own: ConvertReport, report: FuseReport
) -> None:
    """Fills ``report.convert`` and ``report.on_torch`` from the conversion (``prior``: the input's own
    :func:`fastcnn.convert` report, if any; ``own``: fuse's) and what is left in ``fused``: a layer
    convert left on torch that the rewrites removed (a FrozenBatchNorm2d folded into its conv) is not
    on PyTorch any more."""
    modules = dict(fused.named_modules())
    left = [s for s in own.skipped if s.name in modules and type(modules[s.name]).__name__ == s.kind]
    report.convert = ConvertReport(
        converted=[*(prior.converted if prior else []), *own.converted],
        skipped=left,
        fused_activations=[*(prior.fused_activations if prior else []), *own.fused_activations],
    )
    report.on_torch = dict(Counter(s.kind for s in left))


def fuse(model: nn.Module, *, residual: bool = True, use_fx: bool = True) -> nn.Module:
    """An inference copy of ``model`` (in eval mode) with BatchNorm, activations and residual adds fused.

    The copy is first :func:`fastcnn.convert`-ed, then rewritten: ``bn(conv(x))`` becomes one conv with
    folded weights, ``act(conv(x))``/``act(linear(x))`` one fastcnn layer with ``activation=``, and
    ``act(conv(x) + identity)`` one ``conv(x, residual=identity)``. ``model`` itself is not changed.

    Args:
        model: any ``nn.Module``; its training mode does not matter (the copy is put in eval mode, whose
            BatchNorm uses the running statistics that the fold bakes in).
        residual: fuse residual adds into the conv epilogue. fx sees no shapes, so any add of a conv's
            output and another computed tensor is taken as a residual join; fastcnn's conv checks that
            the residual has the output's shape and raises otherwise. Pass False for a model whose adds
            broadcast.
        use_fx: try ``torch.fx`` first (the default); False goes straight to module-level fusion.

    Returns:
        The fused copy: a ``torch.fx.GraphModule`` when fx traced the model, else a copy of the model's
        own class with fused blocks. Its :class:`FuseReport` is attached as ``.fastcnn_fuse_report``
        (with the layers still on PyTorch, by type) and its :class:`~fastcnn.convert.ConvertReport` as
        ``.fastcnn_convert_report``; one summary line is logged (logger ``fastcnn.fuse``, INFO).
        The copy is for inference: calling ``.train()`` on it does not bring BatchNorm back (when any
        was folded, it warns once: train the :func:`fastcnn.convert`-ed model instead), and its
        ``state_dict`` has no BatchNorm entries.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    prior = model.__dict__.get("fastcnn_convert_report")
    work = copy.deepcopy(model)
    work.__dict__.pop("fastcnn_convert_report", None)
    # convert's own log would list BatchNorms that are about to be folded as left on torch, and an
    # already converted input as "0 layers converted": fuse reports once, on the result.
    converted = _convert_layers(work)
    work.eval()
    report = FuseReport()
    fused: nn.Module | None = None
    if use_fx:
        try:
            fused = _fuse_fx(work, report, residual)
        except Exception as exc:  # fx raises many kinds (TraceError, TypeError, ...) for untraceable code
            report.trace_error = f"{type(exc).__name__}: {exc}"
            logger.info("fastcnn.fuse: torch.fx could not trace the model (%s); fusing by module", exc)
            report.folded_batchnorm.clear()
            report.fused_activation.clear()
            report.fused_residual.clear()
            # The trace may have folded nothing (it fails before rewriting), but start from a clean copy.
            work = copy.deepcopy(model)
            work.__dict__.pop("fastcnn_convert_report", None)
            converted = _convert_layers(work)
            work.eval()
    if fused is None:
        report.method = "module"
        fused = _known_block(work, "", report)
        if fused is None:
            _fuse_modules(work, "", report)
            fused = work
    fused.eval()
    _report_layers(fused, prior, converted, report)
    if report.folded_batchnorm:
        # A container runs its children in turn: there the guard goes to a folded conv instead.
        containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
        root = not isinstance(fused, containers)
        host = fused if root else fused.get_submodule(report.folded_batchnorm[0])
        # stacklevel: the warning points at the caller's .train() (through Module.train's loop).
        host.fastcnn_inference_only = _InferenceOnly(stacklevel=3 if root else 4).eval()
    fused.fastcnn_fuse_report = report
    fused.fastcnn_convert_report = report.convert
    logger.info("%s", report.summary())
    return fused
