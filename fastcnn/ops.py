"""Functional fastcnn ops: the Python face of ``torch.ops.fastcnn.*``.

Signatures mirror ``torch.nn.functional``. Each op runs fastcnn's own CPU or CUDA kernel, differentiates
through fastcnn's backward kernels (autograd formulas registered in C++ under ``csrc/autograd/`` for
conv2d, add and the activations, whose per-call cost matters on small layers, and with
``torch.library.register_autograd`` for the others) and has a fake (shape-only) kernel, so models built
from these ops run under ``torch.compile(fullgraph=True)``.

The conv, linear, batch-norm and add ops take a fused epilogue: ``activation`` (a name in
:data:`ACTIVATIONS`: "relu", "sigmoid", "tanh", "relu6", "silu", "hardswish", "hardsigmoid", "gelu",
"gelu_tanh", "leaky_relu", or None; "leaky_relu(0.2)" gives leaky_relu its ``negative_slope``, 0.01 by
default) and, for conv2d, a ``residual`` tensor added before the activation, all applied in the pass
that writes the output. The activations differentiated through their input (silu, hardswish,
hardsigmoid, gelu, gelu_tanh) need the pre-activation for backward, which a fused pass does not keep:
when autograd will differentiate the call, the op runs as the layer without activation followed by the
activation's own op; without autograd (inference, ``torch.no_grad()``) it is one fused pass.

Activations are one registry, :data:`ACTIVATIONS`: each row names an activation, its kernel code and
its PyTorch counterparts. The elementwise op of each (``relu``, ``sigmoid``, ``tanh``, ...), its fake kernel
and its autograd formula are generated from the row, and so are the :mod:`fastcnn.nn` modules,
:func:`fastcnn.convert`'s and :func:`fastcnn.fuse`'s mappings and the references the checks and
benchmarks compare with: adding an activation on the Python side is adding its row.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._prims_common import suggest_memory_format

from . import _extension  # noqa: F401 - registers the torch.ops.fastcnn.* schemas used below

__all__ = [
    "ACTIVATIONS",
    "NO_ACTIVATION",
    "Activation",
    "activation_code",
    "adaptive_avg_pool2d",
    "add",
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "layer_norm",
    "layer_norm2d",
    "leaky_relu",
    "linear",
    "max_pool2d",
    "resolve_activation",
    # and the elementwise op of each activation, generated from ACTIVATIONS: relu, sigmoid, tanh, relu6, ...
]

IntPair = int | Sequence[int]

_ops = torch.ops.fastcnn
_aten = torch.ops.aten


# ----------------------------------------------------------------------------------------------------------
# the activation registry
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activation:
    """One activation fastcnn's kernels apply, and its PyTorch counterparts.

    ``fastcnn::activation_backward`` differentiates through one saved tensor: the forward's output where
    the derivative can be written in it (``grad_from_output``: relu, sigmoid, tanh, relu6), else the
    forward's input; ``derivative`` and ``reference_backward`` take that same tensor.
    """

    #: The name the fused ops' ``activation=`` takes, and of its elementwise op ``fastcnn::<name>``.
    name: str
    #: The C++ kernels' code (the X-macro table of csrc/ fixes it; 0 is no activation). A parametrised
    #: activation's code also carries its parameter, in the high 56 bits.
    code: int
    #: The docstring's first sentence for the generated op and module.
    doc: str
    #: PyTorch's op: the reference fastcnn's results are compared with.
    reference: Callable[[Tensor], Tensor]
    #: d act / d x as a function of the saved tensor (output or input), in the form the kernels compute it.
    derivative: Callable[[Tensor], Tensor]
    #: PyTorch's backward op, ``(grad_output, saved) -> grad_input``, as autograd runs it.
    reference_backward: Callable[[Tensor, Tensor], Tensor]
    #: The ``torch.nn`` class: :func:`fastcnn.convert` replaces it with the fastcnn.nn subclass.
    module: type[nn.Module] | None = None
    #: torch / torch.nn.functional callables that :func:`fastcnn.fuse` folds into a conv/linear epilogue.
    functions: tuple[Callable[..., Tensor], ...] = ()
    #: Tensor method names that :func:`fastcnn.fuse` folds likewise.
    methods: tuple[str, ...] = ()
    #: Whether torch.nn.functional's op (and the torch.nn module) takes ``inplace``.
    inplace_arg: bool = False
    #: Whether the derivative is written in the output (else in the input): which tensor backward saves.
    grad_from_output: bool = True
    #: Attributes a ``module`` instance must have to be this activation (nn.GELU's ``approximate``).
    module_attrs: tuple[tuple[str, object], ...] = ()
    #: A parametrised activation's parameter: its name (torch's argument and module attribute,
    #: "negative_slope"), this configuration's value and the default; None for the plain ones.
    parameter_name: str | None = None
    parameter: float | None = None
    default_parameter: float | None = None
    #: Builds the configuration with another parameter value (parametrised activations only).
    factory: Callable[[float], Activation] | None = None

    @property
    def spec(self) -> str:
        """What ``activation=`` takes for this configuration: the name, with the parameter in
        parentheses where it is not the default (``"leaky_relu(0.2)"``)."""
        if self.parameter is None or self.parameter == self.default_parameter:
            return self.name
        return f"{self.name}({self.parameter!r})"

    def with_parameter(self, value: float) -> Activation:
        """This activation configured with ``value`` (its ``parameter_name``); ValueError for a plain
        activation or a value that is not a finite number."""
        if self.factory is None:
            raise ValueError(f"activation {self.name!r} takes no parameter")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{self.name}'s {self.parameter_name} must be a finite number, got {value!r}")
        try:
            return self.factory(float(value))
        except ValueError as exc:
            raise ValueError(f"{self.name}'s {self.parameter_name} {exc}") from None

    def matches_module(self, module: nn.Module, fastcnn_class: type[nn.Module] | None = None) -> bool:
        """Whether ``module`` (an instance of ``module`` or of its fastcnn.nn class) is this activation."""
        return type(module) in (self.module, fastcnn_class) and all(
            getattr(module, k, None) == v for k, v in self.module_attrs
        )

    def of_module(self, module: nn.Module) -> Activation:
        """The configuration a matching module applies (its parameter attribute, for leaky_relu)."""
        if self.parameter_name is None:
            return self
        return self.with_parameter(getattr(module, self.parameter_name))


def _identity(t: Tensor) -> Tensor:
    return t


def _gelu_tanh_derivative(x: Tensor) -> Tensor:
    beta, kappa = (2 / torch.pi) ** 0.5, 0.044715
    t = torch.tanh(beta * (x + kappa * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * beta * (1 + 3 * kappa * x * x)


_KIND_BITS = 5
_EXPONENT_BITS = 6
_MANTISSA_MASK = (1 << 52) - 1


def _packed_code(kind: int, parameter: float) -> int:
    """A parametrised activation's kernel code, which carries its float64 parameter exactly: the row's code
    in the low 5 bits, then the parameter's unbiased exponent + 32 in 6 bits (0 for a zero), its 52
    mantissa bits and its sign in the top bit, as a signed int64 (common/activation.h decodes it). Only
    zero and magnitudes in [2**-31, 2**32) fit; ValueError otherwise."""
    if parameter != 0 and not (2.0**-31 <= abs(parameter) < 2.0**32):
        raise ValueError(f"must be 0 or of magnitude in [2**-31, 2**32), got {parameter!r}")
    (bits,) = struct.unpack("<Q", struct.pack("<d", parameter))
    exponent = 0 if parameter == 0 else ((bits >> 52) & 0x7FF) - 1023 + 32
    code = (bits & (1 << 63)) | ((bits & _MANTISSA_MASK) << (_KIND_BITS + _EXPONENT_BITS))
    code |= (exponent << _KIND_BITS) | kind
    return code - (1 << 64) if code >> 63 else code


def _leaky_relu(negative_slope: float) -> Activation:
    """The leaky_relu row configured with ``negative_slope``. A slope >= 0 keeps the input's sign, so the
    derivative is read from the output as relu's is; a negative slope is differentiated through the input."""

    def reference(x: Tensor) -> Tensor:
        return F.leaky_relu(x, negative_slope)

    def derivative(s: Tensor) -> Tensor:
        return torch.where(s > 0, torch.ones_like(s), torch.full_like(s, negative_slope))

    def reference_backward(grad_output: Tensor, saved: Tensor) -> Tensor:
        return _aten.leaky_relu_backward(grad_output, saved, negative_slope, negative_slope >= 0)

    return Activation(
        name="leaky_relu",
        code=_packed_code(10, negative_slope),
        doc="Leaky ReLU, ``x if x > 0 else negative_slope * x``.",
        reference=reference,
        derivative=derivative,
        reference_backward=reference_backward,
        module=nn.LeakyReLU,
        functions=(F.leaky_relu, F.leaky_relu_),
        inplace_arg=True,
        grad_from_output=negative_slope >= 0,
        parameter_name="negative_slope",
        parameter=negative_slope,
        default_parameter=0.01,
        factory=_leaky_relu,
    )


