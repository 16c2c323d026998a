"""fastcnn.ops.conv2d (fused conv + bias + residual + activation) and its backward, against PyTorch."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    ACTIVATIONS,
    CODE,
    CUDA,
    DEVICES,
    EMULATED,
    FUSED_BACKWARD_ACTIVATIONS,
    INPUT_GRAD_ACTIVATIONS,
    INVALID_ACTIVATION_CODE,
    TOL,
    TORCH_ACT,
    assert_close,
    assert_componentwise,
    assert_grads_close,
    assert_memory_format,
    kernel_act_prime,
    make_tensor,
    reference_copy,
    relative_error,
)

import fastcnn
from fastcnn import ops
from fastcnn.tools.references import torch_conv2d_fused


@dataclass(frozen=True)
class ConvCase:
    batch: int | None  # None: unbatched 3-D input
    in_channels: int
    out_channels: int
    size: tuple[int, int]
    kernel: tuple[int, int]
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] | str = 0
    dilation: int | tuple[int, int] = 1
    groups: int = 1
    bias: bool = True
    activation: str | None = None
    residual: bool = False
    channels_last: bool = False
    noncontiguous: bool = False

    def __str__(self) -> str:
        parts = [
            f"n{self.batch if self.batch is not None else 'U'}",
            f"c{self.in_channels}to{self.out_channels}",
            f"{self.size[0]}x{self.size[1]}",
            f"k{self.kernel[0]}x{self.kernel[1]}",
            f"s{self.stride}",
            f"p{self.padding}",
            f"d{self.dilation}",
            f"g{self.groups}",
            "bias" if self.bias else "nobias",
            f"act{self.activation}",
        ]
        if self.residual:
            parts.append("res")
        if self.channels_last:
            parts.append("cl")
        if self.noncontiguous:
            parts.append("strided")
        return "-".join(parts).replace(" ", "").replace("(", "").replace(")", "").replace(",", "_")

    def input_shape(self):
        shape = (self.in_channels, *self.size)
        return shape if self.batch is None else (self.batch, *shape)

    def weight_shape(self):
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)


# Hand-picked cases: each line exists for the feature named in its comment.
HAND_PICKED = [
    ConvCase(2, 3, 4, (7, 9), (3, 3), padding=1),  # plain, batch > 1, odd sizes
    ConvCase(1, 3, 5, (5, 7), (3, 3), stride=2, activation="relu", residual=True),  # batch 1, stride 2
    ConvCase(
        2, 4, 4, (11, 10), (3, 3), stride=3, padding=2, dilation=2, activation="sigmoid", channels_last=True
    ),
    ConvCase(2, 3, 4, (9, 8), (3, 3), padding="same", dilation=2, activation="tanh", residual=True),
    ConvCase(2, 3, 2, (6, 7), (4, 4), padding="same", activation="relu"),  # even kernel: asymmetric "same"
    ConvCase(1, 2, 3, (5, 6), (2, 3), padding="same", bias=False, residual=True, channels_last=True),
    ConvCase(2, 2, 3, (7, 5), (4, 2), padding="same", dilation=(1, 2), activation="sigmoid"),
    ConvCase(2, 3, 4, (8, 7), (3, 2), stride=(1, 2), padding="valid", activation="tanh"),
    ConvCase(2, 4, 6, (7, 7), (3, 3), padding=1, groups=2, bias=False, activation="relu"),  # groups 2
    ConvCase(2, 5, 5, (9, 9), (3, 3), padding=1, groups=5, residual=True),  # depthwise, multiplier 1
    ConvCase(
        2,
        3,
        6,
        (8, 9),
        (5, 5),
        stride=2,
        padding=2,
        groups=3,
        activation="relu",
        residual=True,
        channels_last=True,
    ),  # depthwise, multiplier 2
    ConvCase(
        2,
        4,
        8,
        (6, 6),
        (3, 3),
        stride=1,
        padding=1,
        groups=4,
        dilation=2,
        channels_last=True,
        noncontiguous=True,
        activation="tanh",
    ),  # depthwise mult 2, strided channels_last view
    ConvCase(2, 3, 4, (7, 6), (3, 3), padding=1, noncontiguous=True, activation="sigmoid", residual=True),
    ConvCase(None, 3, 4, (7, 5), (3, 3), padding=1, activation="relu", residual=True),  # unbatched
    ConvCase(None, 4, 4, (6, 6), (3, 3), padding="same", groups=4, bias=False),  # unbatched depthwise
    ConvCase(3, 4, 6, (9, 7), (1, 1), stride=2),  # 1x1 conv, strided
    ConvCase(2, 3, 2, (5, 5), (5, 5), activation="tanh", residual=True),  # kernel covers input: 1x1 out
    ConvCase(2, 3, 4, (10, 9), (3, 2), stride=(1, 3), padding=(0, 2), dilation=(2, 1), channels_last=True),
    ConvCase(1, 1, 1, (4, 5), (2, 2), activation="relu"),  # single channel
    ConvCase(
        2, 8, 16, (12, 13), (3, 3), stride=2, padding=1, activation="relu", residual=True, channels_last=True
    ),  # a size with some reduction depth (72 per output)
    # NCHW stride 1 with >= 16 input channels: dgrad runs as a forward conv with the flipped weight.
    ConvCase(2, 16, 8, (7, 6), (3, 3), padding=1, activation="relu", residual=True),
    ConvCase(2, 16, 5, (6, 7), (3, 2), padding=(2, 0), activation="tanh"),  # asymmetric kernel and padding
    ConvCase(1, 17, 3, (5, 6), (5, 5), padding=2, activation="leaky_relu(0.2)"),
    ConvCase(2, 16, 4, (5, 5), (3, 3), padding=3),  # padding beyond k - 1: the col2im dgrad
]


def _random_cases(count: int, seed: int) -> list[ConvCase]:
    """A fixed-seed sample of the whole parameter space, to catch combinations no one thought of."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        groups_kind = rng.choice(["1", "2", "dw1", "dw2"])
        c = rng.choice([2, 4])
        if groups_kind == "1":
            cin, cout, groups = rng.choice([1, 3, 4]), rng.choice([1, 2, 5]), 1
        elif groups_kind == "2":
            cin, cout, groups = 2 * c, 2 * rng.choice([1, 3]), 2
        else:
            cin, groups = c, c
            cout = c * (1 if groups_kind == "dw1" else 2)
        kernel = (rng.choice([1, 2, 3, 4, 5]), rng.choice([1, 2, 3, 5]))
        dilation = (rng.choice([1, 2]), rng.choice([1, 2]))
        stride = (rng.choice([1, 2, 3]), rng.choice([1, 2, 3]))
        size = (rng.randint(3, 12), rng.randint(3, 12))
        padding = rng.choice(["int", "pair", "same", "valid"])
        if padding == "same":
            stride = (1, 1)
        elif padding == "int":
            padding = rng.randint(0, 2)
        elif padding == "pair":
            padding = (rng.randint(0, 2), rng.randint(0, 3))
        pads = (
            (0, 0)
            if padding in ("same", "valid")
            else (padding if isinstance(padding, tuple) else (padding,) * 2)
        )
        if any(
            (size[i] + 2 * pads[i] - dilation[i] * (kernel[i] - 1) - 1) < 0 for i in range(2)
        ):  # output would be empty: not a valid case
            continue
        channels_last = rng.random() < 0.4
        cases.append(
            ConvCase(
                batch=rng.choice([None, 1, 2, 3]),
                in_channels=cin,
                out_channels=cout,
                size=size,
                kernel=kernel,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=rng.random() < 0.7,
                activation=rng.choice(ACTIVATIONS),
                residual=rng.random() < 0.5,
                channels_last=channels_last,
                noncontiguous=rng.random() < 0.25,
            )
        )
    return cases


