"""Work counters of fastcnn's CUDA conv kernels on every ResNet-50 conv layer, counted in emulation.

Runs each layer of benchmarks/shapes/cnn_layers.json ("resnet50") in fp16 channels_last through the
emulated CUDA kernels (FASTCNN_BACKEND=cuda-emu, set here): forward (fastcnn.conv2d), dgrad and wgrad
(fastcnn.conv2d_backward with output_mask [1, 0, 0] and [0, 1, 0]), with the emulator's counters on
(csrc/emu/README.md "Counters") and only a sample of each launch's blocks run, every counter scaled by
blocks / blocks run. The outputs of a sampled launch are incomplete: they are thrown away. Writes
benchmarks/results/emu-counters-resnet50-<date>.json and prints a summary table.

Run: python benchmarks/emu_counters.py [--batch 32] [--sample-blocks 128] [--layers N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("FASTCNN_BACKEND", "cuda-emu")

import torch  # noqa: E402

import fastcnn  # noqa: E402
from fastcnn.tools.bench.cases import _conv_params, load_layers, spread  # noqa: E402

ROOT = Path(__file__).resolve().parent
ELEM = 2  # fp16 bytes
BK = 32  # K elements per stage of the fp16 GEMM tiles (64 bytes; cuda/gemm/kernel_traits.cuh)
VEC = 8  # fp16 elements per 16-byte chunk: operands whose channels are not a multiple load by registers
EPILOGUE_BARRIERS = 2  # per block: the tensor-core epilogue stages its C tile in shared memory
PASSES = ("fwd", "dgrad", "wgrad")
COUNTERS = (
    "mma_issued",
    "macs_issued",
    "useful_macs",
    "ldmatrix",
    "ldmatrix_bytes",
    "bank_conflicts",
    "cp_async",
    "cp_async_bytes",
    "cp_async_zero_fill",
    "cp_async_sectors",
    "barriers",
)


def nonzero(shape: tuple[int, ...]) -> torch.Tensor:
    """fp16 values of magnitude 0.5-1.5 and random sign, channels_last: no input is ever zero, so a zero
    mma operand is padding or zero fill, and random signs keep the sums small."""
    t = (torch.rand(shape) + 0.5) * (torch.randint(0, 2, shape) * 2 - 1)
    return t.half().contiguous(memory_format=torch.channels_last)


def out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def valid_taps(size: int, k: int, s: int, p: int, d: int) -> int:
    """(output position, tap) pairs along one axis that read the input rather than its zero padding."""
    return sum(
        1 for o in range(out_size(size, k, s, p, d)) for t in range(k) if 0 <= o * s - p + t * d < size
    )


def label(layer: dict) -> str:
    return (
        f"{layer['in_channels']}->{layer['out_channels']} {layer['kernel_h']}x{layer['kernel_w']}"
        f" s{layer['stride_h']} {layer['height']}x{layer['width']}"
    )


def gemm_shape(layer: dict, batch: int, oh: int, ow: int, pass_: str) -> tuple[int, int, int]:
    """M, N, K of the pass's implicit GEMM (csrc/cuda/conv2d.cu)."""
    g = layer["groups"]
    cg, ocg = layer["in_channels"] // g, layer["out_channels"] // g
    taps = layer["kernel_h"] * layer["kernel_w"]
    if pass_ == "fwd":
        return batch * oh * ow, ocg, taps * cg
    if pass_ == "dgrad":
        return batch * layer["height"] * layer["width"], cg, taps * ocg
    return ocg, taps * cg, batch * oh * ow


def phase_taps(kernel: int, stride: int, dilation: int, pad: int, phase: int) -> int:
    """Taps of one kernel axis that reach input positions = phase (mod stride) (cuda/gemm/gemm.cu)."""
    return sum(1 for t in range(kernel) if (t * dilation - phase - pad) % stride == 0)


