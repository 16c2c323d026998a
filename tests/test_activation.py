"""Every activation of fastcnn.ops.ACTIVATIONS, the fused residual add and activation_backward, against
PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    ACTIVATIONS,
    CODE,
    CUDA,
    DEVICES,
    GRAD_FROM_OUTPUT,
    INVALID_ACTIVATION_CODE,
    TOL,
    TORCH_ACT,
    activation_op,
    assert_close,
    assert_grads_close,
    assert_memory_format,
    kernel_act_prime,
    make_tensor,
    raw_activation_args,
    reference_copy,
)

from fastcnn import ops

#: Each activation's own elementwise op, and PyTorch's (leaky_relu with its default and other slopes).
UNARY = {
    name: (activation_op(name), ops.resolve_activation(name).reference)
    for name in [*ACTIVATIONS[1:], "leaky_relu(0.2)", "leaky_relu(0)"]
}

# (shape, channels_last, strided)
LAYOUTS = [
    ((2, 3, 5, 7), False, False),
    ((1, 4, 6, 5), True, False),
    ((2, 3, 5, 7), False, True),
    ((2, 5, 4, 3), True, True),
    ((3, 7, 9), False, False),  # unbatched image
    ((11,), False, False),  # any shape works for elementwise ops
    ((40000,), False, False),  # more than one parallel chunk
    ((3, 1, 1, 1), True, False),
]


def _layout_id(layout):
    shape, cl, strided = layout
    return "x".join(map(str, shape)) + ("-cl" if cl else "") + ("-strided" if strided else "")


def _make(layout, dtype, device, requires_grad=True):
    shape, cl, strided = layout
    fmt = torch.channels_last if cl else torch.contiguous_format
    return make_tensor(shape, dtype, device, fmt, strided, requires_grad=requires_grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=_layout_id)
@pytest.mark.parametrize("name", list(UNARY))
def test_unary_matches_torch(name, layout, dtype, device):
    ours, theirs = UNARY[name]
    x = _make(layout, dtype, device)
    with torch.no_grad():
        x.mul_(3)  # reach sigmoid/tanh saturation too, keeping x's layout
    out = ours(x)
    xr = reference_copy(x)
    ref = theirs(xr)
    assert out.dtype == dtype
    assert_close(out, ref, dtype)
    assert_memory_format(out, x)
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    assert_grads_close([("input", x, xr)], dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("layout", LAYOUTS[:5], ids=_layout_id)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_add_matches_torch(activation, layout, dtype, device):
    x = _make(layout, dtype, device)
    y = _make(layout, dtype, device)
    out = ops.add(x, y, activation=activation)
    xr, yr = reference_copy(x), reference_copy(y)
    ref = TORCH_ACT[activation](xr + yr)
    assert_close(out, ref, dtype)
    assert_memory_format(out, x)
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    assert_grads_close([("input", x, xr), ("other", y, yr)], dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_add_mixed_memory_formats(device):
    """other in a different layout than input: the elements must still pair up by index."""
    x = make_tensor((2, 3, 4, 5), device=device, memory_format=torch.channels_last)
    y = make_tensor((2, 3, 4, 5), device=device)
    assert_close(ops.add(x, y, activation="tanh"), torch.tanh(x + y))
    assert_close(ops.add(y, x), y + x)
    z = make_tensor((2, 3, 4, 5), device=device, noncontiguous=True)
    assert_close(ops.add(x, z, activation="relu"), F.relu(x + z))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_backward_op(activation, device):
    if activation is None:
        code = 0
    else:
        code = CODE[activation]
    x = make_tensor((2, 3, 4, 5), device=device, memory_format=torch.channels_last)
    xr = reference_copy(x).requires_grad_()
    y = TORCH_ACT[activation](xr)
    g = make_tensor(y.shape, device=device, noncontiguous=True)
    y.backward(g)
    saved = y.detach() if GRAD_FROM_OUTPUT[activation] else x
    got = torch.ops.fastcnn.activation_backward(g, saved, code)
    assert_close(got, xr.grad, name="grad_input")
    assert_memory_format(got, x)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_and_inf(device):
    x = torch.tensor(
        [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e308, -1e308, 800.0, -800.0],
        dtype=torch.float64,
        device=device,
    )
    for name, (ours, theirs) in UNARY.items():
        assert_close(ours(x), theirs(x), name=name)
    for activation in ACTIVATIONS:
        y = torch.tensor([1.0, float("nan"), 2.0, float("inf"), 0.5], dtype=torch.float64, device=device)
        z = torch.tensor([float("nan"), 1.0, -float("inf"), 1.0, -0.5], dtype=torch.float64, device=device)
        assert_close(
            ops.add(y, z, activation=activation), TORCH_ACT[activation](y + z), name=f"add {activation}"
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_fp32_sigmoid_tanh_accuracy_over_the_whole_range(name, device):
    """fp32 sigmoid/tanh element by element against float64 over [-120, 120] and special values.

    The CPU computes these with its own branch-free polynomials (csrc/common/host_math.h), so every
    element is held to 4 ulp of the exact result; results below FLT_MIN may flush to zero.
    """
    grid = torch.linspace(-120.0, 120.0, 480_001, dtype=torch.float64)
    fine = torch.linspace(-12.0, 12.0, 480_001, dtype=torch.float64)
    special = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 0.625, -0.625, 9.005, 87.3, -87.3, 88.8, -88.8, 1e30])
    x = torch.cat([grid, fine, special.double()]).float().to(device)
    ours, theirs = UNARY[name]
    out = ours(x).double().cpu()
    ref = theirs(x.double().cpu())
    tiny = torch.finfo(torch.float32).tiny
    err = (out - ref).abs()
    ulp = torch.finfo(torch.float32).eps * ref.abs()
    bad = (err > 4 * ulp) & ~((ref.abs() < tiny) & (out.abs() <= tiny))
    assert not bad.any(), f"{name}: {int(bad.sum())} elements beyond 4 ulp, e.g. x={x.cpu()[bad][:4]}"
    assert torch.equal(torch.signbit(out), torch.signbit(ref)), f"{name}: sign differs (incl. -0)"
    nan = ours(torch.tensor([float("nan")], device=device)).cpu()
    assert torch.isnan(nan).all(), f"{name}: NaN must propagate"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "name,kinks",
    [
        ("relu", [0.0]),
        ("relu6", [0.0, 6.0]),
        ("hardswish", [-3.0, 3.0]),
        ("hardsigmoid", [-3.0, 3.0]),
        ("leaky_relu", [0.0]),
        ("leaky_relu(-0.5)", [0.0]),
        ("leaky_relu(0)", [0.0]),
    ],
    ids=lambda v: str(v),
)
def test_gradient_at_the_kinks_matches_torch(name, kinks, device):
    """At and around each kink the gradient is PyTorch's exactly (relu/relu6: 0 at the kink itself;
    hardswish: 0 at -3 and 1 at 3; hardsigmoid: 0 at both; leaky_relu: its slope at 0)."""
    points = [k + d for k in kinks for d in (-1e-3, 0.0, 1e-3)]
    x = torch.tensor(points, dtype=torch.float64, device=device, requires_grad=True)
    ours, theirs = UNARY[name]
    ours(x).backward(torch.ones_like(x))
    xr = x.detach().clone().requires_grad_()
    theirs(xr).backward(torch.ones_like(xr))
    assert torch.equal(x.grad, xr.grad), f"{name}: {x.grad.tolist()} vs {xr.grad.tolist()}"


def test_activation_specs():
    """A parametrised activation is named with its parameter; the name round-trips through
    resolve_activation and the default slope is the bare name."""
    leaky = ops.resolve_activation("leaky_relu")
    assert leaky.parameter == 0.01 and leaky.spec == "leaky_relu" and leaky.grad_from_output
    for spec in ("leaky_relu(0.2)", "LEAKY_RELU(negative_slope=0.2)", " leaky_relu( 0.2 ) "):
        act = ops.resolve_activation(spec)
        assert (act.name, act.parameter, act.spec) == ("leaky_relu", 0.2, "leaky_relu(0.2)")
        assert act.grad_from_output
    negative = ops.resolve_activation("leaky_relu(-1e-3)")
    assert negative.parameter == -1e-3 and not negative.grad_from_output
    assert ops.resolve_activation(negative.spec).code == negative.code
    assert ops.resolve_activation("leaky_relu(0.01)").spec == "leaky_relu"
    # Different slopes are different kernel codes; the row's code is the low 5 bits of each.
    codes = {ops.activation_code(f"leaky_relu({s})") for s in (0.01, 0.2, -0.2, 0.0, 3.0)}
    assert len(codes) == 5 and {c & 0x1F for c in codes} == {ACTIVATION_ROW_CODE["leaky_relu"]}


ACTIVATION_ROW_CODE = {name: act.code & 0x1F for name, act in ops.ACTIVATIONS.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("slope", [0.1, 1 / 3, -2.7, 2.0**-31, 0.0, -0.0, 4e9])
def test_leaky_relu_slope_travels_exactly(slope, device):
    """The slope travels bit for bit in the kernel code, so results are PyTorch's to the last bit in
    float64 and float32, standalone and fused, gradients included."""
    x = torch.cat([-torch.rand(500, dtype=torch.float64) - 0.5, torch.rand(500, dtype=torch.float64)])
    x = x.to(device).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    out, ref = ops.leaky_relu(x, slope), F.leaky_relu(xr, slope)
    assert torch.equal(out, ref) and torch.equal(torch.signbit(out), torch.signbit(ref))
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    assert torch.equal(x.grad, xr.grad)
    fused = ops.add(x.detach(), torch.zeros_like(x), activation=f"leaky_relu({slope!r})")
    assert torch.equal(fused, ref.detach())
    x32 = x.detach().float()
    assert torch.equal(ops.leaky_relu(x32, slope), F.leaky_relu(x32, slope))


@pytest.mark.parametrize("device", DEVICES)
def test_relu_inplace_flag_leaves_input(device):
    x = make_tensor((3, 4), device=device)
    before = x.clone()
    out = ops.relu(x, inplace=True)
    assert torch.equal(x, before)
    assert_close(out, F.relu(before))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(UNARY))
def test_unary_gradcheck(name, device):
    x = make_tensor((2, 3, 3), device=device, requires_grad=True)
    assert torch.autograd.gradcheck(UNARY[name][0], (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_add_gradcheck(activation, device):
    x = make_tensor((2, 2, 3, 3), device=device, requires_grad=True)
    y = make_tensor((2, 2, 3, 3), device=device, memory_format=torch.channels_last, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.add(a, b, activation=activation), (x, y))


@pytest.mark.parametrize("device", DEVICES)
def test_elementwise_opcheck(device):
    for layout in (LAYOUTS[0], LAYOUTS[1], LAYOUTS[4]):
        for name in UNARY:
            op = getattr(torch.ops.fastcnn, ops.resolve_activation(name).name)
            x = _make(layout, torch.float64, device)
            torch.library.opcheck(op.default, raw_activation_args(name, x))
        for name, code in CODE.items():
            # A fused add differentiates only activations written in its output (the others raise).
            grad = name is None or GRAD_FROM_OUTPUT[name]
            args = (
                _make(layout, torch.float64, device, requires_grad=grad),
                _make(layout, torch.float64, device, requires_grad=grad),
                code,
            )
            torch.library.opcheck(torch.ops.fastcnn.add.default, args)
            y = torch.sigmoid(_make(layout, torch.float64, device, requires_grad=False))
            g = _make(layout, torch.float64, device, requires_grad=False)
            torch.library.opcheck(torch.ops.fastcnn.activation_backward.default, (g, y, code))


def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, device=device).to(dtype)


BAD = [
    ("relu-int", lambda: ops.relu(_t(2, 3).int()), r"input"),
    ("sigmoid-fp16-cpu", lambda: ops.sigmoid(_t(2, 3).half()), r"input.*float"),
    ("tanh-int-direct", lambda: torch.ops.fastcnn.tanh(_t(2, 3).long()), r"input"),
    ("relu-bf16-direct", lambda: torch.ops.fastcnn.relu(_t(2, 3).bfloat16()), r"input.*float"),
    ("relu-not-tensor", lambda: ops.relu([1.0, 2.0]), r"input"),
    ("leaky-relu-nan-slope", lambda: ops.leaky_relu(_t(2, 3), float("nan")), r"negative_slope"),
    ("leaky-relu-str-slope", lambda: ops.leaky_relu(_t(2, 3), "0.1"), r"negative_slope"),
    ("leaky-relu-tiny-slope", lambda: ops.leaky_relu(_t(2, 3), 1e-300), r"negative_slope.*2\*\*-31"),
    (
        "leaky-relu-tiny-slope-direct",
        lambda: torch.ops.fastcnn.leaky_relu(_t(2, 3), 1e-12),
        r"negative_slope.*2\^-31",
    ),
    (
        "leaky-relu-inf-slope-direct",
        lambda: torch.ops.fastcnn.leaky_relu(_t(2, 3), float("inf")),
        r"negative_slope",
    ),
    (
        "leaky-relu-spec-not-a-number",
        lambda: ops.add(_t(2, 3), _t(2, 3), activation="leaky_relu(abc)"),
        r"negative_slope",
    ),
    (
        "leaky-relu-spec-keyword",
        lambda: ops.add(_t(2, 3), _t(2, 3), activation="leaky_relu(alpha=0.1)"),
        r"negative_slope",
    ),
    (
        "relu-spec-parameter",
        lambda: ops.add(_t(2, 3), _t(2, 3), activation="relu(0.1)"),
        r"relu.*no parameter",
    ),
    (
        "relu-code-high-bits-direct",
        lambda: torch.ops.fastcnn.add(_t(2, 3), _t(2, 3), 1 | (1 << 40)),
        r"activation",
    ),
    (
        "leaky-relu-code-malformed-zero-direct",  # zero exponent field with mantissa bits set
        lambda: torch.ops.fastcnn.add(_t(2, 3), _t(2, 3), (1 << 11) | ACTIVATION_ROW_CODE["leaky_relu"]),
        r"activation",
    ),
    ("add-int", lambda: ops.add(_t(2, 3).int(), _t(2, 3).int()), r"input"),
    ("add-fp16-cpu", lambda: ops.add(_t(2, 3).half(), _t(2, 3).half()), r"input.*float"),
    ("add-dtype-mismatch", lambda: ops.add(_t(2, 3), _t(2, 3).double()), r"other"),
    ("add-shape", lambda: ops.add(_t(2, 3), _t(3, 2)), r"other"),
    ("add-broadcast", lambda: ops.add(_t(2, 3), _t(1, 3)), r"other"),
    ("add-shape-direct", lambda: torch.ops.fastcnn.add(_t(2, 3), _t(2, 4), 0), r"other"),
    ("add-meta", lambda: ops.add(_t(2, 3), _t(2, 3, device="meta")), r"other|input"),
    ("add-meta-direct", lambda: torch.ops.fastcnn.add(_t(2, 3, device="meta"), _t(2, 3), 0), r"other|input"),
    ("add-activation-unknown", lambda: ops.add(_t(2, 3), _t(2, 3), activation="elu"), r"activation"),
    (
        "add-activation-code-direct",
        lambda: torch.ops.fastcnn.add(_t(2, 3), _t(2, 3), INVALID_ACTIVATION_CODE),
        r"activation",
    ),
    (
        "activation-backward-shape-direct",
        lambda: torch.ops.fastcnn.activation_backward(_t(2, 3), _t(3, 2), 1),
        r"grad_output",
    ),
    (
        "activation-backward-dtype-direct",
        lambda: torch.ops.fastcnn.activation_backward(_t(2, 3).double(), _t(2, 3), 1),
        r"grad_output",
    ),
    (
        "activation-backward-code-direct",
        lambda: torch.ops.fastcnn.activation_backward(_t(2, 3), _t(2, 3), -2),
        r"activation",
    ),
    (
        "activation-backward-meta-direct",
        lambda: torch.ops.fastcnn.activation_backward(_t(2, 3, device="meta"), _t(2, 3), 1),
        r"grad_output|output",
    ),
]


@pytest.mark.parametrize("call,match", [pytest.param(c, m, id=i) for i, c, m in BAD])
def test_elementwise_bad_input(call, match):
    with pytest.raises((ValueError, RuntimeError, TypeError), match=match):
        call()


def test_fused_add_refuses_to_differentiate_an_input_grad_activation():
    """Called directly, a fused add with silu cannot be differentiated (its pre-activation is gone):
    backward raises instead of returning a wrong gradient; fastcnn.ops.add runs the activation apart."""
    x, y = _t(2, 3).requires_grad_(), _t(2, 3).requires_grad_()
    out = torch.ops.fastcnn.add(x, y, CODE["silu"])
    with pytest.raises(RuntimeError, match="add cannot differentiate a fused silu"):
        out.sum().backward()
    ops.add(x, y, activation="silu").sum().backward()
    xr, yr = x.detach().requires_grad_(), y.detach().requires_grad_()
    F.silu(xr + yr).sum().backward()
    assert_close(x.grad, xr.grad)


def test_add_empty_batch_is_an_error_or_empty():
    """Elementwise ops on an empty tensor must never crash: a clear error or PyTorch's empty result."""
    x, y = _t(0, 3, 4, 4), _t(0, 3, 4, 4)
    try:
        out = ops.add(x, y, activation="relu")
    except (ValueError, RuntimeError) as exc:
        assert "batch" in str(exc) or "input" in str(exc), str(exc)
    else:
        assert out.shape == x.shape


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_elementwise_cuda_dtypes(dtype, activation):
    x = make_tensor((2, 8, 13, 12), dtype, CUDA, torch.channels_last, requires_grad=True)
    y = make_tensor((2, 8, 13, 12), dtype, CUDA, torch.channels_last, requires_grad=True)
    out = ops.add(x, y, activation=activation)
    xr, yr = reference_copy(x), reference_copy(y)
    ref = TORCH_ACT[activation](xr + yr)
    assert out.dtype == dtype
    assert_memory_format(out, x)
    assert_close(out, ref, dtype, rtol=TOL[dtype])
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    if activation is None:
        ref.backward(grad)
    else:
        # act' at fastcnn's own rounded output or pre-activation, where its backward takes it: a sum
        # rounded onto a kink (hardsigmoid's 3) would otherwise change the gradient by a whole term.
        act_prime = kernel_act_prime(activation, out, lambda: ops.add(x.detach(), y.detach()))
        ((xr + yr) * act_prime).backward(grad)
    assert_close(x.grad, xr.grad, dtype, name="grad of input")
    assert_close(y.grad, yr.grad, dtype, name="grad of other")
    if activation is not None:
        ours, theirs = UNARY[activation]
        a = make_tensor((3, 1000), dtype, CUDA)
        assert_close(ours(a), theirs(a.double()), dtype)


@pytest.mark.gpu
def test_add_cuda_autocast_promotes():
    x = make_tensor((2, 3, 4, 4), torch.float16, CUDA)
    y = make_tensor((2, 3, 4, 4), torch.float32, CUDA)
    with torch.autocast("cuda", dtype=torch.float16):
        out = ops.add(x, y, activation="relu")
    assert out.dtype == torch.float32
    assert_close(out, F.relu(x.double() + y.double()), torch.float32)
