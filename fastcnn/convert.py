"""``fastcnn.convert``: run an existing PyTorch model on fastcnn's kernels.

:func:`convert` walks any ``nn.Module`` and swaps the torch layers that fastcnn serves for their
:mod:`fastcnn.nn` counterparts. Every ``fastcnn.nn`` class subclasses its ``torch.nn`` class and keeps its
attributes, so the swap changes only the module's class: parameters (the same ``Parameter`` objects),
buffers, hooks, ``requires_grad``, device, dtype, training mode and ``state_dict`` keys all stay as they
were. Layers fastcnn cannot serve are left as they are and listed, with the reason, in the
:class:`ConvertReport` attached to the returned model as ``model.fastcnn_convert_report``.

BatchNorm1d/2d run on fastcnn's batch-norm kernel in training and evaluation alike; for inference,
:func:`fastcnn.fuse` also folds them into the preceding convolution.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import nn as fnn
from . import ops
from ._extension import built_with_cuda

__all__ = ["ConvertReport", "ConvertedLayer", "SkippedLayer", "convert", "supported_dtypes"]

logger = logging.getLogger(__name__)

#: torch.nn class -> the fastcnn.nn class that replaces it. Matched on the exact class: a subclass may
#: override forward (timm's Conv2dSame, StdConv2d), and replacing it would silently change the model.
_REPLACEMENTS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: fnn.Conv2d,
    nn.Linear: fnn.Linear,
    nn.MaxPool2d: fnn.MaxPool2d,
    nn.AvgPool2d: fnn.AvgPool2d,
    nn.AdaptiveAvgPool2d: fnn.AdaptiveAvgPool2d,
    nn.BatchNorm2d: fnn.BatchNorm2d,
    nn.BatchNorm1d: fnn.BatchNorm1d,
    nn.LayerNorm: fnn.LayerNorm,
    # nn.ReLU, nn.Sigmoid, nn.Tanh: the torch.nn class of every activation in the registry.
    **{ops.ACTIVATIONS[name].module: cls for name, cls in fnn.ACTIVATION_MODULES.items()},
    nn.Flatten: fnn.Flatten,
}

if fnn._TorchvisionLayerNorm2d is not nn.LayerNorm:
    _REPLACEMENTS[fnn._TorchvisionLayerNorm2d] = fnn.LayerNorm2d

_FASTCNN_CLASSES = frozenset(_REPLACEMENTS.values()) | {fnn.ResidualAdd}

#: Layers with nothing to compute (or nothing fastcnn should compute): not worth a line in the report.
_PASSIVE: tuple[type[nn.Module], ...] = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout)
try:  # torchvision's stochastic depth (a random per-sample mask, like dropout) and Permute (a view)
    from torchvision.ops.misc import Permute
    from torchvision.ops.stochastic_depth import StochasticDepth

    _PASSIVE += (StochasticDepth, Permute)
except ImportError:  # pragma: no cover - torchvision is optional
    pass

_SKIP_REASONS: list[tuple[tuple[type[nn.Module], ...], str]] = [
    (
        (nn.BatchNorm3d,),
        "3-D batch norm: fastcnn serves BatchNorm1d/2d (it has no 3-D layers around it), stays torch.nn",
    ),
    (
        (nn.SyncBatchNorm,),
        "SyncBatchNorm reduces its statistics across processes, which fastcnn's kernel does not",
    ),
    ((nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool1d), "fastcnn has no adaptive max-pool kernel"),
    (
        (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d),
        "not a 2-D forward convolution: fastcnn's conv2d kernel does not serve it",
    ),
    ((nn.MaxPool1d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool3d), "not 2-D pooling"),
]


def supported_dtypes(device: torch.device | str) -> tuple[torch.dtype, ...]:
    """The parameter dtypes fastcnn's kernels take on ``device``: float32/float64 on the CPU, plus
    float16/bfloat16 on CUDA (only when fastcnn was built with its CUDA kernels)."""
    device_type = torch.device(device).type
    if device_type == "cpu":
        return (torch.float32, torch.float64)
    if device_type == "cuda" and built_with_cuda():
        return (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    return ()


@dataclass(frozen=True)
class ConvertedLayer:
    """A layer :func:`convert` swapped: its qualified name ("" for the root) and both class names."""

    name: str
    source: str
    target: str


@dataclass(frozen=True)
class SkippedLayer:
    """A layer left on torch: its qualified name, its class name and why it was not converted."""

    name: str
    kind: str
    reason: str


@dataclass
class ConvertReport:
    """What :func:`convert` did. ``converted`` and ``skipped`` list layers in ``named_modules`` order.

    Only leaf layers appear: containers (``nn.Sequential``, blocks) are walked, not reported, and layers
    with nothing to compute (``nn.Identity``, dropout) are not listed as skipped.
    """

    converted: list[ConvertedLayer] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)
    #: With ``fuse_activations``: (batch-norm layer, activation layer now an ``nn.Identity``) name pairs.
    fused_activations: list[tuple[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Converted layers per fastcnn class name, e.g. ``{"Conv2d": 20, "Linear": 1}``."""
        out: dict[str, int] = {}
        for layer in self.converted:
            out[layer.target] = out.get(layer.target, 0) + 1
        return out

    def summary(self) -> str:
        """One line per skipped layer kind, after a count of converted layers; for logs and printing."""
        lines = [f"fastcnn.convert: {len(self.converted)} layers converted {self.counts()}"]
        if self.fused_activations:
            lines.append(f"  {len(self.fused_activations)} activations fused into the batch norm before them")
        grouped: dict[tuple[str, str], list[str]] = {}
        for layer in self.skipped:
            grouped.setdefault((layer.kind, layer.reason), []).append(layer.name)
        for (kind, reason), names in grouped.items():
            shown = ", ".join(names[:3]) + (f", ... ({len(names)} in all)" if len(names) > 3 else "")
            lines.append(f"  left on torch: {kind} [{shown}]: {reason}")
        return "\n".join(lines)


