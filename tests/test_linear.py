"""fastcnn.ops.linear (fused matmul + bias + activation) and its backward, against PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    ACTIVATIONS,
    CODE,
    CUDA,
    DEVICES,
    FUSED_BACKWARD_ACTIVATIONS,
    INPUT_GRAD_ACTIVATIONS,
    INVALID_ACTIVATION_CODE,
    TOL,
    TORCH_ACT,
    assert_close,
    assert_componentwise,
    assert_grads_close,
    kernel_act_prime,
    make_tensor,
    reference_copy,
    relative_error,
)

from fastcnn import ops

# (input shape, out_features, bias, activation, noncontiguous input)
CASES = [
    ((1, 5), 3, True, None, False),  # batch 1
    ((4, 7), 6, True, "relu", False),
    ((3, 9), 1, False, "sigmoid", False),  # single output
    ((2, 3, 8), 5, True, "tanh", False),  # extra leading dim
    ((7,), 4, True, "relu", False),  # unbatched 1-D input
    ((5, 16), 33, True, "sigmoid", True),  # strided input
    ((2, 2, 3, 6), 2, False, None, True),
    ((17, 65), 31, True, "tanh", False),  # sizes off any vector width
    ((64, 128), 96, True, "relu", False),  # some reduction depth
    ((70, 37), 45, True, "relu", False),  # more than one 64-row chunk of the dot kernel
    ((1030, 19), 7, True, "tanh", False),  # more rows than the dot kernel takes: the packed GEMM
]


def _case_id(case):
    shape, out, bias, act, strided = case
    text = f"{'x'.join(map(str, shape))}-o{out}-{'bias' if bias else 'nobias'}-{act}"
    return text + ("-strided" if strided else "")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_linear_matches_torch(case, dtype, device):
    shape, out_features, bias, activation, strided = case
    x = make_tensor(shape, dtype, device, noncontiguous=strided, requires_grad=True)
    w = make_tensor((out_features, shape[-1]), dtype, device, requires_grad=True)
    b = make_tensor((out_features,), dtype, device, requires_grad=True) if bias else None
    out = ops.linear(x, w, b, activation=activation)
    xr, wr, br = (reference_copy(t) for t in (x, w, b))
    ref = TORCH_ACT[activation](F.linear(xr, wr, br))
    assert out.dtype == dtype and out.device == x.device
    assert_close(out, ref, dtype)
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    assert_grads_close([("input", x, xr), ("weight", w, wr), ("bias", b, br)], dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_linear_every_activation(activation, device):
    for bias in (False, True):
        x = make_tensor((3, 10), device=device, requires_grad=True)
        w = make_tensor((4, 10), device=device, requires_grad=True)
        b = make_tensor((4,), device=device, requires_grad=True) if bias else None
        out = ops.linear(x, w, b, activation=activation)
        xr, wr, br = (reference_copy(t) for t in (x, w, b))
        ref = TORCH_ACT[activation](F.linear(xr, wr, br))
        assert_close(out, ref)
        grad = torch.randn_like(ref)
        out.backward(grad)
        ref.backward(grad)
        assert_grads_close([("input", x, xr), ("weight", w, wr), ("bias", b, br)], torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "mask", [(True, True, True), (True, False, False), (False, True, False), (False, False, True)]
)
@pytest.mark.parametrize("activation", FUSED_BACKWARD_ACTIVATIONS)
def test_linear_backward_op(mask, activation, device):
    x = make_tensor((2, 3, 6), device=device)
    w = make_tensor((5, 6), device=device)
    b = make_tensor((5,), device=device)
    y = TORCH_ACT[activation](F.linear(x, w, b))
    g = make_tensor(y.shape, device=device)
    code = CODE[activation]
    got = torch.ops.fastcnn.linear_backward(g, x, w, y if code else None, code, list(mask))
    xr, wr, br = (reference_copy(t).requires_grad_() for t in (x, w, b))
    TORCH_ACT[activation](F.linear(xr, wr, br)).backward(g)
    for value, ref, wanted, name in zip(
        got, (xr.grad, wr.grad, br.grad), mask, ("grad_input", "grad_weight", "grad_bias"), strict=True
    ):
        if wanted:
            assert_close(value, ref, name=name)
        else:
            assert value.numel() == 0, f"{name} not requested but has shape {tuple(value.shape)}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_linear_nan_propagates(activation, device):
    x = make_tensor((3, 5), device=device)
    x[1, 2] = float("nan")
    w = make_tensor((4, 5), device=device)
    out = ops.linear(x, w, None, activation=activation)
    ref = TORCH_ACT[activation](F.linear(x, w))
    assert torch.isnan(ref).any()
    assert_close(out, ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_linear_gradcheck(activation, device):
    x = make_tensor((3, 4), device=device, requires_grad=True)
    w = make_tensor((2, 4), device=device, requires_grad=True)
    b = make_tensor((2,), device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.linear(x, w, b, activation=activation), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: ops.linear(x, w, None, activation=activation), (x[:2], w))


def _opcheck_samples(device):
    samples = []
    for shape, out, bias, act in [
        ((3, 5), 4, True, 0),
        ((2, 3, 6), 2, False, 1),
        ((4,), 3, True, 3),
        ((2, 7), 5, True, 2),
    ]:
        x = make_tensor(shape, device=device, requires_grad=True)
        w = make_tensor((out, shape[-1]), device=device, requires_grad=True)
        b = make_tensor((out,), device=device, requires_grad=True) if bias else None
        samples.append((x, w, b, act))
    return samples


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(5, 6), (2, 3, 6)], ids=["2d", "3d"])
def test_linear_output_supports_inplace_under_autograd(shape, device):
    """The output is a fresh tensor (not a view of an internal buffer), so an in-place activation on it
    works under autograd, as GoogLeNet's auxiliary heads do with F.relu(..., inplace=True)."""
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    out = ops.linear(x, w)
    assert out._base is None
    F.relu(out, inplace=True).sum().backward()
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.relu(F.linear(x_ref, w_ref)).sum().backward()
    assert_close(x.grad, x_ref.grad, name="grad of input")
    assert_close(w.grad, w_ref.grad, name="grad of weight")


