"""fastcnn.nn modules against their torch.nn twins, and a short training run of a whole network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ACTIVATIONS, DEVICES, TORCH_ACT, assert_close, make_tensor
from torch import nn

import fastcnn.nn as fnn
from fastcnn import ops

# (id, constructor args, kwargs, input shape, channels_last)
MODULE_CASES = [
    ("Conv2d", (3, 4, 3), dict(padding=1), (2, 3, 7, 6), False),
    (
        "Conv2d",
        (4, 6, (3, 2)),
        dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, bias=False),
        (2, 4, 9, 8),
        True,
    ),
    ("Conv2d", (4, 8, 3), dict(padding="same", groups=4), (1, 4, 6, 7), False),
    ("Conv2d", (2, 3, 4), dict(padding="same"), (2, 2, 6, 6), False),  # even kernel, asymmetric "same"
    ("Conv2d", (3, 4, 3), dict(padding="valid", stride=2), (3, 7, 7), False),  # unbatched
    ("Conv2d", (3, 4, 3), dict(padding=1, padding_mode="reflect"), (2, 3, 6, 7), False),
    ("Conv2d", (3, 4, 3), dict(padding=(2, 1), padding_mode="replicate", stride=2), (2, 3, 6, 7), True),
    ("Conv2d", (3, 4, 3), dict(padding=1, padding_mode="circular", dilation=1), (2, 3, 6, 7), False),
    ("Conv2d", (2, 4, 3), dict(padding=2, padding_mode="circular", dilation=2, groups=2), (1, 2, 8, 7), True),
    ("Linear", (5, 3), dict(), (4, 5), False),
    ("Linear", (6, 2), dict(bias=False), (2, 3, 6), False),
    ("MaxPool2d", (3,), dict(stride=2, padding=1), (2, 3, 7, 8), False),
    ("MaxPool2d", (2,), dict(ceil_mode=True, dilation=2), (2, 3, 7, 8), True),
    ("AvgPool2d", (3,), dict(stride=2, padding=1, count_include_pad=False), (2, 3, 7, 8), True),
    ("AvgPool2d", (2,), dict(ceil_mode=True, divisor_override=3), (3, 7, 8), False),
    ("AdaptiveAvgPool2d", ((2, 3),), dict(), (2, 3, 7, 8), False),
    ("AdaptiveAvgPool2d", (1,), dict(), (2, 5, 4, 4), True),
    ("ReLU", (), dict(), (2, 3, 4, 4), False),
    ("ReLU", (), dict(inplace=True), (2, 3, 4, 4), False),
    ("Sigmoid", (), dict(), (2, 3, 4, 4), True),
    ("Tanh", (), dict(), (5, 7), False),
    ("LeakyReLU", (), dict(), (2, 3, 4, 4), True),
    ("LeakyReLU", (0.2,), dict(inplace=True), (2, 3, 4, 4), False),
    ("LeakyReLU", (), dict(negative_slope=-1.5), (5, 7), False),
    ("Flatten", (), dict(), (2, 3, 4, 4), False),
]


def _mod_id(case):
    name, args, kwargs, shape, cl = case
    extra = "-".join(f"{k}={v}" for k, v in kwargs.items()).replace(" ", "")
    return f"{name}{args}-{extra}-{'x'.join(map(str, shape))}{'-cl' if cl else ''}".replace(" ", "")


class _CloneThen(nn.Module):
    """Feeds the wrapped module a copy: torch.nn's in-place ReLU cannot run on a leaf that needs grad."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x.clone())


def _pair_modules(name, args, kwargs, device, dtype=torch.float64):
    theirs = getattr(nn, name)(*args, **kwargs).to(device, dtype)
    ours = getattr(fnn, name)(*args, **kwargs).to(device, dtype)
    assert isinstance(ours, type(theirs))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def _compare(ours, theirs, inputs_ours, inputs_theirs, dtype=torch.float64):
    out, ref = ours(*inputs_ours), theirs(*inputs_theirs)
    assert_close(out, ref, dtype)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert_close(p.grad, q.grad, dtype, name=f"grad of {name}")
    for i, (a, b) in enumerate(zip(inputs_ours, inputs_theirs, strict=True)):
        if a is not None and a.requires_grad:
            assert_close(a.grad, b.grad, dtype, name=f"grad of input {i}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", MODULE_CASES, ids=_mod_id)
def test_module_matches_torch_nn(case, device):
    name, args, kwargs, shape, cl = case
    ours, theirs = _pair_modules(name, args, kwargs, device)
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = make_tensor(shape, device=device, memory_format=fmt, requires_grad=True)
    xr = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    _compare(ours, _CloneThen(theirs) if kwargs.get("inplace") else theirs, (x,), (xr,))
    # and back: fastcnn's state_dict loads into torch.nn
    fresh = getattr(nn, name)(*args, **kwargs).to(device, torch.float64)
    fresh.load_state_dict(ours.state_dict(), strict=True)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, ours.state_dict()[key])


