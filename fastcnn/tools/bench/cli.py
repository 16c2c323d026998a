"""``fastcnn bench``'s command line: its arguments and its entry point."""

from __future__ import annotations

import argparse
import sys
import warnings

from .cases import OP_GROUPS, select_ops
from .config import ALL_NETWORKS, NETWORKS, PRESETS
from .records import write_json
from .report import print_report, write_plot

__all__ = ["add_arguments", "check_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``fastcnn bench``."""
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="quick",
        help="quick (default), full, or models (whole networks at batch 1/8/32; use with --ops model)",
    )
    parser.add_argument(
        "--ops", metavar="LIST", help=f"comma-separated ops or groups ({', '.join(OP_GROUPS)}); default all"
    )
    parser.add_argument(
        "--networks",
        metavar="LIST",
        help=f"comma-separated, from {', '.join(ALL_NETWORKS)} (default: {','.join(NETWORKS)}; "
        "resnet18/xception add conv and fused cases only)",
    )
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes (default: the preset's)")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: the GPU if any"
    )
    parser.add_argument(
        "--dtype",
        metavar="LIST",
        help="comma-separated fp32,fp16,bf16,fp64 (default fp32 on the CPU; fp16,bf16,fp32 on the GPU)",
    )
    parser.add_argument(
        "--layout",
        choices=["auto", "nchw", "channels_last", "both"],
        default="auto",
        help="memory format (auto: channels_last for fp16/bf16, else NCHW; both: each case in each)",
    )
    parser.add_argument(
        "--max-shapes", type=int, help="conv layers / shapes per network and op (default: preset)"
    )
    parser.add_argument("--repeats", type=int, help="timed rounds (CPU) or calls (GPU) per contender")
    parser.add_argument(
        "--compile-mode",
        choices=["auto", "default", "max-autotune", "none"],
        default="auto",
        help="torch.compile contender: auto = max-autotune on the GPU, default on the CPU; none skips it",
    )
    parser.add_argument(
        "--compile-models",
        action="store_true",
        help="also torch.compile the end-to-end models (quick preset)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="auto",
        metavar="PATH",
        help="write the results as JSON (no PATH: benchmarks/results/<device>-<date>.json)",
    )
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of the ratios, one panel per op")
    parser.add_argument(
        "--compact",
        action="store_true",
        help="a narrow table: op, shape, fastcnn ms and the ratios vs eager and compile",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuses counts below one (ValueError naming the flag) before any case is built: zero shapes, a
    batch of zero or no timed round would otherwise end in a crash or a run of failed cases."""
    if args.max_shapes is not None and args.max_shapes < 1:
        raise ValueError(f"--max-shapes must be >= 1, got {args.max_shapes}")
    if args.batch is not None and any(b < 1 for b in args.batch):
        raise ValueError(f"--batch sizes must be >= 1, got {' '.join(map(str, args.batch))}")
    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")


def main(args: argparse.Namespace) -> int:
    """Entry point of ``fastcnn bench``: 0 when every case ran, 1 when any failed, 2 on bad arguments."""
    # The package's run: its module-level helpers (measure_ceilings, _load_convert) are the seams that
    # callers replace to run the plumbing cheaply.
    from . import run

    try:
        check_arguments(args)
        select_ops(args.ops)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TF32.*")
            record = run(args, progress=sys.stderr.isatty())
    except ValueError as exc:
        print(f"fastcnn bench: {exc}", file=sys.stderr)
        return 2
    print_report(record, compact=getattr(args, "compact", False))
    if args.json:
        path = write_json(record, record["default_json"] if args.json == "auto" else args.json)
        print(f"wrote {path}")
    if args.plot:
        write_plot(record, args.plot)
        print(f"wrote {args.plot}")
    return 1 if record["failed"] else 0