#: No activation: the code and identity the fused ops use for ``activation=None`` (or "none").
NO_ACTIVATION = Activation(
    name="none",
    code=0,
    doc="No activation.",
    reference=_identity,
    derivative=torch.ones_like,
    reference_backward=lambda grad_output, output: grad_output,
)

#: Every activation the fused ops take, by name (lower case), in kernel-code order.
ACTIVATIONS: Mapping[str, Activation] = MappingProxyType(
    {
        a.name: a
        for a in (
            Activation(
                name="relu",
                code=1,
                doc="ReLU, ``max(x, 0)``.",
                reference=torch.relu,
                derivative=lambda y: (y > 0).to(y.dtype),
                reference_backward=lambda grad_output, output: _aten.threshold_backward(
                    grad_output, output, 0
                ),
                module=nn.ReLU,
                functions=(F.relu, F.relu_, torch.relu, torch.relu_),
                methods=("relu", "relu_"),
                inplace_arg=True,
            ),
            Activation(
                name="sigmoid",
                code=2,
                doc="Logistic sigmoid, ``1 / (1 + exp(-x))``.",
                reference=torch.sigmoid,
                derivative=lambda y: y * (1 - y),
                reference_backward=_aten.sigmoid_backward,
                module=nn.Sigmoid,
                functions=(torch.sigmoid, F.sigmoid),
                methods=("sigmoid", "sigmoid_"),
            ),
            Activation(
                name="tanh",
                code=3,
                doc="Hyperbolic tangent.",
                reference=torch.tanh,
                derivative=lambda y: (1 - y) * (1 + y),
                reference_backward=_aten.tanh_backward,
                module=nn.Tanh,
                functions=(torch.tanh, F.tanh),
                methods=("tanh", "tanh_"),
            ),
            Activation(
                name="relu6",
                code=4,
                doc="ReLU6, ``min(max(x, 0), 6)`` (MobileNet's activation).",
                reference=F.relu6,
                derivative=lambda y: ((y > 0) & (y < 6)).to(y.dtype),
                # hardtanh_backward reads its input; 0 < x < 6 exactly where 0 < y < 6, so y serves.
                reference_backward=lambda grad_output, output: _aten.hardtanh_backward(
                    grad_output, output, 0.0, 6.0
                ),
                module=nn.ReLU6,
                functions=(F.relu6,),
                inplace_arg=True,
            ),
            Activation(
                name="silu",
                code=5,
                doc="SiLU (swish), ``x * sigmoid(x)`` (EfficientNet's activation).",
                reference=F.silu,
                derivative=lambda x: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))),
                reference_backward=_aten.silu_backward,
                module=nn.SiLU,
                functions=(F.silu,),
                inplace_arg=True,
                grad_from_output=False,
            ),
            Activation(
                name="hardswish",
                code=6,
                doc="Hardswish, ``x * relu6(x + 3) / 6`` (MobileNetV3's activation).",
                reference=F.hardswish,
                # PyTorch's derivative at the kinks: 0 at x = -3, 1 at x = 3.
                derivative=lambda x: torch.where(
                    x <= -3, torch.zeros_like(x), torch.where(x < 3, x / 3 + 0.5, torch.ones_like(x))
                ),
                reference_backward=_aten.hardswish_backward,
                module=nn.Hardswish,
                functions=(F.hardswish,),
                inplace_arg=True,
                grad_from_output=False,
            ),
            Activation(
                name="hardsigmoid",
                code=7,
                doc="Hardsigmoid, ``relu6(x + 3) / 6``.",
                reference=F.hardsigmoid,
                # PyTorch's hardsigmoid_backward multiplies by the float32 1/6 in every dtype; so do we.
                derivative=lambda x: (
                    ((x > -3) & (x < 3)).to(x.dtype) * torch.tensor(1 / 6, dtype=torch.float32).item()
                ),
                reference_backward=_aten.hardsigmoid_backward,
                module=nn.Hardsigmoid,
                functions=(F.hardsigmoid,),
                inplace_arg=True,
                grad_from_output=False,
            ),
            Activation(
                name="gelu",
                code=8,
                doc="GELU, ``x * Phi(x)`` with the exact normal CDF (``approximate='none'``).",
                reference=F.gelu,
                derivative=lambda x: (
                    0.5 * (1 + torch.erf(x / 2**0.5)) + x * torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5
                ),
                reference_backward=lambda grad_output, input: _aten.gelu_backward(grad_output, input),
                module=nn.GELU,
                functions=(F.gelu,),
                grad_from_output=False,
                module_attrs=(("approximate", "none"),),
            ),
            Activation(
                name="gelu_tanh",
                code=9,
                doc="GELU with the tanh approximation (``approximate='tanh'``).",
                reference=lambda x: F.gelu(x, approximate="tanh"),
                derivative=_gelu_tanh_derivative,
                reference_backward=lambda grad_output, input: _aten.gelu_backward(
                    grad_output, input, approximate="tanh"
                ),
                module=nn.GELU,
                grad_from_output=False,
                module_attrs=(("approximate", "tanh"),),
            ),
            _leaky_relu(0.01),
        )
    }
)


