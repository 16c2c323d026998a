"""PyTorch's side of every comparison: the references ``fastcnn check``, ``fastcnn bench`` and the tests
hold fastcnn's ops to, and how close a result must come to its reference.

The activations' references (forward, backward, derivative) are rows of :data:`fastcnn.ops.ACTIVATIONS`.
The functions here take tensors and plain Python values only, so that ``torch.compile`` traces exactly
the eager code when the benchmark compiles them (one graph per shape: compiled with ``dynamic=False``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops

__all__ = [
    "TOLERANCES",
    "torch_activation",
    "torch_adaptive_avg_pool",
    "torch_adaptive_avg_pool_backward",
    "torch_add_relu",
    "torch_avg_pool",
    "torch_avg_pool_backward",
    "torch_batch_norm_relu",
    "torch_batch_norm_relu_backward",
    "torch_conv",
    "torch_conv2d_fused",
    "torch_conv_backward",
    "torch_conv_bias_relu",
    "torch_conv_bias_residual_relu",
    "torch_linear",
    "torch_linear_backward",
    "torch_linear_fused",
    "torch_max_pool",
    "torch_max_pool_backward",
]

_aten = torch.ops.aten

#: Relative error allowed for a result computed in a dtype, against PyTorch's float64 result on the same
#: (upcast) inputs. TF32 is off wherever these apply, so fp32 is held to fp32 arithmetic.
TOLERANCES: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 1e-2,
}


# ----------------------------------------------------------------------------------------------------------
# fastcnn.ops' semantics, epilogue included (check and the tests)
# ----------------------------------------------------------------------------------------------------------


def torch_conv2d_fused(
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    stride: int | Sequence[int],
    padding: int | Sequence[int] | str,
    dilation: int | Sequence[int],
    groups: int,
    residual: Tensor | None = None,
    activation: str | None = None,
) -> Tensor:
    """``act(conv2d(x, w) + b + residual)``, what :func:`fastcnn.ops.conv2d` computes."""
    y = F.conv2d(x, w, b, stride, padding, dilation, groups)
    if residual is not None:
        y = y + residual
    return ops.resolve_activation(activation).reference(y)


def torch_linear_fused(x: Tensor, w: Tensor, b: Tensor | None, activation: str | None = None) -> Tensor:
    """``act(x @ w.T + b)``, what :func:`fastcnn.ops.linear` computes."""
    return ops.resolve_activation(activation).reference(F.linear(x, w, b))


# ----------------------------------------------------------------------------------------------------------
# the torch side of each benchmark case: the eager sequence a PyTorch model runs, forward or backward
# ----------------------------------------------------------------------------------------------------------


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


def torch_batch_norm_relu(x, w, b, running_mean, running_var):
    """Training-mode BatchNorm (running statistics updated) and its ReLU, as a torchvision block runs."""
    return torch.relu(F.batch_norm(x, running_mean, running_var, w, b, True, 0.1, 1e-5))


def torch_batch_norm_relu_backward(go, x, w, y, save_mean, save_invstd):
    g = _aten.threshold_backward(go, y, 0)
    return _aten.native_batch_norm_backward(
        g, x, w, None, None, save_mean, save_invstd, True, 1e-5, [True, True, True]
    )


def torch_activation(
    act: ops.Activation,
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]:
    """PyTorch's forward and backward ``(grad_output, saved)`` of a registry activation, as Python
    functions: torch.compile traces a Python function's code, while a builtin op handed to it directly
    would run uncompiled."""
    reference, reference_backward = act.reference, act.reference_backward

    def forward(x):
        return reference(x)

    def backward(go, saved):
        return reference_backward(go, saved)

    forward.__name__, backward.__name__ = f"torch_{act.name}", f"torch_{act.name}_backward"
    return forward, backward
