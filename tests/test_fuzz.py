"""Property-based tests: random valid configurations of every op against PyTorch, forward and backward,
and random invalid ones, which must raise a clear error naming the argument (never crash).

Valid configurations span kernel 1-7, stride 1-4, padding (ints, pairs, "same", "valid"), dilation 1-3,
groups (dense, grouped, depthwise with channel multiplier 1-2), spatial sizes down to 1x1, unbatched
inputs, empty batches where PyTorch allows them (linear, add), fp32/fp64 and these layouts: contiguous,
channels_last, strided (every other element), cropped slices of a bigger tensor (storage_offset > 0,
NCHW or channels_last), dense views at a storage offset, transposed and expanded (stride 0) views.
The reference is PyTorch's op in float64 on the same values.

Profiles (tests/conftest.py, picked by FASTCNN_FUZZ_PROFILE): "ci" (default) runs a fixed sample of
FUZZ_EXAMPLES["ci"] examples per test; "long" draws fresh examples, >= 10,000 in total (`make fuzz-long`).
Every example draws its tensor data from a seed that hypothesis chooses, so a failure replays exactly.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    ACTIVATIONS,
    DEVICES,
    EMULATED,
    TORCH_ACT,
    assert_close,
    assert_memory_format,
    relative_error,
)

from fastcnn import ops

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

#: fp32 results are compared with a float64 reference computed from the same fp32 values. Reductions here
#: are short (at most a few thousand terms), so 5e-5 leaves room for fp32 rounding and nothing else.
FUZZ_TOL = {torch.float64: 1e-10, torch.float32: 5e-5}

DTYPES = st.sampled_from([torch.float32, torch.float64])
ACTS = st.sampled_from(ACTIVATIONS)
SEEDS = st.integers(0, 2**32 - 1)

#: Layouts of a 4-D tensor; 3-D (unbatched) and other ranks use the ones that make sense for them.
LAYOUTS_4D = ["contiguous", "channels_last", "strided", "offset", "offset_dense", "channels_last_offset"]
LAYOUTS_ND = ["contiguous", "strided", "offset", "offset_dense"]


def make(shape, dtype, device, layout, gen, requires_grad=False):
    """A standard-normal tensor of `shape` in `layout`, drawn from `gen` (values are exact in fp32)."""
    shape = tuple(shape)

    def randn(*size):
        return torch.randn(size, generator=gen, dtype=torch.float32).to(dtype=dtype, device=device)

    if layout == "contiguous":
        t = randn(*shape)
    elif layout == "channels_last":
        t = randn(*shape).contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        t = randn(*shape[:-1], 2 * shape[-1])[..., ::2] if shape else randn()
    elif layout == "offset":
        # A crop of a bigger tensor: every dimension sliced, so storage_offset > 0 and the strides are
        # those of the bigger tensor.
        big = randn(*(s + 2 for s in shape))
        t = big[tuple(slice(1, 1 + s) for s in shape)]
    elif layout == "offset_dense":
        numel = 1
        for s in shape:
            numel *= s
        t = randn(numel + 3)[3:].view(shape)
    elif layout == "channels_last_offset":
        n, c, h, w = shape
        big = randn(n + 1, c + 1, h + 2, w + 3).contiguous(memory_format=torch.channels_last)
        t = big[1:, 1:, 2 : 2 + h, 1 : 1 + w]
    elif layout == "transposed":
        t = randn(*reversed(shape)).permute(*reversed(range(len(shape)))) if shape else randn()
    elif layout == "expanded":
        # stride 0 in the leading dimension: every "row" is the same memory.
        t = randn(1, *shape[1:]).expand(shape) if shape else randn()
    else:
        raise AssertionError(layout)
    assert t.shape == shape, (t.shape, shape)
    return t.requires_grad_(requires_grad)


class _ActAtRoundedOutput(torch.autograd.Function):
    """A float64 activation whose backward takes the derivative at the output rounded to `dtype`.

    fastcnn's contract (like PyTorch's own fp32 kernels) computes act'(x) from the saved output: 1 - y^2
    for tanh, y(1 - y) for sigmoid. Where the activation saturates, the fp32 rounding of y alone moves
    that derivative by up to eps / (1 - |y|) relative, far beyond any fp32 tolerance; this reference
    carries the same rounding, so the comparison judges the kernel, not the formula. For tanh it also
    rounds y * y to dtype before 1 - y * y, as csrc/common/activation.h does today (PyTorch is more
    accurate there: see test_tanh_backward_saturated_accuracy).
    """

    @staticmethod
    def forward(ctx, x, name, dtype):
        y = TORCH_ACT[name](x)
        ctx.save_for_backward(y.to(dtype).double())
        ctx.name, ctx.dtype = name, dtype
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        derivative = 1 - (y * y).to(ctx.dtype).double() if ctx.name == "tanh" else y * (1 - y)
        return grad * derivative, None, None


def reference_act(name, dtype):
    """The reference activation for a result computed in `dtype` (see _ActAtRoundedOutput)."""
    if name in ("sigmoid", "tanh") and dtype != torch.float64:
        # (PyTorch's own run in dtype, for tolerance(), keeps its native activation.)
        return lambda x: (
            _ActAtRoundedOutput.apply(x, name, dtype) if x.dtype == torch.float64 else TORCH_ACT[name](x)
        )
    return TORCH_ACT[name]


def ref_copy(t):
    return None if t is None else t.detach().double().requires_grad_(t.requires_grad)


def generator(seed):
    return torch.Generator().manual_seed(seed)


def tolerance(dtype, ref, torch_same_dtype=None):
    """FUZZ_TOL[dtype], or 8x PyTorch's own error computing the same thing in dtype when that is larger.

    An fp32 reduction whose terms cancel (a bias gradient summing a few dozen terms to nearly zero, say)
    has an error far above eps relative to its result, whoever computes it; PyTorch's error on the same
    fp32 operands measures how ill-conditioned this particular case is.
    """
    rtol = FUZZ_TOL[dtype]
    if torch_same_dtype is None or ref.numel() == 0:
        return rtol
    return max(rtol, 8 * relative_error(torch_same_dtype, ref))


def check_forward_backward(fastcnn_fn, torch_fn, leaves, dtype, gen, input_for_format=None, backward=True):
    """Runs both, compares outputs (and the memory format), then gradients of every leaf that needs one.

    input_for_format: the 4-D input whose memory format the output and grad_input must follow (conv and
    pooling); None where that rule does not apply."""
    refs = {name: ref_copy(t) for name, t in leaves.items()}
    out = fastcnn_fn(**leaves)
    ref = torch_fn(**refs)
    outs = out if isinstance(out, tuple) else (out,)
    # In reduced precision PyTorch's own result on the same values sets the bar too (see tolerance()).
    same = None
    if dtype != torch.float64:
        same = {
            name: None if t is None else t.detach().clone().requires_grad_(t.requires_grad)
            for name, t in leaves.items()
        }
        same_out = torch_fn(**same)
    assert outs[0].dtype == dtype
    assert_close(outs[0], ref, dtype, rtol=tolerance(dtype, ref, same_out if same else None))
    if input_for_format is not None:
        assert_memory_format(outs[0], input_for_format)
    if not backward or not outs[0].requires_grad:
        return outs
    grad = torch.randn(ref.shape, generator=gen, dtype=torch.float32).double()
    names = [name for name, t in leaves.items() if t is not None and t.requires_grad]
    # autograd.grad, not .backward(): accumulating into .grad restrides the gradient to the leaf's layout,
    # which would hide the memory format the backward kernel returned.
    grads = torch.autograd.grad(
        outs[0], [leaves[n] for n in names], grad.to(dtype=dtype, device=outs[0].device)
    )
    ref_grads = torch.autograd.grad(ref, [refs[n] for n in names], grad.to(ref.device))
    same_grads = [None] * len(names)
    if same is not None:
        same_grads = torch.autograd.grad(same_out, [same[n] for n in names], grad.to(same_out))
    for name, g, ref_g, same_g in zip(names, grads, ref_grads, same_grads, strict=True):
        assert_close(g, ref_g, dtype, rtol=tolerance(dtype, ref_g, same_g), name=f"grad of {name}")
        if name == "input" and input_for_format is not None:
            assert_memory_format(g, leaves[name])
    return outs


def input_layouts(batched):
    return LAYOUTS_4D if batched else LAYOUTS_ND


# ----------------------------------------------------------------------------------------------------------
# conv2d
# ----------------------------------------------------------------------------------------------------------


def min_extent(kernel, pad, dilation):
    """The smallest input extent with at least one output position."""
    return max(1, dilation * (kernel - 1) + 1 - 2 * pad)


@st.composite
def conv_configs(draw):
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    if kind == "dense":
        groups, cin, cout = 1, draw(st.integers(1, 4)), draw(st.integers(1, 4))
    elif kind == "grouped":
        groups = draw(st.integers(2, 3))
        cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    else:
        groups = cin = draw(st.integers(1, 6))
        cout = cin * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding_kind = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    stride = (1, 1) if padding_kind == "same" else (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    if padding_kind == "int":
        padding = draw(st.integers(0, 3))
        pads = (padding, padding)
    elif padding_kind == "pair":
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
        pads = padding
    else:
        padding = padding_kind
        pads = (kernel[0] * dilation[0], kernel[1] * dilation[1]) if padding == "same" else (0, 0)
    size = tuple(
        min_extent(kernel[i], pads[i], dilation[i]) + draw(st.integers(0, 5 if i == 0 else 7))
        for i in range(2)
    )
    batch = draw(st.sampled_from([None, 1, 2, 3]))
    return {
        "groups": groups,
        "cin": cin,
        "cout": cout,
        "kernel": kernel,
        "dilation": dilation,
        "stride": stride if draw(st.booleans()) else (stride[0] if stride[0] == stride[1] else stride),
        "padding": padding,
        "size": size,
        "batch": batch,
        "layout": draw(st.sampled_from(input_layouts(batch is not None))),
        "weight_layout": draw(st.sampled_from(["contiguous", "channels_last", "strided"])),
        "residual_layout": draw(st.sampled_from([None, "contiguous", "channels_last", "strided"])),
        "bias": draw(st.booleans()),
        "activation": draw(ACTS),
        "grads": draw(st.sampled_from([(True, True), (True, False), (False, True)])),
        "dtype": draw(DTYPES),
    }


@pytest.mark.parametrize("device", DEVICES)
@given(cfg=conv_configs(), seed=SEEDS)
def test_conv2d_random_configs_match_torch(cfg, seed, device):
    gen, dtype = generator(seed), cfg["dtype"]
    in_shape = (cfg["cin"], *cfg["size"])
    if cfg["batch"] is not None:
        in_shape = (cfg["batch"], *in_shape)
    need_x, need_w = cfg["grads"]
    x = make(in_shape, dtype, device, cfg["layout"], gen, need_x)
    w_shape = (cfg["cout"], cfg["cin"] // cfg["groups"], *cfg["kernel"])
    w = make(w_shape, dtype, device, cfg["weight_layout"], gen, need_w)
    b = make((cfg["cout"],), dtype, device, "contiguous", gen, need_w) if cfg["bias"] else None
    conv_args = (cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
    r = None
    if cfg["residual_layout"] is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyTorch's note that an even "same" kernel pads a copy
            meta = F.conv2d(
                torch.empty(in_shape, device="meta"), torch.empty(w_shape, device="meta"), None, *conv_args
            )
        layout = cfg["residual_layout"]
        if len(meta.shape) == 3 and layout == "channels_last":
            layout = "contiguous"
        r = make(meta.shape, dtype, device, layout, gen, True)

    def fastcnn_fn(input, weight, bias, residual):
        return ops.conv2d(input, weight, bias, *conv_args, activation=cfg["activation"], residual=residual)

    def torch_fn(input, weight, bias, residual):
        y = F.conv2d(input, weight, bias, *conv_args)
        return reference_act(cfg["activation"], dtype)(y if residual is None else y + residual)

    leaves = {"input": x, "weight": w, "bias": b, "residual": r}
    check_forward_backward(fastcnn_fn, torch_fn, leaves, dtype, gen, x if x.dim() == 4 else None)


# ----------------------------------------------------------------------------------------------------------
# pooling
# ----------------------------------------------------------------------------------------------------------


@st.composite
def pool_geometry(draw, with_dilation):
    kernel = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if with_dilation else (1, 1)
    stride = draw(st.sampled_from([None, "int", "pair"]))
    if stride == "int":
        stride = draw(st.integers(1, 4))
    elif stride == "pair":
        stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    size = tuple(min_extent(kernel[i], padding[i], dilation[i]) + draw(st.integers(0, 6)) for i in range(2))
    batch = draw(st.sampled_from([None, 1, 2, 3]))
    return {
        "kernel": kernel if draw(st.booleans()) or kernel[0] != kernel[1] else kernel[0],
        "padding": padding,
        "dilation": dilation,
        "stride": stride,
        "ceil_mode": draw(st.booleans()),
        "shape": ((batch,) if batch else ()) + (draw(st.integers(1, 5)), *size),
        "layout": draw(st.sampled_from(input_layouts(batch is not None))),
        "dtype": draw(DTYPES),
    }


@pytest.mark.parametrize("device", DEVICES)
@given(cfg=pool_geometry(with_dilation=True), seed=SEEDS)
def test_max_pool2d_random_configs_match_torch(cfg, seed, device):
    gen, dtype = generator(seed), cfg["dtype"]
    x = make(cfg["shape"], dtype, device, cfg["layout"], gen, True)
    args = (cfg["kernel"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["ceil_mode"])
    ref, ref_indices = F.max_pool2d(x.detach().double(), *args, return_indices=True)
    # A dilated window can lie entirely in the padding: its output is -inf and its index points past the
    # plane, as in PyTorch. No input element feeds it; fastcnn's backward rejects such an index with a
    # clear error (PyTorch returns a zero gradient), so there only the forward pass is compared.
    # Such an index can also land inside the plane (e.g. column 1 of a 1-wide plane is element 1 of a
    # 2-row plane): both then send the gradient there, alike, and backward is compared as usual.
    plane = x.shape[-2] * x.shape[-1]
    all_padding_window = bool((ref_indices >= plane).any())
    out, indices = check_forward_backward(
        lambda input: ops.max_pool2d(input, *args, return_indices=True),
        lambda input: F.max_pool2d(input, *args),
        {"input": x},
        dtype,
        gen,
        x if x.dim() == 4 else None,
        backward=not all_padding_window,
    )
    assert indices.dtype == torch.int64
    assert torch.equal(indices.cpu(), ref_indices.cpu()), "indices differ from PyTorch's"
    if all_padding_window:
        raises_naming("outside the input plane", lambda: out.sum().backward())


@pytest.mark.parametrize("device", DEVICES)
@given(
    cfg=pool_geometry(with_dilation=False),
    count_include_pad=st.booleans(),
    divisor_override=st.one_of(st.none(), st.integers(1, 10)),
    seed=SEEDS,
)
def test_avg_pool2d_random_configs_match_torch(cfg, count_include_pad, divisor_override, seed, device):
    gen, dtype = generator(seed), cfg["dtype"]
    x = make(cfg["shape"], dtype, device, cfg["layout"], gen, True)
    args = (
        cfg["kernel"],
        cfg["stride"],
        cfg["padding"],
        cfg["ceil_mode"],
        count_include_pad,
        divisor_override,
    )
    check_forward_backward(
        lambda input: ops.avg_pool2d(input, *args),
        lambda input: F.avg_pool2d(input, *args),
        {"input": x},
        dtype,
        gen,
        x if x.dim() == 4 else None,
    )


@pytest.mark.parametrize("device", DEVICES)
@given(
    batch=st.sampled_from([None, 1, 2]),
    channels=st.integers(1, 5),
    size=st.tuples(st.integers(1, 13), st.integers(1, 13)),
    output_size=st.tuples(st.one_of(st.none(), st.integers(1, 16)), st.one_of(st.none(), st.integers(1, 16))),
    data=st.data(),
    dtype=DTYPES,
    seed=SEEDS,
)
def test_adaptive_avg_pool2d_random_configs_match_torch(
    batch, channels, size, output_size, data, dtype, seed, device
):
    gen = generator(seed)
    shape = ((batch,) if batch else ()) + (channels, *size)
    layout = data.draw(st.sampled_from(input_layouts(batch is not None)), label="layout")
    x = make(shape, dtype, device, layout, gen, True)
    check_forward_backward(
        lambda input: ops.adaptive_avg_pool2d(input, output_size),
        lambda input: F.adaptive_avg_pool2d(input, output_size),
        {"input": x},
        dtype,
        gen,
        x if x.dim() == 4 else None,
    )


# ----------------------------------------------------------------------------------------------------------
# linear and the elementwise ops
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@given(
    leading=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    in_features=st.integers(1, 9),
    out_features=st.integers(1, 9),
    layout=st.sampled_from(["contiguous", "strided", "offset", "offset_dense", "transposed"]),
    weight_layout=st.sampled_from(["contiguous", "transposed", "strided"]),
    bias=st.booleans(),
    activation=ACTS,
    grads=st.sampled_from([(True, True), (True, False), (False, True)]),
    dtype=DTYPES,
    seed=SEEDS,
)
def test_linear_random_configs_match_torch(
    leading, in_features, out_features, layout, weight_layout, bias, activation, grads, dtype, seed, device
):
    gen = generator(seed)
    x = make((*leading, in_features), dtype, device, layout, gen, grads[0])
    w = make((out_features, in_features), dtype, device, weight_layout, gen, grads[1])
    b = make((out_features,), dtype, device, "contiguous", gen, grads[1]) if bias else None
    check_forward_backward(
        lambda input, weight, bias: ops.linear(input, weight, bias, activation=activation),
        lambda input, weight, bias: reference_act(activation, dtype)(F.linear(input, weight, bias)),
        {"input": x, "weight": w, "bias": b},
        dtype,
        gen,
    )


@pytest.mark.parametrize("device", DEVICES)
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=5),
    op=st.sampled_from(["add", *ops.ACTIVATIONS]),
    activation=ACTS,
    layouts=st.tuples(
        st.sampled_from([*LAYOUTS_ND, "transposed", "expanded", "channels_last"]),
        st.sampled_from([*LAYOUTS_ND, "transposed", "expanded", "channels_last"]),
    ),
    dtype=DTYPES,
    seed=SEEDS,
)
def test_add_and_activations_random_shapes_match_torch(shape, op, activation, layouts, dtype, seed, device):
    """Any rank 0-5, any size including empty (a zero-size batch is valid here, as in PyTorch)."""
    gen = generator(seed)
    layouts = tuple(lay if lay != "channels_last" or len(shape) == 4 else "contiguous" for lay in layouts)
    x = make(shape, dtype, device, layouts[0], gen, True)
    fmt_input = x if x.dim() == 4 else None
    if op == "add":
        y = make(shape, dtype, device, layouts[1], gen, True)
        check_forward_backward(
            lambda input, other: ops.add(input, other, activation=activation),
            lambda input, other: reference_act(activation, dtype)(input + other),
            {"input": x, "other": y},
            dtype,
            gen,
            fmt_input,
        )
    else:
        check_forward_backward(
            lambda input: getattr(ops, op)(input),
            lambda input: reference_act(op, dtype)(input),
            {"input": x},
            dtype,
            gen,
            fmt_input,
        )


# ----------------------------------------------------------------------------------------------------------
# invalid configurations: a clear error that names the argument, never a crash or a result
# ----------------------------------------------------------------------------------------------------------

ERRORS = (ValueError, RuntimeError, TypeError)


def raises_naming(pattern, fn):
    with pytest.raises(ERRORS) as info:
        fn()
    message = str(info.value)
    assert re.search(pattern, message, re.IGNORECASE), f"error {message!r} does not name /{pattern}/"


CONV_CORRUPTIONS = [
    "stride_nonpositive",
    "padding_negative",
    "dilation_nonpositive",
    "groups_nonpositive",
    "groups_not_dividing",
    "weight_channels",
    "weight_rank",
    "bias_shape",
    "bias_dtype",
    "input_rank",
    "input_int_dtype",
    "input_half_dtype_cpu",
    "weight_dtype",
    "empty_channels",
    "kernel_too_large",
    "residual_shape",
    "residual_dtype",
    "same_with_stride",
    "padding_string",
    "activation_name",
    "stride_length",
]


@pytest.mark.parametrize("device", DEVICES)
@given(corruption=st.sampled_from(CONV_CORRUPTIONS), bad=st.integers(-3, 0), seed=SEEDS)
def test_conv2d_invalid_configs_raise_clear_errors(corruption, bad, seed, device):
    gen = generator(seed)
    x = make((2, 4, 6, 7), torch.float32, device, "contiguous", gen)
    w = make((6, 2, 3, 3), torch.float32, device, "contiguous", gen)
    b = make((6,), torch.float32, device, "contiguous", gen)
    kw = {"stride": 1, "padding": 1, "dilation": 1, "groups": 2, "activation": None, "residual": None}
    expect = {
        "stride_nonpositive": ("stride", bad),
        "padding_negative": ("padding", bad - 1),
        "dilation_nonpositive": ("dilation", bad),
        "groups_nonpositive": ("groups", bad),
        "groups_not_dividing": ("groups", 3),
        "stride_length": ("stride", (1, 1, 1)),
        "padding_string": ("padding", "full"),
        "activation_name": ("activation", "elu"),
    }
    if corruption in expect:
        name, value = expect[corruption]
        kw[name] = value
        pattern = name
        if corruption == "groups_not_dividing":
            pattern = "groups|channels"
    elif corruption == "weight_channels":
        w, pattern = make((6, 3, 3, 3), torch.float32, device, "contiguous", gen), "weight|channels"
    elif corruption == "weight_rank":
        w, pattern = w[0], "weight"
    elif corruption == "bias_shape":
        b, pattern = b[:5], "bias"
    elif corruption == "bias_dtype":
        b, pattern = b.double(), "bias"
    elif corruption == "input_rank":
        x, pattern = x[0, 0], "input"
    elif corruption == "input_int_dtype":
        x, pattern = x.to(torch.int32), "input|dtype|float"
    elif corruption == "input_half_dtype_cpu":
        if device != "cpu" or EMULATED:
            return  # fp16 is a supported dtype on CUDA (and of the emulated CUDA kernels)
        x, w, b, pattern = x.half(), w.half(), b.half(), "input|float"
    elif corruption == "weight_dtype":
        w, pattern = w.double(), "weight"
    elif corruption == "empty_channels":
        x, w, kw["groups"], pattern = x[:, :0], w[:, :0], 1, "channel|weight|empty"
    elif corruption == "kernel_too_large":
        kw["padding"], kw["dilation"], pattern = 0, 4 - bad, "output size|kernel"
    elif corruption == "residual_shape":
        kw["residual"], pattern = make((2, 6, 6, 6), torch.float32, device, "contiguous", gen), "residual"
    elif corruption == "residual_dtype":
        kw["residual"], pattern = make((2, 6, 6, 7), torch.float64, device, "contiguous", gen), "residual"
    elif corruption == "same_with_stride":
        kw["padding"], kw["stride"], pattern = "same", 2 - bad, "stride|same"
    else:
        raise AssertionError(corruption)
    raises_naming(pattern, lambda: ops.conv2d(x, w, b, **kw))


POOL_CORRUPTIONS = [
    "kernel_nonpositive",
    "stride_nonpositive",
    "padding_negative",
    "padding_over_half_kernel",
    "dilation_nonpositive",
    "kernel_too_large",
    "empty_spatial",
    "input_rank",
    "input_int_dtype",
    "divisor_zero",
    "adaptive_output_nonpositive",
    "adaptive_output_length",
    "kernel_length",
]
POOL_WINDOW_CORRUPTIONS = {
    "kernel_nonpositive",
    "stride_nonpositive",
    "padding_negative",
    "padding_over_half_kernel",
    "dilation_nonpositive",
    "kernel_too_large",
    "kernel_length",
}


@pytest.mark.parametrize("device", DEVICES)
@given(
    corruption=st.sampled_from(POOL_CORRUPTIONS),
    op=st.sampled_from(["max", "avg", "adaptive"]),
    bad=st.integers(-3, 0),
    seed=SEEDS,
)
def test_pool_invalid_configs_raise_clear_errors(corruption, op, bad, seed, device):
    gen = generator(seed)
    x = make((2, 3, 5, 6), torch.float32, device, "contiguous", gen)
    kw = {"kernel_size": 3, "stride": 2, "padding": 1}
    output_size = (2, 3)
    if op == "adaptive" and corruption in POOL_WINDOW_CORRUPTIONS:
        op = "max"  # adaptive pooling has no window arguments to get wrong
    if corruption in ("kernel_nonpositive", "stride_nonpositive", "padding_negative", "dilation_nonpositive"):
        name = corruption.split("_")[0]
        name = "kernel_size" if name == "kernel" else name
        if op != "max" and name == "dilation":
            op = "max"
        kw[name], pattern = (bad - 1 if name == "padding" else bad), name.split("_")[0]
    elif corruption == "padding_over_half_kernel":
        kw["padding"], pattern = 2 - bad, "padding"
    elif corruption == "kernel_too_large":
        kw["kernel_size"], kw["padding"], pattern = (7 - bad, 3), 0, "output size|kernel"
    elif corruption == "kernel_length":
        kw["kernel_size"], pattern = (3, 3, 3), "kernel_size"
    elif corruption == "empty_spatial":
        x, pattern = x[:, :, :0], "input|empty|size"
    elif corruption == "input_rank":
        x, pattern = x[0, 0], "input"
    elif corruption == "input_int_dtype":
        x, pattern = x.to(torch.int64), "input|dtype|float"
    elif corruption == "divisor_zero":
        op, pattern = "avg", "divisor_override"
        kw["divisor_override"] = 0
    elif corruption == "adaptive_output_nonpositive":
        op, output_size, pattern = "adaptive", (bad, 2), "output_size"
    elif corruption == "adaptive_output_length":
        op, output_size, pattern = "adaptive", (1, 2, 3), "output_size"
    else:
        raise AssertionError(corruption)

    def call():
        if op == "max":
            return ops.max_pool2d(x, **kw)
        if op == "avg":
            kw.pop("dilation", None)
            return ops.avg_pool2d(x, **kw)
        return ops.adaptive_avg_pool2d(x, output_size)

    raises_naming(pattern, call)


LINEAR_CORRUPTIONS = [
    "in_features",
    "weight_rank",
    "bias_shape",
    "bias_dtype",
    "weight_dtype",
    "input_int_dtype",
    "input_scalar",
    "activation_name",
]


@pytest.mark.parametrize("device", DEVICES)
@given(corruption=st.sampled_from(LINEAR_CORRUPTIONS), extra=st.integers(1, 3), seed=SEEDS)
def test_linear_invalid_configs_raise_clear_errors(corruption, extra, seed, device):
    gen = generator(seed)
    x = make((3, 5), torch.float32, device, "contiguous", gen)
    w = make((4, 5), torch.float32, device, "contiguous", gen)
    b = make((4,), torch.float32, device, "contiguous", gen)
    activation = None
    if corruption == "in_features":
        w, pattern = make((4, 5 + extra), torch.float32, device, "contiguous", gen), "weight|in_features"
    elif corruption == "weight_rank":
        w, pattern = w[0], "weight"
    elif corruption == "bias_shape":
        b, pattern = make((4 + extra,), torch.float32, device, "contiguous", gen), "bias"
    elif corruption == "bias_dtype":
        b, pattern = b.double(), "bias"
    elif corruption == "weight_dtype":
        w, pattern = w.double(), "weight"
    elif corruption == "input_int_dtype":
        x, pattern = x.to(torch.int32), "input|dtype|float"
    elif corruption == "input_scalar":
        x, pattern = x[0, 0], "input"
    else:
        activation, pattern = "swish", "activation"
    raises_naming(pattern, lambda: ops.linear(x, w, b, activation=activation))


@pytest.mark.parametrize("device", DEVICES)
@given(
    corruption=st.sampled_from(["shape", "dtype", "int_dtype", "activation", "device_meta"]),
    op=st.sampled_from(["add", *ops.ACTIVATIONS]),
    seed=SEEDS,
)
def test_elementwise_invalid_inputs_raise_clear_errors(corruption, op, seed, device):
    gen = generator(seed)
    x = make((2, 3, 4), torch.float32, device, "contiguous", gen)
    y = make((2, 3, 4), torch.float32, device, "contiguous", gen)
    activation = None
    if corruption == "int_dtype":
        x, y, pattern = x.to(torch.int32), y.to(torch.int32), "input|dtype|float"
    elif op != "add":
        return  # the other corruptions concern add's second operand or its activation
    elif corruption == "shape":
        y, pattern = y[:, :2], "other|shape"
    elif corruption == "dtype":
        y, pattern = y.double(), "other|dtype"
    elif corruption == "activation":
        activation, pattern = "elu", "activation"
    else:
        y, pattern = torch.empty(2, 3, 4, device="meta"), "other|device|meta"
    if op == "add":
        raises_naming(pattern, lambda: ops.add(x, y, activation=activation))
    else:
        raises_naming(pattern, lambda: getattr(ops, op)(x))


# ----------------------------------------------------------------------------------------------------------
# empty batches and no input features: what PyTorch returns (its OpInfo samples include both)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize(
    "op", ["conv2d", "conv2d_bias_relu", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"]
)
def test_conv_and_pool_accept_an_empty_batch(op, channels_last, device):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(0, 3, 8, 8, dtype=torch.float64, device=device).to(memory_format=fmt).requires_grad_()
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    calls = {
        "conv2d": (lambda: ops.conv2d(x, w, padding=1), lambda: F.conv2d(x, w, padding=1)),
        "conv2d_bias_relu": (
            lambda: ops.conv2d(x, w, b, stride=2, activation="relu"),
            lambda: F.conv2d(x, w, b, stride=2).relu(),
        ),
        "max_pool2d": (lambda: ops.max_pool2d(x, 2), lambda: F.max_pool2d(x, 2)),
        "avg_pool2d": (lambda: ops.avg_pool2d(x, 3, 2, 1), lambda: F.avg_pool2d(x, 3, 2, 1)),
        "adaptive_avg_pool2d": (lambda: ops.adaptive_avg_pool2d(x, 2), lambda: F.adaptive_avg_pool2d(x, 2)),
    }
    fast, reference = calls[op]
    out, ref = fast(), reference()
    assert out.shape == ref.shape and out.dtype == ref.dtype and out.device == ref.device
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    if op.startswith("conv2d"):
        assert torch.equal(w.grad, torch.zeros_like(w))
        assert op == "conv2d" or torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_linear_without_input_features_returns_the_activated_bias(bias, activation, device):
    x = torch.randn(3, 2, 0, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 0, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True) if bias else None
    act = {None: lambda t: t, "relu": torch.relu, "sigmoid": torch.sigmoid}[activation]
    out = ops.linear(x, w, b, activation=activation)
    ref = act(F.linear(x, w, b))
    assert out.shape == ref.shape == (3, 2, 4)
    assert_close(out, ref)
    weights = torch.randn(out.shape, dtype=torch.float64, device=device)
    grads = torch.autograd.grad((out * weights).sum(), [x, w] + ([b] if bias else []))
    ref_grads = torch.autograd.grad((ref * weights).sum(), [x, w] + ([b] if bias else []))
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.shape == want.shape
        if want.numel():
            assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 5), (2, 0, 5), (0, 3, 5)], ids=str)
def test_linear_accepts_an_empty_batch(shape, device):
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    out = ops.linear(x, w, b, activation="relu")
    assert out.shape == (*shape[:-1], 4)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


def test_tanh_backward_saturated_accuracy():
    """fp32 tanh backward where |y| is close to 1, against float64 on the same fp32 output."""
    y = torch.tanh(torch.linspace(3.0, 8.0, 4096)).float()
    grad = torch.ones_like(y)
    ref = grad.double() * (1 - y.double() ** 2)
    got = torch.ops.fastcnn.activation_backward(grad, y, 3)
    torch_fp32 = torch.ops.aten.tanh_backward(grad, y)

    def worst(t):
        return ((t.double() - ref).abs() / ref.abs()).max().item()

    assert worst(torch_fp32) < 1e-6  # PyTorch's own fp32 result is accurate element by element
    assert worst(got) < 1e-5, f"max elementwise relative error {worst(got):.2e}"