@pytest.mark.parametrize("device", DEVICES)
def test_linear_opcheck(device):
    for args in _opcheck_samples(device):
        torch.library.opcheck(torch.ops.fastcnn.linear.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_linear_backward_opcheck(device):
    for x, w, b, act in _opcheck_samples(device):
        x, w = x.detach(), w.detach()
        y = torch.ops.fastcnn.linear(x, w, None if b is None else b.detach(), act)
        g = torch.randn_like(y)
        for mask in ([True, True, True], [False, True, False], [True, False, True]):
            torch.library.opcheck(
                torch.ops.fastcnn.linear_backward.default, (g, x, w, y if act else None, act, mask)
            )


def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, device=device).to(dtype)


BAD_LINEAR = [
    ("int-input", lambda: ops.linear(_t(2, 3).int(), _t(4, 3).int()), r"input"),
    (
        "int-input-direct",
        lambda: torch.ops.fastcnn.linear(_t(2, 3).long(), _t(4, 3).long(), None, 0),
        r"input",
    ),
    ("fp16-cpu", lambda: ops.linear(_t(2, 3).half(), _t(4, 3).half()), r"input.*float"),
    (
        "bf16-cpu-direct",
        lambda: torch.ops.fastcnn.linear(_t(2, 3).bfloat16(), _t(4, 3).bfloat16(), None, 0),
        r"input.*float",
    ),
    ("weight-dtype", lambda: ops.linear(_t(2, 3), _t(4, 3).double()), r"weight"),
    ("bias-dtype-direct", lambda: torch.ops.fastcnn.linear(_t(2, 3), _t(4, 3), _t(4).double(), 0), r"bias"),
    ("weight-meta", lambda: ops.linear(_t(2, 3), _t(4, 3, device="meta")), r"weight"),
    (
        "input-meta-direct",
        lambda: torch.ops.fastcnn.linear(_t(2, 3, device="meta"), _t(4, 3), None, 0),
        r"weight|input",
    ),
    (
        "bias-meta-direct",
        lambda: torch.ops.fastcnn.linear(_t(2, 3), _t(4, 3), _t(4, device="meta"), 0),
        r"bias",
    ),
    ("in-features", lambda: ops.linear(_t(2, 3), _t(4, 5)), r"weight|in_features|input"),
    ("weight-1d", lambda: ops.linear(_t(2, 3), _t(3)), r"weight"),
    ("weight-3d-direct", lambda: torch.ops.fastcnn.linear(_t(2, 3), _t(1, 4, 3), None, 0), r"weight"),
    ("input-0d-direct", lambda: torch.ops.fastcnn.linear(torch.tensor(1.0), _t(4, 1), None, 0), r"input"),
    ("bias-shape", lambda: ops.linear(_t(2, 3), _t(4, 3), _t(3)), r"bias"),
    ("bias-2d-direct", lambda: torch.ops.fastcnn.linear(_t(2, 3), _t(4, 3), _t(1, 4), 0), r"bias"),
    ("activation-unknown", lambda: ops.linear(_t(2, 3), _t(4, 3), activation="swish"), r"activation"),
    (
        "activation-code-direct",
        lambda: torch.ops.fastcnn.linear(_t(2, 3), _t(4, 3), None, INVALID_ACTIVATION_CODE),
        r"activation",
    ),
    (
        "backward-grad-shape-direct",
        lambda: torch.ops.fastcnn.linear_backward(_t(2, 5), _t(2, 3), _t(4, 3), None, 0, [True, True, True]),
        r"grad_output",
    ),
    (
        "backward-missing-output-direct",
        lambda: torch.ops.fastcnn.linear_backward(_t(2, 4), _t(2, 3), _t(4, 3), None, 2, [True, True, True]),
        r"output",
    ),
    (
        "backward-grad-meta-direct",
        lambda: torch.ops.fastcnn.linear_backward(
            _t(2, 4, device="meta"), _t(2, 3), _t(4, 3), None, 0, [True, True, True]
        ),
        r"grad_output",
    ),
]


