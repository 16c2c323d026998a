"""The JSON record of a benchmark run: the machine it ran on, each case's figures, the summary."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import RESULTS_DIR

__all__ = [
    "add_ceiling_fractions",
    "cpu_name",
    "dedupe",
    "default_json_path",
    "device_info",
    "geomean",
    "host_info",
    "relative_error",
    "slug",
    "summarize",
    "write_json",
]


def relative_error(a: object, b: object) -> float | None:
    """‖a − b‖ / ‖b‖ in float64; the largest over the tensors of a tuple (empty or None entries skipped)."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        errors = [relative_error(x, y) for x, y in zip(a, b, strict=False)]
        errors = [e for e in errors if e is not None]
        return max(errors) if errors else None
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.numel() == 0 or b.numel() == 0:
        return None
    if a.shape != b.shape:
        return float("inf")
    a64, b64 = a.detach().double(), b.detach().double()
    scale = b64.norm().item()
    return (a64 - b64).norm().item() / (scale if scale > 0 else 1.0)


def add_ceiling_fractions(record: dict, ceilings: dict) -> None:
    """The share of the measured FLOP-rate or bandwidth ceiling each contender reached."""
    if record.get("tflops"):
        peak = ceilings["matmul_tflops"].get(record["dtype"])
        if peak:
            record["of_ceiling"] = {n: v / peak for n, v in record["tflops"].items()}
    elif record.get("gbs"):
        record["of_ceiling"] = {n: v / ceilings["copy_gbs"] for n, v in record["gbs"].items()}


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summarize(cases: Sequence[dict]) -> list[dict]:
    """Per (op, dtype, layout): the geomean, min and max of the ratios against each PyTorch contender."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for case in cases:
        groups.setdefault((case["op"], case["dtype"], case["layout"]), []).append(case)
    rows = []
    for (op, dtype, layout), members in groups.items():
        row: dict[str, Any] = {"op": op, "dtype": dtype, "layout": layout, "cases": len(members)}
        for key in ("eager", "compile"):
            ratios = [c["ratios"][key] for c in members if c["ratios"].get(key)]
            if ratios:
                row[key] = {"geomean": geomean(ratios), "min": min(ratios), "max": max(ratios)}
        rows.append(row)
    return rows


def dedupe(items: list[dict]) -> list[dict]:
    """The items in order, each once."""
    seen, out = set(), []
    for item in items:
        key = json.dumps(item, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


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


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        }
    return {"type": "cpu", "name": cpu_name(), "threads": torch.get_num_threads()}


def host_info() -> dict:
    return {
        "hostname": platform.node(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def default_json_path(device: dict, date: datetime.date) -> Path:
    """benchmarks/results/<device-slug>-<YYYY-MM-DD>.json, where committed results live."""
    return RESULTS_DIR / f"{slug(device['name'])}-{date.isoformat()}.json"


def write_json(record: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return path
