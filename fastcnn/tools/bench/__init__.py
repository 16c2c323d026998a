"""``fastcnn bench``: time fastcnn against PyTorch eager and ``torch.compile`` on the same inputs.

Three contenders run every case on the same freshly drawn, non-zero random tensors:

* ``fastcnn``: fastcnn's own kernel (``torch.ops.fastcnn.*``, or a model converted with
  :func:`fastcnn.convert.convert`);
* ``eager``: PyTorch's eager op (cuDNN/cuBLAS on the GPU, oneDNN/MKL on the CPU);
* ``compile``: the same PyTorch code through ``torch.compile`` (``mode="max-autotune"`` on the GPU, the
  default mode on the CPU).

Cases: every op over the conv layers of ResNet-50, VGG-16 and MobileNetV2 (``cnn_layers.json``) and at
those networks' activation sizes (conv forward and backward, pooling, activations, the residual add,
linear); conv+bias+ReLU and conv+bias+residual+ReLU fused against the unfused eager sequence; and
ResNet-18/50 inference and one training step end to end. ``--networks resnet18,xception`` add those
networks' conv layers (conv and fused cases; ResNet-18's fused cases too); ``--layout both`` runs every
case in NCHW and in channels_last.

Timing. GPU: CUDA events around each call after a warm-up, the L2 cache overwritten before each call, the
contenders alternating call by call (in reversed order every other round) so that clock or thermal drift
hits all of them, and the median of many calls kept. CPU: ``torch.utils.benchmark`` (all of torch's
threads), the contenders taking turns block by block, the median over the blocks kept.

Reported per case: milliseconds per contender, ratios (PyTorch time / fastcnn time, so > 1 means fastcnn
is faster), achieved TFLOP/s (convs, linear) or GB/s (memory-bound ops, counting the fewest bytes the op
must move), and the share of the device's ceilings measured in the same run: a large device-to-device
copy (bytes read + written) for bandwidth and a large ``torch.mm`` for the FLOP rate. On the CPU a case
whose tensors fit in the caches can pass 100% of the (DRAM) copy bandwidth. The record's ``summary``
holds, per (op, dtype, layout), the geomean, min and max of the ratios against each contender.

The package, along the benchmark's steps:

* :mod:`.config`: the networks, dtypes and layouts, the presets, the compile mode;
* :mod:`.cases`: the case registry (``@case(op, group, table)``), the shape tables, the cases;
* :mod:`.timing`: CUDA-event, ``torch.utils.benchmark`` and wall-clock timing, the device ceilings;
* :mod:`.records`: the JSON record (machine, per-case figures, summary);
* :mod:`.report`: the console table and the plot;
* :mod:`.cli`: the command line;
* here: selecting the cases (:func:`build_specs`) and running them (:func:`run`).

PyTorch's side of each case is in :mod:`fastcnn.tools.references`, shared with ``fastcnn check`` and
the tests.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import time
from collections.abc import Callable
from typing import Any

import torch

import fastcnn

from ..devices import resolve_device
from .cases import (
    CASES,
    OP_GROUPS,
    Built,
    Context,
    Model,
    Selection,
    Spec,
    _has_kernel,
    all_ops,
    case,
    load_layers,
    load_shapes,
    select_ops,
    specs_for,
)
from .cli import add_arguments, main
from .config import (
    ALL_NETWORKS,
    CONTENDERS,
    DTYPES,
    NETWORKS,
    PRESETS,
    RATIO_MEANING,
    RESIDUAL_NETWORKS,
    SCHEMA,
    Config,
    Preset,
    configs_for,
    resolve_compile_mode,
)
from .records import (
    add_ceiling_fractions,
    dedupe,
    default_json_path,
    device_info,
    host_info,
    relative_error,
    summarize,
    write_json,
)
from .report import print_report, write_plot
from .timing import measure_ceilings, synchronize, time_cpu, time_cuda

__all__ = [
    "ALL_NETWORKS",
    "CASES",
    "CONTENDERS",
    "DTYPES",
    "NETWORKS",
    "OP_GROUPS",
    "PRESETS",
    "RATIO_MEANING",
    "RESIDUAL_NETWORKS",
    "SCHEMA",
    "Built",
    "Config",
    "Context",
    "Preset",
    "Spec",
    "add_arguments",
    "all_ops",
    "build_specs",
    "case",
    "load_layers",
    "load_shapes",
    "main",
    "measure_ceilings",
    "print_report",
    "resolve_compile_mode",
    "resolve_device",
    "run",
    "run_spec",
    "select_ops",
    "summarize",
    "write_json",
    "write_plot",
]


def _load_convert() -> tuple[Callable | None, Callable | None, str]:
    """fastcnn.convert.convert and fastcnn.fuse.fuse when this fastcnn has them."""
    try:
        convert = importlib.import_module("fastcnn.convert").convert
    except (ImportError, AttributeError) as exc:
        return None, None, f"fastcnn.convert is not available ({exc})"
    try:
        fuse = importlib.import_module("fastcnn.fuse").fuse
    except (ImportError, AttributeError):
        fuse = None
    return convert, fuse, ""


def _models(names: tuple[str, ...], skipped: list[dict]) -> list[Model]:
    """The networks the model cases time, or none (each of their cases skipped with the reason) when
    fastcnn cannot convert them or torchvision is missing."""
    convert, fuse, reason = _load_convert()
    try:
        import torchvision  # noqa: F401
    except ImportError as exc:
        convert, reason = None, f"torchvision is not installed ({exc})"
    if convert is None:
        for name in names:
            skipped += [
                {"op": c.op, "reason": reason}
                for c in CASES
                if c.table == "model" and (c.networks is None or name in c.networks)
            ]
        return []
    return [Model(name, convert, fuse) for name in names]


def build_specs(
    args: argparse.Namespace, device: torch.device, preset: Preset, preset_name: str, skipped: list[dict]
) -> list[Spec]:
    """Every case the arguments select, in run order, before any tensor is allocated."""
    ops = set(select_ops(args.ops))
    networks = [n.strip() for n in args.networks.split(",")] if args.networks else list(NETWORKS)
    for net in networks:
        if net not in ALL_NETWORKS:
            raise ValueError(f"--networks: unknown network {net!r}; choose from {', '.join(ALL_NETWORKS)}")
    per_network = args.max_shapes if args.max_shapes is not None else preset.layers_per_network
    shapes_per_op = args.max_shapes if args.max_shapes is not None else preset.shapes_per_op
    batches = args.batch or list(preset.batch_cuda if device.type == "cuda" else preset.batch_cpu)
    compile_mode = resolve_compile_mode(args.compile_mode, device)
    model_compile = compile_mode if preset.compile_models or args.compile_models else None
    model_ops = ops & set(OP_GROUPS["model"])
    if compile_mode is not None and model_compile is None and model_ops:
        skipped.append(
            {
                "op": "model (torch.compile)",
                "reason": f"--preset {preset_name}: torch.compile of whole models skipped (minutes of "
                "compile time); --compile-models or --preset full times it",
            }
        )
    models = _models(preset.models, skipped) if model_ops else []
    selection = Selection(networks, per_network, shapes_per_op, models)
    specs: list[Spec] = []
    for batch in batches:
        for cfg in configs_for(args, device, preset_name):
            specs += specs_for(selection, ops, Context(batch, cfg, device, compile_mode, model_compile))
    return specs


def run_spec(spec: Spec, device: torch.device, preset: Preset, repeats: int | None) -> dict:
    """Builds and times one case; returns its JSON record (with "error" set if it failed)."""
    record: dict[str, Any] = {
        "op": spec.op,
        "group": spec.group,
        "network": spec.network,
        "shape": spec.shape,
        "batch": spec.batch,
        "dtype": spec.config.dtype_name,
        "layout": spec.config.layout,
    }
    built = spec.build()
    names = list(built.contenders)
    fns = [built.contenders[n] for n in names]
    # First calls outside the timing: torch.compile compiles (and autotunes) here.
    compile_s = None
    outputs = {}
    for name, fn in zip(names, fns, strict=True):
        start = time.perf_counter()
        outputs[name] = fn()
        synchronize(device)
        if name == "compile":
            compile_s = time.perf_counter() - start
    record["rel_error"] = relative_error(outputs["fastcnn"], outputs["eager"]) if built.compare else None
    del outputs
    if device.type == "cuda":
        runs = repeats or preset.cuda_runs
        times = time_cuda(fns, min(preset.cuda_warmup, runs), runs, device)
    else:
        times = time_cpu(fns, repeats or preset.cpu_rounds, preset.cpu_block_time)
    ms = dict(zip(names, times, strict=True))
    record["times_ms"] = ms
    record["ratios"] = {n: ms[n] / ms["fastcnn"] for n in names if n != "fastcnn"}
    record["tflops"] = {n: built.flops / t / 1e9 for n, t in ms.items()} if built.flops else None
    record["gbs"] = {n: built.bytes / t / 1e6 for n, t in ms.items()} if built.bytes else None
    if built.flops:
        record["flops"] = built.flops
    if built.bytes:
        record["bytes"] = built.bytes
    if "images" in built.extra:
        record["images_per_s"] = {n: built.extra["images"] / t * 1e3 for n, t in ms.items()}
    if "fused" in built.extra:
        record["fastcnn_fused"] = built.extra["fused"]
    record["compile_s"] = compile_s
    return record


def run(args: argparse.Namespace, progress: bool = True) -> dict:
    """Runs the benchmark the arguments describe and returns the JSON record (see the module docstring)."""
    preset_name = args.preset
    preset = PRESETS[preset_name]
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 1024
    else:  # pragma: no cover - older torch
        torch._dynamo.config.cache_size_limit = 1024
    torch.manual_seed(args.seed)
    skipped: list[dict] = []
    specs = build_specs(args, device, preset, preset_name, skipped)
    dtypes = sorted({s.config.dtype_name for s in specs}) or ["fp32"]
    today = datetime.date.today()
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "device": device_info(device),
        "host": host_info(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "fastcnn": fastcnn.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "preset": preset_name,
            "ops": args.ops,
            "networks": args.networks,
            "batches": sorted({s.batch for s in specs}),
            "dtypes": dtypes,
            "compile_mode": resolve_compile_mode(args.compile_mode, device),
            "repeats": args.repeats,
            "timer": "cuda-events" if device.type == "cuda" else "torch.utils.benchmark",
        },
        "ratio_meaning": RATIO_MEANING,
    }
    start = time.perf_counter()
    record["ceilings"] = measure_ceilings(device, dtypes, preset)
    cases, failed = [], []
    bar = _progress(progress)
    with bar:
        task = bar.add_task("fastcnn bench", total=len(specs))
        for spec in specs:
            bar.update(task, description=f"{spec.op} {spec.shape}"[:60])
            if not _has_kernel(spec.op, device):
                skipped.append({"op": spec.op, "reason": f"no fastcnn {device.type} kernel in this build"})
            else:
                try:
                    result = run_spec(spec, device, preset, args.repeats)
                    add_ceiling_fractions(result, record["ceilings"])
                    cases.append(result)
                except Exception as exc:  # noqa: BLE001 - a failing case is reported, the rest still run
                    failed.append(
                        {
                            "op": spec.op,
                            "network": spec.network,
                            "shape": spec.shape,
                            "dtype": spec.config.dtype_name,
                            "layout": spec.config.layout,
                            "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                        }
                    )
            if device.type == "cuda":
                torch.cuda.empty_cache()
            bar.advance(task)
    record["seconds"] = round(time.perf_counter() - start, 1)
    record["cases"] = cases
    record["skipped"] = dedupe(skipped)
    record["failed"] = failed
    record["summary"] = summarize(cases)
    record["default_json"] = str(default_json_path(record["device"], today))
    return record


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description:<60}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        disable=not enabled,
    )
