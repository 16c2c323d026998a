"""fastcnn vs PyTorch (oneDNN) conv2d on the CPU: forward, fused conv+bias+ReLU(+residual), backward.

ResNet-18 layer shapes (benchmarks/shapes/cnn_layers.json) at a given batch, fp32, NCHW and
channels_last. Both contenders get the same inputs; their measurements alternate (blocked_autorange of
one, then the other, several rounds) and the median of each is kept, so load from other jobs hits both.
Prints a table of time ratios fastcnn / PyTorch (< 1: fastcnn faster) and their geomeans.

    PYTHONPATH=. python benchmarks/cpu_conv_speed.py [--batch 8] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb

import fastcnn  # noqa: F401  (registers torch.ops.fastcnn)

HERE = os.path.dirname(os.path.abspath(__file__))


def median_time(fn, min_run_time: float) -> float:
    return tb.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def alternate(a, b, rounds: int, min_run_time: float) -> tuple[float, float]:
    ta, tb_ = [], []
    a(), b()
    for _ in range(rounds):
        ta.append(median_time(a, min_run_time))
        tb_.append(median_time(b, min_run_time))
    return statistics.median(ta), statistics.median(tb_)


def contenders(kind, x, wt, bias, res, go, stride, pad):
    """(fastcnn, PyTorch) callables for one measurement kind on fixed inputs."""
    if kind == "forward":

        def ours():
            return torch.ops.fastcnn.conv2d(x, wt, None, stride, pad, [1, 1], 1, 0, None)

        def ref():
            return F.conv2d(x, wt, None, stride, pad)

    elif kind == "fused":

        def ours():
            return torch.ops.fastcnn.conv2d(x, wt, bias, stride, pad, [1, 1], 1, 1, res)

        def ref():
            return torch.relu(F.conv2d(x, wt, None, stride, pad) + bias.view(1, -1, 1, 1) + res)

    else:
        mask = [True, True, False]

        def ours():
            return torch.ops.fastcnn.conv2d_backward(go, x, wt, None, stride, pad, [1, 1], 1, 0, mask)

        def ref():
            return torch.ops.aten.convolution_backward(
                go, x, wt, None, stride, pad, [1, 1], False, [0, 0], 1, mask
            )

    return ours, ref


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-run-time", type=float, default=0.2)
    ap.add_argument("--only", choices=["forward", "fused", "backward"], action="append")
    ap.add_argument("--layout", choices=["nchw", "nhwc"], action="append")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = args.only or ["forward", "fused", "backward"]
    layouts = args.layout or ["nchw", "nhwc"]
    shapes = json.load(open(os.path.join(HERE, "shapes", "cnn_layers.json")))["resnet18"]
    torch.manual_seed(0)
    rows = []
    for layout in layouts:
        fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        for s in shapes:
            n, c, oc, h, w = args.batch, s["in_channels"], s["out_channels"], s["height"], s["width"]
            stride, pad = [s["stride_h"], s["stride_w"]], [s["pad_h"], s["pad_w"]]
            x = torch.randn(n, c, h, w).to(memory_format=fmt)
            wt = torch.randn(oc, c, s["kernel_h"], s["kernel_w"]) * 0.05
            bias = torch.randn(oc)
            y = F.conv2d(x, wt, None, stride, pad)
            res = torch.randn_like(y)
            oh, ow = y.shape[2:]
            flops = 2 * n * oc * oh * ow * c * s["kernel_h"] * s["kernel_w"]
            name = f"{c}->{oc} {h}x{w} k{s['kernel_h']} s{stride[0]}"
            go = torch.randn_like(y)
            for kind in kinds:
                ours, ref = contenders(kind, x, wt, bias, res, go, stride, pad)
                fl = 2 * flops if kind == "backward" else flops
                t_ours, t_ref = alternate(ours, ref, args.rounds, args.min_run_time)
                row = dict(
                    layout=layout,
                    shape=name,
                    kind=kind,
                    fastcnn_ms=t_ours * 1e3,
                    torch_ms=t_ref * 1e3,
                    ratio=t_ours / t_ref,
                    fastcnn_gflops=fl / t_ours / 1e9,
                    torch_gflops=fl / t_ref / 1e9,
                )
                rows.append(row)
                print(
                    f"{layout:5} {kind:8} {name:24} "
                    f"fastcnn {row['fastcnn_ms']:8.3f} ms ({row['fastcnn_gflops']:5.0f} GF/s)  "
                    f"torch {row['torch_ms']:8.3f} ms ({row['torch_gflops']:5.0f} GF/s)  "
                    f"ratio {row['ratio']:.2f}",
                    flush=True,
                )
    print("\ngeomean time ratio fastcnn / PyTorch:")
    summary = {}
    for layout in layouts:
        for kind in kinds:
            r = [x["ratio"] for x in rows if x["layout"] == layout and x["kind"] == kind]
            if r:
                g = math.exp(sum(math.log(v) for v in r) / len(r))
                summary[f"{layout}/{kind}"] = g
                print(f"  {layout:5} {kind:8} {g:.3f}  (max {max(r):.2f}, min {min(r):.2f})")
    print(f"load average: {os.getloadavg()}, threads: {torch.get_num_threads()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                dict(
                    batch=args.batch,
                    rows=rows,
                    geomean=summary,
                    loadavg=os.getloadavg(),
                    threads=torch.get_num_threads(),
                    torch=torch.__version__,
                ),
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