CASES = HAND_PICKED + _random_cases(16, seed=20240)


def _torch_conv(case: ConvCase, x, w, b, r):
    return torch_conv2d_fused(
        x, w, b, case.stride, case.padding, case.dilation, case.groups, r, case.activation
    )


def _run_case(case: ConvCase, dtype, device):
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    if case.batch is None and case.channels_last:
        fmt = torch.contiguous_format
    x = make_tensor(case.input_shape(), dtype, device, fmt, case.noncontiguous, requires_grad=True)
    w = make_tensor(case.weight_shape(), dtype, device, requires_grad=True)
    b = make_tensor((case.out_channels,), dtype, device, requires_grad=True) if case.bias else None
    with torch.no_grad():
        out_shape = F.conv2d(
            x.double(), w.double(), None, case.stride, case.padding, case.dilation, case.groups
        ).shape
    r = make_tensor(out_shape, dtype, device, fmt, requires_grad=True) if case.residual else None

    out = ops.conv2d(
        x, w, b, case.stride, case.padding, case.dilation, case.groups, activation=case.activation, residual=r
    )
    xr, wr, br, rr = (reference_copy(t) for t in (x, w, b, r))
    ref = _torch_conv(case, xr, wr, br, rr)

    assert out.dtype == dtype and out.device == x.device
    assert_close(out, ref, dtype)
    assert_memory_format(out, x)

    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    assert_grads_close([("input", x, xr), ("weight", w, wr), ("bias", b, br), ("residual", r, rr)], dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conv2d_matches_torch(case, dtype, device):
    _run_case(case, dtype, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_conv2d_each_activation_with_and_without_residual(activation, device):
    for residual in (False, True):
        for bias in (False, True):
            _run_case(
                ConvCase(
                    2, 3, 4, (6, 5), (3, 3), padding=1, bias=bias, activation=activation, residual=residual
                ),
                torch.float64,
                device,
            )


@pytest.mark.parametrize("device", DEVICES)
def test_conv2d_partial_requires_grad(device):
    """Only some operands need a gradient: the others get none and the rest stay correct."""
    x = make_tensor((2, 3, 6, 6), device=device)
    w = make_tensor((4, 3, 3, 3), device=device, requires_grad=True)
    b = make_tensor((4,), device=device)
    r = make_tensor((2, 4, 6, 6), device=device, requires_grad=True)
    out = ops.conv2d(x, w, b, padding=1, activation="tanh", residual=r)
    wr, rr = reference_copy(w), reference_copy(r)
    ref = torch.tanh(F.conv2d(x, wr, b, padding=1) + rr)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    assert x.grad is None and b.grad is None
    assert_grads_close([("weight", w, wr), ("residual", r, rr)], torch.float64)

    x.requires_grad_(True)
    w.requires_grad_(False)
    out = ops.conv2d(x, w, None, padding=1, activation="relu")
    xr = reference_copy(x)
    ref = F.relu(F.conv2d(xr, w, None, padding=1))
    out.backward(grad)
    ref.backward(grad)
    assert_grads_close([("input", x, xr)], torch.float64)


# --------------------------------------------------------------------------------------------------------
# the backward op itself: output_mask, fused activation gradient, memory formats
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "mask",
    [
        (True, True, True),
        (True, False, False),
        (False, True, False),
        (False, False, True),
        (False, True, True),
    ],
)
@pytest.mark.parametrize("activation", FUSED_BACKWARD_ACTIVATIONS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_conv2d_backward_op(mask, activation, channels_last, device):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    stride, padding, dilation, groups = [2, 1], [1, 2], [1, 2], 2
    x = make_tensor((2, 4, 7, 8), device=device, memory_format=fmt)
    w = make_tensor((6, 2, 3, 3), device=device)
    b = make_tensor((6,), device=device)
    pre = F.conv2d(x, w, b, stride, padding, dilation, groups)
    y = TORCH_ACT[activation](pre)
    g = make_tensor(y.shape, device=device, memory_format=fmt)
    code = CODE[activation]
    grad_input, grad_weight, grad_bias = torch.ops.fastcnn.conv2d_backward(
        g, x, w, y if code else None, stride, padding, dilation, groups, code, list(mask)
    )
    # PyTorch's gradients, through its own autograd of act(conv(x) + b).
    xr, wr, br = (reference_copy(t).requires_grad_() for t in (x, w, b))
    TORCH_ACT[activation](F.conv2d(xr, wr, br, stride, padding, dilation, groups)).backward(g)
    for got, ref, wanted, name in (
        (grad_input, xr.grad, mask[0], "grad_input"),
        (grad_weight, wr.grad, mask[1], "grad_weight"),
        (grad_bias, br.grad, mask[2], "grad_bias"),
    ):
        if wanted:
            assert_close(got, ref, torch.float64, name=name)
        else:
            assert got.numel() == 0, f"{name} not requested but has shape {tuple(got.shape)}"
    if mask[0]:
        assert_memory_format(grad_input, x)
    if mask[1]:
        assert grad_weight.is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
def test_conv2d_backward_op_noncontiguous_grad_output(device):
    x = make_tensor((2, 3, 7, 7), device=device)
    w = make_tensor((4, 3, 3, 3), device=device)
    y = torch.sigmoid(F.conv2d(x, w, None, 1, 1))
    g = make_tensor(y.shape, device=device, noncontiguous=True)
    got = torch.ops.fastcnn.conv2d_backward(g, x, w, y, [1, 1], [1, 1], [1, 1], 1, 2, [True, True, False])
    xr, wr = reference_copy(x).requires_grad_(), reference_copy(w).requires_grad_()
    torch.sigmoid(F.conv2d(xr, wr, None, 1, 1)).backward(g)
    assert_close(got[0], xr.grad, name="grad_input")
    assert_close(got[1], wr.grad, name="grad_weight")
    assert got[2].numel() == 0


# --------------------------------------------------------------------------------------------------------
# NaN / inf handling
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_conv2d_nan_propagates(activation, device):
    x = make_tensor((1, 2, 6, 6), device=device)
    x[0, 1, 2, 3] = float("nan")
    w = make_tensor((3, 2, 3, 3), device=device)
    out = ops.conv2d(x, w, None, 1, 1, activation=activation)
    ref = TORCH_ACT[activation](F.conv2d(x, w, None, 1, 1))
    assert torch.isnan(ref).any()
    assert_close(out, ref)


# --------------------------------------------------------------------------------------------------------
# gradcheck
# --------------------------------------------------------------------------------------------------------

GRADCHECK_CASES = [
    dict(
        x=(1, 2, 5, 5),
        w=(3, 2, 3, 3),
        stride=2,
        padding=1,
        dilation=1,
        groups=1,
        act="tanh",
        res=True,
        cl=False,
    ),
    dict(
        x=(2, 2, 4, 5),
        w=(4, 1, 3, 2),
        stride=1,
        padding=(1, 0),
        dilation=(2, 1),
        groups=2,
        act="sigmoid",
        res=True,
        cl=True,
    ),
    dict(
        x=(1, 3, 5, 4),
        w=(2, 3, 2, 2),
        stride=(1, 2),
        padding=0,
        dilation=1,
        groups=1,
        act="relu",
        res=False,
        cl=False,
    ),
    dict(
        x=(1, 2, 4, 4),
        w=(2, 1, 2, 2),
        stride=1,
        padding="same",
        dilation=1,
        groups=2,
        act=None,
        res=True,
        cl=False,
    ),
    dict(
        x=(3, 4, 5), w=(2, 3, 3, 3), stride=1, padding=1, dilation=1, groups=1, act="tanh", res=True, cl=False
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "case", GRADCHECK_CASES, ids=lambda c: f"{c['w']}-{c['act']}-res{c['res']}-cl{c['cl']}"
)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv2d_gradcheck(case, bias, device):
    fmt = torch.channels_last if case["cl"] else torch.contiguous_format
    x = make_tensor(case["x"], device=device, memory_format=fmt, requires_grad=True)
    w = make_tensor(case["w"], device=device, requires_grad=True)
    b = make_tensor((case["w"][0],), device=device, requires_grad=True) if bias else None
    with torch.no_grad():
        out_shape = F.conv2d(
            x, w, None, case["stride"], case["padding"], case["dilation"], case["groups"]
        ).shape
    r = make_tensor(out_shape, device=device, requires_grad=True) if case["res"] else None

    def fn(x, w, b, r):
        return ops.conv2d(
            x,
            w,
            b,
            case["stride"],
            case["padding"],
            case["dilation"],
            case["groups"],
            activation=case["act"],
            residual=r,
        )

    assert torch.autograd.gradcheck(fn, (x, w, b, r))


# --------------------------------------------------------------------------------------------------------
# opcheck: schema, fake kernel, autograd registration, AOT dispatch
# --------------------------------------------------------------------------------------------------------


#: The activation name of each kernel code, for the samples that call torch.ops.fastcnn.* directly.
ACTIVATION_OF_CODE = {code: name for name, code in CODE.items()}


def _opcheck_conv_samples(device):
    samples = []
    for cl, groups, act, res, bias in [
        (False, 1, 0, False, True),
        (True, 2, 1, True, True),
        (False, 4, 3, True, False),  # depthwise
        (True, 1, 2, False, False),
    ]:
        fmt = torch.channels_last if cl else torch.contiguous_format
        cin = 4
        x = make_tensor((2, cin, 6, 7), device=device, memory_format=fmt, requires_grad=True)
        w = make_tensor((4, cin // groups, 3, 3), device=device, requires_grad=True)
        b = make_tensor((4,), device=device, requires_grad=True) if bias else None
        stride, padding, dilation = [1, 2], [1, 1], [1, 1]
        out_shape = (2, 4, 6, 4)
        r = make_tensor(out_shape, device=device, memory_format=fmt, requires_grad=True) if res else None
        samples.append((x, w, b, stride, padding, dilation, groups, act, r))
    return samples


@pytest.mark.parametrize("device", DEVICES)
def test_conv2d_opcheck(device):
    for args in _opcheck_conv_samples(device):
        torch.library.opcheck(torch.ops.fastcnn.conv2d.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_conv2d_backward_opcheck(device):
    for x, w, b, stride, padding, dilation, groups, act, _ in _opcheck_conv_samples(device):
        x, w = x.detach(), w.detach()
        y = ops.conv2d(
            x,
            w,
            b if b is None else b.detach(),
            stride,
            padding,
            dilation,
            groups,
            activation=ACTIVATION_OF_CODE[act],
        )
        g = torch.randn_like(y)
        for mask in ([True, True, True], [True, False, False], [False, True, True]):
            args = (g, x, w, y if act else None, stride, padding, dilation, groups, act, mask)
            torch.library.opcheck(torch.ops.fastcnn.conv2d_backward.default, args)


# --------------------------------------------------------------------------------------------------------
# bad input: a clear error naming the argument, through fastcnn.ops and straight through torch.ops
# --------------------------------------------------------------------------------------------------------


def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, device=device).to(dtype)


def _direct(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, act=0, r=None):
    return torch.ops.fastcnn.conv2d(x, w, b, list(stride), list(padding), list(dilation), groups, act, r)


def _direct_backward(go, x, w, output=None, act=0):
    """conv2d_backward with stride 1, no padding or dilation, one group and every gradient requested."""
    return torch.ops.fastcnn.conv2d_backward(go, x, w, output, [1, 1], [0, 0], [1, 1], 1, act, [True] * 3)


BAD_CONV = [
    # (id, callable, regex the message must match)
    ("int-input", lambda: ops.conv2d(_t(1, 3, 5, 5).int(), _t(2, 3, 3, 3).int()), r"input"),
    ("int-input-direct", lambda: _direct(_t(1, 3, 5, 5).int(), _t(2, 3, 3, 3).int()), r"input"),
    ("fp16-cpu", lambda: ops.conv2d(_t(1, 3, 5, 5).half(), _t(2, 3, 3, 3).half()), r"input.*float"),
    ("fp16-cpu-direct", lambda: _direct(_t(1, 3, 5, 5).half(), _t(2, 3, 3, 3).half()), r"input.*float"),
    (
        "bf16-cpu-direct",
        lambda: _direct(_t(1, 3, 5, 5).bfloat16(), _t(2, 3, 3, 3).bfloat16()),
        r"input.*float",
    ),
    ("weight-dtype", lambda: ops.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3).double()), r"weight"),
    ("bias-dtype-direct", lambda: _direct(_t(1, 3, 5, 5), _t(2, 3, 3, 3), _t(2).double()), r"bias"),
    ("weight-meta", lambda: ops.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3, device="meta")), r"weight"),
    ("weight-meta-direct", lambda: _direct(_t(1, 3, 5, 5), _t(2, 3, 3, 3, device="meta")), r"weight"),
    ("input-meta-direct", lambda: _direct(_t(1, 3, 5, 5, device="meta"), _t(2, 3, 3, 3)), r"weight|input"),
    ("bias-meta-direct", lambda: _direct(_t(1, 3, 5, 5), _t(2, 3, 3, 3), _t(2, device="meta")), r"bias"),
    (
        "residual-meta-direct",
        lambda: _direct(_t(1, 3, 5, 5), _t(2, 3, 3, 3), r=_t(1, 2, 3, 3, device="meta")),
        r"residual",
    ),
    ("input-2d", lambda: ops.conv2d(_t(3, 5), _t(2, 3, 3, 3)), r"input"),
    ("input-5d", lambda: ops.conv2d(_t(1, 1, 3, 5, 5), _t(2, 3, 3, 3)), r"input"),
    ("input-3d-direct", lambda: _direct(_t(3, 5, 5), _t(2, 3, 3, 3)), r"input"),
    ("weight-3d", lambda: ops.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3)), r"weight"),
    ("in-channels", lambda: ops.conv2d(_t(1, 3, 5, 5), _t(2, 2, 3, 3)), r"channels"),
    (
        "in-channels-groups-direct",
        lambda: _direct(_t(1, 4, 5, 5), _t(4, 1, 3, 3), groups=2),
        r"channels|groups",
    ),
    ("groups-divides-input", lambda: ops.conv2d(_t(1, 4, 5, 5), _t(3, 1, 3, 3), groups=3), r"groups"),
    ("groups-divides-output-direct", lambda: _direct(_t(1, 4, 5, 5), _t(3, 2, 3, 3), groups=2), r"groups"),
    ("groups-zero-direct", lambda: _direct(_t(1, 4, 5, 5), _t(4, 4, 3, 3), groups=0), r"groups"),
    ("stride-zero", lambda: ops.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3), stride=0), r"stride"),
    ("stride-negative-direct", lambda: _direct(_t(1, 3, 5, 5), _t(2, 3, 3, 3), stride=(1, -1)), r"stride"),
    ("dilation-zero", lambda: ops.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3), dilation=(0, 1)), r"dilation"),
    (
        "dilation-negative-direct",
        lambda: _direct(_t(1, 3, 5, 5), _t(2, 3, 3, 3), dilation=(-1, 1)),
        r"dilation",
    ),
    ("kernel-empty", lambda: ops.conv2d(_t(1, 3, 5, 5), _t(2, 3, 0, 3)), r"weight|kernel"),
    ("padding-negative", lambda: ops.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3), padding=-1), r"padding"),
    ("padding-negative-direct", lambda: _direct(_t(1, 3, 5, 5), _t(2, 3, 3, 3), padding=(0, -2)), r"padding"),
    ("padding-unknown", lambda: ops.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3), padding="full"), r"padding"),
    (
        "padding-same-strided",
        lambda: ops.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3), stride=2, padding="same"),
        r"padding|stride",
    ),
    ("output-too-small", lambda: ops.conv2d(_t(1, 3, 2, 2), _t(2, 3, 3, 3)), r"output size"),
    (
        "output-too-small-dilated-direct",
        lambda: _direct(_t(1, 3, 4, 4), _t(2, 3, 3, 3), dilation=(2, 2)),
        r"output size",
    ),
    (
        "residual-shape",
        lambda: ops.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3), residual=_t(1, 2, 5, 5)),
        r"residual",
    ),
    ("residual-shape-direct", lambda: _direct(_t(1, 3, 5, 5), _t(2, 3, 3, 3), r=_t(1, 2, 3, 4)), r"residual"),
    (
        "residual-dtype-direct",
        lambda: _direct(_t(1, 3, 5, 5), _t(2, 3, 3, 3), r=_t(1, 2, 3, 3).double()),
        r"residual",
    ),
    ("bias-shape", lambda: ops.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3), _t(3)), r"bias"),
    (
        "activation-unknown",
        lambda: ops.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3), activation="elu"),
        r"activation",
    ),
    (
        "activation-code-direct",
        lambda: _direct(_t(1, 3, 5, 5), _t(2, 3, 3, 3), act=INVALID_ACTIVATION_CODE),
        r"activation",
    ),
    (
        "activation-code-negative-direct",
        lambda: _direct(_t(1, 3, 5, 5), _t(2, 3, 3, 3), act=-1),
        r"activation",
    ),
    ("padding-float", lambda: ops.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3), padding=1.0), r"padding"),
    ("stride-float-pair", lambda: ops.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3), stride=(1.0, 1)), r"stride"),
    # the backward op checks its own arguments too
    (
        "backward-grad-shape-direct",
        lambda: _direct_backward(_t(1, 2, 4, 4), _t(1, 3, 5, 5), _t(2, 3, 3, 3)),
        r"grad_output",
    ),
    (
        "backward-grad-dtype-direct",
        lambda: _direct_backward(_t(1, 2, 3, 3).double(), _t(1, 3, 5, 5), _t(2, 3, 3, 3)),
        r"grad_output",
    ),
    (
        "backward-missing-output-direct",
        lambda: _direct_backward(_t(1, 2, 3, 3), _t(1, 3, 5, 5), _t(2, 3, 3, 3), act=1),
        r"output",
    ),
    (
        "backward-grad-meta-direct",
        lambda: _direct_backward(_t(1, 2, 3, 3, device="meta"), _t(1, 3, 5, 5), _t(2, 3, 3, 3)),
        r"grad_output",
    ),
]


