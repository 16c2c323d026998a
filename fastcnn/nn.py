"""fastcnn layers as ``torch.nn`` modules.

Each class subclasses its ``torch.nn`` counterpart, so constructor arguments, parameter initialisation,
``state_dict`` keys and ``isinstance`` checks are exactly PyTorch's; only ``forward`` changes, to run
fastcnn's kernels. A state_dict saved from ``torch.nn`` loads into ``fastcnn.nn`` and back unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch.nn.functional as F
from torch import Tensor, nn

from . import ops

__all__ = [
    "ACTIVATION_MODULES",
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv2d",
    "Flatten",
    "LayerNorm",
    "LayerNorm2d",
    "Linear",
    "MaxPool2d",
    "ResidualAdd",
    "activation_of",
    # and the module of each activation, generated from fastcnn.ops.ACTIVATIONS: ReLU, Sigmoid, ReLU6, ...
]


class Conv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` on fastcnn kernels, with an optional fused activation.

    Extra argument ``activation`` (None, a name in :data:`fastcnn.ops.ACTIVATIONS`, or one with its
    parameter such as ``"leaky_relu(0.1)"``) is applied in the conv's epilogue.
    ``forward(x, residual=None)`` also takes a residual added before the activation. padding_mode
    "zeros" is native; "reflect", "replicate" and "circular" pad the input first, as torch.nn does.
    """

    def __init__(self, *args, activation: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        ops.activation_code(activation)  # validate early: a typo should fail at construction
        self.activation = activation

    def forward(self, input: Tensor, residual: Tensor | None = None) -> Tensor:
        """``act(conv2d(input) + bias + residual)`` in one kernel.

        Args:
            input: ``[N, C_in, H, W]`` (NCHW or channels_last), in a dtype fastcnn's kernels take on its
                device (see :func:`fastcnn.ops.conv2d`).
            residual: optional tensor of the output's shape, ``[N, C_out, H_out, W_out]``, added in the
                epilogue after the bias and before ``self.activation`` (the ResNet join
                ``relu(conv(x) + identity)``). It is added, not broadcast: any other shape raises
                ``RuntimeError``. Gradients flow to it as to an ordinary add.

        Returns:
            ``[N, C_out, H_out, W_out]`` in ``input``'s dtype and memory format.
        """
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        else:
            padding = self.padding
        return ops.conv2d(
            input,
            self.weight,
            self.bias,
            self.stride,
            padding,
            self.dilation,
            self.groups,
            activation=self.activation,
            residual=residual,
        )

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return f"{extra}, activation={self.activation!r}" if self.activation else extra


class Linear(nn.Linear):
    """:class:`torch.nn.Linear` on fastcnn kernels, with an optional fused ``activation``."""

    def __init__(self, *args, activation: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        ops.activation_code(activation)
        self.activation = activation

    def forward(self, input: Tensor) -> Tensor:
        return ops.linear(input, self.weight, self.bias, activation=self.activation)

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return f"{extra}, activation={self.activation!r}" if self.activation else extra


class MaxPool2d(nn.MaxPool2d):
    """:class:`torch.nn.MaxPool2d` on fastcnn kernels."""

    def forward(self, input: Tensor):
        return ops.max_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
            return_indices=self.return_indices,
        )


class AvgPool2d(nn.AvgPool2d):
    """:class:`torch.nn.AvgPool2d` on fastcnn kernels."""

    def forward(self, input: Tensor) -> Tensor:
        return ops.avg_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """:class:`torch.nn.AdaptiveAvgPool2d` on fastcnn kernels."""

    def forward(self, input: Tensor) -> Tensor:
        return ops.adaptive_avg_pool2d(input, self.output_size)


class _BatchNormForward:
    """forward of torch.nn's batch norms on fastcnn's kernel, with an optional fused activation.

    Same semantics as ``torch.nn.modules.batchnorm._BatchNorm.forward``: batch statistics in training
    (or whenever there are no running statistics), running statistics updated in training when
    tracked (``momentum=None``: cumulative average), running statistics in evaluation. Unlike
    torch.nn, ``num_batches_tracked`` is only incremented once the call has succeeded.
    """

    def _init_activation(self, activation: str | None) -> None:
        ops.activation_code(activation)  # validate early: a typo should fail at construction
        self.activation = activation

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        tracking = self.training and self.track_running_stats and self.num_batches_tracked is not None
        momentum = 0.0 if self.momentum is None else self.momentum
        if tracking and self.momentum is None:
            momentum = 1.0 / (float(self.num_batches_tracked) + 1.0)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep_running = not self.training or self.track_running_stats
        out = ops.batch_norm(
            input,
            self.running_mean if keep_running else None,
            self.running_var if keep_running else None,
            self.weight,
            self.bias,
            use_batch_stats,
            momentum,
            self.eps,
            activation=self.activation,
        )
        if tracking:
            self.num_batches_tracked.add_(1)
        return out

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return f"{extra}, activation={self.activation!r}" if self.activation else extra


class BatchNorm2d(_BatchNormForward, nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` on fastcnn kernels, with an optional fused ``activation``
    (``act(bn(x))`` in one pass: None or a name in :data:`fastcnn.ops.ACTIVATIONS`).

    Buffers, state_dict keys, ``momentum=None``, ``affine=False`` and ``track_running_stats=False``
    behave as in torch.nn; NCHW and channels_last inputs; float16/bfloat16 (CUDA) with float32
    parameters and statistics.
    """

    def __init__(self, *args, activation: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_activation(activation)


class BatchNorm1d(_BatchNormForward, nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` (``[N, C]`` or ``[N, C, L]`` inputs) on fastcnn kernels, with an
    optional fused ``activation``; otherwise as :class:`BatchNorm2d`."""

    def __init__(self, *args, activation: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_activation(activation)


class LayerNorm(nn.LayerNorm):
    """:class:`torch.nn.LayerNorm` on fastcnn kernels (any ``normalized_shape``, ``elementwise_affine``
    and ``bias`` as in torch.nn)."""

    def forward(self, input: Tensor) -> Tensor:
        return ops.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


try:  # torchvision is optional; its ConvNeXt LayerNorm2d is what fastcnn's subclasses when it is there
    from torchvision.models.convnext import LayerNorm2d as _TorchvisionLayerNorm2d
except ImportError:  # pragma: no cover - torchvision is a test dependency
    _TorchvisionLayerNorm2d = nn.LayerNorm


class LayerNorm2d(_TorchvisionLayerNorm2d):
    """ConvNeXt's channels-first layer norm (``torchvision.models.convnext.LayerNorm2d``: ``[N, C, H, W]``
    normalised over ``C`` at each pixel) on fastcnn kernels, reading NCHW or channels_last in place
    instead of permuting to NHWC and back."""

    def forward(self, input: Tensor) -> Tensor:
        return ops.layer_norm2d(input, self.weight, self.bias, self.eps)


def _activation_module(act: ops.Activation) -> type[nn.Module]:
    """The fastcnn.nn subclass of an activation's torch.nn class, running fastcnn's elementwise op."""
    op = getattr(ops, act.name)

    def forward(self, input: Tensor) -> Tensor:
        return op(input)

    name = act.module.__name__
    doc = f":class:`torch.nn.{name}` on fastcnn kernels."
    if act.inplace_arg:
        doc += (
            " ``inplace=True`` is accepted but the output is always a new tensor (the input is left "
            "untouched), which is always a correct substitute."
        )
    forward.__qualname__ = f"{name}.forward"
    return type(name, (act.module,), {"__doc__": doc, "__module__": __name__, "forward": forward})


class GELU(nn.GELU):
    """:class:`torch.nn.GELU` on fastcnn kernels: ``approximate="none"`` runs the ``gelu`` kernel,
    ``"tanh"`` the ``gelu_tanh`` one."""

    def forward(self, input: Tensor) -> Tensor:
        return ops.gelu(input, approximate=self.approximate)


class LeakyReLU(nn.LeakyReLU):
    """:class:`torch.nn.LeakyReLU` on fastcnn kernels, with its ``negative_slope``. ``inplace=True`` is
    accepted but the output is always a new tensor (the input is left untouched)."""

    def forward(self, input: Tensor) -> Tensor:
        return ops.leaky_relu(input, self.negative_slope)


# torch.nn classes that stand for several registry rows (told apart by an attribute), or whose row has a
# parameter, get a written class.
_SHARED_MODULES: dict[type[nn.Module], type[nn.Module]] = {nn.GELU: GELU, nn.LeakyReLU: LeakyReLU}

#: The fastcnn.nn module of each activation in :data:`fastcnn.ops.ACTIVATIONS`, by activation name
#: (``ACTIVATION_MODULES["relu"] is fastcnn.nn.ReLU``; "gelu" and "gelu_tanh" share ``GELU``); each is
#: also this module's attribute.
ACTIVATION_MODULES: Mapping[str, type[nn.Module]] = MappingProxyType(
    {
        act.name: _SHARED_MODULES.get(act.module) or _activation_module(act)
        for act in ops.ACTIVATIONS.values()
        if act.module is not None
    }
)
globals().update({cls.__name__: cls for cls in ACTIVATION_MODULES.values()})
__all__ += sorted({cls.__name__ for cls in ACTIVATION_MODULES.values()})


def activation_of(module: nn.Module | None) -> str | None:
    """What the fused layers' ``activation=`` takes for the activation a torch.nn or fastcnn.nn activation
    module applies (``nn.GELU(approximate="tanh")`` -> "gelu_tanh", ``nn.LeakyReLU(0.2)`` ->
    "leaky_relu(0.2)"), or None for any other module."""
    for name, act in ops.ACTIVATIONS.items():
        if act.module is not None and act.matches_module(module, ACTIVATION_MODULES.get(name)):
            return act.of_module(module).spec
    return None


class Flatten(nn.Flatten):
    """:class:`torch.nn.Flatten`. Flattening is a view, so no kernel runs; it is here so a model can be
    built from ``fastcnn.nn`` alone."""


class ResidualAdd(nn.Module):
    """The residual join of a ResNet block: ``forward(x, identity) = act(x + identity)`` in one pass.

    ``activation`` is None or a name in :data:`fastcnn.ops.ACTIVATIONS` (ResNet uses "relu").
    """

    def __init__(self, activation: str | None = None) -> None:
        super().__init__()
        ops.activation_code(activation)
        self.activation = activation

    def forward(self, input: Tensor, identity: Tensor) -> Tensor:
        """``act(input + identity)`` in one pass.

        Args:
            input: the block's output (any shape).
            identity: the skip connection, of ``input``'s shape (no broadcasting).

        Returns:
            A new tensor of ``input``'s shape and dtype.
        """
        return ops.add(input, identity, activation=self.activation)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"
