"""Shared fixtures and helpers for the fastcnn test suite.

Every test gets its own reproducible random stream (seeded from its node id), so each parametrized case
draws fresh data while a failure replays exactly. Reference results are computed with PyTorch's own ops
in float64; fastcnn's output is compared against them with a tolerance that depends only on the dtype
fastcnn computed in.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zlib

import pytest
import torch

import fastcnn
from fastcnn import ops
from fastcnn.tools.references import TOLERANCES

# --------------------------------------------------------------------------------------------------------
# pytest plumbing
# --------------------------------------------------------------------------------------------------------


#: True when FASTCNN_BACKEND=cuda-emu: CPU tensors are served by fastcnn's CUDA kernels under its SIMT
#: emulator, and the `cuda` tests run there too (on CPU tensors), except those marked `gpu`.
EMULATED = fastcnn.backend() == "cuda-emu"

#: The device of the `cuda` tests: a GPU, or the CPU tensors of the emulated CUDA kernels.
CUDA = "cpu" if EMULATED else "cuda"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "cuda: runs fastcnn's CUDA kernels: on a GPU, or under emulation (FASTCNN_BACKEND=cuda-emu)",
    )
    config.addinivalue_line(
        "markers",
        "gpu: needs a real CUDA GPU (CUDA autocast, the CUDA allocator, NCCL, CPU/GPU device mixes)",
    )


#: Markers whose tests run only when asked for: by name in `-m` (e.g. `-m large`) or by the environment
#: variable (e.g. FASTCNN_RUN_LARGE=1). `large` tests need ~12 GiB of memory each and must run serially.
OPT_IN_MARKERS = {"slow": "FASTCNN_RUN_SLOW", "large": "FASTCNN_RUN_LARGE"}


def pytest_collection_modifyitems(config, items):
    markexpr = config.getoption("markexpr", default="") or ""
    for marker, env in OPT_IN_MARKERS.items():
        if re.search(rf"(?<!not )\b{marker}\b", markexpr) or os.environ.get(env) == "1":
            continue
        skip = pytest.mark.skip(reason=f"{marker} test: run with `-m {marker}` or {env}=1")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
    if fastcnn.cuda_available():
        return
    if EMULATED:
        skip = pytest.mark.skip(reason="needs a real GPU; the emulated CUDA kernels take CPU tensors")
        reduced = pytest.mark.skip(reason="the emulated CUDA kernels accept float16/bfloat16 CPU tensors")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
            elif "bad_input" in item.name and re.search(r"\[.*(fp16|bf16)", item.name):
                item.add_marker(reduced)
        return
    skip = pytest.mark.skip(reason="fastcnn CUDA kernels or a CUDA GPU not available")
    for item in items:
        if "cuda" in item.keywords or "gpu" in item.keywords:
            item.add_marker(skip)


# --------------------------------------------------------------------------------------------------------
# hypothesis profiles (property-based tests in test_fuzz.py)
# --------------------------------------------------------------------------------------------------------

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - hypothesis is a test dependency; test_fuzz.py skips without it
    settings = None

if settings is not None:
    _FUZZ_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
    # "ci": a fixed (derandomized) sample, so CI is reproducible and fast: FUZZ_EXAMPLES["ci"] per test.
    # "long": fresh random examples, >= 10,000 in total across test_fuzz.py (`make fuzz-long`).
    FUZZ_EXAMPLES = {"ci": 40, "long": 1250, "dev": 200}
    for _name, _count in FUZZ_EXAMPLES.items():
        settings.register_profile(
            _name,
            max_examples=_count,
            deadline=None,
            derandomize=_name == "ci",
            print_blob=True,
            suppress_health_check=_FUZZ_HEALTH,
        )
    FUZZ_PROFILE = os.environ.get("FASTCNN_FUZZ_PROFILE", "ci")
    settings.load_profile(FUZZ_PROFILE)


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


#: Devices for tests that apply to both; the CUDA half is skipped without a GPU. Under emulation "cpu"
#: already runs the CUDA kernels.
DEVICES = ["cpu"] if EMULATED else ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

#: Relative tolerance for a result computed in `dtype`, against a float64 reference on the same inputs.
TOL = TOLERANCES

#: Every activation of fastcnn's registry, and None (no activation): what the fused ops' activation= takes.
#: leaky_relu runs with its default slope (derivative read from the output) and with a negative one
#: (differentiated through its input, like silu).
ACTIVATIONS = [None, *ops.ACTIVATIONS, "leaky_relu(-0.5)"]
#: PyTorch's op for each activation; the kernel code of each.
TORCH_ACT = {name: ops.resolve_activation(name).reference for name in ACTIVATIONS}
CODE = {name: ops.activation_code(name) for name in ACTIVATIONS}
#: A code no kernel accepts, one past the table (the low 5 bits of each code).
INVALID_ACTIVATION_CODE = max(code & 0x1F for code in CODE.values()) + 1


def activation_op(name):
    """fastcnn's own elementwise op of an activation (a registry name or a configured one such as
    "leaky_relu(-0.5)"), as ``op(x)``."""
    act = ops.resolve_activation(name)
    op = getattr(ops, act.name)
    return op if act.parameter is None else lambda x: op(x, act.parameter)


def raw_activation_args(name, x):
    """The arguments of ``torch.ops.fastcnn.<name>`` for input x: the parameter too where it has one."""
    act = ops.resolve_activation(name)
    return (x,) if act.parameter is None else (x, act.parameter)


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
    """||out - ref|| / ||ref|| in float64 (0 when both are all zero). Both are scaled by max |ref| first,
    so that squares of values near float64's range do not overflow the norms."""
    out, ref = out.double().flatten(), ref.double().flatten()
    top = ref.abs().max().item() if ref.numel() else 0.0
    if 0 < top < float("inf"):
        out, ref = out / top, ref / top
    diff = torch.linalg.vector_norm(out - ref)
    scale = torch.linalg.vector_norm(ref)
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


