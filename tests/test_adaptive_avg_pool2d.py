"""fastcnn.ops.adaptive_avg_pool2d and its backward, against PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import CUDA, DEVICES, assert_close, assert_memory_format, make_tensor, reference_copy

from fastcnn import ops

# (input shape, output_size, channels_last, strided)
CASES = [
    ((2, 3, 8, 8), 1, False, False),  # global average pool
    ((1, 4, 7, 9), (1, 1), True, False),
    ((2, 3, 7, 9), (3, 4), False, False),  # windows of unequal size that overlap
    ((2, 3, 10, 11), (5, 11), True, False),  # exact division in h, identity in w
    ((2, 2, 5, 5), 7, False, False),  # output larger than input: windows repeat elements
    ((2, 3, 6, 7), (4, None), False, True),  # None keeps that input size; strided view
    ((2, 5, 7, 6), (2, 3), True, True),  # strided channels_last view
    ((3, 6, 5), (2, 2), False, False),  # unbatched
    ((1, 1, 1, 1), 1, False, False),
    ((2, 16, 13, 12), (3, 3), True, False),
    ((3, 2, 4, 13), (1, 5), False, False),
]


def _id(case):
    shape, size, cl, strided = case
    text = f"{'x'.join(map(str, shape))}-o{size}" + ("-cl" if cl else "") + ("-strided" if strided else "")
    return text.replace(" ", "").replace("(", "").replace(")", "").replace(",", "_")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_adaptive_avg_pool2d_matches_torch(case, dtype, device):
    shape, size, cl, strided = case
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = make_tensor(shape, dtype, device, fmt, strided, requires_grad=True)
    out = ops.adaptive_avg_pool2d(x, size)
    xr = reference_copy(x)
    ref = F.adaptive_avg_pool2d(xr, size)
    assert out.dtype == dtype
    assert_close(out, ref, dtype)
    assert_memory_format(out, x)
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    assert_close(x.grad, xr.grad, dtype, name="grad of input")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_adaptive_avg_pool2d_backward_op(channels_last, device):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = make_tensor((2, 3, 7, 8), device=device, memory_format=fmt)
    for g in (
        make_tensor((2, 3, 3, 5), device=device, memory_format=fmt),
        make_tensor((2, 3, 3, 5), device=device, noncontiguous=True),
    ):
        got = torch.ops.fastcnn.adaptive_avg_pool2d_backward(g, x)
        xr = reference_copy(x).requires_grad_()
        F.adaptive_avg_pool2d(xr, (3, 5)).backward(g)
        assert_close(got, xr.grad, name="grad_input")
        assert_memory_format(got, x)


@pytest.mark.parametrize("device", DEVICES)
def test_adaptive_avg_pool2d_nan_propagates(device):
    x = make_tensor((1, 2, 6, 6), device=device)
    x[0, 1, 2, 3] = float("nan")
    out = ops.adaptive_avg_pool2d(x, (3, 2))
    ref = F.adaptive_avg_pool2d(x, (3, 2))
    assert torch.isnan(ref).any()
    assert_close(out, ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,size", [((1, 2, 5, 5), (2, 3)), ((2, 1, 4, 3), 1), ((2, 3, 5), (4, 2))])
def test_adaptive_avg_pool2d_gradcheck(shape, size, device):
    x = make_tensor(shape, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.adaptive_avg_pool2d(x, size), (x,))


def _opcheck_samples(device):
    return [
        (make_tensor((2, 3, 6, 7), device=device, requires_grad=True), [2, 3]),
        (
            make_tensor((2, 3, 7, 7), device=device, memory_format=torch.channels_last, requires_grad=True),
            [1, 1],
        ),
        (make_tensor((1, 2, 5, 6), device=device, requires_grad=True), [7, 4]),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_adaptive_avg_pool2d_opcheck(device):
    for args in _opcheck_samples(device):
        torch.library.opcheck(torch.ops.fastcnn.adaptive_avg_pool2d.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_adaptive_avg_pool2d_backward_opcheck(device):
    for x, size in _opcheck_samples(device):
        x = x.detach()
        out = torch.ops.fastcnn.adaptive_avg_pool2d(x, size)
        torch.library.opcheck(
            torch.ops.fastcnn.adaptive_avg_pool2d_backward.default, (torch.randn_like(out), x)
        )


def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, device=device).to(dtype)


BAD = [
    ("int-input", lambda: ops.adaptive_avg_pool2d(_t(1, 2, 4, 4).int(), 2), r"input"),
    (
        "int-input-direct",
        lambda: torch.ops.fastcnn.adaptive_avg_pool2d(_t(1, 2, 4, 4).long(), [2, 2]),
        r"input",
    ),
    ("fp16-cpu", lambda: ops.adaptive_avg_pool2d(_t(1, 2, 4, 4).half(), 2), r"input.*float"),
    ("input-2d", lambda: ops.adaptive_avg_pool2d(_t(4, 4), 2), r"input"),
    ("input-3d-direct", lambda: torch.ops.fastcnn.adaptive_avg_pool2d(_t(2, 4, 4), [2, 2]), r"input"),
    ("output-size-zero", lambda: ops.adaptive_avg_pool2d(_t(1, 2, 4, 4), 0), r"output_size"),
    ("output-size-negative", lambda: ops.adaptive_avg_pool2d(_t(1, 2, 4, 4), (2, -1)), r"output_size"),
    ("output-size-triple", lambda: ops.adaptive_avg_pool2d(_t(1, 2, 4, 4), (2, 2, 2)), r"output_size"),
    (
        "output-size-zero-direct",
        lambda: torch.ops.fastcnn.adaptive_avg_pool2d(_t(1, 2, 4, 4), [0, 2]),
        r"output_size",
    ),
    ("empty-spatial-direct", lambda: torch.ops.fastcnn.adaptive_avg_pool2d(_t(1, 2, 0, 4), [2, 2]), r"input"),
    (
        "backward-grad-dims-direct",
        lambda: torch.ops.fastcnn.adaptive_avg_pool2d_backward(_t(1, 3, 2, 2), _t(1, 2, 4, 4)),
        r"grad_output",
    ),
    (
        "backward-grad-dtype-direct",
        lambda: torch.ops.fastcnn.adaptive_avg_pool2d_backward(_t(1, 2, 2, 2).double(), _t(1, 2, 4, 4)),
        r"grad_output",
    ),
    (
        "backward-grad-meta-direct",
        lambda: torch.ops.fastcnn.adaptive_avg_pool2d_backward(_t(1, 2, 2, 2, device="meta"), _t(1, 2, 4, 4)),
        r"grad_output",
    ),
]


@pytest.mark.parametrize("call,match", [pytest.param(c, m, id=i) for i, c, m in BAD])
def test_adaptive_avg_pool2d_bad_input(call, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        call()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_adaptive_avg_pool2d_cuda_dtypes(dtype, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = make_tensor((2, 8, 13, 12), dtype, CUDA, fmt, requires_grad=True)
    out = ops.adaptive_avg_pool2d(x, (3, 5))
    xr = reference_copy(x)
    ref = F.adaptive_avg_pool2d(xr, (3, 5))
    assert out.dtype == dtype
    assert_memory_format(out, x)
    assert_close(out, ref, dtype)
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    assert_close(x.grad, xr.grad, dtype)
