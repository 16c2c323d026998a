"""Predicted bound of each ResNet-50 conv layer on an H200-class GPU, from counted figures: the emulator's
counts (benchmarks/results/emu-counters-resnet50-*.json) and the kernels' residency from ptxas
(benchmarks/results/ptxas-gemm-sm90-*.json, scripts/gemm_resources.py). Every figure here is counted or
predicted, none is a timing; the first GPU run (scripts/gpu_check.sh) checks them.

For each pass, four lower bounds on its time are set side by side and the largest names the bound:
  tensor  issued MMA MACs x 2 / MMA_TFLOPS, stretched by wave quantisation (blocks over the resident
          slots that ptxas's registers and the tile's shared memory allow, rounded up to whole waves)
  smem    ldmatrix bytes / the SMs' shared-memory bandwidth (128 B per SM per clock)
  L2      global bytes requested (cp.async, plus the modelled stores and split-K partials) / L2_TBS
  DRAM    compulsory bytes / DRAM_TBS
The rates are assumptions (below), not measurements: mma.sync reaching two thirds of the dense fp16
tensor peak, and round published bandwidths.

Run: python benchmarks/predict_bounds.py [--counters PATH] [--ptxas PATH] (prints a markdown table)
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SMS = 132
CLOCK_GHZ = 1.98
MMA_TFLOPS = 660.0  # assumed mma.sync fp16 rate: ~2/3 of the 989 TFLOP/s dense wgmma peak
SMEM_TBS = SMS * 128 * CLOCK_GHZ / 1e3
L2_TBS = 7.0
DRAM_TBS = 4.8


def latest(pattern: str) -> Path:
    found = sorted(RESULTS.glob(pattern))
    if not found:
        raise SystemExit(f"no {pattern} under {RESULTS}")
    return found[-1]


def residency(ptxas: dict) -> dict[tuple[str, str, int, int], int]:
    return {
        (k["dtype"], k["mode"], k["tile"][0], k["tile"][1]): k["blocks_per_sm"]
        for k in ptxas["kernels"]
        if k["dtype"] == "c10::Half"
    }


def tensor_us(case: dict, blocks_per_sm: dict) -> tuple[float, float]:
    """Tensor-bound time with wave quantisation, and the launches' wave fraction (blocks / slots)."""
    mode = {"fwd": "fwd", "dgrad": "dgrad", "wgrad": "wgrad"}[case["pass"]]
    total_us, fractions = 0.0, []
    for launch in case["launches"]:
        tile = re.search(r"MmaConfig<[^,]+, (\d+), (\d+),", launch["kernel"])
        if tile is None:
            continue  # a reduction kernel
        bps = blocks_per_sm.get(("c10::Half", mode, int(tile.group(1)), int(tile.group(2))), 1)
        waves = launch["blocks"] / (SMS * bps)
        fractions.append(waves)
        macs = launch["scaled"]["macs_issued"]
        quantised = math.ceil(waves) / waves if waves > 0 else 1.0
        total_us += 2 * macs / (MMA_TFLOPS * 1e12) * quantised * 1e6
    return total_us, sum(fractions)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counters", type=Path, default=None)
    parser.add_argument("--ptxas", type=Path, default=None)
    args = parser.parse_args()
    counters = json.loads((args.counters or latest("emu-counters-resnet50-*.json")).read_text())
    bps = residency(json.loads((args.ptxas or latest("ptxas-gemm-sm90-*.json")).read_text()))
    print(
        "| layer | pass | useful MACs | global / compulsory | waves | tensor µs | smem µs | L2 µs | DRAM µs "
        "| predicted bound |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in counters["cases"]:
        t_tensor, waves = tensor_us(c, bps)
        ldm = sum(launch["scaled"]["ldmatrix_bytes"] for launch in c["launches"])
        times = {
            "tensor": t_tensor,
            "smem": ldm / (SMEM_TBS * 1e12) * 1e6,
            "L2": c["global_bytes"] / (L2_TBS * 1e12) * 1e6,
            "DRAM": c["compulsory_bytes"] / (DRAM_TBS * 1e12) * 1e6,
        }
        bound = max(times, key=times.get)
        star = "*" if c["reads_not_counted"] else ""
        print(
            f"| {c['layer']} | {c['pass']} | {100 * c['useful_mac_fraction']:.1f}% |"
            f" {c['global_vs_compulsory']:.1f}{star} | {waves:.2f} | {times['tensor']:.1f} |"
            f" {times['smem']:.1f} | {times['L2']:.1f} | {times['DRAM']:.1f} | {bound} |"
        )


if __name__ == "__main__":
    main()
