"""fastcnn.ops.layer_norm / layer_norm2d and their backward, fastcnn.nn.LayerNorm / LayerNorm2d, against
PyTorch's layer norm in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import CUDA, DEVICES, assert_close, assert_memory_format, make_tensor
from torch import nn
from torchvision.models.convnext import LayerNorm2d as TorchvisionLayerNorm2d

import fastcnn
import fastcnn.nn as fnn
from fastcnn import ops

# (input shape, normalized_shape, strided)
CASES = [
    ((4, 7), [7], False),
    ((2, 5, 6, 96), [96], False),  # ConvNeXt's NHWC blocks: rows longer than a warp
    ((3, 4, 5), [4, 5], False),  # several normalised dims
    ((2, 3, 40), [40], True),
    ((6,), [6], False),
    ((2, 1, 3), [3], False),
]


def _case_id(case):
    shape, norm, strided = case
    return "x".join(map(str, shape)) + "-over-" + "x".join(map(str, norm)) + ("-strided" if strided else "")


def _grads(out, leaves, grad):
    present = [t for t in leaves if t is not None]
    found = iter(torch.autograd.grad(out, present, grad))
    return [None if t is None else next(found) for t in leaves]


def _check(fast, ref, x, weight, bias, dtype):
    """fast(x, w, b) against ref(x64, w64, b64): output and every gradient."""
    leaves = [x, weight, bias]
    ref_leaves = [None if t is None else t.detach().double().requires_grad_() for t in leaves]
    out = fast(x, weight, bias)
    expected = ref(*ref_leaves)
    assert out.dtype == x.dtype
    assert_close(out, expected, dtype)
    grad = torch.randn_like(expected)
    got_grads = _grads(out, leaves, grad.to(dtype))
    want_grads = _grads(expected, ref_leaves, grad)
    for name, leaf, got, want in zip(("input", "weight", "bias"), leaves, got_grads, want_grads, strict=True):
        if want is not None:
            assert got.dtype == leaf.dtype
            assert_close(got, want, dtype, name=f"grad of {name}")
    return out


def _affine(shape, dtype, device, affine):
    if not affine:
        return None, None
    w = (torch.rand(shape, dtype=dtype, device=device) + 0.5).requires_grad_()
    b = torch.randn(shape, dtype=dtype, device=device).requires_grad_()
    return w, b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_layer_norm_matches_torch(case, dtype, affine, device):
    shape, norm, strided = case
    x = make_tensor(shape, dtype, device, noncontiguous=strided)
    with torch.no_grad():
        x.mul_(3).add_(1)
    x.requires_grad_()
    w, b = _affine(norm, dtype, device, affine)
    _check(
        lambda x, w, b: ops.layer_norm(x, norm, w, b, 1e-5),
        lambda x, w, b: F.layer_norm(x, norm, w, b, 1e-5),
        x,
        w,
        b,
        dtype,
    )


def _torch_layer_norm2d(x, w, b, eps=1e-6):
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, eps).permute(0, 3, 1, 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (1, 70, 2, 2), (3, 8, 17, 19)], ids=str)
def test_layer_norm2d_matches_convnext(shape, channels_last, dtype, device):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = make_tensor(shape, dtype, device, fmt, requires_grad=True)
    w, b = _affine([shape[1]], dtype, device, True)
    out = _check(ops.layer_norm2d, _torch_layer_norm2d, x, w, b, dtype)
    assert_memory_format(out, x)


@pytest.mark.cuda
@pytest.mark.parametrize("param_dtype", [torch.float32, None], ids=["fp32-params", "own-params"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_reduced_precision_on_cuda(dtype, param_dtype):
    x = make_tensor((4, 6, 96), torch.float32, CUDA).to(dtype).requires_grad_()
    w, b = (
        t.detach().to(param_dtype or dtype).requires_grad_() for t in _affine([96], torch.float32, CUDA, True)
    )
    _check(
        lambda x, w, b: ops.layer_norm(x, [96], w, b),
        lambda x, w, b: F.layer_norm(x, [96], w, b),
        x,
        w,
        b,
        dtype,
    )
    x4 = make_tensor((2, 8, 5, 5), torch.float32, CUDA, torch.channels_last).to(dtype).requires_grad_()
    w4, b4 = (
        t.detach().to(param_dtype or dtype).requires_grad_() for t in _affine([8], torch.float32, CUDA, True)
    )
    _check(ops.layer_norm2d, _torch_layer_norm2d, x4, w4, b4, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_statistics_are_stable_far_from_zero(device):
    """Rows 1e4 standard deviations from zero: the float32 statistics keep the variance."""
    x = make_tensor((8, 300), torch.float32, device) + 3e4
    out, mean, rstd = torch.ops.fastcnn.layer_norm(x, 1, [300], None, None, 1e-5)
    x64 = x.double()
    assert_close(mean, x64.mean(1), torch.float32, name="mean")
    assert_close(rstd, (x64.var(1, unbiased=False) + 1e-5).rsqrt(), torch.float32, name="rstd")


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    x = make_tensor((3, 4, 5), device=device, requires_grad=True)
    w, b = _affine([5], torch.float64, device, True)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.layer_norm(x, 5, w, b), (x, w, b))
    x4 = make_tensor((2, 3, 4, 2), device=device, requires_grad=True)
    w4, b4 = _affine([3], torch.float64, device, True)
    assert torch.autograd.gradcheck(ops.layer_norm2d, (x4, w4, b4))


def test_results_do_not_depend_on_the_thread_count():
    saved = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            gen = torch.Generator().manual_seed(5)
            runs = []
            for fn, shape in (
                (lambda x, w: ops.layer_norm(x, 64, w), (300, 64)),
                (lambda x, w: ops.layer_norm2d(x, w), (4, 64, 30, 30)),
            ):
                x = torch.randn(shape, generator=gen).requires_grad_()
                w = torch.ones(64, requires_grad=True)
                out = fn(x, w)
                runs += [out.detach(), *torch.autograd.grad(out, (x, w), torch.ones_like(out))]
            results.append(runs)
    finally:
        torch.set_num_threads(saved)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_modules_and_convert():
    ln = nn.LayerNorm(16)
    ln2d = TorchvisionLayerNorm2d(8)
    with torch.no_grad():
        for m in (ln, ln2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_()
    model = nn.Sequential(ln2d, nn.Flatten(2), nn.Linear(4, 16), ln)
    converted = fastcnn.convert(model)
    assert type(converted[0]) is fnn.LayerNorm2d and type(converted[3]) is fnn.LayerNorm
    assert not converted.fastcnn_convert_report.skipped
    assert list(converted.state_dict()) == list(model.state_dict())
    x = torch.randn(3, 8, 2, 2)
    assert_close(converted(x), model(x), torch.float32)
    no_bias = nn.LayerNorm([4, 5], bias=False)
    converted_no_bias = fastcnn.convert(no_bias)
    y = torch.randn(2, 4, 5)
    assert_close(converted_no_bias(y), no_bias(y), torch.float32)


# ---- opcheck and bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_layer_norm_opcheck(device):
    for x, dim, norm, affine in [
        (make_tensor((3, 7), device=device, requires_grad=True), 1, [7], True),
        (make_tensor((2, 3, 4, 5), device=device, requires_grad=True), 2, [4, 5], False),
        (
            make_tensor((2, 6, 3, 3), device=device, memory_format=torch.channels_last, requires_grad=True),
            1,
            [6],
            True,
        ),
        (make_tensor((2, 6, 3, 3), device=device, requires_grad=True), 1, [6], True),
    ]:
        w, b = _affine(norm, torch.float64, device, affine)
        torch.library.opcheck(torch.ops.fastcnn.layer_norm.default, (x, dim, norm, w, b, 1e-5))
        out, mean, rstd = torch.ops.fastcnn.layer_norm(x, dim, norm, w, b, 1e-5)
        g = torch.randn_like(out)
        wd = None if w is None else w.detach()
        torch.library.opcheck(
            torch.ops.fastcnn.layer_norm_backward.default,
            (g, x.detach(), dim, norm, wd, mean, rstd, [True, affine, affine]),
        )


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


BAD = [
    ("shape-mismatch", lambda: ops.layer_norm(_t(2, 5), [4]), r"normalized_shape"),
    ("shape-mismatch-module", lambda: fnn.LayerNorm(4)(_t(2, 5)), r"normalized_shape"),
    ("too-many-dims", lambda: ops.layer_norm(_t(5), [1, 5]), r"normalized_shape"),
    ("weight-shape", lambda: ops.layer_norm(_t(2, 5), [5], _t(4)), r"weight"),
    ("bias-dtype", lambda: ops.layer_norm(_t(2, 5), [5], None, _t(5).double()), r"bias"),
    ("int-input", lambda: ops.layer_norm(_t(2, 5).int(), [5]), r"input"),
    ("fp16-cpu", lambda: ops.layer_norm(_t(2, 5).half(), [5]), r"input.*float"),
    ("empty", lambda: ops.layer_norm(_t(0, 5), [5]), r"empty"),
    ("negative-eps", lambda: ops.layer_norm(_t(2, 5), [5], eps=-1.0), r"eps"),
    ("2d-rank", lambda: ops.layer_norm2d(_t(2, 5, 3)), r"4-D"),
    ("2d-weight", lambda: ops.layer_norm2d(_t(2, 5, 3, 3), _t(3)), r"weight"),
    (
        "backward-rstd-shape",
        lambda: torch.ops.fastcnn.layer_norm_backward(
            _t(2, 5), _t(2, 5), 1, [5], None, _t(2), _t(3), [True] * 3
        ),
        r"rstd",
    ),
]


@pytest.mark.parametrize("call,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_layer_norm_bad_input(call, match):
    with pytest.raises((RuntimeError, ValueError), match=match):
        call()