_CONFIGURED = re.compile(r"^\s*(\w+)\s*\(\s*(?:(\w+)\s*=\s*)?([^()]*?)\s*\)\s*$")


def resolve_activation(name: str | Activation | None) -> Activation:
    """The registry row of an activation name (any case; None or "none": :data:`NO_ACTIVATION`), or of a
    parametrised one with its parameter: ``"leaky_relu(0.2)"`` or ``"leaky_relu(negative_slope=0.2)"``.
    An :class:`Activation` is returned as it is. Raises ValueError naming the accepted names."""
    if isinstance(name, Activation):
        return name
    if name is None:
        return NO_ACTIVATION
    if not isinstance(name, str):
        accepted = ", ".join(["None", *map(repr, ACTIVATIONS)])
        raise ValueError(f"activation must be one of {accepted}; got {name!r}")
    act = _RESOLVED.get(name)
    if act is None:
        act = _resolve_name(name)
        # Every fused op call resolves its activation= string: remember it (outside compiled code, where
        # writing a global would be a side effect to trace).
        if len(_RESOLVED) < 1024 and not torch.compiler.is_compiling():
            _RESOLVED[name] = act
    return act


_RESOLVED: dict[str, Activation] = {}


def _resolve_name(name: str) -> Activation:
    name = name.lower()
    if name == NO_ACTIVATION.name:
        return NO_ACTIVATION
    configured = _CONFIGURED.match(name)
    row = ACTIVATIONS.get(configured.group(1) if configured else name)
    if row is None:
        accepted = ", ".join(["None", *map(repr, ACTIVATIONS)])
        raise ValueError(f"activation must be one of {accepted}; got {name!r}")
    if configured is None:
        return row
    if row.parameter_name is None:
        raise ValueError(f"activation {row.name!r} takes no parameter; got {name!r}")
    keyword, value = configured.group(2), configured.group(3)
    if keyword is not None and keyword != row.parameter_name:
        raise ValueError(f"{row.name}'s parameter is {row.parameter_name}; got {name!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{row.name}'s {row.parameter_name} must be a finite number; got {name!r}") from None
    return row.with_parameter(number)


def activation_code(activation: str | Activation | None) -> int:
    """The kernel code of an activation name; raises ValueError naming the accepted names."""
    return resolve_activation(activation).code


def _separate_activation(act: Activation, *operands: Tensor | None) -> bool:
    """Whether a fused op must run its activation as a separate op: the activation is differentiated
    through its input, which a fused pass does not keep, and autograd will differentiate this call."""
    return (
        not act.grad_from_output
        and torch.is_grad_enabled()
        and any(isinstance(t, Tensor) and t.requires_grad for t in operands)
    )


def _apply_activation(act: Activation, out: Tensor) -> Tensor:
    op = getattr(_ops, act.name)
    return op(out) if act.parameter is None else op(out, act.parameter)


def _pair(value: IntPair, name: str) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    if not isinstance(value, (list, tuple, torch.Size)):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    values = list(value)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(isinstance(v, int) for v in values):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return values


