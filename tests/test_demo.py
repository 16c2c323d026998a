"""Smoke tests of the ``fastcnn demo`` pieces (the full run takes minutes; these take seconds)."""

from __future__ import annotations

import pytest
import torch

from fastcnn.tools import demo
from fastcnn.tools.cli import build_parser

_KERNELS = ("conv2d", "conv2d_backward", "linear", "linear_backward", "max_pool2d", "max_pool2d_backward")
needs_cpu_kernels = pytest.mark.skipif(
    not all(torch._C._dispatch_has_kernel_for_dispatch_key(f"fastcnn::{op}", "CPU") for op in _KERNELS),
    reason="this build of fastcnn lacks CPU conv/linear/pooling kernels",
)


def test_load_digits_split():
    x_train, y_train, x_test, y_test = demo.load_digits(image_size=16, test_fraction=0.25, seed=0)
    assert x_train.dtype == torch.uint8 and x_train.shape[1:] == (1, 16, 16)
    assert x_train.shape[0] + x_test.shape[0] == 1797
    assert x_test.shape[0] == 450 and y_test.shape == (450,)
    assert set(y_train.tolist()) == set(range(10)) and set(y_test.tolist()) == set(range(10))
    again = demo.load_digits(image_size=16, test_fraction=0.25, seed=0)
    assert torch.equal(again[3], y_test)  # the fixed seed fixes the split


@needs_cpu_kernels
def test_fastcnn_and_torch_models_agree():
    torch.manual_seed(0)
    fast, twin = demo.DigitNet("fastcnn"), demo.DigitNet("torch")
    twin.load_state_dict(fast.state_dict())
    x = torch.randn(4, 1, 32, 32)
    torch.testing.assert_close(fast(x), twin(x), rtol=1e-4, atol=1e-5)


@needs_cpu_kernels
def test_run_one_epoch_on_a_subset(tmp_path):
    cfg = demo.DemoConfig(
        epochs=1,
        batch_size=32,
        train_subset=96,
        bench_steps=1,
        progress=False,
        out_dir=str(tmp_path),
        device="cpu",
    )
    lines: list[str] = []
    result = demo.run(cfg, log=lines.append)
    assert 0.0 <= result.test_accuracy <= 1.0
    assert len(result.epoch_losses) == 1
    assert result.report.confusion_matrix.shape == (10, 10)
    assert int(result.report.confusion_matrix.sum()) == 450
    assert set(result.step_ms) == {"fastcnn", "torch.nn"}
    for name in ("roc.png", "confusion_matrix.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert any("test accuracy" in line for line in lines)


def test_cli_parses_demo():
    args = build_parser().parse_args(["demo", "--epochs", "2", "--out", "x", "--no-progress"])
    assert args.command == "demo" and args.epochs == 2 and args.out == "x" and args.no_progress
