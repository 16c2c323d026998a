"""Registers, spills and shared memory of every GEMM-core kernel configuration, from `ptxas -v`, and the
blocks and warps per SM they allow on the target architecture (a prediction from the compiler's figures
and the SM's limits, not a measurement).

Compiles csrc/cuda/gemm/gemm.cu alone with the extension's nvcc flags (`-Xptxas -v`, one architecture),
reads each conv_gemm_kernel's register count, spill bytes and barriers, adds the dynamic shared memory its
configuration asks for (cuda/gemm/kernel_traits.cuh: kStages x (A tile + B tile), padded pitches), and
prints a table; --json writes it. Needs nvcc (CUDA_HOME or /usr/local/cuda), no GPU.

Run: python scripts/gemm_resources.py [--arch 90] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Per-SM limits of the architectures fastcnn targets (CUDA C++ Programming Guide, compute capabilities).
LIMITS = {
    "90": {
        "regs": 65536,
        "smem": 233472,
        "smem_block_max": 232448,
        "smem_reserved": 1024,
        "threads": 2048,
        "blocks": 32,
        "reg_unit": 256,
    },
    "80": {
        "regs": 65536,
        "smem": 167936,
        "smem_block_max": 166912,
        "smem_reserved": 1024,
        "threads": 2048,
        "blocks": 32,
        "reg_unit": 256,
    },
}

ELEM_BYTES = {"c10::Half": 2, "c10::BFloat16": 2, "float": 4, "double": 8}
MODES = {"0": "fwd", "1": "dgrad", "2": "wgrad"}


def nvcc_command(arch: str, cubin: Path, keep_dir: Path) -> list[str]:
    # torch guesses /usr/local when nvcc is not on PATH; point it at the usual toolkit first (as setup.py).
    if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    from torch.utils import cpp_extension

    cuda_home = os.environ.get("CUDA_HOME") or cpp_extension.CUDA_HOME or "/usr/local/cuda"
    includes = [f"-I{ROOT / 'csrc'}"] + [f"-I{p}" for p in cpp_extension.include_paths(device_type="cuda")]
    return [
        os.path.join(cuda_home, "bin", "nvcc"),
        "-cubin",
        str(ROOT / "csrc" / "cuda" / "gemm" / "gemm.cu"),
        "-o",
        str(cubin),
        *includes,
        "-D__CUDA_NO_HALF_OPERATORS__",
        "-D__CUDA_NO_HALF_CONVERSIONS__",
        "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-D__CUDA_NO_HALF2_OPERATORS__",
        "-DCUDA_HAS_FP16=1",
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        "-DTORCH_EXTENSION_NAME=_C",
        "--expt-relaxed-constexpr",
        "-O3",
        "-std=c++20",
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        "-Xptxas",
        "-v",
        "--keep",
        f"--keep-dir={keep_dir}",
    ]


def demangle(names: list[str]) -> list[str]:
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def parse_ptxas(log: str) -> dict[str, dict]:
    """Mangled entry name -> registers, spill bytes, static shared bytes, barriers."""
    kernels: dict[str, dict] = {}
    current = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            current = kernels.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["spill_store_bytes"], current["spill_load_bytes"] = int(m.group(1)), int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
            b = re.search(r"used (\d+) barriers", line)
            current["barriers"] = int(b.group(1)) if b else 0
            s = re.search(r"(\d+) bytes smem", line)
            current["static_smem"] = int(s.group(1)) if s else 0
            current = None
    return kernels


def ptx_divisions(ptx: str) -> dict[str, dict[str, int]]:
    """Mangled entry name -> integer div/rem instructions in its PTX, 32- and 64-bit: in the whole kernel
    and in its mainloop, taken as the text from the first barrier (the setup comes before it) to the end
    of the multiply (the epilogue comes after it)."""
    counts: dict[str, dict[str, int]] = {}
    entries = [(m.start(), m.group(1)) for m in re.finditer(r"\.entry\s+(\w+)\(", ptx)]
    for i, (start, name) in enumerate(entries):
        body = ptx[start : entries[i + 1][0] if i + 1 < len(entries) else len(ptx)]
        barrier = body.find("bar.sync")
        # the multiply ends the loop's text: its last mma.sync (the staged epilogue after it reads shared
        # memory too), or for the FMA tiles, which stage nothing, the last shared-memory read
        last_mma = body.rfind("mma.sync")
        end = last_mma if last_mma >= 0 else body.rfind("ld.shared")
        loop = body[barrier:end] if 0 <= barrier < end else ""
        division = r"\b(?:div|rem)\.(?:s|u)(32|64)\b"
        ops, loop_ops = re.findall(division, body), re.findall(division, loop)
        counts[name] = {
            "div32": ops.count("32"),
            "div64": ops.count("64"),
            "mainloop_div32": loop_ops.count("32"),
            "mainloop_div64": loop_ops.count("64"),
        }
    return counts


def config_of(name: str) -> dict | None:
    """Dtype, mode, tile, warps, stages and dynamic shared memory of a demangled conv_gemm_kernel name."""
    if "conv_gemm_kernel<" not in name:
        return None
    dtype = name.split("conv_gemm_kernel<", 1)[1].split(",", 1)[0].strip()
    mode = re.search(r"GemmMode\)?(\d)|GemmMode::k(\w+)", name)
    mode_name = (
        MODES.get(mode.group(1), "?") if mode and mode.group(1) else (mode.group(2).lower() if mode else "?")
    )
    mode_name = {"forward": "fwd"}.get(mode_name, mode_name)
    elem = ELEM_BYTES[dtype]
    bk = 64 // elem
    vec = 16 // elem
    mma = re.search(r"MmaConfig<[^,]+, (\d+), (\d+), (\d+), (\d+), (\d+)>", name)
    if mma:
        bm, bn, wm, wn, stages = (int(v) for v in mma.groups())
        threads = wm * wn * 32
        math_kind = "mma.tf32" if dtype == "float" else "mma.f16"
    else:
        bm, bn, threads, stages = 64, 64, 256, 3
        math_kind = "fma"
    k_major = mode_name != "wgrad"
    tile_elems = (lambda rows: rows * (bk + vec)) if k_major else (lambda rows: bk * (rows + 8))
    dynamic = stages * (tile_elems(bm) + tile_elems(bn)) * elem
    return {
        "dtype": dtype,
        "mode": mode_name,
        "math": math_kind,
        "tile": [bm, bn],
        "threads": threads,
        "stages": stages,
        "bk": bk,
        "dynamic_smem": dynamic,
    }


def occupancy(registers: int, smem: int, threads: int, limits: dict) -> dict:
    warps = threads // 32
    regs_per_warp = math.ceil(registers * 32 / limits["reg_unit"]) * limits["reg_unit"]
    by_regs = (limits["regs"] // regs_per_warp) // warps
    by_smem = limits["smem"] // (smem + limits["smem_reserved"]) if smem <= limits["smem_block_max"] else 0
    by_threads = limits["threads"] // threads
    blocks = min(by_regs, by_smem, by_threads, limits["blocks"])
    limiter = min(
        (by_regs, "registers"), (by_smem, "shared"), (by_threads, "threads"), (limits["blocks"], "blocks")
    )[1]
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * warps, "limited_by": limiter}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="90", choices=sorted(LIMITS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = nvcc_command(args.arch, Path(tmp) / "gemm.cubin", Path(tmp))
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        divisions: dict[str, dict[str, int]] = {}
        for ptx in Path(tmp).glob("*.ptx"):
            divisions.update(ptx_divisions(ptx.read_text()))
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"nvcc failed ({proc.returncode})")
    kernels = parse_ptxas(proc.stdout + proc.stderr)
    names = list(kernels)
    rows = []
    for mangled, readable in zip(names, demangle(names), strict=True):
        cfg = config_of(readable)
        if cfg is None:
            continue
        info = kernels[mangled]
        smem = cfg["dynamic_smem"] + info.get("static_smem", 0)
        occ = occupancy(info["registers"], smem, cfg["threads"], LIMITS[args.arch])
        rows.append({**cfg, **info, **divisions.get(mangled, {}), **occ})
    rows.sort(key=lambda r: (r["math"], r["dtype"], r["tile"], r["mode"]))
    head = (
        f"{'dtype':<14} {'mode':<6} {'math':<8} {'tile':>8} {'thr':>4} {'st':>3} {'regs':>5} {'spill':>6}"
        f" {'smem KB':>8} {'div32/64':>8} {'loop':>6} {'blk/SM':>6} {'warps/SM':>8}  limited by"
    )
    print(f"GEMM-core kernels, sm_{args.arch}, from ptxas -v (predicted residency, not measured)")
    print(head)
    print("-" * len(head))
    for r in rows:
        spill = r.get("spill_store_bytes", 0) + r.get("spill_load_bytes", 0)
        tile = f"{r['tile'][0]}x{r['tile'][1]}"
        print(
            f"{r['dtype']:<14} {r['mode']:<6} {r['math']:<8} {tile:>8} {r['threads']:>4} {r['stages']:>3}"
            f" {r['registers']:>5} {spill:>6} {(r['dynamic_smem'] + r.get('static_smem', 0)) / 1024:8.1f}"
            f" {r.get('div32', -1):>4}/{r.get('div64', -1):<3}"
            f" {r.get('mainloop_div32', -1):>3}/{r.get('mainloop_div64', -1):<2}"
            f" {r['blocks_per_sm']:>6} {r['warps_per_sm']:>8}  {r['limited_by']}"
        )
    print("div32/64: integer div/rem instructions in the kernel's PTX; loop: those in its mainloop (the")
    print("register path's per-element decode of unaligned channels; the vector path divides nowhere)")
    print(f"{len(rows)} kernels, nvcc {seconds:.0f} s")
    if not rows:
        raise SystemExit("no conv_gemm_kernel in the ptxas output")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "about": "GEMM-core kernels' resources from ptxas -v and the residency"
                    " they allow (predicted, not measured)",
                    "date": date.today().isoformat(),
                    "arch": f"sm_{args.arch}",
                    "limits": LIMITS[args.arch],
                    "kernels": rows,
                },
                indent=1,
            )
            + "\n"
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