def _check_tensor(t: Tensor, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _batched(input: Tensor, name: str = "input") -> bool:
    """True when input is 4-D; False for an unbatched 3-D input; ValueError otherwise."""
    _check_tensor(input, name)
    if input.dim() not in (3, 4):
        raise ValueError(
            f"{name} must be 4-D (N, C, H, W) or unbatched 3-D (C, H, W), got shape {tuple(input.shape)}"
        )
    return input.dim() == 4


def _empty_like_format(input: Tensor, shape: Sequence[int], dtype: torch.dtype | None = None) -> Tensor:
    """An empty tensor of `shape` in input's memory format, as the C++ kernels allocate it."""
    out = input.new_empty(shape, dtype=dtype or input.dtype)
    if input.dim() == 4 and suggest_memory_format(input) == torch.channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _conv_extent(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _pool_extent(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _check_devices(ref: Tensor, ref_name: str, **others: Tensor | None) -> None:
    """The fake (Meta) kernels run whenever any argument is on "meta": check what the C++ kernels check."""
    for name, t in others.items():
        if t is not None:
            torch._check(
                t.device == ref.device,
                lambda name=name, t=t: f"fastcnn: {name} is on {t.device} but {ref_name} is on {ref.device}",
            )


# ----------------------------------------------------------------------------------------------------------
# conv2d
# ----------------------------------------------------------------------------------------------------------


def _resolve_padding(
    input: Tensor, weight: Tensor, padding: str | IntPair, stride: list[int], dilation: list[int]
) -> tuple[Tensor, list[int]]:
    """Turns F.conv2d's padding forms into symmetric padding, pre-padding the input for an odd "same"."""
    if not isinstance(padding, str):
        return input, _pair(padding, "padding")
    if padding == "valid":
        return input, [0, 0]
    if padding != "same":
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid'; got {padding!r}")
    if stride != [1, 1]:
        raise ValueError("padding='same' is not supported for strided convolutions (stride must be 1)")
    symmetric, extra = [], []
    for dim, d in zip((2, 3), dilation, strict=True):
        total = d * (weight.shape[dim] - 1)
        symmetric.append(total // 2)
        extra.append(total - 2 * (total // 2))
    if any(extra):
        # An even kernel needs one more row/column on the far side, as PyTorch does it.
        input = F.pad(input, [0, extra[1], 0, extra[0]])
    return input, symmetric


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: str | IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    activation: str | None = None,
    residual: Tensor | None = None,
) -> Tensor:
    """2-D convolution with a fused epilogue: ``act(conv2d(input, weight) + bias + residual)``.

    Arguments follow :func:`torch.nn.functional.conv2d`; the epilogue (bias, residual add, activation)
    runs in the convolution's own kernel, so it costs no extra pass over the output.

    Args:
        input: ``[N, C_in, H, W]``, or unbatched ``[C_in, H, W]``; NCHW (contiguous) or channels_last.
            An empty batch (N = 0) gives an empty output, as in PyTorch.
        weight: ``[C_out, C_in / groups, kH, kW]``.
        bias: optional ``[C_out]``.
        stride, dilation: an int or a pair of ints.
        padding: an int, a pair of ints, ``"same"`` (stride 1 only) or ``"valid"``.
        groups: ``C_in`` and ``C_out`` must both be divisible by it; ``groups == C_in`` is a depthwise
            conv.
        activation: None, a name in :data:`ACTIVATIONS` (``"relu"``, ``"silu"``, ...), or one with its
            parameter, such as ``"leaky_relu(0.1)"``; applied after the bias and the residual.
        residual: optional tensor of the output's shape (no broadcasting), added before the activation:
            the ResNet join ``relu(conv(x) + identity)``.

    Dtypes: float32 and float64 on the CPU (float16/bfloat16 CPU inputs under ``torch.autocast`` run in
    float32); float16, bfloat16, float32 and float64 on CUDA. ``input``, ``weight``, ``bias`` and
    ``residual`` share one dtype and device. Differentiable in ``input``, ``weight``, ``bias`` and
    ``residual``.

    Returns:
        ``[N, C_out, H_out, W_out]`` (``[C_out, H_out, W_out]`` for an unbatched input) in ``input``'s
        dtype and memory format.

    Raises:
        TypeError: ``input`` or ``weight`` is not a tensor.
        ValueError: ``input`` is not 3-D or 4-D; ``stride``, ``padding`` or ``dilation`` is not one of
            the forms above (the message names it); ``padding="same"`` with a stride other than 1; an
            unknown ``activation`` or a bad parameter for it.
        RuntimeError: a dtype the device's kernels do not take (e.g. float16 on the CPU outside
            autocast, an integer tensor); tensors of different dtypes or devices; ``input``'s channels
            do not match ``weight.shape[1] * groups``; an output smaller than 1x1; a ``residual`` whose
            shape is not the output's.

    Example:
        >>> x = torch.randn(2, 16, 32, 32)
        >>> w = torch.randn(32, 16, 3, 3) / 12
        >>> y = fastcnn.ops.conv2d(x, w, torch.zeros(32), padding=1, activation="relu")
        >>> y.shape
        torch.Size([2, 32, 32, 32])
        >>> z = fastcnn.ops.conv2d(y, torch.randn(32, 32, 3, 3) / 17, padding=1, activation="relu",
        ...                        residual=y)  # relu(conv(y) + y) in one kernel
    """
    batched = _batched(input)
    _check_tensor(weight, "weight")
    act = resolve_activation(activation)
    stride_, dilation_ = _pair(stride, "stride"), _pair(dilation, "dilation")
    if not batched:
        input = input.unsqueeze(0)
        residual = residual.unsqueeze(0) if residual is not None and residual.dim() == 3 else residual
    input, padding_ = _resolve_padding(input, weight, padding, stride_, dilation_)
    if _separate_activation(act, input, weight, bias, residual):
        out = _ops.conv2d(input, weight, bias, stride_, padding_, dilation_, groups, 0, residual)
        out = _apply_activation(act, out)
    else:
        out = _ops.conv2d(input, weight, bias, stride_, padding_, dilation_, groups, act.code, residual)
    return out if batched else out.squeeze(0)


@torch.library.register_fake("fastcnn::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups, activation, residual):
    _check_devices(input, "input", weight=weight, bias=bias, residual=residual)
    torch._check(input.dim() == 4, lambda: f"fastcnn: input must be 4-D, got {input.dim()}-D")
    torch._check(
        weight.dim() == 4 and weight.shape[1] * groups == input.shape[1],
        lambda: (
            f"fastcnn: input has {input.shape[1]} channels but weight {tuple(weight.shape)} "
            f"with groups={groups} expects {weight.shape[1] * groups}"
        ),
    )
    out_h = _conv_extent(input.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    out_w = _conv_extent(input.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    torch._check(out_h > 0 and out_w > 0, lambda: "fastcnn: conv2d output size would be < 1")
    return _empty_like_format(input, (input.shape[0], weight.shape[0], out_h, out_w))


# fastcnn::conv2d's autograd formula is registered in C++ (csrc/autograd/conv2d.cpp): a Python
# registration's per-call cost was most of a small conv's time.


@torch.library.register_fake("fastcnn::conv2d_backward")
def _conv2d_backward_fake(
    grad_output, input, weight, output, stride, padding, dilation, groups, activation, output_mask
):
    _check_devices(input, "input", grad_output=grad_output, weight=weight, output=output)
    grad_input = _empty_like_format(input, input.shape) if output_mask[0] else input.new_empty(0)
    grad_weight = weight.new_empty(weight.shape) if output_mask[1] else weight.new_empty(0)
    grad_bias = weight.new_empty(weight.shape[0]) if output_mask[2] else weight.new_empty(0)
    return grad_input, grad_weight, grad_bias


# ----------------------------------------------------------------------------------------------------------
# linear
# ----------------------------------------------------------------------------------------------------------


def linear(
    input: Tensor, weight: Tensor, bias: Tensor | None = None, *, activation: str | None = None
) -> Tensor:
    """Fully connected layer with a fused epilogue: ``act(input @ weight.T + bias)``.

    ``input`` is ``[*, in_features]`` (any number of leading dims), ``weight`` is
    ``[out_features, in_features]``; ``activation`` is None or a name in :data:`ACTIVATIONS`.
    """
    _check_tensor(input, "input")
    _check_tensor(weight, "weight")
    act = resolve_activation(activation)
    if _separate_activation(act, input, weight, bias):
        return _apply_activation(act, _ops.linear(input, weight, bias, 0))
    return _ops.linear(input, weight, bias, act.code)


@torch.library.register_fake("fastcnn::linear")
def _linear_fake(input, weight, bias, activation):
    _check_devices(input, "input", weight=weight, bias=bias)
    torch._check(
        input.dim() >= 1 and weight.dim() == 2 and input.shape[-1] == weight.shape[1],
        lambda: f"fastcnn: linear input's last dim ({input.shape[-1]}) must equal weight.shape[1]",
    )
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


def _linear_setup_context(ctx, inputs, output):
    input, weight, bias, activation = inputs
    ctx.activation = activation
    ctx.has_bias = bias is not None
    ctx.save_for_backward(input, weight, output if activation else None)


def _linear_backward(ctx, grad_output):
    input, weight, output = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias]
    if not any(mask):
        return None, None, None, None
    grads = _ops.linear_backward(grad_output, input, weight, output, ctx.activation, mask)
    grad_input, grad_weight, grad_bias = (g if m else None for g, m in zip(grads, mask, strict=True))
    return grad_input, grad_weight, grad_bias, None


torch.library.register_autograd("fastcnn::linear", _linear_backward, setup_context=_linear_setup_context)


@torch.library.register_fake("fastcnn::linear_backward")
def _linear_backward_fake(grad_output, input, weight, output, activation, output_mask):
    _check_devices(input, "input", grad_output=grad_output, weight=weight, output=output)
    grad_input = input.new_empty(input.shape) if output_mask[0] else input.new_empty(0)
    grad_weight = weight.new_empty(weight.shape) if output_mask[1] else weight.new_empty(0)
    grad_bias = weight.new_empty(weight.shape[0]) if output_mask[2] else weight.new_empty(0)
    return grad_input, grad_weight, grad_bias


# ----------------------------------------------------------------------------------------------------------
# pooling
# ----------------------------------------------------------------------------------------------------------


def _pool_args(kernel_size: IntPair, stride: IntPair | None, padding: IntPair) -> tuple[list[int], ...]:
    kernel = _pair(kernel_size, "kernel_size")
    if stride is None or (not isinstance(stride, int) and len(stride) == 0):
        stride_ = kernel
    else:
        stride_ = _pair(stride, "stride")
    return kernel, stride_, _pair(padding, "padding")


def max_pool2d(
    input: Tensor,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """2-D max pooling, as :func:`torch.nn.functional.max_pool2d` (stride defaults to kernel_size).

    With ``return_indices=True`` also returns the int64 flat index (``h * W + w``) of each maximum.
    """
    batched = _batched(input)
    kernel, stride_, padding_ = _pool_args(kernel_size, stride, padding)
    x = input if batched else input.unsqueeze(0)
    out, indices = _ops.max_pool2d(x, kernel, stride_, padding_, _pair(dilation, "dilation"), ceil_mode)
    if not batched:
        out, indices = out.squeeze(0), indices.squeeze(0)
    return (out, indices) if return_indices else out


def _pool_fake_shape(input, kernel, stride, padding, dilation, ceil_mode):
    torch._check(input.dim() == 4, lambda: f"fastcnn: input must be 4-D, got {input.dim()}-D")
    out_h = _pool_extent(input.shape[2], kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    out_w = _pool_extent(input.shape[3], kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    torch._check(out_h > 0 and out_w > 0, lambda: "fastcnn: pooling output size would be < 1")
    return (input.shape[0], input.shape[1], out_h, out_w)


@torch.library.register_fake("fastcnn::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    shape = _pool_fake_shape(input, kernel_size, stride, padding, dilation, ceil_mode)
    return _empty_like_format(input, shape), _empty_like_format(input, shape, torch.int64)


def _max_pool2d_setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(inputs[0], output[1])


def _max_pool2d_backward(ctx, grad_output, _grad_indices):
    input, indices = ctx.saved_tensors
    return _ops.max_pool2d_backward(grad_output, input, indices), None, None, None, None, None


torch.library.register_autograd(
    "fastcnn::max_pool2d", _max_pool2d_backward, setup_context=_max_pool2d_setup_context
)


@torch.library.register_fake("fastcnn::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, input, indices):
    _check_devices(input, "input", grad_output=grad_output, indices=indices)
    return _empty_like_format(input, input.shape)


def avg_pool2d(
    input: Tensor,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """2-D average pooling, as :func:`torch.nn.functional.avg_pool2d` (stride defaults to kernel_size)."""
    batched = _batched(input)
    kernel, stride_, padding_ = _pool_args(kernel_size, stride, padding)
    if divisor_override is not None and divisor_override == 0:
        raise ValueError("divisor_override must be non-zero")
    x = input if batched else input.unsqueeze(0)
    out = _ops.avg_pool2d(x, kernel, stride_, padding_, ceil_mode, count_include_pad, divisor_override)
    return out if batched else out.squeeze(0)


@torch.library.register_fake("fastcnn::avg_pool2d")
def _avg_pool2d_fake(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return _empty_like_format(input, _pool_fake_shape(input, kernel_size, stride, padding, [1, 1], ceil_mode))


def _avg_pool2d_setup_context(ctx, inputs, output):
    ctx.pool_args = inputs[1:]
    ctx.save_for_backward(inputs[0])


def _avg_pool2d_backward(ctx, grad_output):
    (input,) = ctx.saved_tensors
    grad_input = _ops.avg_pool2d_backward(grad_output, input, *ctx.pool_args)
    return grad_input, None, None, None, None, None, None


torch.library.register_autograd(
    "fastcnn::avg_pool2d", _avg_pool2d_backward, setup_context=_avg_pool2d_setup_context
)


@torch.library.register_fake("fastcnn::avg_pool2d_backward")
def _avg_pool2d_backward_fake(
    grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
):
    _check_devices(input, "input", grad_output=grad_output)
    return _empty_like_format(input, input.shape)


def adaptive_avg_pool2d(input: Tensor, output_size: int | Sequence[int | None]) -> Tensor:
    """Adaptive average pooling to ``output_size``: an int, or a pair (None keeps that input size)."""
    batched = _batched(input)
    if isinstance(output_size, int):
        size = [output_size, output_size]
    else:
        size = list(output_size)
        if len(size) != 2:
            raise ValueError(f"output_size must be an int or a pair, got {output_size!r}")
        size = [input.shape[-2 + i] if s is None else s for i, s in enumerate(size)]
    if any(not isinstance(s, int) or s <= 0 for s in size):
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    x = input if batched else input.unsqueeze(0)
    out = _ops.adaptive_avg_pool2d(x, size)
    return out if batched else out.squeeze(0)


@torch.library.register_fake("fastcnn::adaptive_avg_pool2d")
def _adaptive_avg_pool2d_fake(input, output_size):
    torch._check(input.dim() == 4, lambda: f"fastcnn: input must be 4-D, got {input.dim()}-D")
    return _empty_like_format(input, (input.shape[0], input.shape[1], output_size[0], output_size[1]))


def _adaptive_avg_pool2d_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _adaptive_avg_pool2d_backward(ctx, grad_output):
    (input,) = ctx.saved_tensors
    return _ops.adaptive_avg_pool2d_backward(grad_output, input), None


torch.library.register_autograd(
    "fastcnn::adaptive_avg_pool2d",
    _adaptive_avg_pool2d_backward,
    setup_context=_adaptive_avg_pool2d_setup_context,
)


@torch.library.register_fake("fastcnn::adaptive_avg_pool2d_backward")
def _adaptive_avg_pool2d_backward_fake(grad_output, input):
    _check_devices(input, "input", grad_output=grad_output)
    return _empty_like_format(input, input.shape)


# ----------------------------------------------------------------------------------------------------------
# batch norm
# ----------------------------------------------------------------------------------------------------------


def _stats_dtype(input: Tensor) -> torch.dtype:
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    activation: str | None = None,
) -> Tensor:
    """Batch normalisation fused with an activation: ``act(F.batch_norm(...))`` in one pass over the input
    (forward) and one pair of passes (backward).

    Arguments follow :func:`torch.nn.functional.batch_norm`: ``input`` is ``[N, C, *]`` (NCHW or
    channels_last), ``weight``, ``bias`` and the running statistics are ``[C]``. With ``training=True``
    the batch's statistics normalise, and running_mean/running_var, when given, are updated in place
    (``running = (1 - momentum) * running + momentum * batch``, the batch variance unbiased); with
    ``training=False`` the running statistics normalise. ``activation`` is None or a name in
    :data:`ACTIVATIONS`. A float16/bfloat16 input (CUDA) takes parameters in its own dtype or in float32;
    statistics are float32 (float64 for a float64 input). The running statistics are only written once
    every argument has been checked.
    """
    _check_tensor(input, "input")
    act = resolve_activation(activation)
    if momentum is None or not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"momentum must be a float in [0, 1], got {momentum!r}")
    separate = _separate_activation(act, input, weight, bias)
    code = 0 if separate else act.code
    output, mean, var = _ops.batch_norm(input, weight, bias, running_mean, running_var, training, eps, code)
    if training and running_mean is not None and running_var is not None:
        with torch.no_grad():
            _ops.batch_norm_update_running_stats(
                running_mean, running_var, mean, var, float(momentum), input.numel() // input.shape[1]
            )
    return _apply_activation(act, output) if separate else output


@torch.library.register_fake("fastcnn::batch_norm")
def _batch_norm_fake(input, weight, bias, running_mean, running_var, training, eps, activation):
    _check_devices(
        input, "input", weight=weight, bias=bias, running_mean=running_mean, running_var=running_var
    )
    torch._check(
        input.dim() >= 2, lambda: f"fastcnn: batch_norm input must be [N, C, *], got {input.dim()}-D"
    )
    channels = input.shape[1]
    stats = _stats_dtype(input)
    return (
        _empty_like_format(input, input.shape),
        input.new_empty(channels, dtype=stats),
        input.new_empty(channels, dtype=stats),
    )


def _batch_norm_setup_context(ctx, inputs, output):
    input, weight, bias, _running_mean, _running_var, training, eps, activation = inputs
    out, mean, var = output
    ctx.mark_non_differentiable(mean, var)
    ctx.training, ctx.eps, ctx.activation = training, eps, activation
    ctx.weight_dtype = None if weight is None else weight.dtype
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.save_for_backward(input, weight, mean, var, out if activation else None)


def _batch_norm_backward(ctx, grad_output, _grad_mean, _grad_var):
    input, weight, mean, var, output = ctx.saved_tensors
    mask = [
        ctx.needs_input_grad[0],
        ctx.needs_input_grad[1] and ctx.weight_dtype is not None,
        ctx.needs_input_grad[2] and ctx.bias_dtype is not None,
    ]
    if not any(mask):
        return (None,) * 8
    grad_input, grad_weight, grad_bias = _ops.batch_norm_backward(
        grad_output, input, weight, mean, var, output, ctx.training, ctx.eps, ctx.activation, mask
    )
    # The kernels return parameter gradients in the statistics' dtype; parameters may be float16/bfloat16.
    return (
        grad_input if mask[0] else None,
        grad_weight.to(ctx.weight_dtype) if mask[1] else None,
        grad_bias.to(ctx.bias_dtype) if mask[2] else None,
        None,
        None,
        None,
        None,
        None,
    )


torch.library.register_autograd(
    "fastcnn::batch_norm", _batch_norm_backward, setup_context=_batch_norm_setup_context
)


@torch.library.register_fake("fastcnn::batch_norm_backward")
def _batch_norm_backward_fake(
    grad_output, input, weight, mean, var, output, training, eps, activation, output_mask
):
    _check_devices(input, "input", grad_output=grad_output, weight=weight, output=output)
    channels = input.shape[1]
    grad_input = _empty_like_format(input, input.shape) if output_mask[0] else input.new_empty(0)
    grad_weight = mean.new_empty(channels if output_mask[1] else 0)
    grad_bias = mean.new_empty(channels if output_mask[2] else 0)
    return grad_input, grad_weight, grad_bias


@torch.library.register_fake("fastcnn::batch_norm_update_running_stats")
def _batch_norm_update_running_stats_fake(running_mean, running_var, mean, var, momentum, count):
    _check_devices(running_mean, "running_mean", running_var=running_var, mean=mean, var=var)


# ----------------------------------------------------------------------------------------------------------
# layer norm
# ----------------------------------------------------------------------------------------------------------


def layer_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer normalisation over the trailing dims, as :func:`torch.nn.functional.layer_norm`: each
    slice of ``normalized_shape`` is normalised by its own mean and (biased) variance, then scaled by
    ``weight`` and shifted by ``bias`` (both of ``normalized_shape``)."""
    _check_tensor(input, "input")
    shape = [normalized_shape] if isinstance(normalized_shape, int) else list(normalized_shape)
    if not shape or input.dim() < len(shape):
        raise ValueError(f"normalized_shape {tuple(shape)} does not fit input of shape {tuple(input.shape)}")
    return _ops.layer_norm(input, input.dim() - len(shape), shape, weight, bias, eps)[0]


def layer_norm2d(
    input: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    """Channels-first layer normalisation of a 4-D ``[N, C, H, W]`` input over ``C`` at each pixel, as
    ConvNeXt's ``LayerNorm2d`` (``weight``/``bias`` of shape ``[C]``); NCHW or channels_last, without the
    permutes and copies that torchvision's version makes."""
    _check_tensor(input, "input")
    if input.dim() != 4:
        raise ValueError(f"layer_norm2d input must be 4-D (N, C, H, W), got shape {tuple(input.shape)}")
    return _ops.layer_norm(input, 1, [input.shape[1]], weight, bias, eps)[0]


def _layer_norm_stats_shape(input, dim, normalized_shape):
    groups = input.numel() // max(1, math.prod(normalized_shape))
    return (groups,)


def _layer_norm_empty_like(input, dim, normalized_shape):
    """An empty tensor of input's shape in the layout the kernels write: channels_last for a
    channels_last LayerNorm2d, contiguous otherwise."""
    out = input.new_empty(input.shape)
    channels_first = dim == 1 and len(normalized_shape) == 1 and input.dim() == 4
    if channels_first and suggest_memory_format(input) == torch.channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


@torch.library.register_fake("fastcnn::layer_norm")
def _layer_norm_fake(input, dim, normalized_shape, weight, bias, eps):
    _check_devices(input, "input", weight=weight, bias=bias)
    torch._check(
        list(input.shape[dim : dim + len(normalized_shape)]) == list(normalized_shape),
        lambda: f"fastcnn: layer_norm normalized_shape {normalized_shape} does not match input {input.shape}",
    )
    stats = _stats_dtype(input)
    shape = _layer_norm_stats_shape(input, dim, normalized_shape)
    out = input.new_empty(input.shape)
    if (
        dim == 1
        and len(normalized_shape) == 1
        and input.dim() == 4
        and suggest_memory_format(input) == torch.channels_last
    ):
        out = out.contiguous(memory_format=torch.channels_last)
    return out, input.new_empty(shape, dtype=stats), input.new_empty(shape, dtype=stats)


def _layer_norm_setup_context(ctx, inputs, output):
    input, dim, normalized_shape, weight, bias, _eps = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.dims = (dim, normalized_shape)
    ctx.weight_dtype = None if weight is None else weight.dtype
    ctx.bias = (None, None) if bias is None else (bias.dtype, bias.shape)
    ctx.save_for_backward(input, weight, mean, rstd)


def _layer_norm_backward(ctx, grad_output, _grad_mean, _grad_rstd):
    input, weight, mean, rstd = ctx.saved_tensors
    bias_dtype, bias_shape = ctx.bias
    mask = [
        ctx.needs_input_grad[0],
        ctx.needs_input_grad[3] and weight is not None,
        ctx.needs_input_grad[4] and bias_dtype is not None,
    ]
    if not any(mask):
        return (None,) * 6
    grad_input, grad_weight, grad_bias = _ops.layer_norm_backward(
        grad_output, input, *ctx.dims, weight, mean, rstd, mask
    )
    return (
        grad_input if mask[0] else None,
        None,
        None,
        grad_weight.view(weight.shape).to(ctx.weight_dtype) if mask[1] else None,
        grad_bias.view(bias_shape).to(bias_dtype) if mask[2] else None,
        None,
    )


torch.library.register_autograd(
    "fastcnn::layer_norm", _layer_norm_backward, setup_context=_layer_norm_setup_context
)


@torch.library.register_fake("fastcnn::layer_norm_backward")
def _layer_norm_backward_fake(grad_output, input, dim, normalized_shape, weight, mean, rstd, output_mask):
    _check_devices(input, "input", grad_output=grad_output, weight=weight, mean=mean, rstd=rstd)
    channels = math.prod(normalized_shape)
    grad_input = (
        _layer_norm_empty_like(input, dim, normalized_shape) if output_mask[0] else input.new_empty(0)
    )
    return (
        grad_input,
        mean.new_empty(channels if output_mask[1] else 0),
        mean.new_empty(channels if output_mask[2] else 0),
    )


# ----------------------------------------------------------------------------------------------------------
# activations and the residual add
# ----------------------------------------------------------------------------------------------------------


def _elementwise_op(act: Activation) -> Callable[..., Tensor]:
    """``fastcnn.ops.<name>``: the activation's own elementwise op, with torch.nn.functional's signature."""
    kernel = getattr(_ops, act.name)
    if act.inplace_arg:

        def op(input: Tensor, inplace: bool = False) -> Tensor:
            _check_tensor(input, "input")
            return kernel(input)

        doc = (
            f"{act.doc} ``inplace`` is accepted for torch.nn.functional compatibility; fastcnn always "
            "writes a new tensor, since autograd needs the output and the input is often needed elsewhere."
        )
    else:

        def op(input: Tensor) -> Tensor:
            _check_tensor(input, "input")
            return kernel(input)

        doc = act.doc
    op.__name__ = op.__qualname__ = act.name
    op.__doc__ = doc
    return op


# Generated so that a registry row is all an activation needs; public like any function of this module.
# The parametrised ones (leaky_relu) are written out below, with their parameter.
for _act in ACTIVATIONS.values():
    if _act.parameter_name is None:
        globals()[_act.name] = _elementwise_op(_act)
__all__ += [name for name in ACTIVATIONS if name not in __all__]


def gelu(input: Tensor, approximate: str = "none") -> Tensor:  # noqa: F811 - replaces the generated op
    """GELU, as :func:`torch.nn.functional.gelu`: ``approximate="none"`` (the exact normal CDF, the
    ``gelu`` kernel) or ``"tanh"`` (the ``gelu_tanh`` kernel)."""
    _check_tensor(input, "input")
    if approximate == "none":
        return _ops.gelu(input)
    if approximate == "tanh":
        return _ops.gelu_tanh(input)
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """Leaky ReLU, as :func:`torch.nn.functional.leaky_relu`: ``x if x > 0 else negative_slope * x``
    (any finite slope, negative included). ``inplace`` is accepted for torch.nn.functional compatibility;
    fastcnn always writes a new tensor."""
    _check_tensor(input, "input")
    act = ACTIVATIONS["leaky_relu"].with_parameter(negative_slope)
    return _ops.leaky_relu(input, act.parameter)


def add(input: Tensor, other: Tensor, *, activation: str | None = None) -> Tensor:
    """The residual add fused with its activation: ``act(input + other)`` (same shapes, no broadcasting)."""
    _check_tensor(input, "input")
    _check_tensor(other, "other")
    if input.shape != other.shape:
        raise ValueError(
            f"add needs other to have input's shape {tuple(input.shape)}, got {tuple(other.shape)}"
        )
    act = resolve_activation(activation)
    if _separate_activation(act, input, other):
        return _apply_activation(act, _ops.add(input, other, 0))
    return _ops.add(input, other, act.code)


def _elementwise_fake(input, *parameter):
    return _empty_like_format(input, input.shape)


@torch.library.register_fake("fastcnn::add")
def _add_fake(input, other, activation):
    _check_devices(input, "input", other=other)
    return _empty_like_format(input, input.shape)


@torch.library.register_fake("fastcnn::activation_backward")
def _activation_backward_fake(grad_output, saved, activation):
    _check_devices(saved, "saved", grad_output=grad_output)
    return _empty_like_format(saved, saved.shape)


# The activations' and add's autograd formulas are registered in C++ (csrc/autograd/activation.cpp), for
# the per-call cost; their fake kernels are these.
for _act in ACTIVATIONS.values():
    torch.library.register_fake(f"fastcnn::{_act.name}", _elementwise_fake)
del _act