#: d act / d x as a function of the saved tensor (the output y, or the input x where GRAD_FROM_OUTPUT is
#: False), as the kernels apply it.
ACT_PRIME = {name: ops.resolve_activation(name).derivative for name in ACTIVATIONS}
GRAD_FROM_OUTPUT = {name: ops.resolve_activation(name).grad_from_output for name in ACTIVATIONS}
#: The activations a fused op's backward kernel differentiates itself (from the forward output); the
#: others run as a separate op under autograd and are refused by the fused backward ops.
FUSED_BACKWARD_ACTIVATIONS = [name for name in ACTIVATIONS if GRAD_FROM_OUTPUT[name]]
INPUT_GRAD_ACTIVATIONS = [name for name in ACTIVATIONS if not GRAD_FROM_OUTPUT[name]]


def kernel_act_prime(activation, out, pre_activation):
    """act' as fastcnn's backward applies it: at its own output, or at its own pre-activation (computed
    by `pre_activation()`, the same op without activation) for the activations differentiated through
    their input."""
    if GRAD_FROM_OUTPUT[activation]:
        return ACT_PRIME[activation](out.detach().double())
    return ACT_PRIME[activation](pre_activation().detach().double())


def assert_componentwise(out, ref, magnitude, tol, name):
    """|out - ref| <= tol * magnitude element by element, where magnitude is the same sum taken over
    absolute values: the error bound of a dot product whose operands are rounded by a relative `tol`
    (TF32: 2 * 2^-11 for the product of two rounded operands, < 1e-3), which holds however much the sum
    cancels (a norm-wise relative error does not)."""
    assert out.shape == ref.shape and torch.isfinite(out).all(), f"{name}: shape or non-finite values"
    excess = (out.double() - ref).abs() - tol * magnitude
    worst = excess.max().item()
    assert worst <= 0, f"{name}: error exceeds {tol:.0e} x the sum of |terms| by {worst:.3e}"


def assert_grads_close(pairs, dtype):
    """pairs: iterable of (name, fastcnn_leaf, reference_leaf); compares their .grad."""
    for name, leaf, ref_leaf in pairs:
        if ref_leaf is None:
            continue
        assert leaf.grad is not None, f"grad of {name} is missing"
        assert_close(leaf.grad, ref_leaf.grad, dtype, name=f"grad of {name}")


# --------------------------------------------------------------------------------------------------------
# the command line, run as a user runs it
# --------------------------------------------------------------------------------------------------------


def run_fastcnn(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m fastcnn ARGS`` in a fresh interpreter: its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "fastcnn", *args], capture_output=True, text=True, timeout=timeout
    )


def assert_refused(result: subprocess.CompletedProcess, message: str, code: int = 2) -> None:
    """The command exited with ``code``, its last stderr line holds ``message``, and no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert lines and message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def pytest_sessionfinish(session, exitstatus):
    """For scripts/barrier_ablation.py: how often the removed barrier site was reached in this run."""
    report = os.environ.get("FASTCNN_EMU_ABLATE_REPORT")
    if EMULATED and report:
        with open(report, "w") as f:
            f.write(str(torch.ops.fastcnn_emu.stats()[2]))