def _tensor_problem(module: nn.Module) -> str | None:
    """Why fastcnn cannot run this module's own parameters/buffers, or None when it can."""
    for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
        if isinstance(tensor, nn.parameter.UninitializedTensorMixin):
            return f"{name} is not initialised yet (lazy module): run a forward pass first"
        if not tensor.is_floating_point():
            continue
        if tensor.dtype not in supported_dtypes(tensor.device):
            return f"{name} is {tensor.dtype} on {tensor.device.type}, which fastcnn's kernels do not take"
    return None


def _model_problem(model: nn.Module) -> str | None:
    """For parameterless layers (pools, activations) the dtype is only known at run time: judge by the
    model's floating parameters, and leave those layers on torch when fastcnn cannot run the model."""
    seen: set[tuple[str, torch.dtype]] = set()
    for tensor in model.parameters():
        if tensor.is_floating_point() and not isinstance(tensor, nn.parameter.UninitializedTensorMixin):
            seen.add((tensor.device.type, tensor.dtype))
    for device_type, dtype in sorted(seen, key=str):
        if dtype not in supported_dtypes(device_type):
            return f"the model has {dtype} parameters on {device_type}, which fastcnn's kernels do not take"
    return None


def _reason_to_skip(module: nn.Module, model_problem: str | None) -> str | None:
    """None when ``module`` (an exact match in _REPLACEMENTS) can be converted, else the reason."""
    if isinstance(module, nn.MaxPool2d) and module.return_indices:
        return "return_indices=True (the indices feed MaxUnpool2d): left on torch"
    problem = _tensor_problem(module)
    if problem is not None:
        return problem
    if not any(True for _ in module.parameters(recurse=False)) and model_problem is not None:
        return model_problem
    return None


def _skip_reason_for_other(module: nn.Module) -> str | None:
    """Reason a leaf layer with no fastcnn counterpart stays on torch (None: not worth reporting)."""
    # _fastcnn_passive: fastcnn's own markers (fuse's inference-only guard), which compute nothing.
    if isinstance(module, _PASSIVE) or getattr(type(module), "_fastcnn_passive", False):
        return None
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return None  # an empty container (ShuffleNet's stride-1 branch1) computes nothing
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        return "not initialised yet (lazy module): run a forward pass before converting"
    for kinds, reason in _SKIP_REASONS:
        if isinstance(module, kinds):
            return reason
    for torch_cls in _REPLACEMENTS:
        if isinstance(module, torch_cls):
            return (
                f"subclass of torch.nn.{torch_cls.__name__} that may change its forward: "
                "converting it could change the result"
            )
    return "no fastcnn kernel for this layer"