@pytest.mark.parametrize("device", DEVICES)
def test_maxpool_module_return_indices(device):
    ours, theirs = _pair_modules("MaxPool2d", (3, 2, 1), dict(return_indices=True), device)
    x = make_tensor((2, 3, 7, 7), device=device)
    (out, idx), (ref, ref_idx) = ours(x), theirs(x)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_conv2d_module_activation_and_residual(activation, device):
    ours = fnn.Conv2d(3, 4, 3, padding=1, activation=activation).to(device, torch.float64)
    conv = nn.Conv2d(3, 4, 3, padding=1).to(device, torch.float64)
    conv.load_state_dict(ours.state_dict(), strict=True)
    x = make_tensor((2, 3, 6, 5), device=device, requires_grad=True)
    r = make_tensor((2, 4, 6, 5), device=device, requires_grad=True)
    xr, rr = (t.detach().clone().requires_grad_() for t in (x, r))

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x, r=None):
            y = self.conv(x)
            return TORCH_ACT[activation](y if r is None else y + r)

    ref_module = Reference()
    _compare(ours, ref_module, (x, r), (xr, rr))
    x.grad = xr.grad = None
    ours.zero_grad()
    ref_module.zero_grad()
    _compare(ours, ref_module, (x,), (xr,))
    if activation:
        assert f"activation={activation!r}" in repr(ours)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_linear_module_activation(activation, device):
    ours = fnn.Linear(6, 3, activation=activation).to(device, torch.float64)
    lin = nn.Linear(6, 3).to(device, torch.float64)
    lin.load_state_dict(ours.state_dict(), strict=True)
    row = ops.resolve_activation(activation)
    kwargs = dict(row.module_attrs)
    if row.parameter_name is not None:
        kwargs[row.parameter_name] = row.parameter
    act = nn.Identity() if activation is None else row.module(**kwargs)
    ref_module = nn.Sequential(lin, act)
    x = make_tensor((4, 6), device=device, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    _compare(ours, ref_module, (x,), (xr,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_residual_add(activation, device):
    block = fnn.ResidualAdd(activation)
    assert list(block.state_dict()) == []
    x = make_tensor((2, 3, 4, 4), device=device, memory_format=torch.channels_last, requires_grad=True)
    y = make_tensor((2, 3, 4, 4), device=device, memory_format=torch.channels_last, requires_grad=True)
    xr, yr = (t.detach().clone(memory_format=torch.preserve_format).requires_grad_() for t in (x, y))
    out = block(x, y)
    ref = TORCH_ACT[activation](xr + yr)
    assert_close(out, ref)
    assert out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    assert_close(x.grad, xr.grad, name="grad of input")
    assert_close(y.grad, yr.grad, name="grad of identity")
    assert repr(activation) in repr(block)


@pytest.mark.parametrize("module", ["Conv2d", "Linear", "ResidualAdd"])
def test_unknown_activation_fails_at_construction(module):
    args = {"Conv2d": (3, 4, 3), "Linear": (3, 4), "ResidualAdd": ()}[module]
    with pytest.raises(ValueError, match="activation"):
        getattr(fnn, module)(*args, activation="elu")


# --------------------------------------------------------------------------------------------------------
# training: fastcnn.nn and torch.nn, same init and batches, must stay together for 20 SGD steps
# --------------------------------------------------------------------------------------------------------


class FastcnnNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = fnn.Conv2d(3, 8, 3, padding=1, activation="relu")
        self.pool = fnn.MaxPool2d(2)
        self.conv1 = fnn.Conv2d(8, 8, 3, padding=1, activation="relu")
        self.conv2 = fnn.Conv2d(8, 8, 3, padding=1, activation="relu")  # relu(conv2(h) + identity)
        self.dw = fnn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8)
        self.join = fnn.ResidualAdd("relu")
        self.avg = fnn.AvgPool2d(2, ceil_mode=True)
        self.gap = fnn.AdaptiveAvgPool2d(2)
        self.flatten = fnn.Flatten()
        self.fc1 = fnn.Linear(64, 32, activation="tanh")
        self.fc2 = fnn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = self.conv2(self.conv1(x), residual=x)
        y = self.dw(x)
        x = self.join(y, y.flip(-1))
        x = self.gap(self.avg(x))
        return self.fc2(self.fc1(self.flatten(x)))


class TorchNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8)
        self.avg = nn.AvgPool2d(2, ceil_mode=True)
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.stem(x)))
        x = F.relu(self.conv2(F.relu(self.conv1(x))) + x)
        y = self.dw(x)
        x = F.relu(y + y.flip(-1))
        x = self.gap(self.avg(x))
        return self.fc2(torch.tanh(self.fc1(self.flatten(x))))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_training_tracks_torch(channels_last):
    ours, theirs = FastcnnNet(), TorchNet()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ours, theirs = ours.to(memory_format=fmt), theirs.to(memory_format=fmt)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.05, momentum=0.9)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(20):
        x = torch.randn(8, 3, 16, 15).contiguous(memory_format=fmt)
        target = torch.randint(0, 10, (8,))
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    ours_losses, theirs_losses = losses[0::2], losses[1::2]
    # The two nets differ only in the order fp32 sums are accumulated (eps 6e-8 per operation, reductions
    # of up to a few hundred terms): about 1e-6 relative per step, compounded over 20 momentum steps and
    # the occasional relu/max-pool near-tie that routes one element's gradient differently. rtol 1e-4
    # leaves two orders of magnitude for that while a real bug (wrong gradient anywhere) moves the loss
    # and parameters by far more than 1e-4 within a few steps.
    torch.testing.assert_close(torch.tensor(ours_losses), torch.tensor(theirs_losses), rtol=1e-4, atol=1e-5)
    assert ours_losses[-1] < ours_losses[0] * 1.5  # it trains, it does not blow up
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        assert torch.isfinite(p).all()


def test_forward_with_extra_arguments_documents_them():
    """help(fastcnn.nn.Conv2d.forward) shows fastcnn's own text, not torch.nn.Conv2d's generic one."""
    conv_doc = fnn.Conv2d.forward.__doc__
    assert conv_doc is not None and conv_doc is not nn.Conv2d.forward.__doc__
    assert "residual" in conv_doc and "output's shape" in conv_doc and "self.activation" in conv_doc
    add_doc = fnn.ResidualAdd.forward.__doc__
    assert add_doc is not None and "identity" in add_doc