@pytest.mark.parametrize("call,match", [pytest.param(c, m, id=i) for i, c, m in BAD_LINEAR])
def test_linear_bad_input(call, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        call()


def test_linear_empty_batch_is_empty():
    """An empty batch gives PyTorch's empty result (F.linear accepts it)."""
    x, w, b = _t(0, 3), _t(4, 3), _t(4)
    out = ops.linear(x, w, b)
    assert out.shape == (0, 4)


# --------------------------------------------------------------------------------------------------------
# CUDA-only
# --------------------------------------------------------------------------------------------------------


def _assert_rel(out, ref, tol, name):
    assert out.shape == ref.shape
    assert torch.equal(torch.isfinite(out), torch.isfinite(ref)), f"{name}: non-finite values"
    err = relative_error(out, ref)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"
    scale = ref.double().abs().max().item()
    torch.testing.assert_close(out.double(), ref.double(), rtol=tol, atol=tol * scale * 4)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, "tf32", torch.float32], ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_linear_cuda_precisions(dtype, activation):
    if dtype == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        dtype, tol = torch.float32, 1e-3
    else:
        tol = TOL[dtype]
    x = make_tensor((33, 70), dtype, CUDA, requires_grad=True)
    w = make_tensor((45, 70), dtype, CUDA, requires_grad=True)
    b = make_tensor((45,), dtype, CUDA, requires_grad=True)
    out = ops.linear(x, w, b, activation=activation)
    assert out.dtype == dtype
    xr, wr, br = (reference_copy(t) for t in (x, w, b))

    def kernel_pre_activation():
        return ops.linear(x.detach(), w.detach(), b.detach())

    ref = TORCH_ACT[activation](F.linear(xr, wr, br))
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    if tol != 1e-3:
        _assert_rel(out, ref, tol, "output")
        # act' where fastcnn's backward takes it, at its own rounded output or pre-activation: a value
        # rounded across a kink (ReLU's 0, hardswish's +-3) changes the gradient by a whole term, which
        # is not an error of the kernel (see test_conv2d._reference_at_kernel_kinks).
        if activation is None:
            ref.backward(grad)
        else:
            act_prime = kernel_act_prime(
                activation, out, lambda: ops.linear(x.detach(), w.detach(), b.detach())
            )
            (F.linear(xr, wr, br) * act_prime).backward(grad)
        for name, leaf, ref_leaf in (("input", x, xr), ("weight", w, wr), ("bias", b, br)):
            _assert_rel(leaf.grad, ref_leaf.grad, tol, f"grad of {name}")
        return
    # TF32: componentwise bounds against the same sums over |terms| (see test_conv2d's TF32 test), the
    # gradient taken through act'(y) at fastcnn's own output, as the kernel does.
    act_prime = kernel_act_prime(activation, out, kernel_pre_activation)
    with torch.no_grad():
        magnitude = F.linear(xr.abs(), wr.abs(), br.abs())
    assert_componentwise(out.detach(), ref.detach(), magnitude, tol, "output")
    (F.linear(xr, wr, br) * act_prime).backward(grad)
    leaves = [t.detach().abs().requires_grad_() for t in (xr, wr, br)]
    (F.linear(*leaves) * act_prime.abs()).backward(grad.abs())
    for name, leaf, ref_leaf, mag in zip(
        ("input", "weight", "bias"), (x, w, b), (xr, wr, br), leaves, strict=True
    ):
        assert_componentwise(leaf.grad, ref_leaf.grad, mag.grad, tol, f"grad of {name}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_linear_cuda_autocast(dtype):
    x = make_tensor((8, 40), torch.float32, "cuda")
    w = make_tensor((24, 40), torch.float32, "cuda")
    b = make_tensor((24,), torch.float32, "cuda")
    with torch.autocast("cuda", dtype=dtype):
        out = ops.linear(x, w, b, activation="tanh")
        ref = F.linear(x, w, b)
    assert out.dtype == dtype and ref.dtype == dtype
    _assert_rel(out.float(), torch.tanh(ref.float()), 1e-2, "output")


@pytest.mark.gpu
def test_linear_cuda_device_mismatch():
    with pytest.raises((ValueError, RuntimeError), match="weight"):
        ops.linear(_t(2, 3, device="cuda"), _t(4, 3))
    with pytest.raises((ValueError, RuntimeError), match="bias"):
        ops.linear(_t(2, 3, device="cuda"), _t(4, 3, device="cuda"), _t(4))


@pytest.mark.parametrize("activation", INPUT_GRAD_ACTIVATIONS)
def test_fused_backward_refuses_activations_differentiated_through_their_input(activation):
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    y = ops.linear(x, w, activation=activation)
    with pytest.raises(RuntimeError, match="cannot differentiate a fused"):
        torch.ops.fastcnn.linear_backward(y, x, w, y, CODE[activation], [True] * 3)
