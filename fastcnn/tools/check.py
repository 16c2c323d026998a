"""``fastcnn check``: every op, forward and backward, against PyTorch's own op in float64.

Each case draws fresh random inputs, runs the fastcnn op in the dtype and memory format under test,
and compares its output and its input/weight/bias gradients with PyTorch's op run in float64 on the
same (upcast) values. The error reported is the largest ‖fastcnn − reference‖ / ‖reference‖ over the
output and the gradients; a NaN or infinity where the reference is finite always fails.

Setting ``FASTCNN_CHECK_INJECT_FAILURE`` to an op name (or to ``1`` for the first case) scales that op's
first fastcnn output by 1.1 before the comparison, so that the failure path (FAIL row, exit code 1) can be
exercised end to end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from .references import TOLERANCES, torch_conv2d_fused, torch_linear_fused

#: Environment variable naming the op whose first result is perturbed (see the module docstring).
INJECT_FAILURE_ENV = "FASTCNN_CHECK_INJECT_FAILURE"


@dataclasses.dataclass
class Case:
    """One op configuration: builds inputs and runs the op through fastcnn or the reference."""

    op: str
    desc: str
    make_inputs: Callable[[torch.Generator], list[Tensor]]
    fastcnn_fn: Callable[..., Tensor]
    reference_fn: Callable[..., Tensor]
    spatial: bool = True  # 4-D inputs that can be channels_last
    quick: bool = False


@dataclasses.dataclass
class Result:
    op: str
    desc: str
    device: str
    dtype: str
    layout: str
    max_rel_error: float
    tolerance: float
    passed: bool
    error: str = ""


def _randn(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _conv_case(
    desc: str,
    n: int,
    c: int,
    hw: tuple[int, int],
    oc: int,
    k: int | tuple[int, int],
    *,
    stride: int = 1,
    padding: int | str = 0,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = True,
    activation: str | None = None,
    residual: bool = False,
    quick: bool = False,
) -> Case:
    kh, kw = (k, k) if isinstance(k, int) else k
    with warnings.catch_warnings():  # PyTorch warns about even "same" kernels even on "meta" tensors
        warnings.simplefilter("ignore", UserWarning)
        ref_out = F.conv2d(
            torch.empty(1, c, *hw, device="meta"),
            torch.empty(oc, c // groups, kh, kw, device="meta"),
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
        ).shape[2:]

    def make(gen):
        tensors = [
            _randn(gen, n, c, *hw),
            _randn(gen, oc, c // groups, kh, kw) / (c // groups * kh * kw) ** 0.5,
        ]
        tensors.append(_randn(gen, oc) if bias else None)
        tensors.append(_randn(gen, n, oc, *ref_out) if residual else None)
        return tensors

    def run_fastcnn(x, w, b, r):
        return ops.conv2d(x, w, b, stride, padding, dilation, groups, activation=activation, residual=r)

    def run_reference(x, w, b, r):
        return torch_conv2d_fused(x, w, b, stride, padding, dilation, groups, r, activation)

    return Case("conv2d", desc, make, run_fastcnn, run_reference, quick=quick)


def default_cases() -> list[Case]:
    """The built-in case set: ResNet/VGG/MobileNet-like layers at small sizes plus edge cases."""
    cases = [
        _conv_case("3x3 s1 p1 +bias relu", 2, 16, (15, 15), 32, 3, padding=1, activation="relu", quick=True),
        _conv_case("1x1 s1 (bottleneck)", 2, 32, (14, 14), 64, 1, bias=False),
        _conv_case(
            "3x3 s2 p1 residual+relu",
            2,
            16,
            (13, 13),
            16,
            3,
            stride=2,
            padding=1,
            activation="relu",
            residual=True,
            quick=True,
        ),
        _conv_case("7x7 s2 p3 (stem)", 1, 3, (33, 33), 16, 7, stride=2, padding=3, bias=False),
        _conv_case("depthwise 3x3 s1", 2, 24, (14, 14), 24, 3, padding=1, groups=24, quick=True),
        _conv_case("depthwise 5x5 s2 x2 mult", 2, 8, (17, 17), 16, 5, stride=2, padding=2, groups=8),
        _conv_case(
            "grouped g=4 3x3 sigmoid", 2, 16, (9, 11), 32, 3, padding=1, groups=4, activation="sigmoid"
        ),
        _conv_case("dilated 3x3 d2 tanh", 2, 8, (16, 16), 8, 3, padding=2, dilation=2, activation="tanh"),
        _conv_case("same 4x2 even kernel", 1, 4, (10, 9), 6, (4, 2), padding="same"),
        _conv_case("1x1 s2 projection", 2, 32, (14, 14), 64, 1, stride=2, bias=False),
    ]

    def linear_case(desc, shape, out, activation, quick=False):
        def make(gen):
            return [_randn(gen, *shape), _randn(gen, out, shape[-1]) / shape[-1] ** 0.5, _randn(gen, out)]

        return Case(
            "linear",
            desc,
            make,
            lambda x, w, b: ops.linear(x, w, b, activation=activation),
            lambda x, w, b: torch_linear_fused(x, w, b, activation),
            spatial=False,
            quick=quick,
        )

    cases += [
        linear_case("[8,512]->1000", (8, 512), 1000, None, quick=True),
        linear_case("[2,5,64]->32 relu", (2, 5, 64), 32, "relu"),
    ]

    def pool_case(op, desc, shape, fastcnn_fn, reference_fn, quick=False):
        return Case(op, desc, lambda gen: [_randn(gen, *shape)], fastcnn_fn, reference_fn, quick=quick)

    cases += [
        pool_case(
            "max_pool2d",
            "3x3 s2 p1 (ResNet stem)",
            (2, 16, 23, 23),
            lambda x: ops.max_pool2d(x, 3, 2, 1),
            lambda x: F.max_pool2d(x, 3, 2, 1),
            quick=True,
        ),
        pool_case(
            "max_pool2d",
            "2x2 ceil_mode dilation 2",
            (2, 8, 15, 14),
            lambda x: ops.max_pool2d(x, 2, 2, 0, 2, ceil_mode=True),
            lambda x: F.max_pool2d(x, 2, 2, 0, 2, ceil_mode=True),
        ),
        pool_case(
            "avg_pool2d",
            "3x3 s2 p1 exclude pad ceil",
            (2, 8, 15, 15),
            lambda x: ops.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
            lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
            quick=True,
        ),
        pool_case(
            "avg_pool2d",
            "2x2 divisor_override 3",
            (2, 8, 12, 12),
            lambda x: ops.avg_pool2d(x, 2, divisor_override=3),
            lambda x: F.avg_pool2d(x, 2, divisor_override=3),
        ),
        pool_case(
            "adaptive_avg_pool2d",
            "7x7 -> 1x1",
            (4, 64, 7, 7),
            lambda x: ops.adaptive_avg_pool2d(x, 1),
            lambda x: F.adaptive_avg_pool2d(x, 1),
            quick=True,
        ),
        pool_case(
            "adaptive_avg_pool2d",
            "13x10 -> 4x3",
            (2, 8, 13, 10),
            lambda x: ops.adaptive_avg_pool2d(x, (4, 3)),
            lambda x: F.adaptive_avg_pool2d(x, (4, 3)),
        ),
    ]
    for name, act in ops.ACTIVATIONS.items():
        cases.append(
            pool_case(name, "[4,32,14,14]", (4, 32, 14, 14), getattr(ops, name), act.reference, quick=True)
        )
    cases.append(
        Case(
            "add",
            "residual add + relu",
            lambda gen: [_randn(gen, 4, 32, 14, 14), _randn(gen, 4, 32, 14, 14)],
            lambda a, b: ops.add(a, b, activation="relu"),
            lambda a, b: F.relu(a + b),
            quick=True,
        )
    )
    return cases


def _relative_error(value: Tensor, reference: Tensor) -> float:
    value = value.detach().to(torch.float64).cpu()
    reference = reference.detach().cpu()
    if value.shape != reference.shape:
        return float("inf")
    if not torch.isfinite(value).all() and torch.isfinite(reference).all():
        return float("nan")
    scale = reference.norm().item()
    diff = (value - reference).norm().item()
    return diff / scale if scale > 0 else diff


def run_case(
    case: Case,
    device: str,
    dtype: torch.dtype,
    layout: torch.memory_format,
    seed: int,
    perturb: bool = False,
) -> Result:
    """Runs one case on one device/dtype/layout; exceptions become failed results, never crashes.

    ``perturb`` scales fastcnn's output by 1.1 (an injected failure, for testing the failure path).
    """
    # A non-spatial op (linear) has no memory format to speak of.
    if not case.spatial:
        layout_name = "-"
    else:
        layout_name = "channels_last" if layout == torch.channels_last else "nchw"
    tol = TOLERANCES[dtype]
    try:
        gen = torch.Generator().manual_seed(seed)
        ref_inputs = [t if t is None else t.requires_grad_() for t in case.make_inputs(gen)]
        test_inputs = []
        for t in ref_inputs:
            if t is None:
                test_inputs.append(None)
                continue
            x = t.detach().to(device=device, dtype=dtype)
            if case.spatial and x.dim() == 4:
                x = x.contiguous(memory_format=layout)
            test_inputs.append(x.requires_grad_())
        # The reference sees the values the low-precision op sees, so only the op's arithmetic differs.
        ref_inputs = [
            None if t is None else x.detach().to("cpu", torch.float64).requires_grad_()
            for t, x in zip(ref_inputs, test_inputs, strict=True)
        ]
        out = case.fastcnn_fn(*test_inputs)
        if perturb:
            out = out * 1.1
        ref = case.reference_fn(*ref_inputs)
        errors = [_relative_error(out, ref)]
        if case.spatial and out.dim() == 4 and layout == torch.channels_last:
            if not out.is_contiguous(memory_format=torch.channels_last):
                raise AssertionError("output is not channels_last for a channels_last input")
        grad = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
        out.backward(grad.to(device=device, dtype=dtype))
        ref.backward(grad)
        for t, r in zip(test_inputs, ref_inputs, strict=True):
            if t is not None:
                errors.append(_relative_error(t.grad, r.grad))
        worst = max(errors, key=lambda e: float("inf") if e != e else e)  # NaN ranks worst
        passed = worst == worst and worst <= tol
        return Result(
            case.op, case.desc, device, str(dtype).removeprefix("torch."), layout_name, worst, tol, passed
        )
    except Exception as exc:  # noqa: BLE001 - a failing kernel is reported, not raised
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        return Result(
            case.op,
            case.desc,
            device,
            str(dtype).removeprefix("torch."),
            layout_name,
            float("nan"),
            tol,
            False,
            message,
        )


def available_devices() -> list[str]:
    """ "cpu", plus "cuda" when fastcnn has CUDA kernels and a GPU is present."""
    from .. import cuda_available

    return ["cpu", "cuda"] if cuda_available() else ["cpu"]


def dtypes_for(device: str) -> list[torch.dtype]:
    base = [torch.float32, torch.float64]
    return base + [torch.float16, torch.bfloat16] if device == "cuda" else base


def run_check(
    devices: Sequence[str] | None = None,
    quick: bool = False,
    seed: int = 0,
    cases: Iterable[Case] | None = None,
    progress: Callable[[Result], None] | None = None,
    inject_failure: str | None = None,
) -> list[Result]:
    """Runs every case on every device, dtype and memory format; returns one Result per run.

    ``inject_failure`` (default: the ``FASTCNN_CHECK_INJECT_FAILURE`` environment variable) names an op
    whose first run is perturbed so that it fails; "1" perturbs the first run of all.
    """
    results = []
    selected = [c for c in (cases if cases is not None else default_cases()) if c.quick or not quick]
    if inject_failure is None:
        inject_failure = os.environ.get(INJECT_FAILURE_ENV) or None
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for device in devices or available_devices():
            for dtype in dtypes_for(device):
                for case in selected:
                    layouts = (
                        [torch.contiguous_format, torch.channels_last]
                        if case.spatial
                        else [torch.contiguous_format]
                    )
                    for layout in layouts:
                        seed += 1
                        perturb = inject_failure is not None and inject_failure in ("1", case.op)
                        if perturb:
                            inject_failure = None  # one failure is enough
                        result = run_case(case, device, dtype, layout, seed, perturb)
                        results.append(result)
                        if progress:
                            progress(result)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return results


def print_table(results: Sequence[Result]) -> None:
    """A pass/fail table with the worst relative error per case."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fastcnn check: ops vs PyTorch (float64 reference)")
    for column in ("op", "case", "device", "dtype", "layout", "max rel err", "tol", "result"):
        table.add_column(column, justify="right" if column in ("max rel err", "tol") else "left")
    for r in results:
        status = "[green]PASS[/green]" if r.passed else "[red]FAIL[/red]"
        table.add_row(
            r.op, r.desc, r.device, r.dtype, r.layout, f"{r.max_rel_error:.2e}", f"{r.tolerance:.0e}", status
        )
    # Off a terminal (CI logs, pipes) rich would wrap to 80 columns; a log reads better unwrapped.
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(table)
    failed = sum(not r.passed for r in results)
    for r in results:
        if r.error:
            console.print(
                f"[red]{r.op} {r.desc} ({r.device} {r.dtype} {r.layout}):[/red] {r.error}", markup=True
            )
    console.print(f"{len(results) - failed} passed, {failed} failed")


def main(args) -> int:
    """Entry point of ``fastcnn check``; returns the process exit code (1 on any failure)."""
    from rich.progress import Progress

    devices = available_devices() if args.device == "all" else [args.device]
    start = time.perf_counter()
    cases = [c for c in default_cases() if c.quick or not args.quick]
    total = sum((2 if c.spatial else 1) * len(dtypes_for(d)) for c in cases for d in devices)
    with Progress(transient=True) as bar:
        task = bar.add_task("checking", total=total)
        results = run_check(
            devices, quick=args.quick, seed=args.seed, cases=cases, progress=lambda r: bar.advance(task)
        )
    print_table(results)
    print(f"checked {len(results)} cases in {time.perf_counter() - start:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dataclasses.asdict(r) for r in results], f, indent=1)
    return 0 if all(r.passed for r in results) else 1
