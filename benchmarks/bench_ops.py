"""Time fastcnn's ops against PyTorch's on the same inputs, and record the figures as JSON.

Conv layers come from benchmarks/shapes/cnn_layers.json (ResNet-50, VGG-16, MobileNetV2 at 224x224);
pooling, activations and the residual add run at ResNet-50 activation sizes. Each case draws fresh random
non-zero inputs once and hands the same tensors to both contenders. On CUDA each call is timed with CUDA
events after a warm-up, the contenders alternate call by call, and the median is kept; on the CPU
torch.utils.benchmark times each contender in alternating rounds. Ratio = torch time / fastcnn time, so
a ratio above 1 means fastcnn is faster. Ops without a fastcnn kernel for the device are skipped and
listed.

    python benchmarks/bench_ops.py --quick                    # CUDA if available, else CPU
    python benchmarks/bench_ops.py --device cpu --quick --batch 2 --max-shapes 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import fastcnn  # noqa: E402  (registers torch.ops.fastcnn.*)

SHAPES_FILE = HERE / "shapes" / "cnn_layers.json"
RESULTS_DIR = HERE / "results"
NETWORKS = ("resnet50", "vgg16", "mobilenet_v2")
QUICK_SHAPES_PER_NETWORK = 4

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


@dataclass
class Config:
    dtype_name: str
    channels_last: bool

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def label(self) -> str:
        return f"{self.dtype_name}-{'nhwc' if self.channels_last else 'nchw'}"


@dataclass
class Case:
    op: str  # the fastcnn op being timed
    group: str  # conv / pool / elementwise
    name: str  # human-readable shape label
    config: Config
    fastcnn_fn: Callable[[], object]
    torch_fn: Callable[[], object]
    flops: float = 0.0  # counted work, for TFLOP/s (conv)
    bytes: float = 0.0  # fewest bytes moved, for GB/s (memory-bound ops)
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# Inputs


def rand(shape, cfg: Config, device, scale: float = 1.0) -> torch.Tensor:
    """Fresh random values, never exactly zero (zeros hide unwritten outputs and run faster)."""
    t = torch.randn(shape, device=device, dtype=torch.float32) * scale
    t = torch.where(t == 0, torch.full_like(t, 1e-3), t).to(cfg.dtype)
    if cfg.channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def has_kernel(op: str, device: torch.device) -> bool:
    key = "CUDA" if device.type == "cuda" else "CPU"
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastcnn::{op}", key)


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def rel_error(a, b) -> float:
    """‖a − b‖ / ‖b‖ in float64 over one tensor or the tensors of a tuple; the largest over the tuple."""
    if isinstance(a, (tuple, list)):
        errs = [rel_error(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
        return max(errs) if errs else 0.0
    a64, b64 = a.detach().double(), b.detach().double()
    den = b64.norm().item()
    return (a64 - b64).norm().item() / (den if den > 0 else 1.0)


# ----------------------------------------------------------------------------------------------------
# Cases


def load_layers(networks, max_shapes: int | None) -> list[tuple[str, int, dict]]:
    data = json.loads(SHAPES_FILE.read_text())
    picked = []
    for net in networks:
        layers = data[net]
        if max_shapes is not None and max_shapes < len(layers):
            # Spread the picks over the network (stem, middle, deep) rather than taking its first layers.
            step = len(layers) / max_shapes
            idx = sorted({int(i * step) for i in range(max_shapes)})
        else:
            idx = list(range(len(layers)))
        picked += [(net, i, layers[i]) for i in idx]
    return picked


def conv_cases(layers, batch: int, cfg: Config, device) -> list[Case]:
    cases = []
    for net, index, L in layers:
        cin, cout, groups = L["in_channels"], L["out_channels"], L["groups"]
        kh, kw = L["kernel_h"], L["kernel_w"]
        stride = [L["stride_h"], L["stride_w"]]
        padding = [L["pad_h"], L["pad_w"]]
        dilation = [L["dilation_h"], L["dilation_w"]]
        x = rand((batch, cin, L["height"], L["width"]), cfg, device)
        w = rand((cout, cin // groups, kh, kw), cfg, device, scale=1.0 / math.sqrt(cin // groups * kh * kw))
        b = rand((cout,), cfg, device) if L["bias"] else None
        y_ref = F.conv2d(x, w, b, stride, padding, dilation, groups)
        oh, ow = y_ref.shape[2], y_ref.shape[3]
        go = rand(y_ref.shape, cfg, device)
        flops = 2.0 * batch * cout * oh * ow * (cin // groups) * kh * kw
        name = f"{net}[{index}] {cin}->{cout} {L['height']}x{L['width']} k{kh}x{kw} s{stride[0]} g{groups}"
        meta = {"network": net, "layer_index": index, "layer": L, "batch": batch}
        mask = [True, True, b is not None]
        bias_sizes = [cout] if b is not None else None

        def fwd_fastcnn(x=x, w=w, b=b, stride=stride, padding=padding, dilation=dilation, groups=groups):
            return torch.ops.fastcnn.conv2d(x, w, b, stride, padding, dilation, groups, 0, None)

        def fwd_torch(x=x, w=w, b=b, stride=stride, padding=padding, dilation=dilation, groups=groups):
            return F.conv2d(x, w, b, stride, padding, dilation, groups)

        def bwd_fastcnn(
            go=go, x=x, w=w, stride=stride, padding=padding, dilation=dilation, groups=groups, mask=mask
        ):
            return torch.ops.fastcnn.conv2d_backward(
                go, x, w, None, stride, padding, dilation, groups, 0, mask
            )

        def bwd_torch(
            go=go,
            x=x,
            w=w,
            bs=bias_sizes,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            mask=mask,
        ):
            return torch.ops.aten.convolution_backward(
                go, x, w, bs, stride, padding, dilation, False, [0, 0], groups, mask
            )

        cases.append(Case("conv2d", "conv", name, cfg, fwd_fastcnn, fwd_torch, flops=flops, meta=meta))
        # Backward computes grad_input and grad_weight: twice the forward's multiply-adds.
        cases.append(
            Case(
                "conv2d_backward",
                "conv",
                name,
                cfg,
                bwd_fastcnn,
                bwd_torch,
                flops=2.0 * flops,
                meta=dict(meta),
            )
        )
    return cases


def resnet50_activation_cases(batch: int, cfg: Config, device) -> list[Case]:
    """Pooling, activations and the residual add at the sizes they have in ResNet-50."""
    ops = torch.ops.fastcnn
    aten = torch.ops.aten
    cases = []
    meta = {"network": "resnet50", "batch": batch}

    # Stem max pool: 3x3 stride 2 pad 1 over [N, 64, 112, 112].
    x = rand((batch, 64, 112, 112), cfg, device)
    y, idx = aten.max_pool2d_with_indices(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
    go = rand(y.shape, cfg, device)
    cases.append(
        Case(
            "max_pool2d",
            "pool",
            "[N,64,112,112] k3 s2 p1",
            cfg,
            lambda x=x: ops.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], False),
            lambda x=x: aten.max_pool2d_with_indices(x, [3, 3], [2, 2], [1, 1], [1, 1], False),
            bytes=nbytes(x, y, idx),
            meta=dict(meta),
        )
    )
    cases.append(
        Case(
            "max_pool2d_backward",
            "pool",
            "[N,64,112,112] k3 s2 p1",
            cfg,
            lambda go=go, x=x, idx=idx: ops.max_pool2d_backward(go, x, idx),
            lambda go=go, x=x, idx=idx: aten.max_pool2d_with_indices_backward(
                go, x, [3, 3], [2, 2], [1, 1], [1, 1], False, idx
            ),
            bytes=nbytes(go, idx, x),
            meta=dict(meta),
        )
    )

    # 2x2 stride-2 average pool on the stage-1 output (the ResNet-D downsampling shortcut).
    x = rand((batch, 256, 56, 56), cfg, device)
    y = F.avg_pool2d(x, 2, 2)
    go = rand(y.shape, cfg, device)
    cases.append(
        Case(
            "avg_pool2d",
            "pool",
            "[N,256,56,56] k2 s2",
            cfg,
            lambda x=x: ops.avg_pool2d(x, [2, 2], [2, 2], [0, 0], False, True, None),
            lambda x=x: F.avg_pool2d(x, 2, 2),
            bytes=nbytes(x, y),
            meta=dict(meta),
        )
    )
    cases.append(
        Case(
            "avg_pool2d_backward",
            "pool",
            "[N,256,56,56] k2 s2",
            cfg,
            lambda go=go, x=x: ops.avg_pool2d_backward(go, x, [2, 2], [2, 2], [0, 0], False, True, None),
            lambda go=go, x=x: aten.avg_pool2d_backward(go, x, [2, 2], [2, 2], [0, 0], False, True, None),
            bytes=nbytes(go, x),
            meta=dict(meta),
        )
    )

    # Global average pool of the head: [N, 2048, 7, 7] -> 1x1.
    x = rand((batch, 2048, 7, 7), cfg, device)
    y = F.adaptive_avg_pool2d(x, 1)
    go = rand(y.shape, cfg, device)
    cases.append(
        Case(
            "adaptive_avg_pool2d",
            "pool",
            "[N,2048,7,7] -> 1x1",
            cfg,
            lambda x=x: ops.adaptive_avg_pool2d(x, [1, 1]),
            lambda x=x: aten._adaptive_avg_pool2d(x, [1, 1]),
            bytes=nbytes(x, y),
            meta=dict(meta),
        )
    )
    cases.append(
        Case(
            "adaptive_avg_pool2d_backward",
            "pool",
            "[N,2048,7,7] -> 1x1",
            cfg,
            lambda go=go, x=x: ops.adaptive_avg_pool2d_backward(go, x),
            lambda go=go, x=x: aten._adaptive_avg_pool2d_backward(go, x),
            bytes=nbytes(go, x),
            meta=dict(meta),
        )
    )

    # Elementwise ops on the stage-1 bottleneck output [N, 256, 56, 56].
    shape = (batch, 256, 56, 56)
    a, b2, g = rand(shape, cfg, device), rand(shape, cfg, device), rand(shape, cfg, device)
    y_relu, y_sig, y_tanh = torch.relu(a), torch.sigmoid(a), torch.tanh(a)
    label = "[N,256,56,56]"
    unary = [
        ("relu", lambda a=a: ops.relu(a), lambda a=a: torch.relu(a)),
        ("sigmoid", lambda a=a: ops.sigmoid(a), lambda a=a: torch.sigmoid(a)),
        ("tanh", lambda a=a: ops.tanh(a), lambda a=a: torch.tanh(a)),
    ]
    for op, f_fast, f_torch in unary:
        cases.append(
            Case(op, "elementwise", label, cfg, f_fast, f_torch, bytes=2 * nbytes(a), meta=dict(meta))
        )
    # PyTorch eager runs the residual add and its relu as two kernels; fastcnn fuses them.
    cases.append(
        Case(
            "add",
            "elementwise",
            label + " +relu",
            cfg,
            lambda a=a, b=b2: ops.add(a, b, 1),
            lambda a=a, b=b2: torch.add(a, b).relu_(),
            bytes=3 * nbytes(a),
            meta=dict(meta),
        )
    )
    backward = [
        ("relu", 1, lambda g=g, y=y_relu: aten.threshold_backward(g, y, 0)),
        ("sigmoid", 2, lambda g=g, y=y_sig: aten.sigmoid_backward(g, y)),
        ("tanh", 3, lambda g=g, y=y_tanh: aten.tanh_backward(g, y)),
    ]
    y_of = {1: y_relu, 2: y_sig, 3: y_tanh}
    for act_name, code, f_torch in backward:
        cases.append(
            Case(
                "activation_backward",
                "elementwise",
                f"{label} {act_name}",
                cfg,
                lambda g=g, y=y_of[code], code=code: ops.activation_backward(g, y, code),
                f_torch,
                bytes=3 * nbytes(a),
                meta=dict(meta),
            )
        )
    return cases


# ----------------------------------------------------------------------------------------------------
# Timing


_l2_flush: torch.Tensor | None = None


def flush_l2() -> None:
    """Overwrite the L2 cache (twice its size), so that no contender finds the other's data resident."""
    global _l2_flush
    if _l2_flush is None:
        l2 = (
            getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0)
            or 2**26
        )
        _l2_flush = torch.empty(2 * l2, dtype=torch.int8, device="cuda")
    _l2_flush.zero_()


