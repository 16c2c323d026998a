"""fastcnn.ops.batch_norm (fused with every activation), its backward, the running-statistics update and
fastcnn.nn.BatchNorm1d/2d, against PyTorch's batch norm in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    ACTIVATIONS,
    CUDA,
    DEVICES,
    EMULATED,
    TORCH_ACT,
    assert_close,
    assert_memory_format,
    make_tensor,
)
from torch import nn

import fastcnn
import fastcnn.nn as fnn
from fastcnn import ops

# (shape, channels_last, strided)
LAYOUTS = [
    ((4, 3, 5, 6), False, False),
    ((4, 3, 5, 6), True, False),
    ((3, 5, 4, 7), False, True),
    ((2, 6, 3, 5), True, True),
    ((2, 70, 3, 3), True, False),  # more channels than one channels_last tile
    ((300, 5, 2, 2), True, False),  # several statistics blocks in channels_last
    ((8, 5), False, False),  # BatchNorm1d on [N, C]
    ((3, 4, 7), False, False),  # BatchNorm1d on [N, C, L]
    ((1, 3, 2, 2), False, False),  # one sample: statistics over its pixels only
]


def _layout_id(layout):
    shape, cl, strided = layout
    return "x".join(map(str, shape)) + ("-cl" if cl else "") + ("-strided" if strided else "")


def _input(layout, dtype, device, shift=0.0):
    shape, cl, strided = layout
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = make_tensor(shape, dtype, device, fmt, strided)
    with torch.no_grad():
        x.mul_(2.0).add_(shift)  # not already normalised, so a missing step shows
    return x.requires_grad_()


def _params(channels, dtype, device, affine=True):
    if not affine:
        return None, None
    weight = (torch.rand(channels, dtype=dtype, device=device) + 0.5).requires_grad_()
    bias = torch.randn(channels, dtype=dtype, device=device).requires_grad_()
    return weight, bias


def _running(channels, dtype, device):
    return torch.randn(channels, dtype=dtype, device=device), torch.rand(
        channels, dtype=dtype, device=device
    ) + 0.5


def _reference(x, running_mean, running_var, weight, bias, training, momentum, eps, activation):
    """PyTorch's batch norm and activation in float64, on float64 copies (running statistics updated)."""
    xr = x.detach().double().requires_grad_()
    wr = None if weight is None else weight.detach().double().requires_grad_()
    br = None if bias is None else bias.detach().double().requires_grad_()
    rm = None if running_mean is None else running_mean.double().clone()
    rv = None if running_var is None else running_var.double().clone()
    out = TORCH_ACT[activation](F.batch_norm(xr, rm, rv, wr, br, training, momentum, eps))
    return out, (xr, wr, br), (rm, rv)


def _grads(out, leaves, grad):
    present = [t for t in leaves if t is not None]
    found = iter(torch.autograd.grad(out, present, grad))
    return [None if t is None else next(found) for t in leaves]


def _check(layout, dtype, device, training, activation, affine=True, with_running=True, shift=0.0):
    x = _input(layout, dtype, device, shift)
    channels = x.shape[1]
    weight, bias = _params(channels, dtype, device, affine)
    running_mean, running_var = _running(channels, dtype, device) if with_running else (None, None)
    ref_out, ref_leaves, (ref_rm, ref_rv) = _reference(
        x, running_mean, running_var, weight, bias, training, 0.1, 1e-5, activation
    )
    out = ops.batch_norm(
        x, running_mean, running_var, weight, bias, training, 0.1, 1e-5, activation=activation
    )
    assert out.dtype == x.dtype
    assert_memory_format(out, x)
    assert_close(out, ref_out, dtype)
    grad = torch.randn_like(ref_out)
    for name, got, ref in zip(
        ("input", "weight", "bias"),
        _grads(out, (x, weight, bias), grad.to(dtype)),
        _grads(ref_out, ref_leaves, grad),
        strict=True,
    ):
        if ref is None:
            continue
        assert got.dtype == dtype
        if name == "input":
            assert_memory_format(got, x)
        assert_close(got, ref, dtype, name=f"grad of {name}")
    if with_running:
        assert_close(running_mean, ref_rm, dtype, name="running_mean")
        assert_close(running_var, ref_rv, dtype, name="running_var")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=_layout_id)
