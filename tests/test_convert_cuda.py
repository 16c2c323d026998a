"""Converted torchvision models on fastcnn's CUDA kernels (on a GPU, or under emulation with
FASTCNN_BACKEND=cuda-emu) against torchvision in float64 and float32, train and eval: the subset that
covers every layer kind (batch norm, the MobileNet/EfficientNet activations, ConvNeXt's layer norms)."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from conftest import CUDA
from test_convert import _compare, _no_dropout, _run

import fastcnn

tv = torchvision.models

# Small inputs: the emulator runs every CUDA thread on the CPU.
SUBSET = {
    "resnet50": (lambda: tv.resnet50(weights=None), 32),
    "mobilenet_v2": (lambda: tv.mobilenet_v2(weights=None), 32),
    "efficientnet_b0": (lambda: tv.efficientnet_b0(weights=None), 32),
    "convnext_tiny": (lambda: tv.convnext_tiny(weights=None), 32),
}


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(SUBSET))
def test_converted_model_matches_torchvision_on_cuda_kernels(name):
    torch.manual_seed(0)
    build, size = SUBSET[name]
    base = _no_dropout(build())
    x = torch.randn(4, 3, size, size, dtype=torch.float64)
    runs = {}
    for dtype in (torch.float64, torch.float32):
        model = copy.deepcopy(base).to(dtype)
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        torch_runs = [_run(model, x.to(dtype), train) for train in (True, False)]
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
        fastcnn.convert(model, inplace=True).to(CUDA)
        assert not model.fastcnn_convert_report.skipped
        fast = [_run(model, x.to(CUDA, dtype), train) for train in (True, False)]
        runs[dtype] = ([tuple(_to_cpu(r)) for r in fast], torch_runs)
    for i, mode in enumerate(("train", "eval")):
        (fast64, torch64), (fast32, torch32) = [
            (fast[i], ref[i]) for fast, ref in (runs[torch.float64], runs[torch.float32])
        ]
        _compare(fast64, torch64, torch32, f"{name} {mode} float64", torch.float64)
        _compare(fast32, torch64, torch32, f"{name} {mode} float32", torch.float32)


def _to_cpu(run):
    outs, gx, grads = run
    return [o.cpu() for o in outs], gx.cpu(), {n: g.cpu() for n, g in grads.items()}


@pytest.mark.cuda
def test_channels_last_model_copies_layouts_only_at_its_edges():
    # fastcnn's CUDA convolutions compute in channels_last: an NCHW model pays a layout copy of each
    # conv's input and output (and weight); convert(memory_format=torch.channels_last) pays one, on entry.
    torch.manual_seed(0)
    base = tv.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 32, 32).to(CUDA)

    def copies(model):
        """Copies of 4-D tensors (layout changes; batch norm's eval-mode [C] statistics are copied too)."""
        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.no_grad(), torch.profiler.profile(activities=activities, record_shapes=True) as prof:
            out = model(x)
        events = [e for e in prof.events() if e.name == "aten::copy_"]
        return sum(1 for e in events if len(e.input_shapes[0]) == 4), out

    nchw, y_nchw = copies(fastcnn.convert(base).to(CUDA))
    cl, y_cl = copies(fastcnn.convert(base, memory_format=torch.channels_last).to(CUDA))
    assert cl == 1 and nchw >= 2 * 20, (cl, nchw)
    torch.testing.assert_close(y_cl, y_nchw, rtol=1e-4, atol=1e-4)
