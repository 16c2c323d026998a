"""The ``fastcnn`` command line: argument parsing, ``fastcnn bench``'s JSON and plot, ``fastcnn check``'s
exit codes. Every run here is a tiny subset (one op, one small shape, one timing round) to stay fast."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_refused, run_fastcnn

from fastcnn.tools import bench, check, cli
from fastcnn.tools.bench.cases import spread

#: The smallest bench run: activations and the residual add at one shape, batch 1, one timing round.
TINY_BENCH = [
    "bench",
    "--device",
    "cpu",
    "--ops",
    "relu,add",
    "--networks",
    "resnet50",
    "--max-shapes",
    "1",
    "--batch",
    "1",
    "--repeats",
    "1",
]


@pytest.fixture(autouse=True)
def _cheap_timing(monkeypatch):
    """Short timing blocks and small ceiling probes: these tests check the plumbing, not the figures."""
    quick = bench.PRESETS["quick"]
    monkeypatch.setitem(
        bench.PRESETS,
        "quick",
        bench.Preset(**{**quick.__dict__, "cpu_block_time": 0.001, "cpu_rounds": 1}),
    )
    real = bench.measure_ceilings

    def small_ceilings(device, dtypes, settings):
        record = real(device, [], settings)  # the copy probe only
        record["matmul_tflops"] = {d: 0.1 for d in dtypes}
        return record

    monkeypatch.setattr(bench, "measure_ceilings", small_ceilings)


def test_parser_bench_defaults():
    args = cli.build_parser().parse_args(["bench"])
    assert args.command == "bench"
    assert args.preset == "quick"
    assert args.device == "auto"
    assert args.compile_mode == "auto"
    assert args.json is None and args.plot is None


def test_parser_bench_options():
    args = cli.build_parser().parse_args(
        ["bench", "--preset", "full", "--ops", "conv,relu", "--batch", "8", "32", "--dtype", "fp32", "--json"]
    )
    assert args.preset == "full"
    assert args.batch == [8, 32]
    assert args.json == "auto"  # --json without a path: benchmarks/results/<device>-<date>.json
    assert bench.select_ops(args.ops) == ["conv2d", "conv2d_backward", "relu"]


def test_parser_rejects_unknown_preset(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["bench", "--preset", "huge"])


def test_bench_unknown_op_is_a_clear_error(capsys):
    assert cli.main(["bench", "--device", "cpu", "--ops", "nonsense"]) == 2
    assert "unknown op 'nonsense'" in capsys.readouterr().err


def test_bench_half_precision_on_cpu_is_refused(capsys):
    assert cli.main([*TINY_BENCH, "--dtype", "fp16"]) == 2
    assert "fp32 and fp64 only" in capsys.readouterr().err


def test_compile_mode_per_device():
    assert bench.resolve_compile_mode("auto", torch.device("cpu")) == "default"
    assert bench.resolve_compile_mode("auto", torch.device("cuda")) == "max-autotune"
    assert bench.resolve_compile_mode("none", torch.device("cpu")) is None


def test_quick_preset_selects_every_op_group():
    args = cli.build_parser().parse_args(["bench", "--device", "cpu"])
    specs = bench.build_specs(args, torch.device("cpu"), bench.PRESETS["quick"], "quick", [])
    ops = {s.op for s in specs}
    for group, names in bench.OP_GROUPS.items():
        if group == "model":
            assert "resnet18_inference" in ops and "resnet18_train_step" in ops
        else:
            assert set(names) <= ops, set(names) - ops
    assert {s.network for s in specs if s.op == "conv2d"} == set(bench.NETWORKS)
    assert {s.batch for s in specs} == {2}


def test_layout_both_and_extra_conv_networks():
    args = cli.build_parser().parse_args(
        ["bench", "--device", "cpu", "--ops", "conv,fused,relu", "--networks", "resnet18", "--layout", "both"]
    )
    specs = bench.build_specs(args, torch.device("cpu"), bench.PRESETS["quick"], "quick", [])
    assert {s.config.layout for s in specs} == {"nchw", "channels_last"}
    assert {s.network for s in specs} == {"resnet18"}
    assert {s.op for s in specs} == {"conv2d", "conv2d_backward", "conv_bias_relu", "conv_bias_residual_relu"}
    with pytest.raises(ValueError, match="--networks"):
        args.networks = "alexnet"
        bench.build_specs(args, torch.device("cpu"), bench.PRESETS["quick"], "quick", [])


def test_summary_geomeans_per_op_and_layout():
    def case(op, layout, eager, compile_=None):
        ratios = {"eager": eager} | ({"compile": compile_} if compile_ else {})
        return {"op": op, "dtype": "fp32", "layout": layout, "ratios": ratios}

    rows = bench.summarize(
        [case("relu", "nchw", 2.0, 1.0), case("relu", "nchw", 0.5, 4.0), case("relu", "channels_last", 3.0)]
    )
    by_layout = {r["layout"]: r for r in rows}
    assert by_layout["nchw"]["cases"] == 2
    assert by_layout["nchw"]["eager"] == pytest.approx({"geomean": 1.0, "min": 0.5, "max": 2.0})
    assert by_layout["nchw"]["compile"]["geomean"] == pytest.approx(2.0)
    assert "compile" not in by_layout["channels_last"]


def test_bench_json_schema_and_plot(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = cli.main([*TINY_BENCH, "--compile-mode", "none", "--json", str(out_json), "--plot", str(out_png)])
    assert rc == 0
    record = json.loads(out_json.read_text())
    assert record["schema"] == bench.SCHEMA
    for key in (
        "device",
        "host",
        "torch",
        "cuda",
        "cudnn",
        "date",
        "ceilings",
        "cases",
        "skipped",
        "failed",
        "summary",
    ):
        assert key in record, key
    assert {(r["op"], r["layout"], r["cases"]) for r in record["summary"]} == {
        ("relu", "nchw", 1),
        ("add", "nchw", 1),
    }
    assert record["device"]["type"] == "cpu"
    assert record["ceilings"]["copy_gbs"] > 0
    assert {c["op"] for c in record["cases"]} == {"relu", "add"}
    for case in record["cases"]:
        for key in ("op", "shape", "dtype", "layout", "batch", "network", "times_ms", "ratios", "rel_error"):
            assert key in case, key
        assert case["dtype"] == "fp32" and case["layout"] == "nchw"
        assert set(case["times_ms"]) == {"fastcnn", "eager"}
        assert all(t > 0 for t in case["times_ms"].values())
        assert case["ratios"]["eager"] == pytest.approx(
            case["times_ms"]["eager"] / case["times_ms"]["fastcnn"]
        )
        assert case["gbs"]["fastcnn"] > 0 and case["tflops"] is None
        assert 0 < case["of_ceiling"]["fastcnn"]
        assert case["rel_error"] < 1e-5
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_times_torch_compile(tmp_path):
    out_json = tmp_path / "bench.json"
    args = ["bench", "--device", "cpu", "--ops", "relu", "--networks", "resnet50", "--max-shapes", "1"]
    assert cli.main([*args, "--batch", "1", "--repeats", "1", "--json", str(out_json)]) == 0
    (case,) = json.loads(out_json.read_text())["cases"]
    assert set(case["times_ms"]) == {"fastcnn", "eager", "compile"}
    assert case["compile_s"] > 0
    assert set(case["ratios"]) == {"eager", "compile"}


def test_bench_conv_reports_tflops(tmp_path):
    out_json = tmp_path / "bench.json"
    layers = bench.load_layers()["resnet50"]
    assert layers[0]["kernel_h"] == 7  # the packaged shapes: ResNet-50's stem first
    middle = layers[(len(layers) - 1) // 2]  # --max-shapes 1 takes the middle layer, not the stem
    assert (middle["in_channels"], middle["out_channels"], middle["height"], middle["kernel_h"]) == (
        512,
        256,
        28,
        1,
    )
    args = [*TINY_BENCH[:4], "conv2d", *TINY_BENCH[5:], "--compile-mode", "none", "--json", str(out_json)]
    assert cli.main(args) == 0
    (case,) = json.loads(out_json.read_text())["cases"]
    assert case["op"] == "conv2d" and case["tflops"]["fastcnn"] > 0 and case["gbs"] is None
    assert case["shape"] == "512->256 28x28 k1x1 s1"
    assert case["flops"] == 2.0 * 1 * 256 * 28 * 28 * 512 * 1 * 1


def test_plot_of_an_empty_run(tmp_path):
    record = {"cases": [], "device": {"name": "cpu"}, "date": "2026-01-01T00:00:00"}
    bench.write_plot(record, tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0


@pytest.fixture
def tiny_check(monkeypatch):
    """fastcnn check over two small cases (relu and the residual add) only."""
    cases = [c for c in check.default_cases() if c.op in ("relu", "add")]
    assert len(cases) == 2
    monkeypatch.setattr(check, "default_cases", lambda: cases)
    monkeypatch.delenv(check.INJECT_FAILURE_ENV, raising=False)


def test_check_passes(tiny_check, capsys):
    assert cli.main(["check", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out
    assert "8 passed, 0 failed" in out  # 2 cases x 2 dtypes x 2 layouts


def test_check_injected_failure_exits_nonzero(tiny_check, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(check.INJECT_FAILURE_ENV, "add")
    out_json = tmp_path / "check.json"
    assert cli.main(["check", "--device", "cpu", "--json", str(out_json)]) == 1
    assert "7 passed, 1 failed" in capsys.readouterr().out
    (failed,) = [r for r in json.loads(out_json.read_text()) if not r["passed"]]
    assert failed["op"] == "add"
    assert failed["max_rel_error"] == pytest.approx(0.1, rel=1e-3)


def test_check_counts_an_exception_as_a_failure(monkeypatch):
    def broken(x):
        raise RuntimeError("kernel exploded")

    case = check.Case(
        "relu", "broken", lambda gen: [torch.randn(2, 3, 4, 4, generator=gen)], broken, torch.relu
    )
    (result,) = check.run_check(["cpu"], cases=[case], inject_failure="")[:1]
    assert not result.passed and "kernel exploded" in result.error


def test_models_skipped_with_a_reason_without_convert(monkeypatch):
    monkeypatch.setattr(bench, "_load_convert", lambda: (None, None, "fastcnn.convert is not available"))
    args = cli.build_parser().parse_args(["bench", "--device", "cpu", "--ops", "model"])
    skipped: list[dict] = []
    assert bench.build_specs(args, torch.device("cpu"), bench.PRESETS["quick"], "quick", skipped) == []
    reasons = {s["op"]: s["reason"] for s in skipped}
    assert (
        reasons["resnet18_inference"] == reasons["resnet18_train_step"] == "fastcnn.convert is not available"
    )


@pytest.mark.parametrize(
    ("flag", "values"), [("--max-shapes", ["0"]), ("--batch", ["2", "0"]), ("--repeats", ["-1"])]
)
def test_bench_refuses_counts_below_one(flag, values):
    result = run_fastcnn(*TINY_BENCH, flag, *values)
    assert_refused(result, f"fastcnn bench: {flag}")
    assert ">= 1" in result.stderr and "cases timed" not in result.stdout


def test_spread_picks_the_middle_for_one_and_covers_both_ends():
    items = list(range(23))
    assert spread(items, 1) == [11]  # not the stem
    assert spread(items, 2) == [0, 22]
    assert spread(items, 3) == [0, 11, 22]
    assert spread(items, 5) == [0, 6, 11, 16, 22]
    assert spread(items, None) == spread(items, 30) == items
    assert spread([7], 1) == [7] and spread([], 1) == []
    with pytest.raises(ValueError, match="count"):
        spread(items, 0)


def test_bench_cpu_header_and_compact_table(capsys):
    assert cli.main([*TINY_BENCH, "--compile-mode", "none", "--compact"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "(cpu)" in header and "CUDA: not used" in header and "cuDNN" not in header
    table = [line for line in out.splitlines() if line.startswith(("┃", "│"))]
    assert table and "fastcnn ms" in table[0] and "vs compile" in table[0] and "of ceiling" not in out
    assert max(len(line) for line in table) <= 80


def test_bench_header_names_cuda_only_for_a_cuda_run():
    from fastcnn.tools.bench.report import header

    record = {
        "device": {"name": "H100", "type": "cuda"},
        "ceilings": {"copy_gbs": 3000.0, "matmul_tflops": {"fp16": 700.0}},
        "torch": "2.9",
        "cuda": "13.0",
        "cudnn": 92400,
    }
    assert "CUDA 13.0 cuDNN 92400" in header(record)
    record["device"] = {"name": "x86", "type": "cpu"}
    assert "CUDA 13.0" not in header(record) and "CUDA: not used" in header(record)


def test_check_labels_linear_without_a_layout():
    case = next(c for c in check.default_cases() if c.op == "linear")
    results = check.run_check(["cpu"], cases=[case], inject_failure="")
    assert {r.layout for r in results} == {"-"} and all(r.passed for r in results)
    conv = next(c for c in check.default_cases() if c.op == "conv2d")
    layouts = [r.layout for r in check.run_check(["cpu"], cases=[conv], inject_failure="")]
    assert layouts == ["nchw", "channels_last"] * 2