def test_batch_norm_matches_torch(layout, training, dtype, device):
    _check(layout, dtype, device, training, None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("activation", ACTIVATIONS[1:])
@pytest.mark.parametrize("layout", [LAYOUTS[0], LAYOUTS[1], LAYOUTS[6]], ids=_layout_id)
def test_fused_activation_matches_torch(layout, activation, training, device):
    _check(layout, torch.float64, device, training, activation)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", [LAYOUTS[0], LAYOUTS[1]], ids=_layout_id)
def test_without_affine_or_running_statistics(layout, device):
    _check(layout, torch.float64, device, True, None, affine=False)
    _check(layout, torch.float64, device, True, "relu", with_running=False)
    _check(layout, torch.float64, device, False, None, affine=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", [LAYOUTS[0], LAYOUTS[1]], ids=_layout_id)
def test_statistics_are_stable_far_from_zero(layout, device):
    """A mean 1e4 standard deviations from zero: the float32 statistics stay within float32 error of the
    float64 ones, where E[x^2] - E[x]^2 would lose every digit of the variance; the output, which float32
    cannot hold better than |mean| * 2^-24 / std, is no worse than PyTorch's own float32 batch norm."""
    x = _input(layout, torch.float32, device, shift=2e4).detach()
    out, mean, var = torch.ops.fastcnn.batch_norm(x, None, None, None, None, True, 1e-5, 0)
    x64 = x.double()
    dims = [0, *range(2, x.dim())]
    assert_close(mean, x64.mean(dims), torch.float32, name="mean")
    assert_close(var, x64.var(dims, unbiased=False), torch.float32, name="var")
    ref = F.batch_norm(x64, None, None, training=True)
    torch_error = (F.batch_norm(x.to(device), None, None, training=True).double() - ref).abs().max()
    ours_error = (out.double() - ref).abs().max()
    assert ours_error <= 2 * torch_error + 1e-6, (ours_error, torch_error)


@pytest.mark.cuda
@pytest.mark.parametrize("param_dtype", [torch.float32, None], ids=["fp32-params", "own-params"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("layout", [LAYOUTS[0], LAYOUTS[1], LAYOUTS[4]], ids=_layout_id)
def test_reduced_precision_on_cuda(layout, dtype, param_dtype):
    x = _input(layout, torch.float32, CUDA).detach().to(dtype).requires_grad_()
    channels = x.shape[1]
    weight, bias = _params(channels, torch.float32, CUDA)
    running_mean, running_var = _running(channels, torch.float32, CUDA)
    pdt = param_dtype or dtype
    weight, bias = (t.detach().to(pdt).requires_grad_() for t in (weight, bias))
    running_mean, running_var = running_mean.to(pdt), running_var.to(pdt)
    ref_out, ref_leaves, (ref_rm, ref_rv) = _reference(
        x, running_mean, running_var, weight, bias, True, 0.1, 1e-5, "relu"
    )
    out = ops.batch_norm(x, running_mean, running_var, weight, bias, True, 0.1, 1e-5, activation="relu")
    assert out.dtype == dtype
    assert_close(out, ref_out, dtype)
    grad = torch.randn_like(ref_out)
    got = _grads(out, (x, weight, bias), grad.to(dtype))
    ref = _grads(ref_out, ref_leaves, grad)
    for name, g, r, leaf in zip(("input", "weight", "bias"), got, ref, (x, weight, bias), strict=True):
        assert g.dtype == leaf.dtype
        assert_close(g, r, dtype, name=f"grad of {name}")
    assert_close(running_mean, ref_rm, dtype, name="running_mean")
    assert_close(running_var, ref_rv, dtype, name="running_var")


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    for layout in (LAYOUTS[0], LAYOUTS[1], LAYOUTS[7]):
        for training in (True, False):
            x = _input(layout, torch.float64, device)
            weight, bias = _params(x.shape[1], torch.float64, device)
            rm, rv = _running(x.shape[1], torch.float64, device)

            def fn(x, w, b, training=training, rm=rm, rv=rv):
                return ops.batch_norm(x, rm.clone(), rv.clone(), w, b, training, activation="tanh")

            assert torch.autograd.gradcheck(fn, (x, weight, bias))


def test_results_do_not_depend_on_the_thread_count():
    """The statistics are merged in position order, so 1 and 2 intra-op threads give the same bits."""
    saved = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs = []
            for cl in (False, True):
                x = torch.randn(16, 24, 20, 20, generator=torch.Generator().manual_seed(3))
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                x.requires_grad_()
                w = torch.ones(24, requires_grad=True)
                out = ops.batch_norm(x, None, None, w, None, True, activation="relu")
                runs += [out, *torch.autograd.grad(out, (x, w), torch.ones_like(out))]
            results.append([t.detach() for t in runs])
    finally:
        torch.set_num_threads(saved)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


# ---- modules ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"momentum": None},
        {"affine": False},
        {"track_running_stats": False},
        {"momentum": 0.3, "eps": 1e-3},
    ],
    ids=["default", "cumulative", "no-affine", "no-running", "momentum-eps"],
)
@pytest.mark.parametrize(
    "cls", [(nn.BatchNorm2d, fnn.BatchNorm2d), (nn.BatchNorm1d, fnn.BatchNorm1d)], ids=["2d", "1d"]
)
def test_module_trains_and_evaluates_like_torch(cls, kwargs, device):
    torch_cls, fast_cls = cls
    ref = torch_cls(6, **kwargs).double().to(device)
    fast = fast_cls(6, **kwargs).double().to(device)
    fast.load_state_dict(ref.state_dict())
    assert list(fast.state_dict()) == list(ref.state_dict())
    shape = (5, 6, 4, 3) if torch_cls is nn.BatchNorm2d else (5, 6)
    for step in range(3):
        x = torch.randn(shape, dtype=torch.float64, device=device) * 3 + step
        assert_close(fast(x), ref(x), rtol=1e-12)
    for key, value in ref.state_dict().items():
        assert torch.equal(fast.state_dict()[key], value) or torch.allclose(
            fast.state_dict()[key], value, rtol=1e-12, atol=0
        ), key
    fast.eval()
    ref.eval()
    x = torch.randn(shape, dtype=torch.float64, device=device)
    assert_close(fast(x), ref(x), rtol=1e-12)


def test_module_fused_activation_and_repr():
    bn = fnn.BatchNorm2d(4, activation="relu6")
    assert "activation='relu6'" in repr(bn)
    x = torch.randn(3, 4, 5, 5) * 4
    ref = nn.BatchNorm2d(4)
    assert_close(bn(x), F.relu6(ref(x)), torch.float32)
    with pytest.raises(ValueError, match="activation"):
        fnn.BatchNorm2d(4, activation="swish")


def test_module_rejects_wrong_rank_like_torch():
    with pytest.raises(ValueError, match="expected 4D input"):
        fnn.BatchNorm2d(3)(torch.randn(2, 3, 4))


def test_convert_serves_batch_norm():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.BatchNorm1d(144))
    converted = fastcnn.convert(model)
    assert type(converted[1]) is fnn.BatchNorm2d and converted[1].activation is None
    assert type(converted[4]) is fnn.BatchNorm1d
    assert not converted.fastcnn_convert_report.skipped
    x = torch.randn(4, 3, 8, 8)
    assert_close(converted(x), model(x), torch.float32)


# ---- compile, export and opcheck -----------------------------------------------------------------------


def _opcheck_samples(device):
    for layout in (LAYOUTS[0], LAYOUTS[1], LAYOUTS[6]):
        x = _input(layout, torch.float64, device)
        w, b = _params(x.shape[1], torch.float64, device)
        rm, rv = _running(x.shape[1], torch.float64, device)
        yield (x, w, b, rm, rv, True, 1e-5, 1)
        yield (x, w, b, rm, rv, False, 1e-5, 0)
        yield (x, None, None, None, None, True, 1e-3, 2)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_norm_opcheck(device):
    for args in _opcheck_samples(device):
        torch.library.opcheck(torch.ops.fastcnn.batch_norm.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_norm_backward_and_update_opcheck(device):
    for x, w, b, rm, rv, training, eps, act in _opcheck_samples(device):
        out, mean, var = torch.ops.fastcnn.batch_norm(x, w, b, rm, rv, training, eps, act)
        g = torch.randn_like(out)
        mask = [True, w is not None, w is not None]
        torch.library.opcheck(
            torch.ops.fastcnn.batch_norm_backward.default,
            (
                g,
                x.detach(),
                None if w is None else w.detach(),
                mean,
                var,
                out.detach() if act else None,
                training,
                eps,
                act,
                mask,
            ),
        )
        if rm is not None:
            torch.library.opcheck(
                torch.ops.fastcnn.batch_norm_update_running_stats.default,
                (rm.clone(), rv.clone(), mean, var, 0.1, x.numel() // x.shape[1]),
            )


def test_compiled_module_matches_eager_and_updates_statistics():
    torch.manual_seed(0)
    eager = fnn.BatchNorm2d(5, activation="relu").double()
    compiled_module = fnn.BatchNorm2d(5, activation="relu").double()
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module, fullgraph=True, backend="aot_eager")
    for _ in range(2):
        x = torch.randn(4, 5, 6, 6, dtype=torch.float64, requires_grad=True)
        ours = compiled(x)
        ref = eager(x)
        assert_close(ours, ref, rtol=1e-12)
        g = torch.randn_like(ref)
        assert_close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0], rtol=1e-12)
    assert_close(compiled_module.running_mean, eager.running_mean, rtol=1e-12)
    assert_close(compiled_module.running_var, eager.running_var, rtol=1e-12)
    assert int(compiled_module.num_batches_tracked) == int(eager.num_batches_tracked) == 2


