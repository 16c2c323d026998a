"""Shared fixtures and helpers for the fastcnn test suite.

Every test gets its own reproducible random stream (seeded from its node id), so each parametrized case
draws fresh data while a failure replays exactly. Reference results are computed with PyTorch's own ops
in float64; fastcnn's output is compared against them with a tolerance that depends only on the dtype
fastcnn computed in.
"""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

import fastcnn

# --------------------------------------------------------------------------------------------------------
# pytest plumbing
# --------------------------------------------------------------------------------------------------------


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA GPU and fastcnn's CUDA kernels (skipped otherwise)"
    )


def pytest_collection_modifyitems(config, items):
    if fastcnn.cuda_available():
        return
    skip = pytest.mark.skip(reason="fastcnn CUDA kernels or a CUDA GPU not available")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def seed(request):
    """Seeds torch's global RNG from the test's node id: fresh data per case, reproducible per case."""
    value = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(value)
    return value


@pytest.fixture(autouse=True)
def _exact_cuda_math():
    """TF32 off unless a test turns it on: fp32 cases are held to fp32 tolerances on every device."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


#: Devices for tests that apply to both; the CUDA half is skipped without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

#: Relative tolerance for a result computed in `dtype`, against a float64 reference on the same inputs.
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}

ACTIVATIONS = [None, "relu", "sigmoid", "tanh"]
TORCH_ACT = {None: lambda t: t, "relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}

# --------------------------------------------------------------------------------------------------------
# tensors
# --------------------------------------------------------------------------------------------------------


def make_tensor(
    shape,
    dtype=torch.float64,
    device="cpu",
    memory_format=torch.contiguous_format,
    noncontiguous=False,
    requires_grad=False,
):
    """A standard-normal tensor of `shape`.

    For 4-D shapes `memory_format` picks NCHW or channels_last strides. `noncontiguous` returns a strided
    view (every other element of a larger buffer) with the same dimension order, so the kernel must not
    assume dense memory while the memory format it should follow stays unambiguous.
    """
    shape = tuple(shape)
    if len(shape) == 4 and memory_format == torch.channels_last:
        n, c, h, w = shape
        if noncontiguous:
            base = torch.randn(n, h, w, 2 * c, dtype=dtype, device=device)
            t = base.permute(0, 3, 1, 2)[:, ::2]
        else:
            t = torch.randn(shape, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)
    elif noncontiguous:
        base = torch.randn(*shape[:-1], 2 * shape[-1], dtype=dtype, device=device)
        t = base[..., ::2]
    else:
        t = torch.randn(shape, dtype=dtype, device=device)
    assert t.shape == shape
    assert t.is_contiguous(memory_format=memory_format) != noncontiguous or t.numel() <= 1
    return t.requires_grad_(requires_grad)


def reference_copy(t, dtype=torch.float64):
    """A float64 leaf copy of t (keeping its strides) for computing PyTorch's reference."""
    if t is None:
        return None
    return t.detach().to(dtype).requires_grad_(t.requires_grad)


def expected_memory_format(input):
    """The format a fastcnn output must have: channels_last iff the (4-D) input is channels_last-strided."""
    if input.dim() == 4 and torch._prims_common.suggest_memory_format(input) == torch.channels_last:
        return torch.channels_last
    return torch.contiguous_format


def assert_memory_format(out, input):
    fmt = expected_memory_format(input)
    assert out.is_contiguous(memory_format=fmt), (
        f"output strides {out.stride()} (shape {tuple(out.shape)}) do not follow the input's {fmt} "
        f"(input strides {input.stride()})"
    )


# --------------------------------------------------------------------------------------------------------
# comparisons
# --------------------------------------------------------------------------------------------------------


def relative_error(out, ref):
    """||out - ref|| / ||ref|| in float64 (0 when both are all zero)."""
    diff = torch.linalg.vector_norm((out.double() - ref.double()).flatten())
    scale = torch.linalg.vector_norm(ref.double().flatten())
    if scale == 0:
        return diff.item()
    return (diff / scale).item()


def assert_close(out, ref, dtype=None, rtol=None, name="output"):
    """Asserts fastcnn's `out` matches the float64 reference `ref`.

    The tolerance is TOL[dtype] (dtype defaults to out's). Three checks, each catching something the
    others can miss:
      * shape, and NaN/inf exactly where the reference has them (a NaN never passes);
      * every element within rtol of the reference, with an absolute slack of rtol * max|ref| so that
        elements which cancel to ~0 are judged on the scale of the whole output; an element a kernel never
        wrote fails here;
      * the norm-wise relative error ||out - ref|| / ||ref|| <= rtol.
    """
    if rtol is None:
        rtol = TOL[dtype or out.dtype]
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    out64, ref64 = out.detach().double(), ref.detach().double()
    finite = torch.isfinite(ref64)
    assert torch.equal(torch.isnan(out64), torch.isnan(ref64)), f"{name}: NaN where the reference has none"
    for kind in (torch.isposinf, torch.isneginf):
        assert torch.equal(kind(out64), kind(ref64)), f"{name}: infinities differ from the reference"
    if finite.any():
        o, r = out64[finite], ref64[finite]
        scale = max(r.abs().max().item(), 1e-300)
        torch.testing.assert_close(o, r, rtol=rtol, atol=rtol * scale, msg=lambda m: f"{name}: {m}")
        err = relative_error(o, r)
        assert err <= rtol, f"{name}: relative error {err:.3e} > {rtol:.1e}"


def assert_grads_close(pairs, dtype):
    """pairs: iterable of (name, fastcnn_leaf, reference_leaf); compares their .grad."""
    for name, leaf, ref_leaf in pairs:
        if ref_leaf is None:
            continue
        assert leaf.grad is not None, f"grad of {name} is missing"
        assert_close(leaf.grad, ref_leaf.grad, dtype, name=f"grad of {name}")
