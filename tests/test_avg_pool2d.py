"""fastcnn.ops.avg_pool2d and its backward, against PyTorch."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from conftest import CUDA, DEVICES, assert_close, assert_memory_format, make_tensor, reference_copy

from fastcnn import ops

# (input shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override,
#  channels_last, strided)
HAND_PICKED = [
    ((2, 3, 8, 8), 2, None, 0, False, True, None, False, False),
    ((1, 2, 7, 9), 3, 2, 1, False, True, None, False, False),  # batch 1, padding counted
    ((2, 2, 7, 9), 3, 2, 1, False, False, None, False, False),  # padding not counted
    ((2, 3, 7, 9), 3, 2, 1, True, True, None, True, False),  # ceil: last window clipped
    ((2, 3, 7, 9), 3, 2, 1, True, False, None, False, False),
    ((2, 4, 9, 8), (3, 2), (1, 3), (1, 1), False, True, None, True, False),
    ((2, 3, 10, 11), 3, 3, 1, True, False, 5, True, False),  # divisor_override, stride 3
    ((2, 3, 6, 7), 2, 1, 1, False, True, -3, False, True),  # negative divisor, strided view
    ((2, 5, 7, 6), 3, 2, 1, True, True, None, True, True),  # strided channels_last view
    ((3, 6, 5), 2, 2, 0, True, True, None, False, False),  # unbatched
    ((2, 2, 5, 5), 5, 1, 2, False, False, None, False, False),
    ((1, 1, 1, 1), 1, 1, 0, False, True, None, False, False),
    ((2, 16, 7, 7), 7, None, 0, False, True, None, True, False),  # global pool
]


def _random_cases(count, seed):
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        k = (rng.randint(1, 4), rng.randint(1, 4))
        s = (rng.randint(1, 3), rng.randint(1, 3))
        p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
        hw = (rng.randint(1, 11), rng.randint(1, 11))
        if any(hw[i] + 2 * p[i] - k[i] < 0 for i in range(2)):
            continue
        n = rng.choice([None, 1, 2, 3])
        shape = (rng.randint(1, 4), *hw) if n is None else (n, rng.randint(1, 4), *hw)
        cl = n is not None and rng.random() < 0.4
        div = rng.choice([None, None, None, 3])
        cases.append((shape, k, s, p, rng.random() < 0.5, rng.random() < 0.5, div, cl, rng.random() < 0.25))
    return cases


CASES = HAND_PICKED + _random_cases(14, seed=2718)


def _id(case):
    shape, k, s, p, ceil, cip, div, cl, strided = case
    text = (
        f"{'x'.join(map(str, shape))}-k{k}-s{s}-p{p}"
        + ("-ceil" if ceil else "")
        + ("-cip" if cip else "-nopad")
    )
    text += (
        (f"-div{div}" if div is not None else "") + ("-cl" if cl else "") + ("-strided" if strided else "")
    )
    return text.replace(" ", "").replace("(", "").replace(")", "").replace(",", "_")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_avg_pool2d_matches_torch(case, dtype, device):
    shape, k, s, p, ceil, cip, div, cl, strided = case
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = make_tensor(shape, dtype, device, fmt, strided, requires_grad=True)
    out = ops.avg_pool2d(x, k, s, p, ceil, cip, div)
    xr = reference_copy(x)
    ref = F.avg_pool2d(xr, k, s, p, ceil, cip, div)
    assert out.dtype == dtype
    assert_close(out, ref, dtype)
    assert_memory_format(out, x)
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    assert_close(x.grad, xr.grad, dtype, name="grad of input")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_avg_pool2d_backward_op(channels_last, device):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    args = ([3, 3], [2, 1], [1, 1], True, False, None)
    x = make_tensor((2, 3, 7, 8), device=device, memory_format=fmt)
    out = F.avg_pool2d(x, *args)
    for g in (
        make_tensor(out.shape, device=device, memory_format=fmt),
        make_tensor(out.shape, device=device, noncontiguous=True),
    ):
        got = torch.ops.fastcnn.avg_pool2d_backward(g, x, *args)
        xr = reference_copy(x).requires_grad_()
        F.avg_pool2d(xr, *args).backward(g)
        assert_close(got, xr.grad, name="grad_input")
        assert_memory_format(got, x)


@pytest.mark.parametrize("device", DEVICES)
def test_avg_pool2d_nan_propagates(device):
    x = make_tensor((1, 2, 6, 6), device=device)
    x[0, 1, 2, 3] = float("nan")
    x[0, 0, 0, 0] = float("inf")
    out = ops.avg_pool2d(x, 3, 2, 1)
    ref = F.avg_pool2d(x, 3, 2, 1)
    assert torch.isnan(ref).any() and torch.isinf(ref).any()
    assert_close(out, ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape,args",
    [
        ((1, 2, 5, 5), (2, 1, 0, False, True, None)),
        ((2, 1, 5, 6), (3, 2, 1, True, False, None)),
        ((2, 4, 4), (3, 2, 1, True, True, 2)),
    ],
)
def test_avg_pool2d_gradcheck(shape, args, device):
    x = make_tensor(shape, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.avg_pool2d(x, *args), (x,))


def _opcheck_samples(device):
    samples = []
    for shape, args, cl in [
        ((2, 3, 6, 7), ([2, 2], [2, 2], [0, 0], False, True, None), False),
        ((2, 3, 7, 7), ([3, 3], [2, 1], [1, 1], True, False, None), True),
        ((1, 2, 5, 6), ([3, 2], [1, 2], [1, 0], True, True, 4), False),
    ]:
        fmt = torch.channels_last if cl else torch.contiguous_format
        samples.append((make_tensor(shape, device=device, memory_format=fmt, requires_grad=True), *args))
    return samples


@pytest.mark.parametrize("device", DEVICES)
def test_avg_pool2d_opcheck(device):
    for args in _opcheck_samples(device):
        torch.library.opcheck(torch.ops.fastcnn.avg_pool2d.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_avg_pool2d_backward_opcheck(device):
    for x, *args in _opcheck_samples(device):
        x = x.detach()
        out = torch.ops.fastcnn.avg_pool2d(x, *args)
        torch.library.opcheck(
            torch.ops.fastcnn.avg_pool2d_backward.default, (torch.randn_like(out), x, *args)
        )


def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, device=device).to(dtype)


def _direct(x, k=(2, 2), s=(2, 2), p=(0, 0), ceil=False, cip=True, div=None):
    return torch.ops.fastcnn.avg_pool2d(x, list(k), list(s), list(p), ceil, cip, div)


BAD = [
    ("int-input", lambda: ops.avg_pool2d(_t(1, 2, 4, 4).int(), 2), r"input"),
    ("int-input-direct", lambda: _direct(_t(1, 2, 4, 4).long()), r"input"),
    ("fp16-cpu", lambda: ops.avg_pool2d(_t(1, 2, 4, 4).half(), 2), r"input.*float"),
    ("input-2d", lambda: ops.avg_pool2d(_t(4, 4), 2), r"input"),
    ("input-3d-direct", lambda: _direct(_t(2, 4, 4)), r"input"),
    ("kernel-zero", lambda: ops.avg_pool2d(_t(1, 2, 4, 4), 0), r"kernel_size"),
    ("kernel-negative-direct", lambda: _direct(_t(1, 2, 4, 4), k=(-2, 2)), r"kernel_size"),
    ("stride-zero", lambda: ops.avg_pool2d(_t(1, 2, 4, 4), 2, 0), r"stride"),
    ("stride-negative-direct", lambda: _direct(_t(1, 2, 4, 4), s=(1, -1)), r"stride"),
    ("padding-negative", lambda: ops.avg_pool2d(_t(1, 2, 4, 4), 2, 2, -1), r"padding"),
    ("padding-over-half-kernel", lambda: ops.avg_pool2d(_t(1, 2, 6, 6), 3, 2, 2), r"padding"),
    ("output-too-small", lambda: ops.avg_pool2d(_t(1, 2, 2, 2), 3), r"output size"),
    ("divisor-zero", lambda: ops.avg_pool2d(_t(1, 2, 4, 4), 2, divisor_override=0), r"divisor_override"),
    ("divisor-zero-direct", lambda: _direct(_t(1, 2, 4, 4), div=0), r"divisor_override"),
    (
        "backward-grad-shape-direct",
        lambda: torch.ops.fastcnn.avg_pool2d_backward(
            _t(1, 2, 3, 3), _t(1, 2, 4, 4), [2, 2], [2, 2], [0, 0], False, True, None
        ),
        r"grad_output",
    ),
    (
        "backward-grad-dtype-direct",
        lambda: torch.ops.fastcnn.avg_pool2d_backward(
            _t(1, 2, 2, 2).double(), _t(1, 2, 4, 4), [2, 2], [2, 2], [0, 0], False, True, None
        ),
        r"grad_output",
    ),
    (
        "backward-grad-meta-direct",
        lambda: torch.ops.fastcnn.avg_pool2d_backward(
            _t(1, 2, 2, 2, device="meta"), _t(1, 2, 4, 4), [2, 2], [2, 2], [0, 0], False, True, None
        ),
        r"grad_output",
    ),
]


@pytest.mark.parametrize("call,match", [pytest.param(c, m, id=i) for i, c, m in BAD])
def test_avg_pool2d_bad_input(call, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        call()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_avg_pool2d_cuda_dtypes(dtype, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = make_tensor((2, 8, 13, 12), dtype, CUDA, fmt, requires_grad=True)
    out = ops.avg_pool2d(x, 3, 2, 1, True, False)
    xr = reference_copy(x)
    ref = F.avg_pool2d(xr, 3, 2, 1, True, False)
    assert out.dtype == dtype
    assert_memory_format(out, x)
    assert_close(out, ref, dtype)
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    assert_close(x.grad, xr.grad, dtype)