def dgrad_phases(layer: dict, batch: int) -> list[tuple[int, int]]:
    """M, K of each stride-phase GEMM of dgrad, in launch order (y phase outer, x phase inner)."""
    sh, sw = layer["stride_h"], layer["stride_w"]
    ocg = layer["out_channels"] // layer["groups"]
    phases = []
    for py in range(min(sh, layer["height"])):
        th = phase_taps(layer["kernel_h"], sh, layer["dilation_h"], layer["pad_h"], py)
        for px in range(min(sw, layer["width"])):
            tw = phase_taps(layer["kernel_w"], sw, layer["dilation_w"], layer["pad_w"], px)
            rows = -(-(layer["height"] - py) // sh) * -(-(layer["width"] - px) // sw)
            phases.append((batch * rows, th * tw * ocg))
    return phases


def uncounted_reads(layer: dict, pass_: str) -> list[str]:
    """Operands the loaders read through registers (not cp.async): their bytes are not counted."""
    g = layer["groups"]
    cg_vec = (layer["in_channels"] // g) % VEC == 0
    ocg_vec = (layer["out_channels"] // g) % VEC == 0
    if pass_ == "fwd":
        return [] if cg_vec else ["input", "weight"]
    if pass_ == "dgrad":
        return [] if ocg_vec else ["grad_output", "weight"]
    return ([] if ocg_vec else ["grad_output"]) + ([] if cg_vec else ["input"])


def run_case(layer: dict, batch: int, pass_: str, tensors: dict) -> tuple[list[dict], float]:
    stride, padding, dilation, groups = _conv_params(layer)
    torch.ops.fastcnn_emu.counters_reset()
    start = time.perf_counter()
    if pass_ == "fwd":
        torch.ops.fastcnn.conv2d(tensors["x"], tensors["w"], None, stride, padding, dilation, groups, 0, None)
    else:
        mask = [pass_ == "dgrad", pass_ == "wgrad", False]
        torch.ops.fastcnn.conv2d_backward(
            tensors["gy"], tensors["x"], tensors["w"], None, stride, padding, dilation, groups, 0, mask
        )
    seconds = time.perf_counter() - start
    return json.loads(torch.ops.fastcnn_emu.counters_read()), seconds


def summarise(layer: dict, batch: int, pass_: str, records: list[dict], seconds: float) -> dict:
    g = layer["groups"]
    c, oc = layer["in_channels"], layer["out_channels"]
    kh, kw = layer["kernel_h"], layer["kernel_w"]
    oh = out_size(layer["height"], kh, layer["stride_h"], layer["pad_h"], layer["dilation_h"])
    ow = out_size(layer["width"], kw, layer["stride_w"], layer["pad_w"], layer["dilation_w"])
    in_bytes = batch * c * layer["height"] * layer["width"] * ELEM
    out_bytes = batch * oc * oh * ow * ELEM
    w_bytes = oc * (c // g) * kh * kw * ELEM
    true_macs = batch * oh * ow * oc * (c // g) * kh * kw
    # The products that touch no padding: every pass's GEMM needs exactly these (dgrad and wgrad pair the
    # same (pixel, tap) positions as forward), so with every block run useful_macs equals this.
    nonpadding_macs = (
        batch
        * valid_taps(layer["height"], kh, layer["stride_h"], layer["pad_h"], layer["dilation_h"])
        * valid_taps(layer["width"], kw, layer["stride_w"], layer["pad_w"], layer["dilation_w"])
        * oc
        * (c // g)
    )
    m, n, k = gemm_shape(layer, batch, oh, ow, pass_)

    total = {name: sum(r["scaled"][name] for r in records) for name in COUNTERS}
    gemms = [r for r in records if "conv_gemm_kernel" in r["kernel"]]
    gemm = gemms[0]
    tiles = [re.search(r"MmaConfig<[^,]+, (\d+), (\d+), (\d+), (\d+), (\d+)>", r["kernel"]) for r in gemms]
    # Each launch's GEMM: dgrad runs one per stride phase, the other passes one.
    shapes = [(mm, n, kk) for mm, kk in dgrad_phases(layer, batch)] if pass_ == "dgrad" else [(m, n, k)]
    assert len(shapes) == len(gemms), (label(layer), pass_, len(gemms))
    k_tiles_per_block = [
        math.ceil(math.ceil(kk / BK) / (r["grid"][2] // g))
        for (_, _, kk), r in zip(shapes, gemms, strict=True)
    ]
    k_tile_blocks = sum(kt * r["blocks"] for kt, r in zip(k_tiles_per_block, gemms, strict=True))
    # The reads a launch's tiles need at the least: every gathered A element that is not padding once
    # per N tile of its row block, every B element once per M tile (zero fill costs no bytes).
    gathered = nonpadding_macs // (
        oc if pass_ != "dgrad" else c // g
    )  # valid (pixel, tap, channel) of A or B
    tile_min_reads = 0
    total_mk = max(sum(mm * kk for mm, _, kk in shapes), 1)
    for (mm, nn, kk), tile in zip(shapes, tiles, strict=True):
        bm, bn = (int(tile.group(1)), int(tile.group(2))) if tile else (64, 64)
        tiles_m, tiles_n = math.ceil(mm / bm), math.ceil(nn / bn)
        if pass_ == "fwd":
            tile_min_reads += tiles_n * gathered + tiles_m * nn * kk
        elif pass_ == "dgrad":
            # the phases share A's gathered elements in proportion to their M x K (borders aside)
            tile_min_reads += tiles_n * gathered * mm * kk // total_mk + tiles_m * nn * kk
        else:
            tile_min_reads += tiles_n * mm * kk + tiles_m * gathered
    tile_min_reads *= ELEM
    # Stores are plain stores, which the emulator does not count: the GEMM writes each C element of its
    # pass once, or, split over K, one fp32 partial per split that a reduction reads back and sums (wgrad
    # always goes through the partials; forward and dgrad when the launch split K).
    launch_splits = [r["grid"][2] // g for r in gemms]
    partials = sum(
        sp * g * mm * nn * 4
        for (mm, nn, _), sp in zip(shapes, launch_splits, strict=True)
        if sp > 1 or pass_ == "wgrad"
    )
    if pass_ == "fwd":
        compulsory = in_bytes + w_bytes + out_bytes
        writes = out_bytes + 2 * partials
        min_reads = in_bytes + w_bytes
    elif pass_ == "dgrad":
        compulsory = out_bytes + w_bytes + in_bytes
        writes = in_bytes + 2 * partials
        min_reads = out_bytes + w_bytes
    else:
        compulsory = out_bytes + in_bytes + w_bytes
        writes = 2 * partials + w_bytes  # GEMM partials out, reduction reads them and writes
        min_reads = out_bytes + in_bytes
    uncounted = uncounted_reads(layer, pass_)
    global_bytes = total["cp_async_bytes"] + writes
    tile_min = tile_min_reads + writes
    return {
        "layer": label(layer),
        "pass": pass_,
        "shape": {k_: layer[k_] for k_ in layer if k_ != "count"},
        "occurrences": layer.get("count", 1),
        "gemm": {"M": m, "N": n, "K": k, "tile": [int(v) for v in tiles[0].groups()] if tiles[0] else None},
        "gemms": [
            {"M": mm, "N": nn, "K": kk, "tile": [int(v) for v in t.groups()] if t else None, "splits": sp}
            for (mm, nn, kk), t, sp in zip(shapes, tiles, launch_splits, strict=True)
        ],
        "kernels": [r["kernel"] for r in records],
        "mma_issued": total["mma_issued"],
        "macs_issued": total["macs_issued"],
        "useful_macs": total["useful_macs"],
        "true_macs": true_macs,
        "useful_mac_fraction": total["useful_macs"] / max(total["macs_issued"], 1),
        "useful_vs_true": total["useful_macs"] / true_macs,
        "nonpadding_macs": nonpadding_macs,
        "useful_vs_nonpadding": total["useful_macs"] / nonpadding_macs,
        "global_bytes": global_bytes,
        "global_read_bytes": total["cp_async_bytes"],
        "modelled_bytes": writes,
        "reads_not_counted": uncounted,
        "compulsory_bytes": compulsory,
        "compulsory_read_bytes": min_reads,
        "global_vs_compulsory": global_bytes / compulsory,
        "tile_reuse_min_bytes": tile_min,
        "global_vs_tile_min": global_bytes / tile_min,
        "sectors": total["cp_async_sectors"],
        "min_sectors": math.ceil(min_reads / 32),
        "cp_async": total["cp_async"],
        "cp_async_zero_fill": total["cp_async_zero_fill"],
        "ldmatrix": total["ldmatrix"],
        "bank_conflicts": total["bank_conflicts"],
        "min_bank_conflicts": 0,
        "barriers": total["barriers"],
        "barriers_per_block": gemm["barriers_per_block"],
        "k_tiles_per_block": k_tiles_per_block[0],
        # the epilogue's two barriers per block (around the C tile staged in shared memory) set apart
        "barriers_per_k_tile": (total["barriers"] - EPILOGUE_BARRIERS * sum(r["blocks"] for r in gemms))
        / max(k_tile_blocks, 1),
        "min_barriers_per_k_tile": 1,
        "epilogue_barriers_per_block": EPILOGUE_BARRIERS,
        "stages": int(tiles[0].group(5)) if tiles[0] else None,
        "blocks": sum(r["blocks"] for r in gemms),
        "blocks_run": sum(r["blocks_run"] for r in gemms),
        "sampled": any(r["sampled"] for r in records),
        "splits": max(launch_splits),
        "resident_blocks_per_sm": gemm["resident_blocks_per_sm"],
        "resident_limit": gemm["resident_limit"],
        "waves": gemm["waves"],
        "wave_fraction": gemm["wave_fraction"],
        "min_waves": 1,
        "emulation_seconds": round(seconds, 2),
        "launches": records,
    }


def table(cases: list[dict]) -> str:
    head = (
        f"{'layer':<26} {'pass':<5} {'useful':>7} {'u/np':>5} {'GMAC':>8} {'glob MB':>9} {'comp MB':>9}"
        f" {'x':>5} {'sect/min':>8} {'conflicts':>10} {'bar/kt':>6} {'blocks':>7} {'waves':>6}"
    )
    lines = [head, "-" * len(head)]
    for c in cases:
        note = "*" if c["reads_not_counted"] else ""
        lines.append(
            f"{c['layer']:<26} {c['pass']:<5} {100 * c['useful_mac_fraction']:6.1f}%"
            f" {c['useful_vs_nonpadding']:5.2f} {c['macs_issued'] / 1e9:8.2f}"
            f" {c['global_bytes'] / 1e6:9.1f} {c['compulsory_bytes'] / 1e6:9.1f}"
            f" {c['global_vs_compulsory']:5.2f}{note:1}"
            f"{c['sectors'] / max(c['min_sectors'], 1):8.2f} {c['bank_conflicts']:10d}"
            f" {c['barriers_per_k_tile']:6.2f} {c['blocks']:7d}"
            f" {c['waves']:3d}/{c['wave_fraction']:.1f}"
        )
    lines += [
        "useful: useful/issued MACs; u/np: useful/non-padding MACs (1 but for sampling);",
        "x: global/compulsory bytes (* = some reads go through registers and are not counted);",
        "sect/min: sectors / (compulsory read bytes / 32); bar/kt: mainloop barriers per K tile;",
        "waves: ceil / fraction (resident blocks from threads and shared memory; registers unknown)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sample-blocks", type=int, default=128, help="blocks run per launch (>= 2)")
    parser.add_argument("--layers", type=int, default=None, help="layers, spread over the list (all)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if fastcnn.backend() != "cuda-emu":
        raise SystemExit("needs the emulation build: FASTCNN_BACKEND=cuda-emu and fastcnn._C_emu")
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    layers = spread(load_layers()["resnet50"], args.layers)
    emu = torch.ops.fastcnn_emu
    sm_count = emu.properties()[1]
    emu.counters_enable(True, args.sample_blocks)
    cases = []
    start = time.perf_counter()
    try:
        for layer in layers:
            stride, padding, dilation, groups = _conv_params(layer)
            c, oc, kh, kw = layer["in_channels"], layer["out_channels"], layer["kernel_h"], layer["kernel_w"]
            oh = out_size(layer["height"], kh, stride[0], padding[0], dilation[0])
            ow = out_size(layer["width"], kw, stride[1], padding[1], dilation[1])
            tensors = {
                "x": nonzero((args.batch, c, layer["height"], layer["width"])),
                "w": nonzero((oc, c // groups, kh, kw)),
                "gy": nonzero((args.batch, oc, oh, ow)),
            }
            for pass_ in PASSES:
                records, seconds = run_case(layer, args.batch, pass_, tensors)
                case = summarise(layer, args.batch, pass_, records, seconds)
                cases.append(case)
                print(
                    f"{case['layer']:<26} {pass_:<5} {100 * case['useful_mac_fraction']:5.1f}% useful,"
                    f" {seconds:6.1f} s",
                    flush=True,
                )
    finally:
        emu.counters_enable(False)
        emu.counters_reset()
    runtime = time.perf_counter() - start
    out = args.json or ROOT / "results" / f"emu-counters-resnet50-{date.today().isoformat()}.json"
    header = {
        "about": (
            "fastcnn CUDA conv kernels on ResNet-50's conv layers, counted by the SIMT emulator"
            " (csrc/emu/README.md 'Counters'); fp16, channels_last. Each launch ran sample_blocks of its"
            " blocks (first and last included, spread evenly) and every counter is scaled by blocks /"
            " blocks run, so figures are estimates for non-uniform launches (edge tiles)."
        ),
        "date": date.today().isoformat(),
        "batch": args.batch,
        "sample_blocks": args.sample_blocks,
        "layers": len(layers),
        "dtype": "float16",
        "layout": "channels_last",
        "emulated_sm_count": sm_count,
        "runtime_s": round(runtime, 1),
        "notes": [
            "global_bytes = cp.async bytes requested (counted) + modelled_bytes, the traffic the emulator"
            " does not count (plain stores and loads): the C tile written once per pass; for wgrad the fp32"
            " split-K partials written, read back by the reduction, and the fp16 weight gradient",
            "reads_not_counted: operands loaded through registers (channels not a multiple of 8), whose"
            " bytes and sectors are missing from the counts",
            "useful_macs: mma products with both operands non-zero (inputs are never zero);"
            " true_macs = N*OH*OW*OC*C/groups*KH*KW (padding taps included, the usual FLOP count);"
            " nonpadding_macs = the products that read no padding, what every pass must do;"
            " useful_vs_nonpadding differs from 1 only by the sampling error",
            "waves use resident blocks per SM from threads and shared memory at sm_90 limits; registers"
            " are not known to the emulator, so residency is an upper bound and waves a lower bound",
            "bank_conflicts: ldmatrix wavefronts beyond one per 8-address phase",
        ],
        "cases": cases,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(header, indent=1) + "\n")
    print(table(cases))
    print(
        f"{len(cases)} cases in {runtime:.0f} s (batch {args.batch}, {args.sample_blocks} blocks per launch)"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
