"""The results of a benchmark run for people: a rich table on the console and a PNG of the ratios."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from .config import RATIO_MEANING
from .records import geomean

__all__ = ["header", "print_report", "write_plot"]


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    text = f"{value:.2f}x"
    return f"[green]{text}[/green]" if value >= 1 else f"[red]{text}[/red]"


#: ``--compact``'s columns: what tells fastcnn's standing at a glance, in under 80 characters a row.
_COMPACT_COLUMNS = ("op", "shape", "fastcnn ms", "vs eager", "vs compile")


def header(record: dict) -> str:
    """The report's first line: device, versions (CUDA and cuDNN only when the run used them), ceilings."""
    dev, ceil = record["device"], record["ceilings"]
    peaks = ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in ceil["matmul_tflops"].items())
    # The CUDA version torch was built with says nothing about a CPU run.
    cuda = f"CUDA {record['cuda']} cuDNN {record['cudnn']}" if dev["type"] == "cuda" else "CUDA: not used"
    return (
        f"fastcnn bench on {dev['name']} ({dev['type']}) | torch {record['torch']} {cuda} "
        f"| ceilings: copy {ceil['copy_gbs']:.1f} GB/s, matmul {peaks}"
    )


def print_report(record: dict, console: Any = None, compact: bool = False) -> None:
    """The results as a rich table: times, ratios, achieved rate and its share of the ceiling; with
    ``compact``, only op, shape, fastcnn's time and the two ratios."""
    from rich.console import Console

    console = console or Console(width=None if sys.stdout.isatty() else 160)
    console.print(header(record))
    if compact:
        _print_compact(record, console)
    else:
        _print_cases(record, console)
    _print_footer(record, console)


def _print_compact(record: dict, console: Any) -> None:
    from rich.table import Table

    table = Table(title="fastcnn vs PyTorch (PyTorch time / fastcnn time)")
    for column in _COMPACT_COLUMNS:
        table.add_column(column, justify="left" if column in ("op", "shape") else "right")
    for case in record["cases"]:
        ratios = case["ratios"]
        table.add_row(
            case["op"],
            case["shape"],
            _fmt_ms(case["times_ms"].get("fastcnn")),
            _fmt_ratio(ratios.get("eager")),
            _fmt_ratio(ratios.get("compile")),
        )
    console.print(table)


def _print_cases(record: dict, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"fastcnn vs PyTorch ({RATIO_MEANING})")
    for column, justify in (
        ("op", "left"),
        ("net", "left"),
        ("shape", "left"),
        ("N", "right"),
        ("dtype", "left"),
        ("fastcnn ms", "right"),
        ("eager ms", "right"),
        ("compile ms", "right"),
        ("vs eager", "right"),
        ("vs compile", "right"),
        ("fastcnn rate", "right"),
        ("of ceiling", "right"),
    ):
        table.add_column(column, justify=justify)
    for case in record["cases"]:
        times, ratios = case["times_ms"], case["ratios"]
        if case.get("tflops"):
            rate = f"{case['tflops']['fastcnn']:.3f} TF/s"
        elif case.get("gbs"):
            rate = f"{case['gbs']['fastcnn']:.1f} GB/s"
        elif case.get("images_per_s"):
            rate = f"{case['images_per_s']['fastcnn']:.1f} img/s"
        else:
            rate = "-"
        share = case.get("of_ceiling", {}).get("fastcnn")
        layout = "cl" if case["layout"] == "channels_last" else "nchw"
        table.add_row(
            case["op"],
            case["network"],
            case["shape"],
            str(case["batch"]),
            f"{case['dtype']} {layout}",
            _fmt_ms(times.get("fastcnn")),
            _fmt_ms(times.get("eager")),
            _fmt_ms(times.get("compile")),
            _fmt_ratio(ratios.get("eager")),
            _fmt_ratio(ratios.get("compile")),
            rate,
            "-" if share is None else f"{100 * share:.0f}%",
        )
    console.print(table)


def _print_footer(record: dict, console: Any) -> None:
    from rich.table import Table

    if len(record.get("summary", [])) > 1:
        summary = Table(title="geomean PyTorch time / fastcnn time per op (min-max)")
        for column in ("op", "dtype layout", "cases", "vs eager", "vs compile"):
            summary.add_column(column)

        def cell(row: dict, key: str) -> str:
            if key not in row:
                return "-"
            return f"{row[key]['geomean']:.2f}x ({row[key]['min']:.2f}-{row[key]['max']:.2f})"

        for row in record["summary"]:
            summary.add_row(
                row["op"],
                f"{row['dtype']} {row['layout']}",
                str(row["cases"]),
                cell(row, "eager"),
                cell(row, "compile"),
            )
        console.print(summary)
    for key in ("eager", "compile"):
        ratios = [c["ratios"][key] for c in record["cases"] if key in c["ratios"]]
        if ratios:
            console.print(f"geomean PyTorch {key} / fastcnn over {len(ratios)} cases: {geomean(ratios):.2f}x")
    for item in record["skipped"]:
        console.print(f"[yellow]skipped[/yellow] {item['op']}: {item['reason']}")
    for item in record["failed"]:
        console.print(f"[red]FAILED[/red] {item['op']} {item['shape']} ({item['dtype']}): {item['error']}")
    console.print(
        f"{len(record['cases'])} cases timed, {len(record['failed'])} failed, in {record['seconds']:.0f} s"
    )


def write_plot(record: dict, path: str | Path) -> None:
    """A PNG with one panel per op: per-shape ratio bars vs PyTorch eager (and compile) on a log scale,
    a line at 1.0 (above it fastcnn is faster)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_op: dict[str, list[dict]] = {}
    for case in record["cases"]:
        by_op.setdefault(case["op"], []).append(case)
    panels = max(len(by_op), 1)
    ncols = min(3, panels)
    nrows = math.ceil(panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.axis("off")
    if not by_op:
        axes[0][0].text(0.5, 0.5, "no cases", ha="center", va="center")
    several_configs = len({(c["dtype"], c["layout"], c["batch"]) for c in record["cases"]}) > 1
    for ax, (op, cases) in zip(axes.flat, by_op.items(), strict=False):
        labels = []
        for c in cases:
            label = f"{c['network']} {c['shape']}"
            if several_configs:
                label += f" N={c['batch']} {c['dtype']} {'cl' if c['layout'] == 'channels_last' else 'nchw'}"
            labels.append(label)
        xs = range(len(cases))
        keys = [k for k in ("eager", "compile") if any(k in c["ratios"] for c in cases)]
        width = 0.8 / max(len(keys), 1)
        for j, key in enumerate(keys):
            values = [c["ratios"].get(key, float("nan")) for c in cases]
            ax.bar([x + (j - (len(keys) - 1) / 2) * width for x in xs], values, width, label=f"vs {key}")
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_yscale("log")  # 2x faster and 2x slower look alike
        ax.set_title(op)
        ax.set_ylabel("PyTorch time / fastcnn time")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.legend(fontsize=7)
    dev = record["device"]
    fig.suptitle(f"fastcnn vs PyTorch on {dev['name']} ({record['date'][:10]}): > 1 means fastcnn is faster")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