def time_cuda(fns: list[Callable[[], object]], warmup: int, runs: int) -> list[float]:
    """Median milliseconds per contender; the contenders alternate call by call, each from a cold L2."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    torch.cuda.synchronize()
    events = [
        [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in fns]
        for _ in range(runs)
    ]
    for r in range(runs):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            flush_l2()
            start, end = events[r][i]
            start.record()
            fns[i]()
            end.record()
    torch.cuda.synchronize()
    return [
        statistics.median(events[r][i][0].elapsed_time(events[r][i][1]) for r in range(runs))
        for i in range(len(fns))
    ]


def time_cpu(fns: list[Callable[[], object]], rounds: int, min_run_time: float) -> list[float]:
    """Median milliseconds per contender over `rounds` alternating torch.utils.benchmark measurements."""
    from torch.utils import benchmark

    per = [[] for _ in fns]
    for fn in fns:
        fn()  # warm-up
    for r in range(rounds):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            m = benchmark.Timer(stmt="fn()", globals={"fn": fns[i]}).blocked_autorange(
                min_run_time=min_run_time
            )
            per[i].append(m.median * 1e3)
    return [statistics.median(p) for p in per]


# ----------------------------------------------------------------------------------------------------
# Environment and output


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    env = {
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "fastcnn": fastcnn.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host_cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device_name=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            tf32_conv=torch.backends.cudnn.allow_tf32,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    else:
        env.update(device_name=cpu_name())
    return env


def enable_tf32() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="batch 32 and a few shapes per network")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (default 32 128; --quick: 32)")
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--max-shapes", type=int, help="conv layers per network (default all; --quick: 4)")
    p.add_argument("--dtypes", nargs="+", help="configs: fp32, fp16, bf16, each optionally -nhwc/-nchw")
    p.add_argument("--groups", nargs="+", default=["conv", "pool", "elementwise"])
    p.add_argument("--ops", nargs="+", help="only these fastcnn ops")
    p.add_argument("--runs", type=int, help="timed calls per contender (CUDA; default 50, --quick 20)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", type=Path, help="output path (default benchmarks/results/<device>-<date>.json)")
    return p.parse_args(argv)


def configs_for(args, device: torch.device) -> list[Config]:
    if args.dtypes:
        specs = args.dtypes
    elif device.type == "cuda":
        specs = ["fp16-nhwc", "bf16-nhwc", "fp32-nchw"]
    else:
        specs = ["fp32-nchw"]
    out = []
    for spec in specs:
        name, _, layout = spec.partition("-")
        if name not in DTYPES:
            raise SystemExit(f"unknown dtype {name!r}; choose from {sorted(DTYPES)}")
        channels_last = layout == "nhwc" or (layout == "" and name in ("fp16", "bf16"))
        out.append(Config(name, channels_last))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but no CUDA device is available")
    batches = args.batch or ([32] if args.quick else [32, 128])
    max_shapes = (
        args.max_shapes if args.max_shapes is not None else (QUICK_SHAPES_PER_NETWORK if args.quick else None)
    )
    runs = args.runs or (20 if args.quick else 50)
    if device.type == "cuda":
        enable_tf32()
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)

    env = environment(device)
    print(
        f"fastcnn bench on {env['device_name']} ({device.type}), torch {env['torch']}, CUDA {env['cuda']}, "
        f"cuDNN {env['cudnn']}"
    )
    layers = load_layers(args.networks, max_shapes)

    results, skipped, failed = [], [], []
    missing = set()
    t_start = time.time()
    for batch in batches:
        for cfg in configs_for(args, device):
            cases: list[Case] = []
            if "conv" in args.groups:
                if has_kernel("conv2d", device) or has_kernel("conv2d_backward", device):
                    cases += conv_cases(layers, batch, cfg, device)
                else:
                    missing.update({"conv2d", "conv2d_backward"})
            if "pool" in args.groups or "elementwise" in args.groups:
                cases += [c for c in resnet50_activation_cases(batch, cfg, device) if c.group in args.groups]
            for case in cases:
                if args.ops and case.op not in args.ops:
                    continue
                if not has_kernel(case.op, device):
                    missing.add(case.op)
                    continue
                row = {
                    "op": case.op,
                    "group": case.group,
                    "shape": case.name,
                    "dtype": case.config.dtype_name,
                    "layout": "channels_last" if case.config.channels_last else "nchw",
                    "batch": batch,
                    **{k: v for k, v in case.meta.items() if k != "batch"},
                }
                try:
                    err = rel_error(case.fastcnn_fn(), case.torch_fn())
                    if device.type == "cuda":
                        t_fast, t_torch = time_cuda([case.fastcnn_fn, case.torch_fn], args.warmup, runs)
                    else:
                        t_fast, t_torch = time_cpu(
                            [case.fastcnn_fn, case.torch_fn], rounds=3, min_run_time=0.05
                        )
                except Exception as exc:  # a failing op is reported, the rest still run
                    row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                    failed.append(row)
                    print(f"  FAILED {case.op:<28} {cfg.label:<10} {case.name}: {row['error']}")
                    continue
                row.update(fastcnn_ms=t_fast, torch_ms=t_torch, ratio=t_torch / t_fast, rel_error=err)
                if case.flops:
                    row.update(
                        flops=case.flops,
                        fastcnn_tflops=case.flops / t_fast / 1e9,
                        torch_tflops=case.flops / t_torch / 1e9,
                    )
                if case.bytes:
                    row.update(
                        bytes=case.bytes,
                        fastcnn_gbps=case.bytes / t_fast / 1e6,
                        torch_gbps=case.bytes / t_torch / 1e6,
                    )
                results.append(row)
                rate = (
                    f"{row['fastcnn_tflops']:7.2f} TF/s" if case.flops else f"{row['fastcnn_gbps']:7.1f} GB/s"
                )
                print(
                    f"  {case.op:<28} {cfg.label:<10} N={batch:<4} {t_fast:9.4f} ms vs {t_torch:9.4f} ms  "
                    f"x{row['ratio']:5.2f}  {rate}  err {err:.1e}  {case.name}"
                )
            del cases
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for op in sorted(missing):
        msg = f"no fastcnn {device.type.upper()} kernel for {op} in this build: skipped"
        skipped.append({"op": op, "reason": msg})
        print(msg)

    result_name = f"{slug(env['device_name'])}-{datetime.date.today().isoformat()}.json"
    record = {
        "result_name": result_name,
        "environment": env,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "batches": batches,
        "seconds": round(time.time() - t_start, 1),
        "ratio_meaning": "torch_ms / fastcnn_ms; > 1 means fastcnn is faster",
        "results": results,
        "skipped": skipped,
        "failed": failed,
    }
    path = args.json or (RESULTS_DIR / result_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    print_summary(results)
    print(f"{len(results)} cases timed, {len(failed)} failed, {len(skipped)} ops skipped; wrote {path}")
    return 1 if failed else 0


def print_summary(results: list[dict]) -> None:
    """Geometric-mean ratio per op and config."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in results:
        groups.setdefault((r["op"], r["dtype"], r["layout"]), []).append(r["ratio"])
    if not groups:
        return
    print(f"\n{'op':<30}{'config':<20}{'cases':>6}{'geomean torch/fastcnn':>24}")
    for (op, dt, layout), ratios in sorted(groups.items()):
        gm = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        print(f"{op:<30}{dt + ' ' + layout:<20}{len(ratios):>6}{gm:>24.3f}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