# ---- bad input -------------------------------------------------------------------------------------------


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


BAD = [
    (
        "one-value-per-channel",
        lambda: ops.batch_norm(_t(1, 3), None, None, training=True),
        r"Expected more than 1 value per channel when training",
    ),
    (
        "one-pixel-one-sample",
        lambda: fnn.BatchNorm2d(3)(_t(1, 3, 1, 1)),
        r"Expected more than 1 value per channel when training",
    ),
    (
        "running-mean-shape",
        lambda: ops.batch_norm(_t(2, 3, 4, 4), _t(4), _t(3), training=True),
        r"running_mean",
    ),
    (
        "running-var-dtype",
        lambda: ops.batch_norm(_t(2, 3, 4, 4), _t(3), _t(3).double(), training=True),
        r"running_var",
    ),
    ("only-running-mean", lambda: ops.batch_norm(_t(2, 3, 4, 4), _t(3), None, training=True), r"running_var"),
    ("eval-without-statistics", lambda: ops.batch_norm(_t(2, 3, 4, 4), None, None), r"running_mean"),
    ("weight-shape", lambda: ops.batch_norm(_t(2, 3, 4, 4), None, None, _t(2), training=True), r"weight"),
    (
        "bias-dtype",
        lambda: ops.batch_norm(_t(2, 3, 4, 4), None, None, _t(3), _t(3).double(), training=True),
        r"bias",
    ),
    ("int-input", lambda: ops.batch_norm(_t(2, 3).int(), None, None, training=True), r"input"),
    ("fp16-cpu", lambda: ops.batch_norm(_t(2, 3).half(), None, None, training=True), r"input.*float"),
    ("1-d-input", lambda: ops.batch_norm(_t(3), None, None, training=True), r"input"),
    ("empty-batch", lambda: ops.batch_norm(_t(0, 3, 2, 2), None, None, training=True), r"empty batch"),
    ("negative-eps", lambda: ops.batch_norm(_t(2, 3), None, None, training=True, eps=-1.0), r"eps"),
    ("momentum", lambda: ops.batch_norm(_t(2, 3), _t(3), _t(3), training=True, momentum=2.0), r"momentum"),
    (
        "activation",
        lambda: ops.batch_norm(_t(2, 3), None, None, training=True, activation="elu"),
        r"activation",
    ),
    (
        "backward-mean-dtype",
        lambda: torch.ops.fastcnn.batch_norm_backward(
            _t(2, 3), _t(2, 3), None, _t(3).double(), _t(3), None, True, 1e-5, 0, [True, False, False]
        ),
        r"mean",
    ),
    (
        "backward-needs-output",
        lambda: torch.ops.fastcnn.batch_norm_backward(
            _t(2, 3), _t(2, 3), None, _t(3), _t(3), None, True, 1e-5, 1, [True, False, False]
        ),
        r"output",
    ),
    (
        "update-count",
        lambda: torch.ops.fastcnn.batch_norm_update_running_stats(_t(3), _t(3), _t(3), _t(3), 0.1, 1),
        r"count",
    ),
    (
        "update-shape",
        lambda: torch.ops.fastcnn.batch_norm_update_running_stats(_t(3), _t(3), _t(4), _t(3), 0.1, 8),
        r"mean",
    ),
]


@pytest.mark.parametrize("call,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_batch_norm_bad_input(call, match):
    with pytest.raises((RuntimeError, ValueError), match=match):
        call()


def test_failed_call_leaves_running_statistics_and_counter_untouched():
    bn = fnn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.fill_(0.25)
        bn.running_var.fill_(2.0)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with pytest.raises(RuntimeError, match="Expected more than 1 value per channel"):
        bn(_t(1, 3, 1, 1))
    with pytest.raises(RuntimeError, match="input"):
        bn(_t(2, 3, 2, 2).int())
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
    # A shape mismatch of the statistics themselves: nothing is written to either of them.
    rm, rv = torch.zeros(3), torch.ones(4)
    with pytest.raises(RuntimeError, match="running_var"):
        ops.batch_norm(_t(4, 3, 2, 2), rm, rv, training=True)
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(4))


@pytest.mark.skipif(EMULATED, reason="the emulated CUDA kernels take CPU tensors")
@pytest.mark.gpu
def test_device_mix_names_the_argument():
    with pytest.raises(RuntimeError, match="weight"):
        ops.batch_norm(_t(2, 3).cuda(), None, None, _t(3), training=True)