@pytest.mark.parametrize("call,match", [pytest.param(c, m, id=i) for i, c, m in BAD_CONV])
def test_conv2d_bad_input(call, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        call()


# --------------------------------------------------------------------------------------------------------
# CUDA-only: reduced precision, TF32, autocast
# --------------------------------------------------------------------------------------------------------

CUDA_CASES = [
    ConvCase(2, 8, 16, (12, 11), (3, 3), padding=1, activation="relu", residual=True),
    ConvCase(
        2, 8, 16, (12, 11), (3, 3), stride=2, padding=1, groups=8, activation="sigmoid", channels_last=True
    ),
    ConvCase(1, 16, 8, (9, 9), (1, 1), activation="tanh", channels_last=True),
    ConvCase(2, 6, 12, (10, 10), (4, 4), padding="same", groups=2, residual=True),
]


def _cuda_operands(case, dtype):
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    x = make_tensor(case.input_shape(), dtype, CUDA, fmt, requires_grad=True)
    w = make_tensor(case.weight_shape(), dtype, CUDA, requires_grad=True)
    b = make_tensor((case.out_channels,), dtype, CUDA, requires_grad=True) if case.bias else None
    with torch.no_grad():
        shape = F.conv2d(
            x.double(), w.double(), None, case.stride, case.padding, case.dilation, case.groups
        ).shape
    r = make_tensor(shape, dtype, CUDA, fmt, requires_grad=True) if case.residual else None
    return x, w, b, r


def _reference_at_kernel_kinks(case, ref, out, xr, wr, br, rr):
    """The float64 reference to differentiate. ReLU's derivative jumps at 0: where a reduced-precision (or
    TF32) output and the float64 pre-activation fall on opposite sides of 0, the two gradients differ by
    a whole grad_output element, which is not an error of the kernel. So the reference gradient takes
    the ReLU mask of fastcnn's own output, as the kernel does."""
    if case.activation != "relu":
        return ref
    pre = F.conv2d(xr, wr, br, case.stride, case.padding, case.dilation, case.groups)
    if rr is not None:
        pre = pre + rr
    return pre * (out.detach() > 0).to(pre.dtype)


def _assert_rel(out, ref, tol, name):
    assert out.shape == ref.shape
    assert torch.equal(torch.isfinite(out), torch.isfinite(ref)), f"{name}: non-finite values"
    err = relative_error(out, ref)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"
    # every element checked too, so an element the kernel never wrote cannot hide in the norm
    scale = ref.double().abs().max().item()
    torch.testing.assert_close(out.double(), ref.double(), rtol=tol, atol=tol * scale * 4)


def _run_cuda_case(case, dtype, tol, tf32):
    """Runs `case` forward and backward in `dtype` on the CUDA kernels and checks it against float64."""
    x, w, b, r = _cuda_operands(case, dtype)
    out = ops.conv2d(
        x, w, b, case.stride, case.padding, case.dilation, case.groups, activation=case.activation, residual=r
    )
    assert out.dtype == dtype
    assert_memory_format(out, x)
    xr, wr, br, rr = (reference_copy(t) for t in (x, w, b, r))
    ref = _torch_conv(case, xr, wr, br, rr)
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    _assert_matches_reference(case, out, ref, grad, (x, w, b, r), (xr, wr, br, rr), tol, tf32)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", CUDA_CASES, ids=str)
def test_conv2d_cuda_reduced_precision(case, dtype):
    _run_cuda_case(case, dtype, TOL[dtype], tf32=False)


def _assert_matches_reference(case, out, ref, grad, leaves, ref_leaves, tol, tf32):
    """Output and gradients (backward already run on `out` with `grad`) against the float64 reference.
    TF32: componentwise bounds, |error| <= tol x the same sum over |terms| (a norm-wise relative error of
    cancelling sums can exceed 1e-3 on a correct kernel); the gradients are those of the pre-activation
    scaled by act'(y) at the kernel's own output, as the kernel computes them."""
    names = ("input", "weight", "bias", "residual")
    if not tf32:
        _assert_rel(out, ref, tol, "output")
        _reference_at_kernel_kinks(case, ref, out, *ref_leaves).backward(grad)
        for name, leaf, ref_leaf in zip(names, leaves, ref_leaves, strict=True):
            if leaf is not None:
                _assert_rel(leaf.grad, ref_leaf.grad, tol, f"grad of {name}")
        return

    def pre_activation(xv, wv, bv, rv):
        y = F.conv2d(xv, wv, bv, case.stride, case.padding, case.dilation, case.groups)
        return y if rv is None else y + rv

    x, w, b, r = (t.detach() if t is not None else None for t in leaves)
    act_prime = kernel_act_prime(
        case.activation,
        out,
        lambda: ops.conv2d(x, w, b, case.stride, case.padding, case.dilation, case.groups, residual=r),
    )
    with torch.no_grad():
        magnitude = pre_activation(*(t.detach().abs() if t is not None else None for t in ref_leaves))
    assert_componentwise(out.detach(), ref.detach(), magnitude, tol, "output")
    (pre_activation(*ref_leaves) * act_prime).backward(grad)
    mags = [t.detach().abs().requires_grad_() if t is not None else None for t in ref_leaves]
    (pre_activation(*mags) * act_prime.abs()).backward(grad.abs())
    for name, leaf, ref_leaf, mag in zip(names, leaves, ref_leaves, mags, strict=True):
        if leaf is not None:
            assert_componentwise(leaf.grad, ref_leaf.grad, mag.grad, tol, f"grad of {name}")


@pytest.mark.cuda
@pytest.mark.parametrize("tf32", [False, True], ids=["tf32off", "tf32on"])
@pytest.mark.parametrize("case", CUDA_CASES, ids=str)
def test_conv2d_cuda_tf32(case, tf32):
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    _run_cuda_case(case, torch.float32, 1e-3 if tf32 else 1e-5, tf32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_conv2d_cuda_autocast(dtype):
    x = make_tensor((2, 8, 10, 10), torch.float32, "cuda")
    w = make_tensor((16, 8, 3, 3), torch.float32, "cuda")
    b = make_tensor((16,), torch.float32, "cuda")
    r = make_tensor((2, 16, 10, 10), torch.float32, "cuda")
    with torch.autocast("cuda", dtype=dtype):
        out = ops.conv2d(x, w, b, 1, 1, activation="relu", residual=r)
        ref = F.conv2d(x, w, b, 1, 1)
    assert out.dtype == dtype
    assert ref.dtype == dtype
    ref = F.relu(ref.float() + r.to(dtype).float())
    _assert_rel(out.float(), ref, 1e-2, "output")
    # fp64 is left alone by autocast, as PyTorch does
    with torch.autocast("cuda", dtype=dtype):
        out64 = ops.conv2d(x.double(), w.double(), b.double(), 1, 1)
    assert out64.dtype == torch.float64


@pytest.mark.gpu
def test_conv2d_cuda_device_mismatch():
    with pytest.raises((ValueError, RuntimeError), match="weight"):
        ops.conv2d(_t(1, 3, 5, 5, device="cuda"), _t(2, 3, 3, 3))
    with pytest.raises((ValueError, RuntimeError), match="residual"):
        ops.conv2d(_t(1, 3, 5, 5, device="cuda"), _t(2, 3, 3, 3, device="cuda"), residual=_t(1, 2, 3, 3))


def test_cuda_build_flag_consistent():
    assert fastcnn.cuda_available() == (fastcnn.built_with_cuda() and torch.cuda.is_available())


@pytest.mark.parametrize("device", DEVICES)
def test_depthwise_conv2d_with_more_than_65535_groups(device):
    # Depthwise convolutions never put groups on the CUDA grid, so no 65,535 limit applies to them.
    channels = 70_000
    x = make_tensor((1, channels, 3, 3), torch.float32, device, torch.channels_last, requires_grad=True)
    w = make_tensor((channels, 1, 3, 3), torch.float32, device, requires_grad=True)
    out = ops.conv2d(x, w, None, padding=1, groups=channels, activation="relu")
    xr, wr = reference_copy(x), reference_copy(w)
    ref = F.relu(F.conv2d(xr, wr, None, padding=1, groups=channels))
    assert_close(out, ref, torch.float32)
    grad = torch.randn_like(ref)
    out.backward(grad.float())
    (ref * (out.detach() > 0).double()).backward(grad)
    assert_grads_close([("input", x, xr), ("weight", w, wr)], torch.float32)


@pytest.mark.skipif(not EMULATED, reason="emulates a pre-sm_80 device (FASTCNN_BACKEND=cuda-emu)")
def test_conv2d_fma_tiles_run_below_sm80():
    # Exact fp32 and fp64 take the FMA tiles, the path for compute capability < 8 (V100, T4), where
    # cp.async does not exist: the tile loaders must stage through registers there.
    arch, sms, _ = torch.ops.fastcnn_emu.properties()
    case = ConvCase(2, 8, 16, (9, 7), (3, 3), padding=1, activation="relu")
    try:
        torch.ops.fastcnn_emu.configure(70, sms, -1)
        for dtype in (torch.float32, torch.float64):
            _run_case(case, dtype, "cpu")
    finally:
        torch.ops.fastcnn_emu.configure(arch, sms, -1)


@pytest.mark.skipif(not EMULATED, reason="counts the emulated device's attribute queries")
def test_conv2d_launches_query_no_device_attributes_once_cached():
    x = make_tensor((2, 8, 9, 9), torch.float16, "cpu", requires_grad=True)
    w = make_tensor((16, 8, 3, 3), torch.float16, "cpu", requires_grad=True)
    ops.conv2d(x, w, padding=1).sum().backward()  # warm: the first call may query and cache
    before = torch.ops.fastcnn_emu.stats()[1]
    for _ in range(3):
        ops.conv2d(x, w, padding=1, activation="relu").sum().backward()
    assert torch.ops.fastcnn_emu.stats()[1] == before, "a launch queried cudaDeviceGetAttribute again"


# Every dtype x layout x epilogue, forward and backward, on the two CUDA algorithms: the implicit GEMM
# (a strided 3x3 with K and M tails and two groups) and the direct depthwise kernels.
_MATRIX_EPILOGUES = {
    "none": dict(bias=False, activation=None, residual=False),
    "bias": dict(bias=True, activation=None, residual=False),
    "bias-relu": dict(bias=True, activation="relu", residual=False),
    "bias-res-sigmoid": dict(bias=True, activation="sigmoid", residual=True),
    "res-tanh": dict(bias=False, activation="tanh", residual=True),
}
_MATRIX_GEOMETRY = {
    "gemm": dict(
        batch=2, in_channels=12, out_channels=10, size=(9, 8), kernel=(3, 3), stride=2, padding=1, groups=2
    ),
    "depthwise": dict(
        batch=2, in_channels=8, out_channels=16, size=(7, 9), kernel=(3, 3), padding=1, groups=8
    ),
}


@pytest.mark.cuda
@pytest.mark.parametrize("epilogue", list(_MATRIX_EPILOGUES))
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "tf32", "fp32", "fp64"])
@pytest.mark.parametrize("algorithm", list(_MATRIX_GEOMETRY))
def test_conv2d_cuda_dtype_layout_epilogue_matrix(algorithm, dtype, layout, epilogue):
    case = ConvCase(
        **_MATRIX_GEOMETRY[algorithm], **_MATRIX_EPILOGUES[epilogue], channels_last=layout == "cl"
    )
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}.get(
        dtype, torch.float32
    )
    torch.backends.cudnn.allow_tf32 = dtype == "tf32"
    tol = 1e-3 if dtype == "tf32" else TOL[torch_dtype]
    _run_cuda_case(case, torch_dtype, tol, tf32=dtype == "tf32")


