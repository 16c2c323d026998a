"""The ``fastcnn`` command line: ``fastcnn check``, ``fastcnn demo`` (more subcommands as they land)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastcnn", description="fastcnn: fast CNN kernels for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="check every op, forward and backward, against PyTorch")
    check.add_argument(
        "--device", choices=["all", "cpu", "cuda"], default="all", help="default: every available"
    )
    check.add_argument("--quick", action="store_true", help="a small subset of the cases (under a minute)")
    check.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    check.add_argument("--json", metavar="PATH", help="also write the results as JSON")

    demo = sub.add_parser("demo", help="train a small fastcnn CNN on sklearn's digits and report its metrics")
    from .demo import add_arguments

    add_arguments(demo)
    from . import bench as bench_module

    bench = sub.add_parser("bench", help="time fastcnn against PyTorch eager and torch.compile")
    bench_module.add_arguments(bench)

    train = sub.add_parser("train", help="fine-tune a model-zoo network on an image dataset")
    from .train import add_arguments as add_train_arguments

    add_train_arguments(train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        from . import check

        if args.device == "cuda":
            import fastcnn

            if not fastcnn.cuda_available():
                print("fastcnn check: --device cuda needs a GPU and a CUDA build of fastcnn", file=sys.stderr)
                return 2
        return check.main(args)
    if args.command == "demo":
        from . import demo

        return demo.main(args)
    if args.command == "bench":
        from . import bench

        return bench.main(args)
    if args.command == "train":
        from . import train

        return train.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
