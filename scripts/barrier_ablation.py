"""Barrier ablation for fastcnn's CUDA kernels, under the emulator.

Removes one synchronisation site at a time (a __syncthreads, __syncwarp or cp.async wait_group call in
csrc/cuda/) and runs the emulated tests of the kernels that contain it. A removal that some test notices
shows that the barrier is needed and covered; one that no test notices means the barrier is redundant or
untested (remove it, or add the test). The emulator skips the site at run time (FASTCNN_EMU_ABLATE), so
one build serves every site, and counts how often the removed site was reached, so that a site the tests
never execute is reported as such rather than as redundant.

Usage (after `make build-emu`):  python scripts/barrier_ablation.py [--json out.json] [--site SUBSTRING]
Prints a markdown table; exits non-zero when a site is neither caught nor shown redundant.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"

# The tests that exercise each kernel file.
TESTS = {
    "cuda/gemm/mainloop.cuh": ["tests/test_conv2d.py", "tests/test_linear.py"],
    "cuda/gemm/warp_tile.cuh": ["tests/test_conv2d.py", "tests/test_linear.py", "tests/test_emu_counters.py"],
    "cuda/gemm/gemm.cu": ["tests/test_conv2d.py", "tests/test_linear.py"],
    "cuda/conv2d.cu": ["tests/test_conv2d.py", "tests/test_linear.py"],
    "cuda/conv2d_depthwise.cu": ["tests/test_conv2d.py"],
    "cuda/max_pool2d.cu": ["tests/test_max_pool2d.py", "tests/test_determinism.py"],
    "cuda/adaptive_avg_pool2d.cu": ["tests/test_adaptive_avg_pool2d.py"],
}
SITE_PATTERN = re.compile(r"\b(__syncthreads\(\)|__syncwarp\(|cp_async_wait<[^>]*>\(\))")


def find_sites() -> list[tuple[str, str]]:
    """(path:line relative to csrc, the call) for every synchronisation call in the CUDA sources."""
    sites = []
    for path in sorted((CSRC / "cuda").rglob("*.cu*")):
        rel = path.relative_to(CSRC).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//")[0]
            match = SITE_PATTERN.search(code)
            if match and "__device__" not in code and "asm" not in code:
                sites.append((f"{rel}:{number}", match.group(1).rstrip("(")))
    return sites


def run_site(site: str, tests: list[str], timeout: int) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
        env = dict(os.environ, FASTCNN_BACKEND="cuda-emu", FASTCNN_EMU_ABLATE=site)
        env["FASTCNN_EMU_ABLATE_REPORT"] = report.name
        start = time.time()
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:xdist", *tests]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        hits = int(report.read().strip() or 0)
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, re.M)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return {
        "site": site,
        "tests": tests,
        "hits": hits,
        "caught": proc.returncode != 0,
        "first_failure": failed[0] if failed else None,
        "summary": summary,
        "seconds": round(time.time() - start, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--site", default="", help="only sites whose path:line contains this")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per site")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="sites run at once")
    args = parser.parse_args()
    sites = [(site, call) for site, call in find_sites() if args.site in site]

    def one(site_call: tuple[str, str]) -> dict:
        site, call = site_call
        tests = TESTS.get(site.rsplit(":", 1)[0])
        if tests is None:
            result = {"tests": [], "hits": 0, "caught": False, "first_failure": None, "seconds": 0}
            return {"site": site, "call": call, "summary": "no tests listed for this file", **result}
        result = run_site(site, tests, args.timeout)
        result["call"] = call
        verdict = "caught" if result["caught"] else "NOT caught"
        print(f"{site}: {verdict} ({result['seconds']} s)", file=sys.stderr, flush=True)
        return result

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(one, sites))
    print("| site | call | reached | removal | first failing test |")
    print("|---|---|---|---|---|")
    unexplained = 0
    for r in results:
        if r["caught"]:
            verdict = "caught"
        elif r["hits"] == 0:
            verdict = "never reached by the tests"
            unexplained += 1
        else:
            verdict = "**not caught**"
            unexplained += 1
        print(f"| {r['site']} | {r['call']} | {r['hits']} | {verdict} | {r['first_failure'] or ''} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
