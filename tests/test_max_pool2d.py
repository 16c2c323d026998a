"""fastcnn.ops.max_pool2d (values and PyTorch-identical indices) and its backward, against PyTorch."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    CUDA,
    DEVICES,
    EMULATED,
    TOL,
    assert_close,
    assert_memory_format,
    make_tensor,
    reference_copy,
)

from fastcnn import ops

# (input shape, kernel, stride, padding, dilation, ceil_mode, channels_last, noncontiguous)
HAND_PICKED = [
    ((2, 3, 8, 8), 2, None, 0, 1, False, False, False),  # the common 2x2/2
    ((1, 2, 7, 9), 3, 2, 1, 1, False, False, False),  # batch 1, odd sizes, padding
    ((2, 3, 7, 9), 3, 2, 1, 1, True, False, False),  # ceil_mode
    ((2, 4, 9, 8), (3, 2), (1, 3), (1, 1), (2, 1), False, True, False),  # asymmetric, dilation, channels_last
    ((2, 4, 10, 11), 3, 3, 1, 2, True, True, False),  # stride 3, dilation 2, ceil, channels_last
    ((2, 3, 6, 7), 2, 1, 1, 1, False, False, True),  # strided view
    ((2, 5, 7, 6), 3, 2, 1, 1, True, True, True),  # strided channels_last view
    ((3, 6, 5), 2, 2, 0, 1, True, False, False),  # unbatched, ceil leaves a partial window
    ((2, 2, 5, 5), 5, 1, 2, 1, False, False, False),  # kernel = input, maximal padding
    ((1, 1, 1, 1), 1, 1, 0, 1, False, False, False),  # 1x1
    ((2, 16, 13, 12), 3, 2, 1, 1, False, True, False),  # ResNet stem pool shape, channels_last
]


def _random_cases(count, seed):
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        k = (rng.randint(1, 4), rng.randint(1, 4))
        s = (rng.randint(1, 3), rng.randint(1, 3))
        p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
        d = (rng.randint(1, 2), rng.randint(1, 2))
        hw = (rng.randint(1, 11), rng.randint(1, 11))
        if any(hw[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1 < 0 for i in range(2)):
            continue
        n = rng.choice([None, 1, 2, 3])
        shape = (rng.randint(1, 4), *hw) if n is None else (n, rng.randint(1, 4), *hw)
        cl = n is not None and rng.random() < 0.4
        cases.append((shape, k, s, p, d, rng.random() < 0.5, cl, rng.random() < 0.25))
    return cases


CASES = HAND_PICKED + _random_cases(14, seed=3141)


def _id(case):
    shape, k, s, p, d, ceil, cl, strided = case
    text = (
        f"{'x'.join(map(str, shape))}-k{k}-s{s}-p{p}-d{d}" + ("-ceil" if ceil else "") + ("-cl" if cl else "")
    )
    return (
        (text + ("-strided" if strided else ""))
        .replace(" ", "")
        .replace("(", "")
        .replace(")", "")
        .replace(",", "_")
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_max_pool2d_matches_torch(case, dtype, device):
    shape, k, s, p, d, ceil, cl, strided = case
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = make_tensor(shape, dtype, device, fmt, strided, requires_grad=True)
    out, idx = ops.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
    xr = reference_copy(x)
    ref, ref_idx = F.max_pool2d(xr, k, s, p, d, ceil, return_indices=True)
    # a max is one of the inputs, so even in fp32 the values are exact
    assert out.dtype == dtype
    assert_close(out, ref.to(dtype), rtol=0.0)
    assert idx.dtype == torch.int64
    assert torch.equal(idx, ref_idx), "indices differ from PyTorch's"
    assert_memory_format(out, x)
    assert_memory_format(idx, x)
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    assert_close(x.grad, xr.grad, dtype, name="grad of input")
    # without return_indices the op returns just the values
    assert torch.equal(ops.max_pool2d(x.detach(), k, s, p, d, ceil), out.detach())


@pytest.mark.parametrize("device", DEVICES)
def test_max_pool2d_ties_pick_pytorch_index(device):
    """Equal values in a window: the index (and so the gradient's destination) must be PyTorch's."""
    x = torch.zeros(1, 2, 6, 6, dtype=torch.float64, device=device)
    x[0, 1, ::2] = 1.0
    x.requires_grad_(True)
    out, idx = ops.max_pool2d(x, 3, 1, 1, return_indices=True)
    ref, ref_idx = F.max_pool2d(x.detach(), 3, 1, 1, return_indices=True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_max_pool2d_nan_propagates(channels_last, device):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = make_tensor((2, 3, 6, 6), device=device)
    x[0, 1, 2, 3] = float("nan")
    x[1, 2, 0, 0] = float("nan")
    x[1, 0, 4, 4] = float("inf")
    x[1, 0, 1, 1] = -float("inf")
    x = x.contiguous(memory_format=fmt)
    out, idx = ops.max_pool2d(x, 3, 2, 1, return_indices=True)
    ref, ref_idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert torch.isnan(ref).sum() >= 2
    assert_close(out, ref, rtol=0.0)
    assert torch.equal(idx, ref_idx)
    # an all -inf window still has a max (-inf) and a valid index
    y = torch.full((1, 1, 4, 4), -float("inf"), dtype=torch.float64, device=device)
    out, idx = ops.max_pool2d(y, 2, return_indices=True)
    ref, ref_idx = F.max_pool2d(y, 2, return_indices=True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_max_pool2d_backward_op(channels_last, device):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    # overlapping windows: one input receives several gradients and must sum them
    x = make_tensor((2, 3, 7, 8), device=device, memory_format=fmt)
    out, idx = F.max_pool2d(x, 3, 1, 1, return_indices=True)
    g = make_tensor(out.shape, device=device, memory_format=fmt)
    got = torch.ops.fastcnn.max_pool2d_backward(g, x, idx)
    xr = reference_copy(x).requires_grad_()
    F.max_pool2d(xr, 3, 1, 1).backward(g)
    assert_close(got, xr.grad, name="grad_input")
    assert_memory_format(got, x)
    # a non-contiguous grad_output
    g2 = make_tensor(out.shape, device=device, noncontiguous=True)
    xr.grad = None
    F.max_pool2d(xr, 3, 1, 1).backward(g2)
    assert_close(torch.ops.fastcnn.max_pool2d_backward(g2, x, idx), xr.grad, name="grad_input")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape,args",
    [
        ((1, 2, 5, 5), (2, 1, 0, 1, False)),
        ((2, 1, 5, 6), (3, 2, 1, 2, True)),
        ((2, 4, 4), (2, 2, 1, 1, True)),
    ],
)
def test_max_pool2d_gradcheck(shape, args, device):
    # distinct, well-separated values so finite differences never change which element is the max
    x = (
        torch.randperm(torch.Size(shape).numel(), device=device).double().reshape(shape) / 10
    ).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ops.max_pool2d(x, *args), (x,))


def _opcheck_samples(device):
    samples = []
    for shape, args, cl in [
        ((2, 3, 6, 7), ([2, 2], [2, 2], [0, 0], [1, 1], False), False),
        ((2, 3, 7, 7), ([3, 3], [2, 1], [1, 1], [1, 2], True), True),
        ((1, 2, 5, 6), ([3, 2], [1, 2], [1, 0], [1, 1], True), False),
    ]:
        fmt = torch.channels_last if cl else torch.contiguous_format
        samples.append((make_tensor(shape, device=device, memory_format=fmt, requires_grad=True), *args))
    return samples


@pytest.mark.parametrize("device", DEVICES)
def test_max_pool2d_opcheck(device):
    for args in _opcheck_samples(device):
        torch.library.opcheck(torch.ops.fastcnn.max_pool2d.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_max_pool2d_backward_opcheck(device):
    for x, *args in _opcheck_samples(device):
        x = x.detach()
        out, idx = torch.ops.fastcnn.max_pool2d(x, *args)
        torch.library.opcheck(torch.ops.fastcnn.max_pool2d_backward.default, (torch.randn_like(out), x, idx))


def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, device=device).to(dtype)


def _direct(x, k=(2, 2), s=(2, 2), p=(0, 0), d=(1, 1), ceil=False):
    return torch.ops.fastcnn.max_pool2d(x, list(k), list(s), list(p), list(d), ceil)


BAD = [
    ("int-input", lambda: ops.max_pool2d(_t(1, 2, 4, 4).int(), 2), r"input"),
    ("int-input-direct", lambda: _direct(_t(1, 2, 4, 4).long()), r"input"),
    ("fp16-cpu", lambda: ops.max_pool2d(_t(1, 2, 4, 4).half(), 2), r"input.*float"),
    ("bf16-cpu-direct", lambda: _direct(_t(1, 2, 4, 4).bfloat16()), r"input.*float"),
    ("input-2d", lambda: ops.max_pool2d(_t(4, 4), 2), r"input"),
    ("input-5d", lambda: ops.max_pool2d(_t(1, 1, 2, 4, 4), 2), r"input"),
    ("input-3d-direct", lambda: _direct(_t(2, 4, 4)), r"input"),
    ("kernel-zero", lambda: ops.max_pool2d(_t(1, 2, 4, 4), 0), r"kernel_size"),
    ("kernel-negative-direct", lambda: _direct(_t(1, 2, 4, 4), k=(2, -1)), r"kernel_size"),
    ("stride-zero", lambda: ops.max_pool2d(_t(1, 2, 4, 4), 2, 0), r"stride"),
    ("stride-negative-direct", lambda: _direct(_t(1, 2, 4, 4), s=(-1, 1)), r"stride"),
    ("dilation-zero", lambda: ops.max_pool2d(_t(1, 2, 4, 4), 2, 2, 0, 0), r"dilation"),
    ("padding-negative", lambda: ops.max_pool2d(_t(1, 2, 4, 4), 2, 2, -1), r"padding"),
    ("padding-over-half-kernel", lambda: ops.max_pool2d(_t(1, 2, 6, 6), 2, 2, 2), r"padding"),
    ("output-too-small", lambda: ops.max_pool2d(_t(1, 2, 2, 2), 3), r"output size"),
    ("output-too-small-dilated-direct", lambda: _direct(_t(1, 2, 3, 3), k=(2, 2), d=(3, 3)), r"output size"),
    ("empty-channels-direct", lambda: _direct(_t(1, 0, 4, 4)), r"channels|input"),
    (
        "backward-grad-shape-direct",
        lambda: torch.ops.fastcnn.max_pool2d_backward(
            _t(1, 2, 3, 3), _t(1, 2, 4, 4), torch.zeros(1, 2, 2, 2, dtype=torch.long)
        ),
        r"grad_output|indices",
    ),
    (
        "backward-indices-dtype-direct",
        lambda: torch.ops.fastcnn.max_pool2d_backward(
            _t(1, 2, 2, 2), _t(1, 2, 4, 4), torch.zeros(1, 2, 2, 2, dtype=torch.int32)
        ),
        r"indices",
    ),
    (
        "backward-grad-dtype-direct",
        lambda: torch.ops.fastcnn.max_pool2d_backward(
            _t(1, 2, 2, 2).double(), _t(1, 2, 4, 4), torch.zeros(1, 2, 2, 2, dtype=torch.long)
        ),
        r"grad_output",
    ),
    (
        "backward-grad-meta-direct",
        lambda: torch.ops.fastcnn.max_pool2d_backward(
            _t(1, 2, 2, 2, device="meta"), _t(1, 2, 4, 4), torch.zeros(1, 2, 2, 2, dtype=torch.long)
        ),
        r"grad_output",
    ),
    (
        "backward-indices-meta-direct",
        lambda: torch.ops.fastcnn.max_pool2d_backward(
            _t(1, 2, 2, 2), _t(1, 2, 4, 4), torch.zeros(1, 2, 2, 2, dtype=torch.long, device="meta")
        ),
        r"indices",
    ),
]


@pytest.mark.parametrize("call,match", [pytest.param(c, m, id=i) for i, c, m in BAD])
def test_max_pool2d_bad_input(call, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        call()


@pytest.mark.parametrize("bad_index", [-1, 16])
@pytest.mark.skipif(EMULATED, reason="the CUDA kernel skips out-of-range indices: checking them would sync")
def test_max_pool2d_backward_out_of_range_indices(bad_index):
    """An index outside the input plane must be rejected, never written out of bounds."""
    idx = torch.zeros(1, 1, 2, 2, dtype=torch.long)
    idx[0, 0, 1, 1] = bad_index
    with pytest.raises((ValueError, RuntimeError), match=r"indices|index"):
        torch.ops.fastcnn.max_pool2d_backward(_t(1, 1, 2, 2), _t(1, 1, 4, 4), idx)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_max_pool2d_cuda_dtypes(dtype, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = make_tensor((2, 8, 13, 12), dtype, CUDA, fmt, requires_grad=True)
    out, idx = ops.max_pool2d(x, 3, 2, 1, return_indices=True)
    ref, ref_idx = F.max_pool2d(x.detach(), 3, 2, 1, return_indices=True)
    assert out.dtype == dtype
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    assert_memory_format(out, x)
    grad = torch.randn_like(out)
    out.backward(grad)
    xr = reference_copy(x)
    F.max_pool2d(xr, 3, 2, 1).backward(grad.double())
    assert_close(x.grad, xr.grad, dtype, rtol=TOL[dtype])