def _fuse_batchnorm_activations(model: nn.Module, report: ConvertReport) -> None:
    """In ``nn.Sequential`` containers (whose forward calls each child in turn), a fastcnn batch norm
    followed by an activation module takes the activation into its pass; the activation's slot becomes
    an ``nn.Identity``. A batch norm used in more than one place is left alone."""
    uses: dict[int, int] = {}
    for m in model.modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    for prefix, container in model.named_modules():
        if not isinstance(container, nn.Sequential) or type(container).forward is not nn.Sequential.forward:
            continue
        names = list(container._modules)
        for first, second in zip(names, names[1:], strict=False):
            bn, act = container._modules[first], container._modules[second]
            if type(bn) not in (fnn.BatchNorm2d, fnn.BatchNorm1d) or bn.activation is not None:
                continue
            activation = fnn.activation_of(act)
            if activation is None or uses[id(bn)] != 1:
                continue
            bn.activation = activation
            container._modules[second] = nn.Identity()
            qual = f"{prefix}." if prefix else ""
            report.fused_activations.append((qual + first, qual + second))


def convert(
    model: nn.Module,
    *,
    inplace: bool = False,
    strict: bool = False,
    fuse_activations: bool = False,
    memory_format: torch.memory_format | None = None,
) -> nn.Module:
    """Swaps the torch layers of ``model`` that fastcnn serves for :mod:`fastcnn.nn` layers.

    Converted: ``Conv2d`` (every padding mode, groups, dilation, "same"/"valid"), ``Linear``,
    ``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``BatchNorm1d``/``BatchNorm2d``, ``LayerNorm`` and
    torchvision's ConvNeXt ``LayerNorm2d``, the activation modules of
    :data:`fastcnn.ops.ACTIVATIONS` (``ReLU``, ``Sigmoid``, ``Tanh``; in-place ones too: fastcnn writes a
    new tensor, which is a correct substitute wherever the result is used) and ``Flatten``. Matching is
    on the exact class, so a subclass with its own ``forward`` is never replaced.
    Left on torch and listed in the report: ``BatchNorm3d``, ``SyncBatchNorm``, ``AdaptiveMaxPool2d``,
    ``MaxPool2d(return_indices=True)``, 1-D/3-D and transposed convs, parametrized layers, and layers
    whose dtype/device fastcnn's kernels do not take (float16 or bfloat16 on the CPU, any device but
    CPU/CUDA).

    Args:
        model: any ``nn.Module`` (may itself be a single layer).
        inplace: when True, ``model`` itself is changed and keeps the very same ``Parameter`` objects;
            when False (default), a deep copy is converted and ``model`` is untouched.
        strict: raise ``ValueError`` listing the skipped layers instead of leaving them on torch.
        fuse_activations: also fuse each activation module that follows a batch norm in an
            ``nn.Sequential`` (torchvision's ``Conv2dNormActivation``) into the batch norm's pass, for
            training and inference alike; the activation's slot becomes ``nn.Identity`` (forward hooks on
            it no longer run). Listed in the report's ``fused_activations``.
        memory_format: ``torch.channels_last`` keeps activations channels_last through the whole model:
            its 4-D parameters and buffers are stored channels_last, 4-D tensor inputs are converted once
            on entry and 4-D outputs are returned in the default (NCHW) layout on exit, so the layers
            inside convert nothing (fastcnn's CUDA convolutions compute in channels_last and would
            otherwise convert each NCHW input and output). ``None`` (default) leaves layouts as they are.

    Returns:
        The converted model (``model`` itself when ``inplace``). Its :class:`ConvertReport` is attached
        as ``.fastcnn_convert_report``, and a summary is logged (logger ``fastcnn.convert``, INFO; skips
        are logged at WARNING when ``strict`` is off and something was skipped).
        Functional calls inside ``forward`` (``F.relu``, ``x + y``) are not touched; see
        :func:`fastcnn.fuse` for graph-level rewriting.

    Example:
        >>> model = fastcnn.convert(torchvision.models.resnet50())
        >>> print(model.fastcnn_convert_report.summary())
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if memory_format not in (None, torch.channels_last):
        raise ValueError(f"memory_format must be None or torch.channels_last, got {memory_format}")
    if not inplace:
        model = copy.deepcopy(model)
    report = _convert_layers(model, fuse_activations=fuse_activations)
    if strict and report.skipped:
        raise ValueError("fastcnn.convert(strict=True) could not convert every layer:\n" + report.summary())
    _log_report(report)
    model.fastcnn_convert_report = report
    if memory_format is torch.channels_last:
        _keep_channels_last(model)
    return model


def _map_4d(value: Any, memory_format: torch.memory_format) -> Any:
    if isinstance(value, torch.Tensor):
        return value.contiguous(memory_format=memory_format) if value.dim() == 4 else value
    if isinstance(value, tuple | list):
        return type(value)(_map_4d(v, memory_format) for v in value)
    if isinstance(value, dict):
        return {k: _map_4d(v, memory_format) for k, v in value.items()}
    return value


def _inputs_to_channels_last(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return _map_4d(args, torch.channels_last), _map_4d(kwargs, torch.channels_last)


def _outputs_to_default_layout(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    return _map_4d(output, torch.contiguous_format)


def _keep_channels_last(model: nn.Module) -> None:
    """convert(memory_format=torch.channels_last): layouts change at the model's edges only."""
    model.to(memory_format=torch.channels_last)
    if getattr(model, "_fastcnn_channels_last", False):
        return  # converted before: its hooks are in place
    model.register_forward_pre_hook(_inputs_to_channels_last, with_kwargs=True)
    model.register_forward_hook(_outputs_to_default_layout, with_kwargs=True)
    model._fastcnn_channels_last = True