@pytest.mark.parametrize("activation", INPUT_GRAD_ACTIVATIONS)
def test_fused_backward_refuses_activations_differentiated_through_their_input(activation):
    """conv2d_backward reads act' from the forward output; silu/gelu/... need the pre-activation, so the
    op refuses them (fastcnn.ops runs such an epilogue as conv + the activation's own op under
    autograd, which the model tests check)."""
    x, w = torch.randn(1, 2, 4, 4), torch.randn(3, 2, 3, 3)
    y = ops.conv2d(x, w, activation=activation)
    with pytest.raises(RuntimeError, match="cannot differentiate a fused"):
        torch.ops.fastcnn.conv2d_backward(y, x, w, y, [1, 1], [0, 0], [1, 1], 1, CODE[activation], [True] * 3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", INPUT_GRAD_ACTIVATIONS)
def test_epilogue_is_fused_without_autograd_and_split_with_it(activation, device):
    """Without autograd the activation runs in the conv's epilogue; with it, as conv + the activation's
    own op (which keeps the pre-activation for backward). Both give PyTorch's result."""
    x = make_tensor((2, 3, 6, 6), device=device)
    w = make_tensor((4, 3, 3, 3), device=device)
    r = make_tensor((2, 4, 6, 6), device=device)
    ref = TORCH_ACT[activation](F.conv2d(x, w, padding=1) + r)
    with torch.no_grad():
        fused = ops.conv2d(x, w, padding=1, activation=activation, residual=r)
    wg = w.clone().requires_grad_()
    split = ops.conv2d(x, wg, padding=1, activation=activation, residual=r)
    assert split.grad_fn is not None
    assert_close(fused, ref)
    assert_close(split.detach(), ref)