def _convert_layers(model: nn.Module, *, fuse_activations: bool = False) -> ConvertReport:
    """:func:`convert`'s swap, in place, without its logging or the report attached: for callers
    (:func:`fastcnn.fuse`) that rewrite the model further and report on the result themselves."""
    report = ConvertReport()
    model_problem = _model_problem(model)
    parametrized: list[str] = []  # a parametrization's own modules are internals, not layers
    for name, module in model.named_modules(remove_duplicate=True):
        if any(name.startswith(p + ".") for p in parametrized):
            continue
        cls = type(module)
        if torch.nn.utils.parametrize.is_parametrized(module):
            parametrized.append(name)
            reason = "parametrized weight (torch.nn.utils.parametrize): left on torch"
            report.skipped.append(SkippedLayer(name, cls.__name__, reason))
            continue
        target = _REPLACEMENTS.get(cls)
        if target is not None:
            reason = _reason_to_skip(module, model_problem)
            if reason is None:
                # fastcnn.nn classes subclass their torch class and add only ``activation`` and forward,
                # so swapping the class (as torch's own lazy modules do) keeps every attribute, hook and
                # parameter object as it was.
                module.__class__ = target
                if target in (fnn.Conv2d, fnn.Linear, fnn.BatchNorm2d, fnn.BatchNorm1d):
                    module.activation = None
                report.converted.append(ConvertedLayer(name, cls.__name__, target.__name__))
            else:
                report.skipped.append(SkippedLayer(name, cls.__name__, reason))
            continue
        if cls in _FASTCNN_CLASSES or next(module.children(), None) is not None:
            continue  # already fastcnn, or a container whose children are visited on their own
        reason = _skip_reason_for_other(module)
        if reason is not None:
            report.skipped.append(SkippedLayer(name, cls.__name__, reason))
    if fuse_activations:
        _fuse_batchnorm_activations(model, report)
    return report


def _log_report(report: ConvertReport) -> None:
    logger.log(logging.WARNING if report.skipped else logging.INFO, "%s", report.summary())
